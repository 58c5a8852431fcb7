//! Control records (`control/*.json`): commands from `workbusctl` to the daemon.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Id;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ControlCommand {
    /// Cancel a goal in flight.
    Cancel,
    /// Give a failed task of a goal in flight a fresh attempt (or every failed
    /// task when no task is named).
    Retry,
    /// Answer a task that needs a human.
    Answer,
}

/// One command. Consumed and removed by the daemon; a bad one is reported
/// (moved to `rejected/` with an error file) and removed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlRecord {
    #[serde(default = "crate::default_schema_version")]
    pub schema_version: u32,
    pub command: ControlCommand,
    pub goal: Id,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<Id>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// For `answer`: the output, when approving.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    /// For `answer`: the error, when refusing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}
