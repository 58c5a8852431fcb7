//! The engine's view of the workers: who offers what, who is fresh, who has
//! room. The daemon feeds it; routing reads it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use workbus_proto::{Capability, Id, Timestamp};

/// How a worker takes work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerKind {
    /// The daemon claims for it and runs one process per task.
    Spawn { concurrency: u32 },
    /// Supervised by the daemon; claims from `tasks/` itself.
    Resident,
    /// Not in the fleet; advertises in `workers/` and claims itself.
    External,
}

/// One worker as the daemon sees it now.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerView {
    pub name: Id,
    pub capabilities: BTreeSet<Capability>,
    pub kind: WorkerKind,
    /// False while in a crash loop (resident) or when the supervisor says so.
    pub healthy: bool,
    /// Its last heartbeat (bus workers).
    pub last_seen: Option<Timestamp>,
    /// Default per-attempt timeout for its tasks.
    pub timeout: Option<Duration>,
    /// Finishing its running tasks before it stops: gets no new work.
    pub draining: bool,
}

impl WorkerView {
    pub fn offers(&self, needs: &[Capability]) -> bool {
        needs.iter().all(|n| self.capabilities.contains(n))
    }
}

/// The capability that means "a person answers with `workbusctl answer`".
pub const HUMAN: &str = "human";

#[derive(Debug, Default)]
pub(crate) struct Workers {
    pub views: BTreeMap<Id, WorkerView>,
    /// Spawned processes in flight per worker (kept for removed workers
    /// until their tasks end).
    pub spawned: HashMap<Id, u32>,
    pub spawned_total: u32,
}

impl Workers {
    /// Whether `w` may be routed to at `now`.
    pub fn fresh(w: &WorkerView, now: Timestamp, lease: Duration) -> bool {
        if !w.healthy || w.draining {
            return false;
        }
        match (w.kind, w.last_seen) {
            (WorkerKind::Spawn { .. }, _) => true,
            (_, Some(seen)) => now.since(seen) <= lease,
            // A resident worker that has not beaten yet is starting up.
            (WorkerKind::Resident, None) => true,
            (WorkerKind::External, None) => false,
        }
    }

    /// Whether some worker that may be routed to offers all of `needs`.
    pub fn served(&self, needs: &[Capability], now: Timestamp, lease: Duration) -> bool {
        if needs.iter().any(|n| n.as_str() == HUMAN) {
            return true;
        }
        self.views
            .values()
            .any(|w| w.offers(needs) && Self::fresh(w, now, lease))
    }

    /// Whether a bus worker (resident or external) offers all of `needs`.
    pub fn bus_offers(&self, needs: &[Capability]) -> bool {
        self.views
            .values()
            .any(|w| !matches!(w.kind, WorkerKind::Spawn { .. }) && w.offers(needs))
    }

    /// The least busy spawn worker with room that offers `needs`.
    pub fn pick_spawn(&self, needs: &[Capability]) -> Option<Id> {
        self.views
            .values()
            .filter_map(|w| match w.kind {
                WorkerKind::Spawn { concurrency }
                    if w.healthy && !w.draining && w.offers(needs) =>
                {
                    let running = self.spawned.get(&w.name).copied().unwrap_or(0);
                    (running < concurrency)
                        .then_some((running as u64 * 1_000_000 / concurrency as u64, &w.name))
                }
                _ => None,
            })
            .min()
            .map(|(_, n)| n.clone())
    }

    /// Free spawn slots over all healthy spawn workers.
    pub fn free_spawn_slots(&self) -> u32 {
        self.views
            .values()
            .filter_map(|w| match w.kind {
                WorkerKind::Spawn { concurrency } if w.healthy && !w.draining => Some(
                    concurrency.saturating_sub(self.spawned.get(&w.name).copied().unwrap_or(0)),
                ),
                _ => None,
            })
            .sum()
    }

    pub fn spawn_started(&mut self, w: &Id) {
        *self.spawned.entry(w.clone()).or_default() += 1;
        self.spawned_total += 1;
    }

    pub fn spawn_ended(&mut self, w: &Id) {
        if let Some(n) = self.spawned.get_mut(w) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.spawned.remove(w);
            }
            self.spawned_total = self.spawned_total.saturating_sub(1);
        }
    }
}
