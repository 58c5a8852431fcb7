//! What a worker's environment is. Alone in its binary: it changes the
//! test process's own environment before any process is started.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use workbus_supervisor::{Input, Spec};

/// The environment `sh` sees, started the way `stdin` makes the spec start
/// it (a file or nothing: a clone, or `posix_spawn` once the test has asked
/// for it, with the environment built once; bytes: tokio's `Command`).
async fn child_env(stdin: Input) -> Vec<(String, String)> {
    let spec = Spec {
        program: "/bin/sh".into(),
        args: vec!["-c".into(), "cat >/dev/null; env -0".into()],
        env: vec![
            ("WB_T_OVER".into(), "new".into()),
            ("WB_T_TWICE".into(), "first".into()),
            ("WB_T_TWICE".into(), "second".into()),
        ],
        stdin,
        stdout_cap: 1 << 20,
        ..Spec::default()
    };
    let (_tx, rx) = oneshot::channel();
    let exit = spec
        .start()
        .unwrap()
        .wait(Arc::new(|_, _| {}), rx, Duration::from_secs(1))
        .await
        .unwrap();
    assert!(exit.success(), "{exit:?}");
    exit.stdout
        .split(|b| *b == 0)
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let kv = String::from_utf8_lossy(kv);
            let (k, v) = kv.split_once('=').unwrap();
            (k.to_string(), v.to_string())
        })
        .collect()
}

#[tokio::test]
async fn a_worker_gets_the_daemons_environment_without_systemds_variables() {
    // SAFETY: the only test in this binary, and no thread of it has
    // started a process or read the environment yet.
    unsafe {
        std::env::set_var("NOTIFY_SOCKET", "/run/test/notify");
        std::env::set_var("WATCHDOG_USEC", "1000000");
        std::env::set_var("JOURNAL_STREAM", "8:1234");
        std::env::set_var("WB_T_KEEP", "kept");
        std::env::set_var("WB_T_OVER", "old");
    }
    let file = std::env::temp_dir().join(format!("wb-env-test-{}", std::process::id()));
    std::fs::write(&file, b"").unwrap();
    let direct = child_env(Input::File(file.clone())).await;
    let null = child_env(Input::Null).await;
    let command = child_env(Input::Bytes(Vec::new())).await;
    // The fallback where the clone is not available.
    workbus_supervisor::use_posix_spawn();
    let spawned = child_env(Input::File(file.clone())).await;
    std::fs::remove_file(&file).unwrap();
    for env in [&direct, &null, &command, &spawned] {
        let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
        for gone in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "JOURNAL_STREAM"] {
            assert!(!names.contains(&gone), "{gone} in {names:?}");
        }
        let count = |k: &str| names.iter().filter(|n| **n == k).count();
        assert_eq!(count("WB_T_OVER"), 1, "{env:?}");
        assert_eq!(count("WB_T_TWICE"), 1, "{env:?}");
        let map: BTreeMap<_, _> = env.iter().cloned().collect();
        assert_eq!(map["WB_T_KEEP"], "kept");
        assert_eq!(map["WB_T_OVER"], "new", "the spec's value wins");
        assert_eq!(map["WB_T_TWICE"], "second", "the later value wins");
        assert_eq!(map.get("PATH"), std::env::var("PATH").ok().as_ref());
    }
    // Both ways of starting a process give the same environment (sh adds
    // PWD, SHLVL and _ the same way to both).
    let sorted = |e: &Vec<(String, String)>| e.iter().cloned().collect::<BTreeMap<_, _>>();
    assert_eq!(sorted(&direct), sorted(&command));
    assert_eq!(sorted(&spawned), sorted(&command));
    assert_eq!(sorted(&null), sorted(&command));
}
