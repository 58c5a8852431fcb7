//! `fleet.toml`: the workers the daemon supervises (SPEC §6).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::parse::{self, ParseError};
use crate::{Capability, HumanDuration, Id};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fleet {
    #[serde(default)]
    pub worker: Vec<WorkerSpec>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerMode {
    /// One process per task; the daemon claims on its behalf.
    #[default]
    Spawn,
    /// A long-running bus-aware program that claims tasks itself.
    Resident,
}

impl fmt::Display for WorkerMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            WorkerMode::Spawn => "spawn",
            WorkerMode::Resident => "resident",
        })
    }
}

/// One `[[worker]]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSpec {
    pub name: Id,
    pub capabilities: Vec<Capability>,
    #[serde(default)]
    pub mode: WorkerMode,
    /// argv, never a shell. In spawn mode each argument is a template with
    /// `prompt`, `task_file`, `result_file`, `input`, `goal`, `task`, `attempt`.
    pub command: Vec<String>,
    /// Tasks at once.
    #[serde(default = "one")]
    pub concurrency: u32,
    /// Default per-attempt timeout for its tasks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<HumanDuration>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<PathBuf>,
    /// Run as this user (the daemon must be root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Run with this primary group (default: the user's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

fn one() -> u32 {
    1
}

/// A fleet file that cannot be used, with where and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct FleetError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// The key at fault, e.g. `worker[1].concurrency`, when known.
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for FleetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
            if let Some(c) = self.column {
                write!(f, ":{c}")?;
            }
        }
        if let Some(k) = &self.key {
            write!(f, ": {k}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl Fleet {
    /// Parses and checks a fleet file's text. `file` is only used in errors.
    pub fn parse(text: &str, file: &Path) -> Result<Fleet, FleetError> {
        let fleet: Fleet = parse::from_toml(text).map_err(|e: ParseError| {
            let key = e.line.and_then(|l| key_on_line(text, l, &e.message));
            FleetError {
                file: file.to_path_buf(),
                line: e.line,
                column: e.column,
                key,
                message: e.message,
            }
        })?;
        fleet.check(text, file)?;
        Ok(fleet)
    }

    fn check(&self, text: &str, file: &Path) -> Result<(), FleetError> {
        let err = |i: usize, key: &str, message: String| {
            let (line, column) = match locate_key(text, "worker", i, key) {
                Some((l, c)) => (Some(l), Some(c)),
                None => (None, None),
            };
            FleetError {
                file: file.to_path_buf(),
                line,
                column,
                key: Some(format!("worker[{i}].{key}")),
                message,
            }
        };
        let mut names = BTreeSet::new();
        for (i, w) in self.worker.iter().enumerate() {
            if !names.insert(w.name.as_str()) {
                return Err(err(
                    i,
                    "name",
                    format!("duplicate worker name {:?}", w.name.as_str()),
                ));
            }
            if w.command.is_empty() || w.command[0].trim().is_empty() {
                return Err(err(
                    i,
                    "command",
                    "command must name a program (an argv list, e.g. [\"/usr/bin/claude\", \"-p\", \"{{ prompt }}\"])".into(),
                ));
            }
            if w.command.iter().any(|a| a.contains('\0')) {
                return Err(err(i, "command", "an argument contains a NUL byte".into()));
            }
            if w.capabilities.is_empty() {
                return Err(err(
                    i,
                    "capabilities",
                    "a worker must offer at least one capability".into(),
                ));
            }
            if w.concurrency == 0 || w.concurrency > 1024 {
                return Err(err(
                    i,
                    "concurrency",
                    format!("concurrency must be 1..=1024, not {}", w.concurrency),
                ));
            }
            if let Some(t) = w.timeout
                && t.0.is_zero()
            {
                return Err(err(i, "timeout", "timeout must be more than zero".into()));
            }
            if let Some(cwd) = &w.cwd
                && !cwd.is_absolute()
            {
                return Err(err(
                    i,
                    "cwd",
                    format!(
                        "cwd must be an absolute path, not {:?}",
                        cwd.display().to_string()
                    ),
                ));
            }
            for k in w.env.keys() {
                if k.is_empty() || k.contains('=') || k.contains('\0') {
                    return Err(err(
                        i,
                        "env",
                        format!("invalid environment variable name {k:?}"),
                    ));
                }
            }
            if w.group.is_some() && w.user.is_none() {
                return Err(err(
                    i,
                    "group",
                    "group is only used together with user".into(),
                ));
            }
        }
        Ok(())
    }
}

/// The key that an error message quotes (serde quotes it in backticks), or
/// the key set on that line.
fn key_on_line(text: &str, line: usize, message: &str) -> Option<String> {
    if let Some(start) = message.find('`') {
        let rest = &message[start + 1..];
        if let Some(end) = rest.find('`') {
            return Some(rest[..end].to_string());
        }
    }
    let l = text.lines().nth(line.checked_sub(1)?)?;
    let (k, _) = l.split_once('=')?;
    let k = k.trim();
    (!k.is_empty() && !k.starts_with('[')).then(|| k.to_string())
}

/// Where `key = ...` is set in the `index`-th `[[table]]` of `text`
/// (1-based line and column); the table header when the key is not there.
pub fn locate_key(text: &str, table: &str, index: usize, key: &str) -> Option<(usize, usize)> {
    let header = format!("[[{table}]]");
    let mut seen = 0usize;
    let mut in_table = false;
    let mut header_line = None;
    for (n, line) in text.lines().enumerate() {
        let t = line.trim_start();
        if t.starts_with('[') {
            if t.starts_with(&header) {
                in_table = seen == index;
                if in_table {
                    header_line = Some(n + 1);
                }
                seen += 1;
            } else if !t.starts_with("[[") {
                // A sub-table such as [worker.env] stays inside the worker.
            } else {
                in_table = false;
            }
            continue;
        }
        if in_table
            && let Some((k, _)) = t.split_once('=')
            && k.trim() == key
        {
            return Some((n + 1, line.len() - t.len() + 1));
        }
    }
    header_line.map(|l| (l, 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Fleet, FleetError> {
        Fleet::parse(text, Path::new("fleet.toml"))
    }

    #[test]
    fn a_good_fleet() {
        let f = parse(
            r#"
[[worker]]
name = "narrator"
capabilities = ["llm"]
command = ["claude", "-p", "{{ prompt }}"]
concurrency = 2
timeout = "10m"
env = { NO_COLOR = "1" }
"#,
        )
        .unwrap();
        assert_eq!(f.worker[0].concurrency, 2);
        assert_eq!(f.worker[0].mode, WorkerMode::Spawn);
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let e = parse("[[worker]]\nname = \"a\"\ncapabilities = [\"x\"]\ncomand = [\"x\"]\n")
            .unwrap_err();
        assert_eq!(e.line, Some(4));
        assert_eq!(e.key.as_deref(), Some("comand"));
        assert!(e.to_string().starts_with("fleet.toml:4:"), "{e}");

        let e = parse(
            "[[worker]]\nname = \"a\"\ncapabilities = [\"x\"]\ncommand = [\"x\"]\n\n[[worker]]\nname = \"b\"\ncapabilities = [\"x\"]\ncommand = [\"x\"]\nconcurrency = 0\n",
        )
        .unwrap_err();
        assert_eq!(e.line, Some(10));
        assert_eq!(e.key.as_deref(), Some("worker[1].concurrency"));

        let e = parse(
            "[[worker]]\nname = \"a\"\ncapabilities = [\"x\"]\ncommand = [\"x\"]\n[[worker]]\nname = \"a\"\ncapabilities = [\"x\"]\ncommand = [\"y\"]\n",
        )
        .unwrap_err();
        assert!(e.message.contains("duplicate worker name"), "{e}");
        assert_eq!(e.line, Some(6));

        let e = parse("[[worker]]\nname = \"a b\"\ncapabilities = [\"x\"]\ncommand = [\"x\"]\n")
            .unwrap_err();
        assert_eq!(e.line, Some(2));
        assert!(e.message.contains("contains ' '"), "{e}");

        let e =
            parse("[[worker]]\nname = \"a\"\ncapabilities = [\"x\"]\ncommand = []\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("worker[0].command"));
    }
}
