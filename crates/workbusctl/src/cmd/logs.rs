//! `workbusctl logs GOAL TASK`: each attempt's worker output.

use std::process::ExitCode;

use workbus_bus::Bus;
use workbus_proto::Id;
use workbus_proto::names::{ArchiveKind, AttemptKey};

pub fn run(bus: &Bus, goal: &str, task: &str) -> anyhow::Result<ExitCode> {
    let goal = Id::new(goal).map_err(anyhow::Error::msg)?;
    let task = Id::new(task).map_err(anyhow::Error::msg)?;
    let dir = bus.archive_dir(&goal);
    let mut logs: Vec<(u32, std::path::PathBuf)> = workbus_bus::list(&dir)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|n| match AttemptKey::parse_archive_name(&goal, &n) {
            Some((k, ArchiveKind::Log)) if k.task == task => Some((k.attempt, dir.join(n))),
            _ => None,
        })
        .collect();
    logs.sort();
    if logs.is_empty() {
        println!(
            "no logs for {goal}.{task} (spawned tasks log per attempt; resident workers log to archive/_workers/<worker>.log)"
        );
        return Ok(ExitCode::from(3));
    }
    for (attempt, path) in logs {
        println!("==> {goal}.{task} attempt {attempt} <==");
        print!("{}", String::from_utf8_lossy(&std::fs::read(&path)?));
    }
    Ok(ExitCode::SUCCESS)
}
