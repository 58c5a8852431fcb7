//! Recovery: at start, the state is rebuilt from the bus alone. Goals
//! without a report are replayed from their task, claim and result files;
//! what a crash interrupted (an accepted goal still in the inbox, files of
//! finished goals still in the hot folders) is finished.

use std::collections::HashMap;
use std::time::Instant;

use workbus_bus::{Folder, ReadError, read_json};
use workbus_engine::{AttemptFacts, ClaimFacts, History, Input};
use workbus_proto::goal::Goal;
use workbus_proto::names::{ArchiveKind, AttemptKey};
use workbus_proto::report::Report;
use workbus_proto::result::ResultRecord;
use workbus_proto::{Id, Timestamp};

use crate::daemon::Daemon;

/// What the bus holds, per goal and task: a few attempts each, kept in
/// vectors of exactly that size (a map per task costs kilobytes).
#[derive(Default)]
struct Found {
    facts: HashMap<Id, HashMap<Id, Vec<AttemptFacts>>>,
}

impl Found {
    fn entry(&mut self, key: &AttemptKey) -> &mut AttemptFacts {
        let attempts = self
            .facts
            .entry(key.goal.clone())
            .or_default()
            .entry(key.task.clone())
            .or_insert_with(|| Vec::with_capacity(1));
        match attempts.iter().position(|f| f.attempt == key.attempt) {
            Some(i) => &mut attempts[i],
            None => {
                attempts.push(AttemptFacts {
                    attempt: key.attempt,
                    ..AttemptFacts::default()
                });
                attempts.last_mut().expect("just pushed")
            }
        }
    }
}

impl Daemon {
    /// Removes temporaries that a killed daemon left behind (its own
    /// `.<name>.<pid>.<n>.tmp` files, where that pid is gone).
    pub(crate) fn remove_dead_temporaries(&mut self, dirs: &[std::path::PathBuf]) {
        for dir in dirs {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name();
                let Some(name) = name.to_str() else { continue };
                if let Some(pid) = temporary_owner(name)
                    && pid != std::process::id()
                    && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None)
                        == Err(nix::errno::Errno::ESRCH)
                {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }

    /// Stops task processes that a killed daemon left running on this bus.
    /// Spawned tasks start without a parent-death signal (a clone or
    /// posix_spawn, not a fork); under systemd the unit's cgroup takes
    /// them, and here, at the next start, the environment they were given
    /// identifies them: `WORKBUS_ROOT` is this bus and `WORKBUS_TASK_FILE`
    /// is set.
    pub(crate) fn stop_orphans(&mut self) {
        let root = format!("WORKBUS_ROOT={}", self.root().display());
        let me = std::process::id();
        let Ok(procs) = std::fs::read_dir("/proc") else {
            return;
        };
        let mut groups = std::collections::BTreeSet::new();
        for e in procs.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            if pid as u32 == me {
                continue;
            }
            let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
                continue;
            };
            let mut ours = false;
            let mut task = false;
            for var in env.split(|b| *b == 0) {
                ours |= var == root.as_bytes();
                task |= var.starts_with(b"WORKBUS_TASK_FILE=");
            }
            if ours
                && task
                && let Ok(pgid) = nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(pid)))
            {
                groups.insert(pgid);
            }
        }
        for pgid in &groups {
            let _ = nix::sys::signal::killpg(*pgid, nix::sys::signal::Signal::SIGKILL);
        }
        if !groups.is_empty() {
            tracing::warn!(
                "stopped {} task process group(s) left running by a previous daemon on this bus",
                groups.len()
            );
        }
    }

    pub(crate) fn recover(&mut self) {
        self.stop_orphans();
        let t0 = Instant::now();
        let mut ours: Vec<std::path::PathBuf> = [
            Folder::Tasks,
            Folder::Goals,
            Folder::Reports,
            Folder::Rejected,
        ]
        .iter()
        .map(|f| self.bus.dir(*f))
        .collect();
        ours.push(self.bus.root().to_path_buf());
        let now = Timestamp::now();
        let Some(goal_names) = self.list_folder(Folder::Goals) else {
            return;
        };
        let reports: std::collections::HashSet<String> = self
            .list_folder(Folder::Reports)
            .unwrap_or_default()
            .into_iter()
            .collect();
        let mut goals: Vec<Goal> = Vec::new();
        let mut sources: HashMap<String, (Id, String)> = HashMap::new();
        for name in &goal_names {
            if reports.contains(name) {
                continue;
            }
            let path = self.bus.path(Folder::Goals, name);
            match read_json::<Goal>(&path, u64::MAX) {
                Ok(g) => {
                    if let Some(src) = &g.source {
                        sources.insert(src.name.clone(), (g.id.clone(), src.text.clone()));
                    }
                    goals.push(g);
                }
                Err(e) => {
                    tracing::error!(path = %path.display(), "cannot recover an accepted goal: {e}")
                }
            }
        }
        let in_flight: std::collections::HashSet<Id> = goals.iter().map(|g| g.id.clone()).collect();
        ours.extend(in_flight.iter().map(|g| self.bus.archive_dir(g)));
        self.remove_dead_temporaries(&ours);
        let mut found = Found::default();
        let mut stray: Vec<std::path::PathBuf> = Vec::new();
        let mut files = 0usize;

        for name in self.list_folder(Folder::Tasks).unwrap_or_default() {
            files += 1;
            match AttemptKey::parse_file_name(&name) {
                Some(key) if in_flight.contains(&key.goal) => found.entry(&key).published = true,
                _ => stray.push(self.bus.path(Folder::Tasks, &name)),
            }
        }
        for name in self.list_folder(Folder::Claimed).unwrap_or_default() {
            files += 1;
            match AttemptKey::parse_claim_name(&name) {
                Some((key, worker)) if in_flight.contains(&key.goal) => {
                    let alive = self.claimant_alive(&worker, now);
                    found.entry(&key).claim = Some(ClaimFacts { worker, alive });
                    self.claim_names.insert(key, name.clone());
                    self.claims_seen.insert(name);
                }
                _ => stray.push(self.bus.path(Folder::Claimed, &name)),
            }
        }
        let mut archived: Vec<(AttemptKey, std::path::PathBuf)> = Vec::new();
        for goal in &goals {
            let dir = self.bus.archive_dir(&goal.id);
            let Ok(names) = workbus_bus::list_by_inode(&dir) else {
                continue;
            };
            for name in names {
                if let Some((key, ArchiveKind::Result)) =
                    AttemptKey::parse_archive_name(&goal.id, &name)
                {
                    archived.push((key, dir.join(&name)));
                }
            }
        }
        files += archived.len();
        read_results(archived, self.cfg.max_result_bytes, |key, result| {
            let f = found.entry(&key);
            f.result = Some(result);
            f.archived = true;
        });
        let mut waiting: Vec<(AttemptKey, std::path::PathBuf)> = Vec::new();
        let results_dir = self.bus.dir(Folder::Results);
        let listed = workbus_bus::list_by_inode(&results_dir).unwrap_or_else(|e| {
            tracing::error!(path = %results_dir.display(), "cannot list the folder: {e}; retrying");
            self.rescan_later(Folder::Results, std::time::Duration::from_secs(1));
            Vec::new()
        });
        for name in listed {
            files += 1;
            match AttemptKey::parse_file_name(&name) {
                Some(key) if in_flight.contains(&key.goal) => {
                    if found.entry(&key).archived {
                        // The attempt already has its result: this one is late.
                        continue;
                    }
                    waiting.push((key, results_dir.join(&name)));
                }
                // Results of finished goals are left for the results scan,
                // which files them as stale.
                _ => {}
            }
        }
        read_results(waiting, self.cfg.max_result_bytes, |key, result| {
            found.entry(&key).result = Some(result);
        });
        // Finished goals' leftovers go to their archives.
        for path in stray {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string();
            let key = AttemptKey::parse_file_name(&name)
                .or_else(|| AttemptKey::parse_claim_name(&name).map(|(k, _)| k));
            match key {
                Some(key) => {
                    self.ensure_archive_dir(&key.goal);
                    let _ = std::fs::rename(&path, self.bus.archive_path(&key, ArchiveKind::Task));
                }
                None => tracing::warn!(path = %path.display(), "not a bus file name; left alone"),
            }
        }
        // An accepted goal whose file is still in the inbox: finish the move.
        for name in self.list_folder(Folder::Inbox).unwrap_or_default() {
            if let Some((id, text)) = sources.get(&name) {
                let path = self.bus.path(Folder::Inbox, &name);
                if std::fs::read(&path).is_ok_and(|b| b == text.as_bytes())
                    && let Some(format) = workbus_proto::Format::from_path(&path)
                {
                    tracing::info!(
                        GOAL = id.as_str(),
                        "{id}: finishing the move of inbox/{name} into the archive"
                    );
                    // Its goals/ file may still be only in the page cache
                    // (the daemon was killed, the machine did not stop).
                    self.make_goal_durable(id, &name, format, None);
                }
            }
        }
        let n = goals.len();
        for goal in goals {
            let history: History = found
                .facts
                .remove(&goal.id)
                .unwrap_or_default()
                .into_iter()
                .collect();
            self.feed(Input::Recover { goal, history });
        }
        tracing::info!(
            "recovered {n} goal(s) in flight from {files} task, claim and result files in {:.0?}",
            t0.elapsed()
        );
    }

    /// Removes the archives (and accepted goal files) of goals that ended
    /// longer than `archive_retention` ago. Runs when the daemon is idle, at
    /// most hourly, so pruning never competes with work.
    pub(crate) fn prune_archive(&mut self) {
        if self
            .last_prune
            .is_some_and(|t| t.elapsed() < std::time::Duration::from_secs(3600))
        {
            return;
        }
        self.last_prune = Some(Instant::now());
        let retention = self.cfg.archive_retention.0;
        let now = Timestamp::now();
        let Ok(names) = workbus_bus::list(&self.bus.dir(Folder::Archive)) else {
            return;
        };
        let mut pruned = 0;
        for name in names {
            let Ok(id) = Id::new(name.clone()) else {
                continue;
            };
            let report = self.bus.report_path(&id);
            let finished = match read_json::<Report>(&report, u64::MAX) {
                Ok(r) => r.finished_at,
                Err(_) => continue,
            };
            if now.since(finished) > retention {
                let dir = self.bus.archive_dir(&id);
                if let Err(e) = workbus_bus::remove_dir_all_quiet(&dir) {
                    tracing::warn!(path = %dir.display(), "cannot prune: {e}");
                    continue;
                }
                let _ = std::fs::remove_file(self.bus.goal_path(&id));
                pruned += 1;
            }
        }
        if pruned > 0 {
            tracing::info!(
                "pruned the archives of {pruned} goal(s) older than {}",
                self.cfg.archive_retention
            );
        }
    }
}

fn read_result(path: &std::path::Path, limit: u64) -> Result<ResultRecord, String> {
    read_json::<ResultRecord>(path, limit)
        .map_err(|e: ReadError| format!("{}: {e}", path.display()))
}

/// Threads reading results at a restart. With a cold page cache
/// each read waits on the disk: reads in parallel keep its queue full.
/// (A cold restart with 50 000 archived results: READY=1 after 1.38-1.48 s
/// with 64, 1.57-1.79 s with 16, ten alternations.)
const READERS: usize = 64;

/// Files a reader takes at a time.
const BLOCK: usize = 64;

/// Reads many result files, in parallel when there are many, handing each
/// to `sink` as it comes (in no particular order; a bounded channel keeps
/// few of them in memory at once). The readers take the files in the
/// order given, so together they move through it as one would.
fn read_results(
    files: Vec<(AttemptKey, std::path::PathBuf)>,
    limit: u64,
    mut sink: impl FnMut(AttemptKey, Result<ResultRecord, String>),
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let wanted = READERS.min(files.len() / BLOCK);
    let next = AtomicUsize::new(0);
    let spawned = if wanted > 1 {
        std::thread::scope(|s| {
            let (tx, rx) = std::sync::mpsc::sync_channel(2 * READERS);
            let mut spawned = 0;
            for _ in 0..wanted {
                let tx = tx.clone();
                let (files, next) = (&files, &next);
                let reader = std::thread::Builder::new()
                    .name("workbusd-recover".into())
                    .spawn_scoped(s, move || {
                        loop {
                            let from = next.fetch_add(BLOCK, Ordering::Relaxed);
                            let Some(block) = files.get(from..(from + BLOCK).min(files.len()))
                            else {
                                return;
                            };
                            if block.is_empty() {
                                return;
                            }
                            let read: Vec<_> =
                                block.iter().map(|(_, p)| read_result(p, limit)).collect();
                            if tx.send((from, read)).is_err() {
                                return;
                            }
                        }
                    });
                spawned += usize::from(reader.is_ok());
            }
            drop(tx);
            for (from, read) in rx {
                for (i, r) in (from..).zip(read) {
                    sink(files[i].0.clone(), r);
                }
            }
            spawned
        })
    } else {
        0
    };
    if spawned == 0 {
        // Few files, or no thread to spare: one after the other, here.
        for (key, path) in files {
            let r = read_result(&path, limit);
            sink(key, r);
        }
    }
}

/// The pid in a temporary name written by `workbus_bus::write_atomic`:
/// `.<name>.<pid>.<n>.tmp`.
fn temporary_owner(name: &str) -> Option<u32> {
    let inner = name.strip_prefix('.')?.strip_suffix(".tmp")?;
    let mut parts = inner.rsplitn(3, '.');
    let _n: u64 = parts.next()?.parse().ok()?;
    parts.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use workbus_proto::Id;
    use workbus_proto::names::AttemptKey;
    use workbus_proto::result::ResultRecord;

    /// Many results are read by several threads: each one reaches the sink
    /// once, with its own key, and a bad file is an error for its key only.
    #[test]
    fn results_read_in_parallel_arrive_once_each() {
        let d = tempfile::tempdir().unwrap();
        let goal = Id::new("g").unwrap();
        let mut files = Vec::new();
        for i in 0..1000u32 {
            let task = Id::new(format!("t{i}")).unwrap();
            let path = d.path().join(format!("t{i}.json"));
            let body = if i % 97 == 0 {
                b"{ not json".to_vec()
            } else {
                crate::daemon::json_bytes(&ResultRecord::ok(serde_json::json!(i)))
            };
            std::fs::write(&path, body).unwrap();
            files.push((AttemptKey::new(goal.clone(), task, 1), path));
        }
        let mut seen = std::collections::HashMap::new();
        super::read_results(files, 1 << 20, |key, r| {
            assert!(seen.insert(key.task.to_string(), r).is_none(), "twice");
        });
        assert_eq!(seen.len(), 1000);
        for i in 0..1000u32 {
            match &seen[&format!("t{i}")] {
                Ok(r) => {
                    assert_ne!(i % 97, 0);
                    assert_eq!(r.output, Some(serde_json::json!(i)));
                }
                Err(e) => {
                    assert_eq!(i % 97, 0);
                    assert!(e.contains(&format!("t{i}.json")), "{e}");
                }
            }
        }
        // A few files are read where they are asked for, without threads.
        let one = vec![(
            AttemptKey::new(goal.clone(), Id::new("t1").unwrap(), 1),
            d.path().join("t1.json"),
        )];
        let mut n = 0;
        super::read_results(one, 1 << 20, |_, r| {
            assert!(r.is_ok());
            n += 1;
        });
        assert_eq!(n, 1);
    }

    #[test]
    fn temporary_owners() {
        assert_eq!(super::temporary_owner(".g.t.1.json.4242.7.tmp"), Some(4242));
        assert_eq!(super::temporary_owner("g.t.1.json"), None);
        assert_eq!(super::temporary_owner(".x.tmp"), None);
    }
}
