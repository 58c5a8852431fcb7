//! Writes that failed (disk full, permission denied, I/O error) wait here
//! and are retried with backoff, in order. Each write is atomic, so a
//! failure never leaves half a record; while any write waits, later ones
//! queue behind it so that the bus never shows a later state without an
//! earlier one.

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use workbus_proto::Id;
use workbus_proto::task::TaskRecord;
use workbus_supervisor::Backoff;

use crate::spawn::Claim;

/// One deferred operation.
#[derive(Debug)]
pub enum Op {
    Write {
        dir: PathBuf,
        name: String,
        bytes: Vec<u8>,
        durable: bool,
    },
    /// Start a spawn whose task or claim file was itself deferred.
    Dispatch {
        worker: Id,
        record: Arc<TaskRecord>,
        how: Claim,
    },
}

#[derive(Debug)]
pub struct Pending {
    ops: VecDeque<Op>,
    next_try: Option<Instant>,
    backoff: Backoff,
    /// The error last logged, so a long outage logs once, not per retry.
    last_error: Option<String>,
}

impl Default for Pending {
    fn default() -> Self {
        Pending {
            ops: VecDeque::new(),
            next_try: None,
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(5)),
            last_error: None,
        }
    }
}

impl Pending {
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn next_try(&self) -> Option<Instant> {
        self.next_try
    }

    /// Writes now if nothing waits, else queues. Returns whether it was
    /// written now.
    pub fn write(&mut self, dir: &Path, name: &str, bytes: Vec<u8>, durable: bool) -> bool {
        self.write_with(dir, name, bytes, durable, |d, n, b| {
            workbus_bus::write_atomic(d, n, b, durable)
        })
    }

    /// Like [`Pending::write`] with `durable`, except that when written now
    /// the folder is left for the caller to fsync (see
    /// [`workbus_bus::write_atomic_data`]). A write that has to wait is
    /// made fully durable when its turn comes.
    pub fn write_data(&mut self, dir: &Path, name: &str, bytes: Vec<u8>) -> bool {
        self.write_with(dir, name, bytes, true, workbus_bus::write_atomic_data)
    }

    /// Writes with `now` if nothing waits, else queues a write (made
    /// durable when its turn comes if `durable`).
    fn write_with(
        &mut self,
        dir: &Path,
        name: &str,
        bytes: Vec<u8>,
        durable: bool,
        now: impl FnOnce(&Path, &str, &[u8]) -> io::Result<()>,
    ) -> bool {
        if self.ops.is_empty() {
            match now(dir, name, &bytes) {
                Ok(()) => return true,
                Err(e) => self.failed(&dir.join(name), &e),
            }
        }
        self.ops.push_back(Op::Write {
            dir: dir.to_path_buf(),
            name: name.to_string(),
            bytes,
            durable,
        });
        false
    }

    pub fn push(&mut self, op: Op) {
        self.ops.push_back(op);
        if self.next_try.is_none() {
            self.next_try = Some(Instant::now());
        }
    }

    /// Whether a task file for `name` in `tasks/` is still waiting.
    pub fn holds(&self, name: &str) -> bool {
        self.ops
            .iter()
            .any(|op| matches!(op, Op::Write { name: n, .. } if n == name))
    }

    fn failed(&mut self, path: &Path, e: &io::Error) {
        let msg = format!("{}: {e}", path.display());
        if self.last_error.as_deref() != Some(msg.as_str()) {
            tracing::error!(
                path = %path.display(),
                "cannot write {msg}; the write is kept and retried with backoff until it succeeds"
            );
            self.last_error = Some(msg);
        }
        self.next_try = Some(Instant::now() + self.backoff.next_delay());
    }

    /// Retries queued operations in order while they succeed. Returns the
    /// dispatches that may now start.
    pub fn retry(&mut self) -> Vec<(Id, Arc<TaskRecord>, Claim)> {
        let mut ready = Vec::new();
        while let Some(op) = self.ops.front() {
            match op {
                Op::Write {
                    dir,
                    name,
                    bytes,
                    durable,
                } => {
                    if let Err(e) = workbus_bus::write_atomic(dir, name, bytes, *durable) {
                        let path = dir.join(name);
                        self.failed(&path, &e);
                        return ready;
                    }
                }
                Op::Dispatch {
                    worker,
                    record,
                    how,
                } => ready.push((worker.clone(), record.clone(), *how)),
            }
            self.ops.pop_front();
        }
        if self.last_error.take().is_some() {
            tracing::info!("the bus is writable again; every deferred write is done");
        }
        self.backoff.reset();
        self.next_try = None;
        ready
    }
}
