//! Where things live under the bus root (SPEC §2).

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use workbus_proto::Id;
use workbus_proto::names::{ArchiveKind, AttemptKey};

/// The fixed folders of a bus.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Folder {
    Inbox,
    Rejected,
    Goals,
    Tasks,
    Claimed,
    Results,
    Workers,
    Control,
    Reports,
    Archive,
}

impl Folder {
    pub const ALL: [Folder; 10] = [
        Folder::Inbox,
        Folder::Rejected,
        Folder::Goals,
        Folder::Tasks,
        Folder::Claimed,
        Folder::Results,
        Folder::Workers,
        Folder::Control,
        Folder::Reports,
        Folder::Archive,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Folder::Inbox => "inbox",
            Folder::Rejected => "rejected",
            Folder::Goals => "goals",
            Folder::Tasks => "tasks",
            Folder::Claimed => "claimed",
            Folder::Results => "results",
            Folder::Workers => "workers",
            Folder::Control => "control",
            Folder::Reports => "reports",
            Folder::Archive => "archive",
        }
    }

    /// Folders others write into: people and workers drop files here.
    fn shared(self) -> bool {
        matches!(
            self,
            Folder::Inbox
                | Folder::Tasks
                | Folder::Claimed
                | Folder::Results
                | Folder::Workers
                | Folder::Control
        )
    }
}

/// A bus root and the paths under it.
#[derive(Clone, Debug)]
pub struct Bus {
    root: PathBuf,
}

impl Bus {
    /// A bus at `root`, without touching the disk.
    pub fn at(root: impl Into<PathBuf>) -> Bus {
        Bus { root: root.into() }
    }

    /// Creates any missing folder. Folders others write into are made
    /// group-writable and setgid, so files dropped there stay in the bus's
    /// group.
    pub fn create(root: impl Into<PathBuf>) -> io::Result<Bus> {
        let bus = Bus::at(root);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o770)
            .create(&bus.root)?;
        for f in Folder::ALL {
            let p = bus.dir(f);
            match fs::DirBuilder::new().mode(0o770).create(&p) {
                Ok(()) => {
                    if f.shared() {
                        fs::set_permissions(&p, fs::Permissions::from_mode(0o2770))?;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    let md = fs::symlink_metadata(&p)?;
                    if !md.is_dir() {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidInput,
                            format!("{} exists but is not a folder", p.display()),
                        ));
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(bus)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn dir(&self, f: Folder) -> PathBuf {
        self.root.join(f.name())
    }

    pub fn path(&self, f: Folder, name: &str) -> PathBuf {
        self.root.join(f.name()).join(name)
    }

    pub fn goal_path(&self, goal: &Id) -> PathBuf {
        self.path(Folder::Goals, &format!("{goal}.json"))
    }

    pub fn report_path(&self, goal: &Id) -> PathBuf {
        self.path(Folder::Reports, &format!("{goal}.json"))
    }

    pub fn task_path(&self, key: &AttemptKey) -> PathBuf {
        self.path(Folder::Tasks, &key.file_name())
    }

    pub fn claim_path(&self, key: &AttemptKey, worker: &str) -> PathBuf {
        self.path(Folder::Claimed, &key.claim_name(worker))
    }

    pub fn result_path(&self, key: &AttemptKey) -> PathBuf {
        self.path(Folder::Results, &key.file_name())
    }

    pub fn worker_path(&self, name: &str) -> PathBuf {
        self.path(Folder::Workers, &format!("{name}.json"))
    }

    /// `archive/<goal>/`.
    pub fn archive_dir(&self, goal: &Id) -> PathBuf {
        self.dir(Folder::Archive).join(goal.as_str())
    }

    pub fn archive_path(&self, key: &AttemptKey, kind: ArchiveKind) -> PathBuf {
        self.archive_dir(&key.goal).join(key.archive_name(kind))
    }

    pub fn status_path(&self) -> PathBuf {
        self.root.join("status.json")
    }

    pub fn metrics_path(&self) -> PathBuf {
        self.root.join("metrics.prom")
    }

    pub fn lock_path(&self) -> PathBuf {
        self.root.join("workbusd.lock")
    }

    /// Opens a folder for fsync.
    pub fn open_dir(&self, f: Folder) -> io::Result<File> {
        File::open(self.dir(f))
    }
}
