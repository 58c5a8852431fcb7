//! systemd glue: notifications to the service manager. Every function is a
//! no-op without `NOTIFY_SOCKET` and never fails the caller.

use std::time::{Duration, Instant};

use sd_notify::NotifyState;

/// What the daemon tells systemd, and when the watchdog wants a ping.
#[derive(Debug)]
pub struct Notifier {
    enabled: bool,
    watchdog: Option<Duration>,
    last_ping: Instant,
}

impl Notifier {
    pub fn from_env() -> Self {
        let enabled = std::env::var_os("NOTIFY_SOCKET").is_some();
        let mut usec = 0u64;
        let watchdog = (enabled && sd_notify::watchdog_enabled(false, &mut usec) && usec > 0)
            .then(|| Duration::from_micros(usec));
        Notifier {
            enabled,
            watchdog,
            last_ping: Instant::now(),
        }
    }

    fn send(&self, states: &[NotifyState]) {
        if self.enabled
            && let Err(e) = sd_notify::notify(false, states)
        {
            tracing::debug!("sd_notify: {e}");
        }
    }

    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    pub fn status(&self, status: &str) {
        self.send(&[NotifyState::Status(status)]);
    }

    /// `RELOADING=1` with the monotonic time systemd asks for.
    pub fn reloading(&self) {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[NotifyState::Reloading, now]),
            Err(_) => self.send(&[NotifyState::Reloading]),
        }
    }

    pub fn stopping(&self) {
        self.send(&[
            NotifyState::Stopping,
            NotifyState::Status("stopping: draining running tasks"),
        ]);
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
            self.send(&[NotifyState::Watchdog]);
            self.last_ping = Instant::now();
        }
    }

    /// When the next ping is due.
    pub fn next_ping(&self) -> Option<Instant> {
        self.watchdog_interval().map(|i| self.last_ping + i)
    }
}
