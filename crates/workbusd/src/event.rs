//! Everything that can happen to the daemon, as one enum on one channel.

use std::io;

use workbus_bus::Folder;
use workbus_proto::Id;
use workbus_proto::names::AttemptKey;
use workbus_supervisor::Exit;

#[derive(Debug)]
pub enum Event {
    /// Something changed in a watched folder: rescan it.
    Folder(Folder),
    /// A file is complete in a watched folder (renamed in, or closed by its
    /// writer): rescan the folder, and read this file without waiting.
    Arrived(Folder, String),
    /// Rescan every folder (queue overflow, safety).
    Rescan(String),
    /// The watcher failed.
    WatchError(String),
    /// The fleet file changed on disk.
    FleetFile,
    /// A spawned task process ended.
    SpawnExited {
        key: AttemptKey,
        worker: Id,
        exit: io::Result<Exit>,
    },
    /// A resident worker's process ended.
    ResidentExited {
        worker: Id,
        generation: u64,
        exit: io::Result<Exit>,
    },
    Signal(Signal),
    /// The fsync thread finished a job (see `syncer`).
    Synced,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM or SIGINT: drain and stop.
    Stop,
    /// SIGHUP: reload configuration and fleet.
    Reload,
}
