//! Filesystem hints: inotify through `notify`, or polling where inotify
//! cannot be trusted. Either way an event only says "look at this folder";
//! the scan that follows is the truth.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
use notify::{EventKind, EventKindMask, RecursiveMode, Watcher};
use tokio::sync::mpsc::UnboundedSender;
use workbus_bus::{Bus, Folder};
use workbus_proto::config::WatchMode;

use crate::event::Event;

/// The folders the daemon watches with inotify: where others drop files
/// that need an answer.
pub const WATCHED: [Folder; 4] = [
    Folder::Inbox,
    Folder::Results,
    Folder::Workers,
    Folder::Control,
];

/// Every folder a full rescan looks at. `claimed/` is not watched: a claim
/// needs no answer, and the daemon's own claims (every spawn) would wake it
/// for nothing. It is scanned before every results scan (a result names its
/// claim) and every `CLAIM_SCAN` while bus workers have tasks to claim.
pub const SCANNED: [Folder; 5] = [
    Folder::Inbox,
    Folder::Claimed,
    Folder::Results,
    Folder::Workers,
    Folder::Control,
];

/// How soon a claim by a bus worker is noticed (for its timeout and lease).
pub const CLAIM_SCAN: std::time::Duration = std::time::Duration::from_millis(250);

/// How the daemon learns of changes, and why it chose so.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchChoice {
    pub poll: bool,
    pub reason: String,
}

/// Filesystems where inotify does not see writes made by other hosts or
/// by the filesystem's server (statfs `f_type` magic numbers).
const BLIND: &[(i64, &str)] = &[
    (0x6969, "NFS"),
    (0x517B, "SMB"),
    (0xFF53_4D42, "CIFS"),
    (0xFE53_4D42, "SMB2"),
    (0x6573_5546, "FUSE"),
    (0x0102_1997, "9p"),
    (0x00C3_6400, "Ceph"),
    (0x0BD0_0BD0, "Lustre"),
    (0x0116_1970, "GFS2"),
    (0x7461_636F, "OCFS2"),
    (0x5346_414F, "AFS"),
    (0x7375_7245, "Coda"),
    (0x2003_0528, "OrangeFS"),
    (0x47504653, "GPFS"),
    (0xAAD7_AAEA, "PanFS"),
    (0x0BAD_1DEA, "FhGFS/BeeGFS"),
];

/// The filesystem type of `path` (statfs magic), and its name if it is one
/// where inotify is blind to remote writes.
pub fn filesystem(path: &Path) -> std::io::Result<(i64, Option<&'static str>)> {
    let st = nix::sys::statfs::statfs(path).map_err(std::io::Error::from)?;
    let magic = st.filesystem_type().0 as i64;
    Ok((
        magic,
        BLIND.iter().find(|(m, _)| *m == magic).map(|(_, n)| *n),
    ))
}

/// Decides between inotify and polling for `root`.
pub fn choose(mode: WatchMode, root: &Path) -> WatchChoice {
    match mode {
        WatchMode::Notify => WatchChoice {
            poll: false,
            reason: "watch = \"notify\" in the configuration".into(),
        },
        WatchMode::Poll => WatchChoice {
            poll: true,
            reason: "watch = \"poll\" in the configuration".into(),
        },
        WatchMode::Auto => match filesystem(root) {
            Ok((_, Some(name))) => WatchChoice {
                poll: true,
                reason: format!(
                    "watch = \"auto\": {} is on {name}, where inotify misses writes made elsewhere",
                    root.display()
                ),
            },
            Ok((magic, None)) => WatchChoice {
                poll: false,
                reason: format!(
                    "watch = \"auto\": {} is on a local filesystem (statfs type {magic:#x})",
                    root.display()
                ),
            },
            Err(e) => WatchChoice {
                poll: true,
                reason: format!(
                    "watch = \"auto\": statfs of {} failed ({e}); polling to be safe",
                    root.display()
                ),
            },
        },
    }
}

/// An inotify watch on the bus folders and the fleet file's folder.
pub struct FsWatcher {
    _inner: notify::RecommendedWatcher,
}

impl std::fmt::Debug for FsWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FsWatcher")
    }
}

impl FsWatcher {
    /// Watches the bus folders (not recursively) and `fleet`'s folder. An
    /// error here (such as running out of inotify watches) makes the caller
    /// fall back to polling.
    pub fn start(
        bus: &Bus,
        fleet: Option<&Path>,
        tx: UnboundedSender<Event>,
    ) -> notify::Result<FsWatcher> {
        let folders: Vec<(PathBuf, Folder)> = WATCHED.iter().map(|f| (bus.dir(*f), *f)).collect();
        let fleet_file = fleet.map(Path::to_path_buf);
        let map = folders.clone();
        let handler = move |res: notify::Result<notify::Event>| match res {
            Ok(ev) => {
                if ev.need_rescan() {
                    let _ = tx.send(Event::Rescan("the inotify queue overflowed".into()));
                    return;
                }
                // A file is complete when it was renamed in or its writer
                // closed it; a file just created may still be being written
                // (the folder is looked at, the file read once it settles).
                // The watch asks for no other kinds; this keeps it so.
                let complete = match ev.kind {
                    EventKind::Access(AccessKind::Close(AccessMode::Write))
                    | EventKind::Modify(ModifyKind::Name(
                        RenameMode::To | RenameMode::Both | RenameMode::Any,
                    )) => true,
                    EventKind::Create(_) | EventKind::Any | EventKind::Other => false,
                    _ => return,
                };
                // A rename reports both names: the new one is the last.
                let paths = match ev.kind {
                    EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => {
                        &ev.paths[ev.paths.len().saturating_sub(1)..]
                    }
                    _ => &ev.paths[..],
                };
                for p in paths {
                    if let Some(ff) = &fleet_file
                        && p == ff
                    {
                        let _ = tx.send(Event::FleetFile);
                        continue;
                    }
                    if let Some(parent) = p.parent()
                        && let Some((_, f)) = map.iter().find(|(d, _)| d == parent)
                    {
                        let name = p.file_name().and_then(|n| n.to_str()).map(str::to_string);
                        // A writer's temporary is nothing yet: its rename is.
                        if name.as_deref().is_some_and(workbus_bus::is_temporary) {
                            continue;
                        }
                        let _ = tx.send(match (complete, name) {
                            (true, Some(name)) => Event::Arrived(*f, name),
                            _ => Event::Folder(*f),
                        });
                    }
                }
            }
            Err(e) => {
                let _ = tx.send(Event::WatchError(e.to_string()));
            }
        };
        // Only what makes something new appear in a folder: a file created
        // or renamed in (IN_CREATE, IN_MOVED_TO), or a writer closing it
        // (IN_CLOSE_WRITE). Not opens and reads (our own reads would wake
        // the watcher thread once per file), not every write().
        let config = notify::Config::default().with_event_kinds(
            EventKindMask::CREATE | EventKindMask::MODIFY_NAME | EventKindMask::ACCESS_CLOSE,
        );
        let mut w = notify::RecommendedWatcher::new(handler, config)?;
        for (dir, _) in &folders {
            w.watch(dir, RecursiveMode::NonRecursive)?;
        }
        if let Some(parent) = fleet.and_then(Path::parent) {
            w.watch(parent, RecursiveMode::NonRecursive)?;
        }
        Ok(FsWatcher { _inner: w })
    }
}

/// Polling with exponential backoff: quick while things happen, slow while
/// nothing does.
#[derive(Debug)]
pub struct Poller {
    min: Duration,
    max: Duration,
    current: Duration,
}

impl Poller {
    pub fn new(min: Duration, max: Duration) -> Self {
        Poller {
            min,
            max,
            current: min,
        }
    }
    /// After a poll: reset on activity, back off otherwise. Returns the
    /// delay until the next poll.
    pub fn after_poll(&mut self, activity: bool) -> Duration {
        self.current = if activity {
            self.min
        } else {
            (self.current * 2).min(self.max)
        };
        self.current
    }
    /// Something happened (a goal, a result): poll soon.
    pub fn reset(&mut self) -> Duration {
        self.current = self.min;
        self.current
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polling_backs_off_and_resets() {
        let mut p = Poller::new(Duration::from_millis(50), Duration::from_millis(300));
        let d: Vec<u128> = (0..4).map(|_| p.after_poll(false).as_millis()).collect();
        assert_eq!(d, vec![100, 200, 300, 300]);
        assert_eq!(p.after_poll(true).as_millis(), 50);
    }

    /// The events that must wake the daemon do, and reading does not.
    #[test]
    fn renames_in_closes_after_writing_and_fleet_edits_are_seen_reads_are_not() {
        let d = tempfile::tempdir().unwrap();
        let bus = Bus::create(d.path().join("bus")).unwrap();
        let fleet = d.path().join("fleet.toml");
        std::fs::write(&fleet, "").unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let _w = FsWatcher::start(&bus, Some(&fleet), tx).unwrap();
        let next = |rx: &mut tokio::sync::mpsc::UnboundedReceiver<Event>| {
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            loop {
                if let Ok(e) = rx.try_recv() {
                    return Some(e);
                }
                if std::time::Instant::now() > deadline {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        let drain = |rx: &mut tokio::sync::mpsc::UnboundedReceiver<Event>| {
            std::thread::sleep(Duration::from_millis(200));
            while rx.try_recv().is_ok() {}
        };
        let results = bus.dir(Folder::Results);
        // The atomic-write pattern: the rename, after the temporary's own
        // events are gone, is what must be seen.
        std::fs::write(results.join(".r.tmp"), "{}").unwrap();
        drain(&mut rx);
        std::fs::rename(results.join(".r.tmp"), results.join("g.t.1.json")).unwrap();
        match next(&mut rx) {
            Some(Event::Arrived(Folder::Results, name)) => assert_eq!(name, "g.t.1.json"),
            other => panic!("expected the rename to arrive, got {other:?}"),
        }
        // Reading a file in a watched folder wakes nobody.
        drain(&mut rx);
        let _ = std::fs::read(results.join("g.t.1.json")).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        assert!(rx.try_recv().is_err(), "a read woke the daemon");
        // A file written in place: its creation is a hint to look (it may
        // be half-written), its writer closing it says it is complete.
        std::fs::write(bus.dir(Folder::Inbox).join("g.toml"), "x").unwrap();
        assert!(matches!(next(&mut rx), Some(Event::Folder(Folder::Inbox))));
        match next(&mut rx) {
            Some(Event::Arrived(Folder::Inbox, name)) => assert_eq!(name, "g.toml"),
            other => panic!("expected the close after writing, got {other:?}"),
        }
        // The fleet file, saved in place or by rename.
        drain(&mut rx);
        std::fs::write(&fleet, "# edited").unwrap();
        assert!(matches!(next(&mut rx), Some(Event::FleetFile)));
        drain(&mut rx);
        std::fs::write(d.path().join(".fleet.swp"), "# saved").unwrap();
        drain(&mut rx);
        std::fs::rename(d.path().join(".fleet.swp"), &fleet).unwrap();
        assert!(matches!(next(&mut rx), Some(Event::FleetFile)));
    }

    #[test]
    fn auto_picks_notify_on_local_disks() {
        let d = tempfile::tempdir().unwrap();
        let c = choose(WatchMode::Auto, d.path());
        assert!(!c.poll, "{c:?}");
        assert!(choose(WatchMode::Poll, d.path()).poll);
    }
}
