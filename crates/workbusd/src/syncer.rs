//! The fsync thread: makes files and folders durable off the event loop
//! (results of spawns in batches, an accepted goal with its folders, the
//! folder of a report whose data is already on disk). The loop goes on
//! while the disk works and waits only where something must not be written
//! before them (see `Daemon::make_durable` and `Daemon::wait_goal_durable`).
//!
//! Jobs run one at a time in the order given, so "job n is done" means
//! every job before it is done too.

use std::io;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;
use workbus_bus::WriteBatch;

use crate::event::Event;

/// One job: a batch to commit.
#[derive(Debug)]
pub struct Job {
    pub batch: WriteBatch,
    /// Whether the loop waits for this job: its end then sends
    /// `Event::Synced` (others are collected with the next one).
    pub wake: bool,
}

/// A job done: its number, its outcome, and its batch (holding what is not
/// yet durable when it failed, to be tried again).
pub type Done = (u64, io::Result<()>, WriteBatch);

#[derive(Default)]
struct State {
    /// The last job done (jobs are numbered from 1).
    done: u64,
    /// Jobs done and not yet collected.
    finished: Vec<Done>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    cv: Condvar,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn finish(&self, id: u64, mut job: Job) {
        let r = job.batch.commit();
        let mut s = self.lock();
        s.done = id;
        s.finished.push((id, r, job.batch));
        self.cv.notify_all();
    }
}

pub struct Syncer {
    /// None when no thread could be started: jobs then run in the caller.
    tx: Option<Sender<(u64, Job)>>,
    shared: Arc<Shared>,
    last: u64,
}

impl std::fmt::Debug for Syncer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Syncer")
            .field("threaded", &self.tx.is_some())
            .field("last", &self.last)
            .finish_non_exhaustive()
    }
}

impl Syncer {
    /// Starts the thread. A finished job that asks for it sends
    /// `Event::Synced` on `wake`, so that the loop collects it at once.
    /// `delay`: a test-only pause before each job (see `Options::sync_delay`).
    pub fn start(wake: UnboundedSender<Event>, delay: Option<Duration>) -> Syncer {
        let shared = Arc::new(Shared::default());
        let (tx, rx) = channel::<(u64, Job)>();
        let theirs = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("workbusd-sync".into())
            .spawn(move || serve(&rx, &theirs, &wake, delay));
        let tx = match spawned {
            Ok(_) => Some(tx),
            Err(e) => {
                tracing::warn!("cannot start the fsync thread ({e}); fsyncs run on the event loop");
                None
            }
        };
        Syncer {
            tx,
            shared,
            last: 0,
        }
    }

    /// Queues `job`; returns its number.
    pub fn submit(&mut self, job: Job) -> u64 {
        self.last += 1;
        let id = self.last;
        let job = match &self.tx {
            Some(tx) => match tx.send((id, job)) {
                Ok(()) => return id,
                // The thread is gone (it ends only when this side of the
                // channel is dropped, so this is a safety net): run it here.
                Err(std::sync::mpsc::SendError((_, job))) => {
                    self.tx = None;
                    job
                }
            },
            None => job,
        };
        self.shared.finish(id, job);
        id
    }

    /// Whether job `id` is done.
    pub fn is_done(&self, id: u64) -> bool {
        self.lock().done >= id
    }

    /// Blocks until job `id` (and so every job before it) is done.
    pub fn wait(&self, id: u64) {
        let mut s = self.lock();
        while s.done < id {
            s = self
                .shared
                .cv
                .wait(s)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Blocks until every job queued so far is done.
    pub fn wait_all(&self) {
        self.wait(self.last);
    }

    /// The jobs done since the last call, in order.
    pub fn take_finished(&self) -> Vec<Done> {
        std::mem::take(&mut self.lock().finished)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.lock()
    }
}

fn serve(
    rx: &Receiver<(u64, Job)>,
    shared: &Shared,
    wake: &UnboundedSender<Event>,
    delay: Option<Duration>,
) {
    while let Ok((id, job)) = rx.recv() {
        if let Some(d) = delay {
            std::thread::sleep(d);
        }
        let wake_loop = job.wake;
        shared.finish(id, job);
        if wake_loop {
            // The loop may be gone while stopping; it collects by waiting then.
            let _ = wake.send(Event::Synced);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(files: &[&std::path::Path], dirs: &[&std::path::Path], wake: bool) -> Job {
        let mut batch = WriteBatch::new(true);
        for f in files {
            batch.add(f.to_path_buf());
        }
        for d in dirs {
            batch.add_dir(d.to_path_buf());
        }
        Job { batch, wake }
    }

    #[test]
    fn jobs_finish_in_order_and_hand_back_what_failed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.json");
        std::fs::write(&file, b"{}").unwrap();
        let missing = dir.path().join("missing");
        let (wake, mut woken) = tokio::sync::mpsc::unbounded_channel();
        let mut s = Syncer::start(wake, None);
        let good = s.submit(job(&[&file], &[dir.path()], true));
        let bad = s.submit(job(&[], &[&missing], false));
        s.wait_all();
        assert!(s.is_done(good) && s.is_done(bad));
        let done = s.take_finished();
        assert_eq!(done.len(), 2);
        assert_eq!(done[0].0, good);
        assert!(done[0].1.is_ok() && done[0].2.is_empty());
        assert_eq!(done[1].0, bad);
        let e = done[1].1.as_ref().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(e.to_string().contains("missing"), "{e}");
        assert!(
            !done[1].2.is_empty(),
            "the failed batch comes back to be retried"
        );
        assert!(s.take_finished().is_empty());
        // A wake-up for the job that asked for one only.
        assert!(matches!(woken.try_recv(), Ok(Event::Synced)));
        assert!(woken.try_recv().is_err());
    }
}
