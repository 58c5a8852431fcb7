//! `workbusd.toml`: the daemon's settings (SPEC §7). Every key has a default.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::HumanDuration;
use crate::parse::{self, ParseError};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WatchMode {
    /// inotify, except on filesystems where it misses writes (NFS, FUSE, …).
    #[default]
    Auto,
    Notify,
    Poll,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogMode {
    /// journald when stderr is the journal, else text.
    #[default]
    Auto,
    Journald,
    Text,
    Json,
}

/// The daemon's configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    /// The bus folder.
    pub root: PathBuf,
    /// The fleet file.
    pub fleet: PathBuf,
    pub watch: WatchMode,
    /// Polling backs off from `poll_min` to `poll_max` while nothing happens.
    pub poll_min: HumanDuration,
    pub poll_max: HumanDuration,
    /// A full rescan this often catches anything a watch missed.
    pub rescan_interval: HumanDuration,
    /// How long a task waits for a worker that offers its capabilities.
    pub capability_grace: HumanDuration,
    /// How often bus workers renew `workers/<name>.json` (told to resident workers).
    pub heartbeat_interval: HumanDuration,
    /// A claim whose worker's heartbeat is older than this is revoked.
    pub lease_timeout: HumanDuration,
    /// fsync records that cannot be re-derived (goals, results, reports).
    pub fsync: bool,
    pub max_goal_bytes: u64,
    pub max_tasks_per_goal: usize,
    /// Largest result record (and spawned program's stdout) accepted.
    pub max_result_bytes: u64,
    /// Processes the daemon runs at once, over all workers.
    pub max_running: u32,
    /// How long finished goals' files stay in `archive/`.
    pub archive_retention: HumanDuration,
    /// How long SIGTERM waits for running tasks.
    pub drain_timeout: HumanDuration,
    /// Between SIGTERM and SIGKILL of a worker's process group.
    pub kill_grace: HumanDuration,
    /// Per-attempt timeout when neither the task nor its worker sets one.
    pub default_timeout: HumanDuration,
    /// First retry delay; doubled per failure up to `retry_backoff_max`.
    pub retry_backoff: HumanDuration,
    pub retry_backoff_max: HumanDuration,
    /// Resident worker restarts back off from this...
    pub restart_backoff: HumanDuration,
    /// ...up to this.
    pub restart_backoff_max: HumanDuration,
    /// This many exits within `crash_loop_window` mark a worker unhealthy...
    pub crash_loop_restarts: u32,
    pub crash_loop_window: HumanDuration,
    /// ...until it is tried again after this.
    pub crash_loop_cooldown: HumanDuration,
    /// Cap on each task's log file on the bus.
    pub max_log_bytes: u64,
    /// Least time between two writes of `status.json`.
    pub status_interval: HumanDuration,
    pub log: LogMode,
    /// `error`, `warn`, `info`, `debug` or `trace` (or a tracing filter).
    pub log_level: String,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            root: PathBuf::from("/var/lib/workbus"),
            fleet: PathBuf::from("/etc/workbus/fleet.toml"),
            watch: WatchMode::Auto,
            poll_min: HumanDuration::millis(50),
            poll_max: HumanDuration::secs(2),
            rescan_interval: HumanDuration::secs(300),
            capability_grace: HumanDuration::secs(30),
            heartbeat_interval: HumanDuration::secs(30),
            lease_timeout: HumanDuration::secs(90),
            fsync: true,
            max_goal_bytes: 4 << 20,
            max_tasks_per_goal: 10_000,
            max_result_bytes: 16 << 20,
            max_running: 256,
            archive_retention: HumanDuration::secs(7 * 24 * 3600),
            drain_timeout: HumanDuration::secs(30),
            kill_grace: HumanDuration::secs(5),
            default_timeout: HumanDuration::secs(30 * 60),
            retry_backoff: HumanDuration::secs(1),
            retry_backoff_max: HumanDuration::secs(300),
            restart_backoff: HumanDuration::secs(1),
            restart_backoff_max: HumanDuration::secs(60),
            crash_loop_restarts: 5,
            crash_loop_window: HumanDuration::secs(60),
            crash_loop_cooldown: HumanDuration::secs(300),
            max_log_bytes: 1 << 20,
            status_interval: HumanDuration::millis(250),
            log: LogMode::Auto,
            log_level: "info".into(),
        }
    }
}

/// A configuration file that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    pub error: ParseError,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file.display(), self.error)
    }
}

impl DaemonConfig {
    /// Parses and checks `workbusd.toml` text.
    pub fn parse(text: &str, file: &Path) -> Result<DaemonConfig, ConfigError> {
        let err = |error| ConfigError {
            file: file.to_path_buf(),
            error,
        };
        let c: DaemonConfig = parse::from_toml(text).map_err(err)?;
        c.check().map_err(|message| {
            err(ParseError {
                line: None,
                column: None,
                message,
            })
        })?;
        Ok(c)
    }

    /// Cross-key checks.
    pub fn check(&self) -> Result<(), String> {
        if self.poll_min.0.is_zero() || self.poll_min > self.poll_max {
            return Err(format!(
                "poll_min ({}) must be more than zero and at most poll_max ({})",
                self.poll_min, self.poll_max
            ));
        }
        if self.heartbeat_interval.0.is_zero() || self.lease_timeout <= self.heartbeat_interval {
            return Err(format!(
                "lease_timeout ({}) must be longer than heartbeat_interval ({})",
                self.lease_timeout, self.heartbeat_interval
            ));
        }
        if self.max_tasks_per_goal == 0 || self.max_goal_bytes == 0 || self.max_result_bytes == 0 {
            return Err(
                "max_tasks_per_goal, max_goal_bytes and max_result_bytes must be more than zero"
                    .into(),
            );
        }
        if self.max_running == 0 {
            return Err("max_running must be more than zero".into());
        }
        if self.retry_backoff > self.retry_backoff_max
            || self.restart_backoff > self.restart_backoff_max
        {
            return Err("a backoff's start must not exceed its max".into());
        }
        if self.crash_loop_restarts == 0 {
            return Err("crash_loop_restarts must be more than zero".into());
        }
        if !self.root.is_absolute() {
            return Err(format!(
                "root must be an absolute path, not {:?}",
                self.root.display().to_string()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_is_defaults() {
        assert_eq!(
            DaemonConfig::parse("", Path::new("w.toml")).unwrap(),
            DaemonConfig::default()
        );
    }

    #[test]
    fn unknown_keys_are_errors() {
        let e = DaemonConfig::parse("wach = \"poll\"\n", Path::new("w.toml")).unwrap_err();
        assert!(e.to_string().contains("unknown field `wach`"), "{e}");
        assert!(e.to_string().starts_with("w.toml: line 1"), "{e}");
    }

    #[test]
    fn cross_checks() {
        let e = DaemonConfig::parse(
            "poll_min = \"5s\"\npoll_max = \"1s\"\n",
            Path::new("w.toml"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("poll_min"), "{e}");
    }
}
