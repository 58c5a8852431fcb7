//! The fleet: the workers of `fleet.toml` (spawn and resident) and the
//! external workers that advertise in `workers/`. Resident workers are
//! supervised here: restarted with backoff, withdrawn when they crash-loop,
//! drained and restarted when their entry changes.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::oneshot;
use workbus_engine::{WorkerKind, WorkerView};
use workbus_proto::config::DaemonConfig;
use workbus_proto::fleet::{Fleet, WorkerMode, WorkerSpec};
use workbus_proto::status::WorkerStatus;
use workbus_proto::worker::WorkerAd;
use workbus_proto::{Id, Timestamp};
use workbus_supervisor::{Backoff, CrashWindow, StopReason, Stream};

/// Reads and checks a fleet file. A missing file is an empty fleet.
pub fn load_fleet_file(path: &Path) -> anyhow::Result<Fleet> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Fleet::parse(&text, path)?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::warn!(
                "the fleet file {} does not exist: no workers of our own (external workers may still join)",
                path.display()
            );
            Ok(Fleet::default())
        }
        Err(e) => Err(e).with_context(|| format!("reading the fleet file {}", path.display())),
    }
}

/// A running resident process.
#[derive(Debug)]
pub struct ResidentProc {
    pub pid: u32,
    pub stop: Option<oneshot::Sender<StopReason>>,
    pub started: Instant,
}

/// One worker of `fleet.toml`.
#[derive(Debug)]
pub struct FleetWorker {
    pub spec: WorkerSpec,
    /// Finishing its work before it stops (removed or changed).
    pub draining: bool,
    /// Removed from the fleet: forget it once its process has stopped.
    pub removing: bool,
    /// The entry changed: start with this once the old process has stopped.
    pub next_spec: Option<WorkerSpec>,
    pub process: Option<ResidentProc>,
    /// Counts process starts, to tell a stale exit from the current one.
    pub generation: u64,
    pub backoff: Backoff,
    pub crashes: CrashWindow,
    pub restarts: u32,
    /// Set while withdrawn for crash-looping.
    pub unhealthy_until: Option<Instant>,
    /// After a cool-down: one more quick exit and it is withdrawn again.
    pub probation_until: Option<Instant>,
    pub restart_at: Option<Instant>,
    pub last_error: Option<String>,
    /// Its last heartbeat in `workers/` (resident).
    pub last_seen: Option<Timestamp>,
}

impl FleetWorker {
    pub fn new(spec: WorkerSpec, cfg: &DaemonConfig) -> Self {
        FleetWorker {
            spec,
            draining: false,
            removing: false,
            next_spec: None,
            process: None,
            generation: 0,
            backoff: Backoff::new(cfg.restart_backoff.0, cfg.restart_backoff_max.0),
            crashes: CrashWindow::new(cfg.crash_loop_restarts, cfg.crash_loop_window.0),
            restarts: 0,
            unhealthy_until: None,
            probation_until: None,
            restart_at: None,
            last_error: None,
            last_seen: None,
        }
    }

    pub fn resident(&self) -> bool {
        self.spec.mode == WorkerMode::Resident
    }

    pub fn healthy(&self) -> bool {
        self.unhealthy_until.is_none()
    }
}

/// What a reload changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct FleetDiff {
    pub added: Vec<Id>,
    pub removed: Vec<Id>,
    pub changed: Vec<Id>,
    pub unchanged: Vec<Id>,
}

#[derive(Debug)]
pub struct FleetState {
    pub workers: BTreeMap<Id, FleetWorker>,
    pub external: BTreeMap<Id, WorkerAd>,
    /// Heartbeat files that could not be read, with the error last logged.
    pub bad_ads: BTreeMap<String, String>,
}

impl FleetState {
    pub fn new(fleet: Fleet, cfg: &DaemonConfig) -> Self {
        let workers = fleet
            .worker
            .into_iter()
            .map(|w| {
                let mut fw = FleetWorker::new(w, cfg);
                // Resident workers are due to start: healthy, not withdrawn.
                fw.restart_at = fw.resident().then(Instant::now);
                (fw.spec.name.clone(), fw)
            })
            .collect();
        FleetState {
            workers,
            external: BTreeMap::new(),
            bad_ads: BTreeMap::new(),
        }
    }

    /// Applies a new fleet: added workers are created (resident ones start
    /// on the next tick), removed ones drain, changed ones drain and restart
    /// with the new entry, unchanged ones are not touched.
    pub fn apply(&mut self, fleet: Fleet, cfg: &DaemonConfig) -> FleetDiff {
        let mut diff = FleetDiff::default();
        let mut new: BTreeMap<Id, WorkerSpec> = fleet
            .worker
            .into_iter()
            .map(|w| (w.name.clone(), w))
            .collect();
        for (name, fw) in self.workers.iter_mut() {
            match new.remove(name) {
                None => {
                    if !fw.removing {
                        diff.removed.push(name.clone());
                    }
                    fw.draining = true;
                    fw.removing = true;
                    fw.next_spec = None;
                    fw.restart_at = None;
                }
                Some(spec) if spec == fw.spec && !fw.removing => diff.unchanged.push(name.clone()),
                Some(spec) => {
                    diff.changed.push(name.clone());
                    fw.removing = false;
                    if fw.process.is_some() {
                        // Drain the old process; start the new one after it.
                        fw.draining = true;
                        fw.next_spec = Some(spec);
                    } else {
                        *fw = FleetWorker::new(spec, cfg);
                        fw.restart_at = Some(Instant::now());
                    }
                }
            }
        }
        for (name, spec) in new {
            diff.added.push(name.clone());
            let mut fw = FleetWorker::new(spec, cfg);
            fw.restart_at = Some(Instant::now());
            self.workers.insert(name, fw);
        }
        // Spawn workers have no process to drain: removal is immediate (their
        // running tasks finish on their own) and a change applies to new tasks.
        self.workers.retain(|_, fw| fw.resident() || !fw.removing);
        for fw in self.workers.values_mut() {
            if !fw.resident()
                && let Some(spec) = fw.next_spec.take()
            {
                fw.spec = spec;
                fw.draining = false;
            }
        }
        diff
    }

    /// The engine's view of every worker.
    pub fn views(&self) -> Vec<WorkerView> {
        let mut out: Vec<WorkerView> = self
            .workers
            .values()
            .filter(|fw| !fw.removing)
            .map(|fw| WorkerView {
                name: fw.spec.name.clone(),
                capabilities: fw.spec.capabilities.iter().cloned().collect(),
                kind: match fw.spec.mode {
                    WorkerMode::Spawn => WorkerKind::Spawn {
                        concurrency: fw.spec.concurrency,
                    },
                    WorkerMode::Resident => WorkerKind::Resident,
                },
                healthy: fw.healthy()
                    && (!fw.resident() || fw.process.is_some() || fw.restart_at.is_some()),
                last_seen: if fw.resident() { fw.last_seen } else { None },
                timeout: fw.spec.timeout.map(|d| d.0),
                draining: fw.draining,
            })
            .collect();
        for ad in self.external.values() {
            if self.workers.contains_key(&ad.name) {
                continue;
            }
            out.push(WorkerView {
                name: ad.name.clone(),
                capabilities: ad.capabilities.iter().cloned().collect(),
                kind: WorkerKind::External,
                healthy: !ad.stopping,
                last_seen: Some(ad.last_seen),
                timeout: None,
                draining: ad.stopping,
            });
        }
        out
    }

    /// Status lines for `status.json`.
    pub fn statuses(
        &self,
        running_on: impl Fn(&Id) -> u32,
        now: Timestamp,
        lease: Duration,
    ) -> Vec<WorkerStatus> {
        let mut out: Vec<WorkerStatus> = self
            .workers
            .values()
            .map(|fw| {
                let health = if let Some(e) = fw.unhealthy_until.and(fw.last_error.as_ref()) {
                    Some(e.clone())
                } else if fw.resident() && fw.process.is_none() {
                    Some("not running".into())
                } else {
                    None
                };
                WorkerStatus {
                    name: fw.spec.name.clone(),
                    mode: fw.spec.mode.to_string(),
                    capabilities: fw.spec.capabilities.clone(),
                    healthy: fw.healthy(),
                    health,
                    running: running_on(&fw.spec.name),
                    capacity: fw.spec.concurrency,
                    restarts: fw.restarts,
                    last_error: fw.last_error.clone(),
                    last_seen: fw.last_seen,
                    pid: fw.process.as_ref().map(|p| p.pid),
                    host: None,
                    draining: fw.draining,
                }
            })
            .collect();
        for ad in self.external.values() {
            if self.workers.contains_key(&ad.name) {
                continue;
            }
            let fresh = now.since(ad.last_seen) <= lease && !ad.stopping;
            out.push(WorkerStatus {
                name: ad.name.clone(),
                mode: "external".into(),
                capabilities: ad.capabilities.clone(),
                healthy: fresh,
                health: (!fresh).then(|| {
                    if ad.stopping {
                        "stopping".to_string()
                    } else {
                        format!(
                            "no heartbeat for {}",
                            workbus_engine::fmt_duration(now.since(ad.last_seen))
                        )
                    }
                }),
                running: running_on(&ad.name),
                capacity: ad.concurrency,
                restarts: 0,
                last_error: None,
                last_seen: Some(ad.last_seen),
                pid: Some(ad.pid),
                host: Some(ad.host.clone()),
                draining: ad.stopping,
            });
        }
        out
    }

    /// The earliest time a resident worker needs (re)starting or a
    /// cool-down ends.
    pub fn next_wake(&self) -> Option<Instant> {
        self.workers.values().filter_map(|fw| fw.restart_at).min()
    }
}

/// A log file on the bus with a size cap. With `rotate`, a full file is
/// renamed to `NAME.1` and a new one begun; otherwise writing stops at the
/// cap with a note.
#[derive(Debug)]
pub struct CappedLog {
    path: PathBuf,
    cap: u64,
    rotate: bool,
    state: Mutex<(Option<File>, u64, bool)>,
}

impl CappedLog {
    /// A new log (an attempt's): nothing to look up on disk.
    pub fn create(path: PathBuf, cap: u64) -> Arc<CappedLog> {
        Arc::new(CappedLog {
            path,
            cap,
            rotate: false,
            state: Mutex::new((None, 0, false)),
        })
    }

    /// A log that may already have lines (a worker's, across restarts).
    pub fn open(path: PathBuf, cap: u64, rotate: bool) -> Arc<CappedLog> {
        let written = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        Arc::new(CappedLog {
            path,
            cap,
            rotate,
            state: Mutex::new((None, written, false)),
        })
    }

    pub fn line(&self, stream: Stream, line: &[u8]) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        let (file, written, full) = &mut *st;
        if *full {
            return;
        }
        let tag: &[u8] = match stream {
            Stream::Stdout => b"[stdout] ",
            Stream::Stderr => b"[stderr] ",
        };
        let need = (tag.len() + line.len() + 1) as u64;
        if *written + need > self.cap {
            if self.rotate {
                *file = None;
                let _ = std::fs::rename(&self.path, self.path.with_extension("log.1"));
                *written = 0;
            } else {
                if let Some(f) = file.as_mut() {
                    let _ = writeln!(
                        f,
                        "[workbusd] log truncated at {} bytes (max_log_bytes)",
                        self.cap
                    );
                }
                *full = true;
                return;
            }
        }
        if file.is_none() {
            *file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .ok();
        }
        if let Some(f) = file.as_mut() {
            let _ = f
                .write_all(tag)
                .and_then(|_| f.write_all(line))
                .and_then(|_| f.write_all(b"\n"));
            *written += need;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet(text: &str) -> Fleet {
        Fleet::parse(text, Path::new("fleet.toml")).unwrap()
    }

    const A: &str = "[[worker]]\nname = \"a\"\ncapabilities = [\"x\"]\ncommand = [\"/bin/true\"]\n";
    const B: &str = "[[worker]]\nname = \"b\"\ncapabilities = [\"y\"]\ncommand = [\"/bin/true\"]\nmode = \"resident\"\n";
    const B2: &str = "[[worker]]\nname = \"b\"\ncapabilities = [\"y\", \"z\"]\ncommand = [\"/bin/true\"]\nmode = \"resident\"\n";

    #[test]
    fn reloads_are_diffed() {
        let cfg = DaemonConfig::default();
        let mut st = FleetState::new(fleet(A), &cfg);
        let d = st.apply(fleet(&format!("{A}{B}")), &cfg);
        assert_eq!(d.added, vec![Id::new("b").unwrap()]);
        assert_eq!(d.unchanged, vec![Id::new("a").unwrap()]);
        // b is running: a change drains it and keeps the new entry for later.
        st.workers.get_mut("b").unwrap().process = Some(ResidentProc {
            pid: 1,
            stop: None,
            started: Instant::now(),
        });
        let d = st.apply(fleet(&format!("{A}{B2}")), &cfg);
        assert_eq!(d.changed, vec![Id::new("b").unwrap()]);
        assert!(st.workers["b"].draining && st.workers["b"].next_spec.is_some());
        let d = st.apply(fleet(B2), &cfg);
        assert_eq!(d.removed, vec![Id::new("a").unwrap()]);
        assert!(!st.workers.contains_key("a"), "a spawn worker goes at once");
    }

    #[test]
    fn capped_logs_stop_or_rotate() {
        let d = tempfile::tempdir().unwrap();
        let l = CappedLog::open(d.path().join("t.log"), 40, false);
        for _ in 0..10 {
            l.line(Stream::Stderr, b"0123456789");
        }
        let text = std::fs::read_to_string(d.path().join("t.log")).unwrap();
        assert!(
            text.ends_with("log truncated at 40 bytes (max_log_bytes)\n"),
            "{text}"
        );
        let r = CappedLog::open(d.path().join("w.log"), 40, true);
        for _ in 0..10 {
            r.line(Stream::Stdout, b"0123456789");
        }
        assert!(d.path().join("w.log.1").exists());
        assert!(std::fs::metadata(d.path().join("w.log")).unwrap().len() <= 40);
    }
}
