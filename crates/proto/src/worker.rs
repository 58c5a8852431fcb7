//! Worker advertisements and heartbeats (`workers/<worker>.json`).

use serde::{Deserialize, Serialize};

use crate::{Capability, Id, Timestamp};

/// A worker's advertisement, renewed as its heartbeat. The daemon routes
/// to a bus worker while `last_seen` is fresher than `lease_timeout`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerAd {
    #[serde(default = "crate::default_schema_version")]
    pub schema_version: u32,
    pub name: Id,
    #[serde(default)]
    pub host: String,
    #[serde(default)]
    pub pid: u32,
    pub capabilities: Vec<Capability>,
    #[serde(default = "one")]
    pub concurrency: u32,
    pub last_seen: Timestamp,
    /// Tasks it is working on now, if it says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    /// A worker that is shutting down writes `stopping = true` last, so its
    /// capabilities are withdrawn at once rather than after the lease.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stopping: bool,
}

fn one() -> u32 {
    1
}
