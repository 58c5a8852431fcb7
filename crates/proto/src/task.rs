//! Task records: what a worker is given (`tasks/<goal>.<task>.<attempt>.json`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{Capability, HumanDuration, Id, Timestamp};

/// A published task. A worker claims it by renaming the file into `claimed/`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskRecord {
    #[serde(default = "crate::default_schema_version")]
    pub schema_version: u32,
    pub goal: Id,
    pub task: Id,
    /// 1 for the first attempt; every retry gets the next number.
    pub attempt: u32,
    pub needs: Vec<Capability>,
    #[serde(default)]
    pub input: Value,
    /// The rendered prompt, if the task has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// Each dependency's output.
    #[serde(default)]
    pub deps: BTreeMap<String, DepOutput>,
    /// The goal's absolute deadline, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<Timestamp>,
    /// Why the previous attempt failed (e.g. the schema error), so an LLM
    /// worker can correct itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_schema: Option<Value>,
    /// This attempt's time limit, counted from the claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<HumanDuration>,
    #[serde(default)]
    pub priority: i64,
    pub published_at: Timestamp,
}

/// A dependency's output as handed to its dependents.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DepOutput {
    pub output: Value,
}
