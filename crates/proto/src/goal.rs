//! Goals: the file a person drops into `inbox/`, and the normalized goal the
//! daemon keeps in `goals/<id>.json`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::parse::Format;
use crate::{Capability, HumanDuration, Id, Timestamp};

/// A goal file as written by a person (TOML or JSON, same schema).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoalFile {
    /// Optional; the default is the file's stem.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Id>,
    /// The whole goal's time limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<HumanDuration>,
    /// Higher is dispatched first.
    #[serde(default)]
    pub priority: i64,
    #[serde(default, alias = "tasks", skip_serializing_if = "Vec::is_empty")]
    pub task: Vec<TaskSpec>,
    /// A planner task whose output is this goal's task list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<PlanSpec>,
}

/// One `[[task]]` of a goal file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    pub id: Id,
    /// Capabilities a worker must offer, all of them.
    #[serde(default)]
    pub needs: Vec<Capability>,
    /// Ids of tasks that must succeed first.
    #[serde(default)]
    pub after: Vec<Id>,
    /// Any JSON value.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub input: Value,
    /// A template (Jinja syntax) with `deps`, `input` and `goal` in scope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// Per attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<HumanDuration>,
    /// Extra attempts after a failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// JSON Schema the result's `output` must satisfy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_schema: Option<Value>,
}

/// `plan = { needs = [...], prompt = "..." }`: a planner writes the tasks.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanSpec {
    #[serde(default)]
    pub needs: Vec<Capability>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub input: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<HumanDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
}

/// An accepted goal, normalized: ids set, defaults filled, DAG checked.
/// Written once to `goals/<id>.json` and never changed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Goal {
    #[serde(default = "crate::default_schema_version")]
    pub schema_version: u32,
    pub id: Id,
    pub priority: i64,
    pub accepted_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<HumanDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_at: Option<Timestamp>,
    pub tasks: Vec<GoalTask>,
    /// Set for a planned goal; its tasks come from the planner's output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<PlanSpec>,
    /// The file as dropped: kept so that a crash between accepting the goal
    /// and removing it from `inbox/` cannot accept it twice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<GoalSource>,
}

/// One task of an accepted goal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoalTask {
    pub id: Id,
    pub needs: Vec<Capability>,
    pub after: Vec<Id>,
    #[serde(default)]
    pub input: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<HumanDuration>,
    pub retries: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_schema: Option<Value>,
}

/// Where an accepted goal came from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoalSource {
    /// The file name in `inbox/`.
    pub name: String,
    pub format: Format,
    pub text: String,
}

/// The id of the planner task of a planned goal.
pub const PLAN_TASK_ID: &str = "plan";

/// What a planner's output must look like: a task list in the goal schema.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanOutput {
    #[serde(alias = "tasks")]
    pub task: Vec<TaskSpec>,
}
