//! `cancel`, `retry`, `answer`: control records for the daemon.

use std::process::ExitCode;

use workbus_bus::{Bus, Folder};
use workbus_proto::control::{ControlCommand, ControlRecord};
use workbus_proto::{Id, SCHEMA_VERSION, Timestamp};

fn send(bus: &Bus, rec: ControlRecord) -> anyhow::Result<ExitCode> {
    let name = format!(
        "{}-{}-{:?}.json",
        Timestamp::now().millis(),
        std::process::id(),
        rec.command
    )
    .to_lowercase();
    let mut bytes = serde_json::to_vec_pretty(&rec)?;
    bytes.push(b'\n');
    workbus_bus::write_atomic(&bus.dir(Folder::Control), &name, &bytes, true)?;
    println!("sent: {:?} {} (control/{name})", rec.command, rec.goal);
    if !crate::root::daemon_running(bus) {
        println!("note: no workbusd is running on this bus; it acts on this when it starts");
    }
    Ok(ExitCode::SUCCESS)
}

fn id(s: &str) -> anyhow::Result<Id> {
    Id::new(s).map_err(anyhow::Error::msg)
}

fn record(command: ControlCommand, goal: Id) -> ControlRecord {
    ControlRecord {
        schema_version: SCHEMA_VERSION,
        command,
        goal,
        task: None,
        reason: None,
        output: None,
        error: None,
    }
}

pub fn cancel(bus: &Bus, goal: &str, reason: Option<String>) -> anyhow::Result<ExitCode> {
    let mut r = record(ControlCommand::Cancel, id(goal)?);
    r.reason = reason;
    send(bus, r)
}

pub fn retry(bus: &Bus, goal: &str, task: Option<&str>) -> anyhow::Result<ExitCode> {
    let mut r = record(ControlCommand::Retry, id(goal)?);
    r.task = task.map(id).transpose()?;
    send(bus, r)
}

pub fn answer(
    bus: &Bus,
    goal: &str,
    task: &str,
    output: Option<String>,
    reject: Option<String>,
) -> anyhow::Result<ExitCode> {
    let mut r = record(ControlCommand::Answer, id(goal)?);
    r.task = Some(id(task)?);
    r.error = reject;
    r.output = match (output, &r.error) {
        (Some(o), _) => Some(serde_json::from_str(&o).unwrap_or(serde_json::Value::String(o))),
        (None, None) => Some(serde_json::Value::String("approved".into())),
        (None, Some(_)) => None,
    };
    send(bus, r)
}
