//! One worker process: started in its own process group, fed its stdin,
//! its output captured (capped) and passed on line by line, stopped with
//! SIGTERM then SIGKILL to the whole group.

use std::collections::VecDeque;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::{Gid, Pid, Uid, getpid, getppid, setgid, setgroups, setuid};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
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
    /// than started with the cheaper `posix_spawn`; without it an orphan is
    /// the caller's to find and stop.
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
#[derive(Debug)]
pub struct Running {
    pub pid: u32,
    child: tokio::process::Child,
    stdin: Option<Vec<u8>>,
    spec_cap: u64,
    stderr_tail: usize,
    started: Instant,
}

impl Spec {
    /// Starts the process in a new process group.
    pub fn start(&self) -> io::Result<Running> {
        let mut cmd = tokio::process::Command::new(&self.program);
        cmd.args(&self.args)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("JOURNAL_STREAM")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
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
        let child = cmd
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("starting {:?}: {e}", self.program)))?;
        Ok(Running {
            pid: child.id().unwrap_or(0),
            child,
            stdin: match &self.stdin {
                Input::Bytes(b) => Some(b.clone()),
                _ => None,
            },
            spec_cap: self.stdout_cap,
            stderr_tail: self.stderr_tail,
            started: Instant::now(),
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
        let stdin = self.child.stdin.take();
        let stdout = self.child.stdout.take();
        let stderr = self.child.stderr.take();
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
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
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
