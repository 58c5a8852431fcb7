//! `workbusctl demo`: a whole run on a temporary bus with the bundled demo
//! workers (no network, no API key): gather what changed in a repository,
//! narrate it, build a page.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use workbus_bus::Bus;
use workbus_proto::config::{DaemonConfig, LogMode};
use workbus_proto::parse::Format;

use crate::cmd::submit::drop_into_inbox;
use crate::wait;

/// The demo's files, as shipped in `config/demo/`.
pub const DEMO_FILES: &[(&str, &str)] = &[
    (
        "goal.toml",
        include_str!("../../../../config/demo/goal.toml"),
    ),
    (
        "workers/gather.py",
        include_str!("../../../../config/demo/workers/gather.py"),
    ),
    (
        "workers/narrate.py",
        include_str!("../../../../config/demo/workers/narrate.py"),
    ),
    (
        "workers/build.py",
        include_str!("../../../../config/demo/workers/build.py"),
    ),
];

fn demo_file(name: &str) -> &'static str {
    DEMO_FILES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, t)| *t)
        .unwrap_or_default()
}

pub fn run(dir: Option<PathBuf>, repo: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let python = std::process::Command::new("python3")
        .arg("--version")
        .output();
    if !python.is_ok_and(|o| o.status.success()) {
        anyhow::bail!(
            "the demo workers are Python 3 scripts, and python3 is not on PATH (install it, e.g. apt-get install python3)"
        );
    }
    let dir = match dir {
        Some(d) => {
            std::fs::create_dir_all(&d)?;
            std::path::absolute(d)?
        }
        None => tempfile::Builder::new()
            .prefix("workbus-demo-")
            .tempdir()?
            .keep(),
    };
    let repo = std::path::absolute(repo.unwrap_or(std::env::current_dir()?))?;
    let out = dir.join("out");
    for (name, text) in DEMO_FILES {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap_or(&dir))?;
        std::fs::write(&path, text)?;
    }
    let fleet = demo_fleet(&dir);
    std::fs::write(dir.join("fleet.toml"), &fleet)?;
    let goal = demo_goal(&repo, &out)?;

    println!("workbus demo");
    println!("  bus:     {}", dir.join("bus").display());
    println!(
        "  fleet:   {} (gatherer: git, narrator: llm, builder: docs)",
        dir.join("fleet.toml").display()
    );
    println!("  reading: {}", repo.display());
    let config = DaemonConfig {
        root: dir.join("bus"),
        fleet: dir.join("fleet.toml"),
        log: LogMode::Text,
        log_level: "warn".into(),
        ..DaemonConfig::default()
    };
    workbusd::logging::init(config.log, &config.log_level);
    let bus = Bus::at(config.root.clone());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let opts = workbusd::Options {
        config,
        config_file: None,
        wedge_on_goal: None,
        sync_delay: None,
        fail_goal_sync: None,
        fail_result_sync: None,
    };
    let daemon = std::thread::spawn(move || {
        workbusd::run_blocking(opts, async {
            let _ = stop_rx.await;
        })
    });
    let t0 = Instant::now();
    while !bus.status_path().exists() {
        if daemon.is_finished() {
            return match daemon.join() {
                Ok(Err(e)) => Err(e.context("the demo daemon did not start")),
                _ => anyhow::bail!("the demo daemon did not start"),
            };
        }
        if t0.elapsed() > Duration::from_secs(20) {
            anyhow::bail!("the demo daemon did not become ready within 20 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let id = workbus_proto::Id::new("release-notes").map_err(anyhow::Error::msg)?;
    let (id, name) = drop_into_inbox(
        &bus,
        &id,
        "release-notes.toml",
        Format::Toml,
        goal.as_bytes(),
    )?;
    println!("submitted goal {id}; progress:");
    let code = wait::goal(&bus, &id, &name);
    let _ = stop_tx.send(());
    match daemon.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => eprintln!("workbusctl: the demo daemon: {e:#}"),
        Err(_) => eprintln!("workbusctl: the demo daemon panicked"),
    }
    let page = out.join("release-notes.html");
    if page.exists() {
        println!("the page the goal built: {}", page.display());
    }
    println!(
        "everything the run left (goal, task records, results, logs, report) is under {}",
        dir.join("bus").display()
    );
    code
}

/// The demo fleet, pointing at the scripts under `dir`.
pub fn demo_fleet(dir: &Path) -> String {
    let w = |name: &str, cap: &str, script: &str| {
        format!(
            "[[worker]]\nname = \"{name}\"\ncapabilities = [\"{cap}\"]\ncommand = [\"python3\", {:?}]\ntimeout = \"1m\"\n\n",
            dir.join("workers").join(script).display().to_string()
        )
    };
    format!(
        "# The demo fleet: three spawn-mode workers, one process per task.\n\n{}{}{}",
        w("gatherer", "git", "gather.py"),
        w("narrator", "llm", "narrate.py"),
        w("builder", "docs", "build.py")
    )
}

/// The demo goal with its input pointing at `repo` and `out`.
pub fn demo_goal(repo: &Path, out: &Path) -> anyhow::Result<String> {
    let mut goal: toml::Table = demo_file("goal.toml")
        .parse()
        .context("the bundled demo goal")?;
    let tasks = goal
        .get_mut("task")
        .and_then(|t| t.as_array_mut())
        .context("the demo goal has tasks")?;
    for t in tasks.iter_mut() {
        let Some(input) = t.get_mut("input").and_then(|i| i.as_table_mut()) else {
            continue;
        };
        if input.contains_key("repo") {
            input.insert("repo".into(), repo.display().to_string().into());
        }
        if input.contains_key("out") {
            input.insert("out".into(), out.display().to_string().into());
        }
    }
    Ok(toml::to_string(&goal)?)
}
