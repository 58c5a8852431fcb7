//! Durability and recovery: kill -9 anywhere loses nothing; one daemon per
//! bus; leases; blind filesystems get polling; a full disk is survived.

use std::collections::BTreeMap;
use std::fs;
use std::time::{Duration, Instant};

use workbus_proto::report::{Outcome, TaskStateName};

use crate::util::*;

/// A small deterministic generator (no dependency for a few random numbers).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Fan-out/fan-in layers: 1 → 60 → 1 → 60 → 1 → 60 → 1 → 20 (204 tasks),
/// each task sleeping 0-100 ms.
fn layered_goal(id: &str, rng: &mut Rng) -> (String, usize) {
    let widths = [1usize, 60, 1, 60, 1, 60, 1, 20];
    let mut text = format!("id = \"{id}\"\n");
    let mut prev: Vec<String> = vec![];
    let mut n = 0;
    for (l, w) in widths.iter().enumerate() {
        let mut this = vec![];
        for i in 0..*w {
            let tid = format!("l{l}-{i}");
            let after: Vec<String> = prev.iter().map(|p| format!("\"{p}\"")).collect();
            text.push_str(&format!(
                "[[task]]\nid = \"{tid}\"\nneeds = [\"x\"]\nafter = [{}]\ninput = {{ sleep = {:.3}, output = \"{tid} done\" }}\n",
                after.join(", "),
                rng.below(101) as f64 / 1000.0
            ));
            this.push(tid);
            n += 1;
        }
        prev = this;
    }
    (text, n)
}

fn torture(watch: &str, seed: u64) {
    let mut rng = Rng(seed);
    let bus = TestBus::with_config(
        &spawn_worker("w", &["x"], 3),
        &format!("watch = \"{watch}\"\nlog_level = \"info\"\n"),
    );
    let (goal, n) = layered_goal("torture", &mut rng);
    assert!(n >= 200);
    let mut d = bus.start();
    bus.submit("torture.toml", &goal);
    let t0 = Instant::now();
    let mut kills = 0;
    // Twelve kills at random moments (some may fall after the end: they
    // must not change the report), a restart after each.
    while kills < 12 {
        std::thread::sleep(Duration::from_millis(100 + rng.below(1100)));
        d.kill9();
        kills += 1;
        d = Daemon::start(&bus, &[]);
    }
    let r = bus.wait_report("torture", Duration::from_secs(180));
    assert_eq!(r.outcome, Outcome::Succeeded, "after {kills} kills: {r:#?}");
    assert_eq!(r.tasks.len(), n);
    for (id, t) in &r.tasks {
        assert_eq!(
            (t.state, t.output.clone()),
            (
                TaskStateName::Succeeded,
                Some(serde_json::json!(format!("{id} done")))
            )
        );
    }
    // Exactly one absorbed successful result per task, and it is the one
    // the report names.
    let archive = bus.path("archive/torture");
    let mut ok: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for e in fs::read_dir(&archive).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(stem) = name.strip_suffix(".result.json") {
            let (task, attempt) = stem.rsplit_once('.').unwrap();
            let rec = read_json(&e.path());
            if rec["status"] == "ok" {
                ok.entry(task.to_string())
                    .or_default()
                    .push(attempt.parse().unwrap());
            }
        }
    }
    for (task, t) in &r.tasks {
        let attempts = ok.get(task).cloned().unwrap_or_default();
        assert_eq!(
            attempts,
            vec![t.attempts],
            "task {task}: successful results of attempts {attempts:?}, report says {}",
            t.attempts
        );
    }
    d.stop();
    assert!(assert_whole_records(&bus.root) > 0);
    // A finished report is never rewritten differently.
    let again = bus.report("torture").unwrap();
    assert_eq!(again, r);
    eprintln!(
        "torture ({watch}): {n} tasks, {kills} kills, {:.1?}",
        t0.elapsed()
    );
}

#[test]
fn torture_kill9_at_random_moments_loses_nothing() {
    torture("notify", 0x9E37_79B9_7F4A_7C15);
}

#[test]
fn torture_with_polling_loses_nothing() {
    torture("poll", 0xD1B5_4A32_D192_ED03);
}

#[test]
fn a_second_daemon_on_the_same_bus_is_refused() {
    let bus = TestBus::new("");
    let first = bus.start();
    let out = std::process::Command::new(WORKBUSD)
        .arg("--config")
        .arg(&bus.config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let lock = bus.path("workbusd.lock").display().to_string();
    assert!(
        err.contains(&format!("{lock} is locked by pid {}", first.pid())),
        "{err}"
    );
    assert!(
        err.contains("another workbusd is already running on this bus"),
        "{err}"
    );
}

#[test]
fn results_that_arrived_while_the_daemon_was_down_are_absorbed() {
    let bus = TestBus::new("");
    let d = bus.start();
    bus.submit("offline.toml", "[[task]]\nid = \"a\"\nneeds = [\"ext\"]\n[[task]]\nid = \"b\"\nneeds = [\"ext\"]\nafter = [\"a\"]\n");
    wait_for(Duration::from_secs(10), "a to be published", || {
        bus.path("tasks/offline.a.1.json").exists().then_some(())
    });
    assert_eq!(d.stop().code(), Some(0));
    // An external worker claims and answers while no daemon runs.
    fs::rename(
        bus.path("tasks/offline.a.1.json"),
        bus.path("claimed/offline.a.1.far.json"),
    )
    .unwrap();
    let result = r#"{"schema_version":1,"goal":"offline","task":"a","attempt":1,"worker":"far","status":"ok","output":"done offline"}"#;
    fs::write(bus.path("results/.offline.a.1.json.tmp"), result).unwrap();
    fs::rename(
        bus.path("results/.offline.a.1.json.tmp"),
        bus.path("results/offline.a.1.json"),
    )
    .unwrap();
    let _d = bus.start();
    let rec = wait_for(
        Duration::from_secs(10),
        "b to be published with a's output",
        || fs::read_to_string(bus.path("tasks/offline.b.1.json")).ok(),
    );
    assert!(rec.contains("done offline"), "{rec}");
    assert!(bus.path("archive/offline/a.1.result.json").exists());
    assert!(!bus.path("claimed/offline.a.1.far.json").exists());
}

#[test]
fn a_claim_whose_worker_stops_heartbeating_is_revoked() {
    let bus = TestBus::with_config(
        "",
        "heartbeat_interval = \"200ms\"\nlease_timeout = \"1s\"\ncapability_grace = \"30s\"\n",
    );
    let _d = bus.start();
    // This test is the stalling worker: it advertises, claims, then falls silent.
    let ad = |name: &str| {
        format!(
            r#"{{"schema_version":1,"name":"{name}","host":"elsewhere","pid":1,"capabilities":["lease"],"last_seen":"{}"}}"#,
            workbus_proto::Timestamp::now()
        )
    };
    fs::write(bus.path("workers/.stall.json.tmp"), ad("stall")).unwrap();
    fs::rename(
        bus.path("workers/.stall.json.tmp"),
        bus.path("workers/stall.json"),
    )
    .unwrap();
    bus.submit(
        "lease.toml",
        "[[task]]\nid = \"t\"\nneeds = [\"lease\"]\nretries = 1\n",
    );
    wait_for(Duration::from_secs(10), "the task to be published", || {
        bus.path("tasks/lease.t.1.json").exists().then_some(())
    });
    fs::rename(
        bus.path("tasks/lease.t.1.json"),
        bus.path("claimed/lease.t.1.stall.json"),
    )
    .unwrap();
    // No more heartbeats: after lease_timeout the claim is revoked.
    let revoked = wait_for(Duration::from_secs(10), "the revocation", || {
        let v: serde_json::Value = serde_json::from_str(
            &fs::read_to_string(bus.path("archive/lease/t.1.result.json")).ok()?,
        )
        .ok()?;
        Some(v)
    });
    assert!(
        revoked["error"]
            .as_str()
            .unwrap()
            .contains("lease lost: no heartbeat from worker stall"),
        "{revoked}"
    );
    // The stalled worker wakes up and answers its old attempt: stale.
    let late = r#"{"schema_version":1,"goal":"lease","task":"t","attempt":1,"worker":"stall","status":"ok","output":"too late"}"#;
    fs::write(bus.path("results/.late.tmp"), late).unwrap();
    fs::rename(
        bus.path("results/.late.tmp"),
        bus.path("results/lease.t.1.json"),
    )
    .unwrap();
    wait_for(
        Duration::from_secs(10),
        "the late result to be filed as stale",
        || {
            bus.path("archive/lease/t.1.stale.json")
                .exists()
                .then_some(())
        },
    );
    // Another worker completes the next attempt.
    let mut other = std::process::Command::new("python3")
        .arg(format!("{}/examples/worker.py", env!("CARGO_MANIFEST_DIR")))
        .arg("--root")
        .arg(&bus.root)
        .args([
            "--name",
            "steady",
            "--capabilities",
            "lease",
            "--heartbeat",
            "0.2",
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let r = bus.wait_report("lease", Duration::from_secs(30));
    let _ = other.kill();
    let _ = other.wait();
    assert_eq!(r.outcome, Outcome::Succeeded);
    let t = &r.tasks["t"];
    assert_eq!((t.attempts, t.worker.as_deref()), (2, Some("steady")));
    assert_ne!(t.output, Some(serde_json::json!("too late")));
}

#[test]
fn sigterm_drains_running_tasks_and_exits_cleanly() {
    let bus = TestBus::new(&spawn_worker("w", &["x"], 2));
    let mut d = bus.start();
    bus.submit("drain.toml", "[[task]]\nid = \"a\"\nneeds = [\"x\"]\ninput = { sleep = 1.5 }\n[[task]]\nid = \"b\"\nneeds = [\"x\"]\nafter = [\"a\"]\n");
    wait_for(Duration::from_secs(10), "a to run", || {
        bus.path("claimed/drain.a.1.w.json").exists().then_some(())
    });
    d.signal(nix::sys::signal::Signal::SIGTERM);
    d.wait_message("STOPPING=1", Duration::from_secs(5));
    let status = d.stop();
    assert_eq!(status.code(), Some(0));
    // a finished during the drain and was absorbed; b was not started.
    assert_eq!(bus.json("archive/drain/a.1.result.json")["status"], "ok");
    assert!(!bus.path("claimed/drain.b.1.w.json").exists());
    let _d = bus.start();
    assert_eq!(
        bus.wait_report("drain", Duration::from_secs(30)).outcome,
        Outcome::Succeeded
    );
}

#[test]
fn a_drain_that_times_out_leaves_the_task_to_run_again() {
    let bus = TestBus::with_config(&spawn_worker("w", &["x"], 1), "drain_timeout = \"300ms\"\n");
    let d = bus.start();
    bus.submit(
        "cut.toml",
        "[[task]]\nid = \"a\"\nneeds = [\"x\"]\ninput = { sleep = 2 }\n",
    );
    wait_for(Duration::from_secs(10), "a to run", || {
        bus.path("claimed/cut.a.1.w.json").exists().then_some(())
    });
    let t0 = Instant::now();
    assert_eq!(d.stop().code(), Some(0));
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "stopped within the drain timeout and kill grace"
    );
    assert!(
        bus.path("claimed/cut.a.1.w.json").exists(),
        "the claim stays, consistent, for the next start"
    );
    let _d = bus.start();
    let r = bus.wait_report("cut", Duration::from_secs(30));
    assert_eq!((r.outcome, r.tasks["a"].attempts), (Outcome::Succeeded, 2));
}

#[test]
fn a_service_manager_that_does_not_read_never_stalls_the_daemon() {
    let bus = TestBus::with_config(&spawn_worker("w", &["x"], 4), "status_interval = \"1ms\"\n");
    // A NOTIFY_SOCKET nobody reads: its queue fills after a few messages.
    let deaf = bus.dir.path().join("deaf.sock");
    let _sock = std::os::unix::net::UnixDatagram::bind(&deaf).unwrap();
    let _d = Daemon::spawn(&bus, &[("NOTIFY_SOCKET", deaf.to_str().unwrap())]);
    wait_for(Duration::from_secs(20), "the daemon to be up", || {
        bus.path("status.json").exists().then_some(())
    });
    let tasks: String = (0..40)
        .map(|i| format!("[[task]]\nid = \"t{i}\"\nneeds = [\"x\"]\ninput = {{ output = {i} }}\n"))
        .collect();
    bus.submit("many.toml", &tasks);
    let r = bus.wait_report("many", Duration::from_secs(60));
    assert_eq!(r.outcome, Outcome::Succeeded);
}

#[test]
fn task_processes_left_by_a_killed_daemon_are_stopped_at_the_next_start() {
    let bus = TestBus::new(&spawn_worker("w", &["x"], 1));
    let d = bus.start();
    let pidfile = bus.dir.path().join("pid.json");
    bus.submit(
        "orphan.toml",
        &format!("[[task]]\nid = \"t\"\nneeds = [\"x\"]\ninput = {{ sleep_first = 600, children = 1, pidfile = {:?} }}\n", pidfile.display().to_string()),
    );
    let pids = wait_for(Duration::from_secs(20), "the task to run", || {
        serde_json::from_str::<serde_json::Value>(&fs::read_to_string(&pidfile).ok()?).ok()
    });
    let pgid = pids["pgid"].as_i64().unwrap() as i32;
    d.kill9();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !group_members(pgid).is_empty(),
        "without systemd, the task outlives the killed daemon"
    );
    let d = bus.start();
    wait_for(
        Duration::from_secs(10),
        "the orphaned group to be stopped",
        || group_members(pgid).is_empty().then_some(()),
    );
    assert!(
        d.log_text()
            .contains("stopped 1 task process group(s) left running by a previous daemon")
    );
    let r = bus.wait_report("orphan", Duration::from_secs(30));
    assert_eq!((r.outcome, r.tasks["t"].attempts), (Outcome::Succeeded, 2));
}

/// Plays a bus worker: claims `goal.task.1` from `tasks/` and answers it.
fn answer(bus: &TestBus, goal: &str, task: &str, output: &str) {
    let name = format!("{goal}.{task}.1");
    wait_for(
        Duration::from_secs(10),
        &format!("{name} to be published"),
        || {
            bus.path(&format!("tasks/{name}.json"))
                .exists()
                .then_some(())
        },
    );
    fs::rename(
        bus.path(&format!("tasks/{name}.json")),
        bus.path(&format!("claimed/{name}.far.json")),
    )
    .unwrap();
    let result = format!(
        r#"{{"schema_version":1,"goal":"{goal}","task":"{task}","attempt":1,"worker":"far","status":"ok","output":"{output}"}}"#
    );
    let tmp = bus.path(&format!("results/.{name}.json.tmp"));
    fs::write(&tmp, result).unwrap();
    fs::rename(&tmp, bus.path(&format!("results/{name}.json"))).unwrap();
}

const CHAIN: &str = "[[task]]\nid = \"a\"\nneeds = [\"ext\"]\n[[task]]\nid = \"b\"\nneeds = [\"ext\"]\nafter = [\"a\"]\n";

/// An accepted goal is made durable on the fsync thread while the loop
/// goes on (here the test switch holds each fsync job up for 5 s): its
/// tasks are released meanwhile, but nothing that must not outlive the
/// goal comes first. Its dropped file stays in the inbox, its answered
/// attempts stay out of the archive, and its report waits.
#[test]
fn a_goal_runs_while_it_is_made_durable_and_nothing_outlives_it() {
    // No worker offers "ext": the test plays one, so tasks wait for it.
    let bus = TestBus::with_config("", "capability_grace = \"60s\"");
    let d = Daemon::start(&bus, &[("WORKBUS_TEST_SYNC_DELAY_MS", "5000")]);
    let t0 = Instant::now();
    bus.submit("slow.toml", CHAIN);
    answer(&bus, "slow", "a", "a done");
    // b is released from a's result: the loop did not wait for the disk.
    wait_for(Duration::from_secs(10), "b to be published", || {
        bus.path("tasks/slow.b.1.json").exists().then_some(())
    });
    let released = t0.elapsed();
    assert!(
        released < Duration::from_millis(2500),
        "b was released {released:?} after the goal was dropped: the loop waited for the fsync"
    );
    assert!(bus.path("goals/slow.json").exists());
    assert!(
        bus.path("inbox/slow.toml").exists(),
        "the dropped file left the inbox before the goal was durable"
    );
    assert!(
        bus.path("results/slow.a.1.json").exists()
            && !bus.path("archive/slow/a.1.result.json").exists(),
        "a's result moved into the archive before the goal was durable"
    );
    // Another goal, once slow.toml is old enough to be read without an
    // event (2 s): the inbox scan it causes must pass over slow.toml,
    // accepted already, rather than start it a second time.
    std::thread::sleep(Duration::from_millis(2600).saturating_sub(t0.elapsed()));
    bus.submit("other.toml", "[[task]]\nid = \"a\"\nneeds = [\"ext\"]\n");
    answer(&bus, "other", "a", "other done");
    assert!(
        bus.path("inbox/slow.toml").exists(),
        "slow.toml left the inbox before the goal was durable"
    );
    assert!(
        !bus.path("goals/slow-2.json").exists(),
        "slow.toml was accepted a second time"
    );
    answer(&bus, "slow", "b", "b done");
    let report = bus.wait_report("slow", Duration::from_secs(20));
    // Seen as soon as it appeared, the report found the goal durable.
    assert!(
        !bus.path("inbox/slow.toml").exists(),
        "the report was written while the goal's dropped file was still in the inbox"
    );
    assert!(t0.elapsed() >= Duration::from_millis(5000));
    assert_eq!(report.outcome, Outcome::Succeeded);
    assert_eq!(report.tasks["b"].output, Some(serde_json::json!("b done")));
    assert!(bus.path("archive/slow/source.toml").exists());
    assert!(bus.path("archive/slow/a.1.result.json").exists());
    assert!(!bus.path("results/slow.a.1.json").exists());
    bus.wait_report("other", Duration::from_secs(20));
    let mut goals: Vec<String> = fs::read_dir(bus.path("goals"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    goals.sort();
    assert_eq!(
        goals,
        ["other.json", "slow.json"],
        "a goal was accepted twice"
    );
    drop(d);
}

/// kill -9 while an accepted goal is not yet durable. If its file in
/// `goals/` survived (the machine kept running) the goal goes on from its
/// results; if it did not (a power cut: here the file is removed), the
/// dropped file still in the inbox starts it afresh, and the answers
/// already in `results/` count. Either way it is accepted once and ends
/// once, with a report.
#[test]
fn a_goal_killed_before_it_was_durable_runs_to_one_report() {
    for lost in [false, true] {
        let bus = TestBus::with_config("", "capability_grace = \"60s\"");
        let d = Daemon::start(&bus, &[("WORKBUS_TEST_SYNC_DELAY_MS", "5000")]);
        bus.submit("crash.toml", CHAIN);
        answer(&bus, "crash", "a", "first a");
        wait_for(Duration::from_secs(10), "b to be published", || {
            bus.path("tasks/crash.b.1.json").exists().then_some(())
        });
        assert!(bus.path("inbox/crash.toml").exists());
        d.kill9();
        if lost {
            fs::remove_file(bus.path("goals/crash.json")).unwrap();
        }
        // Old enough to be read without an event at the next start.
        std::thread::sleep(Duration::from_millis(2100));
        let _d = bus.start();
        // Either way a's answer, waiting in results/, is taken.
        answer(&bus, "crash", "b", "b done");
        let report = bus.wait_report("crash", Duration::from_secs(20));
        assert_eq!(report.outcome, Outcome::Succeeded, "lost = {lost}");
        assert_eq!(report.tasks["a"].attempts, 1, "lost = {lost}");
        let a = read_json(&bus.path("archive/crash/a.1.result.json"));
        assert_eq!(a["output"], "first a", "lost = {lost}");
        wait_for(Duration::from_secs(10), "the inbox to be empty", || {
            (!bus.path("inbox/crash.toml").exists()).then_some(())
        });
        assert!(bus.path("archive/crash/source.toml").exists());
        let reports = fs::read_dir(bus.path("reports")).unwrap().count();
        assert_eq!(reports, 1, "lost = {lost}: one goal, one report");
        let goals = fs::read_dir(bus.path("goals")).unwrap().count();
        assert_eq!(goals, 1, "lost = {lost}: the goal was accepted twice");
    }
}

/// A spawned task's result, written by the daemon itself, is not written
/// before its goal is durable either (held up 3 s by the test switch,
/// while the process ends at once).
#[test]
fn a_spawn_result_waits_until_its_goal_is_durable() {
    let bus = TestBus::new(&spawn_worker("w", &["x"], 2));
    let _d = Daemon::start(&bus, &[("WORKBUS_TEST_SYNC_DELAY_MS", "3000")]);
    bus.submit("sp.toml", "[[task]]\nid = \"a\"\nneeds = [\"x\"]\n");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen_running = false;
    while bus.report("sp").is_none() {
        assert!(Instant::now() < deadline, "no report for sp");
        seen_running |= bus.path("claimed").read_dir().unwrap().next().is_some();
        if bus.path("archive/sp/a.1.result.json").exists() {
            assert!(
                !bus.path("inbox/sp.toml").exists(),
                "the spawn's result was written before its goal was durable"
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(seen_running, "the task ran while its goal was made durable");
    assert_eq!(bus.report("sp").unwrap().outcome, Outcome::Succeeded);
}

/// A task released by a spawn's result waits until that result is durable,
/// also when the result's batch is already in the fsync thread's hands
/// (held up 2 s per job here) and the release is set off by another result.
#[test]
fn a_task_released_by_a_spawn_result_waits_for_its_batch() {
    let bus = TestBus::with_config(&spawn_worker("w", &["x"], 2), "capability_grace = \"60s\"");
    let _d = Daemon::start(&bus, &[("WORKBUS_TEST_SYNC_DELAY_MS", "2000")]);
    bus.submit(
        "rel.toml",
        "[[task]]\nid = \"a\"\nneeds = [\"x\"]\n[[task]]\nid = \"c\"\nneeds = [\"ext\"]\n\
         [[task]]\nid = \"b\"\nneeds = [\"ext\"]\nafter = [\"a\", \"c\"]\n",
    );
    wait_for(Duration::from_secs(20), "a's result", || {
        bus.path("archive/rel/a.1.result.json")
            .exists()
            .then_some(())
    });
    let seen = Instant::now();
    // a's result goes to the fsync thread within 100 ms; then c is answered.
    std::thread::sleep(Duration::from_millis(300));
    answer(&bus, "rel", "c", "c done");
    std::thread::sleep(Duration::from_millis(1500).saturating_sub(seen.elapsed()));
    assert!(
        !bus.path("tasks/rel.b.1.json").exists(),
        "b was released before a's result was durable"
    );
    answer(&bus, "rel", "b", "b done");
    let report = bus.wait_report("rel", Duration::from_secs(20));
    assert_eq!(report.outcome, Outcome::Succeeded);
}

/// Creates the file of a test fault switch (the daemon fails the thing
/// while the file exists): its path, and that path for the variable.
fn armed_switch(bus: &TestBus, name: &str) -> (std::path::PathBuf, String) {
    let switch = bus.dir.path().join(name);
    fs::write(&switch, b"").unwrap();
    let text = switch.display().to_string();
    (switch, text)
}

/// Removes a fault switch; with `kill`, after a kill -9 of the daemon,
/// which then starts again. Returns the daemon that runs.
fn lift_switch(
    d: Daemon,
    kill: bool,
    bus: &TestBus,
    switch: &std::path::Path,
    env: &[(&str, &str)],
) -> Daemon {
    if !kill {
        fs::remove_file(switch).unwrap();
        return d;
    }
    d.kill9();
    fs::remove_file(switch).unwrap();
    Daemon::start(bus, env)
}

/// Making an accepted goal durable fails (the test switch fails each such
/// fsync job while its file exists, as a disk error would). The goal is
/// written again and again with a growing pause; until that succeeds,
/// nothing derived from it is written: its first tasks may run, but a
/// spawn's result is held, a bus worker's result stays in `results/`, no
/// later task is released, no report appears, and its dropped file stays
/// in the inbox. The daemon is not stuck. Once the disk works the goal
/// carries on to its report; and a kill -9 while it is held loses nothing
/// either.
#[test]
fn a_goal_that_cannot_be_made_durable_holds_what_derives_from_it_and_is_tried_again() {
    // a and b run on the spawn worker; c and d wait for the test to answer.
    let goal = "[[task]]\nid = \"a\"\nneeds = [\"x\"]\n\
                [[task]]\nid = \"b\"\nneeds = [\"x\"]\nafter = [\"a\"]\n\
                [[task]]\nid = \"c\"\nneeds = [\"ext\"]\n\
                [[task]]\nid = \"d\"\nneeds = [\"ext\"]\nafter = [\"c\"]\n";
    for kill in [false, true] {
        let bus = TestBus::with_config(&spawn_worker("w", &["x"], 2), "capability_grace = \"60s\"");
        let (switch, switch_env) = armed_switch(&bus, "fail-goal-sync");
        let env = [("WORKBUS_TEST_FAIL_GOAL_SYNC", switch_env.as_str())];
        let mut d = Daemon::start(&bus, &env);
        bus.submit("held.toml", goal);
        d.wait_log("cannot make goal held durable", Duration::from_secs(20));
        wait_for(Duration::from_secs(20), "a to have run", || {
            d.log_text().contains("held.a.1 starting").then_some(())
        });
        answer(&bus, "held", "c", "c done");
        d.wait_log("writing it again in 200ms", Duration::from_secs(20));
        let held_since = Instant::now();
        while held_since.elapsed() < Duration::from_millis(1500) {
            for (what, path) in [
                ("a's result", "archive/held/a.1.result.json"),
                ("c's result, in the archive", "archive/held/c.1.result.json"),
                ("the report", "reports/held.json"),
                ("b's task", "tasks/held.b.1.json"),
                ("d's task", "tasks/held.d.1.json"),
            ] {
                assert!(
                    !bus.path(path).exists(),
                    "kill = {kill}: {what} was written while the goal was not durable"
                );
            }
            assert!(bus.path("inbox/held.toml").exists());
            assert!(bus.path("results/held.c.1.json").exists());
            std::thread::sleep(Duration::from_millis(20));
        }
        let claimed: Vec<String> = fs::read_dir(bus.path("claimed"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            claimed.iter().all(|n| !n.starts_with("held.b")),
            "b was claimed while the goal was not durable: {claimed:?}"
        );
        // The operator sees why in the status, `workbusctl status` and the metrics.
        let status = bus.status().expect("status.json");
        let held = status["goals"][0]["held"].as_str().unwrap_or_default();
        assert!(
            held.contains("cannot be made durable") && held.contains("WORKBUS_TEST_FAIL_GOAL_SYNC"),
            "{status}"
        );
        let out = bus.ctl(&["status"]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("held: cannot be made durable"), "{text}");
        let metrics = fs::read_to_string(bus.path("metrics.prom")).unwrap();
        assert!(metrics.contains("workbus_goals_held 1"), "{metrics}");
        // The daemon is not stuck meanwhile: a bad goal is refused at once.
        bus.submit(
            "bad.toml",
            "[[task]]\nid = \"a\"\nneeds = [\"x\"]\nafter = [\"nope\"]\n",
        );
        let refusal = bus.wait_rejected("bad.toml");
        assert!(
            refusal["message"].as_str().unwrap().contains("nope"),
            "{refusal}"
        );
        d = lift_switch(d, kill, &bus, &switch, &env);
        answer(&bus, "held", "d", "d done");
        let report = bus.wait_report("held", Duration::from_secs(60));
        assert_eq!(report.outcome, Outcome::Succeeded, "kill = {kill}");
        assert_eq!(report.tasks["c"].output, Some(serde_json::json!("c done")));
        assert_eq!(report.tasks["c"].attempts, 1, "kill = {kill}");
        assert!(
            !bus.path("inbox/held.toml").exists(),
            "kill = {kill}: the dropped file stayed in the inbox"
        );
        assert!(bus.path("archive/held/source.toml").exists());
        assert!(bus.path("archive/held/b.1.result.json").exists());
        wait_for(
            Duration::from_secs(10),
            "no goal held in the metrics",
            || {
                fs::read_to_string(bus.path("metrics.prom"))
                    .ok()?
                    .contains("workbus_goals_held 0")
                    .then_some(())
            },
        );
        if !kill {
            d.wait_log("held: durable after", Duration::from_secs(5));
            assert_eq!(report.tasks["a"].attempts, 1, "a's held result was lost");
        }
        let goals = fs::read_dir(bus.path("goals")).unwrap().count();
        assert_eq!(goals, 1, "kill = {kill}: the goal was accepted twice");
        drop(d);
    }
}

/// The results the daemon writes for spawned tasks cannot be made durable
/// (the test switch fails each commit of them while its file exists). What
/// depends on them waits: the next task of the chain is not released, the
/// report is not written. Each failed commit writes the results again as
/// new files (a second fsync of the old ones could report success for data
/// the kernel dropped), and once the disk works the goal ends; also after a
/// kill -9 while they were held.
#[test]
fn results_that_cannot_be_made_durable_hold_what_depends_on_them() {
    let goal = "[[task]]\nid = \"a\"\nneeds = [\"x\"]\n\
                [[task]]\nid = \"b\"\nneeds = [\"x\"]\nafter = [\"a\"]\n";
    for kill in [false, true] {
        let bus = TestBus::new(&spawn_worker("w", &["x"], 2));
        let (switch, switch_env) = armed_switch(&bus, "fail-result-sync");
        let env = [("WORKBUS_TEST_FAIL_RESULT_SYNC", switch_env.as_str())];
        let mut d = Daemon::start(&bus, &env);
        bus.submit("rs.toml", goal);
        let a = bus.path("archive/rs/a.1.result.json");
        let first_inode = wait_for(Duration::from_secs(30), "a's result", || {
            use std::os::unix::fs::MetadataExt;
            fs::metadata(&a).ok().map(|m| m.ino())
        });
        d.wait_log("cannot make results durable", Duration::from_secs(20));
        d.wait_log("trying again in 200ms", Duration::from_secs(20));
        let since = Instant::now();
        while since.elapsed() < Duration::from_millis(1500) {
            assert!(
                !bus.path("reports/rs.json").exists(),
                "kill = {kill}: the report was written before a's result was durable"
            );
            assert!(
                !d.log_text().contains("rs.b.1 starting"),
                "kill = {kill}: b ran before a's result was durable"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        {
            use std::os::unix::fs::MetadataExt;
            let now = fs::metadata(&a).unwrap().ino();
            assert_ne!(now, first_inode, "a's result was not written again");
        }
        let status = bus.status().expect("status.json");
        let held = status["goals"][0]["held"].as_str().unwrap_or_default();
        assert!(held.contains("results cannot be made durable"), "{status}");
        // Not stuck: a bad goal is refused meanwhile.
        bus.submit("bad.toml", "[[task]]\nid = \"a\"\nafter = [\"nope\"]\n");
        bus.wait_rejected("bad.toml");
        d = lift_switch(d, kill, &bus, &switch, &env);
        let report = bus.wait_report("rs", Duration::from_secs(60));
        assert_eq!(report.outcome, Outcome::Succeeded, "kill = {kill}");
        assert_eq!(report.tasks["a"].attempts, 1, "kill = {kill}");
        let a_result = read_json(&a);
        assert_eq!(a_result["status"], "ok", "kill = {kill}: {a_result}");
        if !kill {
            d.wait_log("results are durable after", Duration::from_secs(5));
        }
        drop(d);
    }
}

/// A layered goal of 204 spawned tasks while both fault switches (the
/// goal's fsync, the results' fsyncs) turn on and off at random moments:
/// what waits goes on in order each time, and the goal ends with every
/// task run once and its own output.
#[test]
fn fsyncs_failing_on_and_off_lose_and_repeat_nothing() {
    let mut rng = Rng(0x5eed_f00d);
    let bus = TestBus::with_config(&spawn_worker("w", &["x"], 3), "log_level = \"info\"\n");
    let (goal_switch, goal_env) = armed_switch(&bus, "fail-goal-sync");
    let (result_switch, result_env) = armed_switch(&bus, "fail-result-sync");
    let env = [
        ("WORKBUS_TEST_FAIL_GOAL_SYNC", goal_env.as_str()),
        ("WORKBUS_TEST_FAIL_RESULT_SYNC", result_env.as_str()),
    ];
    let d = Daemon::start(&bus, &env);
    let (goal, n) = layered_goal("flaky", &mut rng);
    bus.submit("flaky.toml", &goal);
    d.wait_log("cannot make goal flaky durable", Duration::from_secs(20));
    let t0 = Instant::now();
    while bus.report("flaky").is_none() && t0.elapsed() < Duration::from_secs(8) {
        for switch in [&goal_switch, &result_switch] {
            if rng.below(2) == 0 {
                let _ = fs::remove_file(switch);
            } else {
                fs::write(switch, b"").unwrap();
            }
        }
        std::thread::sleep(Duration::from_millis(50 + rng.below(400)));
    }
    let _ = fs::remove_file(&goal_switch);
    let _ = fs::remove_file(&result_switch);
    let r = bus.wait_report("flaky", Duration::from_secs(120));
    let log = d.log_text();
    assert!(
        log.contains("WORKBUS_TEST_FAIL_RESULT_SYNC; "),
        "the results' switch never took effect"
    );
    assert_eq!(r.outcome, Outcome::Succeeded, "{r:#?}");
    assert_eq!(r.tasks.len(), n);
    for (id, t) in &r.tasks {
        assert_eq!(t.attempts, 1, "task {id} ran again");
        assert_eq!(
            t.output,
            Some(serde_json::json!(format!("{id} done"))),
            "task {id}"
        );
    }
    assert!(!bus.path("inbox/flaky.toml").exists());
    d.stop();
    assert!(assert_whole_records(&bus.root) > 0);
}
