//! The status snapshot (`status.json`) that `workbusctl status` reads.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::report::TaskStateName;
use crate::{Capability, Id, Timestamp};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Status {
    #[serde(default = "crate::default_schema_version")]
    pub schema_version: u32,
    pub updated_at: Timestamp,
    pub daemon: DaemonInfo,
    /// Task counts over every goal in flight.
    pub totals: Counts,
    pub goals: Vec<GoalStatus>,
    pub workers: Vec<WorkerStatus>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonInfo {
    pub pid: u32,
    pub started_at: Timestamp,
    /// `notify` or `poll`, and why.
    pub watch: String,
    pub watch_reason: String,
    /// False once a stop was asked for.
    pub running: bool,
}

/// Tasks per state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Counts {
    pub waiting: usize,
    pub queued: usize,
    pub running: usize,
    pub succeeded: usize,
    pub failed: usize,
    pub skipped: usize,
    pub cancelled: usize,
}

impl Counts {
    pub fn add(&mut self, s: TaskStateName) {
        *self.slot(s) += 1;
    }
    pub fn get(&self, s: TaskStateName) -> usize {
        let mut c = *self;
        *c.slot(s)
    }
    fn slot(&mut self, s: TaskStateName) -> &mut usize {
        match s {
            TaskStateName::Waiting => &mut self.waiting,
            TaskStateName::Queued => &mut self.queued,
            TaskStateName::Running => &mut self.running,
            TaskStateName::Succeeded => &mut self.succeeded,
            TaskStateName::Failed => &mut self.failed,
            TaskStateName::Skipped => &mut self.skipped,
            TaskStateName::Cancelled => &mut self.cancelled,
        }
    }
    pub fn total(&self) -> usize {
        self.waiting
            + self.queued
            + self.running
            + self.succeeded
            + self.failed
            + self.skipped
            + self.cancelled
    }
    pub fn ended(&self) -> usize {
        self.succeeded + self.failed + self.skipped + self.cancelled
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoalStatus {
    pub id: Id,
    pub priority: i64,
    pub accepted_at: Timestamp,
    pub counts: Counts,
    /// Per task, for goals small enough to list.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tasks: BTreeMap<String, TaskStatus>,
    /// Set while the goal, or results the daemon wrote, could not be made
    /// durable: why. Until they are, nothing that depends on them is
    /// written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskStatus {
    pub state: TaskStateName,
    pub attempt: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerStatus {
    pub name: Id,
    /// `spawn`, `resident` or `external`.
    pub mode: String,
    pub capabilities: Vec<Capability>,
    pub healthy: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
    pub running: u32,
    pub capacity: u32,
    #[serde(default)]
    pub restarts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// True while it finishes its running tasks before it stops.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub draining: bool,
}
