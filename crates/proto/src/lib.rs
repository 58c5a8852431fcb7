//! Every byte that crosses a process boundary in workbus, defined once.
//!
//! Goals, task records, result records, worker heartbeats, goal reports, the
//! status snapshot, control records, `fleet.toml` and `workbusd.toml` are all
//! here as serde types. This crate does no I/O: it turns text into values and
//! values into text, and reports where (line, column) text went wrong.

pub mod config;
pub mod control;
pub mod fleet;
pub mod goal;
pub mod id;
pub mod names;
pub mod parse;
pub mod report;
pub mod result;
pub mod status;
pub mod task;
pub mod time;
pub mod worker;

pub use id::{Capability, Id};
pub use parse::{Format, ParseError};
pub use time::{HumanDuration, Timestamp};

/// The version written into every record this build produces. Readers accept
/// records without the field (treated as version 1) and refuse newer ones.
pub const SCHEMA_VERSION: u32 = 1;

pub(crate) fn default_schema_version() -> u32 {
    SCHEMA_VERSION
}

/// Refuses records written by a newer, incompatible workbus.
pub fn check_schema_version(v: u32) -> Result<(), String> {
    if v == 0 || v > SCHEMA_VERSION {
        Err(format!(
            "schema_version {v} is not supported (this build reads 1..={SCHEMA_VERSION})"
        ))
    } else {
        Ok(())
    }
}
