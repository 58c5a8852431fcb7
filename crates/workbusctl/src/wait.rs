//! Waiting for a goal: live progress from `status.json`, the end from
//! `reports/<goal>.json` (or `rejected/`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use notify::Watcher;
use workbus_bus::{Bus, Folder};
use workbus_proto::Id;
use workbus_proto::report::{Outcome, Report, TaskStateName};
use workbus_proto::status::Status;

use crate::cmd::EXIT_INVALID;
use crate::{output, root};

/// Waits for goal `id` (dropped as `inbox/<name>`), showing progress.
/// Exits 0 only if it succeeded.
pub fn goal(bus: &Bus, id: &Id, name: &str) -> anyhow::Result<ExitCode> {
    let (tx, rx) = mpsc::channel();
    // inotify makes the wait prompt; a short poll keeps it correct where
    // inotify is blind (NFS).
    // Files appearing (created or renamed in), not opens: reading
    // status.json here must not wake this loop again.
    let config = notify::Config::default().with_event_kinds(
        notify::EventKindMask::CREATE
            | notify::EventKindMask::MODIFY_NAME
            | notify::EventKindMask::ACCESS_CLOSE,
    );
    let _watcher = notify::RecommendedWatcher::new(
        move |_| {
            let _ = tx.send(());
        },
        config,
    )
    .and_then(|mut w| {
        for d in [
            bus.root().to_path_buf(),
            bus.dir(Folder::Reports),
            bus.dir(Folder::Rejected),
        ] {
            w.watch(&d, notify::RecursiveMode::NonRecursive)?;
        }
        Ok(w)
    })
    .ok();
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let bar = if tty {
        let b = ProgressBar::new(0);
        b.set_style(
            ProgressStyle::with_template("{spinner} {prefix} [{bar:30}] {pos}/{len} tasks {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        b.set_prefix(id.to_string());
        b.enable_steady_tick(Duration::from_millis(120));
        Some(b)
    } else {
        None
    };
    let started = Instant::now();
    let report_path = bus.report_path(id);
    let rejected: PathBuf = bus.path(Folder::Rejected, &format!("{name}.error.json"));
    let mut last_line = String::new();
    let mut warned = false;
    loop {
        if let Ok(text) = std::fs::read_to_string(&report_path)
            && let Ok(report) = serde_json::from_str::<Report>(&text)
        {
            if let Some(b) = &bar {
                b.finish_and_clear();
            }
            output::print_report(&report);
            return Ok(if report.outcome == Outcome::Succeeded {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            });
        }
        if let Ok(text) = std::fs::read_to_string(&rejected) {
            if let Some(b) = &bar {
                b.finish_and_clear();
            }
            let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            eprintln!(
                "goal rejected: {}",
                v.get("message")
                    .and_then(|m| m.as_str())
                    .unwrap_or(text.as_str())
            );
            return Ok(ExitCode::from(EXIT_INVALID));
        }
        let progress = read_status(bus).and_then(|s| s.goals.into_iter().find(|g| &g.id == id));
        let line = match &progress {
            Some(g) => {
                let running: Vec<&str> = g
                    .tasks
                    .iter()
                    .filter(|(_, t)| t.state == TaskStateName::Running)
                    .map(|(n, _)| n.as_str())
                    .collect();
                let mut msg = format!("{}/{} tasks done", g.counts.ended(), g.counts.total());
                if !running.is_empty() {
                    msg.push_str(&format!(", running: {}", running.join(", ")));
                }
                if g.counts.failed + g.counts.skipped > 0 {
                    msg.push_str(&format!(
                        " ({} failed, {} skipped)",
                        g.counts.failed, g.counts.skipped
                    ));
                }
                if let Some(b) = &bar {
                    b.set_length(g.counts.total() as u64);
                    b.set_position(g.counts.ended() as u64);
                    b.set_message(if running.is_empty() {
                        String::new()
                    } else {
                        format!("running: {}", running.join(", "))
                    });
                }
                msg
            }
            None if bus.goal_path(id).exists() => "accepted".into(),
            None => "waiting for the daemon to pick it up".into(),
        };
        if bar.is_none() && line != last_line {
            eprintln!("[{:>6.1}s] {id}: {line}", started.elapsed().as_secs_f64());
            last_line = line;
        }
        if !warned && started.elapsed() > Duration::from_secs(3) && !root::daemon_running(bus) {
            let msg = format!(
                "no workbusd is running on {} (its lock is free); still waiting",
                bus.root().display()
            );
            match &bar {
                Some(b) => b.println(msg),
                None => eprintln!("{msg}"),
            }
            warned = true;
        }
        let _ = rx.recv_timeout(Duration::from_millis(250));
        while rx.try_recv().is_ok() {}
    }
}

pub fn read_status(bus: &Bus) -> Option<Status> {
    let text = std::fs::read_to_string(bus.status_path()).ok()?;
    serde_json::from_str(&text).ok()
}
