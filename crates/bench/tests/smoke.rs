//! The benchmark's own tools against the daemon of this tree: `wb-bench`
//! drives a small W2 (a fan-out to the resident `wb-worker`s and back) and
//! a small W4 (spawned `/bin/true`, with its raw probe and floor) on a bus
//! in a temporary folder and writes their JSON lines. The figures are
//! not judged here (timed assertions belong in `scripts/bench.sh`); this
//! keeps the runner, the bench's worker and the daemon speaking the same
//! protocol.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// Runs `wb-bench` with `args` on a bus under `dir` against the programs
/// built beside it; returns its JSON lines and its stderr.
fn run_bench(dir: &Path, args: &[&str]) -> (Vec<Value>, String) {
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
    let out = dir.join("bench.jsonl");
    let run = Command::new(&bench)
        .args(["--configs", "disk", "--reps", "1"])
        .args(["--reference", "none", "--idle", "0.2", "--timeout", "60"])
        .args(["--quiet-max", "0", "--retries", "0", "--commit", "smoke"])
        .args(args)
        .arg("--disk")
        .arg(dir)
        .arg("--bin")
        .arg(&bin)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
    assert!(run.status.success(), "wb-bench failed: {stderr}");
    let lines = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (lines, stderr)
}

#[test]
fn wb_bench_runs_a_small_fan_out_against_this_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let fanout = 40;
    let (lines, stderr) = run_bench(
        dir.path(),
        &["--workloads", "w2", "--fanout", &fanout.to_string()],
    );
    let w2 = workbusd_run(&lines, "W2");
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

/// W4's runner with its two probes: the raw spawn rate (`spawn.c`) and the
/// floor (`spawnbus.c`), both built with `cc` and run just before the
/// daemon's run; the floor's files are kept until the end and then removed.
#[test]
fn wb_bench_runs_a_small_spawn_goal_with_its_raw_probe_and_floor() {
    let dir = tempfile::tempdir().unwrap();
    let tasks = 24;
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let (lines, stderr) = run_bench(
        dir.path(),
        &[
            "--workloads",
            "w4",
            "--spawn-tasks",
            &tasks.to_string(),
            "--repo",
            repo.to_str().unwrap(),
        ],
    );
    let w4 = workbusd_run(&lines, "W4");
    assert_eq!(w4["goals"][0]["tasks"], tasks, "{w4}");
    assert_eq!(w4["daemon"]["exit"], 0, "the daemon stopped cleanly: {w4}");
    let raw = &w4["raw_x4_before"];
    assert_eq!(raw["probe"], "spawn", "{w4}");
    assert_eq!(raw["n"], tasks, "{raw}");
    assert_eq!(raw["failed"], 0, "{raw}");
    let floor = &w4["spawn_floor_before"];
    assert_eq!(floor["probe"], "spawnbus", "{w4}");
    assert_eq!(
        (floor["n"].clone(), floor["inflight"].clone()),
        (tasks.into(), 4.into()),
        "{floor}"
    );
    assert_eq!(
        (floor["failed"].clone(), floor["fsync"].clone()),
        (0.into(), true.into()),
        "{floor}"
    );
    assert!(floor["tasks_per_s"].as_f64().unwrap() > 0.0, "{floor}");
    // Kept for the run, then removed with the run's own files: its goal,
    // its report, and each task's result and claim in the archive.
    assert_eq!(floor["kept"], true, "{floor}");
    let floor_dir = PathBuf::from(floor["run_dir"].as_str().unwrap());
    assert!(floor_dir.starts_with(dir.path()), "{floor}");
    let expected = 2 + 2 * tasks;
    assert!(
        stderr.contains(&format!(
            "removed {expected} files under {}",
            floor_dir.display()
        )),
        "the floor's {expected} files are removed at the end: {stderr}"
    );
    let left: Vec<_> = walk(&floor_dir);
    assert!(left.is_empty(), "files left: {left:?}");
}

/// The one line of `workload` run by workbusd.
fn workbusd_run<'a>(lines: &'a [Value], workload: &str) -> &'a Value {
    let runs: Vec<&Value> = lines
        .iter()
        .filter(|l| l["workload"] == workload && l["system"] == "workbusd")
        .collect();
    assert_eq!(runs.len(), 1, "one {workload} run of workbusd: {lines:?}");
    runs[0]
}

/// Every file (not folder) under `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.file_type().unwrap().is_dir() {
            files.extend(walk(&e.path()));
        } else {
            files.push(e.path());
        }
    }
    files
}
