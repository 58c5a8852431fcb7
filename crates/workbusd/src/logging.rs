//! Logging: journald with structured fields when stderr is the journal,
//! text or JSON lines on stderr otherwise.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::prelude::*;
use workbus_proto::config::LogMode;

/// Whether stderr is connected to the journal (`JOURNAL_STREAM` names its
/// device and inode).
pub fn stderr_is_journal() -> bool {
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let Ok(st) = nix::sys::stat::fstat(std::io::stderr()) else {
        return false;
    };
    dev.parse::<u64>().ok() == Some(st.st_dev) && ino.parse::<u64>().ok() == Some(st.st_ino)
}

/// Installs the global subscriber. Returns the mode in use.
pub fn init(mode: LogMode, level: &str) -> LogMode {
    let filter =
        || EnvFilter::try_from_env("WORKBUS_LOG").unwrap_or_else(|_| EnvFilter::new(level));
    let mode = match mode {
        LogMode::Auto if stderr_is_journal() => LogMode::Journald,
        LogMode::Auto => LogMode::Text,
        m => m,
    };
    let installed = match mode {
        LogMode::Journald => match tracing_journald::layer() {
            // Fields keep their names (GOAL, TASK, ...) so that
            // `journalctl -u workbusd GOAL=x` matches.
            Ok(layer) => tracing_subscriber::registry()
                .with(filter())
                .with(
                    layer
                        .with_field_prefix(None)
                        .with_syslog_identifier("workbusd".into()),
                )
                .try_init()
                .is_ok(),
            Err(e) => {
                eprintln!("workbusd: journald is not reachable ({e}); logging text to stderr");
                return init(LogMode::Text, level);
            }
        },
        LogMode::Json => tracing_subscriber::registry()
            .with(filter())
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            )
            .try_init()
            .is_ok(),
        _ => tracing_subscriber::registry()
            .with(filter())
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    // Colours for a person at a terminal, not in a log file.
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                    .with_target(false),
            )
            .try_init()
            .is_ok(),
    };
    let _ = installed;
    mode
}
