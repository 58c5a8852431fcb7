//! workbusctl: the face of workbus. One module per command; every command
//! that only reads works with the daemon stopped.

mod cmd;
mod output;
mod root;
mod wait;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub use cmd::demo::DEMO_FILES;

/// workbusctl: submit goals to workbus and watch them run.
#[derive(Debug, Parser)]
#[command(name = "workbusctl", version, about, long_about = None)]
pub struct Cli {
    /// The bus folder [default: `root` of /etc/workbus/workbusd.toml, else /var/lib/workbus]
    #[arg(long, global = true, value_name = "DIR", env = "WORKBUS_ROOT")]
    pub root: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate a goal file and drop it into the inbox
    Submit {
        /// A goal file (.toml or .json)
        file: PathBuf,
        /// Show live progress; exit non-zero unless the goal succeeds
        #[arg(long)]
        wait: bool,
    },
    /// Show goals in flight and workers, or one goal
    Status {
        goal: Option<String>,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Show the workers: mode, capabilities, health, load
    Workers {
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Draw a goal's task graph
    Graph {
        goal: String,
        #[arg(long, value_enum, default_value = "dot")]
        format: cmd::graph::GraphFormat,
    },
    /// Print a task's worker output (every attempt)
    Logs { goal: String, task: String },
    /// Cancel a goal in flight
    Cancel {
        goal: String,
        /// Why, for the report
        #[arg(long)]
        reason: Option<String>,
    },
    /// Retry a failed task (or every failed task) of a goal in flight
    Retry { goal: String, task: Option<String> },
    /// Answer a task that waits for a person (`needs = ["human"]`)
    Answer {
        goal: String,
        task: String,
        /// The answer's output, as JSON (a bare word is taken as a string)
        #[arg(long, conflicts_with = "reject")]
        output: Option<String>,
        /// Refuse, with this reason (the task fails)
        #[arg(long)]
        reject: Option<String>,
    },
    /// Check a goal, fleet or workbusd.toml file and print the daemon's own errors
    Validate { file: PathBuf },
    /// Run the demo: a temporary bus, bundled workers, a release-notes goal
    Demo {
        /// Where to keep the demo's bus [default: a new temporary folder]
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// The repository the demo reads [default: the current folder]
        #[arg(long, value_name = "DIR")]
        repo: Option<PathBuf>,
    },
}

/// Entry point of the `workbusctl` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cmd::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("workbusctl: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// The clap command, for man pages.
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}
