//! Filesystem hints: inotify through `notify`, or polling where inotify
//! cannot be trusted. Either way an event only says "look at this folder";
//! the scan that follows is the truth.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::event::{ModifyKind, RenameMode};
use notify::{EventKind, RecursiveMode, Watcher};
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
                // Opening and reading, removing, renaming away, changing
                // metadata: nothing new to see in the folder.
                if matches!(
                    ev.kind,
                    EventKind::Access(_)
                        | EventKind::Remove(_)
                        | EventKind::Modify(
                            ModifyKind::Metadata(_) | ModifyKind::Name(RenameMode::From)
                        )
                ) {
                    return;
                }
                for p in &ev.paths {
                    if let Some(ff) = &fleet_file
                        && p == ff
                    {
                        let _ = tx.send(Event::FleetFile);
                        continue;
                    }
                    if let Some(parent) = p.parent()
                        && let Some((_, f)) = map.iter().find(|(d, _)| d == parent)
                    {
                        let _ = tx.send(Event::Folder(*f));
                    }
                }
            }
            Err(e) => {
                let _ = tx.send(Event::WatchError(e.to_string()));
            }
        };
        let mut w = notify::recommended_watcher(handler)?;
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

    #[test]
    fn auto_picks_notify_on_local_disks() {
        let d = tempfile::tempdir().unwrap();
        let c = choose(WatchMode::Auto, d.path());
        assert!(!c.poll, "{c:?}");
        assert!(choose(WatchMode::Poll, d.path()).poll);
    }
}
