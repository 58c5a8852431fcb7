//! A helper thread that makes files and folders durable off the event
//! loop: an accepted goal (its file and `goals/`), and the folder of a
//! report whose data is already on disk. The loop goes on while the disk
//! works and waits only where something must not be written before them
//! (see `Daemon::wait_goal_durable`).
//!
//! Jobs run one at a time in the order given, so "job n is done" means
//! every job before it is done too.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;

use crate::event::Event;

/// What one job makes durable: the data of `files` (fdatasync), then the
/// entries of `dirs` (fsync of each folder).
#[derive(Debug, Default)]
pub struct Job {
    pub files: Vec<PathBuf>,
    pub dirs: Vec<PathBuf>,
    /// Whether the loop waits for this job: its end then sends
    /// `Event::Synced` (others are collected with the next one).
    pub wake: bool,
}

impl Job {
    /// Errors name the file or folder.
    fn run(&self) -> io::Result<()> {
        fn named(p: &Path, e: io::Error) -> io::Error {
            io::Error::new(e.kind(), format!("{}: {e}", p.display()))
        }
        for f in &self.files {
            workbus_bus::sync_file(f).map_err(|e| named(f, e))?;
        }
        for d in &self.dirs {
            workbus_bus::sync_dir(d).map_err(|e| named(d, e))?;
        }
        Ok(())
    }
}

#[derive(Default)]
struct State {
    /// The last job done (jobs are numbered from 1).
    done: u64,
    /// Jobs done and not yet collected, with their outcome.
    finished: Vec<(u64, io::Result<()>)>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    cv: Condvar,
}

impl Shared {
    fn finish(&self, id: u64, r: io::Result<()>) {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        s.done = id;
        s.finished.push((id, r));
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
        self.shared.finish(id, job.run());
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

    /// The jobs done since the last call, with their outcome, in order.
    pub fn take_finished(&self) -> Vec<(u64, io::Result<()>)> {
        std::mem::take(&mut self.lock().finished)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
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
        shared.finish(id, job.run());
        if job.wake {
            // The loop may be gone while stopping; it collects by waiting then.
            let _ = wake.send(Event::Synced);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_finish_in_order_and_report_failures() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.json");
        std::fs::write(&file, b"{}").unwrap();
        let (wake, mut woken) = tokio::sync::mpsc::unbounded_channel();
        let mut s = Syncer::start(wake, None);
        let good = s.submit(Job {
            files: vec![file.clone()],
            dirs: vec![dir.path().to_path_buf()],
            wake: true,
        });
        let bad = s.submit(Job {
            files: vec![dir.path().join("missing.json")],
            dirs: vec![],
            wake: false,
        });
        s.wait_all();
        assert!(s.is_done(good) && s.is_done(bad));
        let done = s.take_finished();
        assert_eq!(done.len(), 2);
        assert_eq!(done[0].0, good);
        assert!(done[0].1.is_ok());
        assert_eq!(done[1].0, bad);
        assert_eq!(
            done[1].1.as_ref().unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        assert!(s.take_finished().is_empty());
        // A wake-up for the job that asked for one only.
        assert!(matches!(woken.try_recv(), Ok(Event::Synced)));
        assert!(woken.try_recv().is_err());
    }
}
