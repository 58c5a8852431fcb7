//! Real processes: output, stdin, stopping the whole group.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
use workbus_supervisor::{ExitStatus, Spec, StopReason, Stream};

mod common;

fn sh(script: &str) -> Spec {
    Spec {
        program: "/bin/sh".into(),
        args: vec!["-c".into(), script.into()],
        stdout_cap: 1 << 20,
        stderr_tail: 64,
        ..Spec::default()
    }
}

/// Waits for a started process to end, with nobody stopping it and its
/// lines going nowhere.
async fn finish(running: workbus_supervisor::Running) -> workbus_supervisor::Exit {
    let (_tx, rx) = oneshot::channel();
    running
        .wait(Arc::new(|_, _| {}), rx, Duration::from_secs(1))
        .await
        .unwrap()
}

fn group_alive(pgid: u32) -> Vec<u32> {
    let mut alive = vec![];
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = after.split(' ').collect();
        // fields after comm: state ppid pgrp
        if f[2].parse::<u32>().ok() == Some(pgid) && f[0] != "Z" {
            alive.push(pid);
        }
    }
    alive
}

#[tokio::test]
async fn output_status_and_lines() {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let l2 = lines.clone();
    let sink = Arc::new(move |s: Stream, b: &[u8]| {
        l2.lock()
            .unwrap()
            .push((s, String::from_utf8_lossy(b).into_owned()))
    });
    let mut spec = sh("cat; echo; echo oops >&2; exit 3");
    spec.stdin = workbus_supervisor::Input::Bytes(b"{\"task\":1}".to_vec());
    let (_tx, rx) = oneshot::channel();
    let exit = spec
        .start()
        .unwrap()
        .wait(sink, rx, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(exit.status, ExitStatus::Code(3));
    assert_eq!(exit.stdout, b"{\"task\":1}\n");
    assert_eq!(exit.stderr_tail, "oops\n");
    assert!(!exit.success());
    let lines = lines.lock().unwrap().clone();
    assert!(
        lines.contains(&(Stream::Stderr, "oops".into())),
        "{lines:?}"
    );
    assert!(
        lines.contains(&(Stream::Stdout, "{\"task\":1}".into())),
        "{lines:?}"
    );
}

#[tokio::test]
async fn caps_stdout_and_keeps_the_end_of_stderr() {
    let mut spec = sh(
        "head -c 5000 /dev/zero; i=0; while [ $i -lt 100 ]; do echo line$i >&2; i=$((i+1)); done",
    );
    spec.stdout_cap = 1000;
    let exit = finish(spec.start().unwrap()).await;
    assert_eq!(exit.stdout.len(), 1000);
    assert!(exit.stdout_overflow);
    assert!(
        exit.stderr_tail.ends_with("line99\n"),
        "{}",
        exit.stderr_tail
    );
    assert!(exit.stderr_tail.len() <= 64);
}

#[tokio::test]
async fn stopping_kills_the_whole_group_even_when_it_ignores_sigterm() {
    let spec = sh("trap '' TERM; sleep 1000 & sleep 1000 & (trap '' TERM; sleep 1000) & wait");
    let running = spec.start().unwrap();
    let pgid = running.pid;
    let (tx, rx) = oneshot::channel();
    let task = tokio::spawn(running.wait(Arc::new(|_, _| {}), rx, Duration::from_millis(300)));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while group_alive(pgid).len() < 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "children did not start"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tx.send(StopReason("timed out after 1s".into())).unwrap();
    let exit = task.await.unwrap().unwrap();
    assert_eq!(
        exit.status,
        ExitStatus::Signal(9),
        "SIGTERM was ignored, so SIGKILL"
    );
    assert_eq!(exit.stopped, Some(StopReason("timed out after 1s".into())));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let alive = group_alive(pgid);
        if alive.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "survivors in the group: {alive:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_normal_exit_takes_stragglers_with_it() {
    let spec = sh("sleep 1000 & echo started");
    let running = spec.start().unwrap();
    let pgid = running.pid;
    let exit = finish(running).await;
    assert!(exit.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !group_alive(pgid).is_empty() {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The error of starting `spec`: from `start`, or (where the exec happens
/// after `start` has returned) from `wait`.
async fn start_error(spec: Spec) -> std::io::Error {
    match spec.start() {
        Err(e) => e,
        Ok(running) => {
            let (_tx, rx) = oneshot::channel();
            running
                .wait(Arc::new(|_, _| {}), rx, Duration::from_secs(1))
                .await
                .unwrap_err()
        }
    }
}

#[tokio::test]
async fn a_program_that_cannot_be_run_is_a_clear_error() {
    // Not there, and not on PATH either.
    for program in ["/nonexistent/worker", "wb-no-such-program"] {
        let e = start_error(Spec {
            program: program.into(),
            ..Spec::default()
        })
        .await;
        assert!(e.to_string().contains(program), "{e}");
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "{e}");
    }
    // A file that is not executable.
    let file = std::env::temp_dir().join(format!("wb-not-exec-{}", std::process::id()));
    std::fs::write(&file, b"#!/bin/sh\n").unwrap();
    let denied = start_error(Spec {
        program: file.display().to_string(),
        ..Spec::default()
    })
    .await;
    std::fs::remove_file(&file).unwrap();
    assert_eq!(
        denied.kind(),
        std::io::ErrorKind::PermissionDenied,
        "{denied}"
    );
}

#[tokio::test]
async fn signals_a_worker_starts_with() {
    // The daemon's own dispositions: SIGUSR2 ignored (a worker inherits
    // that, as with posix_spawn), SIGPIPE ignored (a worker gets the
    // default), SIGUSR1 and SIGHUP caught (reset to the default by the exec).
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
    extern "C" fn nothing(_: i32) {}
    // SAFETY: the handler does nothing; SIG_IGN is always sound.
    unsafe {
        let caught = SigAction::new(
            SigHandler::Handler(nothing),
            SaFlags::empty(),
            SigSet::empty(),
        );
        sigaction(Signal::SIGUSR1, &caught).unwrap();
        sigaction(Signal::SIGHUP, &caught).unwrap();
        let ignore = SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty());
        sigaction(Signal::SIGUSR2, &ignore).unwrap();
        sigaction(Signal::SIGPIPE, &ignore).unwrap();
    }
    let exit = finish(
        sh("grep -E '^Sig(Blk|Ign|Cgt)' /proc/self/status")
            .start()
            .unwrap(),
    )
    .await;
    let out = String::from_utf8(exit.stdout).unwrap();
    let field = |name: &str| {
        let line = out.lines().find(|l| l.starts_with(name)).unwrap();
        u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
    };
    assert_eq!(field("SigBlk:"), 0, "nothing blocked: {out}");
    let ign = field("SigIgn:");
    assert_ne!(ign & (1 << 11), 0, "SIGUSR2 stays ignored: {out}");
    assert_eq!(ign & (1 << 12), 0, "SIGPIPE at its default: {out}");
    assert_eq!(ign & (1 << 9), 0, "SIGUSR1 not ignored: {out}");
    // Whatever sh itself catches, the daemon's handlers are gone: a SIGUSR1
    // kills the worker.
    let exit = finish(sh("kill -USR1 $$; sleep 5").start().unwrap()).await;
    assert_eq!(exit.status, ExitStatus::Signal(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_processes_started_at_once_all_run_and_end() {
    // Starts from several threads at once, each process writing its own
    // argument and environment back: none may see another's.
    let mut all = tokio::task::JoinSet::new();
    for i in 0..240 {
        all.spawn(async move {
            let mut spec = sh("echo \"$0 $WB_N\"");
            spec.args.push(format!("arg{i}"));
            spec.env = vec![("WB_N".into(), format!("n{i}"))];
            let exit = finish(spec.start().unwrap()).await;
            assert!(exit.success(), "{exit:?}");
            assert_eq!(
                String::from_utf8(exit.stdout).unwrap(),
                format!("arg{i} n{i}\n")
            );
        });
        if i % 8 == 7 {
            tokio::task::yield_now().await;
        }
    }
    while let Some(r) = all.join_next().await {
        r.unwrap();
    }
}

#[tokio::test]
async fn a_process_nobody_waits_for_is_reaped() {
    let running = sh("sleep 0.2").start().unwrap();
    let pid = running.pid;
    drop(running);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    // Gone from /proc once reaped (a zombie stays until then).
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        assert!(std::time::Instant::now() < deadline, "{pid} not reaped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn stdin_from_a_file_a_program_on_path_and_sigpipe_at_its_default() {
    // These tests exercise the clone (tests/posix_spawn.rs the fallback).
    let clone = cfg!(any(target_arch = "x86_64", target_arch = "aarch64"));
    common::a_task_process_starts_as_it_should(clone).await;
}

#[tokio::test]
async fn a_process_killed_by_a_signal_says_so() {
    let exit = finish(sh("kill -USR1 $$").start().unwrap()).await;
    assert_eq!(exit.status, ExitStatus::Signal(10));
    assert!(exit.stopped.is_none());
}

#[tokio::test]
async fn a_process_stopped_as_soon_as_it_starts_is_stopped() {
    // The stop can reach the process group before the child has made it:
    // the start makes the group in the parent as well.
    for _ in 0..20 {
        let running = sh("sleep 30").start().unwrap();
        let pgid = running.pid;
        let (tx, rx) = oneshot::channel();
        tx.send(StopReason("stopped at once".into())).unwrap();
        let exit = tokio::time::timeout(
            Duration::from_secs(10),
            running.wait(Arc::new(|_, _| {}), rx, Duration::from_millis(200)),
        )
        .await
        .expect("the stop did not reach the process")
        .unwrap();
        assert_eq!(exit.stopped, Some(StopReason("stopped at once".into())));
        // By SIGTERM: it reached the group, no need of the SIGKILL after
        // the grace.
        assert_eq!(exit.status, ExitStatus::Signal(15));
        // The rest of the group (sh's sleep) goes too, a moment later.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !group_alive(pgid).is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "group {pgid} lives on"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
