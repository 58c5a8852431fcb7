//! The inbox: goal files in, accepted goals (or rejections) out. Nothing
//! dropped here is ever silently lost: it becomes `goals/<id>.json` (its
//! text kept in the archive) or lands in `rejected/` with an error file.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::Serialize;
use workbus_bus::{Folder, ReadError, read_capped};
use workbus_engine::{Effect, GoalError, Input, validate};
use workbus_proto::goal::GoalSource;
use workbus_proto::names::AttemptKey;
use workbus_proto::parse::Format;
use workbus_proto::result::ResultRecord;
use workbus_proto::{Id, SCHEMA_VERSION, Timestamp};

use crate::daemon::{Daemon, Retrying, json_bytes};
use crate::syncer::Job;

/// An accepted goal on its way to being durable.
#[derive(Debug)]
pub(crate) struct GoalSync {
    /// The fsync thread's job.
    pub job: u64,
    /// The dropped file, which leaves the inbox once the job is done.
    pub name: String,
    pub format: Format,
    /// What `goals/<id>.json` holds, to write it again if making it
    /// durable fails (None: read back from the file when needed).
    pub bytes: Option<Vec<u8>>,
    /// Set once making it durable failed: it is tried again, and until it
    /// succeeds everything derived from the goal waits here.
    pub retry: Option<SyncRetry>,
}

/// A goal that could not be made durable: when to write it again, and
/// what waits.
#[derive(Debug, Default)]
pub(crate) struct SyncRetry {
    pub tries: Retrying,
    /// What the daemon would have done for the goal meanwhile, in order.
    pub held: Vec<Held>,
}

/// Something derived from a goal that is not durable yet.
#[derive(Debug)]
pub(crate) enum Held {
    /// Effects of the engine for the goal, to apply as one list.
    Effects(Vec<Effect>),
    /// A spawn's result, to write into the archive and absorb.
    SpawnResult(AttemptKey, Box<ResultRecord>),
}

/// `rejected/NAME.error.json`: why a file was refused.
#[derive(Debug, Serialize)]
pub struct Rejection<'a> {
    pub schema_version: u32,
    /// The folder and name the file was found under.
    pub file: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
    pub message: &'a str,
    pub rejected_at: Timestamp,
}

impl Daemon {
    /// Ingests every goal file in `inbox/`. Returns whether any was there.
    pub(crate) fn scan_inbox(&mut self) -> bool {
        if self.stopping.is_some() {
            return false;
        }
        let Some(mut names) = self.list_folder(Folder::Inbox) else {
            return false;
        };
        names.sort();
        // A goal already accepted, waiting to be durable before its file
        // leaves: not a new goal.
        names.retain(|n| !self.inbox_accepted.contains(n));
        let any = !names.is_empty();
        for name in names {
            self.notifier.pet();
            if self.settled(Folder::Inbox, &name) {
                self.ingest(&name);
            }
        }
        any
    }

    fn ingest(&mut self, name: &str) {
        let path = self.bus.path(Folder::Inbox, name);
        let Some(format) = Format::from_path(&path) else {
            self.reject_file(
                Folder::Inbox,
                name,
                None,
                "not a goal file: goal files are named *.toml or *.json".into(),
            );
            return;
        };
        let bytes = match read_capped(&path, self.cfg.max_goal_bytes) {
            Ok(b) => b,
            Err(ReadError::Vanished) => return,
            Err(ReadError::TooLarge { limit }) => {
                let msg =
                    format!("the file is larger than the limit (max_goal_bytes) of {limit} bytes");
                self.reject_file(Folder::Inbox, name, None, msg);
                return;
            }
            Err(e) if e.is_transient() => {
                tracing::warn!(path = %path.display(), "cannot read a goal yet: {e}");
                self.rescan_later(Folder::Inbox, Duration::from_millis(500));
                return;
            }
            Err(e) => {
                self.reject_file(Folder::Inbox, name, None, format!("{e}"));
                return;
            }
        };
        let limits = self.engine.config().limits;
        let now = Timestamp::now();
        let mut goal = match validate::validate_goal(&bytes, format, name, &limits, now) {
            Ok(g) => g,
            Err(e) => {
                self.reject_file(Folder::Inbox, name, Some(&e), e.message.clone());
                return;
            }
        };
        if self.goal_exists(&goal.id) {
            let default_id = validate::id_from_file_name(name).ok();
            if default_id.as_ref() != Some(&goal.id) {
                let msg = format!(
                    "a goal with id {:?} already exists; choose another id (or leave id out to derive a fresh one from the file name)",
                    goal.id.as_str()
                );
                self.reject_file(Folder::Inbox, name, None, msg);
                return;
            }
            goal.id = self.fresh_id(&goal.id);
        }
        let text = String::from_utf8_lossy(&bytes).into_owned();
        goal.source = Some(GoalSource {
            name: name.to_string(),
            format,
            text,
        });
        // Accepting is: goals/<id>.json written, then made durable by the
        // fsync thread while the loop publishes the first tasks and the
        // workers start on them, then the dropped file leaves the inbox. A
        // crash before the last step leaves the file in the inbox; recovery
        // finds it is this accepted goal and finishes the move.
        // Compact: a goal of many tasks would double in size pretty-printed.
        let bytes = serde_json::to_vec(&goal).unwrap_or_default();
        if let Err(e) = write_goal_file(&self.bus, &goal.id, &bytes) {
            tracing::error!(path = %self.bus.dir(Folder::Goals).display(), "cannot accept goal {}: {e}; it stays in the inbox and is retried", goal.id);
            self.rescan_later(Folder::Inbox, Duration::from_secs(1));
            return;
        }
        self.metrics.goals_accepted += 1;
        let id = goal.id.clone();
        self.ensure_archive_dir(&id);
        tracing::info!(GOAL = id.as_str(), "{id}: accepted from inbox/{name}");
        // Named as not yet durable before the engine sees it: a goal that
        // ends at once must not have its report written first.
        self.make_goal_durable(&id, name, format, Some(bytes));
        self.feed(Input::Goal(goal));
        self.maybe_wedge(name);
    }

    /// Makes accepted goal `id` durable (its file in `goals/`, that
    /// folder, and `archive/` where its archive folder was made) on the
    /// fsync thread; its dropped file `name` leaves the inbox once that is
    /// done. Until then nothing durable is derived from the goal: see
    /// [`Daemon::wait_goal_durable`]. `bytes`: what the file holds.
    pub(crate) fn make_goal_durable(
        &mut self,
        id: &Id,
        name: &str,
        format: Format,
        bytes: Option<Vec<u8>>,
    ) {
        if !self.cfg.fsync {
            self.keep_source(id, name, format);
            return;
        }
        let job = self.submit_goal_sync(id);
        self.inbox_accepted.insert(name.to_string());
        self.goals_syncing.insert(
            id.clone(),
            GoalSync {
                job,
                name: name.to_string(),
                format,
                bytes,
                retry: None,
            },
        );
        // Done already when there is no thread to do it.
        self.collect_syncs();
    }

    fn submit_goal_sync(&mut self, id: &Id) -> u64 {
        // goals/ is the file's own folder; archive/ holds its new archive folder.
        let mut batch = workbus_bus::WriteBatch::new(true);
        batch.add(self.bus.goal_path(id));
        batch.add_dir(self.bus.dir(Folder::Archive));
        if let Some(switch) = &self.opts.fail_goal_sync
            && switch.exists()
        {
            // The test fault switch: a folder that is not there fails the
            // job as a disk error would.
            batch.add_dir(
                self.bus
                    .root()
                    .join("no such folder (WORKBUS_TEST_FAIL_GOAL_SYNC)"),
            );
        }
        self.syncer.submit(Job { batch, wake: true })
    }

    /// Collects the fsync thread's finished jobs: goals now durable leave
    /// the inbox and what waited for them goes on. A goal that could not
    /// be made durable keeps its dropped file in the inbox and is written
    /// again after a while; any other batch that failed goes back to be
    /// tried again.
    pub(crate) fn collect_syncs(&mut self) {
        // Each job's outcome is taken once: a goal is done when its job is
        // among those taken now (one that ends meanwhile is taken next time).
        let mut outcomes: HashMap<u64, Option<(std::io::Error, workbus_bus::WriteBatch)>> =
            HashMap::new();
        for (job, r, batch) in self.syncer.take_finished() {
            outcomes.insert(job, r.err().map(|e| (e, batch)));
        }
        let done: Vec<Id> = self
            .goals_syncing
            .iter()
            .filter(|(_, g)| {
                g.retry.as_ref().is_none_or(|r| r.tries.at.is_none())
                    && outcomes.contains_key(&g.job)
            })
            .map(|(id, _)| id.clone())
            .collect();
        let mut resumed = Vec::new();
        for id in done {
            let Some(mut g) = self.goals_syncing.remove(&id) else {
                continue;
            };
            match outcomes.remove(&g.job).flatten() {
                None => {
                    self.inbox_accepted.remove(&g.name);
                    self.keep_source(&id, &g.name, g.format);
                    if let Some(r) = g.retry {
                        self.status_dirty = true;
                        tracing::info!(
                            GOAL = id.as_str(),
                            "{id}: durable after {} failed attempts; carrying on with what waited for it",
                            r.tries.failures
                        );
                        resumed.push(r.held);
                    }
                }
                Some((e, _)) => {
                    // The dropped file stays in the inbox (passed over by
                    // the inbox scan): the durable copy, should the machine
                    // stop before the goal is.
                    let r = g.retry.get_or_insert_with(SyncRetry::default);
                    let delay = r.tries.failed(e.to_string());
                    self.status_dirty = true;
                    tracing::error!(
                        GOAL = id.as_str(),
                        path = %self.bus.goal_path(&id).display(),
                        "cannot make goal {id} durable: {e}; nothing derived from it is written until it is (its file stays in inbox/); writing it again in {}",
                        workbus_engine::fmt_duration(delay)
                    );
                    self.goals_syncing.insert(id, g);
                }
            }
        }
        for (e, mut batch) in outcomes.into_values().flatten() {
            // Written afresh: a second fsync of the same files could
            // report success for data the kernel has dropped.
            let written = batch.rewrite();
            tracing::error!(
                "cannot make files durable: {e}; {written} written again, to be made durable with the next batch"
            );
            self.unsynced.absorb(&mut batch);
        }
        for held in resumed {
            for h in held {
                match h {
                    Held::Effects(effects) => self.apply(effects),
                    Held::SpawnResult(key, record) => self.absorb_spawn_result(&key, *record),
                }
            }
        }
    }

    /// When the next goal that could not be made durable is tried again.
    pub(crate) fn next_goal_sync_retry(&self) -> Option<Instant> {
        self.goals_syncing
            .values()
            .filter_map(|g| g.retry.as_ref().and_then(|r| r.tries.at))
            .min()
    }

    /// Writes each goal that is due again (a fresh file: after a failed
    /// fsync the kernel may have dropped what the old one held) and hands
    /// it to the fsync thread once more.
    pub(crate) fn retry_goal_syncs(&mut self) {
        let now = Instant::now();
        let due: Vec<Id> = self
            .goals_syncing
            .iter()
            .filter(|(_, g)| {
                g.retry
                    .as_ref()
                    .and_then(|r| r.tries.at)
                    .is_some_and(|at| at <= now)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            let path = self.bus.goal_path(&id);
            let Some(g) = self.goals_syncing.get_mut(&id) else {
                continue;
            };
            if g.bytes.is_none() {
                g.bytes = read_capped(&path, u64::MAX).ok();
            }
            let written = match &g.bytes {
                Some(b) => write_goal_file(&self.bus, &id, b).map_err(|e| e.to_string()),
                None => Err(format!("cannot read {} back", path.display())),
            };
            if let Err(e) = written {
                let r = g.retry.get_or_insert_with(SyncRetry::default);
                let delay = r.tries.failed(e.clone());
                tracing::error!(
                    GOAL = id.as_str(),
                    "cannot write goal {id} again: {e}; trying again in {}",
                    workbus_engine::fmt_duration(delay)
                );
                continue;
            }
            let job = self.submit_goal_sync(&id);
            if let Some(g) = self.goals_syncing.get_mut(&id) {
                g.job = job;
                if let Some(r) = g.retry.as_mut() {
                    r.tries.at = None;
                }
            }
        }
        self.collect_syncs();
    }

    /// Why goal `id` is held, for `status.json` (None: it is not).
    pub(crate) fn held_reason(&self, id: &Id) -> Option<String> {
        let r = self.goals_syncing.get(id)?.retry.as_ref()?;
        Some(format!(
            "cannot be made durable ({}); nothing derived from it is written until it is",
            r.tries.summary()
        ))
    }

    /// Whether everything derived from goal `id` waits (it could not be
    /// made durable yet).
    pub(crate) fn goal_held(&self, id: &Id) -> bool {
        self.goals_syncing
            .get(id)
            .is_some_and(|g| g.retry.is_some())
    }

    /// Keeps `what` until goal `id` is durable. Effects given one after
    /// the other are applied as one list.
    pub(crate) fn hold(&mut self, id: &Id, what: Held) {
        let Some(r) = self
            .goals_syncing
            .get_mut(id)
            .and_then(|g| g.retry.as_mut())
        else {
            return;
        };
        match (r.held.last_mut(), what) {
            (Some(Held::Effects(list)), Held::Effects(more)) => list.extend(more),
            (_, what) => r.held.push(what),
        }
    }

    /// Returns whether accepted goal `id` is durable, waiting for the job
    /// that makes it so if one runs: the barrier before anything durable
    /// derived from it is written (a result written by the daemon, the
    /// goal's report) and before its attempts move into the archive. Were
    /// the goal lost to a power cut, its dropped file, still in the inbox,
    /// starts it afresh: nothing derived from it may outlive it. False
    /// when making it durable failed: the caller then holds what it would
    /// write (see [`Daemon::hold`]).
    pub(crate) fn wait_goal_durable(&mut self, id: &Id) -> bool {
        match self.goals_syncing.get(id) {
            None => true,
            Some(g) if g.retry.is_some() => false,
            Some(g) => {
                self.syncer.wait(g.job);
                self.collect_syncs();
                !self.goal_held(id)
            }
        }
    }

    /// Moves an accepted goal's file from `inbox/` into its archive.
    pub(crate) fn keep_source(&mut self, id: &Id, name: &str, format: Format) {
        self.ensure_archive_dir(id);
        let ext = match format {
            Format::Toml => "toml",
            Format::Json => "json",
        };
        let src = self.bus.path(Folder::Inbox, name);
        let dst = self.bus.archive_dir(id).join(format!("source.{ext}"));
        if let Err(e) = std::fs::rename(&src, &dst) {
            // The goal is accepted; recovery finishes this move.
            tracing::error!(path = %src.display(), "cannot move an accepted goal out of the inbox: {e}");
        }
    }

    fn goal_exists(&self, id: &Id) -> bool {
        self.engine.has_goal(id)
            || self.bus.goal_path(id).exists()
            || self.bus.report_path(id).exists()
    }

    /// `id-2`, `id-3`, …: the first that is free.
    fn fresh_id(&self, id: &Id) -> Id {
        for n in 2u32.. {
            let stem = id.as_str();
            let suffix = format!("-{n}");
            let cut = stem.len().min(workbus_proto::id::MAX_ID_LEN - suffix.len());
            if let Ok(candidate) = Id::new(format!("{}{suffix}", &stem[..cut]))
                && !self.goal_exists(&candidate)
            {
                return candidate;
            }
        }
        unreachable!("ids run out after 4 billion goals of one name")
    }

    /// Moves a refused file from `folder` to `rejected/` with an error file
    /// beside it. The file is moved as it is: a link is not followed, a FIFO
    /// not opened.
    pub(crate) fn reject_file(
        &mut self,
        folder: Folder,
        name: &str,
        at: Option<&GoalError>,
        message: String,
    ) {
        let src = self.bus.path(folder, name);
        let rejected = self.bus.dir(Folder::Rejected);
        let target = (0u32..)
            .map(|n| {
                if n == 0 {
                    name.to_string()
                } else {
                    format!("{name}.{n}")
                }
            })
            .find(|t| {
                !rejected.join(t).exists() && !rejected.join(format!("{t}.error.json")).exists()
            })
            .unwrap_or_else(|| name.to_string());
        let record = Rejection {
            schema_version: SCHEMA_VERSION,
            file: format!("{}/{name}", folder.name()),
            line: at.and_then(|e| e.line),
            column: at.and_then(|e| e.column),
            message: &message,
            rejected_at: Timestamp::now(),
        };
        let where_ = match (record.line, record.column) {
            (Some(l), Some(c)) => format!(":{l}:{c}"),
            (Some(l), None) => format!(":{l}"),
            _ => String::new(),
        };
        if let Err(e) = workbus_bus::write_atomic(
            &rejected,
            &format!("{target}.error.json"),
            &json_bytes(&record),
            self.cfg.fsync,
        ) {
            tracing::error!(path = %rejected.display(), "cannot write the rejection of {}: {e}; retrying", src.display());
            self.rescan_later(folder, Duration::from_secs(1));
            return;
        }
        if let Err(e) = std::fs::rename(&src, rejected.join(&target)) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::error!(path = %src.display(), "cannot move a rejected file: {e}");
            }
            return;
        }
        self.metrics.rejected += 1;
        tracing::warn!(
            path = %src.display(),
            "rejected {}/{name}{where_}: {message} (moved to rejected/{target})",
            folder.name()
        );
    }

    /// The test-only fault switch (see [`crate::Options::wedge_on_goal`]).
    fn maybe_wedge(&self, name: &str) {
        if let Some(w) = &self.opts.wedge_on_goal
            && name.starts_with(w.as_str())
        {
            tracing::warn!(
                "WORKBUS_TEST_WEDGE_ON_GOAL matched {name}: wedging the event loop (test fault switch)"
            );
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
    }
}

/// Writes `goals/<id>.json` (not yet durable: see
/// [`Daemon::make_goal_durable`]).
fn write_goal_file(bus: &workbus_bus::Bus, id: &Id, bytes: &[u8]) -> std::io::Result<()> {
    workbus_bus::write_atomic(&bus.dir(Folder::Goals), &format!("{id}.json"), bytes, false)
}
