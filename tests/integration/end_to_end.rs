//! The whole path through the real binaries: inbox → DAG → capability-routed
//! workers → report.

use std::fs;
use std::os::unix::fs::{FileTypeExt, symlink};
use std::time::Duration;

use workbus_proto::report::{Outcome, TaskStateName};

use crate::util::*;

const SEED: &str = r#"
id = "release-notes"
[[task]]
id = "gather"
needs = ["git"]
input = { output = { commits = ["fix parser", "add cache"] } }
[[task]]
id = "narrate"
needs = ["llm"]
after = ["gather"]
prompt = "Write release notes for these commits:\n{% for c in deps.gather.output.commits %}- {{ c }}\n{% endfor %}"
[[task]]
id = "build"
needs = ["docs"]
after = ["narrate"]
"#;

fn seed_fleet() -> String {
    [
        spawn_worker("gatherer", &["git"], 1),
        spawn_worker("narrator", &["llm"], 1),
        spawn_worker("builder", &["docs"], 1),
    ]
    .concat()
}

#[test]
fn the_seed_chain_succeeds_and_carries_outputs() {
    let bus = TestBus::new(&seed_fleet());
    let mut d = bus.start();
    let ready = d.wait_message("READY=1", Duration::from_secs(1));
    assert!(
        ready.contains("STATUS="),
        "READY comes with a status: {ready}"
    );
    bus.submit("release-notes.toml", SEED);
    let r = bus.wait_report("release-notes", Duration::from_secs(30));
    assert_eq!(r.outcome, Outcome::Succeeded, "{r:#?}");
    // The narrate task record holds gather's output and the rendered prompt.
    let rec = bus.json("archive/release-notes/narrate.1.task.json");
    assert_eq!(rec["deps"]["gather"]["output"]["commits"][1], "add cache");
    assert_eq!(
        rec["prompt"],
        "Write release notes for these commits:\n- fix parser\n- add cache\n"
    );
    // The report lists outputs, attempts, workers and timings.
    let narrate = &r.tasks["narrate"];
    assert_eq!(narrate.output.as_ref().unwrap()["prompt"], rec["prompt"]);
    assert_eq!(narrate.attempts, 1);
    assert_eq!(narrate.worker.as_deref(), Some("narrator"));
    let build = &r.tasks["build"];
    assert_eq!(
        build.output.as_ref().unwrap()["deps"]["narrate"]["task"],
        "narrate"
    );
    for (id, t) in &r.tasks {
        let (s, f) = (t.started_at.unwrap(), t.finished_at.unwrap());
        assert!(s <= f, "{id}: started after it finished");
    }
    assert!(r.tasks["gather"].finished_at.unwrap() <= r.tasks["narrate"].started_at.unwrap());
    // The accepted goal is kept, its source moved out of the inbox; the hot
    // folders are empty.
    assert!(bus.path("goals/release-notes.json").exists());
    assert!(bus.path("archive/release-notes/source.toml").exists());
    for f in ["inbox", "tasks", "claimed", "results"] {
        assert_eq!(
            fs::read_dir(bus.path(f)).unwrap().count(),
            0,
            "{f} is not empty"
        );
    }
    let stale: Vec<_> = fs::read_dir(bus.path("archive/release-notes"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("stale"))
        .collect();
    assert!(stale.is_empty(), "no result was filed twice: {stale:?}");
    // status.json is kept current.
    let st = wait_for(
        Duration::from_secs(5),
        "status.json without the goal",
        || {
            bus.status()
                .filter(|s| s["goals"].as_array().is_some_and(|g| g.is_empty()))
        },
    );
    assert_eq!(st["workers"].as_array().unwrap().len(), 3);
}

#[test]
fn a_diamond_runs_its_branches_at_the_same_time() {
    let bus = TestBus::new(&spawn_worker("w", &["x"], 4));
    let _d = bus.start();
    bus.submit(
        "diamond.toml",
        r#"
[[task]]
id = "a"
needs = ["x"]
[[task]]
id = "b"
needs = ["x"]
after = ["a"]
input = { sleep = 1.0 }
[[task]]
id = "c"
needs = ["x"]
after = ["a"]
input = { sleep = 1.0 }
[[task]]
id = "d"
needs = ["x"]
after = ["b", "c"]
"#,
    );
    let r = bus.wait_report("diamond", Duration::from_secs(30));
    assert_eq!(r.outcome, Outcome::Succeeded);
    let (b, c) = (&r.tasks["b"], &r.tasks["c"]);
    let overlap = b.started_at.unwrap() < c.finished_at.unwrap()
        && c.started_at.unwrap() < b.finished_at.unwrap();
    assert!(
        overlap,
        "b and c ran one after the other: b {:?}..{:?}, c {:?}..{:?}",
        b.started_at, b.finished_at, c.started_at, c.finished_at
    );
    let d_deps = &r.tasks["d"].output.as_ref().unwrap()["deps"];
    assert!(d_deps["b"].is_object() && d_deps["c"].is_object());
}

/// A task that waited in tasks/ for a free spawn slot leaves tasks/ when
/// its process starts: a bus worker offering the same capability must not
/// find it there and run it a second time.
#[test]
fn a_queued_task_leaves_tasks_when_its_spawn_starts() {
    let bus = TestBus::new(&spawn_worker("w", &["x"], 1));
    let _d = bus.start();
    let tasks: String = (1..=4)
        .map(|i| format!("[[task]]\nid = \"t{i}\"\nneeds = [\"x\"]\ninput = {{ sleep = 0.4 }}\n"))
        .collect();
    bus.submit("queued.toml", &tasks);
    let names = |dir: &str| -> Vec<String> {
        fs::read_dir(bus.path(dir))
            .map(|d| {
                d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .filter(|n| !n.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut running_seen = std::collections::BTreeSet::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while bus.report("queued").is_none() {
        assert!(std::time::Instant::now() < deadline, "no report");
        // claimed/ first: a claim seen there was renamed from tasks/ before
        // this look, so a later look at tasks/ cannot find its task file.
        let claims = names("claimed");
        let published = names("tasks");
        for claim in claims {
            // queued.t2.1.w.json claims queued.t2.1.json
            let Some(stem) = claim.strip_suffix(".w.json") else {
                continue;
            };
            let task_file = format!("{stem}.json");
            assert!(
                !published.contains(&task_file),
                "{task_file} is in tasks/ while {claim} runs"
            );
            running_seen.insert(stem.to_string());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    // The check saw tasks that had waited in tasks/ (all but the first).
    assert!(running_seen.len() >= 3, "saw only {running_seen:?} running");
    let r = bus.wait_report("queued", Duration::from_secs(5));
    assert_eq!(r.outcome, Outcome::Succeeded);
    for (id, t) in &r.tasks {
        assert_eq!(t.attempts, 1, "{id} ran {} times", t.attempts);
    }
    assert!(names("tasks").is_empty() && names("claimed").is_empty());
}

/// A spawned program's result file that appears after the program ended
/// (written by a process that left its group) is filed as stale while the
/// goal runs on, not left in results/.
#[test]
fn a_late_result_file_of_a_spawn_is_filed_as_stale() {
    let dir = tempfile::Builder::new()
        .prefix("wbtest-")
        .tempdir()
        .unwrap();
    let script = dir.path().join("late.sh");
    // The task "late" leaves a process in a session of its own (out of
    // reach of the group kill) that writes the result file 0.3 s after the
    // program ended; the program waits until that process has left.
    fs::write(
        &script,
        r#"if [ "$WORKBUS_TASK" = late ]; then
    setsid sh -c 'touch "$1"; sleep 0.3; printf %s "{\"status\":\"ok\",\"output\":1}" > "$0"' \
        "$WORKBUS_RESULT_FILE" "$0.left" </dev/null >/dev/null 2>&1 &
    while [ ! -e "$0.left" ]; do sleep 0.01; done
else
    sleep 4
fi
"#,
    )
    .unwrap();
    let fleet = format!(
        "[[worker]]\nname = \"w\"\ncapabilities = [\"x\"]\ncommand = [\"sh\", {:?}]\nconcurrency = 2\n",
        script.display().to_string()
    );
    let bus = TestBus::in_dir(dir, &fleet, "");
    let _d = bus.start();
    bus.submit(
        "latefile.toml",
        "[[task]]\nid = \"late\"\nneeds = [\"x\"]\n[[task]]\nid = \"slow\"\nneeds = [\"x\"]\n",
    );
    let stale = bus.path("archive/latefile/late.1.stale.json");
    wait_for(
        Duration::from_secs(3),
        "the late file filed as stale",
        || stale.exists().then_some(()),
    );
    assert!(
        bus.report("latefile").is_none(),
        "the goal ended before the check (the test needs it running)"
    );
    assert!(!bus.path("results/latefile.late.1.json").exists());
    let r = bus.wait_report("latefile", Duration::from_secs(15));
    assert_eq!(r.outcome, Outcome::Succeeded);
    // The result is the program's (its empty stdout), the late file is kept
    // beside it as stale.
    assert_eq!(r.tasks["late"].output, Some(serde_json::json!("")));
    assert_eq!(read_json(&stale)["output"], serde_json::json!(1));
}

#[test]
fn a_task_nobody_can_do_is_skipped_and_the_goal_degrades() {
    let bus = TestBus::new(&spawn_worker("w", &["x"], 2));
    let _d = bus.start();
    bus.submit(
        "partial.toml",
        r#"
[[task]]
id = "render"
needs = ["gpu"]
[[task]]
id = "publish"
needs = ["x"]
after = ["render"]
[[task]]
id = "lint"
needs = ["x"]
"#,
    );
    let r = bus.wait_report("partial", Duration::from_secs(30));
    assert_eq!(r.outcome, Outcome::Degraded, "{r:#?}");
    let render = &r.tasks["render"];
    assert_eq!(render.state, TaskStateName::Skipped);
    assert!(
        render
            .reason
            .as_deref()
            .unwrap()
            .contains("no healthy worker offers [gpu]"),
        "{render:?}"
    );
    assert_eq!(r.tasks["publish"].state, TaskStateName::Skipped);
    assert_eq!(
        r.tasks["publish"].reason.as_deref(),
        Some("dependency render skipped")
    );
    assert_eq!(r.tasks["lint"].state, TaskStateName::Succeeded);
    // The withdrawn task file went to the archive, not left in tasks/.
    assert_eq!(fs::read_dir(bus.path("tasks")).unwrap().count(), 0);
}

/// Every bad goal of SPEC §3, and hostile files, with the words each error must hold.
#[test]
fn bad_goals_are_rejected_with_precise_errors_and_the_daemon_carries_on() {
    let bus = TestBus::with_config(
        &spawn_worker("w", &["x"], 2),
        "max_goal_bytes = 2000\nmax_tasks_per_goal = 5\n",
    );
    let d = bus.start();
    let many: String = (0..6)
        .map(|i| format!("[[task]]\nid = \"t{i}\"\n"))
        .collect();
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "syntax.toml",
            "[[task]]\nid = \"a\"\nneeds = [\"x\"\n".into(),
            "line 3",
        ),
        (
            "unknown-key.toml",
            "[[task]]\nid = \"a\"\ncolour = \"red\"\n".into(),
            "unknown field `colour`",
        ),
        (
            "dup.toml",
            "[[task]]\nid = \"a\"\n[[task]]\nid = \"a\"\n".into(),
            "duplicate task id \"a\"",
        ),
        (
            "after.toml",
            "[[task]]\nid = \"a\"\nafter = [\"ghost\"]\n".into(),
            "`after` names \"ghost\"",
        ),
        (
            "cycle.toml",
            "[[task]]\nid = \"a\"\nafter = [\"b\"]\n[[task]]\nid = \"b\"\nafter = [\"a\"]\n".into(),
            "cycle: a → b → a",
        ),
        (
            "duration.toml",
            "[[task]]\nid = \"a\"\ntimeout = \"soonish\"\n".into(),
            "invalid duration \"soonish\"",
        ),
        (
            "too-many.toml",
            many,
            "6 tasks; the limit (max_tasks_per_goal) is 5",
        ),
        (
            "too-big.toml",
            format!("# {}\n[[task]]\nid = \"a\"\n", "x".repeat(3000)),
            "larger than the limit (max_goal_bytes) of 2000",
        ),
        (
            "bad-id.toml",
            "[[task]]\nid = \"../../etc\"\n".into(),
            "must start with a letter or digit",
        ),
        (
            "json-syntax.json",
            "{\"task\": [ {\"id\": \"a\",, } ]}".into(),
            "line 1",
        ),
        (
            "notes.txt",
            "hello".into(),
            "goal files are named *.toml or *.json",
        ),
    ];
    for (name, text, _) in &cases {
        bus.submit(name, text);
    }
    bus.submit_bytes("not-utf8.toml", b"[[task]]\nid = \"caf\xe9\"\n");
    let e = bus.wait_rejected("not-utf8.toml");
    assert_eq!(
        (e["message"].as_str(), e["line"].as_u64()),
        (Some("the file is not valid UTF-8"), Some(2))
    );
    for (name, _, want) in &cases {
        let e = bus.wait_rejected(name);
        let msg = e["message"].as_str().unwrap();
        let full = format!("line {} column {}: {msg}", e["line"], e["column"]);
        assert!(full.contains(want), "{name}: {full}\n wanted: {want}");
        assert!(
            bus.path(&format!("rejected/{name}")).exists(),
            "{name} kept in rejected/"
        );
        assert_eq!(e["file"], format!("inbox/{name}"));
    }
    let syntax = bus.wait_rejected("syntax.toml");
    assert_eq!(
        (syntax["line"].as_u64(), syntax["column"].as_u64().is_some()),
        (Some(3), true)
    );

    // A link to a file outside the root, and a FIFO: refused, not followed,
    // not blocking.
    let outside = bus.dir.path().join("secret.toml");
    fs::write(&outside, "[[task]]\nid = \"leak\"\nneeds = [\"x\"]\n").unwrap();
    symlink(&outside, bus.path("inbox/link.toml")).unwrap();
    nix::unistd::mkfifo(
        &bus.path("inbox/pipe.toml"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    fs::create_dir(bus.path("inbox/folder.toml")).unwrap();
    assert!(
        bus.wait_rejected("link.toml")["message"]
            .as_str()
            .unwrap()
            .contains("symbolic link")
    );
    assert!(
        bus.wait_rejected("pipe.toml")["message"]
            .as_str()
            .unwrap()
            .contains("FIFO")
    );
    assert!(
        bus.wait_rejected("folder.toml")["message"]
            .as_str()
            .unwrap()
            .contains("folder")
    );
    assert!(
        fs::symlink_metadata(bus.path("rejected/link.toml"))
            .unwrap()
            .file_type()
            .is_symlink(),
        "the link itself moved"
    );
    assert!(
        fs::symlink_metadata(bus.path("rejected/pipe.toml"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
    assert!(outside.exists(), "the link's target is untouched");
    assert!(!bus.path("goals/link.json").exists() && !bus.path("goals/leak.json").exists());

    // The same name again does not overwrite the first rejection.
    bus.submit("dup.toml", "[[task]]\nid = \"b\"\n[[task]]\nid = \"b\"\n");
    assert!(
        bus.wait_rejected("dup.toml.1")["message"]
            .as_str()
            .unwrap()
            .contains("\"b\"")
    );

    // The daemon is still up, and the next good goal succeeds.
    bus.submit("good.toml", "[[task]]\nid = \"ok\"\nneeds = [\"x\"]\n");
    assert_eq!(
        bus.wait_report("good", Duration::from_secs(30)).outcome,
        Outcome::Succeeded
    );
    let log = d.log_text();
    assert!(
        log.contains("rejected inbox/cycle.toml"),
        "rejections are logged"
    );
    // Written to a file, not a terminal: no colour codes.
    assert!(!log.contains('\x1b'), "escape sequences in the log:\n{log}");
}

#[test]
fn a_failing_worker_is_retried_with_backoff_then_the_goal_fails() {
    let bus = TestBus::new(&spawn_worker("w", &["x"], 2));
    let _d = bus.start();
    bus.submit(
        "flaky.toml",
        r#"
[[task]]
id = "fetch"
needs = ["x"]
retries = 2
input = { fail = "upstream said 503" }
[[task]]
id = "use"
needs = ["x"]
after = ["fetch"]
[[task]]
id = "heal"
needs = ["x"]
retries = 2
input = { fail = "first time unlucky", fail_until = 2 }
"#,
    );
    let r = bus.wait_report("flaky", Duration::from_secs(30));
    assert_eq!(r.outcome, Outcome::Failed);
    let fetch = &r.tasks["fetch"];
    assert_eq!((fetch.state, fetch.attempts), (TaskStateName::Failed, 3));
    let reason = fetch.reason.as_deref().unwrap();
    assert!(
        reason.contains("exit status 3")
            && reason.contains("upstream said 503")
            && reason.contains("after 3 attempts"),
        "{reason}"
    );
    // Backoff: 200 ms then 400 ms between the three attempts.
    let spent = fetch.finished_at.unwrap().since(fetch.started_at.unwrap());
    assert!(
        spent >= Duration::from_millis(600),
        "three attempts in {spent:?}: no backoff"
    );
    assert_eq!(r.tasks["use"].state, TaskStateName::Skipped);
    assert_eq!(
        r.tasks["use"].reason.as_deref(),
        Some("dependency fetch failed")
    );
    assert_eq!(
        (r.tasks["heal"].state, r.tasks["heal"].attempts),
        (TaskStateName::Succeeded, 2)
    );
    // Each attempt's record carries the previous error.
    let second = bus.json("archive/flaky/fetch.2.task.json");
    assert!(
        second["previous_error"]
            .as_str()
            .unwrap()
            .contains("upstream said 503")
    );
    // Each attempt has its own result and log.
    for a in 1..=3 {
        assert!(
            bus.path(&format!("archive/flaky/fetch.{a}.result.json"))
                .exists()
        );
        let log = fs::read_to_string(bus.path(&format!("archive/flaky/fetch.{a}.log"))).unwrap();
        assert!(
            log.contains("[stderr] fake worker: failing: upstream said 503"),
            "{log}"
        );
    }
    let logs = bus.ctl(&["logs", "flaky", "fetch"]);
    assert!(String::from_utf8_lossy(&logs.stdout).contains("==> flaky.fetch attempt 3 <=="));
}

#[test]
fn a_spawn_worker_whose_program_cannot_start_fails_its_task_with_the_reason() {
    let bus = TestBus::new(
        "[[worker]]\nname = \"gone\"\ncapabilities = [\"x\"]\ncommand = [\"/nonexistent/agent\", \"{{ prompt }}\"]\n",
    );
    let _d = bus.start();
    bus.submit(
        "nostart.toml",
        "[[task]]\nid = \"a\"\nneeds = [\"x\"]\nretries = 1\n",
    );
    let r = bus.wait_report("nostart", Duration::from_secs(30));
    assert_eq!(r.outcome, Outcome::Failed);
    let a = &r.tasks["a"];
    assert_eq!((a.state, a.attempts), (TaskStateName::Failed, 2));
    let reason = a.reason.as_deref().unwrap();
    assert!(
        reason.contains("/nonexistent/agent") && reason.contains("No such file"),
        "{reason}"
    );
    // Each attempt's result says so too.
    let second = bus.json("archive/nostart/a.2.result.json");
    assert_eq!(second["status"], "error");
    assert!(
        second["error"]
            .as_str()
            .unwrap()
            .contains("/nonexistent/agent"),
        "{second}"
    );
}

#[test]
fn a_worker_past_its_timeout_is_killed_with_its_children() {
    let bus = TestBus::new(&spawn_worker("w", &["x"], 1));
    let _d = bus.start();
    let pidfile = bus.dir.path().join("pids.json");
    bus.submit(
        "slow.toml",
        &format!(
            "[[task]]\nid = \"hang\"\nneeds = [\"x\"]\ntimeout = \"1s\"\ninput = {{ sleep = 600, ignore_term = true, children = 3, pidfile = {:?} }}\n",
            pidfile.display().to_string()
        ),
    );
    let pids = wait_for(Duration::from_secs(20), "the worker's pid file", || {
        fs::read_to_string(&pidfile)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
    });
    let pgid = pids["pgid"].as_i64().unwrap() as i32;
    assert_eq!(
        pgid,
        pids["pid"].as_i64().unwrap() as i32,
        "the worker leads its own process group"
    );
    // The worker, its 3 shells and their sleeps (the shells fork a moment later).
    wait_for(
        Duration::from_secs(10),
        "the worker's whole group to start",
        || (group_members(pgid).len() == 1 + 3 * 2).then_some(()),
    );
    let r = bus.wait_report("slow", Duration::from_secs(30));
    assert_eq!(r.outcome, Outcome::Failed);
    let reason = r.tasks["hang"].reason.as_deref().unwrap();
    assert!(reason.starts_with("timed out after 1s"), "{reason}");
    wait_for(
        Duration::from_secs(10),
        "every process of the group to be gone",
        || group_members(pgid).is_empty().then_some(()),
    );
    for c in pids["children"].as_array().unwrap() {
        assert!(
            !std::path::Path::new(&format!("/proc/{c}")).exists() || group_members(pgid).is_empty()
        );
    }
}

#[test]
fn bad_results_fail_the_attempt_with_the_reason() {
    let bus = TestBus::new(&spawn_worker("w", &["x"], 4));
    let _d = bus.start();
    bus.submit(
        "garbage.toml",
        r#"
[[task]]
id = "schema"
needs = ["x"]
retries = 1
input = { garbage = "stdout" }
output_schema = { type = "object" }
[[task]]
id = "resultfile"
needs = ["x"]
input = { garbage = "result_file" }
[[task]]
id = "wrong-status"
needs = ["x"]
input = { result = { status = "maybe" } }
[[task]]
id = "typo"
needs = ["x"]
input = { result = { status = "ok", outptu = 1 } }
[[task]]
id = "honest"
needs = ["x"]
input = { result = { status = "error", error = "could not reach the model" } }
"#,
    );
    let r = bus.wait_report("garbage", Duration::from_secs(30));
    assert_eq!(r.outcome, Outcome::Failed);
    let reason = |t: &str| r.tasks[t].reason.clone().unwrap_or_default();
    assert!(
        reason("schema").contains("output does not match output_schema"),
        "{}",
        reason("schema")
    );
    assert_eq!(r.tasks["schema"].attempts, 2);
    let second = bus.json("archive/garbage/schema.2.task.json");
    assert!(
        second["previous_error"]
            .as_str()
            .unwrap()
            .contains("output_schema"),
        "the next attempt is told why"
    );
    assert!(
        reason("resultfile").contains("not a result record"),
        "{}",
        reason("resultfile")
    );
    assert!(
        reason("wrong-status").contains("unknown variant `maybe`"),
        "{}",
        reason("wrong-status")
    );
    assert!(
        reason("typo").contains("unknown field `outptu`"),
        "{}",
        reason("typo")
    );
    assert_eq!(reason("honest"), "could not reach the model");
}

#[test]
fn the_demo_runs_from_a_fresh_checkout() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(WORKBUSCTL)
        .args(["demo", "--dir"])
        .arg(dir.path())
        .args(["--repo", env!("CARGO_MANIFEST_DIR")])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    assert!(
        stderr.contains("release-notes: 0/3 tasks done") || stderr.contains("tasks done"),
        "live progress:\n{stderr}"
    );
    assert!(stdout.contains("goal release-notes: succeeded"), "{stdout}");
    let page = fs::read_to_string(dir.path().join("out/release-notes.html")).unwrap();
    assert!(page.contains("<h1>Release notes</h1>"), "{page}");
    // build answers through $WORKBUS_RESULT_FILE: filed once, not also as stale.
    let archive = dir.path().join("bus/archive/release-notes");
    assert!(archive.join("build.1.result.json").exists());
    assert!(!archive.join("build.1.stale.json").exists());
}

/// People `cp` goals into the inbox: a file still being written is read
/// when it is complete, not half-way (and not rejected for it).
#[test]
fn a_goal_written_slowly_in_place_is_read_when_complete() {
    use std::io::Write;
    let bus = TestBus::new(&spawn_worker("w", &["x"], 2));
    let _d = bus.start();
    let text = "[[task]]\nid = \"first\"\nneeds = [\"x\"]\n\n[[task]]\nid = \"second\"\nneeds = [\"x\"]\nafter = [\"first\"]\n";
    let (a, b) = text.split_at(text.find("\n\n").unwrap() + 2);
    let mut f = fs::File::create(bus.path("inbox/slow.toml")).unwrap();
    f.write_all(a.as_bytes()).unwrap();
    f.flush().unwrap();
    std::thread::sleep(Duration::from_millis(700));
    f.write_all(b.as_bytes()).unwrap();
    drop(f);
    let r = bus.wait_report("slow", Duration::from_secs(30));
    assert_eq!(r.outcome, Outcome::Succeeded);
    assert_eq!(
        r.tasks.len(),
        2,
        "both tasks, not the first half of the file"
    );
    assert!(!bus.path("rejected/slow.toml").exists());
}
