//! One goal in flight: its tasks, their states, and the DAG between them.
//!
//! Task states carry their data; the transitions that touch the DAG
//! (complete, finish with failure/skip/cancel, revive) are methods here that
//! say which states they start from.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde_json::{Value, json};
use workbus_proto::goal::{Goal, GoalTask};
use workbus_proto::names::AttemptKey;
use workbus_proto::report::{Outcome, Report, TaskReport, TaskStateName};
use workbus_proto::task::{DepOutput, TaskRecord};
use workbus_proto::{HumanDuration, Id, SCHEMA_VERSION, Timestamp};

use crate::template;

/// Where a task is in its life, with what that state needs to know.
#[derive(Clone, Debug)]
pub enum TaskState {
    /// Dependencies not yet all succeeded.
    Waiting {
        pending: usize,
    },
    /// Published in `tasks/`, not claimed. `grace_until` is set while no
    /// worker offers its capabilities.
    Queued {
        since: Timestamp,
        grace_until: Option<Timestamp>,
        seq: u64,
    },
    /// Claimed. `worker` is unknown briefly after a lost dispatch race.
    Running {
        worker: Option<Id>,
        since: Timestamp,
        timeout: Duration,
        /// The daemon runs its process (spawn mode).
        spawned: bool,
    },
    /// Failed an attempt; the next one starts at `until`.
    Backoff {
        until: Timestamp,
    },
    Succeeded {
        output: Value,
    },
    Failed {
        reason: String,
    },
    Skipped {
        reason: String,
    },
    Cancelled {
        reason: String,
    },
}

impl TaskState {
    pub fn name(&self) -> TaskStateName {
        match self {
            TaskState::Waiting { .. } | TaskState::Backoff { .. } => TaskStateName::Waiting,
            TaskState::Queued { .. } => TaskStateName::Queued,
            TaskState::Running { .. } => TaskStateName::Running,
            TaskState::Succeeded { .. } => TaskStateName::Succeeded,
            TaskState::Failed { .. } => TaskStateName::Failed,
            TaskState::Skipped { .. } => TaskStateName::Skipped,
            TaskState::Cancelled { .. } => TaskStateName::Cancelled,
        }
    }

    pub fn is_final(&self) -> bool {
        self.name().is_final()
    }

    /// Queued or running: an attempt is live.
    pub fn is_active(&self) -> bool {
        matches!(self, TaskState::Queued { .. } | TaskState::Running { .. })
    }

    pub fn reason(&self) -> Option<&str> {
        match self {
            TaskState::Failed { reason }
            | TaskState::Skipped { reason }
            | TaskState::Cancelled { reason } => Some(reason),
            _ => None,
        }
    }
}

/// A task of a goal in flight.
#[derive(Debug)]
pub struct TaskRun {
    pub spec: GoalTask,
    pub state: TaskState,
    /// The highest attempt number issued (0 before the first).
    pub attempt: u32,
    /// Failed attempts that count against `retries`.
    pub failures: u32,
    pub worker: Option<Id>,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
    pub last_error: Option<String>,
    /// Why the prompt of the current attempt could not be rendered.
    pub render_error: Option<String>,
    validator: OnceLock<Option<Arc<jsonschema::Validator>>>,
}

impl TaskRun {
    fn new(spec: GoalTask, pending: usize) -> Self {
        TaskRun {
            spec,
            state: TaskState::Waiting { pending },
            attempt: 0,
            failures: 0,
            worker: None,
            started_at: None,
            finished_at: None,
            last_error: None,
            render_error: None,
            validator: OnceLock::new(),
        }
    }

    /// Checks an output against the task's `output_schema`.
    pub fn check_output(&self, output: &Value) -> Result<(), String> {
        let Some(schema) = &self.spec.output_schema else {
            return Ok(());
        };
        let validator = self
            .validator
            .get_or_init(|| jsonschema::validator_for(schema).ok().map(Arc::new));
        let Some(v) = validator else {
            return Err("output_schema cannot be compiled".into());
        };
        let errors: Vec<String> = v
            .iter_errors(output)
            .take(5)
            .map(|e| {
                let path = e.instance_path.to_string();
                if path.is_empty() {
                    e.to_string()
                } else {
                    format!("{path}: {e}")
                }
            })
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "output does not match output_schema: {}",
                errors.join("; ")
            ))
        }
    }
}

#[derive(Debug)]
pub struct GoalRun {
    pub goal: Arc<Goal>,
    pub tasks: Vec<TaskRun>,
    pub index: HashMap<Id, u32>,
    /// `deps[i]`: the tasks `i` runs after.
    pub deps: Vec<Vec<u32>>,
    /// `dependents[i]`: the tasks that run after `i`.
    pub dependents: Vec<Vec<u32>>,
    /// Tasks not yet in a final state.
    pub open: usize,
    pub started_at: Timestamp,
    pub usage: BTreeMap<String, f64>,
    /// Set when the goal was cancelled or timed out.
    pub early_end: Option<(Outcome, String)>,
    /// A goal-level reason (an invalid plan).
    pub reason: Option<String>,
}

impl GoalRun {
    /// The goal's tasks move into the run (the goal keeps the rest).
    pub fn new(mut goal: Goal, now: Timestamp) -> Self {
        let tasks = std::mem::take(&mut goal.tasks);
        let goal = Arc::new(goal);
        let mut run = GoalRun {
            goal: goal.clone(),
            tasks: Vec::new(),
            index: HashMap::new(),
            deps: Vec::new(),
            dependents: Vec::new(),
            open: 0,
            started_at: goal.accepted_at.min(now),
            usage: BTreeMap::new(),
            early_end: None,
            reason: None,
        };
        run.extend(tasks);
        run
    }

    /// Adds tasks (the goal's own, or a planner's) to the DAG.
    pub fn extend(&mut self, tasks: Vec<GoalTask>) {
        let first = self.tasks.len() as u32;
        for (i, t) in tasks.iter().enumerate() {
            self.index.insert(t.id.clone(), first + i as u32);
        }
        for t in tasks {
            let deps: Vec<u32> = t
                .after
                .iter()
                .filter_map(|a| self.index.get(a).copied())
                .collect();
            let i = self.tasks.len() as u32;
            for &d in &deps {
                self.dependents_mut(d).push(i);
            }
            self.tasks.push(TaskRun::new(t, deps.len()));
            self.deps.push(deps);
            self.dependents.push(Vec::new());
            self.open += 1;
        }
    }

    fn dependents_mut(&mut self, i: u32) -> &mut Vec<u32> {
        &mut self.dependents[i as usize]
    }

    /// Tasks waiting for nothing.
    pub fn roots(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.tasks.len() as u32).filter(|&i| {
            matches!(
                self.tasks[i as usize].state,
                TaskState::Waiting { pending: 0 }
            )
        })
    }

    pub fn key(&self, ti: u32, attempt: u32) -> AttemptKey {
        AttemptKey::new(
            self.goal.id.clone(),
            self.tasks[ti as usize].spec.id.clone(),
            attempt,
        )
    }

    /// The record of the task's current attempt, and the prompt's render
    /// error if it has one.
    pub fn task_record(&self, ti: u32, now: Timestamp) -> (TaskRecord, Option<String>) {
        let t = &self.tasks[ti as usize];
        let deps: BTreeMap<String, DepOutput> = self.deps[ti as usize]
            .iter()
            .map(|&d| {
                let dt = &self.tasks[d as usize];
                let output = match &dt.state {
                    TaskState::Succeeded { output } => output.clone(),
                    _ => Value::Null,
                };
                (dt.spec.id.to_string(), DepOutput { output })
            })
            .collect();
        let (prompt, render_error) = match &t.spec.prompt {
            None => (None, None),
            Some(p) => {
                let ctx = json!({
                    "deps": &deps,
                    "input": &t.spec.input,
                    "goal": {
                        "id": self.goal.id.as_str(),
                        "priority": self.goal.priority,
                        "deadline": self.goal.deadline_at,
                    },
                    "task": t.spec.id.as_str(),
                    "attempt": t.attempt,
                });
                match template::render(p, &ctx) {
                    Ok(s) => (Some(s), None),
                    Err(e) => (None, Some(e)),
                }
            }
        };
        let record = TaskRecord {
            schema_version: SCHEMA_VERSION,
            goal: self.goal.id.clone(),
            task: t.spec.id.clone(),
            attempt: t.attempt,
            needs: t.spec.needs.clone(),
            input: t.spec.input.clone(),
            prompt,
            deps,
            deadline: self.goal.deadline_at,
            previous_error: t.last_error.clone(),
            output_schema: t.spec.output_schema.clone(),
            timeout: t.spec.timeout.map(|d| HumanDuration(d.0)),
            priority: self.goal.priority,
            published_at: now,
        };
        (record, render_error)
    }

    /// `Queued | Running → Succeeded`. Returns the dependents it released.
    pub fn complete(&mut self, ti: u32, output: Value, now: Timestamp) -> Vec<u32> {
        let t = &mut self.tasks[ti as usize];
        t.state = TaskState::Succeeded { output };
        t.finished_at = Some(now);
        self.open -= 1;
        let mut released = Vec::new();
        for &d in &self.dependents[ti as usize] {
            if let TaskState::Waiting { pending } = &mut self.tasks[d as usize].state {
                *pending = pending.saturating_sub(1);
                if *pending == 0 {
                    released.push(d);
                }
            }
        }
        released
    }

    /// `any non-final → Failed | Skipped | Cancelled`; every waiting task
    /// downstream is skipped. Returns the skipped tasks with their reasons.
    pub fn finish_with(&mut self, ti: u32, state: TaskState, now: Timestamp) -> Vec<(u32, String)> {
        let name = state.name();
        let t = &mut self.tasks[ti as usize];
        t.state = state;
        t.finished_at = Some(now);
        self.open -= 1;
        let mut skipped = Vec::new();
        let mut work: VecDeque<(u32, u32)> = self.dependents[ti as usize]
            .iter()
            .map(|&d| (d, ti))
            .collect();
        while let Some((d, because)) = work.pop_front() {
            let dt = &self.tasks[d as usize];
            if !matches!(dt.state, TaskState::Waiting { .. }) {
                continue;
            }
            let why = &self.tasks[because as usize];
            let reason = format!(
                "dependency {} {}",
                why.spec.id,
                if because == ti {
                    name
                } else {
                    TaskStateName::Skipped
                }
            );
            let dt = &mut self.tasks[d as usize];
            dt.state = TaskState::Skipped {
                reason: reason.clone(),
            };
            dt.finished_at = Some(now);
            self.open -= 1;
            skipped.push((d, reason));
            work.extend(self.dependents[d as usize].iter().map(|&x| (x, d)));
        }
        skipped
    }

    /// `Failed → Waiting` for a retry asked by a person: the task gets a
    /// fresh retry budget and what was skipped because of it waits again.
    pub fn revive(&mut self, ti: u32) {
        let t = &mut self.tasks[ti as usize];
        t.failures = 0;
        t.finished_at = None;
        t.state = TaskState::Waiting { pending: 0 };
        self.open += 1;
        let mut work: VecDeque<u32> = self.dependents[ti as usize].iter().copied().collect();
        while let Some(d) = work.pop_front() {
            if !matches!(self.tasks[d as usize].state, TaskState::Skipped { .. }) {
                continue;
            }
            let pending = self.deps[d as usize]
                .iter()
                .filter(|&&x| !matches!(self.tasks[x as usize].state, TaskState::Succeeded { .. }))
                .count();
            let dt = &mut self.tasks[d as usize];
            dt.state = TaskState::Waiting { pending };
            dt.finished_at = None;
            self.open += 1;
            work.extend(self.dependents[d as usize].iter().copied());
        }
    }

    /// The final report.
    pub fn report(&self, now: Timestamp) -> Report {
        let mut failed = false;
        let mut skipped = false;
        let tasks = self
            .tasks
            .iter()
            .map(|t| {
                let state = t.state.name();
                failed |= state == TaskStateName::Failed;
                skipped |= state == TaskStateName::Skipped;
                let output = match &t.state {
                    TaskState::Succeeded { output } => Some(output.clone()),
                    _ => None,
                };
                (
                    t.spec.id.to_string(),
                    TaskReport {
                        state,
                        attempts: t.attempt,
                        worker: t.worker.as_ref().map(|w| w.to_string()),
                        output,
                        reason: t.state.reason().map(str::to_string),
                        started_at: t.started_at,
                        finished_at: t.finished_at,
                    },
                )
            })
            .collect();
        let (outcome, reason) = match &self.early_end {
            Some((o, r)) => (*o, Some(r.clone())),
            None if failed => (Outcome::Failed, self.reason.clone()),
            None if skipped => (Outcome::Degraded, None),
            None => (Outcome::Succeeded, None),
        };
        Report {
            schema_version: SCHEMA_VERSION,
            goal: self.goal.id.clone(),
            outcome,
            started_at: self.started_at,
            finished_at: now,
            usage: self.usage.clone(),
            tasks,
            reason,
        }
    }
}
