//! Running workers: one process per task for spawn workers, a supervised
//! long-running process for resident ones.

use std::io;
use std::sync::Arc;
use std::time::Instant;

use serde_json::{Value, json};
use tokio::sync::oneshot;
use workbus_bus::{Folder, ReadError, read_capped};
use workbus_engine::{Effect, Input, template};
use workbus_proto::fleet::WorkerSpec;
use workbus_proto::names::{ArchiveKind, AttemptKey};
use workbus_proto::result::{ResultRecord, ResultStatus};
use workbus_proto::task::TaskRecord;
use workbus_proto::{Id, Timestamp};
use workbus_supervisor::{Exit, Spec, StopReason, Stream, resolve_identity};

use crate::daemon::{Daemon, json_bytes};
use crate::event::Event;
use crate::fleet::{CappedLog, ResidentProc, load_fleet_file};
use crate::ingest::Held;
use crate::pending::Op;

/// How a spawn's claim file comes to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// Rename the published task file from tasks/ (it waited there).
    Rename,
    /// Write the record into claimed/ now (it was never published).
    Write,
    /// The claim file is already written.
    Written,
}

/// A spawned task process in flight.
#[derive(Debug)]
pub struct SpawnHandle {
    pub stop: Option<oneshot::Sender<StopReason>>,
    pub started_at: Timestamp,
    /// Stopped because the daemon is stopping: its attempt is left to be
    /// redone after a restart, not failed.
    pub abandoned: bool,
}

impl Daemon {
    /// Claims a task for a spawn worker and starts its process.
    pub(crate) fn start_spawn(&mut self, worker: Id, record: Arc<TaskRecord>, how: Claim) {
        let key = AttemptKey::new(record.goal.clone(), record.task.clone(), record.attempt);
        if !self.engine.is_live(&key) {
            return;
        }
        let claim_name = key.claim_name(worker.as_str());
        let claim_path = self.bus.path(Folder::Claimed, &claim_name);
        match how {
            Claim::Rename if self.pending.holds(&key.file_name()) => {
                // Its task file is itself still waiting to be written.
                self.pending.push(Op::Dispatch {
                    worker,
                    record,
                    how: Claim::Rename,
                });
                return;
            }
            Claim::Rename => match std::fs::rename(self.bus.task_path(&key), &claim_path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    self.feed(Input::ClaimRaced { key });
                    return;
                }
                Err(e) => {
                    self.spawn_failed(&key, &worker, format!("cannot claim the task: {e}"));
                    return;
                }
            },
            Claim::Write => {
                // Published and claimed at once: the record goes straight
                // into claimed/ (one write instead of a write and a rename,
                // and no wake-up of the bus workers watching tasks/).
                let dir = self.bus.dir(Folder::Claimed);
                if !self
                    .pending
                    .write(&dir, &claim_name, json_bytes(&*record), false)
                {
                    self.pending.push(Op::Dispatch {
                        worker,
                        record,
                        how: Claim::Written,
                    });
                    return;
                }
            }
            Claim::Written => {}
        }
        self.claims_seen.insert(claim_name.clone());
        self.claim_names.insert(key.clone(), claim_name);
        let Some(spec) = self.fleet.workers.get(&worker).map(|fw| fw.spec.clone()) else {
            self.spawn_failed(&key, &worker, format!("worker {worker} left the fleet"));
            return;
        };
        let result_path = self.bus.result_path(&key);
        let ctx = json!({
            "prompt": record.prompt.clone().unwrap_or_default(),
            "task_file": claim_path.display().to_string(),
            "result_file": result_path.display().to_string(),
            "input": &record.input,
            "goal": key.goal.as_str(),
            "task": key.task.as_str(),
            "attempt": key.attempt,
        });
        let mut argv = Vec::with_capacity(spec.command.len());
        for arg in &spec.command {
            match template::render_arg(arg, &ctx) {
                Ok(a) => argv.push(a),
                Err(e) => {
                    self.spawn_failed(
                        &key,
                        &worker,
                        format!("worker {worker}: command argument {arg:?}: {e}"),
                    );
                    return;
                }
            }
        }
        let mut env = self.worker_env(&spec);
        env.extend([
            (
                "WORKBUS_TASK_FILE".to_string(),
                claim_path.display().to_string(),
            ),
            (
                "WORKBUS_RESULT_FILE".to_string(),
                result_path.display().to_string(),
            ),
            ("WORKBUS_GOAL".to_string(), key.goal.to_string()),
            ("WORKBUS_TASK".to_string(), key.task.to_string()),
            ("WORKBUS_ATTEMPT".to_string(), key.attempt.to_string()),
        ]);
        let identity = match &spec.user {
            None => None,
            Some(u) => match resolve_identity(u, spec.group.as_deref()) {
                Ok(i) => Some(i),
                Err(e) => {
                    self.spawn_failed(&key, &worker, format!("worker {worker}: {e}"));
                    return;
                }
            },
        };
        let proc_spec = Spec {
            program: argv[0].clone(),
            args: argv[1..].to_vec(),
            env,
            cwd: spec.cwd.clone(),
            identity,
            stdin: workbus_supervisor::Input::File(claim_path.clone()),
            stdout_cap: self.cfg.max_result_bytes,
            stderr_tail: 2048,
            // Started without a fork (the supervisor's launch.rs): a task
            // process that outlives a killed daemon is found and stopped
            // when the daemon starts again (see recover.rs), and under
            // systemd the unit's cgroup goes with it.
            die_with_daemon: false,
        };
        self.ensure_archive_dir(&key.goal);
        let log = CappedLog::create(
            self.bus.archive_path(&key, ArchiveKind::Log),
            self.cfg.max_log_bytes,
        );
        let sink = line_sink(
            log,
            key.goal.to_string(),
            key.task.to_string(),
            key.attempt,
            worker.to_string(),
        );
        let (stop_tx, stop_rx) = oneshot::channel();
        self.spawns.insert(
            key.clone(),
            SpawnHandle {
                stop: Some(stop_tx),
                started_at: Timestamp::now(),
                abandoned: false,
            },
        );
        let tx = self.tx.clone();
        let grace = self.cfg.kill_grace.0;
        tokio::spawn(async move {
            // Started here when that does not wait for the exec; otherwise
            // (posix_spawn, or a fork for a change of user or folder) the
            // wait happens on a blocking thread, not in the event loop.
            let started = if proc_spec.starts_at_once() {
                proc_spec.start()
            } else {
                tokio::task::spawn_blocking(move || proc_spec.start())
                    .await
                    .unwrap_or_else(|e| Err(io::Error::other(e.to_string())))
            };
            let exit = match started {
                Ok(running) => running.wait(sink, stop_rx, grace).await,
                Err(e) => Err(e),
            };
            let _ = tx.send(Event::SpawnExited { key, worker, exit });
        });
    }

    /// The environment every worker process gets.
    fn worker_env(&self, spec: &WorkerSpec) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = vec![
            ("WORKBUS_ROOT".into(), self.root().display().to_string()),
            ("WORKBUS_WORKER".into(), spec.name.to_string()),
            (
                "WORKBUS_CAPABILITIES".into(),
                crate::scan::caps(&spec.capabilities).replace(' ', ""),
            ),
            ("WORKBUS_CONCURRENCY".into(), spec.concurrency.to_string()),
            (
                "WORKBUS_HEARTBEAT_INTERVAL".into(),
                self.cfg.heartbeat_interval.0.as_secs_f64().to_string(),
            ),
        ];
        env.extend(spec.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        env
    }

    /// A spawn that could not start fails its attempt with the reason.
    fn spawn_failed(&mut self, key: &AttemptKey, worker: &Id, error: String) {
        let mut r = ResultRecord::error(error);
        r.worker = Some(worker.to_string());
        r.finished_at = Some(Timestamp::now());
        self.absorb_spawn_result(key, r);
    }

    pub(crate) fn kill_spawn(&mut self, key: &AttemptKey, reason: &str) {
        if let Some(h) = self.spawns.get_mut(key) {
            h.abandoned |= self.stopping.is_some() && self.engine.is_live(key);
            if let Some(stop) = h.stop.take() {
                let _ = stop.send(StopReason(reason.to_string()));
            }
        }
    }

    pub(crate) fn on_spawn_exit(&mut self, key: AttemptKey, worker: Id, exit: io::Result<Exit>) {
        let Some(handle) = self.spawns.remove(&key) else {
            return;
        };
        if handle.abandoned {
            // Left claimed: after a restart it is lost through no fault of
            // its own and runs again without using up a retry.
            return;
        }
        let raw_path = self.bus.result_path(&key);
        let live = self.engine.is_live(&key);
        // Whether the program may have left a result file to clear away.
        let (mut record, file_left) = match exit {
            Err(e) => (ResultRecord::error(format!("worker {worker}: {e}")), true),
            Ok(exit) => self.result_of(&key, &exit),
        };
        record.worker = Some(worker.to_string());
        record.started_at = record.started_at.or(Some(handle.started_at));
        record.finished_at = record.finished_at.or(Some(Timestamp::now()));
        if !live {
            if file_left {
                let _ = std::fs::remove_file(&raw_path);
            }
            tracing::info!(
                GOAL = key.goal.as_str(),
                TASK = key.task.as_str(),
                ATTEMPT = key.attempt,
                WORKER = worker.as_str(),
                "{key}: process ended after its attempt was over; its result is kept as stale"
            );
            self.ensure_archive_dir(&key.goal);
            let dir = self.bus.archive_dir(&key.goal);
            self.pending.write(
                &dir,
                &key.archive_name(ArchiveKind::Stale),
                json_bytes(&record),
                false,
            );
            return;
        }
        // The program's own result file is folded into the record the
        // daemon writes; it must not be filed again as a second result.
        if file_left {
            let _ = std::fs::remove_file(&raw_path);
        }
        self.absorb_spawn_result(&key, record);
    }

    /// The result of a finished spawn: the result file if the program wrote
    /// one, else its stdout (exit 0) or the tail of its stderr (otherwise);
    /// and whether a result file may be there.
    fn result_of(&self, key: &AttemptKey, exit: &Exit) -> (ResultRecord, bool) {
        if let Some(reason) = &exit.stopped {
            return (
                ResultRecord::error(format!("{} ({})", reason.0, exit.status)),
                true,
            );
        }
        match read_capped(&self.bus.result_path(key), self.cfg.max_result_bytes) {
            Ok(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                let r = match workbus_proto::parse::from_json::<ResultRecord>(&text) {
                    Ok(r) => r,
                    Err(e) => ResultRecord::error(format!(
                        "the result file $WORKBUS_RESULT_FILE is not a result record: {e}"
                    )),
                };
                return (r, true);
            }
            Err(ReadError::Vanished) => {}
            Err(e) => {
                return (
                    ResultRecord::error(format!("the result file $WORKBUS_RESULT_FILE {e}")),
                    true,
                );
            }
        }
        (self.output_of(exit), false)
    }

    /// A finished spawn's result from its exit and output alone.
    fn output_of(&self, exit: &Exit) -> ResultRecord {
        if !exit.success() {
            let tail = exit.stderr_tail.trim_end();
            return ResultRecord::error(if tail.is_empty() {
                format!("{} (no stderr)", exit.status)
            } else {
                format!("{}: {tail}", exit.status)
            });
        }
        if exit.stdout_overflow {
            return ResultRecord::error(format!(
                "stdout is larger than the limit (max_result_bytes) of {} bytes",
                self.cfg.max_result_bytes
            ));
        }
        let text = String::from_utf8_lossy(&exit.stdout);
        let output = serde_json::from_str::<Value>(&text)
            .unwrap_or_else(|_| Value::String(text.trim_end().to_string()));
        ResultRecord::ok(output)
    }

    /// Writes a spawn's result durably into the archive, then absorbs it.
    pub(crate) fn absorb_spawn_result(&mut self, key: &AttemptKey, mut record: ResultRecord) {
        if !self.wait_goal_durable(&key.goal) {
            // Absorbed once the goal is durable: until then the engine does
            // not see it, and the goal does not move on.
            self.hold(&key.goal, Held::SpawnResult(key.clone(), Box::new(record)));
            return;
        }
        record.goal = Some(key.goal.clone());
        record.task = Some(key.task.clone());
        record.attempt = Some(key.attempt);
        if record.status == ResultStatus::Ok && record.output.is_none() {
            record.output = Some(Value::Null);
        }
        let bytes = json_bytes(&record);
        // Nothing of this attempt is left in results/ to archive (a late
        // file there is filed as stale by the results scan).
        self.spawn_results.insert(key.clone());
        let effects = self.engine.handle(
            Timestamp::now(),
            Input::Result {
                key: key.clone(),
                result: record,
            },
        );
        self.status_dirty = true;
        // The slot this process held goes to the next task waiting for it
        // before the bookkeeping: such a task does not depend on this result
        // (one this result released is published after the result is written).
        let released: std::collections::HashSet<(Id, Id, u32)> = effects
            .iter()
            .filter_map(|e| match e {
                Effect::Publish(r) => Some((r.goal.clone(), r.task.clone(), r.attempt)),
                _ => None,
            })
            .collect();
        let (first, rest): (Vec<Effect>, Vec<Effect>) = effects.into_iter().partition(|e| {
            matches!(e, Effect::Dispatch { record, .. } if !released.contains(&(record.goal.clone(), record.task.clone(), record.attempt)))
        });
        self.apply(first);
        self.ensure_archive_dir(&key.goal);
        let dir = self.bus.archive_dir(&key.goal);
        let name = key.archive_name(ArchiveKind::Result);
        // Written now, made durable in a batch before anything that depends
        // on it is written (a released task, the report): see `make_durable`.
        // (Behind other deferred writes it is written durably when its turn comes.)
        let deferred = !self.pending.is_empty();
        // A copy, to write it again should its fsync fail.
        let copy = self.cfg.fsync.then(|| bytes.clone());
        if self
            .pending
            .write(&dir, &name, bytes, deferred && self.cfg.fsync)
            && let Some(copy) = copy
        {
            self.unsynced.add_copy(dir.join(&name), copy);
        }
        self.apply(rest);
    }

    // ----- resident workers ----------------------------------------------

    /// Starts resident workers that are due (first start, restart after
    /// backoff, retry after a crash-loop cool-down).
    pub(crate) fn supervise_residents(&mut self) {
        if self.stopping.is_some() {
            return;
        }
        let now = Instant::now();
        let due: Vec<Id> = self
            .fleet
            .workers
            .iter()
            .filter(|(_, fw)| {
                fw.resident()
                    && fw.process.is_none()
                    && !fw.removing
                    && fw.restart_at.is_none_or(|t| t <= now)
            })
            .map(|(n, _)| n.clone())
            .collect();
        let mut changed = false;
        for name in due {
            changed |= self.start_resident(&name);
        }
        if changed {
            self.fleet_changed();
        }
    }

    fn start_resident(&mut self, name: &Id) -> bool {
        let Some(fw) = self.fleet.workers.get(name) else {
            return false;
        };
        let spec = fw.spec.clone();
        let env = self.worker_env(&spec);
        let identity = match &spec.user {
            None => Ok(None),
            Some(u) => resolve_identity(u, spec.group.as_deref()).map(Some),
        };
        let logs = self.bus.dir(Folder::Archive).join("_workers");
        let _ = std::fs::create_dir_all(&logs);
        let started = identity.and_then(|identity| {
            Spec {
                program: spec.command[0].clone(),
                args: spec.command[1..].to_vec(),
                env,
                cwd: spec.cwd.clone(),
                identity,
                stdin: workbus_supervisor::Input::Null,
                stdout_cap: 0,
                stderr_tail: 2048,
                die_with_daemon: true,
            }
            .start()
            .map_err(|e| e.to_string())
        });
        let was_unhealthy = fw.unhealthy_until.is_some();
        let fw = self.fleet.workers.get_mut(name).expect("checked above");
        fw.restart_at = None;
        match started {
            Ok(running) => {
                fw.generation += 1;
                let generation = fw.generation;
                let (stop_tx, stop_rx) = oneshot::channel();
                fw.process = Some(ResidentProc {
                    pid: running.pid,
                    stop: Some(stop_tx),
                    started: Instant::now(),
                });
                if was_unhealthy {
                    fw.unhealthy_until = None;
                    fw.probation_until = Some(Instant::now() + self.cfg.crash_loop_window.0);
                    tracing::info!(
                        WORKER = name.as_str(),
                        "worker {name}: cool-down over, trying it again"
                    );
                }
                tracing::info!(
                    WORKER = name.as_str(),
                    "worker {name}: started resident process {}",
                    running.pid
                );
                let log = CappedLog::open(
                    logs.join(format!("{name}.log")),
                    self.cfg.max_log_bytes,
                    true,
                );
                let sink = line_sink(log, String::new(), String::new(), 0, name.to_string());
                let tx = self.tx.clone();
                let worker = name.clone();
                // Asked to stop (a drain), a resident worker may finish what
                // it holds: SIGKILL comes only after drain_timeout.
                let grace = self.cfg.drain_timeout.0;
                tokio::spawn(async move {
                    let exit = running.wait(sink, stop_rx, grace).await;
                    let _ = tx.send(Event::ResidentExited {
                        worker,
                        generation,
                        exit,
                    });
                });
                true
            }
            Err(e) => {
                tracing::error!(WORKER = name.as_str(), "worker {name}: cannot start: {e}");
                fw.last_error = Some(e.clone());
                self.resident_down(name, format!("cannot start: {e}"));
                true
            }
        }
    }

    pub(crate) fn on_resident_exit(&mut self, name: Id, generation: u64, exit: io::Result<Exit>) {
        let Some(fw) = self.fleet.workers.get_mut(&name) else {
            return;
        };
        if fw.generation != generation {
            return;
        }
        let ran = fw
            .process
            .take()
            .map(|p| p.started.elapsed())
            .unwrap_or_default();
        let (how, last) = match &exit {
            Ok(e) => (
                e.status.to_string(),
                e.stderr_tail
                    .trim_end()
                    .lines()
                    .last()
                    .unwrap_or("")
                    .to_string(),
            ),
            Err(e) => (e.to_string(), String::new()),
        };
        let reason = format!("worker {name} exited ({how})");
        tracing::warn!(
            WORKER = name.as_str(),
            "{reason} after {ran:.1?}; its last stderr line: {last:?}"
        );
        fw.last_error = Some(reason.clone());
        self.feed(Input::WorkerExited {
            name: name.clone(),
            reason: reason.clone(),
        });
        let Some(fw) = self.fleet.workers.get_mut(&name) else {
            return;
        };
        if fw.removing {
            self.fleet.workers.remove(&name);
            tracing::info!(WORKER = name.as_str(), "worker {name} drained and removed");
            self.fleet_changed();
            return;
        }
        if let Some(spec) = fw.next_spec.take() {
            tracing::info!(
                WORKER = name.as_str(),
                "worker {name} drained; starting it with its new entry"
            );
            *fw = crate::fleet::FleetWorker::new(spec, &self.cfg);
            self.supervise_residents();
            self.fleet_changed();
            return;
        }
        if self.stopping.is_some() {
            return;
        }
        if ran >= self.cfg.restart_backoff_max.0 {
            fw.backoff.reset();
        }
        self.resident_down(&name, reason);
    }

    /// Schedules a restart, or withdraws a crash-looping worker.
    fn resident_down(&mut self, name: &Id, reason: String) {
        let Some(fw) = self.fleet.workers.get_mut(name) else {
            return;
        };
        let now = Instant::now();
        let looping = fw.crashes.record(now) || fw.probation_until.is_some_and(|p| now < p);
        fw.probation_until = None;
        if looping {
            let until = now + self.cfg.crash_loop_cooldown.0;
            fw.unhealthy_until = Some(until);
            fw.restart_at = Some(until);
            fw.crashes.clear();
            let msg = format!(
                "crash loop: {} exits within {} (last: {reason}); withdrawn until tried again in {}",
                self.cfg.crash_loop_restarts,
                self.cfg.crash_loop_window,
                self.cfg.crash_loop_cooldown
            );
            tracing::error!(WORKER = name.as_str(), "worker {name}: {msg}");
            fw.last_error = Some(msg);
        } else {
            let delay = fw.backoff.next_delay();
            fw.restarts += 1;
            fw.restart_at = Some(now + delay);
            tracing::info!(
                WORKER = name.as_str(),
                "worker {name}: restarting in {}",
                workbus_engine::fmt_duration(delay)
            );
        }
        self.fleet_changed();
    }

    /// Asks every resident worker to finish and exit (SIGTERM).
    pub(crate) fn stop_residents(&mut self, why: &str) {
        for fw in self.fleet.workers.values_mut() {
            if let Some(p) = fw.process.as_mut()
                && let Some(stop) = p.stop.take()
            {
                let _ = stop.send(StopReason(why.to_string()));
            }
        }
    }

    /// Past the drain timeout: the supervisor already escalates each
    /// stopped process from SIGTERM to SIGKILL after `kill_grace`.
    pub(crate) fn kill_residents(&mut self) {
        self.stop_residents("the daemon is stopping (drain timeout)");
    }

    /// Re-reads the fleet file; an invalid one is logged and the old fleet stays.
    pub(crate) fn reload_fleet(&mut self, why: &str) {
        let fleet = match load_fleet_file(&self.cfg.fleet) {
            Ok(f) => f,
            Err(e) => {
                tracing::error!("fleet not reloaded ({why}), the old fleet stays: {e:#}");
                self.metrics.fleet_errors += 1;
                return;
            }
        };
        let diff = self.fleet.apply(fleet, &self.cfg);
        if diff.added.is_empty() && diff.removed.is_empty() && diff.changed.is_empty() {
            tracing::info!("fleet reloaded ({why}): nothing changed");
            return;
        }
        let names = |v: &[Id]| v.iter().map(|n| n.as_str()).collect::<Vec<_>>().join(", ");
        tracing::info!(
            "fleet reloaded ({why}): added [{}], removed [{}], changed [{}], unchanged [{}]",
            names(&diff.added),
            names(&diff.removed),
            names(&diff.changed),
            names(&diff.unchanged)
        );
        // Drain the processes of removed and changed resident workers.
        let draining: Vec<Id> = diff.removed.iter().chain(&diff.changed).cloned().collect();
        for name in draining {
            if let Some(fw) = self.fleet.workers.get_mut(&name)
                && let Some(p) = fw.process.as_mut()
                && let Some(stop) = p.stop.take()
            {
                let _ = stop.send(StopReason("its fleet entry changed".into()));
            }
        }
        self.supervise_residents();
        self.fleet_changed();
    }
}

/// Sends each output line of a worker to its log file and the daemon's log.
fn line_sink(
    log: Arc<CappedLog>,
    goal: String,
    task: String,
    attempt: u32,
    worker: String,
) -> workbus_supervisor::LineSink {
    Arc::new(move |stream: Stream, line: &[u8]| {
        log.line(stream, line);
        let text = String::from_utf8_lossy(&line[..line.len().min(1000)]);
        let s = match stream {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        };
        let (g, t, a) = if goal.is_empty() {
            (None, None, None)
        } else {
            (Some(goal.as_str()), Some(task.as_str()), Some(attempt))
        };
        tracing::info!(
            GOAL = g,
            TASK = t,
            ATTEMPT = a,
            WORKER = worker.as_str(),
            "worker {worker} {s}: {text}"
        );
    })
}
