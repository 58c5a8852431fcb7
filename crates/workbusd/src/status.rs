//! `status.json` (for `workbusctl status`) and `metrics.prom` (for
//! node_exporter's textfile collector), and the `STATUS=` line for systemd.
//! Derived state: rewritten, never fsynced, at most every `status_interval`.

use std::fmt::Write as _;
use std::time::Instant;

use workbus_proto::report::Outcome;
use workbus_proto::status::{DaemonInfo, Status};
use workbus_proto::{SCHEMA_VERSION, Timestamp};

use crate::daemon::{Daemon, json_bytes};

/// Per-task detail is listed for goals up to this size.
const LIST_TASKS_UP_TO: usize = 500;

/// Counters since start.
#[derive(Debug, Default)]
pub struct Metrics {
    pub goals_accepted: u64,
    pub rejected: u64,
    pub stale_results: u64,
    pub fleet_errors: u64,
    pub outcomes: [u64; 5],
}

impl Metrics {
    pub fn goal_finished(&mut self, o: Outcome) {
        self.outcomes[outcome_index(o)] += 1;
    }
}

fn outcome_index(o: Outcome) -> usize {
    match o {
        Outcome::Succeeded => 0,
        Outcome::Degraded => 1,
        Outcome::Failed => 2,
        Outcome::Cancelled => 3,
        Outcome::TimedOut => 4,
    }
}

const OUTCOMES: [Outcome; 5] = [
    Outcome::Succeeded,
    Outcome::Degraded,
    Outcome::Failed,
    Outcome::Cancelled,
    Outcome::TimedOut,
];

impl Daemon {
    pub(crate) fn status(&self) -> Status {
        let now = Timestamp::now();
        let (totals, mut goals) = self.engine.snapshot(LIST_TASKS_UP_TO);
        for g in &mut goals {
            g.held = self.held_reason(&g.id).or_else(|| {
                self.results_hold.as_ref().map(|h| {
                    format!(
                        "results cannot be made durable ({}); nothing that depends on them is written until they are",
                        h.tries.summary()
                    )
                })
            });
        }
        let workers =
            self.fleet
                .statuses(|w| self.engine.running_on(w), now, self.cfg.lease_timeout.0);
        Status {
            schema_version: SCHEMA_VERSION,
            updated_at: now,
            daemon: DaemonInfo {
                pid: std::process::id(),
                started_at: self.started_at,
                watch: if self.watch.poll {
                    "poll".into()
                } else {
                    "notify".into()
                },
                watch_reason: self.watch.reason.clone(),
                running: self.stopping.is_none(),
            },
            totals,
            goals,
            workers,
        }
    }

    /// The one-line summary systemd shows (`STATUS=`).
    pub(crate) fn status_line(&self) -> String {
        let s = self.status();
        let healthy = s.workers.iter().filter(|w| w.healthy).count();
        format!(
            "{} goal(s) running, {} task(s) queued, {} running; {}/{} worker(s) healthy",
            s.goals.len(),
            s.totals.queued,
            s.totals.running,
            healthy,
            s.workers.len()
        )
    }

    pub(crate) fn write_status(&mut self) {
        let status = self.status();
        let root = self.root();
        let metrics = self.metrics_text(&status);
        let written = workbus_bus::write_atomic(&root, "status.json", &json_bytes(&status), false)
            .and_then(|()| {
                workbus_bus::write_atomic(&root, "metrics.prom", metrics.as_bytes(), false)
            });
        // A full disk must not fill the log: say it once, and say when it ends.
        match (written, self.status_error.is_some()) {
            (Err(e), _) => {
                let msg = e.to_string();
                if self.status_error.as_deref() != Some(msg.as_str()) {
                    tracing::warn!(path = %root.join("status.json").display(), "cannot write the status and metrics: {msg}; retrying");
                    self.status_error = Some(msg);
                }
            }
            (Ok(()), true) => {
                tracing::info!("status.json is written again");
                self.status_error = None;
            }
            (Ok(()), false) => {}
        }
        let healthy = status.workers.iter().filter(|w| w.healthy).count();
        self.notifier.status(&format!(
            "{} goal(s) running, {} task(s) queued, {} running; {}/{} worker(s) healthy",
            status.goals.len(),
            status.totals.queued,
            status.totals.running,
            healthy,
            status.workers.len()
        ));
        self.mark_status_written(Instant::now());
    }

    fn metrics_text(&self, s: &Status) -> String {
        let mut m = String::new();
        let _ = writeln!(
            m,
            "# HELP workbus_goals_in_flight Goals accepted and not yet ended."
        );
        let _ = writeln!(m, "# TYPE workbus_goals_in_flight gauge");
        let _ = writeln!(m, "workbus_goals_in_flight {}", s.goals.len());
        let _ = writeln!(
            m,
            "# HELP workbus_goals_held Goals in flight that wait because they, or results written for them, could not be made durable yet."
        );
        let _ = writeln!(m, "# TYPE workbus_goals_held gauge");
        let _ = writeln!(
            m,
            "workbus_goals_held {}",
            s.goals.iter().filter(|g| g.held.is_some()).count()
        );
        let _ = writeln!(
            m,
            "# HELP workbus_tasks Tasks of goals in flight, by state."
        );
        let _ = writeln!(m, "# TYPE workbus_tasks gauge");
        for (state, n) in [
            ("waiting", s.totals.waiting),
            ("queued", s.totals.queued),
            ("running", s.totals.running),
            ("succeeded", s.totals.succeeded),
            ("failed", s.totals.failed),
            ("skipped", s.totals.skipped),
            ("cancelled", s.totals.cancelled),
        ] {
            let _ = writeln!(m, "workbus_tasks{{state=\"{state}\"}} {n}");
        }
        let _ = writeln!(
            m,
            "# HELP workbus_goals_finished_total Goals ended since the daemon started, by outcome."
        );
        let _ = writeln!(m, "# TYPE workbus_goals_finished_total counter");
        for o in OUTCOMES {
            let _ = writeln!(
                m,
                "workbus_goals_finished_total{{outcome=\"{o}\"}} {}",
                self.metrics.outcomes[outcome_index(o)]
            );
        }
        let _ = writeln!(m, "# TYPE workbus_goals_accepted_total counter");
        let _ = writeln!(
            m,
            "workbus_goals_accepted_total {}",
            self.metrics.goals_accepted
        );
        let _ = writeln!(m, "# TYPE workbus_files_rejected_total counter");
        let _ = writeln!(m, "workbus_files_rejected_total {}", self.metrics.rejected);
        let _ = writeln!(m, "# TYPE workbus_stale_results_total counter");
        let _ = writeln!(
            m,
            "workbus_stale_results_total {}",
            self.metrics.stale_results
        );
        let _ = writeln!(m, "# TYPE workbus_fleet_reload_errors_total counter");
        let _ = writeln!(
            m,
            "workbus_fleet_reload_errors_total {}",
            self.metrics.fleet_errors
        );
        let _ = writeln!(
            m,
            "# HELP workbus_worker_healthy Whether each worker may be routed to."
        );
        let _ = writeln!(m, "# TYPE workbus_worker_healthy gauge");
        for w in &s.workers {
            let _ = writeln!(
                m,
                "workbus_worker_healthy{{worker=\"{}\",mode=\"{}\"}} {}",
                w.name,
                w.mode,
                u8::from(w.healthy)
            );
        }
        let _ = writeln!(m, "# TYPE workbus_worker_running gauge");
        for w in &s.workers {
            let _ = writeln!(
                m,
                "workbus_worker_running{{worker=\"{}\"}} {}",
                w.name, w.running
            );
        }
        let _ = writeln!(m, "# TYPE workbus_writes_deferred gauge");
        let _ = writeln!(m, "workbus_writes_deferred {}", self.pending.len());
        m
    }
}
