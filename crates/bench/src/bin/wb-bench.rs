//! wb-bench: runs the workloads of shared WORKLOADS.md (W1 chain, W2
//! fan-out, W3 idle, W4 spawn) and the scale checks against `workbusd`, and
//! the reference polling design (bench/reference/polling.py) interleaved
//! with it, one repetition at a time. Writes one JSON line per run; the
//! table with limits, ratios and targets is printed by bench/report.py.
//! `scripts/bench.sh` is the one command that builds, runs the limits
//! probes, this and the report. See docs/PERFORMANCE.md.
//!
//! Timing (the submitter is this process, a separate client, "serve+submit"):
//! the goal file is written (and fsynced, in fsync mode) beside the bus
//! before the clock starts; t0 = just before it is renamed into `inbox/`;
//! t1 = when the report has been read and parsed. The report is waited for
//! with inotify on `reports/`, never by polling.
//!
//! Next to each workbusd run of W1 (and of W4) the physical floor is
//! measured just before it, on the same parent folder: `bench/limits/chain.c`
//! (the same goals through the least the bus's contract allows), and for
//! W4 `bench/limits/spawn.c` (the raw rate) and `bench/limits/spawnbus.c`
//! (the same goal through the least the contract allows); all are built
//! with `cc` when missing or older than their sources.
//!
//! Each run gets a fresh bus folder and a fresh daemon, started with a
//! NOTIFY_SOCKET that this process binds and reads all the time (as systemd
//! does); the run starts once READY=1 came, the resident workers have
//! written their heartbeats, and the daemon and workers have used no CPU
//! for `--idle` seconds.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};

const USAGE: &str = "\
wb-bench: WORKLOADS.md W1-W4 and the scale checks against workbusd and the
reference polling design; one JSON line per run.

  wb-bench [options]

  --workloads LIST   w1,w2,w3,w4,scale              (default all of them)
  --configs LIST     bus folder and durability, from disk, disk-nofsync,
                     tmpfs, tmpfs-nofsync            (default disk)
                     W1, W2 and W4 run in every config; W3 and scale in the
                     first one only
  --disk DIR         parent folder of disk buses     (default /var/tmp)
  --tmpfs DIR        parent folder of tmpfs buses    (default /dev/shm)
  --reps N           repetitions                     (default 3)
  --reference LIST   variants of the polling design run next to workbusd:
                     all (all ready tasks at once), one (one task at a
                     time); 'none' for none           (default all,one)
  --ref-one-reps N   repetitions of the one-at-a-time variant for W2 and W4
                     (it needs ~30 s for W2)         (default 1); that
                     variant runs in the first config only
  --ref-workloads L  workloads the reference runs    (default w1,w2,w4)
  --goals N          W1 goals per repetition         (default 30)
  --fanout N         W2 middle tasks                 (default 2000)
  --spawn-tasks N    W4 tasks                        (default 500)
  --scale-tasks N    tasks of the scale goal         (default 100000)
  --scale-answered N of them claimed and answered before the restart
                                                     (default 50000)
  --scale-cold       also restart after dropping the page cache
  --idle S           idle time before a measured run (default 2)
  --w3-window S      W3 measuring window             (default 20)
  --timeout S        give up on a goal's report after S seconds (default
                     60); two workbusd runs failing in a row stop the bench
  --w3-long S        also one W3 run with an S-second window, to average
                     over heartbeats (default 0: none)
  --quiet-busy F     wait until others use < F of the CPUs first (default 0.10)
  --quiet-max S      but at most S seconds           (default 30)
  --contended PCT    re-run a run during which others used more than PCT %
                     of the machine                  (default 10)
  --retries N        at most N re-runs               (default 2)
  --hop-trace        one extra W1 run (disk config, not counted) that
                     timestamps every publish, claim and result with
                     inotify: the per-hop breakdown
  --perf FILE        profile the daemon (perf record --call-graph dwarf) during the first
                     workbusd run of each workload; such runs are marked
                     \"profiled\" and not counted
  --bin DIR          where workbusd and wb-worker are (default target/release)
  --repo DIR         the repository (default: the current folder)
  --out FILE         JSON lines (default bench/results/bench-<date>.jsonl)
  --commit TEXT      recorded in every line (default: git describe)
  --keep             keep the bus folders (default: files deleted at the
                     end, emptied folders kept 10 minutes; see below)

Bus folders: DIR/wb-bench/<stamp>/<run>/, DIR/wb-bench marked 'top of
directory hierarchy' (chattr +T) on ext4 so that each stamp folder lands in
an unused flex group. Nothing is deleted while measuring (ext4 without a
journal slows down creates near a mass deletion for ~2 minutes).
";

// ----- options ------------------------------------------------------------

#[derive(Clone, Debug)]
struct Config {
    name: String,
    parent: PathBuf,
    fsync: bool,
}

#[derive(Debug)]
struct Opts {
    workloads: Vec<String>,
    configs: Vec<String>,
    disk: PathBuf,
    tmpfs: PathBuf,
    reps: usize,
    reference: Vec<String>,
    ref_one_reps: usize,
    ref_workloads: Vec<String>,
    goals: usize,
    fanout: usize,
    spawn_tasks: usize,
    scale_tasks: usize,
    scale_answered: usize,
    scale_cold: bool,
    idle: f64,
    timeout: u64,
    w3_window: f64,
    w3_long: f64,
    quiet_busy: f64,
    quiet_max: f64,
    contended: f64,
    retries: usize,
    hop_trace: bool,
    perf: Option<PathBuf>,
    bin: PathBuf,
    repo: PathBuf,
    out: Option<PathBuf>,
    commit: Option<String>,
    keep: bool,
}

fn list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty() && *x != "none")
        .map(str::to_string)
        .collect()
}

fn parse_args() -> anyhow::Result<Opts> {
    let mut o = Opts {
        workloads: list("w1,w2,w3,w4,scale"),
        configs: list("disk"),
        disk: PathBuf::from("/var/tmp"),
        tmpfs: PathBuf::from("/dev/shm"),
        reps: 3,
        reference: list("all,one"),
        ref_one_reps: 1,
        ref_workloads: list("w1,w2,w4"),
        goals: 30,
        fanout: 2000,
        spawn_tasks: 500,
        scale_tasks: 100_000,
        scale_answered: 50_000,
        scale_cold: false,
        idle: 2.0,
        timeout: 60,
        w3_window: 20.0,
        w3_long: 0.0,
        quiet_busy: 0.10,
        quiet_max: 30.0,
        contended: 10.0,
        retries: 2,
        hop_trace: false,
        perf: None,
        bin: PathBuf::from("target/release"),
        repo: PathBuf::from("."),
        out: None,
        commit: None,
        keep: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || it.next().ok_or_else(|| anyhow!("{a} needs a value"));
        match a.as_str() {
            "--workloads" => o.workloads = list(&val()?.to_lowercase()),
            "--configs" => o.configs = list(&val()?),
            "--disk" => o.disk = PathBuf::from(val()?),
            "--tmpfs" => o.tmpfs = PathBuf::from(val()?),
            "--reps" => o.reps = val()?.parse()?,
            "--reference" => o.reference = list(&val()?),
            "--ref-one-reps" => o.ref_one_reps = val()?.parse()?,
            "--ref-workloads" => o.ref_workloads = list(&val()?.to_lowercase()),
            "--goals" => o.goals = val()?.parse()?,
            "--fanout" => o.fanout = val()?.parse()?,
            "--spawn-tasks" => o.spawn_tasks = val()?.parse()?,
            "--scale-tasks" => o.scale_tasks = val()?.parse()?,
            "--scale-answered" => o.scale_answered = val()?.parse()?,
            "--scale-cold" => o.scale_cold = true,
            "--idle" => o.idle = val()?.parse()?,
            "--w3-window" => o.w3_window = val()?.parse()?,
            "--timeout" => o.timeout = val()?.parse()?,
            "--w3-long" => o.w3_long = val()?.parse()?,
            "--quiet-busy" => o.quiet_busy = val()?.parse()?,
            "--quiet-max" => o.quiet_max = val()?.parse()?,
            "--contended" => o.contended = val()?.parse()?,
            "--retries" => o.retries = val()?.parse()?,
            "--hop-trace" => o.hop_trace = true,
            "--perf" => o.perf = Some(PathBuf::from(val()?)),
            "--bin" => o.bin = PathBuf::from(val()?),
            "--repo" => o.repo = PathBuf::from(val()?),
            "--out" => o.out = Some(PathBuf::from(val()?)),
            "--commit" => o.commit = Some(val()?),
            "--keep" => o.keep = true,
            "-h" | "--help" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            _ => bail!("unknown option {a} (see --help)"),
        }
    }
    for w in &o.workloads {
        if !["w1", "w2", "w3", "w4", "scale"].contains(&w.as_str()) {
            bail!("unknown workload {w}");
        }
    }
    for r in &o.reference {
        if !["all", "one"].contains(&r.as_str()) {
            bail!("unknown reference variant {r}");
        }
    }
    if o.scale_answered > o.scale_tasks {
        bail!("--scale-answered must not exceed --scale-tasks");
    }
    o.bin = std::path::absolute(&o.bin)?;
    o.repo = std::path::absolute(&o.repo)?;
    Ok(o)
}

impl Opts {
    fn config(&self, name: &str) -> anyhow::Result<Config> {
        let (parent, fsync) = match name {
            "disk" => (self.disk.clone(), true),
            "disk-nofsync" => (self.disk.clone(), false),
            "tmpfs" => (self.tmpfs.clone(), true),
            "tmpfs-nofsync" => (self.tmpfs.clone(), false),
            _ => bail!("unknown config {name}: disk, disk-nofsync, tmpfs or tmpfs-nofsync"),
        };
        Ok(Config {
            name: name.to_string(),
            parent,
            fsync,
        })
    }
}

// ----- /proc helpers -------------------------------------------------------

fn read_to_string(p: impl AsRef<Path>) -> Option<String> {
    fs::read_to_string(p).ok()
}

/// Sum of sum_exec_runtime (ns) over every thread of `pids`.
fn tree_ns(pids: &[i32]) -> u64 {
    let mut total = 0;
    for pid in pids {
        let Ok(rd) = fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for t in rd.flatten() {
            if let Some(s) = read_to_string(t.path().join("schedstat")) {
                total += s
                    .split_whitespace()
                    .next()
                    .and_then(|x| x.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    total
}

/// A numeric field of /proc/PID/status (VmHWM and VmRSS in kB; counters).
fn status_kb(pid: i32, key: &str) -> Option<u64> {
    let s = read_to_string(format!("/proc/{pid}/status"))?;
    s.lines()
        .find(|l| l.starts_with(key) && l[key.len()..].starts_with(':'))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|x| x.parse().ok())
}

/// utime + stime of a process (its threads included), in seconds.
fn proc_cpu_s(pid: i32) -> Option<f64> {
    let s = read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let u: f64 = f.get(11)?.parse().ok()?;
    let st: f64 = f.get(12)?.parse().ok()?;
    Some((u + st) / clk_tck())
}

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

fn ncpu() -> f64 {
    std::thread::available_parallelism().map_or(1, |n| n.get()) as f64
}

/// (busy, total) jiffies of the whole machine from /proc/stat. Busy is
/// user + nice + system + irq + softirq; steal is left out of both.
fn machine_ticks() -> (u64, u64) {
    let s = read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = s
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let g = |i: usize| v.get(i).copied().unwrap_or(0);
    let busy = g(0) + g(1) + g(2) + g(5) + g(6);
    (busy, busy + g(3) + g(4))
}

/// CPU time of this process and its waited-for children, in seconds.
fn our_cpu_s() -> f64 {
    let ru = |who| {
        // SAFETY: getrusage writes into the struct we pass.
        let mut r: libc::rusage = unsafe { std::mem::zeroed() };
        unsafe { libc::getrusage(who, &mut r) };
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        tv(r.ru_utime) + tv(r.ru_stime)
    };
    ru(libc::RUSAGE_SELF) + ru(libc::RUSAGE_CHILDREN)
}

/// The share of the CPUs other processes used while a run went on.
struct Contention {
    ticks: (u64, u64),
    ours: f64,
    at: Instant,
}

impl Contention {
    fn start() -> Self {
        Contention {
            ticks: machine_ticks(),
            ours: our_cpu_s(),
            at: Instant::now(),
        }
    }
    /// Others' CPU in % of the machine over the run.
    fn others_pct(&self) -> f64 {
        let (b, _) = machine_ticks();
        let busy = (b - self.ticks.0) as f64 / clk_tck();
        let ours = our_cpu_s() - self.ours;
        let wall = self.at.elapsed().as_secs_f64();
        (100.0 * (busy - ours) / (wall * ncpu())).max(0.0)
    }
}

/// Waits until the machine is quiet: less than `busy` of the CPUs used over
/// 0.5 s, at most `max` seconds. Returns (waited, busy fraction last seen).
fn quiet_wait(busy: f64, max: f64) -> (f64, f64) {
    let start = Instant::now();
    loop {
        let (b0, t0) = machine_ticks();
        std::thread::sleep(Duration::from_millis(500));
        let (b1, t1) = machine_ticks();
        let frac = if t1 > t0 {
            (b1 - b0) as f64 / (t1 - t0) as f64
        } else {
            0.0
        };
        let waited = start.elapsed().as_secs_f64();
        if frac < busy || waited >= max {
            return (round(waited, 1), round(frac, 3));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Waits until `pids` have used at most `frac` of a CPU over the last
/// `quiet` (frac 0: no CPU at all), at most `max`. Returns (seconds waited,
/// whether it got quiet, seconds until the last 100 ms in which they used
/// more than `frac` of a CPU).
fn wait_idle(pids: &[i32], quiet: Duration, max: Duration, frac: f64) -> (f64, bool, f64) {
    let start = Instant::now();
    let mut samples: std::collections::VecDeque<(Instant, u64)> = Default::default();
    samples.push_back((start, tree_ns(pids)));
    let mut last_busy = start;
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let now = Instant::now();
        let ns = tree_ns(pids);
        let (t_prev, ns_prev) = *samples.back().unwrap_or(&(start, ns));
        if (ns - ns_prev) as f64 > frac * (now - t_prev).as_nanos() as f64 {
            last_busy = now;
        }
        samples.push_back((now, ns));
        // the oldest sample still at least `quiet` old
        while samples.len() > 2 && now - samples[1].0 >= quiet {
            samples.pop_front();
        }
        let (t_old, ns_old) = samples[0];
        let busy_s = (last_busy - start).as_secs_f64();
        if now - t_old >= quiet && (ns - ns_old) as f64 <= frac * quiet.as_nanos() as f64 {
            return (start.elapsed().as_secs_f64(), true, busy_s);
        }
        if start.elapsed() >= max {
            return (start.elapsed().as_secs_f64(), false, busy_s);
        }
    }
}

/// CPU used by `pids` over `d`, in % of one CPU.
fn cpu_pct_over(pids: &[i32], d: Duration) -> f64 {
    let a = tree_ns(pids);
    let t = Instant::now();
    std::thread::sleep(d);
    round(
        100.0 * (tree_ns(pids) - a) as f64 / t.elapsed().as_nanos() as f64,
        2,
    )
}

fn fs_name(p: &Path) -> String {
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else {
        return "?".into();
    };
    // SAFETY: statfs writes into the struct we pass.
    let mut s: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut s) } != 0 {
        return "?".into();
    }
    match s.f_type as i64 {
        0xEF53 => "ext4".into(),
        0x0102_1994 => "tmpfs".into(),
        0x5846_5342 => "xfs".into(),
        0x9123_683E => "btrfs".into(),
        t => format!("0x{t:x}"),
    }
}

fn round(x: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (x * m).round() / m
}

// ----- statistics --------------------------------------------------------

fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// Nearest rank: the ceil(0.9 n)-th smallest.
fn p90(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let k = ((0.9 * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[k - 1]
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NAN, f64::max)
}

/// The summary of one run's goals (same for every system).
fn summarize(workload: &str, goals: &[Value]) -> Value {
    let lat: Vec<f64> = goals
        .iter()
        .filter_map(|g| g["latency_s"].as_f64())
        .collect();
    let tasks: u64 = goals.iter().filter_map(|g| g["tasks"].as_u64()).sum();
    let mut s = json!({
        "n": lat.len(),
        "median_s": median(&lat),
        "p90_s": p90(&lat),
        "max_s": max(&lat),
        "min_s": lat.iter().copied().fold(f64::NAN, f64::min),
    });
    match workload {
        "W1" => {
            s["first_s"] = json!(lat.first());
            s["warm_median_s"] = json!(median(lat.get(1..).unwrap_or(&[])));
            s["per_hop_ms"] = json!(median(&lat) / 3.0 * 1000.0);
        }
        "W2" | "W4" => {
            let wall: f64 = lat.iter().sum();
            s["wall_s"] = json!(wall);
            s["tasks_per_s"] = json!(tasks as f64 / wall);
        }
        _ => {}
    }
    s
}

// ----- goals -------------------------------------------------------------

fn payload(id: &str) -> String {
    format!("goal {id}")
}

/// The goal of a workload, its task count, and what its report must hold.
fn make_goal(workload: &str, id: &str, n: usize) -> (Value, usize) {
    let p = payload(id);
    match workload {
        "W1" => (
            json!({"id": id, "task": [
                {"id": "gather", "needs": ["gather"], "input": p},
                {"id": "narrate", "needs": ["narrate"], "after": ["gather"]},
                {"id": "build", "needs": ["build"], "after": ["narrate"]},
            ]}),
            3,
        ),
        "W2" => {
            let mut tasks = vec![json!({"id": "root", "needs": ["echo"], "input": p})];
            let mids: Vec<String> = (1..=n).map(|i| format!("t{i:05}")).collect();
            for m in &mids {
                tasks.push(json!({"id": m, "needs": ["echo"], "after": ["root"]}));
            }
            tasks.push(json!({"id": "join", "needs": ["echo"], "after": mids}));
            (json!({"id": id, "task": tasks}), n + 2)
        }
        "W4" | "scale" => {
            let need = if workload == "W4" { "spawn" } else { "echo" };
            let tasks: Vec<Value> = (1..=n)
                .map(|i| json!({"id": format!("t{i:06}"), "needs": [need], "input": p}))
                .collect();
            (json!({"id": id, "task": tasks}), n)
        }
        _ => unreachable!(),
    }
}

/// Checks that a report says what the workload's echo semantics imply.
fn check_report(workload: &str, id: &str, n: usize, r: &Value) -> anyhow::Result<()> {
    if r["outcome"] != "succeeded" {
        bail!(
            "goal {id}: outcome {} (reason {})",
            r["outcome"],
            r.get("reason").unwrap_or(&Value::Null)
        );
    }
    let p = Value::String(payload(id));
    let tasks = &r["tasks"];
    match workload {
        "W1" if tasks["build"]["output"] != p => {
            bail!(
                "goal {id}: final output {} is not the payload",
                tasks["build"]["output"]
            );
        }
        "W2" => {
            let out = tasks["join"]["output"]
                .as_object()
                .ok_or_else(|| anyhow!("goal {id}: join output is not a map"))?;
            if out.len() != n || out.values().any(|v| *v != p) {
                bail!(
                    "goal {id}: join output has {} entries (want {n}, each the payload)",
                    out.len()
                );
            }
        }
        "W4" => {
            let ok = tasks.as_object().map_or(0, |m| {
                m.values().filter(|t| t["state"] == "succeeded").count()
            });
            if ok != n {
                bail!("goal {id}: {ok} of {n} tasks succeeded");
            }
        }
        _ => {}
    }
    Ok(())
}

// ----- the daemon --------------------------------------------------------

struct Daemon {
    child: Child,
    pid: i32,
    bus: PathBuf,
    ready_s: f64,
    log: PathBuf,
    workers: Vec<i32>,
}

impl Daemon {
    fn tree(&self) -> Vec<i32> {
        let mut v = vec![self.pid];
        v.extend(&self.workers);
        v
    }

    /// SIGTERM, then SIGKILL after 20 s.
    fn stop(mut self) -> anyhow::Result<ExitStatus> {
        let _ = kill(Pid::from_raw(self.pid), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = self.child.try_wait()? {
                return Ok(st);
            }
            if Instant::now() > deadline {
                eprintln!("wb-bench: workbusd {} did not stop; SIGKILL", self.pid);
                let _ = self.child.kill();
                return Ok(self.child.wait()?);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A notify socket bound for the whole run and read continuously.
struct Notify {
    name: String,
    rx: mpsc::Receiver<(Instant, String)>,
}

impl Notify {
    fn bind() -> anyhow::Result<Notify> {
        use std::os::linux::net::SocketAddrExt;
        use std::os::unix::net::{SocketAddr, UnixDatagram};
        let name = format!("wb-bench-{}", std::process::id());
        let sock = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes())?)
            .context("binding the notify socket")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while let Ok(n) = sock.recv(&mut buf) {
                let at = Instant::now();
                if tx
                    .send((at, String::from_utf8_lossy(&buf[..n]).into_owned()))
                    .is_err()
                {
                    break;
                }
            }
        });
        Ok(Notify {
            name: format!("@{name}"),
            rx,
        })
    }
}

// ----- the submitter -----------------------------------------------------

/// Submits goals and waits for their reports with inotify; optionally
/// timestamps every publish, claim and result (hop trace).
struct Submitter {
    ino: Inotify,
    bus: PathBuf,
    staging: PathBuf,
    wd_reports: WatchDescriptor,
    traced: Vec<(WatchDescriptor, &'static str)>,
    /// (when read, folder, file name)
    trace: Vec<(Instant, &'static str, String)>,
}

impl Submitter {
    fn new(bus: &Path, staging: &Path, trace: bool) -> anyhow::Result<Submitter> {
        fs::create_dir_all(staging)?;
        let ino = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)?;
        let wd_reports = ino.add_watch(
            &bus.join("reports"),
            AddWatchFlags::IN_MOVED_TO | AddWatchFlags::IN_CLOSE_WRITE,
        )?;
        let mut traced = Vec::new();
        if trace {
            for d in ["tasks", "claimed", "results"] {
                traced.push((ino.add_watch(&bus.join(d), AddWatchFlags::IN_MOVED_TO)?, d));
            }
        }
        Ok(Submitter {
            ino,
            bus: bus.to_path_buf(),
            staging: staging.to_path_buf(),
            wd_reports,
            traced,
            trace: Vec::new(),
        })
    }

    /// Writes the goal file beside the bus (same file system), before t0.
    fn stage(&self, id: &str, goal: &Value, fsync: bool) -> anyhow::Result<PathBuf> {
        let path = self.staging.join(format!("{id}.json"));
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o660)
            .open(&path)?;
        f.write_all(&serde_json::to_vec(goal)?)?;
        if fsync {
            f.sync_data()?;
        }
        Ok(path)
    }

    /// t0, rename into inbox/, wait for the report, read it: t1.
    fn submit(
        &mut self,
        id: &str,
        staged: &Path,
        timeout: Duration,
    ) -> anyhow::Result<(f64, Value, Instant, Instant)> {
        let name = format!("{id}.json");
        let report = self.bus.join("reports").join(&name);
        let inbox = self.bus.join("inbox").join(&name);
        let t0 = Instant::now();
        fs::rename(staged, &inbox)?;
        let deadline = t0 + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("no report for goal {id} after {timeout:?}");
            }
            // At most 1 s: a check of the file then covers a lost event.
            let ms = left.as_millis().min(1000) as i32;
            let mut fds = [PollFd::new(self.ino.as_fd(), PollFlags::POLLIN)];
            let n = match poll(
                &mut fds,
                PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
            ) {
                Ok(n) => n,
                Err(Errno::EINTR) => 0,
                Err(e) => return Err(e.into()),
            };
            let mut seen = n == 0 && report.exists();
            if n > 0 {
                let events = match self.ino.read_events() {
                    Ok(e) => e,
                    Err(Errno::EAGAIN) => Vec::new(),
                    Err(e) => return Err(e.into()),
                };
                let now = Instant::now();
                for ev in events {
                    if ev.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                        seen |= report.exists();
                        continue;
                    }
                    let Some(ev_name) = ev.name.as_ref().and_then(|n| n.to_str()) else {
                        continue;
                    };
                    if ev.wd == self.wd_reports {
                        seen |= ev_name == name;
                    } else if let Some((_, d)) = self.traced.iter().find(|(w, _)| *w == ev.wd) {
                        self.trace.push((now, d, ev_name.to_string()));
                    }
                }
            }
            if seen {
                let bytes =
                    fs::read(&report).with_context(|| format!("reading {}", report.display()))?;
                let v: Value = serde_json::from_slice(&bytes)?;
                let t1 = Instant::now();
                return Ok(((t1 - t0).as_secs_f64(), v, t0, t1));
            }
        }
    }
}

// ----- the bench ---------------------------------------------------------

struct Bench {
    o: Opts,
    out: fs::File,
    out_path: PathBuf,
    notify: Notify,
    stamp: String,
    commit: String,
    date: String,
    /// DIR/wb-bench/<stamp> folders made by this run.
    stamp_dirs: Vec<PathBuf>,
    /// Profile files already written, per workload.
    profiled: std::collections::BTreeSet<String>,
}

fn resident_fleet(bin: &Path, fsync: bool) -> String {
    let mut s = String::new();
    for i in 1..=4 {
        s.push_str(&format!(
            "[[worker]]\nname = \"w{i}\"\ncapabilities = [\"gather\", \"narrate\", \"build\", \"echo\"]\nmode = \"resident\"\ncommand = [{:?}]\n",
            bin.join("wb-worker")
        ));
        if !fsync {
            s.push_str("env = { WORKBUS_FSYNC = \"0\" }\n");
        }
        s.push('\n');
    }
    s
}

const SPAWN_FLEET: &str = "\
# W4: one spawn worker running /bin/true, 4 at a time
[[worker]]
name = \"spawner\"
capabilities = [\"spawn\"]
command = [\"/bin/true\"]
concurrency = 4
";

impl Bench {
    fn new(o: Opts) -> anyhow::Result<Bench> {
        let date = serde_json::to_value(workbus_proto::Timestamp::now())?
            .as_str()
            .unwrap_or_default()
            .to_string();
        let stamp = format!(
            "{}-{}",
            date.replace([':', '-'], "")
                .replace('.', "")
                .trim_end_matches('Z'),
            std::process::id()
        );
        let commit = match &o.commit {
            Some(c) => c.clone(),
            None => Command::new("git")
                .args(["describe", "--always", "--dirty", "--abbrev=12"])
                .current_dir(&o.repo)
                .output()
                .ok()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or_default(),
        };
        let out_path = match &o.out {
            Some(p) => p.clone(),
            None => {
                let d = o.repo.join("bench/results");
                fs::create_dir_all(&d)?;
                d.join(format!("bench-{}.jsonl", &stamp[..15.min(stamp.len())]))
            }
        };
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&out_path)
            .with_context(|| format!("opening {}", out_path.display()))?;
        Ok(Bench {
            notify: Notify::bind()?,
            o,
            out,
            out_path,
            stamp,
            commit,
            date,
            stamp_dirs: Vec::new(),
            profiled: Default::default(),
        })
    }

    fn bin(&self, name: &str) -> PathBuf {
        self.o.bin.join(name)
    }

    fn emit(&mut self, v: &Value) -> anyhow::Result<()> {
        writeln!(self.out, "{}", serde_json::to_string(v)?)?;
        self.out.flush()?;
        Ok(())
    }

    /// A fresh folder for one run: DIR/wb-bench/<stamp>/<label>.
    fn run_dir(&mut self, cfg: &Config, label: &str) -> anyhow::Result<PathBuf> {
        let top = cfg.parent.join("wb-bench");
        if !top.exists() {
            fs::create_dir_all(&top)?;
            // Orlov: folders made in a "top of hierarchy" folder go to the
            // least used flex group (ext4; refused elsewhere, harmlessly).
            let _ = Command::new("chattr")
                .arg("+T")
                .arg(&top)
                .stderr(Stdio::null())
                .status();
        }
        let stamp_dir = top.join(&self.stamp);
        if !self.stamp_dirs.contains(&stamp_dir) {
            fs::create_dir_all(&stamp_dir)?;
            self.stamp_dirs.push(stamp_dir.clone());
        }
        let d = stamp_dir.join(label);
        fs::create_dir(&d).with_context(|| format!("creating {}", d.display()))?;
        Ok(d)
    }

    fn base(&self, workload: &str, system: &str, cfg: &Config, bus: &Path, rep: usize) -> Value {
        json!({
            "bench": "wb-bench",
            "workload": workload,
            "system": system,
            "config": cfg.name,
            "fs": fs_name(&cfg.parent),
            "fsync": cfg.fsync,
            "bus_dir": bus,
            "rep": rep,
            "commit": self.commit,
            "date": self.date,
            "stamp": self.stamp,
        })
    }

    fn start_daemon(
        &self,
        run: &Path,
        cfg: &Config,
        fleet: &str,
        extra: &str,
    ) -> anyhow::Result<Daemon> {
        let bus = run.join("bus");
        let toml = format!(
            "# written by wb-bench\nroot = {:?}\nfleet = {:?}\nfsync = {}\nlog = \"text\"\n{extra}",
            bus,
            run.join("fleet.toml"),
            cfg.fsync
        );
        fs::write(run.join("workbusd.toml"), toml)?;
        fs::write(run.join("fleet.toml"), fleet)?;
        while self.notify.rx.try_recv().is_ok() {}
        let log = run.join("daemon.log");
        let logf = fs::File::create(&log)?;
        let mut cmd = Command::new(self.bin("workbusd"));
        cmd.arg("--config")
            .arg(run.join("workbusd.toml"))
            .env("NOTIFY_SOCKET", &self.notify.name)
            .env_remove("WORKBUS_LOG")
            .stdin(Stdio::null())
            .stdout(logf.try_clone()?)
            .stderr(logf);
        // SAFETY: prctl is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let t = Instant::now();
        let mut child = cmd.spawn().context("starting workbusd")?;
        let pid = child.id() as i32;
        let deadline = t + Duration::from_secs(300);
        let ready_s = loop {
            match self.notify.rx.recv_timeout(Duration::from_millis(50)) {
                Ok((at, msg)) => {
                    if msg.lines().any(|l| l == "READY=1") {
                        break (at - t).as_secs_f64();
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Some(st) = child.try_wait()? {
                        bail!(
                            "workbusd exited before READY=1 ({st}); see {}",
                            log.display()
                        );
                    }
                    if Instant::now() > deadline {
                        let _ = child.kill();
                        bail!("workbusd sent no READY=1 in 300 s; see {}", log.display());
                    }
                }
                Err(e) => bail!("notify socket: {e}"),
            }
        };
        Ok(Daemon {
            child,
            pid,
            bus,
            ready_s,
            log,
            workers: Vec::new(),
        })
    }

    /// Waits for the heartbeats of w1..w4 and notes their pids.
    fn wait_workers(&self, d: &mut Daemon, n: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut pids = Vec::new();
        for i in 1..=n {
            let p = d.bus.join("workers").join(format!("w{i}.json"));
            loop {
                if let Some(pid) = fs::read(&p)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                    .and_then(|v| v["pid"].as_i64())
                {
                    pids.push(pid as i32);
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "worker w{i} wrote no heartbeat in 30 s; see {}",
                        d.log.display()
                    );
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        d.workers = pids;
        Ok(())
    }

    /// Runs `f` until it was not contended (or out of retries), writing
    /// every attempt; returns the kept one.
    fn measured(
        &mut self,
        what: &str,
        mut f: impl FnMut(&mut Bench, usize) -> anyhow::Result<Value>,
    ) -> anyhow::Result<Value> {
        for attempt in 0..=self.o.retries {
            let (qw, busy) = quiet_wait(self.o.quiet_busy, self.o.quiet_max);
            let load = read_to_string("/proc/loadavg")
                .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
                .unwrap_or_default();
            let c = Contention::start();
            let mut v = match f(self, attempt) {
                Ok(v) => v,
                Err(e) => {
                    let v = json!({"bench": "wb-bench", "run": what, "attempt": attempt,
                        "error": format!("{e:#}"), "commit": self.commit, "stamp": self.stamp});
                    self.emit(&v)?;
                    eprintln!("wb-bench: {what}: FAILED: {e:#}");
                    return Err(e);
                }
            };
            let others = c.others_pct();
            v["attempt"] = json!(attempt);
            v["contention"] = json!({
                "quiet_wait_s": qw, "busy_before": busy, "load_before": load,
                "others_cpu_pct": round(others, 1),
            });
            let contended = others > self.o.contended;
            // When the machine never got quiet before the run, running it
            // again would not help: keep it, marked.
            let hopeless = busy >= self.o.quiet_busy;
            let last = !contended || hopeless || attempt == self.o.retries;
            v["final"] = json!(last);
            if contended {
                v["contended"] = json!(true);
            }
            self.emit(&v)?;
            eprintln!(
                "  {what:<34} {}{}",
                describe(&v),
                if contended {
                    format!(
                        "  [others {others:.0}% of the CPUs{}]",
                        if last { "" } else { ": again" }
                    )
                } else {
                    String::new()
                }
            );
            if last {
                return Ok(v);
            }
        }
        unreachable!()
    }

    // ----- workbusd: W1, W2, W4 ---------------------------------------

    fn run_workbusd(
        &mut self,
        workload: &str,
        cfg: &Config,
        rep: usize,
        attempt: usize,
        trace: bool,
    ) -> anyhow::Result<Value> {
        let label = format!(
            "{}-{}-workbusd-r{rep}{}{}",
            workload.to_lowercase(),
            cfg.name,
            if attempt > 0 {
                format!("-a{attempt}")
            } else {
                String::new()
            },
            if trace { "-trace" } else { "" }
        );
        let run = self.run_dir(cfg, &label)?;
        let (fleet, residents) = match workload {
            "W4" => (SPAWN_FLEET.to_string(), 0),
            _ => (resident_fleet(&self.o.bin, cfg.fsync), 4),
        };
        // W4's limit, measured right before this run in the state this run
        // finds the machine in (see raw_spawn).
        let raw = if workload == "W4" {
            Some(self.raw_spawn()?)
        } else {
            None
        };
        // And W4's floor on this run's folder (see spawn_floor).
        let spawn_floor = if workload == "W4" {
            Some(self.spawn_floor(cfg)?)
        } else {
            None
        };
        // W1's floor, likewise (see chain_floor).
        let floor = if workload == "W1" && !trace {
            Some(self.chain_floor(cfg)?)
        } else {
            None
        };
        let mut d = self.start_daemon(&run, cfg, &fleet, "")?;
        let r = self.drive(workload, cfg, rep, &run, &mut d, residents, trace);
        let hwm = status_kb(d.pid, "VmHWM");
        let daemon_cpu = proc_cpu_s(d.pid);
        let switches = status_kb(d.pid, "voluntary_ctxt_switches")
            .zip(status_kb(d.pid, "nonvoluntary_ctxt_switches"))
            .map(|(v, n)| v + n);
        let worker_cpu = d
            .workers
            .iter()
            .filter_map(|p| proc_cpu_s(*p))
            .fold(0.0, |a, b| a + b);
        let ready_s = d.ready_s;
        let log = d.log.clone();
        let st = d.stop()?;
        let mut v =
            r.with_context(|| format!("the daemon's log ends with:\n{}", tail(&log, 12)))?;
        v["ready_s"] = json!(ready_s);
        v["daemon"] = json!({"vmhwm_kb": hwm, "cpu_s": daemon_cpu, "workers_cpu_s": worker_cpu,
                             "context_switches": switches, "exit": st.code()});
        if let Some(raw) = raw {
            v["raw_x4_before"] = raw;
        }
        if let Some(floor) = floor {
            v["chain_before"] = floor;
        }
        if let Some(floor) = spawn_floor {
            v["spawn_floor_before"] = floor;
        }
        Ok(v)
    }

    /// A probe of bench/limits, built with `cc` into bench/build when it is
    /// missing or older than its source or the probes' shared header
    /// (bench/limits/run.sh builds them too).
    fn probe(&self, name: &str, flags: &[&str]) -> anyhow::Result<PathBuf> {
        let src = self.o.repo.join(format!("bench/limits/{name}.c"));
        let header = self.o.repo.join("bench/limits/probe.h");
        let bin = self.o.repo.join("bench/build").join(name);
        let modified = |p: &Path| fs::metadata(p).and_then(|m| m.modified()).ok();
        let fresh = modified(&bin).is_some_and(|b| {
            [&src, &header]
                .iter()
                .all(|p| modified(p).is_none_or(|m| b >= m))
        });
        if !fresh {
            fs::create_dir_all(self.o.repo.join("bench/build"))?;
            let st = Command::new("cc")
                .args(["-O2", "-Wall", "-o"])
                .arg(&bin)
                .arg(&src)
                .args(flags)
                .status()
                .with_context(|| format!("building {} with cc", src.display()))?;
            if !st.success() {
                bail!("building {} failed: {st}", src.display());
            }
        }
        Ok(bin)
    }

    /// Runs a probe that prints one JSON line.
    fn run_probe(&self, bin: &Path, args: &[&str]) -> anyhow::Result<Value> {
        let out = Command::new(bin)
            .args(args)
            .stderr(Stdio::inherit())
            .output()
            .with_context(|| format!("running {}", bin.display()))?;
        if !out.status.success() {
            bail!("{} failed: {}", bin.display(), out.status);
        }
        let text = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(text.trim())
            .with_context(|| format!("{} printed {text:?}", bin.display()))
    }

    /// The raw limit of W4 (`bench/limits/spawn.c`: posix_spawn of
    /// /bin/true, as many and as many in flight as W4 runs) measured just
    /// before a W4 run: machine state drifts over a bench run (after W2's
    /// thousands of files, spawning is slower for everyone), so W4's ratio
    /// is taken against the limit measured next to it.
    fn raw_spawn(&mut self) -> anyhow::Result<Value> {
        let probe = self.probe("spawn", &[])?;
        let n = self.o.spawn_tasks.to_string();
        let args = [
            "--n",
            &n,
            "--inflight",
            "4",
            "--method",
            "posix_spawn",
            "--label",
            "before W4",
        ];
        self.run_probe(&probe, &args)
    }

    /// The floor of W1 on this run's folder (`bench/limits/chain.c`: the
    /// same chain of goals kept to the bus's contract, every durable write
    /// and wake-up of it, and nothing else), measured just before a W1 run
    /// for the same reason as `raw_spawn`: a disk's cache flush, which W1
    /// waits on, takes twice as long on some days as on others.
    fn chain_floor(&mut self, cfg: &Config) -> anyhow::Result<Value> {
        let probe = self.probe("chain", &["-pthread"])?;
        let (goals, parent) = (self.o.goals.to_string(), cfg.parent.display().to_string());
        let fsync = if cfg.fsync { "1" } else { "0" };
        let args = [
            "--goals",
            &goals,
            "--fsync",
            fsync,
            "--label",
            "before W1",
            &parent,
        ];
        self.run_probe(&probe, &args)
    }

    /// The floor of W4 on this run's folder (`bench/limits/spawnbus.c`:
    /// the same goal of /bin/true tasks with the files the bus's contract
    /// asks of each, its pipes and its durable writes, and nothing else),
    /// measured just before a W4 run and after the raw probe: what the
    /// contract costs on this folder, beside what the daemon adds. Its
    /// files are removed with the run's own at the end (removing them now
    /// would slow the next creates in the folder).
    fn spawn_floor(&mut self, cfg: &Config) -> anyhow::Result<Value> {
        let probe = self.probe("spawnbus", &[])?;
        let (n, parent) = (
            self.o.spawn_tasks.to_string(),
            cfg.parent.display().to_string(),
        );
        let fsync = if cfg.fsync { "1" } else { "0" };
        let args = [
            "--n",
            &n,
            "--inflight",
            "4",
            "--fsync",
            fsync,
            "--keep",
            "1",
            "--label",
            "before W4",
            &parent,
        ];
        let v = self.run_probe(&probe, &args)?;
        if let Some(dir) = v["run_dir"].as_str() {
            self.stamp_dirs.push(PathBuf::from(dir));
        }
        Ok(v)
    }

    #[allow(clippy::too_many_arguments)]
    fn drive(
        &mut self,
        workload: &str,
        cfg: &Config,
        rep: usize,
        run: &Path,
        d: &mut Daemon,
        residents: usize,
        trace: bool,
    ) -> anyhow::Result<Value> {
        self.wait_workers(d, residents)?;
        let mut sub = Submitter::new(&d.bus, &run.join("staging"), trace)?;
        let (count, n) = match workload {
            "W1" => (self.o.goals, 0),
            "W2" => (1, self.o.fanout),
            _ => (1, self.o.spawn_tasks),
        };
        let mut staged = Vec::new();
        for k in 1..=count {
            let id = format!("{}-r{rep}-g{k:02}", workload.to_lowercase());
            let (goal, tasks) = make_goal(workload, &id, n);
            staged.push((id.clone(), sub.stage(&id, &goal, cfg.fsync)?, tasks));
        }
        let (idle_waited, idle_ok, _) = wait_idle(
            &d.tree(),
            Duration::from_secs_f64(self.o.idle),
            Duration::from_secs_f64(self.o.idle + 20.0),
            0.0,
        );
        let perf = self.start_perf(workload, d.pid)?;
        let mut goals = Vec::new();
        let mut hops = Vec::new();
        for (id, path, tasks) in staged {
            sub.trace.clear();
            let (lat, report, t0, t1) =
                sub.submit(&id, &path, Duration::from_secs(self.o.timeout))?;
            check_report(workload, &id, n, &report)?;
            goals.push(json!({"id": id, "latency_s": lat, "tasks": tasks}));
            if trace {
                hops.push(hop_breakdown(&id, &sub.trace, t0, t1));
            }
        }
        let profiled = self.stop_perf(perf)?;
        let mut v = self.base(workload, "workbusd", cfg, &d.bus, rep);
        v["summary"] = summarize(workload, &goals);
        v["goals"] = json!(goals);
        v["idle_before_s"] = json!(round(idle_waited, 3));
        v["idle_ok"] = json!(idle_ok);
        v["workers"] = json!(if workload == "W4" {
            "spawn: 1 worker, concurrency 4, /bin/true"
        } else {
            "resident: 4 wb-worker"
        });
        if let Some(p) = profiled {
            v["profiled"] = json!(p);
        }
        if trace {
            v["workload"] = json!("W1-trace");
            v["hops"] = json!(hops);
            v["hop_medians_ms"] = hop_medians(&hops);
        }
        Ok(v)
    }

    fn start_perf(&mut self, workload: &str, pid: i32) -> anyhow::Result<Option<(Child, PathBuf)>> {
        let Some(base) = self.o.perf.clone() else {
            return Ok(None);
        };
        if !self.profiled.insert(workload.to_string()) {
            return Ok(None);
        }
        let file = PathBuf::from(format!("{}.{}", base.display(), workload.to_lowercase()));
        let child = Command::new("perf")
            .args(["record", "--call-graph", "dwarf,32768", "-F", "999", "-o"])
            .arg(&file)
            .args(["-p", &pid.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting perf")?;
        std::thread::sleep(Duration::from_millis(700));
        Ok(Some((child, file)))
    }

    fn stop_perf(&self, perf: Option<(Child, PathBuf)>) -> anyhow::Result<Option<PathBuf>> {
        let Some((mut child, file)) = perf else {
            return Ok(None);
        };
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGINT);
        child.wait()?;
        Ok(Some(file))
    }

    // ----- the reference polling design ---------------------------------

    fn run_reference(
        &mut self,
        workload: &str,
        variant: &str,
        cfg: &Config,
        rep: usize,
        attempt: usize,
    ) -> anyhow::Result<Value> {
        let system = format!("polling-{variant}");
        let label = format!(
            "{}-{}-{system}-r{rep}{}",
            workload.to_lowercase(),
            cfg.name,
            if attempt > 0 {
                format!("-a{attempt}")
            } else {
                String::new()
            }
        );
        let run = self.run_dir(cfg, &label)?;
        let bus = run.join("bus");
        let n = match workload {
            "W1" => self.o.goals,
            "W2" => self.o.fanout,
            _ => self.o.spawn_tasks,
        };
        let log = fs::File::create(run.join("conductor.log"))?;
        let out = Command::new("python3")
            .arg(self.o.repo.join("bench/reference/polling.py"))
            .args(["--root"])
            .arg(&bus)
            .args(["--workload", workload, "--variant", variant])
            .args(["--fsync", if cfg.fsync { "1" } else { "0" }])
            .args(["--n", &n.to_string(), "--rep", &rep.to_string()])
            .args(["--idle", &self.o.idle.to_string()])
            .stdin(Stdio::null())
            .stderr(log)
            .output()
            .context("running bench/reference/polling.py")?;
        if !out.status.success() {
            bail!(
                "polling.py failed ({}); see {}",
                out.status,
                run.join("conductor.log").display()
            );
        }
        let r: Value = serde_json::from_slice(&out.stdout).context("polling.py output")?;
        let goals = r["goals"].as_array().cloned().unwrap_or_default();
        let mut v = self.base(workload, &system, cfg, &bus, rep);
        v["summary"] = summarize(workload, &goals);
        v["goals"] = json!(goals);
        v["reference"] = r["reference"].clone();
        v["workers"] = json!("4 Python polling workers");
        Ok(v)
    }

    // ----- W3 ----------------------------------------------------------

    fn run_w3(
        &mut self,
        cfg: &Config,
        rep: usize,
        attempt: usize,
        window: f64,
    ) -> anyhow::Result<Value> {
        let long = window != self.o.w3_window;
        let label = format!(
            "w3{}-{}-workbusd-r{rep}{}",
            if long { "long" } else { "" },
            cfg.name,
            if attempt > 0 {
                format!("-a{attempt}")
            } else {
                String::new()
            }
        );
        let run = self.run_dir(cfg, &label)?;
        let mut d = self.start_daemon(&run, cfg, &resident_fleet(&self.o.bin, cfg.fsync), "")?;
        let r = (|| -> anyhow::Result<Value> {
            self.wait_workers(&mut d, 4)?;
            let out = Command::new("python3")
                .arg(self.o.repo.join("bench/limits/proctree.py"))
                .args(["--settle", "5", "--window", &window.to_string()])
                .args(["--label", &label])
                .arg(d.pid.to_string())
                .stdin(Stdio::null())
                .output()
                .context("running bench/limits/proctree.py")?;
            let p: Value = serde_json::from_slice(&out.stdout).context("proctree.py output")?;
            let mut v = self.base(
                if long { "W3-long" } else { "W3" },
                "workbusd",
                cfg,
                &d.bus,
                rep,
            );
            let t = &p["total"];
            v["summary"] = json!({
                "cpu_s": t["cpu_s"], "sched_cpu_s": t["sched_cpu_s"],
                "wakeups": t["wakeups"], "processes": t["processes"], "threads": t["threads"],
                "window_s": p["window_actual_s"],
            });
            v["processes"] = json!(
                p["processes"]
                    .as_array()
                    .map(|ps| ps
                        .iter()
                        .map(|x| json!({"pid": x["pid"], "comm": x["comm"],
                            "threads": x["threads"], "sched_cpu_s": x["sched_cpu_s"],
                            "wakeups": x["wakeups"]}))
                        .collect::<Vec<_>>())
                    .unwrap_or_default()
            );
            Ok(v)
        })();
        let ready_s = d.ready_s;
        d.stop()?;
        let mut v = r?;
        v["ready_s"] = json!(ready_s);
        Ok(v)
    }

    // ----- scale -------------------------------------------------------

    fn run_scale(&mut self, cfg: &Config) -> anyhow::Result<Value> {
        let run = self.run_dir(cfg, &format!("scale-{}", cfg.name))?;
        let n = self.o.scale_tasks;
        let answered = self.o.scale_answered;
        let extra = format!(
            "max_tasks_per_goal = {}\nmax_goal_bytes = {}\ncapability_grace = \"1h\"\nheartbeat_interval = \"30m\"\nlease_timeout = \"2h\"\n",
            n.max(10_000),
            (n as u64 * 200).max(4 << 20)
        );
        let fleet = "# no workers: an external worker (this bench) answers\n";
        let mut v = self.base("scale", "workbusd", cfg, &run.join("bus"), 1);
        v["tasks"] = json!(n);
        v["answered"] = json!(answered);

        // 1. A goal of n tasks, held by a daemon: its peak RSS.
        let d = self.start_daemon(&run, cfg, fleet, &extra)?;
        let bus = d.bus.clone();
        write_heartbeat(&bus, n)?;
        wait_idle(
            &[d.pid],
            Duration::from_millis(500),
            Duration::from_secs(10),
            0.0,
        );
        let hwm_empty = status_kb(d.pid, "VmHWM");
        let sub = Submitter::new(&bus, &run.join("staging"), false)?;
        let (goal, _) = make_goal("scale", "scale", n);
        let staged = sub.stage("scale", &goal, cfg.fsync)?;
        let goal_bytes = fs::metadata(&staged)?.len();
        drop(goal);
        let t0 = Instant::now();
        fs::rename(&staged, bus.join("inbox/scale.json"))?;
        // Settled: under 10 % of a CPU for a second (with a goal in flight
        // the daemon may look at claimed/ now and then).
        let off = t0.elapsed().as_secs_f64();
        let (_, idle, busy_s) = wait_idle(
            &[d.pid],
            Duration::from_secs(1),
            Duration::from_secs(600),
            0.10,
        );
        let held_s = off + busy_s;
        let background = cpu_pct_over(&[d.pid], Duration::from_secs(2));
        let published = count_dir(&bus.join("tasks"));
        v["submit"] = json!({
            "goal_bytes": goal_bytes,
            "accepted_and_published_s": round(held_s, 3),
            "settled": idle,
            "tasks_published": published,
            "vmhwm_kb": status_kb(d.pid, "VmHWM"),
            "vmrss_kb": status_kb(d.pid, "VmRSS"),
            "vmhwm_empty_kb": hwm_empty,
            "daemon_cpu_s": proc_cpu_s(d.pid),
            "background_cpu_pct": background,
            "ready_empty_s": d.ready_s,
        });
        eprintln!(
            "  scale: {n}-task goal held: VmHWM {} kB, {published} tasks published in {held_s:.1} s",
            v["submit"]["vmhwm_kb"]
        );
        d.stop()?;

        // 2. An external worker claims and answers part of it meanwhile.
        let t = Instant::now();
        write_heartbeat(&bus, n)?;
        let now = serde_json::to_value(workbus_proto::Timestamp::now())?;
        for i in 1..=answered {
            let stem = format!("scale.t{i:06}.1");
            fs::rename(
                bus.join(format!("tasks/{stem}.json")),
                bus.join(format!("claimed/{stem}.ext.json")),
            )
            .with_context(|| format!("claiming tasks/{stem}.json"))?;
            let r = json!({"schema_version": 1, "goal": "scale", "task": format!("t{i:06}"),
                "attempt": 1, "worker": "ext", "status": "ok", "output": payload("scale"),
                "started_at": now, "finished_at": now});
            let tmp = bus.join(format!("results/.{stem}.json.tmp"));
            fs::write(&tmp, serde_json::to_vec(&r)?)?;
            fs::rename(&tmp, bus.join(format!("results/{stem}.json")))?;
        }
        // SAFETY: sync has no preconditions.
        unsafe { libc::sync() };
        v["answer_s"] = json!(round(t.elapsed().as_secs_f64(), 2));
        v["files_before_restart"] = json!({
            "tasks": count_dir(&bus.join("tasks")),
            "claimed": count_dir(&bus.join("claimed")),
            "results": count_dir(&bus.join("results")),
        });

        // 3. Restarts: start to READY=1, and what it costs.
        let mut restarts = Vec::new();
        let kinds: &[&str] = if self.o.scale_cold {
            &["warm", "cold"]
        } else {
            &["warm"]
        };
        for kind in kinds {
            if *kind == "cold" {
                // SAFETY: sync has no preconditions.
                unsafe { libc::sync() };
                if let Err(e) = fs::write("/proc/sys/vm/drop_caches", "3") {
                    eprintln!(
                        "wb-bench: cannot drop the page cache ({e}); skipping the cold restart"
                    );
                    continue;
                }
            }
            write_heartbeat(&bus, n)?;
            let results_before = count_dir(&bus.join("results"));
            let d = self.start_daemon(&run, cfg, fleet, &extra)?;
            let at_ready = (status_kb(d.pid, "VmHWM"), proc_cpu_s(d.pid));
            let (_, idle, busy_s) = wait_idle(
                &[d.pid],
                Duration::from_secs(1),
                Duration::from_secs(600),
                0.10,
            );
            let background = cpu_pct_over(&[d.pid], Duration::from_secs(2));
            let r = json!({
                "cache": kind,
                "ready_s": d.ready_s,
                "results_in_results_dir": results_before,
                "vmhwm_at_ready_kb": at_ready.0,
                "cpu_at_ready_s": at_ready.1,
                "vmhwm_kb": status_kb(d.pid, "VmHWM"),
                "cpu_s": proc_cpu_s(d.pid),
                "settled": idle,
                "busy_until_s": round(d.ready_s + busy_s, 2),
                "background_cpu_pct": background,
                "status_totals": read_status_totals(&bus),
            });
            eprintln!(
                "  scale: restart ({kind} cache, {results_before} results waiting): READY=1 after {:.3} s, VmHWM {} kB",
                d.ready_s, r["vmhwm_kb"]
            );
            d.stop()?;
            restarts.push(r);
        }
        v["restarts"] = json!(restarts);
        v["shape"] = json!(format!(
            "one accepted goal of {n} independent tasks: {} still in tasks/, {answered} claimed (claimed/) by an external worker with a fresh heartbeat and answered (results/), then the daemon restarted",
            n - answered
        ));
        Ok(v)
    }

    // ----- cleanup -----------------------------------------------------

    /// Deletes the files of this run's bus folders (keeping the emptied
    /// folders on ext4 for 10 minutes, so that their flex group is not
    /// chosen again while its freed inodes are recent), and removes emptied
    /// folders of earlier runs older than that.
    fn cleanup(&mut self) {
        for sd in self.stamp_dirs.clone() {
            let t = Instant::now();
            let tmpfs = fs_name(&sd) == "tmpfs";
            let files = if tmpfs {
                let n = count_files(&sd);
                let _ = fs::remove_dir_all(&sd);
                n
            } else {
                remove_files(&sd)
            };
            eprintln!(
                "wb-bench: removed {files} files under {} in {:.1} s{}",
                sd.display(),
                t.elapsed().as_secs_f64(),
                if tmpfs {
                    ""
                } else {
                    " (emptied folders kept for 10 minutes)"
                }
            );
        }
    }
}

/// Removes emptied run folders older than 10 minutes under DIR/wb-bench;
/// warns about (and removes) leftovers of interrupted runs.
fn remove_stale(parent: &Path) {
    let top = parent.join("wb-bench");
    let Ok(rd) = fs::read_dir(&top) else { return };
    for e in rd.flatten() {
        let p = e.path();
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|m| m.elapsed().ok())
            .is_some_and(|a| a > Duration::from_secs(600));
        let files = count_files(&p);
        if files > 0 {
            if old {
                eprintln!(
                    "wb-bench: removing {files} files left by an interrupted run in {} (creates near it are slow for ~2 minutes; this run's folders go to another flex group)",
                    p.display()
                );
                remove_files(&p);
            }
        } else if old {
            let _ = fs::remove_dir_all(&p);
        }
    }
}

/// The last `n` lines of a file.
fn tail(p: &Path, n: usize) -> String {
    let s = fs::read_to_string(p).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn count_dir(p: &Path) -> usize {
    fs::read_dir(p).map_or(0, |rd| rd.count())
}

fn count_files(p: &Path) -> usize {
    let Ok(rd) = fs::read_dir(p) else { return 0 };
    rd.flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => count_files(&e.path()),
            _ => 1,
        })
        .sum()
}

/// Deletes every non-folder under `p`, keeps the folders. Returns the count.
fn remove_files(p: &Path) -> usize {
    let Ok(rd) = fs::read_dir(p) else { return 0 };
    rd.flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => remove_files(&e.path()),
            _ => usize::from(fs::remove_file(e.path()).is_ok()),
        })
        .sum()
}

fn write_heartbeat(bus: &Path, concurrency: usize) -> anyhow::Result<()> {
    let hb = json!({
        "schema_version": 1, "name": "ext", "host": "", "pid": std::process::id(),
        "capabilities": ["echo"], "concurrency": concurrency,
        "last_seen": workbus_proto::Timestamp::now(),
    });
    workbus_bus::write_atomic(
        &bus.join("workers"),
        "ext.json",
        &serde_json::to_vec(&hb)?,
        false,
    )?;
    Ok(())
}

fn read_status_totals(bus: &Path) -> Value {
    fs::read(bus.join("status.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .map_or(Value::Null, |v| v["totals"].clone())
}

/// Per-hop times of one W1 goal from the inotify trace (ms): ingest (t0 to
/// the first task published), then per task: pickup (published to
/// claimed), work (claimed to result), release (result to the next task
/// published), and report (last result to the report read).
fn hop_breakdown(
    id: &str,
    trace: &[(Instant, &'static str, String)],
    t0: Instant,
    t1: Instant,
) -> Value {
    let at = |dir: &str, task: &str| {
        let prefix = format!("{id}.{task}.");
        trace
            .iter()
            .find(|(_, d, n)| *d == dir && n.starts_with(&prefix))
            .map(|(t, _, _)| *t)
    };
    let ms = |a: Option<Instant>, b: Option<Instant>| match (a, b) {
        (Some(a), Some(b)) => json!(round(b.saturating_duration_since(a).as_secs_f64() * 1e3, 3)),
        _ => Value::Null,
    };
    let chain = ["gather", "narrate", "build"];
    let mut v = json!({"goal": id, "total": round((t1 - t0).as_secs_f64() * 1e3, 3)});
    v["ingest"] = ms(Some(t0), at("tasks", "gather"));
    for (i, t) in chain.iter().enumerate() {
        v[format!("{t}_pickup")] = ms(at("tasks", t), at("claimed", t));
        v[format!("{t}_work")] = ms(at("claimed", t), at("results", t));
        if let Some(next) = chain.get(i + 1) {
            v[format!("{t}_release")] = ms(at("results", t), at("tasks", next));
        }
    }
    v["report"] = ms(at("results", "build"), Some(t1));
    v
}

fn hop_medians(hops: &[Value]) -> Value {
    let mut m = BTreeMap::new();
    // goal 1 starts from idle: leave it out of the warm medians
    for h in hops.iter().skip(1) {
        if let Some(o) = h.as_object() {
            for (k, x) in o {
                if let Some(f) = x.as_f64() {
                    m.entry(k.clone()).or_insert_with(Vec::new).push(f);
                }
            }
        }
    }
    json!(
        m.into_iter()
            .map(|(k, v)| (k, round(median(&v), 3)))
            .collect::<BTreeMap<_, _>>()
    )
}

/// One line of progress.
fn describe(v: &Value) -> String {
    let s = &v["summary"];
    match v["workload"].as_str().unwrap_or("") {
        "W1" | "W1-trace" => format!(
            "median {:.2} ms  p90 {:.2}  max {:.2}  first {:.2}  per hop {:.3} ms",
            s["median_s"].as_f64().unwrap_or(f64::NAN) * 1e3,
            s["p90_s"].as_f64().unwrap_or(f64::NAN) * 1e3,
            s["max_s"].as_f64().unwrap_or(f64::NAN) * 1e3,
            s["first_s"].as_f64().unwrap_or(f64::NAN) * 1e3,
            s["per_hop_ms"].as_f64().unwrap_or(f64::NAN),
        ),
        "W2" | "W4" => {
            let rate = s["tasks_per_s"].as_f64().unwrap_or(f64::NAN);
            let raw = v["raw_x4_before"]["tasks_per_s"].as_f64();
            format!(
                "wall {:.3} s  {rate:.0} tasks/s{}",
                s["wall_s"].as_f64().unwrap_or(f64::NAN),
                raw.map_or(String::new(), |r| format!(
                    "  (raw x4 just before: {r:.0}/s, {:.0} %)",
                    100.0 * rate / r
                ))
            )
        }
        "W3" | "W3-long" => format!(
            "cpu {:.2} ms (ticks {:.0} ms)  wakeups {}",
            s["sched_cpu_s"].as_f64().unwrap_or(f64::NAN) * 1e3,
            s["cpu_s"].as_f64().unwrap_or(f64::NAN) * 1e3,
            s["wakeups"]
        ),
        _ => String::new(),
    }
}

fn main() -> anyhow::Result<()> {
    let o = parse_args()?;
    for b in ["workbusd", "wb-worker"] {
        if !o.bin.join(b).exists() {
            bail!(
                "{} not found: build with cargo build --release --locked",
                o.bin.join(b).display()
            );
        }
    }
    let configs: Vec<Config> = o
        .configs
        .iter()
        .map(|c| o.config(c))
        .collect::<anyhow::Result<_>>()?;
    if configs.is_empty() {
        bail!("no config");
    }
    let mut parents: Vec<PathBuf> = configs.iter().map(|c| c.parent.clone()).collect();
    parents.dedup();
    for p in &parents {
        remove_stale(p);
    }
    let mut b = Bench::new(o)?;
    eprintln!("wb-bench: JSON lines -> {}", b.out_path.display());
    let host = json!({
        "bench": "wb-bench", "run": "host", "date": b.date, "commit": b.commit, "stamp": b.stamp,
        "kernel": read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "cpus": ncpu(), "mem_kb": status_like("/proc/meminfo", "MemTotal"),
        "cpu_model": read_to_string("/proc/cpuinfo").unwrap_or_default().lines()
            .find(|l| l.starts_with("model name")).and_then(|l| l.split(':').nth(1)).unwrap_or("").trim(),
        "configs": configs.iter().map(|c| json!({"name": c.name, "parent": c.parent, "fs": fs_name(&c.parent), "fsync": c.fsync})).collect::<Vec<_>>(),
        "workloads": b.o.workloads, "reps": b.o.reps, "reference": b.o.reference,
    });
    b.emit(&host)?;
    let result = run_all(&mut b, &configs);
    if !b.o.keep {
        b.cleanup();
    }
    result
}

fn status_like(path: &str, key: &str) -> Option<u64> {
    read_to_string(path)?
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|x| x.parse().ok())
}

fn run_all(b: &mut Bench, configs: &[Config]) -> anyhow::Result<()> {
    let wl = b.o.workloads.clone();
    let has = |w: &str| wl.iter().any(|x| x == w);
    let first = configs[0].clone();
    let mut failures = 0;
    let mut in_a_row = 0;
    for rep in 1..=b.o.reps {
        eprintln!("wb-bench: repetition {rep} of {}", b.o.reps);
        for cfg in configs {
            for w in ["W1", "W2", "W4"] {
                if !has(&w.to_lowercase()) {
                    continue;
                }
                let what = format!("{w} {} workbusd r{rep}", cfg.name);
                if b.measured(&what, |b, a| b.run_workbusd(w, cfg, rep, a, false))
                    .is_err()
                {
                    failures += 1;
                    in_a_row += 1;
                    if in_a_row >= 2 {
                        bail!(
                            "two workbusd runs failed in a row: the daemon looks broken; see the daemon.log files under the bus folders (--keep keeps them)"
                        );
                    }
                } else {
                    in_a_row = 0;
                }
                if !b.o.ref_workloads.iter().any(|x| *x == w.to_lowercase()) {
                    continue;
                }
                for variant in b.o.reference.clone() {
                    // one task at a time: in the first config only, and
                    // for W2 and W4 (slow) only --ref-one-reps times
                    if variant == "one"
                        && (cfg.name != first.name || (w != "W1" && rep > b.o.ref_one_reps))
                    {
                        continue;
                    }
                    let what = format!("{w} {} polling-{variant} r{rep}", cfg.name);
                    if b.measured(&what, |b, a| b.run_reference(w, &variant, cfg, rep, a))
                        .is_err()
                    {
                        failures += 1;
                    }
                }
            }
        }
        if has("w3") {
            let what = format!("W3 {} workbusd r{rep}", first.name);
            if b.measured(&what, |b, a| b.run_w3(&first, rep, a, b.o.w3_window))
                .is_err()
            {
                failures += 1;
            }
        }
    }
    if b.o.w3_long > 0.0 && has("w3") {
        let what = format!("W3 {} workbusd, {} s window", first.name, b.o.w3_long);
        let window = b.o.w3_long;
        if b.measured(&what, |b, a| b.run_w3(&first, 0, a, window))
            .is_err()
        {
            failures += 1;
        }
    }
    if b.o.hop_trace && has("w1") {
        let what = format!("W1 {} workbusd hop trace", first.name);
        if b.measured(&what, |b, a| b.run_workbusd("W1", &first, 0, a, true))
            .is_err()
        {
            failures += 1;
        }
    }
    if has("scale") {
        eprintln!("wb-bench: scale ({} tasks)", b.o.scale_tasks);
        let c = Contention::start();
        match b.run_scale(&first) {
            Ok(mut v) => {
                v["contention"] = json!({"others_cpu_pct": round(c.others_pct(), 1)});
                v["final"] = json!(true);
                b.emit(&v)?;
            }
            Err(e) => {
                eprintln!("wb-bench: scale: FAILED: {e:#}");
                let v = json!({"bench": "wb-bench", "run": "scale", "error": format!("{e:#}"),
                    "commit": b.commit, "stamp": b.stamp});
                b.emit(&v)?;
                failures += 1;
            }
        }
    }
    eprintln!("wb-bench: JSON lines in {}", b.out_path.display());
    if failures > 0 {
        bail!("{failures} run(s) failed");
    }
    Ok(())
}
