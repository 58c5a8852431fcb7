//! `control/`: commands from `workbusctl` (cancel, retry, answer). Each is
//! consumed and removed; a bad one is moved to `rejected/` with the reason.

use workbus_bus::{Folder, ReadError, read_json};
use workbus_engine::Input;
use workbus_proto::control::{ControlCommand, ControlRecord};
use workbus_proto::result::ResultRecord;

use crate::daemon::Daemon;

const MAX_CONTROL_BYTES: u64 = 1 << 20;

impl Daemon {
    pub(crate) fn scan_control(&mut self) -> bool {
        let Some(mut names) = self.list_folder(Folder::Control) else {
            return false;
        };
        names.sort();
        let any = !names.is_empty();
        for name in names {
            if !self.settled(Folder::Control, &name) {
                continue;
            }
            let path = self.bus.path(Folder::Control, &name);
            if !name.ends_with(".json") {
                self.reject_file(
                    Folder::Control,
                    &name,
                    None,
                    "not a control record: control records are named *.json".into(),
                );
                continue;
            }
            let rec = match read_json::<ControlRecord>(&path, MAX_CONTROL_BYTES) {
                Ok(r) => r,
                Err(ReadError::Vanished) => continue,
                Err(ReadError::Parse(e)) => {
                    let ge = workbus_engine::GoalError {
                        line: e.line,
                        column: e.column,
                        message: e.message.clone(),
                    };
                    self.reject_file(
                        Folder::Control,
                        &name,
                        Some(&ge),
                        format!("not a control record: {}", e.message),
                    );
                    continue;
                }
                Err(e) => {
                    self.reject_file(Folder::Control, &name, None, e.to_string());
                    continue;
                }
            };
            let input = match self.control_input(rec) {
                Ok(i) => i,
                Err(msg) => {
                    self.reject_file(Folder::Control, &name, None, msg);
                    continue;
                }
            };
            tracing::info!("control/{name}: {input:?}", input = describe(&input));
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::error!(path = %path.display(), "cannot remove a consumed control record: {e}");
            }
            self.feed(input);
        }
        any
    }

    fn control_input(&self, rec: ControlRecord) -> Result<Input, String> {
        workbus_proto::check_schema_version(rec.schema_version)?;
        Ok(match rec.command {
            ControlCommand::Cancel => Input::Cancel {
                reason: rec
                    .reason
                    .unwrap_or_else(|| "cancelled with workbusctl cancel".into()),
                goal: rec.goal,
            },
            ControlCommand::Retry => Input::Retry {
                goal: rec.goal,
                task: rec.task,
            },
            ControlCommand::Answer => {
                let task = rec.task.ok_or("answer needs a task")?;
                let result = match (rec.output, rec.error) {
                    (Some(_), Some(_)) => {
                        return Err("answer takes an output or an error, not both".into());
                    }
                    (_, Some(e)) => ResultRecord::error(e),
                    (o, None) => ResultRecord::ok(o.unwrap_or(serde_json::Value::Null)),
                };
                Input::Answer {
                    goal: rec.goal,
                    task,
                    result,
                }
            }
        })
    }
}

fn describe(i: &Input) -> String {
    match i {
        Input::Cancel { goal, .. } => format!("cancel {goal}"),
        Input::Retry { goal, task } => format!(
            "retry {goal} {}",
            task.as_ref().map(|t| t.as_str()).unwrap_or("(all failed)")
        ),
        Input::Answer { goal, task, .. } => format!("answer {goal} {task}"),
        _ => String::new(),
    }
}
