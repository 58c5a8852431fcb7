//! One module per command.

pub mod control;
pub mod demo;
pub mod graph;
pub mod logs;
pub mod status;
pub mod submit;
pub mod validate;
pub mod workers;

use std::process::ExitCode;

use crate::{Cli, Command, root};

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let bus = || root::resolve(cli.root.as_deref());
    match cli.command {
        Command::Submit { file, wait } => submit::run(&bus()?, &file, wait),
        Command::Status { goal, json } => status::run(&bus()?, goal.as_deref(), json),
        Command::Workers { json } => workers::run(&bus()?, json),
        Command::Graph { goal, format } => graph::run(&bus()?, &goal, format),
        Command::Logs { goal, task } => logs::run(&bus()?, &goal, &task),
        Command::Cancel { goal, reason } => control::cancel(&bus()?, &goal, reason),
        Command::Retry { goal, task } => control::retry(&bus()?, &goal, task.as_deref()),
        Command::Answer {
            goal,
            task,
            output,
            reject,
        } => control::answer(&bus()?, &goal, &task, output, reject),
        Command::Validate { file } => validate::run(&file),
        Command::Demo { dir, repo } => demo::run(dir, repo),
    }
}

/// Exit code for input that was refused (a bad goal, a rejected file).
pub const EXIT_INVALID: u8 = 2;
