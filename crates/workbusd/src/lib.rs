//! workbusd: the daemon that turns files on the bus into a running DAG.
//!
//! One event loop ([`daemon::Daemon::run`]) owns all state. The watcher,
//! signals, spawned processes and timers send [`event::Event`]s into one
//! channel; the loop turns them into engine inputs, and carries out the
//! effects the engine returns on the bus.

pub mod cli;
mod control;
pub mod daemon;
pub mod event;
mod fleet;
mod ingest;
mod lock;
pub mod logging;
mod pending;
mod recover;
mod scan;
mod spawn;
mod status;
mod syncer;
pub mod systemd;
pub mod watch;

use std::future::Future;
use std::path::PathBuf;

use anyhow::Context;
use workbus_proto::config::DaemonConfig;

pub use daemon::Daemon;

/// What the daemon runs with: the configuration, and where it came from.
#[derive(Clone, Debug)]
pub struct Options {
    pub config: DaemonConfig,
    /// The configuration file, if one was read (reloaded on SIGHUP).
    pub config_file: Option<PathBuf>,
    /// Test-only fault switch: wedge the event loop when a goal with this id
    /// arrives, so the systemd watchdog test can see a restart. Set through
    /// `WORKBUS_TEST_WEDGE_ON_GOAL`; never set in production.
    pub wedge_on_goal: Option<String>,
    /// Test-only fault switch: the fsync thread sleeps this long before
    /// each job, so that a test can watch what waits for an accepted goal
    /// to be durable. Set through `WORKBUS_TEST_SYNC_DELAY_MS`; never set
    /// in production.
    pub sync_delay: Option<std::time::Duration>,
    /// Test-only fault switch: while this file exists, making an accepted
    /// goal durable fails (as on a disk error), so that a test can watch
    /// the goal wait and be tried again. Set through
    /// `WORKBUS_TEST_FAIL_GOAL_SYNC`; never set in production.
    pub fail_goal_sync: Option<PathBuf>,
    /// Test-only fault switch: while this file exists, every commit of
    /// results written by the daemon fails (as on a disk error). Set
    /// through `WORKBUS_TEST_FAIL_RESULT_SYNC`; never set in production.
    pub fail_result_sync: Option<PathBuf>,
}

/// Entry point of the `workbusd` binary.
pub fn main() -> std::process::ExitCode {
    let opts = match cli::parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("workbusd: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    logging::init(opts.config.log, &opts.config.log_level);
    match run_blocking(opts, shutdown_never()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("workbusd: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// A future that never completes: the daemon stops on signals alone.
pub fn shutdown_never() -> impl Future<Output = ()> {
    std::future::pending()
}

/// Runs the daemon on a fresh single-threaded runtime until it stops (on
/// SIGTERM/SIGINT, or when `shutdown` completes).
pub fn run_blocking(opts: Options, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async move {
        let daemon = Daemon::start(opts).await?;
        daemon.run(shutdown).await
    })
}
