//! The fleet: resident workers, crash loops, hot reload, external workers,
//! running as another user.

use std::fs;
use std::time::Duration;

use nix::sys::signal::Signal;
use workbus_proto::report::{Outcome, TaskStateName};

use crate::util::*;

fn example(name: &str) -> String {
    format!("{}/examples/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn resident(name: &str, caps: &[&str], concurrency: u32) -> String {
    format!(
        "[[worker]]\nname = \"{name}\"\nmode = \"resident\"\ncapabilities = {caps:?}\ncommand = [\"python3\", \"{}\"]\nconcurrency = {concurrency}\n\n",
        example("worker.py")
    )
}

fn heartbeat(bus: &TestBus, worker: &str) -> Option<serde_json::Value> {
    let text = fs::read_to_string(bus.path(&format!("workers/{worker}.json"))).ok()?;
    serde_json::from_str(&text).ok()
}

fn pid_of(bus: &TestBus, worker: &str) -> Option<i32> {
    heartbeat(bus, worker)?["pid"].as_i64().map(|p| p as i32)
}

#[test]
fn a_resident_worker_is_restarted_after_sigkill_and_the_task_retried() {
    let bus = TestBus::with_config(
        &resident("py", &["echo"], 2),
        "restart_backoff = \"100ms\"\n",
    );
    let _d = bus.start();
    let first = wait_for(
        Duration::from_secs(20),
        "the resident worker's heartbeat",
        || pid_of(&bus, "py"),
    );
    bus.submit(
        "res.toml",
        "[[task]]\nid = \"quick\"\nneeds = [\"echo\"]\ninput = { hello = \"world\" }\n[[task]]\nid = \"slow\"\nneeds = [\"echo\"]\nretries = 1\ninput = { sleep = 3 }\n[[task]]\nid = \"after\"\nneeds = [\"echo\"]\nafter = [\"quick\"]\n",
    );
    wait_for(
        Duration::from_secs(20),
        "the slow task to be claimed",
        || {
            bus.path("claimed/res.slow.1.py.json")
                .exists()
                .then_some(())
        },
    );
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(first), Signal::SIGKILL).unwrap();
    let second = wait_for(Duration::from_secs(20), "a new worker process", || {
        pid_of(&bus, "py").filter(|p| *p != first)
    });
    assert_ne!(first, second);
    let r = bus.wait_report("res", Duration::from_secs(30));
    assert_eq!(r.outcome, Outcome::Succeeded, "{r:#?}");
    assert_eq!(
        r.tasks["quick"].output,
        Some(serde_json::json!({"hello": "world"}))
    );
    assert_eq!(
        r.tasks["after"].output, r.tasks["quick"].output,
        "echo passes its dependency on"
    );
    assert_eq!(
        (r.tasks["slow"].attempts, r.tasks["slow"].worker.as_deref()),
        (2, Some("py"))
    );
    let first_attempt = bus.json("archive/res/slow.1.result.json");
    assert!(
        first_attempt["error"]
            .as_str()
            .unwrap()
            .contains("worker py exited (killed by SIGKILL)"),
        "{first_attempt}"
    );
    let workers = bus.ctl(&["workers"]);
    let text = String::from_utf8_lossy(&workers.stdout);
    assert!(
        text.contains("py") && text.contains("resident") && text.contains("healthy"),
        "{text}"
    );
    let json: serde_json::Value =
        serde_json::from_slice(&bus.ctl(&["workers", "--json"]).stdout).unwrap();
    assert_eq!(json[0]["restarts"], 1);
}

#[test]
fn a_crash_looping_worker_is_withdrawn_and_its_work_goes_elsewhere() {
    let looping = "[[worker]]\nname = \"crashy\"\nmode = \"resident\"\ncapabilities = [\"flaky\"]\ncommand = [\"/bin/sh\", \"-c\", \"echo cannot start >&2; exit 1\"]\n\n";
    let bus = TestBus::with_config(
        looping,
        "restart_backoff = \"50ms\"\ncrash_loop_restarts = 3\ncrash_loop_window = \"10s\"\ncrash_loop_cooldown = \"10m\"\ncapability_grace = \"1s\"\n",
    );
    let d = bus.start();
    bus.submit("loop.toml", "[[task]]\nid = \"t\"\nneeds = [\"flaky\"]\n");
    let r = bus.wait_report("loop", Duration::from_secs(30));
    assert_eq!(r.outcome, Outcome::Degraded);
    let reason = r.tasks["t"].reason.clone().unwrap();
    assert!(
        reason.contains("crash loop") && reason.contains("crashy"),
        "{reason}"
    );
    d.wait_log(
        "worker crashy: crash loop: 3 exits within 10s",
        Duration::from_secs(5),
    );
    let st = bus.status().unwrap();
    let w = &st["workers"][0];
    assert_eq!(
        (w["healthy"].as_bool(), w["name"].as_str()),
        (Some(false), Some("crashy"))
    );
    assert!(w["health"].as_str().unwrap().contains("crash loop"), "{w}");

    // A second worker offering the capability takes the work.
    fs::write(
        &bus.fleet,
        format!("{looping}{}", spawn_worker("steady", &["flaky"], 1)),
    )
    .unwrap();
    d.wait_log("added [steady]", Duration::from_secs(10));
    bus.submit("loop2.toml", "[[task]]\nid = \"t\"\nneeds = [\"flaky\"]\n");
    let r = bus.wait_report("loop2", Duration::from_secs(30));
    assert_eq!(
        (r.outcome, r.tasks["t"].worker.as_deref()),
        (Outcome::Succeeded, Some("steady"))
    );
}

#[test]
fn adding_a_worker_by_editing_the_fleet_serves_a_waiting_task_without_disturbing_others() {
    let base = spawn_worker("old", &["x"], 1);
    let bus = TestBus::with_config(&base, "capability_grace = \"60s\"\n");
    let d = bus.start();
    let pid = d.pid();
    bus.submit(
        "long.toml",
        "[[task]]\nid = \"busy\"\nneeds = [\"x\"]\ninput = { sleep = 3 }\n",
    );
    bus.submit("wait.toml", "[[task]]\nid = \"new\"\nneeds = [\"y\"]\n");
    wait_for(Duration::from_secs(20), "the long task to run", || {
        bus.path("claimed/long.busy.1.old.json")
            .exists()
            .then_some(())
    });
    // Saved the way editors do it: a new file renamed over the old one.
    let tmp = bus.dir.path().join(".fleet.toml.swp");
    fs::write(&tmp, format!("{base}{}", spawn_worker("new", &["y"], 1))).unwrap();
    fs::rename(&tmp, &bus.fleet).unwrap();
    let r = bus.wait_report("wait", Duration::from_secs(30));
    assert_eq!(
        (r.outcome, r.tasks["new"].worker.as_deref()),
        (Outcome::Succeeded, Some("new"))
    );
    let r = bus.wait_report("long", Duration::from_secs(30));
    assert_eq!(
        (r.outcome, r.tasks["busy"].attempts),
        (Outcome::Succeeded, 1),
        "the running task was not disturbed"
    );
    assert_eq!(d.pid(), pid);
    assert!(d.log_text().contains("fleet reloaded (the fleet file changed): added [new], removed [], changed [], unchanged [old]"));

    // Edited in place, and reloaded by SIGHUP: removing a worker withdraws it.
    fs::write(&bus.fleet, spawn_worker("new", &["y"], 1)).unwrap();
    d.signal(Signal::SIGHUP);
    d.wait_log("removed [old]", Duration::from_secs(10));
    let mut d = d;
    d.wait_message("RELOADING=1", Duration::from_secs(5));
}

#[test]
fn an_invalid_fleet_edit_keeps_the_old_fleet() {
    let base = spawn_worker("w", &["x"], 1);
    let bus = TestBus::new(&base);
    let d = bus.start();
    fs::write(
        &bus.fleet,
        format!(
            "{base}[[worker]]\nname = \"bad\"\ncapabilities = [\"y\"]\ncomand = [\"/bin/true\"]\n"
        ),
    )
    .unwrap();
    d.wait_log("fleet not reloaded", Duration::from_secs(10));
    let log = d.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("fleet not reloaded"))
        .unwrap();
    let file = bus.fleet.display().to_string();
    assert!(
        line.contains(&format!("{file}:10:1: comand: unknown field `comand`")),
        "file, line and key: {line}"
    );
    bus.submit("still.toml", "[[task]]\nid = \"t\"\nneeds = [\"x\"]\n");
    assert_eq!(
        bus.wait_report("still", Duration::from_secs(30)).outcome,
        Outcome::Succeeded
    );
    // The same words come from workbusctl validate.
    let out = std::process::Command::new(WORKBUSCTL)
        .arg("validate")
        .arg(&bus.fleet)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains(&format!("{file}:10:1: comand: unknown field `comand`"))
    );
}

#[test]
fn an_external_worker_serves_while_its_heartbeat_is_fresh() {
    let bus = TestBus::with_config(
        "",
        "heartbeat_interval = \"300ms\"\nlease_timeout = \"2s\"\ncapability_grace = \"1s\"\n",
    );
    let _d = bus.start();
    let mut ext = std::process::Command::new("python3")
        .arg(example("worker.py"))
        .args(["--root"])
        .arg(&bus.root)
        .args([
            "--name",
            "box2",
            "--capabilities",
            "remote",
            "--heartbeat",
            "0.3",
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    struct Reap(std::process::Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.0.id() as i32),
                Signal::SIGCONT,
            );
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let pid = ext.id() as i32;
    let _reap = Reap(std::mem::replace(
        &mut ext,
        std::process::Command::new("true").spawn().unwrap(),
    ));
    bus.submit(
        "ext.toml",
        "[[task]]\nid = \"far\"\nneeds = [\"remote\"]\ninput = { from = \"afar\" }\n",
    );
    let r = bus.wait_report("ext", Duration::from_secs(30));
    assert_eq!(
        (r.outcome, r.tasks["far"].worker.as_deref()),
        (Outcome::Succeeded, Some("box2"))
    );
    // Its heartbeat stops (the process is frozen, not gone): once the lease
    // runs out its capability is withdrawn.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGSTOP).unwrap();
    wait_for(Duration::from_secs(10), "box2 to be unhealthy", || {
        bus.status()?["workers"]
            .as_array()?
            .iter()
            .find(|w| w["name"] == "box2" && w["healthy"] == false)
            .cloned()
    });
    bus.submit(
        "ext2.toml",
        "[[task]]\nid = \"far\"\nneeds = [\"remote\"]\n",
    );
    let r = bus.wait_report("ext2", Duration::from_secs(30));
    assert_eq!(r.tasks["far"].state, TaskStateName::Skipped);
    assert!(
        r.tasks["far"]
            .reason
            .as_deref()
            .unwrap()
            .contains("no healthy worker offers [remote]")
    );
}

#[test]
fn user_runs_the_worker_as_that_user() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!(
            "SKIP user_runs_the_worker_as_that_user: needs root to switch users (CI runs as root)"
        );
        return;
    }
    let fleet = "[[worker]]\nname = \"lowly\"\ncapabilities = [\"id\"]\nuser = \"nobody\"\ncommand = [\"/bin/sh\", \"-c\", \"printf '{\\\"uid\\\": %d, \\\"gid\\\": %d}' $(id -u) $(id -g)\"]\n";
    let bus = TestBus::new(fleet);
    let _d = bus.start();
    bus.submit("who.toml", "[[task]]\nid = \"whoami\"\nneeds = [\"id\"]\n");
    let r = bus.wait_report("who", Duration::from_secs(30));
    assert_eq!(r.outcome, Outcome::Succeeded, "{r:#?}");
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let out = r.tasks["whoami"].output.clone().unwrap();
    assert_eq!(out["uid"], nobody.uid.as_raw());
    assert_eq!(out["gid"], nobody.gid.as_raw());
}

#[test]
fn the_example_shell_worker_answers_both_ways() {
    let fleet = format!(
        "[[worker]]\nname = \"counter\"\ncapabilities = [\"count\"]\ncommand = [\"{}\", \"{{{{ prompt }}}}\"]\n",
        example("worker.sh")
    );
    let bus = TestBus::new(&fleet);
    let _d = bus.start();
    bus.submit(
        "count.toml",
        "[[task]]\nid = \"words\"\nneeds = [\"count\"]\nprompt = \"three small words\\nand four more here\"\n[[task]]\nid = \"none\"\nneeds = [\"count\"]\n",
    );
    let r = bus.wait_report("count", Duration::from_secs(30));
    assert_eq!(
        r.tasks["words"].output,
        Some(serde_json::json!({"lines": 2, "words": 7, "task": "words", "attempt": 1}))
    );
    assert_eq!(
        r.tasks["none"].reason.as_deref(),
        Some("task none has no prompt to count")
    );
}

#[test]
fn a_changed_resident_worker_drains_and_restarts_while_others_run_on() {
    let bus = TestBus::with_config(
        &format!(
            "{}{}",
            resident("a", &["echo"], 1),
            spawn_worker("s", &["slow"], 1)
        ),
        "restart_backoff = \"100ms\"\n",
    );
    let d = bus.start();
    let first = wait_for(Duration::from_secs(20), "a's heartbeat", || {
        pid_of(&bus, "a")
    });
    bus.submit("during.toml", "[[task]]\nid = \"long\"\nneeds = [\"slow\"]\ninput = { sleep = 2 }\n[[task]]\nid = \"echo\"\nneeds = [\"echo\"]\ninput = { sleep = 1 }\n");
    wait_for(Duration::from_secs(20), "a to hold its task", || {
        bus.path("claimed/during.echo.1.a.json")
            .exists()
            .then_some(())
    });
    // a gets one more capability: it finishes what it holds, then restarts.
    fs::write(
        &bus.fleet,
        format!(
            "{}{}",
            resident("a", &["echo", "more"], 1),
            spawn_worker("s", &["slow"], 1)
        ),
    )
    .unwrap();
    d.wait_log("changed [a]", Duration::from_secs(10));
    let second = wait_for(Duration::from_secs(20), "a new process for a", || {
        pid_of(&bus, "a").filter(|p| *p != first)
    });
    assert_ne!(first, second);
    let r = bus.wait_report("during", Duration::from_secs(30));
    assert_eq!(r.outcome, Outcome::Succeeded, "{r:#?}");
    assert_eq!(
        r.tasks["echo"].attempts, 1,
        "the drained worker finished its task"
    );
    assert_eq!(
        r.tasks["long"].attempts, 1,
        "the untouched worker's task was not disturbed"
    );
    bus.submit("more.toml", "[[task]]\nid = \"m\"\nneeds = [\"more\"]\n");
    assert_eq!(
        bus.wait_report("more", Duration::from_secs(30)).tasks["m"]
            .worker
            .as_deref(),
        Some("a")
    );
}

#[test]
fn a_waiting_task_takes_an_external_worker_that_appears() {
    let bus = TestBus::with_config("", "capability_grace = \"60s\"\n");
    let _d = bus.start();
    bus.submit(
        "early.toml",
        "[[task]]\nid = \"t\"\nneeds = [\"late\"]\ninput = \"hello\"\n",
    );
    wait_for(Duration::from_secs(10), "the task to wait", || {
        bus.path("tasks/early.t.1.json").exists().then_some(())
    });
    let mut ext = std::process::Command::new("python3")
        .arg(example("worker.py"))
        .arg("--root")
        .arg(&bus.root)
        .args(["--name", "latecomer", "--capabilities", "late"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let r = bus.wait_report("early", Duration::from_secs(30));
    let _ = ext.kill();
    let _ = ext.wait();
    assert_eq!(
        (r.outcome, r.tasks["t"].worker.as_deref()),
        (Outcome::Succeeded, Some("latecomer"))
    );
}

#[test]
fn a_crash_looping_worker_is_tried_again_after_its_cool_down() {
    let flag = tempfile::NamedTempFile::new().unwrap().into_temp_path();
    let flag_path = flag.to_path_buf();
    std::fs::remove_file(&flag_path).unwrap();
    let fleet = format!(
        "[[worker]]\nname = \"mend\"\nmode = \"resident\"\ncapabilities = [\"mend\"]\ncommand = [\"/bin/sh\", \"-c\", \"test -e {} || exit 1; exec python3 {}\"]\n",
        flag_path.display(),
        example("worker.py")
    );
    let bus = TestBus::with_config(
        &fleet,
        "restart_backoff = \"50ms\"\ncrash_loop_restarts = 3\ncrash_loop_cooldown = \"2s\"\ncapability_grace = \"60s\"\n",
    );
    let d = bus.start();
    d.wait_log("worker mend: crash loop", Duration::from_secs(20));
    bus.submit("mend.toml", "[[task]]\nid = \"t\"\nneeds = [\"mend\"]\n");
    fs::write(&flag_path, "").unwrap();
    d.wait_log(
        "worker mend: cool-down over, trying it again",
        Duration::from_secs(20),
    );
    let r = bus.wait_report("mend", Duration::from_secs(30));
    assert_eq!(
        (r.outcome, r.tasks["t"].worker.as_deref()),
        (Outcome::Succeeded, Some("mend"))
    );
    let _ = fs::remove_file(&flag_path);
}
