//! The fallback start of task processes, `posix_spawn`, used where the
//! clone of `Spec::start` is not available. Alone in its binary: it switches
//! the whole test process over before starting anything.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use workbus_supervisor::{Exit, ExitStatus, Input, Spec};

async fn run(spec: Spec) -> std::io::Result<Exit> {
    let (_tx, rx) = oneshot::channel();
    spec.start()?
        .wait(Arc::new(|_, _| {}), rx, Duration::from_secs(1))
        .await
}

#[tokio::test]
async fn posix_spawn_starts_workers_as_the_clone_does() {
    workbus_supervisor::use_posix_spawn();
    let file = std::env::temp_dir().join(format!("wb-posix-spawn-{}", std::process::id()));
    std::fs::write(&file, b"the task record\n").unwrap();
    // stdin from the file, `sh` found on PATH, SIGPIPE at its default, its
    // own process group.
    let spec = Spec {
        program: "sh".into(),
        args: vec![
            "-c".into(),
            "cat; grep ^SigIgn /proc/self/status; cut -d' ' -f5 /proc/$$/stat; exit 4".into(),
        ],
        stdin: Input::File(file.clone()),
        stdout_cap: 1 << 20,
        ..Spec::default()
    };
    assert!(!spec.starts_at_once(), "posix_spawn waits for the exec");
    let running = spec.start().unwrap();
    let pid = running.pid;
    let (_tx, rx) = oneshot::channel();
    let exit = running
        .wait(Arc::new(|_, _| {}), rx, Duration::from_secs(1))
        .await
        .unwrap();
    std::fs::remove_file(&file).unwrap();
    assert_eq!(exit.status, ExitStatus::Code(4));
    let out = String::from_utf8(exit.stdout).unwrap();
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("the task record"));
    let ign = lines.next().unwrap().split_whitespace().nth(1).unwrap();
    assert_eq!(
        u64::from_str_radix(ign, 16).unwrap() & (1 << 12),
        0,
        "{out}"
    );
    assert_eq!(lines.next().map(str::trim), Some(pid.to_string().as_str()));
    // A missing program: an error from start, naming it.
    let e = run(Spec {
        program: "/nonexistent/worker".into(),
        ..Spec::default()
    })
    .await
    .unwrap_err();
    assert!(e.to_string().contains("/nonexistent/worker"), "{e}");
    assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
}
