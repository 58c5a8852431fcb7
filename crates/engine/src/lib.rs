//! The pure core of workbus.
//!
//! [`Engine::handle`] takes the time and one [`Input`] (a goal accepted, a
//! claim seen, a result read, the workers changed, a timer due) and returns
//! the [`Effect`]s the daemon must carry out (publish a task record, spawn a
//! worker, write a report). It does no I/O, reads no clock and never panics
//! on bad input: an input that makes no sense becomes a [`Note`].

pub mod dag;
mod goal_run;
pub mod template;
pub mod validate;
mod workers;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use workbus_proto::goal::{Goal, PLAN_TASK_ID};
use workbus_proto::names::AttemptKey;
use workbus_proto::report::{Outcome, Report, TaskStateName};
use workbus_proto::result::{ResultRecord, ResultStatus};
use workbus_proto::status::{Counts, GoalStatus, TaskStatus};
use workbus_proto::task::TaskRecord;
use workbus_proto::{Id, Timestamp};

pub use goal_run::TaskState;
use goal_run::{GoalRun, TaskRun};
pub use validate::{GoalError, Limits, validate_goal, validate_plan};
use workers::Workers;
pub use workers::{HUMAN, WorkerKind, WorkerView};

/// Policy knobs (from `workbusd.toml`).
#[derive(Clone, Debug)]
pub struct Config {
    pub capability_grace: Duration,
    pub retry_backoff: Duration,
    pub retry_backoff_max: Duration,
    pub default_timeout: Duration,
    pub lease_timeout: Duration,
    pub max_running: u32,
    pub limits: Limits,
}

impl Config {
    pub fn from_daemon(c: &workbus_proto::config::DaemonConfig) -> Self {
        Config {
            capability_grace: c.capability_grace.0,
            retry_backoff: c.retry_backoff.0,
            retry_backoff_max: c.retry_backoff_max.0,
            default_timeout: c.default_timeout.0,
            lease_timeout: c.lease_timeout.0,
            max_running: c.max_running,
            limits: Limits {
                max_goal_bytes: c.max_goal_bytes,
                max_tasks_per_goal: c.max_tasks_per_goal,
            },
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self::from_daemon(&workbus_proto::config::DaemonConfig::default())
    }
}

/// Something that happened, as the engine needs to know it.
#[derive(Clone, Debug)]
pub enum Input {
    /// A goal was accepted (and durably written to `goals/`).
    Goal(Goal),
    /// A goal in flight found on the bus at start, with what the bus holds
    /// about its attempts.
    Recover {
        goal: Goal,
        history: History,
    },
    /// A claim file appeared in `claimed/`.
    Claimed {
        key: AttemptKey,
        worker: Id,
    },
    /// The daemon's claim on behalf of a spawn worker lost the race: the
    /// task file was gone (another worker renamed it first).
    ClaimRaced {
        key: AttemptKey,
    },
    /// A result record was read.
    Result {
        key: AttemptKey,
        result: ResultRecord,
    },
    /// A result file that could not be parsed or read.
    BadResult {
        key: AttemptKey,
        error: String,
    },
    /// The attempt's claimant vanished through no fault of the task.
    Lost {
        key: AttemptKey,
        reason: String,
    },
    /// The workers now known (replaces the previous view).
    Workers(Vec<WorkerView>),
    /// A resident worker's process exited: its claims are void.
    WorkerExited {
        name: Id,
        reason: String,
    },
    Cancel {
        goal: Id,
        reason: String,
    },
    /// Retry a failed task (or all failed tasks) of a goal in flight.
    Retry {
        goal: Id,
        task: Option<Id>,
    },
    /// A person's answer to a task that needs `human`.
    Answer {
        goal: Id,
        task: Id,
        result: ResultRecord,
    },
    /// Stop dispatching: the daemon is stopping.
    Drain,
    /// Timers may be due.
    Tick,
}

/// What the bus holds about one goal's attempts, per task id.
pub type History = BTreeMap<Id, Vec<AttemptFacts>>;

/// What the bus holds about one attempt.
#[derive(Clone, Debug, Default)]
pub struct AttemptFacts {
    pub attempt: u32,
    /// Its task file is in `tasks/`.
    pub published: bool,
    /// Its claim file, if any.
    pub claim: Option<ClaimFacts>,
    /// Its result (or why it could not be read).
    pub result: Option<Result<ResultRecord, String>>,
    /// The result is already in `archive/` (absorbed before the restart).
    pub archived: bool,
}

#[derive(Clone, Debug)]
pub struct ClaimFacts {
    pub worker: Id,
    /// The claimant is still alive and may still answer.
    pub alive: bool,
}

/// What the daemon must do.
#[derive(Clone, Debug)]
pub enum Effect {
    /// Write `tasks/<key>.json`.
    Publish(Arc<TaskRecord>),
    /// Claim the published task for spawn worker `worker` and run it.
    Dispatch { worker: Id, record: Arc<TaskRecord> },
    /// Stop the spawned process group of this attempt.
    Kill { key: AttemptKey, reason: String },
    /// Write this result for the attempt into the archive (durably): the
    /// daemon's word on an attempt that ended without one.
    WriteResult {
        key: AttemptKey,
        record: ResultRecord,
    },
    /// Move what is left of this attempt (task file, claim, result) into
    /// `archive/<goal>/`: it is absorbed, superseded or withdrawn.
    Archive { key: AttemptKey },
    /// The result file of this attempt came too late: keep it as stale.
    Stale { key: AttemptKey, reason: String },
    /// The goal ended: write its report and sweep its files to the archive.
    Finished(Box<Report>),
    /// Something to log.
    Note(Note),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// Per-task detail (a claim): useful when following one task.
    Debug,
    Info,
    Warn,
}

/// A line for the daemon's log, with the fields journald indexes.
#[derive(Clone, Debug)]
pub struct Note {
    pub level: Level,
    pub goal: Option<Id>,
    pub task: Option<Id>,
    pub attempt: Option<u32>,
    pub worker: Option<Id>,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Grace(Id, u32, u32),
    Backoff(Id, u32, u32),
    Timeout(Id, u32, u32),
    Deadline(Id),
}

impl Timer {
    fn goal(&self) -> &Id {
        match self {
            Timer::Grace(g, ..)
            | Timer::Backoff(g, ..)
            | Timer::Timeout(g, ..)
            | Timer::Deadline(g) => g,
        }
    }
}

/// Queue order: higher priority first, then first come.
type QueueKey = (Reverse<i64>, u64, Id, u32);

/// The orchestration state. See the crate docs.
#[derive(Debug)]
pub struct Engine {
    cfg: Config,
    goals: HashMap<Id, GoalRun>,
    workers: Workers,
    timers: BTreeSet<(Timestamp, Timer)>,
    /// Queued tasks not yet claimed, in dispatch order.
    queue: BTreeSet<QueueKey>,
    seq: u64,
    /// Running attempts per claiming bus worker (for leases and exits).
    claims: HashMap<Id, BTreeSet<AttemptKey>>,
    /// Bus workers whose lease has run out (processed once).
    stale_workers: BTreeSet<Id>,
    /// Tasks whose dependencies all succeeded, to be released.
    releases: VecDeque<(Id, u32)>,
    /// During recovery: what the bus holds about attempts.
    history: HashMap<Id, History>,
    /// Some queued task may be claimed by a bus worker (see `awaits_bus_claims`).
    bus_claimable: bool,
    /// Records published during the current `handle` call, so that a task
    /// dispatched in the same call is not rendered twice.
    fresh: HashMap<(Id, u32), Arc<TaskRecord>>,
    draining: bool,
}

impl Engine {
    pub fn new(cfg: Config) -> Self {
        Engine {
            cfg,
            goals: HashMap::new(),
            workers: Workers::default(),
            timers: BTreeSet::new(),
            queue: BTreeSet::new(),
            seq: 0,
            claims: HashMap::new(),
            stale_workers: BTreeSet::new(),
            releases: VecDeque::new(),
            history: HashMap::new(),
            fresh: HashMap::new(),
            bus_claimable: false,
            draining: false,
        }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Handles one input at `now` and returns what to do.
    pub fn handle(&mut self, now: Timestamp, input: Input) -> Vec<Effect> {
        let mut out = Vec::new();
        match input {
            Input::Goal(goal) => self.add_goal(now, goal, None, &mut out),
            Input::Recover { goal, history } => self.add_goal(now, goal, Some(history), &mut out),
            Input::Claimed { key, worker } => self.on_claimed(now, key, worker, &mut out),
            Input::ClaimRaced { key } => self.on_claim_raced(now, key, &mut out),
            Input::Result { key, result } => self.on_result(now, key, Ok(result), &mut out),
            Input::BadResult { key, error } => self.on_result(now, key, Err(error), &mut out),
            Input::Lost { key, reason } => self.on_lost(now, key, reason, &mut out),
            Input::Workers(views) => self.on_workers(now, views, &mut out),
            Input::WorkerExited { name, reason } => {
                self.revoke_claims_of(now, &name, &reason, true, &mut out)
            }
            Input::Cancel { goal, reason } => match self.goals.contains_key(&goal) {
                true => self.end_goal_early(now, &goal, Outcome::Cancelled, reason, &mut out),
                false => out.push(note_goal(
                    Level::Warn,
                    &goal,
                    "cancel: the goal is not in flight".into(),
                )),
            },
            Input::Retry { goal, task } => self.on_retry(now, goal, task, &mut out),
            Input::Answer { goal, task, result } => {
                self.on_answer(now, goal, task, result, &mut out)
            }
            Input::Drain => self.draining = true,
            Input::Tick => self.on_tick(now, &mut out),
        }
        self.run_releases(now, &mut out);
        self.dispatch(now, &mut out);
        self.fresh.clear();
        out
    }

    /// When the engine next needs a [`Input::Tick`], if ever.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        let timer = self.timers.first().map(|(t, _)| *t);
        // A bus worker's lease ends lease_timeout after its last heartbeat.
        // Each heartbeat moves it on, so while workers beat this never fires.
        let lease = self
            .workers
            .views
            .values()
            .filter(|w| {
                !matches!(w.kind, WorkerKind::Spawn { .. }) && !self.stale_workers.contains(&w.name)
            })
            .filter_map(|w| w.last_seen)
            .map(|seen| {
                seen.plus(self.cfg.lease_timeout)
                    .plus(Duration::from_millis(1))
            })
            .min();
        match (timer, lease) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether a result for `key` would be absorbed now.
    pub fn is_live(&self, key: &AttemptKey) -> bool {
        self.task(key)
            .is_some_and(|(_, t)| t.attempt == key.attempt && t.state.is_active())
    }

    /// Whether some queued task may be claimed by a bus worker (a resident
    /// or external worker that offers its needs), so claims are worth
    /// looking for. Cheap: a hint kept as tasks are queued and recomputed
    /// when the workers change; it may stay true a little longer than
    /// needed, never false when it should be true.
    pub fn awaits_bus_claims(&self) -> bool {
        !self.queue.is_empty() && self.bus_claimable
    }

    /// Goals in flight.
    pub fn goals_in_flight(&self) -> usize {
        self.goals.len()
    }

    pub fn has_goal(&self, id: &Id) -> bool {
        self.goals.contains_key(id)
    }

    /// Spawned processes in flight.
    pub fn spawned(&self) -> u32 {
        self.workers.spawned_total
    }

    /// Running attempts claimed by `worker`.
    pub fn running_on(&self, worker: &Id) -> u32 {
        self.claims.get(worker).map_or(0, |c| c.len() as u32)
            + self.workers.spawned.get(worker).copied().unwrap_or(0)
    }

    /// The status of every goal in flight (per task for goals of at most
    /// `list_tasks_up_to` tasks), and the totals.
    pub fn snapshot(&self, list_tasks_up_to: usize) -> (Counts, Vec<GoalStatus>) {
        let mut totals = Counts::default();
        let mut goals: Vec<GoalStatus> = self
            .goals
            .values()
            .map(|g| {
                let mut counts = Counts::default();
                let mut tasks = BTreeMap::new();
                for t in &g.tasks {
                    let s = t.state.name();
                    counts.add(s);
                    totals.add(s);
                    if g.tasks.len() <= list_tasks_up_to {
                        tasks.insert(
                            t.spec.id.to_string(),
                            TaskStatus {
                                state: s,
                                attempt: t.attempt,
                                worker: t.worker.as_ref().map(|w| w.to_string()),
                                reason: t.state.reason().map(str::to_string),
                            },
                        );
                    }
                }
                GoalStatus {
                    id: g.goal.id.clone(),
                    priority: g.goal.priority,
                    accepted_at: g.goal.accepted_at,
                    counts,
                    tasks,
                    held: None,
                }
            })
            .collect();
        goals.sort_by(|a, b| (a.accepted_at, &a.id).cmp(&(b.accepted_at, &b.id)));
        (totals, goals)
    }

    // ----- goals ---------------------------------------------------------

    fn add_goal(
        &mut self,
        now: Timestamp,
        mut goal: Goal,
        history: Option<History>,
        out: &mut Vec<Effect>,
    ) {
        if self.goals.contains_key(&goal.id) {
            out.push(note_goal(
                Level::Warn,
                &goal.id,
                "the goal is already in flight; ignored".into(),
            ));
            return;
        }
        goal.source = None;
        let id = goal.id.clone();
        if let Some(at) = goal.deadline_at {
            self.timers.insert((at, Timer::Deadline(id.clone())));
        }
        let run = GoalRun::new(goal, now);
        let roots: Vec<u32> = run.roots().collect();
        let recovering = history.is_some();
        self.goals.insert(id.clone(), run);
        if let Some(h) = history {
            self.history.insert(id.clone(), h);
        }
        let replay_from = out.len();
        out.push(note_goal(
            Level::Info,
            &id,
            format!(
                "goal {} with {} tasks",
                if recovering { "recovered" } else { "accepted" },
                self.goals[&id].tasks.len()
            ),
        ));
        for ti in roots {
            self.releases.push_back((id.clone(), ti));
        }
        self.run_releases(now, out);
        self.history.remove(&id);
        if recovering {
            // Replaying history is not news: keep the effects, not the notes.
            let mut i = 0;
            out.retain(|e| {
                i += 1;
                i <= replay_from || !matches!(e, Effect::Note(_))
            });
            if let Some(run) = self.goals.get(&id) {
                let mut counts = Counts::default();
                for t in &run.tasks {
                    counts.add(t.state.name());
                }
                out.push(note_goal(
                    Level::Info,
                    &id,
                    format!(
                        "recovered: {} succeeded, {} failed, {} skipped, {} queued, {} running, {} waiting",
                        counts.succeeded, counts.failed, counts.skipped, counts.queued, counts.running, counts.waiting
                    ),
                ));
            }
        }
        self.maybe_finish(now, &id, out);
    }

    /// Releases every task whose dependencies all succeeded. A worklist, so
    /// that a long chain replayed at recovery does not recurse.
    fn run_releases(&mut self, now: Timestamp, out: &mut Vec<Effect>) {
        while let Some((gid, ti)) = self.releases.pop_front() {
            let facts = self
                .history
                .get_mut(&gid)
                .and_then(|h| {
                    let run = self.goals.get(&gid)?;
                    h.remove(&run.tasks[ti as usize].spec.id)
                })
                .filter(|f| !f.is_empty());
            match facts {
                Some(facts) => self.replay(now, &gid, ti, facts, out),
                None => self.start_attempt(now, &gid, ti, None, true, out),
            }
        }
    }

    /// Brings a released task to where the bus says it is (recovery).
    fn replay(
        &mut self,
        now: Timestamp,
        gid: &Id,
        ti: u32,
        mut facts: Vec<AttemptFacts>,
        out: &mut Vec<Effect>,
    ) {
        facts.sort_by_key(|f| f.attempt);
        let last = facts.len() - 1;
        for (i, f) in facts.into_iter().enumerate() {
            let Some(run) = self.goals.get_mut(gid) else {
                return;
            };
            let t = &mut run.tasks[ti as usize];
            if t.state.is_final() {
                // Attempts after the end: their files go to the archive.
                out.push(Effect::Archive {
                    key: run.key(ti, f.attempt),
                });
                continue;
            }
            t.attempt = f.attempt;
            let key = run.key(ti, f.attempt);
            if let Some(result) = f.result {
                let worker = f.claim.as_ref().map(|c| c.worker.clone());
                self.set_running(now, gid, ti, worker, false);
                if !f.archived {
                    out.push(Effect::Archive { key: key.clone() });
                }
                self.apply_result(now, &key, result, out);
                continue;
            }
            let claim_alive = f.claim.as_ref().is_some_and(|c| c.alive);
            if i < last || (f.claim.is_some() && !claim_alive) {
                let reason = if i < last {
                    "superseded by a later attempt".to_string()
                } else {
                    let w = f
                        .claim
                        .as_ref()
                        .map(|c| c.worker.to_string())
                        .unwrap_or_default();
                    format!("claimant {w} is gone (daemon restarted)")
                };
                self.set_running(now, gid, ti, None, false);
                // Its claim or task file goes to the archive; a result that
                // still comes for it is stale.
                out.push(Effect::Archive { key: key.clone() });
                self.attempt_failed(now, &key, reason, false, out);
                continue;
            }
            match f.claim {
                Some(c) => self.set_running(now, gid, ti, Some(c.worker), false),
                None => {
                    if !f.published {
                        let record = Arc::new(self.task_record(gid, ti, now));
                        self.fresh.insert((gid.clone(), ti), record.clone());
                        out.push(Effect::Publish(record));
                    }
                    self.set_queued(now, gid, ti);
                }
            }
        }
    }

    /// Issues the next attempt of a task and publishes it.
    fn start_attempt(
        &mut self,
        now: Timestamp,
        gid: &Id,
        ti: u32,
        previous_error: Option<String>,
        fresh: bool,
        out: &mut Vec<Effect>,
    ) {
        let Some(run) = self.goals.get_mut(gid) else {
            return;
        };
        let t = &mut run.tasks[ti as usize];
        if t.state.is_final() {
            return;
        }
        if fresh && t.attempt > 0 {
            return;
        }
        t.attempt += 1;
        if previous_error.is_some() {
            t.last_error = previous_error;
        }
        let record = self.task_record(gid, ti, now);
        let Some(run) = self.goals.get_mut(gid) else {
            return;
        };
        // A prompt that cannot be rendered will not render next time either.
        if let (Some(_), None) = (&run.tasks[ti as usize].spec.prompt, &record.prompt) {
            let reason = run.tasks[ti as usize]
                .render_error
                .take()
                .unwrap_or_default();
            self.end_task(
                now,
                gid,
                ti,
                TaskState::Failed {
                    reason: format!("prompt: {reason}"),
                },
                out,
            );
            return;
        }
        let record = Arc::new(record);
        self.fresh.insert((gid.clone(), ti), record.clone());
        out.push(Effect::Publish(record));
        self.set_queued(now, gid, ti);
    }

    fn set_queued(&mut self, now: Timestamp, gid: &Id, ti: u32) {
        let Some(run) = self.goals.get_mut(gid) else {
            return;
        };
        self.seq += 1;
        let seq = self.seq;
        let t = &mut run.tasks[ti as usize];
        let served = self
            .workers
            .served(&t.spec.needs, now, self.cfg.lease_timeout);
        self.bus_claimable |= self.workers.bus_offers(&t.spec.needs);
        let grace_until = (!served).then(|| now.plus(self.cfg.capability_grace));
        if let Some(at) = grace_until {
            self.timers
                .insert((at, Timer::Grace(gid.clone(), ti, t.attempt)));
        }
        t.state = TaskState::Queued {
            since: now,
            grace_until,
            seq,
        };
        self.queue
            .insert((Reverse(run.goal.priority), seq, gid.clone(), ti));
    }

    fn set_running(
        &mut self,
        now: Timestamp,
        gid: &Id,
        ti: u32,
        worker: Option<Id>,
        spawned: bool,
    ) {
        let Some(run) = self.goals.get_mut(gid) else {
            return;
        };
        let key = run.key(ti, run.tasks[ti as usize].attempt);
        let t = &mut run.tasks[ti as usize];
        if let TaskState::Queued { seq, .. } = &t.state {
            self.queue
                .remove(&(Reverse(run.goal.priority), *seq, gid.clone(), ti));
        }
        let timeout = t
            .spec
            .timeout
            .map(|d| d.0)
            .or_else(|| {
                worker
                    .as_ref()
                    .and_then(|w| self.workers.views.get(w))
                    .and_then(|w| w.timeout)
            })
            .unwrap_or(self.cfg.default_timeout);
        let timeout_at = now.plus(timeout);
        self.timers
            .insert((timeout_at, Timer::Timeout(gid.clone(), ti, t.attempt)));
        if t.started_at.is_none() {
            t.started_at = Some(now);
        }
        if let Some(w) = &worker {
            t.worker = Some(w.clone());
            if !spawned {
                self.claims.entry(w.clone()).or_default().insert(key);
            }
        }
        t.state = TaskState::Running {
            worker,
            since: now,
            timeout,
            spawned,
        };
    }

    /// The record for the task's current attempt.
    fn task_record(&mut self, gid: &Id, ti: u32, now: Timestamp) -> TaskRecord {
        let run = self.goals.get_mut(gid).expect("goal in flight");
        let (record, render_error) = run.task_record(ti, now);
        run.tasks[ti as usize].render_error = render_error;
        record
    }

    // ----- claims and results -------------------------------------------

    fn on_claimed(&mut self, now: Timestamp, key: AttemptKey, worker: Id, out: &mut Vec<Effect>) {
        let Some((run, t)) = self.task(&key) else {
            out.push(Effect::Archive { key });
            return;
        };
        if t.attempt != key.attempt || !t.state.is_active() {
            out.push(note_key(
                Level::Warn,
                &key,
                Some(&worker),
                "a claim of an attempt that is no longer live; archived".into(),
            ));
            out.push(Effect::Archive { key });
            return;
        }
        let ti = run.index[&key.task];
        match &t.state {
            TaskState::Queued { .. } => {
                out.push(note_key(
                    Level::Debug,
                    &key,
                    Some(&worker),
                    "claimed".into(),
                ));
                self.set_running(now, &key.goal, ti, Some(worker), false);
            }
            TaskState::Running { worker: None, .. } => {
                // We lost a dispatch race and now learn who won.
                self.set_running(now, &key.goal, ti, Some(worker), false);
            }
            _ => {}
        }
    }

    fn on_claim_raced(&mut self, now: Timestamp, key: AttemptKey, out: &mut Vec<Effect>) {
        let Some((_, t)) = self.task(&key) else {
            return;
        };
        if let TaskState::Running {
            spawned: true,
            worker: Some(w),
            ..
        } = &t.state
            && t.attempt == key.attempt
        {
            let w = w.clone();
            self.workers.spawn_ended(&w);
            out.push(note_key(
                Level::Info,
                &key,
                Some(&w),
                "another worker claimed it first".into(),
            ));
            let ti = self.goals[&key.goal].index[&key.task];
            self.set_running(now, &key.goal, ti, None, false);
        }
    }

    fn on_result(
        &mut self,
        now: Timestamp,
        key: AttemptKey,
        result: Result<ResultRecord, String>,
        out: &mut Vec<Effect>,
    ) {
        let reason = match self.task(&key) {
            None => Some(format!("goal {} is not in flight", key.goal)),
            Some((_, t)) if t.attempt != key.attempt => {
                Some(format!("the task is at attempt {}", t.attempt))
            }
            Some((_, t)) if !t.state.is_active() => {
                Some(format!("the task is already {}", t.state.name()))
            }
            Some(_) => None,
        };
        if let Some(reason) = reason {
            out.push(note_key(
                Level::Warn,
                &key,
                None,
                format!("stale result ignored: {reason}"),
            ));
            out.push(Effect::Stale { key, reason });
            return;
        }
        out.push(Effect::Archive { key: key.clone() });
        self.apply_result(now, &key, result, out);
    }

    /// Applies a result to the live attempt `key`.
    fn apply_result(
        &mut self,
        now: Timestamp,
        key: &AttemptKey,
        result: Result<ResultRecord, String>,
        out: &mut Vec<Effect>,
    ) {
        let Some(run) = self.goals.get_mut(&key.goal) else {
            return;
        };
        let ti = run.index[&key.task];
        let t = &mut run.tasks[ti as usize];
        let record = match result.and_then(|r| check_result_identity(key, r)) {
            Ok(r) => r,
            Err(e) => {
                self.attempt_failed(now, key, format!("bad result: {e}"), true, out);
                return;
            }
        };
        if let Some(w) = record.worker.as_ref().and_then(|w| Id::new(w.clone()).ok()) {
            t.worker = Some(w);
        }
        for (k, v) in &record.usage {
            if v.is_finite() {
                *run.usage.entry(k.clone()).or_default() += v;
            }
        }
        if record.started_at.is_some() && t.started_at.is_none() {
            t.started_at = record.started_at;
        }
        match record.status {
            ResultStatus::Error => {
                let msg = record
                    .error
                    .filter(|e| !e.trim().is_empty())
                    .unwrap_or_else(|| "the worker reported an error without a message".into());
                self.attempt_failed(now, key, msg, !record.lost, out);
            }
            ResultStatus::Ok => {
                let output = record.output.unwrap_or(Value::Null);
                if let Err(e) = t.check_output(&output) {
                    self.attempt_failed(now, key, e, true, out);
                    return;
                }
                // Per task: debug. The goal's own lines (accepted, ended)
                // and every failure stay at info and above.
                out.push(note_key(
                    Level::Debug,
                    key,
                    t.worker.as_ref(),
                    "succeeded".into(),
                ));
                self.succeed(now, &key.goal, ti, output, out);
            }
        }
    }

    fn on_lost(&mut self, now: Timestamp, key: AttemptKey, reason: String, out: &mut Vec<Effect>) {
        if self.is_live(&key) {
            self.attempt_failed(now, &key, reason, false, out);
        }
    }

    /// Ends the live attempt `key` as failed; retries if allowed. A failure
    /// that is not `charged` does not use up a retry and starts at once.
    fn attempt_failed(
        &mut self,
        now: Timestamp,
        key: &AttemptKey,
        error: String,
        charged: bool,
        out: &mut Vec<Effect>,
    ) {
        let Some(run) = self.goals.get_mut(&key.goal) else {
            return;
        };
        let ti = run.index[&key.task];
        let t = &mut run.tasks[ti as usize];
        if t.attempt != key.attempt || !t.state.is_active() {
            return;
        }
        self.leave_active(key);
        let Some(run) = self.goals.get_mut(&key.goal) else {
            return;
        };
        let t = &mut run.tasks[ti as usize];
        if charged {
            t.failures += 1;
        }
        t.last_error = Some(error.clone());
        let worker = t.worker.clone();
        if t.failures > t.spec.retries {
            let reason = if t.attempt > 1 {
                format!("{error} (after {} attempts)", t.attempt)
            } else {
                error
            };
            out.push(note_key(
                Level::Warn,
                key,
                worker.as_ref(),
                format!("failed: {reason}"),
            ));
            self.end_task(now, &key.goal, ti, TaskState::Failed { reason }, out);
            return;
        }
        if !charged {
            out.push(note_key(
                Level::Info,
                key,
                worker.as_ref(),
                format!("attempt lost, starting another: {error}"),
            ));
            self.start_attempt(now, &key.goal, ti, Some(error), false, out);
            return;
        }
        let delay = backoff(
            self.cfg.retry_backoff,
            self.cfg.retry_backoff_max,
            t.failures,
        );
        let until = now.plus(delay);
        out.push(note_key(
            Level::Warn,
            key,
            worker.as_ref(),
            format!(
                "attempt failed ({error}); retry {} of {} in {}",
                t.failures,
                t.spec.retries,
                fmt_duration(delay)
            ),
        ));
        t.state = TaskState::Backoff { until };
        self.timers
            .insert((until, Timer::Backoff(key.goal.clone(), ti, t.attempt)));
    }

    /// Bookkeeping when the live attempt stops being queued or running.
    fn leave_active(&mut self, key: &AttemptKey) {
        let Some(run) = self.goals.get_mut(&key.goal) else {
            return;
        };
        let ti = run.index[&key.task];
        match &run.tasks[ti as usize].state {
            TaskState::Queued { seq, .. } => {
                self.queue
                    .remove(&(Reverse(run.goal.priority), *seq, key.goal.clone(), ti));
            }
            TaskState::Running {
                worker: Some(w),
                spawned,
                ..
            } => {
                if *spawned {
                    self.workers.spawn_ended(w);
                } else if let Some(c) = self.claims.get_mut(w) {
                    c.remove(key);
                    if c.is_empty() {
                        self.claims.remove(w);
                    }
                }
            }
            _ => {}
        }
    }

    fn succeed(&mut self, now: Timestamp, gid: &Id, ti: u32, output: Value, out: &mut Vec<Effect>) {
        let Some(run) = self.goals.get(gid) else {
            return;
        };
        let key = run.key(ti, run.tasks[ti as usize].attempt);
        self.leave_active(&key);
        let run = self.goals.get_mut(gid).expect("goal in flight");
        let is_plan =
            run.goal.plan.is_some() && run.tasks[ti as usize].spec.id.as_str() == PLAN_TASK_ID;
        if is_plan {
            let existing = vec![run.tasks[ti as usize].spec.id.clone()];
            match validate_plan(&output, &self.cfg.limits, &existing) {
                Ok(tasks) => {
                    out.push(note_goal(
                        Level::Info,
                        gid,
                        format!("the plan has {} tasks", tasks.len()),
                    ));
                    run.extend(tasks);
                }
                Err(e) => {
                    let reason = format!("invalid plan: {e}");
                    run.tasks[ti as usize].state = TaskState::Failed {
                        reason: reason.clone(),
                    };
                    run.tasks[ti as usize].finished_at = Some(now);
                    run.open -= 1;
                    run.reason = Some(reason);
                    self.maybe_finish(now, gid, out);
                    return;
                }
            }
        }
        let run = self.goals.get_mut(gid).expect("goal in flight");
        let released = run.complete(ti, output, now);
        for d in released {
            self.releases.push_back((gid.clone(), d));
        }
        if is_plan {
            let run = &self.goals[gid];
            let roots: Vec<u32> = run.roots().filter(|&r| r != ti).collect();
            for r in roots {
                self.releases.push_back((gid.clone(), r));
            }
        }
        self.maybe_finish(now, gid, out);
    }

    /// Ends a task in a final state other than success, skipping its downstream.
    fn end_task(
        &mut self,
        now: Timestamp,
        gid: &Id,
        ti: u32,
        state: TaskState,
        out: &mut Vec<Effect>,
    ) {
        let Some(run) = self.goals.get(gid) else {
            return;
        };
        let key = run.key(ti, run.tasks[ti as usize].attempt);
        if run.tasks[ti as usize].state.is_final() {
            return;
        }
        let was_queued = matches!(run.tasks[ti as usize].state, TaskState::Queued { .. });
        if let TaskState::Running { spawned: true, .. } = run.tasks[ti as usize].state {
            out.push(Effect::Kill {
                key: key.clone(),
                reason: state.reason().unwrap_or_default().to_string(),
            });
        }
        self.leave_active(&key);
        if was_queued {
            out.push(Effect::Archive { key });
        }
        let run = self.goals.get_mut(gid).expect("goal in flight");
        let skipped = run.finish_with(ti, state, now);
        for (d, reason) in skipped {
            out.push(
                Note {
                    level: Level::Warn,
                    goal: Some(gid.clone()),
                    task: Some(run.tasks[d as usize].spec.id.clone()),
                    attempt: None,
                    worker: None,
                    message: format!("skipped: {reason}"),
                }
                .into(),
            );
        }
        self.maybe_finish(now, gid, out);
    }

    fn maybe_finish(&mut self, now: Timestamp, gid: &Id, out: &mut Vec<Effect>) {
        let Some(run) = self.goals.get(gid) else {
            return;
        };
        if run.open > 0 {
            return;
        }
        let run = self.goals.remove(gid).expect("goal in flight");
        self.timers.retain(|(_, t)| t.goal() != gid);
        let report = run.report(now);
        out.push(note_goal(
            if report.outcome == Outcome::Succeeded {
                Level::Info
            } else {
                Level::Warn
            },
            gid,
            format!("goal {}", report.outcome),
        ));
        out.push(Effect::Finished(Box::new(report)));
    }

    /// Cancels everything left of a goal (cancel, deadline).
    fn end_goal_early(
        &mut self,
        now: Timestamp,
        gid: &Id,
        outcome: Outcome,
        reason: String,
        out: &mut Vec<Effect>,
    ) {
        let Some(run) = self.goals.get_mut(gid) else {
            return;
        };
        run.early_end = Some((outcome, reason.clone()));
        let open: Vec<u32> = (0..run.tasks.len() as u32)
            .filter(|&i| !run.tasks[i as usize].state.is_final())
            .collect();
        out.push(note_goal(Level::Warn, gid, format!("{outcome}: {reason}")));
        for ti in open {
            self.end_task(
                now,
                gid,
                ti,
                TaskState::Cancelled {
                    reason: reason.clone(),
                },
                out,
            );
        }
    }

    // ----- workers -------------------------------------------------------

    fn on_workers(&mut self, now: Timestamp, views: Vec<WorkerView>, out: &mut Vec<Effect>) {
        let new: BTreeMap<Id, WorkerView> =
            views.into_iter().map(|w| (w.name.clone(), w)).collect();
        for (name, w) in &new {
            let old = self.workers.views.get(name);
            if old.is_none_or(|o| o.last_seen != w.last_seen) {
                self.stale_workers.remove(name);
            }
            if old.is_none_or(|o| o.healthy != w.healthy || o.capabilities != w.capabilities) {
                out.push(
                    Note {
                        level: if w.healthy { Level::Info } else { Level::Warn },
                        goal: None,
                        task: None,
                        attempt: None,
                        worker: Some(name.clone()),
                        message: format!(
                            "worker {} offers {}",
                            if w.healthy {
                                "healthy,"
                            } else {
                                "unhealthy, withdrawn; it"
                            },
                            w.capabilities
                                .iter()
                                .map(|c| c.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    }
                    .into(),
                );
            }
        }
        self.workers.views = new;
        self.check_leases(now, out);
        self.regrace(now, out);
    }

    /// Revokes the claims of bus workers whose heartbeat ran out.
    fn check_leases(&mut self, now: Timestamp, out: &mut Vec<Effect>) {
        let lease = self.cfg.lease_timeout;
        let expired: Vec<(Id, Duration)> = self
            .workers
            .views
            .values()
            .filter(|w| {
                !matches!(w.kind, WorkerKind::Spawn { .. }) && !self.stale_workers.contains(&w.name)
            })
            .filter_map(|w| {
                let seen = w.last_seen?;
                (now.since(seen) > lease).then(|| (w.name.clone(), now.since(seen)))
            })
            .collect();
        for (name, age) in expired {
            self.stale_workers.insert(name.clone());
            out.push(Effect::Note(Note {
                level: Level::Warn,
                goal: None,
                task: None,
                attempt: None,
                worker: Some(name.clone()),
                message: format!("no heartbeat for {}: withdrawn", fmt_duration(age)),
            }));
            let reason = format!(
                "lease lost: no heartbeat from worker {name} for {}",
                fmt_duration(age)
            );
            self.revoke_claims_of(now, &name, &reason, true, out);
        }
        // A claim by a worker the daemon has never heard of is held to the
        // lease too, counted from when the claim was seen.
    }

    fn revoke_claims_of(
        &mut self,
        now: Timestamp,
        worker: &Id,
        reason: &str,
        charged: bool,
        out: &mut Vec<Effect>,
    ) {
        let keys: Vec<AttemptKey> = self
            .claims
            .get(worker)
            .map(|c| c.iter().cloned().collect())
            .unwrap_or_default();
        for key in keys {
            let mut record = ResultRecord::error(reason);
            record.goal = Some(key.goal.clone());
            record.task = Some(key.task.clone());
            record.attempt = Some(key.attempt);
            record.worker = Some("workbusd".into());
            record.finished_at = Some(now);
            out.push(Effect::WriteResult {
                key: key.clone(),
                record,
            });
            self.attempt_failed(now, &key, reason.to_string(), charged, out);
        }
    }

    /// Starts or stops grace periods after the workers changed.
    fn regrace(&mut self, now: Timestamp, out: &mut Vec<Effect>) {
        let lease = self.cfg.lease_timeout;
        self.bus_claimable = false;
        for (gid, run) in self.goals.iter_mut() {
            // Tasks of this goal served again: one note for them all (a
            // worker appearing may serve tens of thousands).
            let mut served_again = 0usize;
            let mut last = None;
            for (ti, t) in run.tasks.iter_mut().enumerate() {
                if let TaskState::Queued { grace_until, .. } = &mut t.state {
                    self.bus_claimable |= self.workers.bus_offers(&t.spec.needs);
                    let served = self.workers.served(&t.spec.needs, now, lease);
                    match (served, grace_until.is_some()) {
                        (true, true) => {
                            *grace_until = None;
                            served_again += 1;
                            last = Some((t.spec.id.clone(), t.attempt));
                        }
                        (false, false) => {
                            let at = now.plus(self.cfg.capability_grace);
                            *grace_until = Some(at);
                            self.timers
                                .insert((at, Timer::Grace(gid.clone(), ti as u32, t.attempt)));
                        }
                        _ => {}
                    }
                }
            }
            let (task, attempt, message) = match (served_again, last) {
                (1, Some((task, attempt))) => (
                    Some(task),
                    Some(attempt),
                    "a worker now offers its capabilities".to_string(),
                ),
                (0, _) | (_, None) => continue,
                (n, Some(_)) => (
                    None,
                    None,
                    format!("{n} queued tasks: a worker now offers their capabilities"),
                ),
            };
            out.push(
                Note {
                    level: Level::Info,
                    goal: Some(gid.clone()),
                    task,
                    attempt,
                    worker: None,
                    message,
                }
                .into(),
            );
        }
    }

    fn dispatch(&mut self, now: Timestamp, out: &mut Vec<Effect>) {
        if self.draining || self.queue.is_empty() {
            return;
        }
        let mut slots = self.workers.free_spawn_slots().min(
            self.cfg
                .max_running
                .saturating_sub(self.workers.spawned_total),
        );
        if slots == 0 {
            return;
        }
        let mut picked = Vec::new();
        for (_, _, gid, ti) in self.queue.iter() {
            if slots == 0 {
                break;
            }
            let t = &self.goals[gid].tasks[*ti as usize];
            if let Some(w) = self.workers.pick_spawn(&t.spec.needs) {
                // Count it now so the next pick sees this worker as busier.
                self.workers.spawn_started(&w);
                picked.push((gid.clone(), *ti, w));
                slots -= 1;
            }
        }
        for (gid, ti, w) in picked {
            self.workers.spawn_ended(&w);
            let TaskState::Queued { since, .. } = self.goals[&gid].tasks[ti as usize].state else {
                continue;
            };
            // The record as published (this turn's, or rebuilt: it is derived).
            let record = match self.fresh.get(&(gid.clone(), ti)) {
                Some(r) => r.clone(),
                None => Arc::new(self.goals[&gid].task_record(ti, since).0),
            };
            self.set_running(now, &gid, ti, Some(w.clone()), true);
            self.workers.spawn_started(&w);
            out.push(Effect::Dispatch { worker: w, record });
        }
    }

    // ----- timers --------------------------------------------------------

    fn on_tick(&mut self, now: Timestamp, out: &mut Vec<Effect>) {
        while let Some((at, _)) = self.timers.first() {
            if *at > now {
                break;
            }
            let (_, timer) = self.timers.pop_first().expect("a first timer");
            self.fire(now, timer, out);
        }
        self.check_leases(now, out);
    }

    fn fire(&mut self, now: Timestamp, timer: Timer, out: &mut Vec<Effect>) {
        match timer {
            Timer::Deadline(gid) => {
                if self.goals.contains_key(&gid) {
                    self.end_goal_early(
                        now,
                        &gid,
                        Outcome::TimedOut,
                        "the goal's deadline passed".into(),
                        out,
                    );
                }
            }
            Timer::Grace(gid, ti, attempt) => {
                let Some(run) = self.goals.get(&gid) else {
                    return;
                };
                let t = &run.tasks[ti as usize];
                if t.attempt != attempt
                    || !matches!(
                        t.state,
                        TaskState::Queued {
                            grace_until: Some(_),
                            ..
                        }
                    )
                {
                    return;
                }
                if self
                    .workers
                    .served(&t.spec.needs, now, self.cfg.lease_timeout)
                {
                    return;
                }
                let needs: Vec<&str> = t.spec.needs.iter().map(|c| c.as_str()).collect();
                let mut reason = format!(
                    "no healthy worker offers [{}] (waited {})",
                    needs.join(", "),
                    fmt_duration(self.cfg.capability_grace)
                );
                let unhealthy: Vec<String> = self
                    .workers
                    .views
                    .values()
                    .filter(|w| w.offers(&t.spec.needs) && !w.healthy)
                    .map(|w| w.name.to_string())
                    .collect();
                if !unhealthy.is_empty() {
                    reason.push_str(&format!(
                        "; withdrawn as unhealthy (crash loop): {}",
                        unhealthy.join(", ")
                    ));
                }
                out.push(note_key(
                    Level::Warn,
                    &run.key(ti, attempt),
                    None,
                    format!("skipped: {reason}"),
                ));
                self.end_task(now, &gid, ti, TaskState::Skipped { reason }, out);
            }
            Timer::Backoff(gid, ti, attempt) => {
                let Some(run) = self.goals.get(&gid) else {
                    return;
                };
                let t = &run.tasks[ti as usize];
                if t.attempt == attempt && matches!(t.state, TaskState::Backoff { .. }) {
                    let err = t.last_error.clone();
                    self.start_attempt(now, &gid, ti, err, false, out);
                }
            }
            Timer::Timeout(gid, ti, attempt) => {
                let Some(run) = self.goals.get(&gid) else {
                    return;
                };
                let t = &run.tasks[ti as usize];
                let TaskState::Running {
                    timeout, spawned, ..
                } = &t.state
                else {
                    return;
                };
                if t.attempt != attempt {
                    return;
                }
                let key = run.key(ti, attempt);
                let reason = format!("timed out after {}", fmt_duration(*timeout));
                if *spawned {
                    out.push(Effect::Kill {
                        key: key.clone(),
                        reason: reason.clone(),
                    });
                }
                let mut record = ResultRecord::error(&reason);
                record.goal = Some(key.goal.clone());
                record.task = Some(key.task.clone());
                record.attempt = Some(attempt);
                record.worker = Some("workbusd".into());
                record.finished_at = Some(now);
                out.push(Effect::WriteResult {
                    key: key.clone(),
                    record,
                });
                self.attempt_failed(now, &key, reason, true, out);
            }
        }
    }

    // ----- control -------------------------------------------------------

    fn on_retry(&mut self, now: Timestamp, gid: Id, task: Option<Id>, out: &mut Vec<Effect>) {
        let Some(run) = self.goals.get_mut(&gid) else {
            out.push(note_goal(
                Level::Warn,
                &gid,
                "retry: the goal is not in flight (a finished goal is resubmitted, not retried)"
                    .into(),
            ));
            return;
        };
        let targets: Vec<u32> = match &task {
            Some(t) => match run.index.get(t) {
                Some(&i) => vec![i],
                None => {
                    out.push(note_goal(
                        Level::Warn,
                        &gid,
                        format!("retry: the goal has no task {t}"),
                    ));
                    return;
                }
            },
            None => (0..run.tasks.len() as u32).collect(),
        };
        let mut any = false;
        for ti in targets {
            let run = self.goals.get_mut(&gid).expect("goal in flight");
            match run.tasks[ti as usize].state {
                TaskState::Failed { .. } => {
                    run.revive(ti);
                    let err = run.tasks[ti as usize].last_error.clone();
                    self.start_attempt(now, &gid, ti, err, false, out);
                    any = true;
                }
                TaskState::Backoff { .. } => {
                    let err = run.tasks[ti as usize].last_error.clone();
                    self.start_attempt(now, &gid, ti, err, false, out);
                    any = true;
                }
                _ => {}
            }
        }
        if !any {
            out.push(note_goal(
                Level::Warn,
                &gid,
                "retry: nothing to retry (no failed task, none waiting to retry)".into(),
            ));
        }
    }

    fn on_answer(
        &mut self,
        now: Timestamp,
        gid: Id,
        task: Id,
        mut result: ResultRecord,
        out: &mut Vec<Effect>,
    ) {
        let Some(run) = self.goals.get(&gid) else {
            out.push(note_goal(
                Level::Warn,
                &gid,
                "answer: the goal is not in flight".into(),
            ));
            return;
        };
        let Some(&ti) = run.index.get(&task) else {
            out.push(note_goal(
                Level::Warn,
                &gid,
                format!("answer: the goal has no task {task}"),
            ));
            return;
        };
        let t = &run.tasks[ti as usize];
        if !t.spec.needs.iter().any(|n| n.as_str() == HUMAN)
            || !matches!(t.state, TaskState::Queued { .. })
        {
            out.push(note_goal(
                Level::Warn,
                &gid,
                format!("answer: task {task} is not waiting for a person"),
            ));
            return;
        }
        let key = run.key(ti, t.attempt);
        if !matches!(t.state, TaskState::Queued { .. }) {
            return;
        }
        let human = Id::new(HUMAN).expect("a valid id");
        self.set_running(now, &gid, ti, Some(human.clone()), false);
        result.goal = Some(key.goal.clone());
        result.task = Some(key.task.clone());
        result.attempt = Some(key.attempt);
        result.worker = Some(HUMAN.into());
        result.finished_at = Some(now);
        out.push(Effect::WriteResult {
            key: key.clone(),
            record: result.clone(),
        });
        out.push(Effect::Archive { key: key.clone() });
        self.apply_result(now, &key, Ok(result), out);
    }

    // ----- helpers -------------------------------------------------------

    fn task(&self, key: &AttemptKey) -> Option<(&GoalRun, &TaskRun)> {
        let run = self.goals.get(&key.goal)?;
        let &ti = run.index.get(&key.task)?;
        Some((run, &run.tasks[ti as usize]))
    }
}

/// Fails a result whose own fields contradict the attempt it was filed as.
fn check_result_identity(key: &AttemptKey, r: ResultRecord) -> Result<ResultRecord, String> {
    workbus_proto::check_schema_version(r.schema_version)?;
    if let Some(g) = &r.goal
        && g != &key.goal
    {
        return Err(format!("its goal is {g:?}, but it was filed as {key}"));
    }
    if let Some(t) = &r.task
        && t != &key.task
    {
        return Err(format!("its task is {t:?}, but it was filed as {key}"));
    }
    if let Some(a) = r.attempt
        && a != key.attempt
    {
        return Err(format!("its attempt is {a}, but it was filed as {key}"));
    }
    if r.status == ResultStatus::Ok && r.error.is_some() {
        return Err("status is \"ok\" but it carries an error".into());
    }
    Ok(r)
}

/// `base * 2^(n-1)`, at most `max`.
pub fn backoff(base: Duration, max: Duration, n: u32) -> Duration {
    let factor = 1u32
        .checked_shl(n.saturating_sub(1).min(31))
        .unwrap_or(u32::MAX);
    base.checked_mul(factor).unwrap_or(max).min(max)
}

/// A short human duration ("1.5s", "2m").
pub fn fmt_duration(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else if d < Duration::from_secs(60) && d.subsec_millis() != 0 {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
    }
}

impl From<Note> for Effect {
    fn from(n: Note) -> Effect {
        Effect::Note(n)
    }
}

fn note_goal(level: Level, goal: &Id, message: String) -> Effect {
    Effect::Note(Note {
        level,
        goal: Some(goal.clone()),
        task: None,
        attempt: None,
        worker: None,
        message,
    })
}

fn note_key(level: Level, key: &AttemptKey, worker: Option<&Id>, message: String) -> Effect {
    Effect::Note(Note {
        level,
        goal: Some(key.goal.clone()),
        task: Some(key.task.clone()),
        attempt: Some(key.attempt),
        worker: worker.cloned(),
        message,
    })
}

/// For reports: the state name of a task state.
pub fn state_name(s: &TaskState) -> TaskStateName {
    s.name()
}

#[cfg(test)]
mod tests;
