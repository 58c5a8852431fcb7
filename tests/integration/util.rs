//! Test helpers: a bus on a temp folder, the real `workbusd` binary started
//! on it with a real `NOTIFY_SOCKET`, and waits on conditions with deadlines.

#![allow(dead_code)]

use std::fs;
use std::io::Read;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use workbus_proto::report::Report;

pub const WORKBUSD: &str = env!("CARGO_BIN_EXE_workbusd");
pub const WORKBUSCTL: &str = env!("CARGO_BIN_EXE_workbusctl");

/// The scripted worker (see tests/fixtures/fake_worker.py).
pub fn fake_worker() -> String {
    format!(
        "{}/tests/fixtures/fake_worker.py",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// A `[[worker]]` running the fake worker in spawn mode.
pub fn spawn_worker(name: &str, caps: &[&str], concurrency: u32) -> String {
    format!(
        "[[worker]]\nname = \"{name}\"\ncapabilities = {caps:?}\ncommand = [\"python3\", \"{}\"]\nconcurrency = {concurrency}\n\n",
        fake_worker()
    )
}

/// Settings that keep tests quick; each test may add more.
pub const QUICK: &str = r#"
capability_grace = "1s"
retry_backoff = "200ms"
retry_backoff_max = "2s"
kill_grace = "500ms"
status_interval = "50ms"
log = "text"
log_level = "debug"
"#;

/// QUICK without the keys `extra` sets.
fn quick_without(extra: &str) -> String {
    let key = |l: &str| l.split('=').next().unwrap_or("").trim().to_string();
    let overridden: Vec<String> = extra.lines().map(key).filter(|k| !k.is_empty()).collect();
    QUICK
        .lines()
        .filter(|l| !overridden.contains(&key(l)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Polls `cond` until it returns `Some`, or panics after `timeout` saying `what`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut cond: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = cond() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A bus folder with its fleet and configuration files.
pub struct TestBus {
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
    pub fleet: PathBuf,
    pub config: PathBuf,
}

impl TestBus {
    pub fn new(fleet: &str) -> TestBus {
        Self::with_config(fleet, "")
    }

    pub fn with_config(fleet: &str, extra: &str) -> TestBus {
        let dir = tempfile::Builder::new()
            .prefix("wbtest-")
            .tempdir()
            .unwrap();
        Self::in_dir(dir, fleet, extra)
    }

    pub fn in_dir(dir: tempfile::TempDir, fleet: &str, extra: &str) -> TestBus {
        let root = dir.path().join("bus");
        Self::with_root(dir, root, fleet, extra)
    }

    /// A bus at `root` (which may be a mount), its files in `dir`.
    pub fn with_root(dir: tempfile::TempDir, root: PathBuf, fleet: &str, extra: &str) -> TestBus {
        let fleet_path = dir.path().join("fleet.toml");
        let config = dir.path().join("workbusd.toml");
        fs::write(&fleet_path, fleet).unwrap();
        fs::write(
            &config,
            format!(
                "root = {:?}\nfleet = {:?}\n{}\n{extra}",
                root.display().to_string(),
                fleet_path.display().to_string(),
                quick_without(extra)
            ),
        )
        .unwrap();
        TestBus {
            dir,
            root,
            fleet: fleet_path,
            config,
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// Starts `workbusd --config …` and waits for READY=1.
    pub fn start(&self) -> Daemon {
        Daemon::start(self, &[])
    }

    /// Drops a goal into the inbox the way a careful person does: write to a
    /// dot-name, then rename.
    pub fn submit(&self, name: &str, text: &str) {
        self.submit_bytes(name, text.as_bytes());
    }

    pub fn submit_bytes(&self, name: &str, text: &[u8]) {
        let inbox = self.path("inbox");
        fs::create_dir_all(&inbox).unwrap();
        let tmp = inbox.join(format!(".{name}.tmp"));
        fs::write(&tmp, text).unwrap();
        fs::rename(&tmp, inbox.join(name)).unwrap();
    }

    pub fn report(&self, goal: &str) -> Option<Report> {
        let text = fs::read_to_string(self.path(&format!("reports/{goal}.json"))).ok()?;
        Some(serde_json::from_str(&text).unwrap())
    }

    pub fn wait_report(&self, goal: &str, timeout: Duration) -> Report {
        wait_for(timeout, &format!("the report of {goal}"), || {
            self.report(goal)
        })
    }

    pub fn json(&self, rel: &str) -> Value {
        let text = fs::read_to_string(self.path(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
        serde_json::from_str(&text).unwrap()
    }

    /// `rejected/NAME.error.json`, once it exists.
    pub fn wait_rejected(&self, name: &str) -> Value {
        let p = self.path(&format!("rejected/{name}.error.json"));
        wait_for(
            Duration::from_secs(10),
            &format!("the rejection of {name}"),
            || {
                let text = fs::read_to_string(&p).ok()?;
                serde_json::from_str(&text).ok()
            },
        )
    }

    pub fn status(&self) -> Option<Value> {
        let text = fs::read_to_string(self.path("status.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    pub fn ctl(&self, args: &[&str]) -> std::process::Output {
        Command::new(WORKBUSCTL)
            .arg("--root")
            .arg(&self.root)
            .args(args)
            .output()
            .unwrap()
    }
}

/// A running daemon; killed when dropped. Its notifications are read
/// continuously, as systemd does, into `messages`.
pub struct Daemon {
    pub child: Child,
    pub log: PathBuf,
    pub messages: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Daemon {
    pub fn start(bus: &TestBus, extra_env: &[(&str, &str)]) -> Daemon {
        let d = Self::spawn(bus, extra_env);
        d.wait_ready()
    }

    /// Starts without waiting for readiness.
    pub fn spawn(bus: &TestBus, extra_env: &[(&str, &str)]) -> Daemon {
        let n = std::sync::atomic::AtomicU32::new(0);
        let _ = n;
        let sock_path = bus.dir.path().join(format!("notify-{}.sock", unique()));
        let notify = UnixDatagram::bind(&sock_path).unwrap();
        notify
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let messages = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = messages.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            // Ends when the test drops the daemon (and this Arc is the last).
            while std::sync::Arc::strong_count(&sink) > 1 {
                if let Ok(n) = notify.recv(&mut buf) {
                    sink.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&buf[..n]).into_owned());
                }
            }
        });
        let log = bus.dir.path().join(format!("workbusd-{}.log", unique()));
        let logf = fs::File::create(&log).unwrap();
        let mut cmd = Command::new(WORKBUSD);
        cmd.arg("--config")
            .arg(&bus.config)
            .env("NOTIFY_SOCKET", &sock_path)
            .env_remove("WORKBUS_LOG")
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf);
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        Daemon {
            child,
            log,
            messages,
        }
    }

    pub fn wait_ready(mut self) -> Daemon {
        self.wait_message("READY=1", Duration::from_secs(90));
        self
    }

    /// Waits for a notification containing `what`; returns it.
    pub fn wait_message(&mut self, what: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(m) = self
                .messages
                .lock()
                .unwrap()
                .iter()
                .find(|m| m.contains(what))
            {
                return m.clone();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "workbusd exited ({status}) before {what}:\n{}",
                    self.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no {what} from workbusd within {timeout:?}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn log_text(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig).unwrap();
    }

    /// SIGKILL, and reap.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "workbusd did not stop:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the daemon's log contains `what`.
    pub fn wait_log(&self, what: &str, timeout: Duration) {
        wait_for(timeout, &format!("{what:?} in the daemon's log"), || {
            self.log_text().contains(what).then_some(())
        });
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- workbusd log ----\n{}", self.log_text());
        }
    }
}

pub fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Every live process whose process group is `pgid`.
pub fn group_members(pgid: i32) -> Vec<i32> {
    let mut out = vec![];
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let f: Vec<&str> = stat[close + 2..].split(' ').collect();
        if f.len() > 2 && f[2].parse::<i32>().ok() == Some(pgid) && f[0] != "Z" {
            out.push(pid);
        }
    }
    out
}

pub fn read_json(p: &Path) -> Value {
    serde_json::from_str(&fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .unwrap()
}

/// Every record under `root` parses and no writer's temporary is left
/// behind; returns how many records were read.
pub fn assert_whole_records(root: &Path) -> usize {
    let mut stack = vec![root.to_path_buf()];
    let mut checked = 0;
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap().flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
                continue;
            }
            assert!(
                !workbus_bus::is_temporary(&name),
                "a temporary was left behind: {}",
                p.display()
            );
            if name.ends_with(".json") {
                let text = fs::read_to_string(&p).unwrap();
                serde_json::from_str::<Value>(&text)
                    .unwrap_or_else(|e| panic!("half a record in {}: {e}\n{text}", p.display()));
                checked += 1;
            }
        }
    }
    checked
}
