//! The `workbusd` command line, and how it combines with `workbusd.toml`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Parser;
use workbus_proto::config::{DaemonConfig, LogMode, WatchMode};

use crate::Options;

/// The default configuration file.
pub const DEFAULT_CONFIG: &str = "/etc/workbus/workbusd.toml";

/// workbusd: run a fleet of AI-agent command-line programs as a DAG of
/// tasks, coordinated through a shared folder.
#[derive(Debug, Parser)]
#[command(name = "workbusd", version, about, long_about = None)]
pub struct Args {
    /// The configuration file [default: /etc/workbus/workbusd.toml, if it exists]
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The bus folder (overrides `root` of the configuration)
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// The fleet file (overrides `fleet` of the configuration)
    #[arg(long, value_name = "FILE")]
    pub fleet: Option<PathBuf>,
    /// How to watch the bus (overrides `watch`)
    #[arg(long, value_enum)]
    pub watch: Option<WatchArg>,
    /// Where logs go (overrides `log`)
    #[arg(long, value_enum)]
    pub log: Option<LogArg>,
    /// Check the configuration and fleet, print what would run, and exit
    #[arg(long)]
    pub check: bool,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum WatchArg {
    Auto,
    Notify,
    Poll,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum LogArg {
    Auto,
    Journald,
    Text,
    Json,
}

/// Parses the command line and loads the configuration.
pub fn parse() -> anyhow::Result<Options> {
    let args = Args::parse();
    let check = args.check;
    let opts = options(args)?;
    if check {
        let fleet = crate::fleet::load_fleet_file(&opts.config.fleet)?;
        println!(
            "configuration ok: root {}, fleet {} ({} workers)",
            opts.config.root.display(),
            opts.config.fleet.display(),
            fleet.worker.len()
        );
        std::process::exit(0);
    }
    Ok(opts)
}

/// Combines the arguments with the configuration file.
pub fn options(args: Args) -> anyhow::Result<Options> {
    let (mut config, config_file) = load_config(args.config.as_deref())?;
    if let Some(r) = args.root {
        config.root = absolute(&r)?;
    }
    if let Some(f) = args.fleet {
        config.fleet = absolute(&f)?;
    }
    if let Some(w) = args.watch {
        config.watch = match w {
            WatchArg::Auto => WatchMode::Auto,
            WatchArg::Notify => WatchMode::Notify,
            WatchArg::Poll => WatchMode::Poll,
        };
    }
    if let Some(l) = args.log {
        config.log = match l {
            LogArg::Auto => LogMode::Auto,
            LogArg::Journald => LogMode::Journald,
            LogArg::Text => LogMode::Text,
            LogArg::Json => LogMode::Json,
        };
    }
    config
        .check()
        .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
    Ok(Options {
        config,
        config_file,
        wedge_on_goal: std::env::var("WORKBUS_TEST_WEDGE_ON_GOAL")
            .ok()
            .filter(|s| !s.is_empty()),
        sync_delay: std::env::var("WORKBUS_TEST_SYNC_DELAY_MS")
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .map(std::time::Duration::from_millis),
        fail_goal_sync: std::env::var_os("WORKBUS_TEST_FAIL_GOAL_SYNC")
            .filter(|s| !s.is_empty())
            .map(PathBuf::from),
        fail_result_sync: std::env::var_os("WORKBUS_TEST_FAIL_RESULT_SYNC")
            .filter(|s| !s.is_empty())
            .map(PathBuf::from),
    })
}

/// Reads `path`, or the default file if it exists, or the defaults.
pub fn load_config(path: Option<&Path>) -> anyhow::Result<(DaemonConfig, Option<PathBuf>)> {
    let path = match path {
        Some(p) => Some(absolute(p)?),
        None => Some(PathBuf::from(DEFAULT_CONFIG)).filter(|p| p.exists()),
    };
    let Some(path) = path else {
        return Ok((DaemonConfig::default(), None));
    };
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let config = DaemonConfig::parse(&text, &path)?;
    Ok((config, Some(path)))
}

fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("resolving {}", p.display()))
}
