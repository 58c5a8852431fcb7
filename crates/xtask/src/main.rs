//! Project chores that are not part of the product.
//!
//! `cargo run -p xtask -- man DIR` writes the man pages, generated from the
//! command-line definitions so that they cannot drift from `--help`:
//! `workbusd.8`, `workbusctl.1` and one `workbusctl-COMMAND.1` per command.
//! `packaging/build-deb.sh` puts them in the .deb.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{CommandFactory, Parser};
use clap_mangen::Man;
use clap_mangen::roff::{Inline, Roff, bold, italic, roman};

#[derive(Debug, Parser)]
#[command(name = "xtask", about = "Project chores (cargo run -p xtask -- ...)")]
enum Task {
    /// Write the man pages into DIR (created if missing)
    Man {
        #[arg(default_value = "target/man")]
        dir: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    match Task::parse() {
        Task::Man { dir } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            for path in man_pages(&dir)? {
                println!("{}", path.display());
            }
            Ok(())
        }
    }
}

/// Writes every page into `dir`; returns their paths.
fn man_pages(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut written = vec![write_page(
        dir,
        "workbusd.8",
        workbusd_page(workbusd::cli::Args::command())?,
    )?];
    let mut ctl = workbusctl::command().disable_help_subcommand(true);
    ctl.build();
    let subcommands: Vec<clap::Command> = ctl
        .get_subcommands()
        .filter(|s| !s.is_hide_set())
        .cloned()
        .collect();
    written.push(write_page(
        dir,
        "workbusctl.1",
        workbusctl_page(ctl.clone())?,
    )?);
    for sub in subcommands {
        let name = format!("workbusctl-{}", sub.get_name());
        let page = subcommand_page(sub)?;
        written.push(write_page(dir, &format!("{name}.1"), page)?);
    }
    Ok(written)
}

fn write_page(dir: &Path, name: &str, text: Vec<u8>) -> anyhow::Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// "workbusd: run a fleet..." → "run a fleet...": the NAME line already
/// starts with the command's name.
fn plain_about(cmd: clap::Command) -> clap::Command {
    let name = cmd.get_name().to_string();
    let about = cmd.get_about().map(|a| a.to_string()).unwrap_or_default();
    let trimmed = about
        .strip_prefix(&format!("{name}: "))
        .unwrap_or(&about)
        .trim_end_matches('.');
    // Man pages start the NAME line's text in lower case ("The x" → "the x").
    let mut chars = trimmed.chars();
    let lowered = match (chars.next(), chars.clone().next()) {
        (Some(first), Some(second)) if first.is_uppercase() && second.is_lowercase() => {
            first.to_lowercase().chain(chars).collect()
        }
        _ => trimmed.to_string(),
    };
    cmd.about(lowered)
}

/// A section of paragraphs.
fn section(roff: &mut Roff, title: &str, paragraphs: &[&[Inline]]) {
    roff.control("SH", [title]);
    for (i, p) in paragraphs.iter().enumerate() {
        if i > 0 {
            roff.control("PP", []);
        }
        roff.text(p.to_vec());
    }
}

/// A section of tagged paragraphs: (term, text).
fn tagged(roff: &mut Roff, title: &str, items: &[(Vec<Inline>, &str)]) {
    roff.control("SH", [title]);
    for (term, text) in items {
        roff.control("TP", []);
        roff.text(term.clone());
        roff.text([roman(*text)]);
    }
}

/// Example commands, each with a line saying what it does.
fn examples(roff: &mut Roff, items: &[(&str, &str)]) {
    roff.control("SH", ["EXAMPLES"]);
    for (what, cmd) in items {
        roff.control("PP", []);
        roff.text([roman(*what)]);
        roff.control("RS", ["4"]);
        roff.control("EX", []);
        roff.text([roman(*cmd)]);
        roff.control("EE", []);
        roff.control("RE", []);
    }
}

fn render(
    man: &Man,
    custom: impl FnOnce(&Man, &mut Vec<u8>) -> anyhow::Result<()>,
) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    custom(man, &mut out)?;
    Ok(out)
}

fn workbusd_page(cmd: clap::Command) -> anyhow::Result<Vec<u8>> {
    let man = Man::new(plain_about(cmd))
        .section("8")
        .manual("System Manager's Manual")
        .source(format!("workbus {}", env!("CARGO_PKG_VERSION")));
    render(&man, |man, out| {
        let mut r = Roff::default();
        section(
            &mut r,
            "DESCRIPTION",
            &[
                &[
                    bold("workbusd"),
                    roman(
                        " orchestrates a fleet of command-line agents (LLM CLIs, scripts, build tools) through a folder, the ",
                    ),
                    italic("bus"),
                    roman(" (default "),
                    bold("/var/lib/workbus"),
                    roman("). A goal file dropped into "),
                    bold("inbox/"),
                    roman(
                        " is validated and turned into a DAG of tasks; every task whose dependencies are done is published in ",
                    ),
                    bold("tasks/"),
                    roman(
                        ", tagged with the capabilities it needs; a worker offering them claims it, does the work and writes a result; when every task has ended the daemon writes ",
                    ),
                    bold("reports/"),
                    italic("GOAL"),
                    bold(".json"),
                    roman(
                        ". Every record is written atomically and durably, so the files are the state: the daemon may be killed at any moment and recovers everything when it starts again.",
                    ),
                ],
                &[
                    roman("The workers it runs itself are listed in "),
                    bold("/etc/workbus/fleet.toml"),
                    roman("; its settings are in "),
                    bold("/etc/workbus/workbusd.toml"),
                    roman(
                        ", where every key has a default. Both are reread on SIGHUP, and the fleet file is also watched, so a saved edit applies without a restart. An invalid edit is logged and the old fleet stays.",
                    ),
                ],
                &[
                    roman("Installed from the Debian package, it runs as the systemd service "),
                    bold("workbusd.service"),
                    roman(" (Type=notify, with a watchdog) as the system user "),
                    bold("workbus"),
                    roman(". Members of the "),
                    bold("workbus"),
                    roman(" group may submit goals, with "),
                    bold("workbusctl"),
                    roman(
                        "(1) or by dropping a file into the inbox (write it under a name starting with a dot and ending in ",
                    ),
                    bold(".tmp"),
                    roman(", then rename it). Workers named with "),
                    bold("user ="),
                    roman(" in the fleet need the daemon to run as root: see "),
                    bold("/usr/share/workbus/systemd/run-as-root.conf"),
                    roman("."),
                ],
            ],
        );
        r.to_writer(out)?;
        man.render_options_section(out)?;
        let mut r = Roff::default();
        tagged(
            &mut r,
            "SIGNALS",
            &[
                (
                    vec![bold("SIGHUP")],
                    "Reload workbusd.toml (except root and fleet, which cannot move under a running daemon) and the fleet: added workers start, removed ones finish their tasks and stop, changed ones restart. Under systemd: systemctl reload workbusd.",
                ),
                (
                    vec![bold("SIGTERM"), roman(", "), bold("SIGINT")],
                    "Stop: claim nothing new, let running tasks finish for up to drain_timeout, then stop the workers' process groups (SIGTERM, and SIGKILL after kill_grace), leave every record consistent and exit 0. Tasks stopped this way run again after the next start.",
                ),
            ],
        );
        tagged(
            &mut r,
            "ENVIRONMENT",
            &[
                (
                    vec![bold("WORKBUS_LOG")],
                    "A tracing filter (e.g. debug, or workbusd=debug) that overrides log_level.",
                ),
                (
                    vec![
                        bold("NOTIFY_SOCKET"),
                        roman(", "),
                        bold("WATCHDOG_USEC"),
                        roman(", "),
                        bold("JOURNAL_STREAM"),
                    ],
                    "Set by systemd: the daemon then reports READY=1, STATUS=, RELOADING=1 and STOPPING=1, pings the watchdog from its event loop, and (with log = \"auto\") logs to the journal with the fields GOAL, TASK, WORKER and ATTEMPT. None of them reaches the workers.",
                ),
                (
                    vec![
                        bold("WORKBUS_TEST_WEDGE_ON_GOAL"),
                        roman("="),
                        italic("PREFIX"),
                    ],
                    "For tests only, never in production: the event loop hangs for good right after it accepts a goal whose inbox file name starts with PREFIX, so that a test can watch the systemd watchdog restart the daemon. Unset by default.",
                ),
                (
                    vec![bold("WORKBUS_TEST_SYNC_DELAY_MS"), roman("="), italic("MS")],
                    "For tests only, never in production: the fsync thread waits MS milliseconds before each job (making an accepted goal durable, fsyncing reports/), so that a test can watch what waits for a goal to be durable. Unset by default.",
                ),
                (
                    vec![
                        bold("WORKBUS_TEST_FAIL_GOAL_SYNC"),
                        roman("="),
                        italic("FILE"),
                    ],
                    "For tests only, never in production: while FILE exists, making an accepted goal durable fails as on a disk error, so that a test can watch the goal wait, with nothing derived from it written, and be written again. Unset by default.",
                ),
                (
                    vec![
                        bold("WORKBUS_TEST_FAIL_RESULT_SYNC"),
                        roman("="),
                        italic("FILE"),
                    ],
                    "For tests only, never in production: while FILE exists, making the results the daemon writes durable fails as on a disk error, so that a test can watch what depends on them wait and the results be written again. Unset by default.",
                ),
            ],
        );
        tagged(
            &mut r,
            "FILES",
            &[
                (
                    vec![bold("/etc/workbus/workbusd.toml")],
                    "The daemon's settings (read if present).",
                ),
                (
                    vec![bold("/etc/workbus/fleet.toml")],
                    "The workers the daemon supervises; the packaged one is the demo fleet.",
                ),
                (
                    vec![bold("/etc/workbus/workbusd.env")],
                    "Optional KEY=VALUE lines that systemd puts in the environment of the daemon and its workers (API keys: keep it mode 0600).",
                ),
                (
                    vec![bold("/var/lib/workbus/")],
                    "The bus: inbox/, rejected/, goals/, tasks/, claimed/, results/, workers/, control/, reports/, archive/, status.json, metrics.prom and workbusd.lock (held while a daemon runs on the bus).",
                ),
                (
                    vec![bold("/usr/share/workbus/demo/")],
                    "The demo goal and its workers, used by the packaged fleet.",
                ),
                (
                    vec![bold("/usr/share/workbus/examples/")],
                    "Example workers in Python (bus protocol) and shell (spawn mode).",
                ),
                (
                    vec![bold("/usr/share/workbus/systemd/run-as-root.conf")],
                    "A drop-in for workbusd.service that runs the daemon as root, for user = in the fleet.",
                ),
            ],
        );
        tagged(
            &mut r,
            "EXIT STATUS",
            &[
                (
                    vec![bold("0")],
                    "Stopped on request, every record consistent.",
                ),
                (
                    vec![bold("1")],
                    "Could not start or run (another daemon holds the bus, an unreadable fleet, a folder it cannot create).",
                ),
                (
                    vec![bold("2")],
                    "A bad command line or configuration file (also for --check).",
                ),
            ],
        );
        examples(
            &mut r,
            &[
                (
                    "Check the configuration and fleet without starting:",
                    "workbusd --check",
                ),
                (
                    "See the service, its status line and its recent log:",
                    "systemctl status workbusd",
                ),
                (
                    "Everything the daemon logged about one goal:",
                    "journalctl -u workbusd GOAL=release-notes",
                ),
                (
                    "Run a daemon by hand on a private bus:",
                    "workbusd --root /tmp/wb/bus --fleet /tmp/wb/fleet.toml",
                ),
            ],
        );
        section(
            &mut r,
            "SEE ALSO",
            &[&[
                bold("workbusctl"),
                roman("(1), "),
                bold("systemctl"),
                roman("(1), "),
                bold("journalctl"),
                roman("(1), "),
                bold("systemd.service"),
                roman("(5)"),
            ]],
        );
        r.to_writer(out)?;
        man.render_version_section(out)?;
        Ok(())
    })
}

fn workbusctl_page(cmd: clap::Command) -> anyhow::Result<Vec<u8>> {
    let man = Man::new(plain_about(cmd))
        .manual("User Commands")
        .source(format!("workbus {}", env!("CARGO_PKG_VERSION")));
    render(&man, |man, out| {
        let mut r = Roff::default();
        section(
            &mut r,
            "DESCRIPTION",
            &[
                &[
                    bold("workbusctl"),
                    roman(" submits goals to "),
                    bold("workbusd"),
                    roman("(8) and shows how they run. It works on the bus folder: "),
                    bold("--root"),
                    roman(", else the "),
                    bold("root"),
                    roman(
                        " of /etc/workbus/workbusd.toml, else /var/lib/workbus. Commands that change something write records into the bus's inbox/ or control/ folder, which needs membership of the ",
                    ),
                    bold("workbus"),
                    roman(
                        " group on a packaged installation; every command that only reads works with the daemon stopped.",
                    ),
                ],
                &[
                    roman("Each command has its own page: "),
                    bold("workbusctl-submit"),
                    roman("(1), "),
                    bold("workbusctl-status"),
                    roman("(1), and so on."),
                ],
            ],
        );
        r.to_writer(out)?;
        man.render_options_section(out)?;
        man.render_subcommands_section(out)?;
        let mut r = Roff::default();
        tagged(
            &mut r,
            "ENVIRONMENT",
            &[(vec![bold("WORKBUS_ROOT")], "The bus folder, as --root.")],
        );
        tagged(
            &mut r,
            "EXIT STATUS",
            &[
                (
                    vec![bold("0")],
                    "Done (with submit --wait: the goal succeeded).",
                ),
                (
                    vec![bold("1")],
                    "An error, or (submit --wait) a goal that did not succeed.",
                ),
                (
                    vec![bold("2")],
                    "Refused input: an invalid goal or fleet file, a rejected goal.",
                ),
                (
                    vec![bold("3")],
                    "Nothing found: no such goal, no logs, no status yet.",
                ),
            ],
        );
        examples(
            &mut r,
            &[
                (
                    "Submit the packaged demo goal and follow it to the end:",
                    "workbusctl submit --wait /usr/share/workbus/demo/goal.toml",
                ),
                (
                    "What runs, and which workers are healthy:",
                    "workbusctl status; workbusctl workers",
                ),
                (
                    "Try the whole thing without a daemon or root:",
                    "workbusctl demo",
                ),
            ],
        );
        section(
            &mut r,
            "SEE ALSO",
            &[&[
                bold("workbusd"),
                roman("(8), "),
                bold("journalctl"),
                roman("(1)"),
            ]],
        );
        r.to_writer(out)?;
        man.render_version_section(out)?;
        Ok(())
    })
}

fn subcommand_page(cmd: clap::Command) -> anyhow::Result<Vec<u8>> {
    let man = Man::new(cmd)
        .manual("User Commands")
        .source(format!("workbus {}", env!("CARGO_PKG_VERSION")));
    let mut out = Vec::new();
    man.render(&mut out)?;
    let mut r = Roff::default();
    section(
        &mut r,
        "SEE ALSO",
        &[&[
            bold("workbusctl"),
            roman("(1), "),
            bold("workbusd"),
            roman("(8)"),
        ]],
    );
    r.to_writer(&mut out)?;
    Ok(out)
}
