//! workbusctl against a running daemon: submit and wait, status, graph,
//! control records (cancel, retry, answer) and bad control records.

use std::fs;
use std::time::Duration;

use workbus_proto::report::{Outcome, TaskStateName};

use crate::util::*;

fn ctl(bus: &TestBus, args: &[&str]) -> (i32, String, String) {
    let out = bus.ctl(args);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn submit_wait_exits_by_outcome_and_validate_gives_the_daemons_words() {
    let bus = TestBus::new(&spawn_worker("w", &["x"], 2));
    let _d = bus.start();
    let good = bus.dir.path().join("good.toml");
    fs::write(
        &good,
        "[[task]]\nid = \"a\"\nneeds = [\"x\"]\ninput = { output = \"fine\" }\n",
    )
    .unwrap();
    let (code, out, err) = ctl(&bus, &["submit", good.to_str().unwrap(), "--wait"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("goal good: succeeded"), "{out}");
    assert!(err.contains("good:"), "progress on stderr: {err}");
    // The same file again gets a fresh id, not a clash.
    let (code, out, _) = ctl(&bus, &["submit", good.to_str().unwrap(), "--wait"]);
    assert_eq!(code, 0);
    assert!(out.contains("submitted goal good-2"), "{out}");

    let bad = bus.dir.path().join("bad.toml");
    fs::write(
        &bad,
        "[[task]]\nid = \"a\"\nneeds = [\"x\"]\nretries = 1\ninput = { fail = \"no\" }\n",
    )
    .unwrap();
    let (code, out, _) = ctl(&bus, &["submit", bad.to_str().unwrap(), "--wait"]);
    assert_eq!(code, 1, "a failed goal exits 1: {out}");
    assert!(out.contains("goal bad: failed"), "{out}");

    let cyc = bus.dir.path().join("cyc.toml");
    fs::write(
        &cyc,
        "[[task]]\nid = \"a\"\nafter = [\"b\"]\n[[task]]\nid = \"b\"\nafter = [\"a\"]\n",
    )
    .unwrap();
    let (code, _, err) = ctl(&bus, &["validate", cyc.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("the tasks form a cycle: a → b → a"), "{err}");
    let (code, _, err) = ctl(&bus, &["submit", cyc.to_str().unwrap()]);
    assert_eq!(code, 2, "refused before it reaches the inbox");
    assert!(err.contains("cycle"), "{err}");
    assert_eq!(fs::read_dir(bus.path("inbox")).unwrap().count(), 0);

    let (code, out, _) = ctl(&bus, &["status"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("workbusd pid") && out.contains("1/1 worker(s) healthy"),
        "{out}"
    );
    let (code, out, _) = ctl(&bus, &["status", "good", "--json"]);
    assert_eq!(code, 0);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["tasks"]["a"]["output"], "fine");
    let (code, out, _) = ctl(&bus, &["status", "nope"]);
    assert_eq!((code, out.contains("no goal nope")), (3, true));
}

#[test]
fn graphs_in_dot_and_mermaid() {
    let bus = TestBus::new(&spawn_worker("w", &["x"], 2));
    let _d = bus.start();
    bus.submit("g.toml", "[[task]]\nid = \"a\"\nneeds = [\"x\"]\n[[task]]\nid = \"b\"\nneeds = [\"x\"]\nafter = [\"a\"]\n");
    bus.wait_report("g", Duration::from_secs(30));
    let (code, dot, _) = ctl(&bus, &["graph", "g", "--format", "dot"]);
    assert_eq!(code, 0);
    assert!(
        dot.contains("digraph \"g\"")
            && dot.contains("\"a\" -> \"b\";")
            && dot.contains("succeeded"),
        "{dot}"
    );
    let (_, mm, _) = ctl(&bus, &["graph", "g", "--format", "mermaid"]);
    assert!(mm.starts_with("graph LR") && mm.contains("a --> b"), "{mm}");
}

#[test]
fn cancel_retry_and_answer_through_control_records() {
    let bus = TestBus::new(&spawn_worker("w", &["x"], 4));
    let _d = bus.start();
    // cancel
    bus.submit(
        "long.toml",
        "[[task]]\nid = \"a\"\nneeds = [\"x\"]\ninput = { sleep = 60 }\n",
    );
    wait_for(Duration::from_secs(20), "a to run", || {
        bus.path("claimed/long.a.1.w.json").exists().then_some(())
    });
    let (code, out, _) = ctl(&bus, &["cancel", "long", "--reason", "changed my mind"]);
    assert_eq!(code, 0, "{out}");
    let r = bus.wait_report("long", Duration::from_secs(30));
    assert_eq!(
        (r.outcome, r.reason.as_deref()),
        (Outcome::Cancelled, Some("changed my mind"))
    );
    assert_eq!(r.tasks["a"].state, TaskStateName::Cancelled);
    // retry: a failed task gets a fresh attempt while another branch runs
    bus.submit(
        "again.toml",
        "[[task]]\nid = \"flaky\"\nneeds = [\"x\"]\ninput = { fail = \"once\", fail_until = 2 }\n[[task]]\nid = \"slow\"\nneeds = [\"x\"]\ninput = { sleep = 3 }\n",
    );
    wait_for(Duration::from_secs(20), "flaky to fail", || {
        let st = bus.status()?;
        let g = st["goals"]
            .as_array()?
            .iter()
            .find(|g| g["id"] == "again")?
            .clone();
        (g["tasks"]["flaky"]["state"] == "failed").then_some(())
    });
    let (code, _, _) = ctl(&bus, &["retry", "again", "flaky"]);
    assert_eq!(code, 0);
    let r = bus.wait_report("again", Duration::from_secs(30));
    assert_eq!(
        (r.outcome, r.tasks["flaky"].attempts),
        (Outcome::Succeeded, 2)
    );
    // answer: a task that needs a person waits for one
    bus.submit("gate.toml", "[[task]]\nid = \"approve\"\nneeds = [\"human\"]\n[[task]]\nid = \"ship\"\nneeds = [\"x\"]\nafter = [\"approve\"]\n");
    wait_for(Duration::from_secs(20), "the gate to wait", || {
        bus.path("tasks/gate.approve.1.json").exists().then_some(())
    });
    let (code, _, _) = ctl(
        &bus,
        &["answer", "gate", "approve", "--output", "{\"by\": \"ops\"}"],
    );
    assert_eq!(code, 0);
    let r = bus.wait_report("gate", Duration::from_secs(30));
    assert_eq!(r.outcome, Outcome::Succeeded);
    assert_eq!(
        r.tasks["approve"].output,
        Some(serde_json::json!({"by": "ops"}))
    );
    assert_eq!(r.tasks["approve"].worker.as_deref(), Some("human"));
    assert!(
        fs::read_dir(bus.path("control")).unwrap().next().is_none(),
        "control records are consumed"
    );
}

#[test]
fn bad_control_records_are_rejected_with_the_reason() {
    let bus = TestBus::new("");
    let d = bus.start();
    let cases: &[(&str, &[u8], &str)] = &[
        ("garbage.json", b"{not json", "not a control record"),
        ("unknown.json", b"{\"command\": \"explode\", \"goal\": \"g\"}", "unknown variant `explode`"),
        ("typo.json", b"{\"command\": \"cancel\", \"gaol\": \"g\"}", "unknown field `gaol`"),
        ("answer.json", b"{\"command\": \"answer\", \"goal\": \"g\"}", "answer needs a task"),
        ("both.json", b"{\"command\": \"answer\", \"goal\": \"g\", \"task\": \"t\", \"output\": 1, \"error\": \"x\"}", "not both"),
        ("future.json", b"{\"schema_version\": 99, \"command\": \"cancel\", \"goal\": \"g\"}", "schema_version 99 is not supported"),
        ("badid.json", b"{\"command\": \"cancel\", \"goal\": \"../x\"}", "must start with a letter or digit"),
        ("notes.txt", b"hello", "named *.json"),
    ];
    for (name, bytes, _) in cases {
        fs::write(bus.path(&format!("control/.{name}.tmp")), bytes).unwrap();
        fs::rename(
            bus.path(&format!("control/.{name}.tmp")),
            bus.path(&format!("control/{name}")),
        )
        .unwrap();
    }
    for (name, _, want) in cases {
        let e = bus.wait_rejected(name);
        let msg = e["message"].as_str().unwrap();
        assert!(msg.contains(want), "{name}: {msg}");
        assert_eq!(e["file"], format!("control/{name}"));
    }
    // A well-formed command for a goal that is not in flight is consumed with a warning.
    fs::write(
        bus.path("control/ok.json"),
        b"{\"command\": \"cancel\", \"goal\": \"ghost\"}",
    )
    .unwrap();
    d.wait_log("cancel: the goal is not in flight", Duration::from_secs(10));
    assert!(!bus.path("control/ok.json").exists());
}

#[test]
fn workers_run_in_their_cwd_with_their_env() {
    let cwd = tempfile::tempdir().unwrap();
    let fleet = format!(
        "[[worker]]\nname = \"here\"\ncapabilities = [\"pwd\"]\ncwd = {:?}\nenv = {{ GREETING = \"hello\" }}\ncommand = [\"/bin/sh\", \"-c\", \"printf '{{\\\"pwd\\\": \\\"%s\\\", \\\"greeting\\\": \\\"%s\\\", \\\"arg\\\": \\\"%s\\\"}}' \\\"$(pwd)\\\" \\\"$GREETING\\\" \\\"$0\\\"\", \"{{{{ input.word }}}}\"]\n",
        cwd.path().display().to_string()
    );
    let bus = TestBus::new(&fleet);
    let _d = bus.start();
    bus.submit(
        "where.toml",
        "[[task]]\nid = \"t\"\nneeds = [\"pwd\"]\ninput = { word = \"a b; $(rm -rf /)\" }\n",
    );
    let r = bus.wait_report("where", Duration::from_secs(30));
    let out = r.tasks["t"].output.clone().unwrap_or_default();
    assert_eq!(
        out["pwd"],
        cwd.path().canonicalize().unwrap().display().to_string(),
        "{r:#?}"
    );
    assert_eq!(out["greeting"], "hello");
    assert_eq!(
        out["arg"], "a b; $(rm -rf /)",
        "a rendered argument is one argv element, never shell text"
    );
}
