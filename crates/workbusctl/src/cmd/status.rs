//! `workbusctl status [GOAL] [--json]`: read-only, works with the daemon stopped.

use std::process::ExitCode;

use workbus_bus::{Bus, Folder};
use workbus_proto::Id;
use workbus_proto::goal::Goal;
use workbus_proto::report::Report;

use crate::wait::read_status;
use crate::{output, root};

pub fn run(bus: &Bus, goal: Option<&str>, json: bool) -> anyhow::Result<ExitCode> {
    match goal {
        None => overall(bus, json),
        Some(g) => one(bus, &Id::new(g).map_err(anyhow::Error::msg)?, json),
    }
}

fn overall(bus: &Bus, json: bool) -> anyhow::Result<ExitCode> {
    let running = root::daemon_running(bus);
    let Some(status) = read_status(bus) else {
        if json {
            println!("null");
        } else {
            println!(
                "no status on {} yet: workbusd has not run there",
                bus.root().display()
            );
        }
        return Ok(ExitCode::from(if running { 0 } else { 3 }));
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(ExitCode::SUCCESS);
    }
    if running {
        println!(
            "workbusd pid {} running since {}, watching by {}",
            status.daemon.pid, status.daemon.started_at, status.daemon.watch
        );
    } else {
        println!(
            "workbusd is not running (status as of {})",
            status.updated_at
        );
    }
    let t = status.totals;
    println!(
        "{} goal(s) in flight: {} waiting, {} queued, {} running, {} succeeded, {} failed, {} skipped",
        status.goals.len(),
        t.waiting,
        t.queued,
        t.running,
        t.succeeded,
        t.failed,
        t.skipped
    );
    for g in &status.goals {
        println!(
            "  {:<24} {}/{} done, {} running",
            g.id,
            g.counts.ended(),
            g.counts.total(),
            g.counts.running
        );
        if let Some(h) = &g.held {
            println!("  {:<24} held: {h}", "");
        }
    }
    let healthy = status.workers.iter().filter(|w| w.healthy).count();
    println!(
        "{healthy}/{} worker(s) healthy (workbusctl workers for more)",
        status.workers.len()
    );
    let inbox = workbus_bus::list(&bus.dir(Folder::Inbox))
        .map(|v| v.len())
        .unwrap_or(0);
    if inbox > 0 {
        println!("{inbox} file(s) waiting in inbox/");
    }
    Ok(ExitCode::SUCCESS)
}

fn one(bus: &Bus, id: &Id, json: bool) -> anyhow::Result<ExitCode> {
    if let Ok(text) = std::fs::read_to_string(bus.report_path(id)) {
        let report: Report = serde_json::from_str(&text)?;
        if json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            output::print_report(&report);
        }
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(g) = read_status(bus).and_then(|s| s.goals.into_iter().find(|g| &g.id == id)) {
        if json {
            println!("{}", serde_json::to_string_pretty(&g)?);
            return Ok(ExitCode::SUCCESS);
        }
        println!(
            "goal {id}: in flight, {}/{} tasks done",
            g.counts.ended(),
            g.counts.total()
        );
        if let Some(h) = &g.held {
            println!("  held: {h}");
        }
        for (task, t) in &g.tasks {
            let mut line = format!("  {task:<20} {:<9} attempt {}", t.state.as_str(), t.attempt);
            if let Some(w) = &t.worker {
                line.push_str(&format!(" on {w}"));
            }
            if let Some(r) = &t.reason {
                line.push_str(&format!(": {r}"));
            }
            println!("{line}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    if let Ok(text) = std::fs::read_to_string(bus.goal_path(id)) {
        let goal: Goal = serde_json::from_str(&text)?;
        println!(
            "goal {id}: accepted at {} with {} tasks, not started yet",
            goal.accepted_at,
            goal.tasks.len()
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!("no goal {id} on {}", bus.root().display());
    Ok(ExitCode::from(3))
}
