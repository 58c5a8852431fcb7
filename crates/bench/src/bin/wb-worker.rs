//! wb-worker: a resident bus worker that does no work (echo), written for
//! the benchmarks: it follows docs/PROTOCOL.md with as little overhead as
//! the protocol allows.
//!
//! Environment (as workbusd passes it to resident workers): WORKBUS_ROOT,
//! WORKBUS_WORKER, WORKBUS_CAPABILITIES, WORKBUS_HEARTBEAT_INTERVAL; and
//! WORKBUS_FSYNC=0 to skip fsync of results (the "fsync off" runs).
//!
//! Echo: the output of a task with one dependency is that dependency's
//! output, with several the map of their outputs, without any its input.
//! It waits for task files renamed into tasks/ (inotify names them; the
//! folder is listed only at the start and after the event queue
//! overflowed). Every task of one wake-up is claimed and done, then their
//! results are written, each fsynced, renamed into place, and results/ is
//! fsynced once for the batch.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use serde_json::Value;
use workbus_proto::task::TaskRecord;
use workbus_proto::{SCHEMA_VERSION, Timestamp};

struct Worker {
    root: PathBuf,
    name: String,
    caps: BTreeSet<String>,
    fsync: bool,
    started_at: Timestamp,
    /// Task files whose needs this worker does not meet.
    unsuitable: BTreeSet<String>,
    seq: u64,
}

fn main() -> anyhow::Result<()> {
    let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_string());
    let mut w = Worker {
        root: PathBuf::from(env("WORKBUS_ROOT", "/var/lib/workbus")),
        name: env(
            "WORKBUS_WORKER",
            &format!("wb-worker-{}", std::process::id()),
        ),
        caps: env("WORKBUS_CAPABILITIES", "echo")
            .split(',')
            .filter(|c| !c.is_empty())
            .map(str::to_string)
            .collect(),
        fsync: env("WORKBUS_FSYNC", "1") != "0",
        started_at: Timestamp::now(),
        unsuitable: BTreeSet::new(),
        seq: 0,
    };
    let heartbeat = Duration::from_secs_f64(
        env("WORKBUS_HEARTBEAT_INTERVAL", "30")
            .parse()
            .unwrap_or(30.0),
    );
    // The daemon writes a task under a dot-name and renames it into tasks/:
    // the rename is the one event to wait for, and it names the task.
    let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
    inotify.add_watch(&w.root.join("tasks"), AddWatchFlags::IN_MOVED_TO)?;
    w.beat()?;
    let mut next_beat = Instant::now() + heartbeat;
    // What was there before the watch began: one look at the folder.
    let mut names = w.listing();
    loop {
        w.round(std::mem::take(&mut names))?;
        let wait = next_beat.saturating_duration_since(Instant::now());
        let timeout = PollTimeout::try_from(wait.as_millis().min(i32::MAX as u128) as i32)
            .unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(inotify.as_fd(), PollFlags::POLLIN)];
        let _ = poll(&mut fds, timeout);
        let mut overflowed = false;
        while let Ok(events) = inotify.read_events() {
            if events.is_empty() {
                break;
            }
            for e in events {
                if e.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                    overflowed = true;
                } else if let Some(name) = e.name.and_then(|n| n.into_string().ok()) {
                    names.push(name);
                }
            }
        }
        if overflowed {
            names = w.listing();
        }
        if Instant::now() >= next_beat {
            w.beat()?;
            next_beat = Instant::now() + heartbeat;
        }
    }
}

impl Worker {
    fn dir(&self, d: &str) -> PathBuf {
        self.root.join(d)
    }

    /// The task files in tasks/ now.
    fn listing(&self) -> Vec<String> {
        match fs::read_dir(self.dir("tasks")) {
            Ok(rd) => rd
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Claims and does every task of `names` it can.
    fn round(&mut self, mut names: Vec<String>) -> anyhow::Result<()> {
        names.retain(|n| {
            !n.starts_with('.') && n.ends_with(".json") && !self.unsuitable.contains(n)
        });
        if names.is_empty() {
            return Ok(());
        }
        // Workers start at different places in the list, so that they do
        // not all race for the same file.
        let offset = (hash(&self.name) as usize) % names.len();
        names.rotate_left(offset);
        let mut done: Vec<(String, Vec<u8>)> = Vec::new();
        for name in names {
            let Some(task) = self.try_claim(&name)? else {
                continue;
            };
            let stem = name.trim_end_matches(".json");
            let output = echo(&task);
            let now = Timestamp::now();
            let result = serde_json::json!({
                "schema_version": SCHEMA_VERSION,
                "goal": task.goal,
                "task": task.task,
                "attempt": task.attempt,
                "worker": self.name,
                "status": "ok",
                "output": output,
                "started_at": now,
                "finished_at": now,
            });
            done.push((format!("{stem}.json"), serde_json::to_vec(&result)?));
        }
        if done.is_empty() {
            return Ok(());
        }
        self.publish_results(&done)
    }

    /// Reads a task; claims it by rename if its needs are met.
    fn try_claim(&mut self, name: &str) -> anyhow::Result<Option<TaskRecord>> {
        let path = self.dir("tasks").join(name);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(_) => return Ok(None),
        };
        let Ok(task) = serde_json::from_slice::<TaskRecord>(&bytes) else {
            return Ok(None);
        };
        if !task.needs.iter().all(|n| self.caps.contains(n.as_str())) {
            self.unsuitable.insert(name.to_string());
            return Ok(None);
        }
        let stem = name.trim_end_matches(".json");
        let claimed = self
            .dir("claimed")
            .join(format!("{stem}.{}.json", self.name));
        match fs::rename(&path, &claimed) {
            Ok(()) => Ok(Some(task)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Writes a batch of results: every file first, then (with fsync) each
    /// fdatasynced, then the renames and one fsync of the folder.
    fn publish_results(&mut self, done: &[(String, Vec<u8>)]) -> anyhow::Result<()> {
        let dir = self.dir("results");
        let mut tmps = Vec::with_capacity(done.len());
        for (name, bytes) in done {
            self.seq += 1;
            let tmp = dir.join(format!(".{name}.{}.{}.tmp", std::process::id(), self.seq));
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o660)
                .open(&tmp)?;
            f.write_all(bytes)?;
            tmps.push((tmp, dir.join(name), f));
        }
        if self.fsync {
            // Per file, not syncfs: syncfs would also flush everybody
            // else's dirty data on the filesystem.
            for (_, _, f) in &tmps {
                f.sync_data()?;
            }
        }
        // Closed before the renames: a file closed after its rename would
        // tell the daemon's watch a second time that it is complete.
        for (tmp, dst, f) in tmps {
            drop(f);
            fs::rename(tmp, dst)?;
        }
        if self.fsync {
            fs::File::open(&dir)?.sync_all()?;
        }
        Ok(())
    }

    fn beat(&self) -> anyhow::Result<()> {
        let ad = serde_json::json!({
            "schema_version": SCHEMA_VERSION,
            "name": self.name,
            "host": nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_default(),
            "pid": std::process::id(),
            "capabilities": self.caps,
            "concurrency": 1,
            "last_seen": Timestamp::now(),
            "started_at": self.started_at,
        });
        workbus_bus::write_atomic(
            &self.dir("workers"),
            &format!("{}.json", self.name),
            &serde_json::to_vec(&ad)?,
            false,
        )?;
        Ok(())
    }
}

fn echo(task: &TaskRecord) -> Value {
    match task.deps.len() {
        0 => task.input.clone(),
        1 => task
            .deps
            .values()
            .next()
            .map(|d| d.output.clone())
            .unwrap_or(Value::Null),
        _ => Value::Object(
            task.deps
                .iter()
                .map(|(k, v)| (k.clone(), v.output.clone()))
                .collect(),
        ),
    }
}

fn hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}
