//! Result records: what a worker answers (`results/<goal>.<task>.<attempt>.json`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{Id, Timestamp};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResultStatus {
    Ok,
    Error,
}

/// A result record. Bus workers (resident, external) write every field but
/// `usage`; a spawned program may write only `status` and `output` or
/// `error`, and the daemon fills in the rest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResultRecord {
    #[serde(default = "crate::default_schema_version")]
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub goal: Option<Id>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<Id>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    pub status: ResultStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Timestamp>,
    /// Free-form numbers (tokens, cost), summed per goal in the report.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub usage: BTreeMap<String, f64>,
    /// Set only by the daemon on a result it writes itself for an attempt
    /// that was lost through no fault of the task (its claimant vanished with
    /// a daemon restart). Such a failure does not use up a retry.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub lost: bool,
}

impl ResultRecord {
    /// A failed result the daemon writes on a worker's behalf.
    pub fn error(message: impl Into<String>) -> Self {
        ResultRecord {
            schema_version: crate::SCHEMA_VERSION,
            goal: None,
            task: None,
            attempt: None,
            worker: None,
            status: ResultStatus::Error,
            output: None,
            error: Some(message.into()),
            started_at: None,
            finished_at: None,
            usage: BTreeMap::new(),
            lost: false,
        }
    }

    /// A successful result with `output`.
    pub fn ok(output: Value) -> Self {
        ResultRecord {
            status: ResultStatus::Ok,
            output: Some(output),
            error: None,
            ..Self::error("")
        }
    }
}
