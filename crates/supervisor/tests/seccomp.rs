//! Where a seccomp filter refuses the clone that starts task processes,
//! the supervisor says so once and starts them with `posix_spawn` from
//! then on. Alone in its binary: the refusal switches the whole test
//! process over.
#![cfg(target_arch = "x86_64")]

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
use workbus_supervisor::Spec;

/// A filter on the calling thread (and the threads and processes it
/// starts) that fails `clone` with `CLONE_PIDFD` with EPERM, as a
/// container runtime's profile may; every other call, and `clone` without
/// that flag (threads, glibc's own `posix_spawn`), goes through.
fn refuse_clone_with_pidfd() {
    const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
    // Offsets in struct seccomp_data: nr, arch, args[0] (its low half).
    const NR: u32 = 0;
    const ARCH: u32 = 4;
    const ARG0: u32 = 16;
    let op = |code: u32, k: u32, jt: u8, jf: u8| libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    let load = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
    let ret = libc::BPF_RET | libc::BPF_K;
    let allow = libc::SECCOMP_RET_ALLOW;
    let mut prog = [
        op(load, ARCH, 0, 0),
        op(
            libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
            AUDIT_ARCH_X86_64,
            1,
            0,
        ),
        op(ret, allow, 0, 0),
        op(load, NR, 0, 0),
        op(
            libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
            libc::SYS_clone as u32,
            1,
            0,
        ),
        op(ret, allow, 0, 0),
        op(load, ARG0, 0, 0),
        op(
            libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K,
            libc::CLONE_PIDFD as u32,
            0,
            1,
        ),
        op(ret, libc::SECCOMP_RET_ERRNO | libc::EPERM as u32, 0, 0),
        op(ret, allow, 0, 0),
    ];
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_mut_ptr(),
    };
    // SAFETY: plain prctl calls; the kernel copies the program.
    unsafe {
        assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
        assert_eq!(
            libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &fprog as *const libc::sock_fprog,
            ),
            0,
            "installing the seccomp filter: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// The log, as the daemon's subscriber would write it.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl Write for Log {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

async fn run_sh(script: &str) -> String {
    let spec = Spec {
        program: "sh".into(),
        args: vec!["-c".into(), script.into()],
        stdout_cap: 1 << 20,
        ..Spec::default()
    };
    let running = spec.start().expect("the task process starts");
    let (_tx, rx) = oneshot::channel();
    let exit = running
        .wait(Arc::new(|_, _| {}), rx, Duration::from_secs(1))
        .await
        .unwrap();
    assert!(exit.success(), "{exit:?}");
    String::from_utf8(exit.stdout).unwrap()
}

#[tokio::test]
async fn a_refused_clone_falls_back_to_posix_spawn_and_says_so() {
    let log = Log::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let probe = Spec {
        program: "sh".into(),
        ..Spec::default()
    };
    assert!(probe.starts_at_once(), "the clone is there to be refused");
    refuse_clone_with_pidfd();
    // The first start meets the refusal and still starts the process.
    assert_eq!(run_sh("echo first").await, "first\n");
    assert!(
        !probe.starts_at_once(),
        "after a refusal, processes start with posix_spawn"
    );
    assert_eq!(run_sh("echo second").await, "second\n");
    let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    let warnings: Vec<&str> = text.lines().filter(|l| l.contains("posix_spawn")).collect();
    assert_eq!(warnings.len(), 1, "one warning, at the refusal: {text}");
    assert!(warnings[0].contains("WARN"), "{text}");
    assert!(
        warnings[0].contains("Operation not permitted"),
        "the warning names the error: {text}"
    );
}
