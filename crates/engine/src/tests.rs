//! Engine tests: inputs in, effects out, time as a number. No sleeping.

use super::*;
use serde_json::json;
use workbus_proto::parse::Format;

const S: u64 = 1000;

fn id(s: &str) -> Id {
    Id::new(s).unwrap()
}

fn goal(text: &str) -> Goal {
    validate_goal(
        text.as_bytes(),
        Format::Toml,
        "g.toml",
        &Limits::default(),
        Timestamp(0),
    )
    .unwrap()
}

fn spawn_worker(name: &str, caps: &[&str], concurrency: u32) -> WorkerView {
    WorkerView {
        name: id(name),
        capabilities: caps
            .iter()
            .map(|c| workbus_proto::Capability::new(*c).unwrap())
            .collect(),
        kind: WorkerKind::Spawn { concurrency },
        healthy: true,
        last_seen: None,
        timeout: None,
        draining: false,
    }
}

fn bus_worker(name: &str, caps: &[&str], kind: WorkerKind, last_seen: u64) -> WorkerView {
    WorkerView {
        kind,
        last_seen: Some(Timestamp(last_seen)),
        ..spawn_worker(name, caps, 1)
    }
}

struct H {
    e: Engine,
    now: u64,
}

impl H {
    fn new(workers: Vec<WorkerView>) -> H {
        let cfg = Config {
            capability_grace: Duration::from_secs(10),
            retry_backoff: Duration::from_secs(1),
            retry_backoff_max: Duration::from_secs(60),
            default_timeout: Duration::from_secs(100),
            lease_timeout: Duration::from_secs(30),
            max_running: 100,
            limits: Limits::default(),
        };
        let mut h = H {
            e: Engine::new(cfg),
            now: 0,
        };
        h.input(Input::Workers(workers));
        h
    }
    fn input(&mut self, i: Input) -> Vec<Effect> {
        self.e.handle(Timestamp(self.now), i)
    }
    fn at(&mut self, ms: u64) -> Vec<Effect> {
        self.now = ms;
        self.input(Input::Tick)
    }
    fn ok(&mut self, key: &AttemptKey, output: Value) -> Vec<Effect> {
        self.input(Input::Result {
            key: key.clone(),
            result: ResultRecord::ok(output),
        })
    }
    fn err(&mut self, key: &AttemptKey, msg: &str) -> Vec<Effect> {
        self.input(Input::Result {
            key: key.clone(),
            result: ResultRecord::error(msg),
        })
    }
}

fn key(g: &str, t: &str, a: u32) -> AttemptKey {
    AttemptKey::new(id(g), id(t), a)
}

fn dispatched(fx: &[Effect]) -> Vec<(String, String, u32)> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Dispatch { worker, record } => {
                Some((worker.to_string(), record.task.to_string(), record.attempt))
            }
            _ => None,
        })
        .collect()
}

fn published(fx: &[Effect]) -> Vec<Arc<TaskRecord>> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Publish(r) => Some(r.clone()),
            _ => None,
        })
        .collect()
}

fn report(fx: &[Effect]) -> Option<Report> {
    fx.iter().find_map(|e| match e {
        Effect::Finished(r) => Some((**r).clone()),
        _ => None,
    })
}

fn has_stale(fx: &[Effect]) -> bool {
    fx.iter().any(|e| matches!(e, Effect::Stale { .. }))
}

const SEED: &str = r#"
id = "g"
[[task]]
id = "gather"
needs = ["git"]
input = { repo = "/srv" }
[[task]]
id = "narrate"
needs = ["llm"]
after = ["gather"]
prompt = "Notes for {{ deps.gather.output.commits | length }} commits in {{ goal.id }}"
[[task]]
id = "build"
needs = ["docs"]
after = ["narrate"]
"#;

#[test]
fn the_seed_chain_flows_and_carries_outputs() {
    let mut h = H::new(vec![spawn_worker("w", &["git", "llm", "docs"], 2)]);
    let fx = h.input(Input::Goal(goal(SEED)));
    assert_eq!(dispatched(&fx), vec![("w".into(), "gather".into(), 1)]);
    assert_eq!(published(&fx).len(), 1);
    h.now = 5;
    let fx = h.ok(&key("g", "gather", 1), json!({"commits": ["a", "b", "c"]}));
    let rec = published(&fx).pop().unwrap();
    assert_eq!(rec.task.as_str(), "narrate");
    assert_eq!(
        rec.deps["gather"].output,
        json!({"commits": ["a", "b", "c"]})
    );
    assert_eq!(rec.prompt.as_deref(), Some("Notes for 3 commits in g"));
    assert!(
        fx.iter()
            .any(|e| matches!(e, Effect::Archive { key } if key.task.as_str() == "gather"))
    );
    let fx = h.ok(&key("g", "narrate", 1), json!("prose"));
    assert_eq!(dispatched(&fx), vec![("w".into(), "build".into(), 1)]);
    h.now = 9;
    let fx = h.ok(&key("g", "build", 1), json!({"path": "/x.html"}));
    let r = report(&fx).unwrap();
    assert_eq!(r.outcome, Outcome::Succeeded);
    assert_eq!(r.tasks["narrate"].output, Some(json!("prose")));
    assert_eq!(r.tasks["gather"].attempts, 1);
    assert_eq!(r.tasks["build"].finished_at, Some(Timestamp(9)));
    assert_eq!(r.tasks["gather"].worker.as_deref(), Some("w"));
    assert_eq!(h.e.goals_in_flight(), 0);
    assert_eq!(h.e.spawned(), 0);
    assert_eq!(h.e.next_deadline(), None, "an idle engine has no timers");
}

#[test]
fn independent_branches_are_released_together() {
    let mut h = H::new(vec![spawn_worker("w", &["x"], 4)]);
    h.input(Input::Goal(goal(
        "id = \"g\"\n[[task]]\nid = \"a\"\nneeds = [\"x\"]\n[[task]]\nid = \"b\"\nneeds = [\"x\"]\nafter = [\"a\"]\n[[task]]\nid = \"c\"\nneeds = [\"x\"]\nafter = [\"a\"]\n[[task]]\nid = \"d\"\nneeds = [\"x\"]\nafter = [\"b\", \"c\"]\n",
    )));
    let fx = h.ok(&key("g", "a", 1), json!(1));
    let mut d = dispatched(&fx);
    d.sort();
    assert_eq!(
        d,
        vec![("w".into(), "b".into(), 1), ("w".into(), "c".into(), 1)]
    );
    assert!(dispatched(&h.ok(&key("g", "b", 1), json!(2))).is_empty());
    let fx = h.ok(&key("g", "c", 1), json!(3));
    let rec = match fx.iter().find(|e| matches!(e, Effect::Dispatch { .. })) {
        Some(Effect::Dispatch { record, .. }) => record.clone(),
        _ => panic!("d not dispatched"),
    };
    assert_eq!(rec.deps.len(), 2);
}

#[test]
fn concurrency_and_least_busy_routing() {
    let mut h = H::new(vec![
        spawn_worker("a", &["x"], 1),
        spawn_worker("b", &["x"], 2),
    ]);
    let fx = h.input(Input::Goal(goal(
        "id = \"g\"\n[[task]]\nid = \"t1\"\nneeds = [\"x\"]\n[[task]]\nid = \"t2\"\nneeds = [\"x\"]\n[[task]]\nid = \"t3\"\nneeds = [\"x\"]\n[[task]]\nid = \"t4\"\nneeds = [\"x\"]\n",
    )));
    let d = dispatched(&fx);
    assert_eq!(d.len(), 3, "three slots in all: {d:?}");
    assert_eq!(d.iter().filter(|x| x.0 == "a").count(), 1);
    assert_eq!(d.iter().filter(|x| x.0 == "b").count(), 2);
    let first = d[0].1.clone();
    let fx = h.ok(&key("g", &first, 1), json!(null));
    assert_eq!(
        dispatched(&fx).len(),
        1,
        "a freed slot takes the fourth task"
    );
}

#[test]
fn missing_capability_is_skipped_after_grace_and_the_goal_degrades() {
    let mut h = H::new(vec![spawn_worker("w", &["x"], 2)]);
    let fx = h.input(Input::Goal(goal(
        "id = \"g\"\n[[task]]\nid = \"a\"\nneeds = [\"gpu\"]\n[[task]]\nid = \"b\"\nneeds = [\"x\"]\nafter = [\"a\"]\n[[task]]\nid = \"c\"\nneeds = [\"x\"]\n",
    )));
    assert_eq!(dispatched(&fx), vec![("w".into(), "c".into(), 1)]);
    assert_eq!(h.e.next_deadline(), Some(Timestamp(10 * S)));
    h.now = 5;
    h.ok(&key("g", "c", 1), json!("done"));
    assert!(report(&h.at(9_999)).is_none());
    let fx = h.at(10 * S);
    assert!(
        fx.iter()
            .any(|e| matches!(e, Effect::Archive { key } if key.task.as_str() == "a")),
        "the queued file is withdrawn"
    );
    let r = report(&fx).unwrap();
    assert_eq!(r.outcome, Outcome::Degraded);
    assert_eq!(r.tasks["a"].state, TaskStateName::Skipped);
    assert!(
        r.tasks["a"]
            .reason
            .as_deref()
            .unwrap()
            .contains("no healthy worker offers [gpu]")
    );
    assert_eq!(r.tasks["b"].state, TaskStateName::Skipped);
    assert_eq!(r.tasks["b"].reason.as_deref(), Some("dependency a skipped"));
    assert_eq!(r.tasks["c"].state, TaskStateName::Succeeded);
}

#[test]
fn a_worker_appearing_within_grace_takes_the_task() {
    let mut h = H::new(vec![]);
    h.input(Input::Goal(goal(
        "id = \"g\"\n[[task]]\nid = \"a\"\nneeds = [\"gpu\"]\n",
    )));
    h.now = 3 * S;
    let fx = h.input(Input::Workers(vec![spawn_worker("w", &["gpu"], 1)]));
    assert_eq!(dispatched(&fx), vec![("w".into(), "a".into(), 1)]);
    assert!(
        report(&h.at(20 * S)).is_none(),
        "the grace timer is void once served"
    );
}

/// A worker that serves many waiting tasks is one note per goal, not one
/// per task (a fleet edit may serve tens of thousands at once).
#[test]
fn a_worker_serving_many_waiting_tasks_is_one_note_per_goal() {
    let notes = |fx: &[Effect]| -> Vec<(Option<String>, Option<String>, String)> {
        fx.iter()
            .filter_map(|e| match e {
                Effect::Note(n) if n.message.contains("now offers") => Some((
                    n.goal.as_ref().map(|g| g.to_string()),
                    n.task.as_ref().map(|t| t.to_string()),
                    n.message.clone(),
                )),
                _ => None,
            })
            .collect()
    };
    let mut h = H::new(vec![]);
    let many: String = (0..50)
        .map(|i| format!("[[task]]\nid = \"t{i}\"\nneeds = [\"gpu\"]\n"))
        .collect();
    h.input(Input::Goal(goal(&format!("id = \"g\"\n{many}"))));
    h.input(Input::Goal(goal(
        "id = \"h\"\n[[task]]\nid = \"a\"\nneeds = [\"gpu\"]\n",
    )));
    h.now = 3 * S;
    let fx = h.input(Input::Workers(vec![spawn_worker("w", &["gpu"], 1)]));
    let mut got = notes(&fx);
    got.sort();
    assert_eq!(
        got,
        vec![
            (
                Some("g".into()),
                None,
                "50 queued tasks: a worker now offers their capabilities".into()
            ),
            (
                Some("h".into()),
                Some("a".into()),
                "a worker now offers its capabilities".into()
            ),
        ]
    );
}

#[test]
fn failures_retry_with_backoff_then_fail_and_skip_downstream() {
    let mut h = H::new(vec![spawn_worker("w", &["x"], 1)]);
    h.input(Input::Goal(goal(
        "id = \"g\"\n[[task]]\nid = \"a\"\nneeds = [\"x\"]\nretries = 2\n[[task]]\nid = \"b\"\nneeds = [\"x\"]\nafter = [\"a\"]\n",
    )));
    let fx = h.err(&key("g", "a", 1), "boom 1");
    assert!(published(&fx).is_empty(), "backoff first");
    assert_eq!(h.e.next_deadline(), Some(Timestamp(S)));
    let fx = h.at(S);
    let rec = published(&fx).pop().unwrap();
    assert_eq!(
        (rec.attempt, rec.previous_error.as_deref()),
        (2, Some("boom 1"))
    );
    h.err(&key("g", "a", 2), "boom 2");
    assert_eq!(
        h.e.next_deadline(),
        Some(Timestamp(3 * S)),
        "the delay doubles"
    );
    assert!(published(&h.at(3 * S - 1)).is_empty());
    assert_eq!(published(&h.at(3 * S)).len(), 1);
    let fx = h.err(&key("g", "a", 3), "boom 3");
    let r = report(&fx).unwrap();
    assert_eq!(r.outcome, Outcome::Failed);
    assert_eq!(r.tasks["a"].attempts, 3);
    assert_eq!(
        r.tasks["a"].reason.as_deref(),
        Some("boom 3 (after 3 attempts)")
    );
    assert_eq!(r.tasks["b"].state, TaskStateName::Skipped);
    assert_eq!(r.tasks["b"].reason.as_deref(), Some("dependency a failed"));
}

#[test]
fn stale_results_are_fenced_by_the_attempt_number() {
    let mut h = H::new(vec![spawn_worker("w", &["x"], 1)]);
    h.input(Input::Goal(goal(
        "id = \"g\"\n[[task]]\nid = \"a\"\nneeds = [\"x\"]\nretries = 1\ntimeout = \"5s\"\n",
    )));
    let fx = h.at(5 * S);
    assert!(fx.iter().any(|e| matches!(e, Effect::Kill { .. })));
    assert!(fx.iter().any(|e| matches!(e, Effect::WriteResult { record, .. } if record.error.as_deref() == Some("timed out after 5s"))));
    assert!(has_stale(&h.ok(&key("g", "a", 1), json!("late"))));
    h.at(6 * S);
    assert!(h.e.is_live(&key("g", "a", 2)));
    assert!(has_stale(&h.ok(&key("g", "a", 1), json!("later still"))));
    let r = report(&h.ok(&key("g", "a", 2), json!("fresh"))).unwrap();
    assert_eq!(r.tasks["a"].output, Some(json!("fresh")));
    assert!(
        has_stale(&h.ok(&key("g", "a", 2), json!("twice"))),
        "a finished goal takes no more results"
    );
}

#[test]
fn output_schema_violations_fail_the_attempt_and_tell_the_next() {
    let mut h = H::new(vec![spawn_worker("w", &["x"], 1)]);
    h.input(Input::Goal(goal(
        "id = \"g\"\n[[task]]\nid = \"a\"\nneeds = [\"x\"]\nretries = 1\noutput_schema = { type = \"object\", required = [\"markdown\"] }\n",
    )));
    h.ok(&key("g", "a", 1), json!({"md": "x"}));
    let rec = published(&h.at(S)).pop().unwrap();
    let e = rec.previous_error.clone().unwrap();
    assert!(
        e.contains("output does not match output_schema") && e.contains("markdown"),
        "{e}"
    );
    let r = report(&h.ok(&key("g", "a", 2), json!({"markdown": "# ok"}))).unwrap();
    assert_eq!(r.outcome, Outcome::Succeeded);
}

#[test]
fn results_that_contradict_their_file_name_fail_the_attempt() {
    let mut h = H::new(vec![spawn_worker("w", &["x"], 1)]);
    h.input(Input::Goal(goal(
        "id = \"g\"\n[[task]]\nid = \"a\"\nneeds = [\"x\"]\n",
    )));
    let mut r = ResultRecord::ok(json!(1));
    r.attempt = Some(7);
    let rep = report(&h.input(Input::Result {
        key: key("g", "a", 1),
        result: r,
    }))
    .unwrap();
    assert!(
        rep.tasks["a"]
            .reason
            .as_deref()
            .unwrap()
            .contains("bad result: its attempt is 7")
    );
    let mut h = H::new(vec![spawn_worker("w", &["x"], 1)]);
    h.input(Input::Goal(goal(
        "id = \"g\"\n[[task]]\nid = \"a\"\nneeds = [\"x\"]\n",
    )));
    let rep = report(&h.input(Input::BadResult {
        key: key("g", "a", 1),
        error: "line 1: EOF".into(),
    }))
    .unwrap();
    assert_eq!(
        rep.tasks["a"].reason.as_deref(),
        Some("bad result: line 1: EOF")
    );
}

#[test]
fn priority_orders_the_queue() {
    let mut h = H::new(vec![spawn_worker("w", &["x"], 1)]);
    h.input(Input::Goal(goal(
        "id = \"busy\"\n[[task]]\nid = \"a\"\nneeds = [\"x\"]\n",
    )));
    h.input(Input::Goal(goal(
        "id = \"low\"\npriority = -1\n[[task]]\nid = \"a\"\nneeds = [\"x\"]\n",
    )));
    h.input(Input::Goal(goal(
        "id = \"high\"\npriority = 5\n[[task]]\nid = \"a\"\nneeds = [\"x\"]\n",
    )));
    let fx = h.ok(&key("busy", "a", 1), json!(0));
    let d: Vec<String> = fx
        .iter()
        .filter_map(|e| match e {
            Effect::Dispatch { record, .. } => Some(record.goal.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(d, vec!["high"]);
}

#[test]
fn deadlines_time_the_goal_out_and_kill_what_runs() {
    let mut h = H::new(vec![spawn_worker("w", &["x"], 1)]);
    h.input(Input::Goal(goal("id = \"g\"\ndeadline = \"2s\"\n[[task]]\nid = \"a\"\nneeds = [\"x\"]\n[[task]]\nid = \"b\"\nneeds = [\"x\"]\nafter = [\"a\"]\n")));
    let fx = h.at(2 * S);
    assert!(
        fx.iter()
            .any(|e| matches!(e, Effect::Kill { key, .. } if key.task.as_str() == "a"))
    );
    let r = report(&fx).unwrap();
    assert_eq!(r.outcome, Outcome::TimedOut);
    assert_eq!(r.tasks["a"].state, TaskStateName::Cancelled);
    assert_eq!(h.e.spawned(), 0);
}

#[test]
fn cancel_ends_the_goal() {
    let mut h = H::new(vec![spawn_worker("w", &["x"], 1)]);
    h.input(Input::Goal(goal(
        "id = \"g\"\n[[task]]\nid = \"a\"\nneeds = [\"x\"]\n",
    )));
    let r = report(&h.input(Input::Cancel {
        goal: id("g"),
        reason: "asked by a person".into(),
    }))
    .unwrap();
    assert_eq!(r.outcome, Outcome::Cancelled);
    assert_eq!(r.reason.as_deref(), Some("asked by a person"));
}

#[test]
fn bus_workers_claim_and_lose_their_lease() {
    let mut h = H::new(vec![bus_worker("r", &["x"], WorkerKind::Resident, 0)]);
    let fx = h.input(Input::Goal(goal(
        "id = \"g\"\n[[task]]\nid = \"a\"\nneeds = [\"x\"]\nretries = 1\n",
    )));
    assert!(
        dispatched(&fx).is_empty(),
        "bus workers claim for themselves"
    );
    h.input(Input::Claimed {
        key: key("g", "a", 1),
        worker: id("r"),
    });
    assert_eq!(h.e.running_on(&id("r")), 1);
    assert_eq!(
        h.e.next_deadline(),
        Some(Timestamp(30 * S + 1)),
        "the lease is watched"
    );
    let fx = h.at(30 * S + 1);
    assert!(fx.iter().any(|e| matches!(e, Effect::WriteResult { record, .. } if record.error.as_deref().unwrap().contains("lease lost"))));
    assert_eq!(h.e.running_on(&id("r")), 0);
    // The worker comes back and answers the old attempt: stale.
    h.input(Input::Workers(vec![bus_worker(
        "r",
        &["x"],
        WorkerKind::Resident,
        31 * S,
    )]));
    assert!(has_stale(&h.ok(&key("g", "a", 1), json!("late"))));
    let fx = h.at(32 * S);
    assert_eq!(published(&fx)[0].attempt, 2);
    h.input(Input::Claimed {
        key: key("g", "a", 2),
        worker: id("r"),
    });
    assert_eq!(
        report(&h.ok(&key("g", "a", 2), json!("ok")))
            .unwrap()
            .outcome,
        Outcome::Succeeded
    );
}

#[test]
fn an_external_worker_is_routed_to_while_its_heartbeat_is_fresh() {
    let mut h = H::new(vec![bus_worker("ext", &["x"], WorkerKind::External, 0)]);
    h.now = 40 * S;
    let fx = h.input(Input::Goal(goal(
        "id = \"g\"\n[[task]]\nid = \"a\"\nneeds = [\"x\"]\n",
    )));
    assert!(fx.is_empty() || report(&fx).is_none());
    // Its heartbeat is 40 s old (lease 30 s): the grace period runs.
    h.at(40 * S);
    assert_eq!(h.e.next_deadline(), Some(Timestamp(50 * S)));
    let r = report(&h.at(50 * S)).unwrap();
    assert_eq!(r.outcome, Outcome::Degraded);
}

#[test]
fn a_resident_worker_exit_voids_its_claims() {
    let mut h = H::new(vec![bus_worker("r", &["x"], WorkerKind::Resident, 0)]);
    h.input(Input::Goal(goal(
        "id = \"g\"\n[[task]]\nid = \"a\"\nneeds = [\"x\"]\nretries = 1\n",
    )));
    h.input(Input::Claimed {
        key: key("g", "a", 1),
        worker: id("r"),
    });
    let fx = h.input(Input::WorkerExited {
        name: id("r"),
        reason: "worker r exited (killed by SIGKILL)".into(),
    });
    assert!(fx.iter().any(|e| matches!(e, Effect::WriteResult { .. })));
    assert!(!h.e.is_live(&key("g", "a", 1)));
}

#[test]
fn a_lost_dispatch_race_waits_for_the_winner() {
    let mut h = H::new(vec![
        spawn_worker("w", &["x"], 1),
        bus_worker("r", &["x"], WorkerKind::Resident, 0),
    ]);
    h.input(Input::Goal(goal(
        "id = \"g\"\n[[task]]\nid = \"a\"\nneeds = [\"x\"]\n",
    )));
    assert_eq!(h.e.spawned(), 1);
    h.input(Input::ClaimRaced {
        key: key("g", "a", 1),
    });
    assert_eq!(h.e.spawned(), 0);
    h.input(Input::Claimed {
        key: key("g", "a", 1),
        worker: id("r"),
    });
    assert_eq!(h.e.running_on(&id("r")), 1);
    assert_eq!(
        report(&h.ok(&key("g", "a", 1), json!(1))).unwrap().tasks["a"]
            .worker
            .as_deref(),
        Some("r")
    );
}

fn facts(
    attempt: u32,
    claim: Option<(&str, bool)>,
    result: Option<ResultRecord>,
    archived: bool,
) -> AttemptFacts {
    AttemptFacts {
        attempt,
        published: claim.is_none() && result.is_none(),
        claim: claim.map(|(w, alive)| ClaimFacts {
            worker: id(w),
            alive,
        }),
        result: result.map(Ok),
        archived,
    }
}

#[test]
fn recovery_replays_the_bus() {
    let mut h = H::new(vec![spawn_worker("w", &["git", "llm", "docs"], 2)]);
    let mut history = History::new();
    let mut failed = ResultRecord::error("flaky");
    failed.worker = Some("w".into());
    history.insert(
        id("gather"),
        vec![
            facts(1, Some(("w", false)), Some(failed), true),
            facts(
                2,
                Some(("w", false)),
                Some(ResultRecord::ok(json!({"commits": ["x"]}))),
                false,
            ),
        ],
    );
    history.insert(
        id("narrate"),
        vec![facts(1, Some(("w", false)), None, false)],
    );
    let mut g = goal(SEED);
    g.tasks[0].retries = 1;
    let fx = h.input(Input::Recover { goal: g, history });
    // gather: attempt 2's unarchived result is absorbed; no new gather attempt.
    assert!(fx.iter().any(|e| matches!(e, Effect::Archive { key } if key.task.as_str() == "gather" && key.attempt == 2)));
    // narrate's claimant died with the old daemon: a new attempt, free.
    let recs = published(&fx);
    assert_eq!(recs.len(), 1);
    assert_eq!((recs[0].task.as_str(), recs[0].attempt), ("narrate", 2));
    assert_eq!(recs[0].deps["gather"].output, json!({"commits": ["x"]}));
    assert!(
        recs[0]
            .previous_error
            .as_deref()
            .unwrap()
            .contains("daemon restarted")
    );
    h.ok(&key("g", "narrate", 2), json!("n"));
    let r = report(&h.ok(&key("g", "build", 1), json!("b"))).unwrap();
    assert_eq!(r.outcome, Outcome::Succeeded);
    assert_eq!(r.tasks["gather"].attempts, 2);
}

#[test]
fn recovery_keeps_live_claims_and_queued_tasks() {
    let mut h = H::new(vec![bus_worker("r", &["x"], WorkerKind::Resident, 0)]);
    let mut history = History::new();
    history.insert(id("a"), vec![facts(1, Some(("r", true)), None, false)]);
    history.insert(id("b"), vec![facts(3, None, None, false)]);
    let g = goal(
        "id = \"g\"\n[[task]]\nid = \"a\"\nneeds = [\"x\"]\n[[task]]\nid = \"b\"\nneeds = [\"x\"]\n",
    );
    let fx = h.input(Input::Recover { goal: g, history });
    assert!(
        published(&fx).is_empty(),
        "nothing new: a runs, b is still queued: {fx:?}"
    );
    assert!(h.e.is_live(&key("g", "a", 1)));
    assert!(h.e.is_live(&key("g", "b", 3)));
    assert!(has_stale(&h.ok(&key("g", "b", 2), json!(0))));
}

#[test]
fn recovery_of_a_long_chain_does_not_recurse() {
    let n = 20_000;
    let mut text = String::from("id = \"g\"\n");
    let mut history = History::new();
    for i in 0..n {
        text.push_str(&format!("[[task]]\nid = \"t{i}\"\n"));
        if i > 0 {
            text.push_str(&format!("after = [\"t{}\"]\n", i - 1));
        }
        if i < n - 1 {
            history.insert(
                id(&format!("t{i}")),
                vec![facts(1, None, Some(ResultRecord::ok(json!(i))), true)],
            );
        }
    }
    let g = validate_goal(
        text.as_bytes(),
        Format::Toml,
        "g.toml",
        &Limits {
            max_goal_bytes: 1 << 30,
            max_tasks_per_goal: n,
        },
        Timestamp(0),
    )
    .unwrap();
    let mut h = H::new(vec![spawn_worker("w", &["x"], 1)]);
    let fx = h.input(Input::Recover { goal: g, history });
    let recs = published(&fx);
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].task.to_string(), format!("t{}", n - 1));
}

#[test]
fn planned_goals_run_the_plan() {
    let mut h = H::new(vec![spawn_worker("w", &["planner", "x"], 4)]);
    h.input(Input::Goal(goal(
        "id = \"g\"\nplan = { needs = [\"planner\"], prompt = \"split it\" }\n",
    )));
    let fx = h.ok(
        &key("g", "plan", 1),
        json!({"task": [{"id": "a", "needs": ["x"]}, {"id": "b", "needs": ["x"], "after": ["a"]}]}),
    );
    assert_eq!(dispatched(&fx), vec![("w".into(), "a".into(), 1)]);
    h.ok(&key("g", "a", 1), json!(1));
    let r = report(&h.ok(&key("g", "b", 1), json!(2))).unwrap();
    assert_eq!(r.outcome, Outcome::Succeeded);
    assert_eq!(r.tasks.len(), 3);

    let mut h = H::new(vec![spawn_worker("w", &["planner"], 1)]);
    h.input(Input::Goal(goal(
        "id = \"g\"\nplan = { needs = [\"planner\"] }\n",
    )));
    let r = report(&h.ok(
        &key("g", "plan", 1),
        json!({"task": [{"id": "a", "after": ["a"]}]}),
    ))
    .unwrap();
    assert_eq!(r.outcome, Outcome::Failed);
    assert!(
        r.reason.as_deref().unwrap().starts_with("invalid plan:"),
        "{:?}",
        r.reason
    );
}

#[test]
fn a_person_can_retry_a_failed_task_while_the_goal_runs() {
    let mut h = H::new(vec![spawn_worker("w", &["x"], 2)]);
    h.input(Input::Goal(goal("id = \"g\"\n[[task]]\nid = \"a\"\nneeds = [\"x\"]\n[[task]]\nid = \"b\"\nneeds = [\"x\"]\nafter = [\"a\"]\n[[task]]\nid = \"slow\"\nneeds = [\"x\"]\n")));
    h.err(&key("g", "a", 1), "bad");
    let fx = h.input(Input::Retry {
        goal: id("g"),
        task: Some(id("a")),
    });
    assert_eq!(dispatched(&fx), vec![("w".into(), "a".into(), 2)]);
    h.ok(&key("g", "a", 2), json!(1));
    h.ok(&key("g", "b", 1), json!(2));
    assert_eq!(
        report(&h.ok(&key("g", "slow", 1), json!(3)))
            .unwrap()
            .outcome,
        Outcome::Succeeded
    );
}

#[test]
fn human_tasks_wait_for_an_answer() {
    let mut h = H::new(vec![]);
    h.input(Input::Goal(goal(
        "id = \"g\"\n[[task]]\nid = \"ok\"\nneeds = [\"human\"]\n",
    )));
    assert!(report(&h.at(100 * S)).is_none(), "no grace for a person");
    let fx = h.input(Input::Answer {
        goal: id("g"),
        task: id("ok"),
        result: ResultRecord::ok(json!("approved")),
    });
    assert_eq!(
        report(&fx).unwrap().tasks["ok"].output,
        Some(json!("approved"))
    );
}

#[test]
fn draining_stops_dispatch() {
    let mut h = H::new(vec![spawn_worker("w", &["x"], 1)]);
    h.input(Input::Drain);
    assert!(
        dispatched(&h.input(Input::Goal(goal(
            "id = \"g\"\n[[task]]\nid = \"a\"\nneeds = [\"x\"]\n"
        ))))
        .is_empty()
    );
}

#[test]
fn unrenderable_prompts_fail_the_task() {
    let mut h = H::new(vec![spawn_worker("w", &["x"], 1)]);
    let fx = h.input(Input::Goal(goal("id = \"g\"\n[[task]]\nid = \"a\"\nneeds = [\"x\"]\nprompt = \"{{ input.missing.deeper }}\"\n")));
    let r = report(&fx).unwrap();
    assert!(
        r.tasks["a"]
            .reason
            .as_deref()
            .unwrap()
            .starts_with("prompt:"),
        "{:?}",
        r.tasks["a"].reason
    );
}

#[test]
fn backoff_grows_and_caps() {
    let b = |n| backoff(Duration::from_secs(1), Duration::from_secs(10), n);
    assert_eq!(
        [b(1), b(2), b(3), b(4), b(5), b(100)].map(|d| d.as_secs()),
        [1, 2, 4, 8, 10, 10]
    );
}

#[test]
fn max_running_caps_spawned_processes_over_all_workers() {
    let mut h = H::new(vec![
        spawn_worker("a", &["x"], 4),
        spawn_worker("b", &["x"], 4),
    ]);
    h.e.cfg.max_running = 3;
    let text: String = (0..6)
        .map(|i| format!("[[task]]\nid = \"t{i}\"\nneeds = [\"x\"]\n"))
        .collect();
    let fx = h.input(Input::Goal(goal(&format!("id = \"g\"\n{text}"))));
    assert_eq!(dispatched(&fx).len(), 3);
    assert_eq!(h.e.spawned(), 3);
    let first = dispatched(&fx)[0].1.clone();
    assert_eq!(
        dispatched(&h.ok(&key("g", &first, 1), json!(1))).len(),
        1,
        "one ends, one starts"
    );
    assert_eq!(h.e.spawned(), 3);
}

#[test]
fn claims_are_looked_for_only_while_a_bus_worker_could_claim() {
    let mut h = H::new(vec![
        spawn_worker("w", &["x"], 0),
        bus_worker("r", &["y"], WorkerKind::Resident, 0),
    ]);
    h.input(Input::Goal(goal(
        "id = \"g\"\n[[task]]\nid = \"a\"\nneeds = [\"x\"]\n",
    )));
    assert!(!h.e.awaits_bus_claims(), "only a spawn worker offers x");
    h.input(Input::Goal(goal(
        "id = \"h\"\n[[task]]\nid = \"b\"\nneeds = [\"y\"]\n",
    )));
    assert!(h.e.awaits_bus_claims());
    h.input(Input::Claimed {
        key: key("h", "b", 1),
        worker: id("r"),
    });
    h.ok(&key("h", "b", 1), json!(1));
    h.input(Input::Workers(vec![
        spawn_worker("w", &["x"], 0),
        bus_worker("r", &["y"], WorkerKind::Resident, 0),
    ]));
    assert!(
        !h.e.awaits_bus_claims(),
        "what is left is for the spawn worker"
    );
}
