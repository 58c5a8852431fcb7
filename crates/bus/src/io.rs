//! Atomic writes and safe reads.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc};

use serde::de::DeserializeOwned;
use workbus_proto::ParseError;

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

fn tmp_name(dir: &Path, name: &str) -> PathBuf {
    // The pid, asked of the kernel once (the daemon never forks without an
    // exec).
    static PID: OnceLock<u32> = OnceLock::new();
    let n = TMP_SEQ.fetch_add(1, Ordering::Relaxed);
    let pid = PID.get_or_init(std::process::id);
    dir.join(format!(".{name}.{pid}.{n}.tmp"))
}

/// Writes `bytes` to `dir/name` so that no reader ever sees part of it:
/// a temporary name in the same folder, write, (fsync), rename, (fsync of
/// the folder). With `durable`, the file survives a power cut once this
/// returns. On error nothing is left behind under either name.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8], durable: bool) -> io::Result<()> {
    publish(dir, name, bytes, durable)?;
    if durable {
        sync_dir(dir)?;
    }
    Ok(())
}

/// [`write_atomic`] up to the rename: the data is on disk before the name
/// appears, and the caller fsyncs `dir` afterwards (so that the name
/// survives a power cut) when it suits it, e.g. on another thread.
pub fn write_atomic_data(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    publish(dir, name, bytes, true)
}

/// Temporary name, write, (fdatasync), rename.
fn publish(dir: &Path, name: &str, bytes: &[u8], sync_data: bool) -> io::Result<()> {
    let tmp = tmp_name(dir, name);
    let result = (|| {
        let mut f = create_new(&tmp)?;
        f.write_all(bytes)?;
        if sync_data {
            f.sync_data()?;
        }
        drop(f);
        fs::rename(&tmp, dir.join(name))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn create_new(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o660)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// fsync of a folder, so that a rename or creation in it is durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Files written without fsync, made durable together later: their data is
/// sent to the disk all at once (`sync_file_range`), then each is
/// fdatasynced (mostly waiting on writes already under way), then each
/// folder is fsynced once. For 500 small files this takes about half as
/// long as fsyncing each in turn.
#[derive(Debug, Default)]
pub struct WriteBatch {
    files: Vec<PathBuf>,
    /// What each file of `files` holds, where a copy was kept: after a
    /// failed commit the file is written again from it (see `rewrite`).
    copies: Vec<Option<Vec<u8>>>,
    /// A test fault switch: the next commit fails with this error.
    fail_next: Option<String>,
    /// Folders to fsync besides the files' own.
    dirs: Vec<PathBuf>,
    oldest: Option<std::time::Instant>,
    durable: bool,
}

impl WriteBatch {
    pub fn new(durable: bool) -> Self {
        WriteBatch {
            files: Vec::new(),
            copies: Vec::new(),
            fail_next: None,
            dirs: Vec::new(),
            oldest: None,
            durable,
        }
    }

    /// Writes `dir/name` atomically; durable at [`WriteBatch::commit`].
    pub fn write(&mut self, dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
        write_atomic(dir, name, bytes, false)?;
        self.add_copy(dir.join(name), bytes.to_vec());
        Ok(())
    }

    /// Adds a file already written to the batch.
    pub fn add(&mut self, path: PathBuf) {
        self.add_file(path, None);
    }

    /// Adds a file already written, with a copy of what it holds, so that
    /// a failed commit can write it again (see [`WriteBatch::rewrite`]).
    pub fn add_copy(&mut self, path: PathBuf, bytes: Vec<u8>) {
        self.add_file(path, Some(bytes));
    }

    fn add_file(&mut self, path: PathBuf, copy: Option<Vec<u8>>) {
        if self.durable {
            self.oldest.get_or_insert_with(std::time::Instant::now);
            self.files.push(path);
            self.copies.push(copy);
        }
    }

    /// After a failed commit: writes every file whose copy was kept again,
    /// as a new file under the same name. A retried fsync of the old one
    /// proves nothing: after a failed write-back the kernel may have
    /// dropped its data and reports no error to a later fsync. Files that
    /// are gone (moved on) are left alone. Returns how many were written.
    pub fn rewrite(&mut self) -> usize {
        let mut n = 0;
        for (path, copy) in self.files.iter().zip(&self.copies) {
            let (Some(bytes), Some(dir), Some(name)) = (
                copy,
                path.parent(),
                path.file_name().and_then(|n| n.to_str()),
            ) else {
                continue;
            };
            if fs::symlink_metadata(path).is_ok() && write_atomic(dir, name, bytes, false).is_ok() {
                n += 1;
            }
        }
        n
    }

    /// A test fault switch: the next commit fails with `why`, committing
    /// nothing.
    pub fn fail_next_commit(&mut self, why: String) {
        self.fail_next = Some(why);
    }

    /// Adds a folder whose entries are to be made durable (a rename or
    /// creation in it), besides the folders of the files added.
    pub fn add_dir(&mut self, dir: PathBuf) {
        if self.durable {
            self.oldest.get_or_insert_with(std::time::Instant::now);
            self.dirs.push(dir);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty() && self.dirs.is_empty()
    }

    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Takes over the files of `other` (a batch that could not be committed).
    pub fn absorb(&mut self, other: &mut WriteBatch) {
        if let Some(t) = other.oldest.take() {
            self.oldest = Some(self.oldest.map_or(t, |o| o.min(t)));
        }
        self.files.append(&mut other.files);
        self.copies.append(&mut other.copies);
        self.dirs.append(&mut other.dirs);
    }

    /// When the oldest file not yet durable was added.
    pub fn oldest(&self) -> Option<std::time::Instant> {
        self.oldest
    }

    /// Makes every file and folder added so far durable. A file that
    /// vanished since (moved on) is skipped: its new folder is the mover's
    /// to sync. An error names the file or folder.
    pub fn commit(&mut self) -> io::Result<()> {
        if let Some(why) = self.fail_next.take() {
            return Err(io::Error::other(why));
        }
        if self.is_empty() {
            return Ok(());
        }
        let mut open = Vec::with_capacity(self.files.len());
        for path in &self.files {
            match File::open(path) {
                Ok(f) => {
                    // SAFETY: a plain system call on an open descriptor.
                    let _ = unsafe {
                        libc::sync_file_range(
                            std::os::fd::AsRawFd::as_raw_fd(&f),
                            0,
                            0,
                            libc::SYNC_FILE_RANGE_WRITE,
                        )
                    };
                    open.push(f);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(named(path, e)),
            }
        }
        sync_all_data(open)?;
        let mut dirs: Vec<&Path> = self.files.iter().filter_map(|p| p.parent()).collect();
        dirs.extend(self.dirs.iter().map(PathBuf::as_path));
        dirs.sort();
        dirs.dedup();
        for d in dirs {
            sync_dir(d).map_err(|e| named(d, e))?;
        }
        self.files.clear();
        self.copies.clear();
        self.dirs.clear();
        self.oldest = None;
        Ok(())
    }
}

/// `e`, saying which file or folder it is about.
fn named(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// Files fdatasynced at once by this many threads at most: each fdatasync
/// waits for its inode's write and a cache flush of the disk; started
/// together, the disk serves them together (and the block layer merges the
/// flushes) instead of one round trip after another.
const SYNC_THREADS: usize = 8;

/// Part of a batch for a helper thread to fdatasync.
struct SyncJob {
    files: Arc<Vec<File>>,
    range: std::ops::Range<usize>,
    done: mpsc::Sender<io::Result<()>>,
}

/// The helper threads (up to `SYNC_THREADS - 1`), started at the first
/// batch that needs them and kept: started per batch, they were ~400
/// thread starts during a 2 000-task W4 goal. Idle, they block on the
/// queue and cost no wake-ups. None when no thread could be started.
fn sync_pool() -> Option<&'static mpsc::Sender<SyncJob>> {
    static POOL: OnceLock<Option<mpsc::Sender<SyncJob>>> = OnceLock::new();
    POOL.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SyncJob>();
        let rx = Arc::new(Mutex::new(rx));
        let mut started = 0;
        for _ in 1..SYNC_THREADS {
            let rx = rx.clone();
            let helper = std::thread::Builder::new()
                .name("workbus-sync".into())
                .spawn(move || {
                    loop {
                        // The lock is held while waiting: one idle helper
                        // waits on the queue, the others on the lock.
                        let job = match rx.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => return,
                        };
                        let Ok(job) = job else { return };
                        let r = job.files[job.range].iter().try_for_each(File::sync_data);
                        let _ = job.done.send(r);
                    }
                });
            started += usize::from(helper.is_ok());
        }
        (started > 0).then_some(tx)
    })
    .as_ref()
}

/// fdatasync of every file, on up to `SYNC_THREADS` threads (a few files
/// on this one); the first error is returned.
fn sync_all_data(files: Vec<File>) -> io::Result<()> {
    let threads = SYNC_THREADS.min(files.len() / 4);
    let pool = if threads > 1 { sync_pool() } else { None };
    let Some(pool) = pool else {
        return files.iter().try_for_each(File::sync_data);
    };
    let chunk = files.len().div_ceil(threads);
    let files = Arc::new(files);
    let (done, results) = mpsc::channel();
    let mut sent = 0;
    let mut first = Ok(());
    // The first part is this thread's; the others go to the helpers (or
    // are synced here too if the queue is gone).
    for start in (chunk..files.len()).step_by(chunk) {
        let range = start..(start + chunk).min(files.len());
        let job = SyncJob {
            files: files.clone(),
            range: range.clone(),
            done: done.clone(),
        };
        match pool.send(job) {
            Ok(()) => sent += 1,
            Err(_) => {
                let r = files[range].iter().try_for_each(File::sync_data);
                if first.is_ok() {
                    first = r;
                }
            }
        }
    }
    let here = files[..chunk].iter().try_for_each(File::sync_data);
    if first.is_ok() {
        first = here;
    }
    // Every job holds a sender: the results end when the last job is done.
    drop(done);
    let mut received = 0;
    for r in results.iter() {
        received += 1;
        if first.is_ok() {
            first = r;
        }
    }
    if received < sent && first.is_ok() {
        first = Err(io::Error::other("an fsync helper thread stopped"));
    }
    first
}

/// Why a bus file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("is a symbolic link (links are refused, never followed)")]
    Symlink,
    #[error("is not a regular file but a {0} (refused)")]
    NotRegular(&'static str),
    #[error("is larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("vanished before it could be read")]
    Vanished,
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Parse(ParseError),
}

impl ReadError {
    /// A transient condition worth trying again rather than rejecting for.
    pub fn is_transient(&self) -> bool {
        match self {
            ReadError::Io(e) => matches!(
                e.raw_os_error(),
                Some(
                    libc::EIO
                        | libc::ENOMEM
                        | libc::EMFILE
                        | libc::ENFILE
                        | libc::EINTR
                        | libc::EAGAIN
                )
            ),
            _ => false,
        }
    }
}

/// Reads a regular file of at most `limit` bytes without following a link
/// or blocking on a FIFO or device.
pub fn read_capped(path: &Path, limit: u64) -> Result<Vec<u8>, ReadError> {
    let flags = libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY;
    let open = |extra: libc::c_int| {
        OpenOptions::new()
            .read(true)
            .custom_flags(flags | extra)
            .open(path)
    };
    // Reading a record need not dirty its inode (atime): O_NOATIME, which
    // only the file's owner (or CAP_FOWNER) may ask for; else without.
    let f = match open(libc::O_NOATIME) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => open(0),
        r => r,
    };
    let mut f = match f {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Err(ReadError::Symlink),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(ReadError::Vanished),
        // A socket cannot be opened at all.
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
            return Err(ReadError::NotRegular("socket"));
        }
        Err(e) => return Err(ReadError::Io(e)),
    };
    let md = f.metadata()?;
    let ft = md.file_type();
    if !ft.is_file() {
        return Err(ReadError::NotRegular(if ft.is_fifo() {
            "FIFO"
        } else if ft.is_dir() {
            "folder"
        } else if ft.is_socket() {
            "socket"
        } else if ft.is_char_device() || ft.is_block_device() {
            "device"
        } else {
            "special file"
        }));
    }
    if md.len() > limit {
        return Err(ReadError::TooLarge { limit });
    }
    let mut buf = Vec::with_capacity(md.len() as usize);
    (&mut f)
        .take(limit.saturating_add(1))
        .read_to_end(&mut buf)?;
    if buf.len() as u64 > limit {
        return Err(ReadError::TooLarge { limit });
    }
    Ok(buf)
}

/// Reads and parses a JSON record.
pub fn read_json<T: DeserializeOwned>(path: &Path, limit: u64) -> Result<T, ReadError> {
    let bytes = read_capped(path, limit)?;
    let text = std::str::from_utf8(&bytes).map_err(|_| {
        ReadError::Parse(ParseError {
            line: None,
            column: None,
            message: "not valid UTF-8".into(),
        })
    })?;
    workbus_proto::parse::from_json(text).map_err(ReadError::Parse)
}

/// The names in a folder, skipping files in the making (see
/// [`crate::is_temporary`]) and names that are not UTF-8.
pub fn list(dir: &Path) -> io::Result<Vec<String>> {
    Ok(entries(dir)?.into_iter().map(|(_, n)| n).collect())
}

/// As [`list`], sorted by inode number: files read in this order are read
/// roughly in the order they lie on disk (a hashed folder lists them in hash
/// order), which matters when the page cache is cold.
pub fn list_by_inode(dir: &Path) -> io::Result<Vec<String>> {
    let mut out = entries(dir)?;
    out.sort_unstable();
    Ok(out.into_iter().map(|(_, n)| n).collect())
}

/// The inode numbers and names of [`list`].
fn entries(dir: &Path) -> io::Result<Vec<(u64, String)>> {
    use std::os::unix::fs::DirEntryExt;
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name: &OsStr = &entry.file_name();
        if let Ok(s) = std::str::from_utf8(name.as_bytes())
            && !crate::is_temporary(s)
        {
            out.push((entry.ino(), s.to_string()));
        }
    }
    Ok(out)
}

/// Removes a folder tree, ignoring a missing one.
pub fn remove_dir_all_quiet(dir: &Path) -> io::Result<()> {
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn atomic_writes_leave_no_temporaries() {
        let d = tempfile::tempdir().unwrap();
        write_atomic(d.path(), "a.json", b"{}", true).unwrap();
        write_atomic(d.path(), "a.json", b"{\"x\":1}", false).unwrap();
        assert_eq!(fs::read(d.path().join("a.json")).unwrap(), b"{\"x\":1}");
        assert_eq!(list(d.path()).unwrap(), vec!["a.json"]);
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
        let e = write_atomic(&d.path().join("missing"), "a", b"", true).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        write_atomic_data(d.path(), "b.json", b"[1]").unwrap();
        assert_eq!(fs::read(d.path().join("b.json")).unwrap(), b"[1]");
        assert_eq!(list(d.path()).unwrap(), vec!["a.json", "b.json"]);
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 2);
        // A name that is a folder: the rename fails, the temporary goes.
        fs::create_dir(d.path().join("c.json")).unwrap();
        write_atomic_data(d.path(), "c.json", b"{}").unwrap_err();
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 3);
    }

    #[test]
    fn listing_by_inode_is_inode_order_without_temporaries() {
        use std::os::unix::fs::MetadataExt;
        let d = tempfile::tempdir().unwrap();
        for i in 0..200 {
            fs::write(d.path().join(format!("f{i}.json")), b"{}").unwrap();
        }
        fs::write(d.path().join(".f.json.1.2.tmp"), b"").unwrap();
        let names = list_by_inode(d.path()).unwrap();
        assert_eq!(names.len(), 200);
        let inos: Vec<u64> = names
            .iter()
            .map(|n| fs::metadata(d.path().join(n)).unwrap().ino())
            .collect();
        assert!(inos.windows(2).all(|w| w[0] < w[1]), "{inos:?}");
        let mut sorted = names.clone();
        sorted.sort();
        let mut plain = list(d.path()).unwrap();
        plain.sort();
        assert_eq!(sorted, plain);
    }

    #[test]
    fn reading_a_record_leaves_its_atime() {
        use std::os::unix::fs::MetadataExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("r.json");
        fs::write(&p, b"{}").unwrap();
        // An atime older than the mtime: relatime would update it on read.
        let old = libc::timespec {
            tv_sec: 1_000_000,
            tv_nsec: 0,
        };
        let times = [
            old,
            libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_OMIT,
            },
        ];
        let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
        assert_eq!(
            unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), 0) },
            0
        );
        assert_eq!(read_capped(&p, 100).unwrap(), b"{}");
        assert_eq!(fs::metadata(&p).unwrap().atime(), 1_000_000);
    }

    #[test]
    fn batches_commit() {
        let d = tempfile::tempdir().unwrap();
        let mut b = WriteBatch::new(true);
        b.write(d.path(), "a", b"1").unwrap();
        b.write(d.path(), "b", b"2").unwrap();
        b.commit().unwrap();
        assert!(b.is_empty());
        assert_eq!(list(d.path()).unwrap().len(), 2);
        // Folders alone; a missing one fails the commit, named, and stays.
        b.add_dir(d.path().to_path_buf());
        assert!(!b.is_empty() && b.oldest().is_some());
        b.commit().unwrap();
        assert!(b.is_empty());
        let missing = d.path().join("missing");
        b.add_dir(missing.clone());
        let e = b.commit().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(e.to_string().contains(&*missing.to_string_lossy()), "{e}");
        assert!(!b.is_empty());
    }

    #[test]
    fn a_failed_batch_keeps_its_files_and_writes_them_again() {
        use std::os::unix::fs::MetadataExt;
        let d = tempfile::tempdir().unwrap();
        let mut b = WriteBatch::new(true);
        b.write(d.path(), "a.json", b"{\"a\":1}").unwrap();
        b.write(d.path(), "moved.json", b"{}").unwrap();
        write_atomic(d.path(), "plain.json", b"[]", false).unwrap();
        b.add(d.path().join("plain.json"));
        let ino = |n: &str| fs::metadata(d.path().join(n)).unwrap().ino();
        let (a0, plain0) = (ino("a.json"), ino("plain.json"));
        b.fail_next_commit("test".into());
        assert_eq!(b.commit().unwrap_err().to_string(), "test");
        assert_eq!(b.len(), 3, "a failed commit keeps every file");
        fs::rename(d.path().join("moved.json"), d.path().join("elsewhere.json")).unwrap();
        // Written again: the files with a copy, not the one without, and
        // not the one that moved on.
        assert_eq!(b.rewrite(), 1);
        assert_ne!(ino("a.json"), a0);
        assert_eq!(fs::read(d.path().join("a.json")).unwrap(), b"{\"a\":1}");
        assert_eq!(ino("plain.json"), plain0);
        assert!(!d.path().join("moved.json").exists());
        let mut all = WriteBatch::new(true);
        all.absorb(&mut b);
        all.commit().unwrap();
        assert!(all.is_empty());
        assert_eq!(all.rewrite(), 0, "nothing is left to write once committed");
    }

    /// A large batch is synced by several threads; a file that cannot be
    /// synced (here a pipe: EINVAL) fails the whole commit wherever it is.
    #[test]
    fn large_batches_sync_on_threads_and_report_any_failure() {
        let d = tempfile::tempdir().unwrap();
        let mut b = WriteBatch::new(true);
        for i in 0..100 {
            b.write(d.path(), &format!("r{i}.json"), b"{}").unwrap();
        }
        b.commit().unwrap();
        assert!(b.is_empty());
        for bad_at in [0, 37, 99] {
            let mut files: Vec<File> = (0..100)
                .map(|i| File::open(d.path().join(format!("r{i}.json"))).unwrap())
                .collect();
            let (r, _w) = nix::unistd::pipe().unwrap();
            files[bad_at] = File::from(r);
            let e = sync_all_data(files).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "bad file at {bad_at}");
        }
    }

    /// The helper threads of large batches are started once and kept:
    /// the same threads serve every later batch.
    #[test]
    fn sync_helpers_are_started_once_and_kept() {
        let helpers = || -> std::collections::BTreeSet<String> {
            fs::read_dir("/proc/self/task")
                .unwrap()
                .flatten()
                .filter(|t| {
                    fs::read_to_string(t.path().join("comm"))
                        .is_ok_and(|c| c.trim_end() == "workbus-sync")
                })
                .map(|t| t.file_name().to_string_lossy().into_owned())
                .collect()
        };
        let d = tempfile::tempdir().unwrap();
        let mut first = None;
        for round in 0..5 {
            let mut b = WriteBatch::new(true);
            for i in 0..64 {
                b.write(d.path(), &format!("r{round}-{i}.json"), b"{}")
                    .unwrap();
            }
            b.commit().unwrap();
            let now = helpers();
            assert!(
                !now.is_empty() && now.len() < SYNC_THREADS,
                "round {round}: helper threads {now:?}"
            );
            match &first {
                None => first = Some(now),
                Some(f) => assert_eq!(f, &now, "round {round}: other helper threads"),
            }
        }
    }

    #[test]
    fn reads_refuse_links_fifos_and_big_files() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::NamedTempFile::new().unwrap();
        fs::write(outside.path(), b"secret").unwrap();
        symlink(outside.path(), d.path().join("l.json")).unwrap();
        assert!(matches!(
            read_capped(&d.path().join("l.json"), 100),
            Err(ReadError::Symlink)
        ));
        nix::unistd::mkfifo(
            &d.path().join("f.json"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        assert!(matches!(
            read_capped(&d.path().join("f.json"), 100),
            Err(ReadError::NotRegular("FIFO"))
        ));
        fs::write(d.path().join("big"), vec![b'x'; 101]).unwrap();
        assert!(matches!(
            read_capped(&d.path().join("big"), 100),
            Err(ReadError::TooLarge { limit: 100 })
        ));
        assert_eq!(read_capped(&d.path().join("big"), 101).unwrap().len(), 101);
        assert!(matches!(
            read_capped(&d.path().join("nope"), 1),
            Err(ReadError::Vanished)
        ));
        fs::create_dir(d.path().join("dir")).unwrap();
        assert!(matches!(
            read_capped(&d.path().join("dir"), 1),
            Err(ReadError::NotRegular("folder"))
        ));
    }

    #[test]
    fn lists_skip_temporaries() {
        let d = tempfile::tempdir().unwrap();
        for n in ["a.json", ".b.json", "c.json.tmp", ".d.tmp"] {
            fs::write(d.path().join(n), b"").unwrap();
        }
        assert_eq!(list(d.path()).unwrap(), vec!["a.json"]);
    }
}

#[cfg(test)]
mod limit_tests {
    #[test]
    fn an_unlimited_read_does_not_overflow() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a"), b"12").unwrap();
        assert_eq!(
            super::read_capped(&d.path().join("a"), u64::MAX).unwrap(),
            b"12"
        );
    }
}
