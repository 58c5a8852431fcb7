//! Scans of the folders others write into: `claimed/`, `results/`,
//! `workers/`. Each scan reads the folder as it is now and feeds what is new
//! to the engine.

use std::time::Duration;

use workbus_bus::{Folder, ReadError, read_json};
use workbus_engine::Input;
use workbus_proto::names::AttemptKey;
use workbus_proto::result::ResultRecord;
use workbus_proto::worker::WorkerAd;
use workbus_proto::{Id, Timestamp};

use crate::daemon::Daemon;

/// Heartbeats are small; anything bigger is not one.
const MAX_AD_BYTES: u64 = 64 * 1024;

impl Daemon {
    /// Lists a bus folder; on error, logs and retries the scan later.
    pub(crate) fn list_folder(&mut self, f: Folder) -> Option<Vec<String>> {
        match workbus_bus::list(&self.bus.dir(f)) {
            Ok(names) => {
                // Forget what the folder no longer holds.
                if !self.complete.is_empty() || !self.unsettled.is_empty() {
                    let present: std::collections::HashSet<&str> =
                        names.iter().map(String::as_str).collect();
                    self.complete
                        .retain(|(g, n)| *g != f || present.contains(n.as_str()));
                    self.unsettled
                        .retain(|(g, n), _| *g != f || present.contains(n.as_str()));
                }
                Some(names)
            }
            Err(e) => {
                tracing::error!(path = %self.bus.dir(f).display(), "cannot list the folder: {e}; retrying");
                self.rescan_later(f, Duration::from_secs(1));
                None
            }
        }
    }

    /// New claims. Returns whether anything was new.
    pub(crate) fn scan_claimed(&mut self) -> bool {
        let Some(names) = self.list_folder(Folder::Claimed) else {
            return false;
        };
        let mut any = false;
        let present: std::collections::HashSet<&String> = names.iter().collect();
        self.claims_seen.retain(|n| present.contains(n));
        for name in &names {
            if self.claims_seen.contains(name) {
                continue;
            }
            self.claims_seen.insert(name.clone());
            let Some((key, worker)) = AttemptKey::parse_claim_name(name) else {
                tracing::warn!(path = %self.bus.path(Folder::Claimed, name).display(), "not a claim name (<goal>.<task>.<attempt>.<worker>.json); ignored");
                continue;
            };
            any = true;
            self.claim_names.insert(key.clone(), name.clone());
            self.feed(Input::Claimed { key, worker });
        }
        any
    }

    /// New results. Returns whether anything was new.
    pub(crate) fn scan_results(&mut self) -> bool {
        let Some(names) = self.list_folder(Folder::Results) else {
            return false;
        };
        let mut any = false;
        for name in names {
            // A long burst must not starve the watchdog.
            self.notifier.pet();
            if self.results_held.contains(&name) {
                continue;
            }
            let Some(key) = AttemptKey::parse_file_name(&name) else {
                self.reject_file(
                    Folder::Results,
                    &name,
                    None,
                    "not a result name (<goal>.<task>.<attempt>.json)".into(),
                );
                any = true;
                continue;
            };
            // A spawned program may write its result file while it runs; it
            // is read when the program exits.
            if self.spawns.contains_key(&key) || !self.settled(Folder::Results, &name) {
                continue;
            }
            any = true;
            let path = self.bus.path(Folder::Results, &name);
            match read_json::<ResultRecord>(&path, self.cfg.max_result_bytes) {
                Ok(result) => self.feed(Input::Result { key, result }),
                Err(ReadError::Vanished) => {}
                Err(e) if e.is_transient() => {
                    tracing::warn!(path = %path.display(), "cannot read a result yet: {e}");
                    self.rescan_later(Folder::Results, Duration::from_millis(500));
                }
                Err(e) => self.feed(Input::BadResult {
                    key,
                    error: format!("results/{name}: {e}"),
                }),
            }
        }
        any
    }

    /// Heartbeats and advertisements. Returns whether the worker set changed.
    pub(crate) fn scan_workers(&mut self) -> bool {
        let Some(names) = self.list_folder(Folder::Workers) else {
            return false;
        };
        let mut external = std::collections::BTreeMap::new();
        let mut changed = false;
        for name in names {
            let Some(stem) = name.strip_suffix(".json") else {
                continue;
            };
            if !self.settled(Folder::Workers, &name) {
                continue;
            }
            let path = self.bus.path(Folder::Workers, &name);
            let mut ad = match read_json::<WorkerAd>(&path, MAX_AD_BYTES) {
                Ok(ad) if ad.name.as_str() == stem => ad,
                Ok(ad) => {
                    self.bad_ad(
                        &name,
                        format!(
                            "it names worker {:?}, but the file is {name}",
                            ad.name.as_str()
                        ),
                    );
                    continue;
                }
                Err(ReadError::Vanished) => continue,
                Err(e) => {
                    self.bad_ad(&name, e.to_string());
                    continue;
                }
            };
            self.fleet.bad_ads.remove(&name);
            // A worker of this host whose process is gone is gone now, not
            // when its lease runs out.
            if !ad.stopping && !process_alive(&ad) {
                ad.stopping = true;
            }
            if let Some(fw) = self.fleet.workers.get_mut(&ad.name) {
                if fw.last_seen != Some(ad.last_seen) {
                    fw.last_seen = Some(ad.last_seen);
                    changed = true;
                }
            } else {
                external.insert(ad.name.clone(), ad);
            }
        }
        if external != self.fleet.external {
            for (name, ad) in &external {
                if !self.fleet.external.contains_key(name) {
                    tracing::info!(
                        WORKER = name.as_str(),
                        "external worker {name} on {} offers {}",
                        ad.host,
                        caps(&ad.capabilities)
                    );
                }
            }
            self.fleet.external = external;
            changed = true;
        }
        if changed {
            self.fleet_changed();
        }
        changed
    }

    fn bad_ad(&mut self, name: &str, error: String) {
        if self.fleet.bad_ads.get(name) != Some(&error) {
            tracing::warn!(path = %self.bus.path(Folder::Workers, name).display(), "ignoring a worker advertisement: {error}");
            self.fleet.bad_ads.insert(name.to_string(), error);
        }
    }

    /// Tells the engine the workers changed.
    pub(crate) fn fleet_changed(&mut self) {
        let views = self.fleet.views();
        self.feed(Input::Workers(views));
    }

    /// Whether a bus worker's claim can still be answered: its heartbeat is
    /// fresh, and, on this host, its process is alive.
    pub(crate) fn claimant_alive(&self, worker: &Id, now: Timestamp) -> bool {
        if self.fleet.workers.contains_key(worker) {
            // Our own workers died with the daemon that started them.
            return false;
        }
        let Some(ad) = self.fleet.external.get(worker) else {
            return false;
        };
        if ad.stopping || now.since(ad.last_seen) > self.cfg.lease_timeout.0 {
            return false;
        }
        process_alive(ad)
    }
}

pub(crate) fn caps(c: &[workbus_proto::Capability]) -> String {
    c.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(", ")
}

/// False only for a worker of this host whose pid does not exist.
fn process_alive(ad: &WorkerAd) -> bool {
    static HOST: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let host = HOST.get_or_init(|| {
        nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_default()
    });
    if ad.host != *host || ad.pid == 0 {
        return true;
    }
    !matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(ad.pid as i32), None),
        Err(nix::errno::Errno::ESRCH)
    )
}
