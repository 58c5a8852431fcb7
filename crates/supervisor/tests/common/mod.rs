//! A check shared by the test binaries that start processes both ways.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use workbus_supervisor::{Input, Spec};

/// Starts `sh` the way a task process starts and checks what it gets: its
/// stdin from the claim file, `sh` found on PATH (no slash), SIGPIPE at its
/// default (the daemon ignores it; a worker that inherited that would loop
/// on EPIPE instead of dying, so bit 12 of SigIgn, SIGPIPE's, must be
/// clear), and a process group of its own. `at_once`: whether the start
/// should return without waiting for the exec.
pub async fn a_task_process_starts_as_it_should(at_once: bool) {
    let file = std::env::temp_dir().join(format!("wb-stdin-test-{}-{at_once}", std::process::id()));
    std::fs::write(&file, b"the task record\n").unwrap();
    let spec = Spec {
        program: "sh".into(),
        args: vec![
            "-c".into(),
            "cat; grep ^SigIgn /proc/self/status; cut -d' ' -f5 /proc/$$/stat".into(),
        ],
        stdin: Input::File(file.clone()),
        stdout_cap: 1 << 20,
        ..Spec::default()
    };
    assert_eq!(spec.starts_at_once(), at_once);
    let running = spec.start().unwrap();
    let pid = running.pid;
    let (_tx, rx) = oneshot::channel();
    let exit = running
        .wait(Arc::new(|_, _| {}), rx, Duration::from_secs(1))
        .await
        .unwrap();
    std::fs::remove_file(&file).unwrap();
    assert!(exit.success(), "{exit:?}");
    let out = String::from_utf8(exit.stdout).unwrap();
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("the task record"));
    let ign = lines.next().unwrap().split_whitespace().nth(1).unwrap();
    let ign = u64::from_str_radix(ign, 16).unwrap();
    assert_eq!(ign & (1 << 12), 0, "SIGPIPE ignored in the worker: {out}");
    assert_eq!(
        lines.next().map(str::trim),
        Some(pid.to_string().as_str()),
        "the worker leads its own process group"
    );
}
