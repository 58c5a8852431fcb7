//! One worker process: started in its own process group, fed its stdin,
//! its output captured (capped) and passed on line by line, stopped with
//! SIGTERM then SIGKILL to the whole group.

use std::collections::VecDeque;
use std::ffi::{CStr, CString, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::sys::signal::{SigSet, Signal, killpg};
use nix::unistd::{Gid, Pid, Uid, getpid, getppid, setgid, setgroups, setuid};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, Interest};
use tokio::sync::oneshot;

use crate::user::Identity;

/// What to run and how.
#[derive(Clone, Debug, Default)]
pub struct Spec {
    pub program: String,
    pub args: Vec<String>,
    /// Added to the daemon's environment (which loses its systemd variables).
    pub env: Vec<(String, String)>,
    pub cwd: Option<PathBuf>,
    pub identity: Option<Identity>,
    /// What stdin reads.
    pub stdin: Input,
    /// Keep at most this much of stdout (0: keep none).
    pub stdout_cap: u64,
    /// Keep this many bytes of the end of stderr.
    pub stderr_tail: usize,
    /// Kill it (SIGKILL) when the daemon dies (`PR_SET_PDEATHSIG`). This
    /// needs code between fork and exec, so the process is forked rather
    /// than started the cheaper way ([`Spec::start`]); without it an orphan
    /// is the caller's to find and stop.
    pub die_with_daemon: bool,
}

/// Where a process's stdin comes from.
#[derive(Clone, Debug, Default)]
pub enum Input {
    /// `/dev/null`.
    #[default]
    Null,
    /// These bytes, through a pipe.
    Bytes(Vec<u8>),
    /// This file, opened read-only: no pipe and no copy (a spawned task
    /// reads its record straight from its claim file).
    File(PathBuf),
}

/// Which output a line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Why a process was stopped from outside.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StopReason(pub String);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitStatus::Code(c) => write!(f, "exit status {c}"),
            ExitStatus::Signal(s) => match Signal::try_from(*s) {
                Ok(sig) => write!(f, "killed by {sig}"),
                Err(_) => write!(f, "killed by signal {s}"),
            },
        }
    }
}

/// How a process ended.
#[derive(Debug)]
pub struct Exit {
    pub pid: u32,
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    /// Stdout was longer than the cap.
    pub stdout_overflow: bool,
    pub stderr_tail: String,
    /// Set when it was stopped from outside.
    pub stopped: Option<StopReason>,
    pub runtime: Duration,
}

impl Exit {
    pub fn success(&self) -> bool {
        self.status == ExitStatus::Code(0) && self.stopped.is_none()
    }
}

/// Called with each line of output (without its newline).
pub type LineSink = Arc<dyn Fn(Stream, &[u8]) + Send + Sync>;

/// A started process.
pub struct Running {
    pub pid: u32,
    child: Child,
    stdout: Option<Reader>,
    stderr: Option<Reader>,
    stdin: Option<Vec<u8>>,
    spec_cap: u64,
    stderr_tail: usize,
    started: Instant,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("pid", &self.pid)
            .field("child", &self.child)
            .finish_non_exhaustive()
    }
}

/// The variables of the daemon's environment that are its own (systemd's
/// notify socket, watchdog, socket activation and journal stream): no
/// worker inherits them.
const DAEMON_ONLY: [&str; 6] = [
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_FDS",
    "LISTEN_PID",
    "JOURNAL_STREAM",
];

/// One end of a process's output.
type Reader = Pin<Box<dyn AsyncRead + Send>>;

/// The environment every worker starts from: the daemon's, without
/// [`DAEMON_ONLY`], as `NAME=value` strings. Read once: the daemon never
/// changes its own environment, and building it for every process (as
/// tokio's `Command` does) took up to a tenth of the daemon's CPU per
/// spawned task.
fn base_env() -> &'static [(OsString, CString)] {
    static BASE: OnceLock<Vec<(OsString, CString)>> = OnceLock::new();
    BASE.get_or_init(|| {
        std::env::vars_os()
            .filter(|(k, _)| !DAEMON_ONLY.iter().any(|d| k == d))
            .filter_map(|(k, v)| {
                let mut kv = k.as_bytes().to_vec();
                kv.push(b'=');
                kv.extend_from_slice(v.as_bytes());
                CString::new(kv).ok().map(|c| (k, c))
            })
            .collect()
    })
}

fn c_string(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{s:?} contains a NUL byte"),
        )
    })
}

/// How a started process is waited for.
#[derive(Debug)]
enum Child {
    /// Started by tokio's `Command` (a change of user, a working folder,
    /// stdin bytes, or a parent-death signal).
    Tokio(tokio::process::Child),
    /// Started here (the clone of `launch.rs`, or `posix_spawn`) and waited
    /// for through a pidfd.
    Direct(Direct),
}

impl Child {
    /// Waits for the process to end; safe to cancel and call again.
    async fn wait(&mut self) -> io::Result<std::process::ExitStatus> {
        match self {
            Child::Tokio(c) => c.wait().await,
            Child::Direct(d) => d.wait().await,
        }
    }
}

#[derive(Debug)]
struct Direct {
    pid: Pid,
    /// Readable once the process has ended; without one (a kernel older
    /// than 5.3, or out of descriptors) the process is polled every 10 ms.
    pidfd: Option<AsyncFd<OwnedFd>>,
    status: Option<std::process::ExitStatus>,
    /// Started by a clone that shares the daemon's memory until its exec:
    /// its arguments and stack, kept until it has ended.
    launched: Option<crate::launch::Launched>,
    /// Why its exec failed, once it has ended.
    exec_error: Option<i32>,
    program: String,
}

impl Direct {
    async fn wait(&mut self) -> io::Result<std::process::ExitStatus> {
        loop {
            if let Some(s) = self.status {
                return match self.exec_error {
                    Some(errno) => Err(io::Error::new(
                        io::Error::from_raw_os_error(errno).kind(),
                        format!(
                            "starting {:?}: {}",
                            self.program,
                            io::Error::from_raw_os_error(errno)
                        ),
                    )),
                    None => Ok(s),
                };
            }
            if let Some(fd) = &self.pidfd {
                // Cleared before the reap: an end after it makes the pidfd
                // ready again.
                fd.readable().await?.clear_ready();
            }
            if self.reap()?.is_none() && self.pidfd.is_none() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }

    /// Collects the exit status if the process has ended.
    fn reap(&mut self) -> io::Result<Option<std::process::ExitStatus>> {
        use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
        if self.status.is_none() {
            self.status = match waitpid(self.pid, Some(WaitPidFlag::WNOHANG))? {
                WaitStatus::Exited(_, code) => Some(ExitStatusExt::from_raw((code & 0xff) << 8)),
                WaitStatus::Signaled(_, sig, core) => Some(ExitStatusExt::from_raw(
                    sig as i32 | if core { 0x80 } else { 0 },
                )),
                _ => None,
            };
            if self.status.is_some()
                && let Some(launched) = self.launched.take()
            {
                self.exec_error = launched.exec_error();
            }
        }
        Ok(self.status)
    }
}

impl Drop for Direct {
    /// A process nobody waited for is reaped in the background, not left a
    /// zombie.
    fn drop(&mut self) {
        if matches!(self.reap(), Ok(None)) {
            let pid = self.pid;
            // What the process may still read goes only once it has ended.
            let launched = self.launched.take();
            std::thread::spawn(move || {
                let _ = nix::sys::wait::waitpid(pid, None);
                // Dropped here, after the wait.
                let _launched = launched;
            });
        }
    }
}

/// A pidfd for `pid`: readable when the process ends.
fn pidfd_open(pid: Pid) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new
    // descriptor (or -1), which the OwnedFd then owns.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by the kernel and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    // SAFETY: the AsyncFd owns the OwnedFd, which keeps the descriptor
    // open and unchanged until both are dropped.
    unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.map_err(|e| e.into_parts().1)
}

impl Spec {
    /// Starts the process in a new process group.
    pub fn start(&self) -> io::Result<Running> {
        if self.direct() {
            return self.spawn_direct();
        }
        self.start_command()
    }

    /// Whether [`Spec::start`] returns without waiting for the process to
    /// exec (and so may be called on an event loop's thread).
    pub fn starts_at_once(&self) -> bool {
        crate::launch::available() && self.direct()
    }

    /// Whether the process can start without tokio's `Command`.
    fn direct(&self) -> bool {
        self.identity.is_none()
            && !self.die_with_daemon
            && self.cwd.is_none()
            && !matches!(self.stdin, Input::Bytes(_))
            && (self.program.contains('/') || !self.env.iter().any(|(k, _)| k == "PATH"))
    }

    /// Starts the process with tokio's `Command`.
    fn start_command(&self) -> io::Result<Running> {
        let mut cmd = tokio::process::Command::new(&self.program);
        cmd.args(&self.args);
        for k in DAEMON_ONLY {
            cmd.env_remove(k);
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(match &self.stdin {
                Input::Null => Stdio::null(),
                Input::Bytes(_) => Stdio::piped(),
                Input::File(path) => Stdio::from(std::fs::File::open(path)?),
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(false);
        if let Some(cwd) = &self.cwd {
            cmd.current_dir(cwd);
        }
        if let Some(id) = &self.identity {
            cmd.env("HOME", &id.home)
                .env("USER", &id.user)
                .env("LOGNAME", &id.user);
        }
        let parent = getpid();
        let die_with_daemon = self.die_with_daemon;
        let ident = self.identity.as_ref().map(|i| {
            (
                Uid::from_raw(i.uid),
                Gid::from_raw(i.gid),
                i.groups
                    .iter()
                    .map(|g| Gid::from_raw(*g))
                    .collect::<Vec<_>>(),
            )
        });
        // SAFETY: the closure runs between fork and exec and only makes
        // async-signal-safe system calls on data prepared before the fork.
        // Without it, std starts the process with posix_spawn (vfork+exec).
        if ident.is_some() || die_with_daemon {
            unsafe {
                cmd.pre_exec(move || {
                    if let Some((uid, gid, groups)) = &ident {
                        setgroups(groups)?;
                        setgid(*gid)?;
                        setuid(*uid)?;
                    }
                    // After setuid: a change of credentials clears the setting.
                    if die_with_daemon
                        && libc::prctl(
                            libc::PR_SET_PDEATHSIG,
                            libc::SIGKILL as libc::c_ulong,
                            0,
                            0,
                            0,
                        ) != 0
                    {
                        return Err(io::Error::last_os_error());
                    }
                    if die_with_daemon && getppid() != parent {
                        // The daemon died between fork and prctl.
                        return Err(io::Error::other("the daemon is gone"));
                    }
                    Ok(())
                })
            };
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("starting {:?}: {e}", self.program)))?;
        Ok(Running {
            pid: child.id().unwrap_or(0),
            stdout: child.stdout.take().map(|p| Box::pin(p) as Reader),
            stderr: child.stderr.take().map(|p| Box::pin(p) as Reader),
            child: Child::Tokio(child),
            stdin: match &self.stdin {
                Input::Bytes(b) => Some(b.clone()),
                _ => None,
            },
            spec_cap: self.stdout_cap,
            stderr_tail: self.stderr_tail,
            started: Instant::now(),
        })
    }

    /// Starts the process without a shell or tokio's `Command`, with the
    /// environment built once ([`base_env`]): by a clone that does not wait
    /// for the exec ([`crate::launch`]) where there is one, else with
    /// `posix_spawn`.
    fn spawn_direct(&self) -> io::Result<Running> {
        let started = Instant::now();
        let stdin = match &self.stdin {
            Input::File(path) => std::fs::File::open(path)?,
            _ => std::fs::File::open("/dev/null")?,
        };
        let (out_r, out_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        let (err_r, err_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        let fds = [stdin.as_raw_fd(), out_w.as_raw_fd(), err_w.as_raw_fd()];
        if fds.iter().any(|fd| *fd <= 2) {
            // The daemon runs without a standard descriptor, so one of these
            // took its number: the dup2s in the child could overwrite each
            // other.
            return self.start_command();
        }
        let program = c_string(&self.program)?;
        let mut args = Vec::with_capacity(self.args.len() + 1);
        args.push(program.clone());
        for a in &self.args {
            args.push(c_string(a)?);
        }
        // The spec's variables win over the daemon's, and a later one over
        // an earlier one of the same name.
        let own: Vec<CString> = self
            .env
            .iter()
            .enumerate()
            .filter(|(i, (k, _))| !self.env[i + 1..].iter().any(|(k2, _)| k2 == k))
            .map(|(_, (k, v))| c_string(&format!("{k}={v}")))
            .collect::<io::Result<_>>()?;
        let base: Vec<&'static CStr> = base_env()
            .iter()
            .filter(|(k, _)| !self.env.iter().any(|(k2, _)| k == k2.as_str()))
            .map(|(_, kv)| kv.as_c_str())
            .collect();
        let starting =
            |e: io::Error| io::Error::new(e.kind(), format!("starting {:?}: {e}", self.program));
        if crate::launch::available() {
            return match crate::launch::launch(self.exec_paths()?, args, &base, own, fds) {
                Ok((launched, pidfd)) => {
                    drop((stdin, out_w, err_w));
                    let pid = Pid::from_raw(launched.pid());
                    // SAFETY: the AsyncFd owns the OwnedFd, which keeps the
                    // descriptor open and unchanged until both are dropped.
                    let pidfd =
                        unsafe { AsyncFd::register_with_interest(pidfd, Interest::READABLE) };
                    let child = Direct {
                        pid,
                        pidfd: pidfd.ok(),
                        status: None,
                        launched: Some(launched),
                        exec_error: None,
                        program: self.program.clone(),
                    };
                    self.running(pid, child, out_r, err_r, started)
                }
                Err(e) if crate::launch::available() => Err(starting(e)),
                // Refused here (an old kernel, a seccomp filter):
                // posix_spawn from now on.
                Err(e) => {
                    tracing::warn!(
                        "the clone that starts task processes was refused ({e}): a kernel older than 5.2 or a seccomp filter; starting them with posix_spawn from now on"
                    );
                    self.spawn_direct()
                }
            };
        }
        let mut envp = base;
        envp.extend(own.iter().map(|c| c.as_c_str()));
        let pid = self
            .posix_spawn(&program, &args, &envp, fds)
            .map_err(starting)?;
        drop((stdin, out_w, err_w));
        let child = Direct {
            pid,
            pidfd: pidfd_open(pid).ok(),
            status: None,
            launched: None,
            exec_error: None,
            program: self.program.clone(),
        };
        self.running(pid, child, out_r, err_r, started)
    }

    /// `posix_spawn` (or `posix_spawnp`) with `fds` as stdin, stdout and
    /// stderr, in a new process group, SIGPIPE at its default.
    fn posix_spawn(
        &self,
        program: &CStr,
        args: &[CString],
        envp: &[&CStr],
        fds: [RawFd; 3],
    ) -> io::Result<Pid> {
        use nix::spawn::{PosixSpawnAttr, PosixSpawnFileActions, PosixSpawnFlags};
        let mut actions = PosixSpawnFileActions::init()?;
        for (fd, to) in fds.iter().zip(0..) {
            actions.add_dup2(*fd, to)?;
        }
        let mut attr = PosixSpawnAttr::init()?;
        attr.set_flags(
            PosixSpawnFlags::POSIX_SPAWN_SETPGROUP
                | PosixSpawnFlags::POSIX_SPAWN_SETSIGMASK
                | PosixSpawnFlags::POSIX_SPAWN_SETSIGDEF,
        )?;
        attr.set_pgroup(Pid::from_raw(0))?;
        attr.set_sigmask(&SigSet::empty())?;
        // The daemon ignores SIGPIPE (as every Rust program does); its
        // workers get the default.
        attr.set_sigdefault(&SigSet::from(Signal::SIGPIPE))?;
        let pid = if self.program.contains('/') {
            nix::spawn::posix_spawn(program, &actions, &attr, args, envp)
        } else {
            nix::spawn::posix_spawnp(program, &actions, &attr, args, envp)
        };
        Ok(pid?)
    }

    /// The paths to exec, in order: the program itself when it names a
    /// path, else the program in each folder of the daemon's `PATH` (as
    /// `execvp` searches).
    fn exec_paths(&self) -> io::Result<Vec<CString>> {
        if self.program.contains('/') {
            return Ok(vec![c_string(&self.program)?]);
        }
        let path = std::env::var_os("PATH").unwrap_or_else(|| "/bin:/usr/bin".into());
        path.as_bytes()
            .split(|b| *b == b':')
            .map(|dir| {
                let mut p = dir.to_vec();
                if !p.is_empty() {
                    p.push(b'/');
                }
                p.extend_from_slice(self.program.as_bytes());
                CString::new(p).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
            })
            .collect()
    }

    /// The started process, its output pipes on the runtime.
    fn running(
        &self,
        pid: Pid,
        child: Direct,
        out_r: OwnedFd,
        err_r: OwnedFd,
        started: Instant,
    ) -> io::Result<Running> {
        // Pipes made here, so no need for tokio to check that they are (an
        // fstat and two fcntl each): non-blocking on the daemon's side only.
        let reader = |fd: OwnedFd| {
            nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
            tokio::net::unix::pipe::Receiver::from_owned_fd_unchecked(fd)
        };
        let pipes = reader(out_r).and_then(|out| Ok((out, reader(err_r)?)));
        let (out, err) = match pipes {
            Ok(p) => p,
            Err(e) => {
                let _ = kill_group(pid.as_raw() as u32, Signal::SIGKILL);
                return Err(e);
            }
        };
        Ok(Running {
            pid: pid.as_raw() as u32,
            child: Child::Direct(child),
            stdout: Some(Box::pin(out)),
            stderr: Some(Box::pin(err)),
            stdin: None,
            spec_cap: self.stdout_cap,
            stderr_tail: self.stderr_tail,
            started,
        })
    }
}

impl Running {
    /// Feeds stdin, collects output, and waits for the process to end or for
    /// `stop`; then makes sure nothing of its process group survives.
    pub async fn wait(
        mut self,
        on_line: LineSink,
        stop: oneshot::Receiver<StopReason>,
        kill_grace: Duration,
    ) -> io::Result<Exit> {
        let pid = self.pid;
        let stdin = match &mut self.child {
            Child::Tokio(c) => c.stdin.take(),
            Child::Direct(_) => None,
        };
        let stdout = self.stdout.take();
        let stderr = self.stderr.take();
        let input = self.stdin.take();
        let feed = async move {
            if let (Some(mut s), Some(bytes)) = (stdin, input) {
                // A worker that does not read its stdin is not an error.
                let _ = s.write_all(&bytes).await;
                let _ = s.shutdown().await;
            }
        };
        let sink_out = on_line.clone();
        let read_out = drain(
            stdout,
            Stream::Stdout,
            self.spec_cap as usize,
            false,
            sink_out,
        );
        let read_err = drain(stderr, Stream::Stderr, self.stderr_tail, true, on_line);

        let mut child = self.child;
        let waiter = async move {
            let mut stopped = None;
            let mut stop = stop;
            let status = tokio::select! {
                s = child.wait() => s?,
                r = &mut stop => match r {
                    Ok(reason) => {
                        stopped = Some(reason);
                        let _ = kill_group(pid, Signal::SIGTERM);
                        match tokio::time::timeout(kill_grace, child.wait()).await {
                            Ok(s) => s?,
                            Err(_) => {
                                let _ = kill_group(pid, Signal::SIGKILL);
                                child.wait().await?
                            }
                        }
                    }
                    // Nobody can stop it any more: wait for it to end.
                    Err(_) => child.wait().await?,
                },
            };
            // Whatever the leader left running in its group goes with it.
            let _ = kill_group(pid, Signal::SIGKILL);
            Ok::<_, io::Error>((status, stopped))
        };
        let ended = async { tokio::join!(waiter, feed).0 };
        let readers = async { tokio::join!(read_out, read_err) };
        tokio::pin!(ended);
        tokio::pin!(readers);
        let mut outputs = None;
        let result = loop {
            tokio::select! {
                r = &mut ended => break r,
                o = &mut readers, if outputs.is_none() => outputs = Some(o),
            }
        };
        let (status, stopped) = result?;
        let ((stdout, stdout_overflow), (tail, _)) = match outputs {
            Some(o) => o,
            // A process that left the group (setsid) may hold the pipes
            // open; what it writes after this is not waited for.
            None => tokio::time::timeout(Duration::from_secs(2), readers)
                .await
                .unwrap_or(((Vec::new(), false), (Vec::new(), false))),
        };
        Ok(Exit {
            pid,
            status: exit_status(status),
            stdout,
            stdout_overflow,
            stderr_tail: String::from_utf8_lossy(&tail).into_owned(),
            stopped,
            runtime: self.started.elapsed(),
        })
    }
}

/// Reads a pipe to its end, keeping the first `keep` bytes (or, with
/// `tail`, the last), and hands each line to `sink`.
async fn drain<R: AsyncRead + Unpin>(
    pipe: Option<R>,
    stream: Stream,
    keep: usize,
    tail: bool,
    sink: LineSink,
) -> (Vec<u8>, bool) {
    let Some(mut pipe) = pipe else {
        return (Vec::new(), false);
    };
    let mut kept: VecDeque<u8> = VecDeque::new();
    let mut overflow = false;
    let mut line: Vec<u8> = Vec::new();
    // Small at first (most task processes write little or nothing, and a
    // large buffer for each of them kept the allocator busy), four times
    // larger after each read that fills it, up to 16 KiB.
    let mut buf = vec![0u8; 256];
    loop {
        let n = match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if n == buf.len() && buf.len() < 16 * 1024 {
            buf.resize(buf.len() * 4, 0);
        }
        let chunk = &buf[..n];
        if tail {
            kept.extend(chunk);
            let excess = kept.len().saturating_sub(keep);
            kept.drain(..excess);
        } else {
            let room = keep.saturating_sub(kept.len());
            kept.extend(&chunk[..room.min(n)]);
            overflow |= n > room;
        }
        for &b in chunk {
            if b == b'\n' || line.len() >= 4096 {
                sink(stream, &line);
                line.clear();
                if b == b'\n' {
                    continue;
                }
            }
            line.push(b);
        }
    }
    if !line.is_empty() {
        sink(stream, &line);
    }
    (kept.into(), overflow)
}

/// Sends `sig` to the process group led by `pid`.
pub fn kill_group(pid: u32, sig: Signal) -> nix::Result<()> {
    if pid == 0 {
        return Ok(());
    }
    killpg(Pid::from_raw(pid as i32), sig)
}

fn exit_status(s: std::process::ExitStatus) -> ExitStatus {
    match (s.code(), s.signal()) {
        (Some(c), _) => ExitStatus::Code(c),
        (None, Some(sig)) => ExitStatus::Signal(sig),
        (None, None) => ExitStatus::Code(-1),
    }
}
