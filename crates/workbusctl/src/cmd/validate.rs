//! `workbusctl validate FILE`: a goal, a fleet or a workbusd.toml, checked by
//! the daemon's own code, with the daemon's own words.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use workbus_proto::config::DaemonConfig;
use workbus_proto::fleet::Fleet;
use workbus_proto::parse::Format;

use crate::cmd::EXIT_INVALID;
use crate::root;

#[derive(Debug, PartialEq, Eq)]
enum Kind {
    Goal,
    Fleet,
    Config,
}

fn kind_of(path: &Path, text: &str) -> Kind {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if name.starts_with("workbusd") {
        return Kind::Config;
    }
    if name.starts_with("fleet") {
        return Kind::Fleet;
    }
    if Format::from_path(path) == Some(Format::Toml)
        && let Ok(t) = text.parse::<toml::Table>()
    {
        if t.contains_key("worker") && !t.contains_key("task") {
            return Kind::Fleet;
        }
        let cfg_keys = [
            "root",
            "fleet",
            "watch",
            "poll_min",
            "lease_timeout",
            "fsync",
        ];
        if !t.contains_key("task")
            && !t.contains_key("plan")
            && t.keys().any(|k| cfg_keys.contains(&k.as_str()))
        {
            return Kind::Config;
        }
    }
    Kind::Goal
}

pub fn run(file: &Path) -> anyhow::Result<ExitCode> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let text = String::from_utf8_lossy(&bytes);
    match kind_of(file, &text) {
        Kind::Fleet => match Fleet::parse(&text, file) {
            Ok(f) => {
                println!(
                    "{}: a valid fleet of {} worker(s)",
                    file.display(),
                    f.worker.len()
                );
                for w in f.worker {
                    let caps: Vec<&str> = w.capabilities.iter().map(|c| c.as_str()).collect();
                    println!(
                        "  {} ({}, concurrency {}): {}",
                        w.name,
                        w.mode,
                        w.concurrency,
                        caps.join(", ")
                    );
                }
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("{e}");
                Ok(ExitCode::from(EXIT_INVALID))
            }
        },
        Kind::Config => match DaemonConfig::parse(&text, file) {
            Ok(_) => {
                println!("{}: a valid workbusd configuration", file.display());
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("{e}");
                Ok(ExitCode::from(EXIT_INVALID))
            }
        },
        Kind::Goal => {
            let Some(format) = Format::from_path(file) else {
                eprintln!("{}: goal files are named *.toml or *.json", file.display());
                return Ok(ExitCode::from(EXIT_INVALID));
            };
            let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("goal");
            match workbus_engine::validate_goal(
                &bytes,
                format,
                name,
                &root::limits(),
                workbus_proto::Timestamp::now(),
            ) {
                Ok(g) => {
                    println!(
                        "{}: a valid goal {:?} with {} task(s)",
                        file.display(),
                        g.id.as_str(),
                        g.tasks.len()
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("{}: {e}", file.display());
                    Ok(ExitCode::from(EXIT_INVALID))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        assert_eq!(
            kind_of(Path::new("x.toml"), "[[worker]]\nname='a'\n"),
            Kind::Fleet
        );
        assert_eq!(
            kind_of(Path::new("x.toml"), "[[task]]\nid='a'\n"),
            Kind::Goal
        );
        assert_eq!(
            kind_of(Path::new("x.toml"), "watch = 'poll'\n"),
            Kind::Config
        );
        assert_eq!(kind_of(Path::new("workbusd.toml"), ""), Kind::Config);
        assert_eq!(kind_of(Path::new("g.json"), "{}"), Kind::Goal);
    }
}
