//! The benchmark's own tools against the daemon of this tree: `wb-bench`
//! drives a small W2 (a fan-out to the resident `wb-worker`s and back) on
//! a bus in a temporary folder and writes its JSON line. The figures are
//! not judged here (timed assertions belong in `scripts/bench.sh`); this
//! keeps the runner, the bench's worker and the daemon speaking the same
//! protocol.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

#[test]
fn wb_bench_runs_a_small_fan_out_against_this_daemon() {
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_wb-bench"));
    // wb-worker is this package's other program; workbusd is the root
    // package's, built into the same folder by `cargo test --workspace`.
    let bin = bench.parent().unwrap().to_path_buf();
    for program in ["wb-worker", "workbusd"] {
        assert!(
            bin.join(program).exists(),
            "{} is missing: build it first (`cargo test --workspace` builds every program)",
            bin.join(program).display()
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bench.jsonl");
    let fanout = 40;
    let run = Command::new(&bench)
        .args(["--workloads", "w2", "--configs", "disk", "--reps", "1"])
        .args(["--reference", "none", "--idle", "0.2", "--timeout", "60"])
        .args(["--quiet-max", "0", "--retries", "0", "--commit", "smoke"])
        .args(["--fanout", &fanout.to_string()])
        .arg("--disk")
        .arg(dir.path())
        .arg("--bin")
        .arg(&bin)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "wb-bench failed: {stderr}");
    let text = std::fs::read_to_string(&out).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let w2: Vec<&Value> = lines
        .iter()
        .filter(|l| l["workload"] == "W2" && l["system"] == "workbusd")
        .collect();
    assert_eq!(w2.len(), 1, "one W2 run of workbusd: {text}");
    let w2 = w2[0];
    assert_eq!(w2["commit"], "smoke");
    assert_eq!(w2["fsync"], true);
    assert_eq!(w2["workers"], "resident: 4 wb-worker", "{w2}");
    // The goal: a split, the fan-out, a gather; all of it reported.
    assert_eq!(w2["goals"][0]["tasks"], fanout + 2, "{w2}");
    let rate = w2["summary"]["tasks_per_s"].as_f64().unwrap();
    assert!(rate > 0.0, "{w2}");
    assert_eq!(w2["daemon"]["exit"], 0, "the daemon stopped cleanly: {w2}");
    assert!(
        stderr.contains("W2 disk workbusd r1"),
        "the run is named on the way: {stderr}"
    );
}
