//! `workbusctl submit FILE [--wait]`: validate with the daemon's own code,
//! then drop the file into the inbox atomically.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use workbus_bus::{Bus, Folder};
use workbus_proto::Id;
use workbus_proto::parse::Format;

use crate::cmd::EXIT_INVALID;
use crate::{root, wait};

pub fn run(bus: &Bus, file: &Path, wait_for_it: bool) -> anyhow::Result<ExitCode> {
    let Some(format) = Format::from_path(file) else {
        eprintln!(
            "workbusctl: {}: goal files are named *.toml or *.json",
            file.display()
        );
        return Ok(ExitCode::from(EXIT_INVALID));
    };
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let file_name = file
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("goal.toml");
    let goal = match workbus_engine::validate_goal(
        &bytes,
        format,
        file_name,
        &root::limits(),
        workbus_proto::Timestamp::now(),
    ) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("{}: {e}", file.display());
            return Ok(ExitCode::from(EXIT_INVALID));
        }
    };
    let (id, name) = drop_into_inbox(bus, &goal.id, file_name, format, &bytes)?;
    println!("submitted goal {id} (inbox/{name})");
    if !wait_for_it {
        return Ok(ExitCode::SUCCESS);
    }
    wait::goal(bus, &id, &name)
}

/// Drops the goal into `inbox/` under a name whose stem is its id. A goal
/// without an id whose default id is taken gets a fresh one (`stem-2`).
pub fn drop_into_inbox(
    bus: &Bus,
    id: &Id,
    file_name: &str,
    format: Format,
    bytes: &[u8],
) -> anyhow::Result<(Id, String)> {
    let explicit = workbus_engine::validate::id_from_file_name(file_name)
        .ok()
        .as_ref()
        != Some(id);
    let ext = match format {
        Format::Toml => "toml",
        Format::Json => "json",
    };
    let taken = |id: &Id| {
        bus.goal_path(id).exists()
            || bus.report_path(id).exists()
            || bus.path(Folder::Inbox, &format!("{id}.{ext}")).exists()
    };
    let mut chosen = id.clone();
    if taken(&chosen) {
        if explicit {
            anyhow::bail!("a goal with id {id} already exists on this bus; choose another id");
        }
        chosen = (2u32..)
            .map(|n| Id::new(format!("{id}-{n}")))
            .find_map(|c| c.ok().filter(|c| !taken(c)))
            .context("no free goal id")?;
    }
    let name = format!("{chosen}.{ext}");
    let inbox = bus.dir(Folder::Inbox);
    if !inbox.is_dir() {
        anyhow::bail!(
            "{} does not exist: is this the bus? (start workbusd with --root {}, or pass --root)",
            inbox.display(),
            bus.root().display()
        );
    }
    workbus_bus::write_atomic(&inbox, &name, bytes, true)
        .with_context(|| format!("writing into {}", inbox.display()))?;
    Ok((chosen, name))
}
