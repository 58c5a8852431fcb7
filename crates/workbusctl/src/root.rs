//! Which bus a command works on.

use std::path::Path;

use workbus_bus::Bus;

/// `--root`, else the `root` of `/etc/workbus/workbusd.toml`, else the default.
pub fn resolve(root: Option<&Path>) -> anyhow::Result<Bus> {
    if let Some(r) = root {
        return Ok(Bus::at(std::path::absolute(r)?));
    }
    let (cfg, _) = workbusd::cli::load_config(None)?;
    Ok(Bus::at(cfg.root))
}

/// Whether a daemon holds the bus's lock right now.
pub fn daemon_running(bus: &Bus) -> bool {
    let Ok(f) = std::fs::File::open(bus.lock_path()) else {
        return false;
    };
    match nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockSharedNonblock) {
        Ok(_) => false,
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => true,
        Err(_) => false,
    }
}

/// The daemon's limits, for validating the way it will.
pub fn limits() -> workbus_engine::Limits {
    let cfg = workbusd::cli::load_config(None)
        .map(|(c, _)| c)
        .unwrap_or_default();
    workbus_engine::Limits {
        max_goal_bytes: cfg.max_goal_bytes,
        max_tasks_per_goal: cfg.max_tasks_per_goal,
    }
}
