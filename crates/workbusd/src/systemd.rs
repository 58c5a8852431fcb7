//! systemd glue: notifications to the service manager. Every function is a
//! no-op without `NOTIFY_SOCKET` and never fails the caller.

use std::ffi::OsStr;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

/// What the daemon tells systemd, and when the watchdog wants a ping.
///
/// Messages go out on a non-blocking socket: a service manager that does
/// not read must never stall the event loop. A `STATUS=` or `WATCHDOG=1`
/// that finds the queue full is dropped; state changes (`READY=1`,
/// `RELOADING=1`, `STOPPING=1`) are retried for a moment first.
#[derive(Debug)]
pub struct Notifier {
    socket: Option<UnixDatagram>,
    watchdog: Option<Duration>,
    last_ping: Instant,
    last_status: String,
}

impl Notifier {
    pub fn from_env() -> Self {
        let socket = std::env::var_os("NOTIFY_SOCKET").and_then(|p| match connect(&p) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(
                    "NOTIFY_SOCKET={}: {e}; not notifying systemd",
                    p.to_string_lossy()
                );
                None
            }
        });
        let mut usec = 0u64;
        let watchdog =
            (socket.is_some() && sd_notify::watchdog_enabled(false, &mut usec) && usec > 0)
                .then(|| Duration::from_micros(usec));
        Notifier {
            socket,
            watchdog,
            last_ping: Instant::now(),
            last_status: String::new(),
        }
    }

    fn send(&self, states: &[NotifyState], important: bool) {
        let Some(sock) = &self.socket else { return };
        let msg: String = states.iter().map(|s| format!("{s}\n")).collect();
        for _ in 0..if important { 200 } else { 1 } {
            match sock.send(msg.as_bytes()) {
                Ok(_) => return,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if important {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
                Err(e) => {
                    tracing::debug!("sd_notify: {e}");
                    return;
                }
            }
        }
        tracing::debug!("sd_notify: the service manager is not reading; dropped {msg:?}");
    }

    pub fn ready(&mut self, status: &str) {
        self.last_status = status.to_string();
        self.send(&[NotifyState::Ready, NotifyState::Status(status)], true);
    }

    /// `STATUS=`, sent only when it changed.
    pub fn status(&mut self, status: &str) {
        if self.last_status != status {
            self.last_status = status.to_string();
            self.send(&[NotifyState::Status(status)], false);
        }
    }

    /// `RELOADING=1` with the monotonic time systemd asks for.
    pub fn reloading(&self) {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[NotifyState::Reloading, now], true),
            Err(_) => self.send(&[NotifyState::Reloading], true),
        }
    }

    pub fn stopping(&self) {
        self.send(
            &[
                NotifyState::Stopping,
                NotifyState::Status("stopping: draining running tasks"),
            ],
            true,
        );
    }

    /// The interval at which the event loop must ping, if the unit set
    /// `WatchdogSec=`: half the watchdog period, as systemd advises.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.map(|w| w / 2)
    }

    /// Pings the watchdog if it is due. Called from the event loop only, so
    /// a wedged loop stops pinging and systemd restarts the daemon.
    pub fn pet(&mut self) {
        if let Some(i) = self.watchdog_interval()
            && self.last_ping.elapsed() >= i
        {
            self.send(&[NotifyState::Watchdog], false);
            self.last_ping = Instant::now();
        }
    }

    /// When the next ping is due.
    pub fn next_ping(&self) -> Option<Instant> {
        self.watchdog_interval().map(|i| self.last_ping + i)
    }
}

/// A non-blocking socket connected to `$NOTIFY_SOCKET` (a path, or an
/// abstract name written `@name`).
fn connect(path: &OsStr) -> std::io::Result<UnixDatagram> {
    use std::os::unix::ffi::OsStrExt;
    let sock = UnixDatagram::unbound()?;
    match path.as_bytes().strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            sock.connect_addr(&std::os::unix::net::SocketAddr::from_abstract_name(name)?)?
        }
        None => sock.connect(path)?,
    }
    sock.set_nonblocking(true)?;
    Ok(sock)
}
