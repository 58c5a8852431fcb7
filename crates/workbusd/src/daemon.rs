//! The event loop: one owner of all state, one channel of events.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use workbus_bus::{Bus, Folder};
use workbus_engine::{Effect, Engine, Input, Level, Note};
use workbus_proto::config::DaemonConfig;
use workbus_proto::names::{ArchiveKind, AttemptKey};
use workbus_proto::task::TaskRecord;
use workbus_proto::{Id, Timestamp};

use crate::Options;
use crate::event::{Event, Signal};
use crate::fleet::{FleetState, load_fleet_file};
use crate::ingest::{GoalSync, Held};
use crate::lock::InstanceLock;
use crate::pending::Pending;
use crate::spawn::{Claim, SpawnHandle};
use crate::status::Metrics;
use crate::syncer::{Job, Syncer};
use crate::systemd::Notifier;
use crate::watch::{self, FsWatcher, Poller, WatchChoice};

/// A dropped file with no event saying it is complete is read once it has
/// not changed between two looks, or is this old.
const SETTLE: Duration = Duration::from_secs(2);

/// Spawn results are made durable in batches, in the background, at least
/// this often...
const UNSYNCED_MAX_AGE: Duration = Duration::from_millis(100);
/// ...and at least every this many.
const UNSYNCED_MAX: usize = 256;

/// Something that could not be made durable, tried again after 100 ms,
/// then twice as long each time, up to 30 s.
#[derive(Debug, Default)]
pub(crate) struct Retrying {
    pub failures: u32,
    /// The last error.
    pub error: String,
    /// When to try again (None while a try is under way).
    pub at: Option<Instant>,
}

impl Retrying {
    /// Counts a failure; returns the pause before the next try.
    pub fn failed(&mut self, error: String) -> Duration {
        self.failures += 1;
        self.error = error;
        let delay = workbus_engine::backoff(
            Duration::from_millis(100),
            Duration::from_secs(30),
            self.failures,
        );
        self.at = Some(Instant::now() + delay);
        delay
    }

    /// "N failed attempts, the last: ERROR", for the status.
    pub fn summary(&self) -> String {
        format!(
            "{} failed attempts, the last: {}",
            self.failures, self.error
        )
    }
}

/// Results written by the daemon that could not be made durable: what
/// depends on them waits until a retry succeeds.
#[derive(Debug, Default)]
pub(crate) struct ResultsHold {
    pub tries: Retrying,
    /// The engine's effects since, in order.
    held: Vec<Vec<Effect>>,
}

/// The daemon and everything it owns.
pub struct Daemon {
    pub(crate) opts: Options,
    pub(crate) cfg: DaemonConfig,
    pub(crate) bus: Bus,
    pub(crate) engine: Engine,
    pub(crate) fleet: FleetState,
    pub(crate) tx: UnboundedSender<Event>,
    rx: UnboundedReceiver<Event>,
    _lock: InstanceLock,
    watcher: Option<FsWatcher>,
    pub(crate) watch: WatchChoice,
    poller: Option<(Poller, Instant)>,
    pub(crate) notifier: Notifier,
    pub(crate) started_at: Timestamp,
    /// Folders to rescan before the loop sleeps again.
    dirty: BTreeSet<Folder>,
    /// When `claimed/` is next scanned, while bus workers have tasks to claim.
    next_claim_scan: Option<Instant>,
    /// Files an event said are complete, not yet read.
    pub(crate) complete: HashSet<(Folder, String)>,
    /// Files seen without such an event: their size and mtime when seen.
    pub(crate) unsettled: HashMap<(Folder, String), (u64, Option<std::time::SystemTime>)>,
    /// Folders to rescan later (after a transient error).
    rescan_at: Option<(Instant, BTreeSet<Folder>)>,
    next_safety_rescan: Instant,
    /// `claimed/` names seen, and the claim name of each attempt.
    pub(crate) claims_seen: HashSet<String>,
    pub(crate) claim_names: HashMap<AttemptKey, String>,
    /// Results read but not yet moved out of `results/` (a failed move).
    pub(crate) results_held: HashSet<String>,
    /// Spawned processes in flight.
    pub(crate) spawns: HashMap<AttemptKey, SpawnHandle>,
    pub(crate) pending: Pending,
    /// Results written without fsync, to be made durable together.
    pub(crate) unsynced: workbus_bus::WriteBatch,
    /// Makes batches of results, accepted goals and report folders durable
    /// off the loop.
    pub(crate) syncer: Syncer,
    /// The syncer's job holding the last batch of results handed to it.
    last_batch: u64,
    /// Set while results could not be made durable (see `ResultsHold`).
    pub(crate) results_hold: Option<ResultsHold>,
    /// Accepted goals not yet durable: the syncer's job, and the dropped
    /// file that leaves the inbox once it is done.
    pub(crate) goals_syncing: HashMap<Id, GoalSync>,
    /// Their dropped files' names: the inbox scan passes them over.
    pub(crate) inbox_accepted: HashSet<String>,
    /// Attempts to move into the archive at the end of this loop turn.
    archive_queue: Vec<AttemptKey>,
    /// Those of them whose result came from a spawn's exit (this turn): the
    /// daemon wrote it into the archive and cleared `results/` itself.
    pub(crate) spawn_results: HashSet<AttemptKey>,
    /// `archive/<goal>/` folders known to exist.
    archive_dirs: HashSet<Id>,
    pub(crate) status_dirty: bool,
    last_status: Option<Instant>,
    fleet_reload_at: Option<Instant>,
    /// The fleet file's mtime as last seen by the poller.
    fleet_mtime: Option<Option<std::time::SystemTime>>,
    /// Past the drain deadline: when to stop waiting for processes.
    kill_deadline: Option<Instant>,
    /// Set once a stop was asked for: the drain deadline.
    pub(crate) stopping: Option<Instant>,
    pub(crate) metrics: Metrics,
    pub(crate) last_prune: Option<Instant>,
    /// The error that last kept `status.json` from being written.
    pub(crate) status_error: Option<String>,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("root", &self.bus.root())
            .finish_non_exhaustive()
    }
}

impl Daemon {
    /// Prepares the bus, takes the lock, loads the fleet, starts watching,
    /// recovers what the bus holds and ingests the inbox. When this returns
    /// the daemon is ready.
    pub async fn start(opts: Options) -> anyhow::Result<Daemon> {
        let cfg = opts.config.clone();
        // Files the daemon creates are private to the bus's group.
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o007));
        let bus = Bus::create(&cfg.root)
            .with_context(|| format!("preparing the bus folder {}", cfg.root.display()))?;
        let lock = InstanceLock::acquire(&bus.lock_path())?;
        let fleet = load_fleet_file(&cfg.fleet)?;
        let (tx, rx) = unbounded_channel();
        let engine = Engine::new(workbus_engine::Config::from_daemon(&cfg));
        let watch_choice = watch::choose(cfg.watch, &cfg.root);
        let syncer = Syncer::start(tx.clone(), opts.sync_delay);
        let mut daemon = Daemon {
            fleet: FleetState::new(fleet, &cfg),
            cfg: cfg.clone(),
            bus,
            engine,
            tx,
            rx,
            _lock: lock,
            watcher: None,
            watch: watch_choice,
            poller: None,
            notifier: Notifier::from_env(),
            started_at: Timestamp::now(),
            dirty: BTreeSet::new(),
            rescan_at: None,
            complete: HashSet::new(),
            unsettled: HashMap::new(),
            next_claim_scan: None,
            next_safety_rescan: Instant::now() + cfg.rescan_interval.0,
            claims_seen: HashSet::new(),
            claim_names: HashMap::new(),
            results_held: HashSet::new(),
            spawns: HashMap::new(),
            pending: Pending::default(),
            syncer,
            goals_syncing: HashMap::new(),
            inbox_accepted: HashSet::new(),
            archive_queue: Vec::new(),
            spawn_results: HashSet::new(),
            unsynced: workbus_bus::WriteBatch::new(true),
            last_batch: 0,
            results_hold: None,
            archive_dirs: HashSet::new(),
            status_dirty: true,
            last_status: None,
            fleet_reload_at: None,
            fleet_mtime: None,
            stopping: None,
            kill_deadline: None,
            metrics: Metrics::default(),
            last_prune: None,
            status_error: None,
            opts,
        };
        daemon.start_watching();
        daemon.install_signals()?;
        tracing::info!(
            root = %daemon.cfg.root.display(),
            fleet = %daemon.cfg.fleet.display(),
            "workbusd {} starting; watching by {}: {}",
            env!("CARGO_PKG_VERSION"),
            if daemon.watch.poll { "polling" } else { "inotify" },
            daemon.watch.reason
        );
        // Workers first, so that recovered tasks see who offers what.
        daemon.fleet_changed();
        daemon.scan_workers();
        daemon.recover();
        for f in [
            Folder::Claimed,
            Folder::Results,
            Folder::Control,
            Folder::Inbox,
        ] {
            daemon.dirty.insert(f);
        }
        daemon.rescan_dirty();
        // Moving what recovery absorbed into the archive waits until the
        // daemon is ready: after a long outage that can be many renames.
        daemon.supervise_residents();
        daemon.prune_archive();
        daemon.write_status();
        let status = daemon.status_line();
        daemon.notifier.ready(&status);
        tracing::info!("ready: {status}");
        Ok(daemon)
    }

    fn start_watching(&mut self) {
        if !self.watch.poll {
            match FsWatcher::start(&self.bus, Some(&self.cfg.fleet), self.tx.clone()) {
                Ok(w) => self.watcher = Some(w),
                Err(e) => {
                    tracing::warn!("inotify is not usable ({e}); falling back to polling");
                    self.watch = WatchChoice {
                        poll: true,
                        reason: format!("inotify failed ({e}); polling instead"),
                    };
                }
            }
        }
        if self.watch.poll {
            let p = Poller::new(self.cfg.poll_min.0, self.cfg.poll_max.0);
            self.poller = Some((p, Instant::now() + self.cfg.poll_min.0));
        }
    }

    fn install_signals(&self) -> anyhow::Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        for (kind, sig) in [
            (SignalKind::terminate(), Signal::Stop),
            (SignalKind::interrupt(), Signal::Stop),
            (SignalKind::hangup(), Signal::Reload),
        ] {
            let mut s = signal(kind).context("installing signal handlers")?;
            let tx = self.tx.clone();
            tokio::spawn(async move {
                while s.recv().await.is_some() {
                    if tx.send(Event::Signal(sig)).is_err() {
                        break;
                    }
                }
            });
        }
        Ok(())
    }

    /// Runs until stopped: by SIGTERM/SIGINT, or when `shutdown` completes.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        tokio::pin!(shutdown);
        let mut shutdown_done = false;
        // What recovery absorbed goes to the archive now that we are ready.
        self.flush_archive();
        loop {
            let wake = self.next_wake();
            let sleep = async {
                match wake {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                ev = self.rx.recv() => match ev {
                    Some(ev) => self.on_event(ev),
                    None => break,
                },
                () = sleep => {}
                () = &mut shutdown, if !shutdown_done => {
                    shutdown_done = true;
                    self.begin_stop("asked to stop");
                }
            }
            while let Ok(ev) = self.rx.try_recv() {
                self.on_event(ev);
            }
            self.on_timers();
            self.rescan_dirty();
            self.flush_archive();
            if self.next_claim_scan.is_none() && self.engine.awaits_bus_claims() {
                self.next_claim_scan = Some(Instant::now() + watch::CLAIM_SCAN);
            }
            self.notifier.pet();
            if self.stopping.is_some() && self.stop_done() {
                break;
            }
        }
        self.finish_stop();
        Ok(())
    }

    fn next_wake(&self) -> Option<Instant> {
        let now_ts = Timestamp::now();
        let now = Instant::now();
        let engine = self.engine.next_deadline().map(|t| now + t.since(now_ts));
        let status = if self.status_dirty {
            Some(
                self.last_status
                    .map_or(now, |l| l + self.cfg.status_interval.0),
            )
        } else {
            None
        };
        [
            engine,
            status,
            self.poller.as_ref().map(|(_, at)| *at),
            self.pending.next_try(),
            self.rescan_at.as_ref().map(|(at, _)| *at),
            self.fleet_reload_at,
            self.next_claim_scan,
            // (While results are held, their retry timer stands for them.)
            self.unsynced
                .oldest()
                .filter(|_| self.results_hold.is_none())
                .map(|t| t + UNSYNCED_MAX_AGE),
            self.results_hold.as_ref().and_then(|h| h.tries.at),
            self.next_goal_sync_retry(),
            self.fleet.next_wake(),
            self.notifier.next_ping(),
            self.stopping,
            // The safety rescan only matters while there is work to miss.
            (self.engine.goals_in_flight() > 0).then_some(self.next_safety_rescan),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Folder(f) => {
                self.dirty.insert(f);
            }
            Event::Arrived(f, name) => {
                self.dirty.insert(f);
                self.complete.insert((f, name));
            }
            Event::Rescan(why) => {
                tracing::warn!("rescanning every folder: {why}");
                self.dirty.extend(watch::SCANNED);
            }
            Event::WatchError(e) => {
                tracing::warn!("watch error: {e}; rescanning every folder");
                self.dirty.extend(watch::SCANNED);
            }
            Event::FleetFile => {
                // Editors write in several steps: wait for the last one.
                self.fleet_reload_at = Some(Instant::now() + Duration::from_millis(100));
            }
            Event::SpawnExited { key, worker, exit } => self.on_spawn_exit(key, worker, exit),
            Event::ResidentExited {
                worker,
                generation,
                exit,
            } => self.on_resident_exit(worker, generation, exit),
            Event::Signal(Signal::Stop) => self.begin_stop("SIGTERM"),
            Event::Signal(Signal::Reload) => self.reload("SIGHUP"),
            Event::Synced => self.collect_syncs(),
        }
    }

    fn on_timers(&mut self) {
        let now = Instant::now();
        if self
            .engine
            .next_deadline()
            .is_some_and(|d| d <= Timestamp::now())
        {
            self.feed(Input::Tick);
        }
        if self.pending.next_try().is_some_and(|t| t <= now) {
            for (worker, record, how) in self.pending.retry() {
                self.start_spawn(worker, record, how);
            }
        }
        if let Some((at, _)) = &self.rescan_at
            && *at <= now
            && let Some((_, folders)) = self.rescan_at.take()
        {
            self.dirty.extend(folders);
        }
        if let Some((_, at)) = &self.poller
            && *at <= now
        {
            self.dirty.extend(watch::SCANNED);
            self.check_fleet_mtime();
        }
        if self
            .unsynced
            .oldest()
            .is_some_and(|t| t + UNSYNCED_MAX_AGE <= now)
            || self.unsynced.len() >= UNSYNCED_MAX
        {
            self.sync_in_background();
        }
        if self
            .results_hold
            .as_ref()
            .and_then(|h| h.tries.at)
            .is_some_and(|t| t <= now)
        {
            self.retry_results();
        }
        if self.next_goal_sync_retry().is_some_and(|t| t <= now) {
            self.retry_goal_syncs();
        }
        if self.next_claim_scan.is_some_and(|t| t <= now) {
            self.next_claim_scan = None;
            self.dirty.insert(Folder::Claimed);
        }
        if self.fleet_reload_at.is_some_and(|t| t <= now) {
            self.fleet_reload_at = None;
            self.reload_fleet("the fleet file changed");
        }
        if self.engine.goals_in_flight() > 0 && self.next_safety_rescan <= now {
            self.dirty.extend(watch::SCANNED);
        }
        if self.fleet.next_wake().is_some_and(|t| t <= now) {
            self.supervise_residents();
        }
        if self.status_dirty
            && self
                .last_status
                .is_none_or(|l| l + self.cfg.status_interval.0 <= now)
        {
            self.write_status();
        }
    }

    /// Scans every folder marked dirty (coalesced: one scan per folder,
    /// however many events named it).
    pub(crate) fn rescan_dirty(&mut self) {
        let polled = self
            .poller
            .as_ref()
            .is_some_and(|(_, at)| *at <= Instant::now());
        if self.dirty.contains(&Folder::Results) {
            // A result's claim is scanned first, so that it is archived with it.
            self.dirty.insert(Folder::Claimed);
        }
        let all = self.dirty.len() == watch::SCANNED.len();
        let mut activity = false;
        while let Some(f) = self.dirty.pop_first() {
            activity |= match f {
                Folder::Inbox => self.scan_inbox(),
                Folder::Claimed => self.scan_claimed(),
                Folder::Results => self.scan_results(),
                Folder::Workers => self.scan_workers(),
                Folder::Control => self.scan_control(),
                _ => false,
            };
        }
        if all {
            self.next_safety_rescan = Instant::now() + self.cfg.rescan_interval.0;
        }
        if let Some((p, at)) = &mut self.poller {
            let busy = activity || self.engine.goals_in_flight() > 0;
            if polled {
                *at = Instant::now() + p.after_poll(busy);
            } else if activity {
                *at = (*at).min(Instant::now() + p.reset());
            }
        }
    }

    /// Whether a file dropped into `f` may be read now: when an event said
    /// its writer is done (renamed in, or closed after writing), or when it
    /// has not been modified for `SETTLE`. When polling (no events) a file
    /// that has not changed between two looks is taken as done too. A `cp`
    /// into the inbox is read when complete, not half-way.
    pub(crate) fn settled(&mut self, f: Folder, name: &str) -> bool {
        let key = (f, name.to_string());
        if self.complete.remove(&key) {
            self.unsettled.remove(&key);
            return true;
        }
        let Ok(md) = std::fs::symlink_metadata(self.bus.path(f, name)) else {
            return true;
        };
        if !md.file_type().is_file() {
            return true;
        }
        let seen = (md.len(), md.modified().ok());
        let age = md
            .modified()
            .ok()
            .and_then(|m| m.elapsed().ok())
            .unwrap_or(SETTLE);
        let before = self.unsettled.insert(key.clone(), seen);
        if age >= SETTLE || (self.watch.poll && before == Some(seen)) {
            self.unsettled.remove(&key);
            return true;
        }
        let again = if self.watch.poll {
            self.cfg.poll_min.0
        } else {
            SETTLE - age
        };
        self.rescan_later(f, again.max(Duration::from_millis(20)));
        false
    }

    /// Rescans `folder` after `delay` (a transient error).
    pub(crate) fn rescan_later(&mut self, folder: Folder, delay: Duration) {
        let at = Instant::now() + delay;
        match &mut self.rescan_at {
            Some((t, set)) => {
                *t = (*t).min(at);
                set.insert(folder);
            }
            None => self.rescan_at = Some((at, BTreeSet::from([folder]))),
        }
    }

    // ----- engine --------------------------------------------------------

    /// Hands one input to the engine and carries out its effects.
    pub(crate) fn feed(&mut self, input: Input) {
        let effects = self.engine.handle(Timestamp::now(), input);
        if !effects.is_empty() {
            self.status_dirty = true;
        }
        self.apply(effects);
    }

    pub(crate) fn apply(&mut self, effects: Vec<Effect>) {
        // Results not yet durable must be before anything derived from them
        // is written: a task released by them, or a goal's report. (Those
        // handed to the fsync thread count until it is done with them.)
        // While they cannot be made durable, everything waits in order.
        if self.results_hold.is_some()
            || ((!self.unsynced.is_empty() || !self.syncer.is_done(self.last_batch))
                && effects.iter().any(|e| match e {
                    Effect::Publish(r) => !r.deps.is_empty(),
                    Effect::Finished(_) => true,
                    _ => false,
                })
                && !self.make_durable())
        {
            self.hold_for_results(effects);
            return;
        }
        // A task dispatched in the same breath as it is released is written
        // straight into claimed/ rather than published and then claimed. One
        // published earlier (it waited for a free slot) is claimed by moving
        // its file from tasks/: it must not stay there for a bus worker to
        // claim too.
        let key_of = |r: &TaskRecord| (r.goal.clone(), r.task.clone(), r.attempt);
        let published: HashSet<(Id, Id, u32)> = effects
            .iter()
            .filter_map(|e| match e {
                Effect::Publish(record) => Some(key_of(record)),
                _ => None,
            })
            .collect();
        let direct: HashSet<(Id, Id, u32)> = effects
            .iter()
            .filter_map(|e| match e {
                Effect::Dispatch { record, .. } => Some(key_of(record)),
                _ => None,
            })
            .filter(|k| published.contains(k))
            .collect();
        let mut dispatches = Vec::new();
        for e in effects {
            // A goal that could not be made durable holds what would be
            // derived from it (see `Daemon::hold`).
            if let Some(goal) = held_goal(&e)
                && (self.goal_held(goal) || (writes_derived(&e) && !self.wait_goal_durable(goal)))
            {
                let goal = goal.clone();
                self.hold(&goal, Held::Effects(vec![e]));
                continue;
            }
            match e {
                Effect::Publish(record) => {
                    if !direct.contains(&(record.goal.clone(), record.task.clone(), record.attempt))
                    {
                        self.publish(&record);
                    }
                }
                Effect::Dispatch { worker, record } => dispatches.push((worker, record)),
                Effect::Kill { key, reason } => self.kill_spawn(&key, &reason),
                Effect::WriteResult { key, record } => {
                    self.ensure_archive_dir(&key.goal);
                    let bytes = json_bytes(&record);
                    let dir = self.bus.archive_dir(&key.goal);
                    self.pending.write(
                        &dir,
                        &key.archive_name(ArchiveKind::Result),
                        bytes,
                        self.cfg.fsync,
                    );
                }
                Effect::Archive { key } => {
                    // Moved at the end of the loop turn, after the tasks
                    // this released are published: renames out of results/
                    // wait on a worker's fsync of that folder.
                    self.results_held.insert(key.file_name());
                    self.archive_queue.push(key);
                }
                Effect::Stale { key, reason: _ } => {
                    self.metrics.stale_results += 1;
                    self.archive_result(&key, true);
                }
                Effect::Finished(report) => self.goal_finished(*report),
                Effect::Note(n) => log_note(&n),
            }
        }
        // Publish every task first, then start the spawns: a batch of
        // releases reaches the bus (and resident workers) before spawning.
        for (worker, record) in dispatches {
            let how =
                if direct.contains(&(record.goal.clone(), record.task.clone(), record.attempt)) {
                    Claim::Write
                } else {
                    Claim::Rename
                };
            self.start_spawn(worker, record, how);
        }
    }

    fn publish(&mut self, record: &TaskRecord) {
        let key = AttemptKey::new(record.goal.clone(), record.task.clone(), record.attempt);
        // A task record is derived state: recovery rebuilds it from the
        // accepted goal and the results, so it is not fsynced.
        let dir = self.bus.dir(Folder::Tasks);
        self.pending
            .write(&dir, &key.file_name(), json_bytes(record), false);
    }

    pub(crate) fn ensure_archive_dir(&mut self, goal: &Id) {
        if self.archive_dirs.contains(goal) {
            return;
        }
        let dir = self.bus.archive_dir(goal);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                tracing::error!(path = %dir.display(), "cannot create the goal's archive folder: {e}");
                return;
            }
        }
        self.archive_dirs.insert(goal.clone());
    }

    /// Hands the results written so far to the fsync thread (it waits on
    /// the disk, not the event loop).
    fn sync_in_background(&mut self) {
        // While results are held, their retry commits them.
        if self.unsynced.is_empty() || self.results_hold.is_some() {
            return;
        }
        let mut batch = std::mem::replace(&mut self.unsynced, workbus_bus::WriteBatch::new(true));
        self.arm_results_fault(&mut batch);
        self.last_batch = self.syncer.submit(Job { batch, wake: false });
    }

    /// The test fault switch (see [`crate::Options::fail_result_sync`]).
    fn arm_results_fault(&self, batch: &mut workbus_bus::WriteBatch) {
        if let Some(switch) = &self.opts.fail_result_sync
            && switch.exists()
            && !batch.is_empty()
        {
            batch
                .fail_next_commit("failed by the test switch WORKBUS_TEST_FAIL_RESULT_SYNC".into());
        }
    }

    /// Commits the results not yet durable on the loop. On failure they
    /// are written again (see `WriteBatch::rewrite`), what depends on them
    /// waits, and the commit is tried again later.
    fn commit_here(&mut self) -> bool {
        let mut batch = std::mem::replace(&mut self.unsynced, workbus_bus::WriteBatch::new(true));
        self.arm_results_fault(&mut batch);
        let r = batch.commit();
        self.unsynced.absorb(&mut batch);
        let Err(e) = r else {
            return true;
        };
        let written = self.unsynced.rewrite();
        let hold = self.results_hold.get_or_insert_with(ResultsHold::default);
        let delay = hold.tries.failed(e.to_string());
        self.status_dirty = true;
        tracing::error!(
            "cannot make results durable: {e}; {written} written again; nothing that depends on them is written until they are; trying again in {}",
            workbus_engine::fmt_duration(delay)
        );
        false
    }

    /// Makes every result written without fsync durable before returning
    /// true: the barrier before anything that depends on them is written.
    /// False when they could not be (see `commit_here`).
    pub(crate) fn make_durable(&mut self) -> bool {
        self.syncer.wait(self.last_batch);
        // A batch the thread could not commit is back in `unsynced`.
        self.collect_syncs();
        self.commit_here()
    }

    /// Keeps `effects` until the results are durable; stopping processes
    /// and logging do not wait.
    fn hold_for_results(&mut self, effects: Vec<Effect>) {
        let mut later = Vec::with_capacity(effects.len());
        for e in effects {
            match e {
                Effect::Kill { key, reason } => self.kill_spawn(&key, &reason),
                Effect::Note(n) => log_note(&n),
                e => later.push(e),
            }
        }
        if let Some(h) = self.results_hold.as_mut()
            && !later.is_empty()
        {
            self.status_dirty = true;
            h.held.push(later);
        }
    }

    /// Tries again to make the held results durable; once they are, what
    /// waited goes on.
    fn retry_results(&mut self) {
        if !self.make_durable() {
            return;
        }
        let Some(h) = self.results_hold.take() else {
            return;
        };
        self.status_dirty = true;
        tracing::info!(
            "results are durable after {} failed attempts; carrying on with what waited for them",
            h.tries.failures
        );
        for effects in h.held {
            self.apply(effects);
        }
    }

    /// Carries out the archive moves queued during this loop turn.
    /// Those of goals not yet durable wait (see `wait_goal_durable`).
    pub(crate) fn flush_archive(&mut self) {
        for key in std::mem::take(&mut self.archive_queue) {
            if self.goals_syncing.contains_key(&key.goal) {
                self.archive_queue.push(key);
            } else {
                self.archive_attempt(&key);
            }
        }
        self.spawn_results.clear();
    }

    /// Moves an attempt's files out of the hot folders.
    fn archive_attempt(&mut self, key: &AttemptKey) {
        self.ensure_archive_dir(&key.goal);
        let task_dst = self.bus.archive_path(key, ArchiveKind::Task);
        // A claimed task is no longer in tasks/: one rename, not two.
        match self.claim_names.remove(key) {
            Some(name) => {
                self.claims_seen.remove(&name);
                let _ = rename_if_there(&self.bus.path(Folder::Claimed, &name), &task_dst);
            }
            None => {
                let _ = rename_if_there(&self.bus.task_path(key), &task_dst);
            }
        }
        if self.spawn_results.remove(key) {
            // Its result never was in results/: nothing to move, and a file
            // that appears there later is read (and filed as stale).
            self.results_held.remove(&key.file_name());
        } else {
            self.archive_result(key, false);
        }
    }

    /// Moves `results/<key>` into the archive; as stale when asked or when
    /// the attempt already has its result there.
    fn archive_result(&mut self, key: &AttemptKey, stale: bool) {
        let name = key.file_name();
        let src = self.bus.result_path(key);
        let kind = if stale {
            ArchiveKind::Stale
        } else {
            ArchiveKind::Result
        };
        self.ensure_archive_dir(&key.goal);
        let dst = self.bus.archive_path(key, kind);
        let moved = match rename_noreplace(&src, &dst) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                rename_noreplace(&src, &self.bus.archive_path(key, ArchiveKind::Stale))
                    .or_else(|_| std::fs::remove_file(&src))
            }
            r => r,
        };
        match moved {
            Ok(()) => {
                self.results_held.remove(&name);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.results_held.remove(&name);
            }
            Err(e) => {
                tracing::error!(path = %src.display(), "cannot move a result into the archive: {e}");
                self.results_held.insert(name);
            }
        }
    }

    fn goal_finished(&mut self, report: workbus_proto::report::Report) {
        let goal = report.goal.clone();
        self.wait_goal_durable(&goal);
        // The goal's files leave the hot folders before its report appears:
        // whoever sees the report sees tasks/, claimed/ and results/ clean.
        let (mine, others): (Vec<AttemptKey>, Vec<AttemptKey>) =
            std::mem::take(&mut self.archive_queue)
                .into_iter()
                .partition(|k| k.goal == goal);
        self.archive_queue = others;
        for key in mine {
            self.archive_attempt(&key);
        }
        // Then what the engine did not name: claims of attempts it never saw
        // claimed, results that raced the end.
        let leftovers: Vec<AttemptKey> = self
            .claim_names
            .keys()
            .filter(|k| k.goal == goal)
            .cloned()
            .collect();
        for key in leftovers {
            self.archive_attempt(&key);
        }
        let bytes = json_bytes(&report);
        self.metrics.goal_finished(report.outcome);
        let dir = self.bus.dir(Folder::Reports);
        let name = format!("{goal}.json");
        if !self.cfg.fsync {
            self.pending.write(&dir, &name, bytes, false);
        } else if self.pending.write_data(&dir, &name, bytes) {
            // The report's data is on disk before it appears; the fsync of
            // reports/ that makes its name durable runs on the fsync thread,
            // so the loop is free for the next goal at once. (A power cut in
            // between loses at most the name: the goal, with no report,
            // ends again from its archived results at the next start.)
            let mut batch = workbus_bus::WriteBatch::new(true);
            batch.add_dir(dir);
            self.syncer.submit(Job { batch, wake: false });
        }
        self.archive_dirs.remove(&goal);
        self.status_dirty = true;
        if self.engine.goals_in_flight() == 0 {
            self.prune_archive();
        }
    }

    // ----- stopping ------------------------------------------------------

    fn begin_stop(&mut self, why: &str) {
        if self.stopping.is_some() {
            return;
        }
        tracing::info!(
            "stopping ({why}): no new claims; waiting up to {} for {} running task(s)",
            self.cfg.drain_timeout,
            self.spawns.len()
        );
        self.notifier.stopping();
        self.stopping = Some(Instant::now() + self.cfg.drain_timeout.0);
        self.feed(Input::Drain);
        self.stop_residents("the daemon is stopping");
        self.status_dirty = true;
    }

    /// Whether the drain is over; past the drain timeout, stops what runs.
    fn stop_done(&mut self) -> bool {
        let residents = self
            .fleet
            .workers
            .values()
            .filter(|w| w.process.is_some())
            .count();
        if self.spawns.is_empty() && residents == 0 {
            return true;
        }
        let now = Instant::now();
        match self.kill_deadline {
            None if self.stopping.is_some_and(|d| d <= now) => {
                let keys: Vec<AttemptKey> = self.spawns.keys().cloned().collect();
                if !keys.is_empty() {
                    tracing::warn!(
                        "drain timeout: stopping {} running task(s); they run again after a restart",
                        keys.len()
                    );
                }
                for key in keys {
                    self.kill_spawn(&key, "the daemon is stopping (drain timeout)");
                }
                self.kill_residents();
                // SIGTERM now, SIGKILL after kill_grace: then stop waiting.
                let deadline = now + self.cfg.kill_grace.0 + Duration::from_secs(2);
                self.kill_deadline = Some(deadline);
                self.stopping = Some(deadline);
                false
            }
            Some(d) if d <= now => {
                tracing::error!(
                    "{} task and {residents} worker process(es) did not exit after SIGKILL; not waiting for them",
                    self.spawns.len()
                );
                true
            }
            _ => false,
        }
    }

    fn finish_stop(&mut self) {
        // Every job of the fsync thread, then what failed there or was
        // never handed to it.
        self.syncer.wait_all();
        self.make_durable();
        if self.pending.next_try().is_some() {
            let _ = self.pending.retry();
        }
        if !self.pending.is_empty() {
            tracing::error!(
                "{} write(s) could not be done before stopping; they are redone after a restart",
                self.pending.len()
            );
        }
        self.write_status();
        tracing::info!("stopped");
    }

    // ----- reloads -------------------------------------------------------

    fn reload(&mut self, why: &str) {
        self.notifier.reloading();
        if let Some(path) = self.opts.config_file.clone() {
            match crate::cli::load_config(Some(&path)) {
                Ok((mut c, _)) => {
                    // The bus and fleet paths cannot move under a running daemon.
                    c.root = self.cfg.root.clone();
                    c.fleet = self.cfg.fleet.clone();
                    if c != self.cfg {
                        tracing::info!("configuration reloaded from {}", path.display());
                        self.cfg = c.clone();
                        self.opts.config = c;
                    }
                }
                Err(e) => tracing::error!("configuration not reloaded, the old one stays: {e:#}"),
            }
        }
        self.reload_fleet(why);
        let status = self.status_line();
        self.notifier.ready(&status);
    }

    fn check_fleet_mtime(&mut self) {
        let m = std::fs::metadata(&self.cfg.fleet)
            .and_then(|m| m.modified())
            .ok();
        if self.fleet_mtime.is_none() {
            self.fleet_mtime = Some(m);
        } else if self.fleet_mtime != Some(m) {
            self.fleet_mtime = Some(m);
            self.fleet_reload_at = Some(Instant::now());
        }
    }

    pub(crate) fn mark_status_written(&mut self, at: Instant) {
        self.status_dirty = false;
        self.last_status = Some(at);
    }

    pub(crate) fn root(&self) -> PathBuf {
        self.bus.root().to_path_buf()
    }
}

/// The goal an effect derives from, for those that wait while it cannot be
/// made durable (stopping a process and logging do not).
fn held_goal(e: &Effect) -> Option<&Id> {
    match e {
        Effect::Publish(r) | Effect::Dispatch { record: r, .. } => Some(&r.goal),
        Effect::WriteResult { key, .. } | Effect::Archive { key } | Effect::Stale { key, .. } => {
            Some(&key.goal)
        }
        Effect::Finished(report) => Some(&report.goal),
        Effect::Kill { .. } | Effect::Note(_) => None,
    }
}

/// Effects that write durable records derived from their goal: they wait
/// until it is durable. (Archive moves wait in `flush_archive`, without
/// holding up the loop.)
fn writes_derived(e: &Effect) -> bool {
    matches!(e, Effect::WriteResult { .. } | Effect::Finished(_))
}

/// `rename`, where a missing source is fine.
fn rename_if_there(from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
    match std::fs::rename(from, to) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

/// `rename` that fails with EEXIST rather than replace.
pub(crate) fn rename_noreplace(
    from: &std::path::Path,
    to: &std::path::Path,
) -> std::io::Result<()> {
    nix::fcntl::renameat2(
        nix::fcntl::AT_FDCWD,
        from,
        nix::fcntl::AT_FDCWD,
        to,
        nix::fcntl::RenameFlags::RENAME_NOREPLACE,
    )
    .map_err(std::io::Error::from)
}

pub(crate) fn json_bytes<T: serde::Serialize>(v: &T) -> Vec<u8> {
    let mut b = serde_json::to_vec_pretty(v).unwrap_or_default();
    b.push(b'\n');
    b
}

/// Logs an engine note with the fields journald indexes.
pub(crate) fn log_note(n: &Note) {
    let goal = n.goal.as_ref().map(|g| g.as_str());
    let task = n.task.as_ref().map(|g| g.as_str());
    let worker = n.worker.as_ref().map(|g| g.as_str());
    let prefix = match (&n.goal, &n.task, n.attempt) {
        (Some(g), Some(t), Some(a)) => format!("{g}.{t}.{a}: "),
        (Some(g), Some(t), None) => format!("{g}.{t}: "),
        (Some(g), None, _) => format!("{g}: "),
        (None, _, _) => match &n.worker {
            Some(w) => format!("worker {w}: "),
            None => String::new(),
        },
    };
    match n.level {
        Level::Debug => tracing::debug!(
            GOAL = goal,
            TASK = task,
            ATTEMPT = n.attempt,
            WORKER = worker,
            "{prefix}{}",
            n.message
        ),
        Level::Info => tracing::info!(
            GOAL = goal,
            TASK = task,
            ATTEMPT = n.attempt,
            WORKER = worker,
            "{prefix}{}",
            n.message
        ),
        Level::Warn => tracing::warn!(
            GOAL = goal,
            TASK = task,
            ATTEMPT = n.attempt,
            WORKER = worker,
            "{prefix}{}",
            n.message
        ),
    }
}
