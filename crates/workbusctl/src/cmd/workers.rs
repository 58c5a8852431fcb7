//! `workbusctl workers [--json]`.

use std::process::ExitCode;

use workbus_bus::Bus;

use crate::wait::read_status;

pub fn run(bus: &Bus, json: bool) -> anyhow::Result<ExitCode> {
    let workers = read_status(bus).map(|s| s.workers).unwrap_or_default();
    if json {
        println!("{}", serde_json::to_string_pretty(&workers)?);
        return Ok(ExitCode::SUCCESS);
    }
    if workers.is_empty() {
        println!("no workers known on {}", bus.root().display());
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<16} {:<9} {:<8} {:>9} {:>8}  capabilities / last error",
        "worker", "mode", "health", "running", "restarts"
    );
    for w in workers {
        let health = if w.draining {
            "draining"
        } else if w.healthy {
            "healthy"
        } else {
            "DOWN"
        };
        let caps: Vec<&str> = w.capabilities.iter().map(|c| c.as_str()).collect();
        println!(
            "{:<16} {:<9} {:<8} {:>9} {:>8}  {}",
            w.name,
            w.mode,
            health,
            format!("{}/{}", w.running, w.capacity),
            w.restarts,
            caps.join(", ")
        );
        if let Some(h) = &w.health {
            println!("{:<16} {h}", "");
        } else if let Some(e) = &w.last_error {
            println!("{:<16} last error: {e}", "");
        }
    }
    Ok(ExitCode::SUCCESS)
}
