//! Tests that need root: a FUSE bus that inotify cannot see into, a full
//! disk, and the Debian package under a booted systemd. CI runs as root.
//! Without the capability they say why and do not run.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use notify::Watcher;
use workbus_proto::report::Outcome;

use crate::util::*;

/// Why the machine cannot run a root-only test, if it cannot.
fn lacks_root(test: &str) -> bool {
    if nix::unistd::Uid::effective().is_root() {
        return false;
    }
    eprintln!("SKIP {test}: needs root (mounts); CI runs as root");
    true
}

/// Tests that change system-wide inotify limits run one at a time, and not
/// while another test here relies on inotify.
static INOTIFY_LIMITS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A sysctl set for the life of the value, restored when dropped.
struct Sysctl {
    path: &'static str,
    old: String,
}
impl Sysctl {
    fn set(path: &'static str, value: &str) -> Sysctl {
        let old = fs::read_to_string(path).unwrap();
        fs::write(path, value).unwrap();
        Sysctl { path, old }
    }
}
impl Drop for Sysctl {
    fn drop(&mut self) {
        let _ = fs::write(self.path, self.old.trim());
    }
}

/// Unmounts when dropped.
struct Mount(PathBuf);
impl Drop for Mount {
    fn drop(&mut self) {
        for _ in 0..50 {
            let ok = Command::new("umount")
                .arg(&self.0)
                .status()
                .is_ok_and(|s| s.success());
            if ok || !is_mountpoint(&self.0) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn is_mountpoint(p: &Path) -> bool {
    let target = fs::canonicalize(p).unwrap_or(p.to_path_buf());
    fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(target.to_str().unwrap_or("")))
}

fn ensure_package(binary: &str, package: &str) {
    if Command::new("sh")
        .args(["-c", &format!("command -v {binary}")])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return;
    }
    eprintln!("installing {package} with apt-get (test setup)");
    let ok = Command::new("sh")
        .args(["-c", &format!("(apt-get install -y -q {package} || (apt-get update -q && apt-get install -y -q {package})) >&2")])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "could not install {package} with apt-get");
}

#[test]
fn a_bus_behind_fuse_is_polled_and_works() {
    if lacks_root("a_bus_behind_fuse_is_polled_and_works") {
        return;
    }
    ensure_package("bindfs", "bindfs");
    let _limits = INOTIFY_LIMITS.lock().unwrap_or_else(|e| e.into_inner());
    if !Path::new("/dev/fuse").exists() {
        eprintln!("SKIP a_bus_behind_fuse_is_polled_and_works: this machine has no /dev/fuse");
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("wbfuse-")
        .tempdir()
        .unwrap();
    let under = dir.path().join("under");
    let mnt = dir.path().join("bus");
    fs::create_dir_all(under.join("probe")).unwrap();
    fs::create_dir_all(&mnt).unwrap();
    let ok = Command::new("bindfs")
        .args(["-o", "attr_timeout=0,entry_timeout=0"])
        .arg(&under)
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(ok.success(), "bindfs failed");
    let _mount = Mount(mnt.clone());

    // inotify on the mount sees nothing of writes made in the folder under it.
    let (tx, rx) = std::sync::mpsc::channel();
    let mut w = notify::recommended_watcher(move |e: notify::Result<notify::Event>| {
        if let Ok(e) = e {
            let _ = tx.send(e);
        }
    })
    .unwrap();
    w.watch(&mnt.join("probe"), notify::RecursiveMode::NonRecursive)
        .unwrap();
    fs::write(under.join("probe/behind-its-back.json"), "{}").unwrap();
    assert!(
        rx.recv_timeout(Duration::from_secs(1)).is_err(),
        "inotify on the FUSE mount saw a write made under it"
    );
    assert!(
        mnt.join("probe/behind-its-back.json").exists(),
        "yet the file is there through the mount"
    );
    drop(w);

    // The daemon sees the bus through the mount; the worker writes under it.
    let bus = TestBus::with_root(
        tempfile::Builder::new()
            .prefix("wbfusecfg-")
            .tempdir()
            .unwrap(),
        mnt.clone(),
        "",
        "watch = \"auto\"\npoll_max = \"500ms\"\ncapability_grace = \"30s\"\n",
    );
    let d = bus.start();
    d.wait_log(
        "is on FUSE, where inotify misses writes made elsewhere",
        Duration::from_secs(5),
    );
    let mut worker = Command::new("python3")
        .arg(format!("{}/examples/worker.py", env!("CARGO_MANIFEST_DIR")))
        .arg("--root")
        .arg(&under)
        .args([
            "--name",
            "beneath",
            "--capabilities",
            "blind",
            "--heartbeat",
            "1",
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    bus.submit("fuse.toml", "[[task]]\nid = \"a\"\nneeds = [\"blind\"]\ninput = \"seen\"\n[[task]]\nid = \"b\"\nneeds = [\"blind\"]\nafter = [\"a\"]\n");
    let report = wait_for(
        Duration::from_secs(60),
        "the report through the FUSE mount",
        || bus.report("fuse"),
    );
    let _ = worker.kill();
    let _ = worker.wait();
    assert_eq!(report.outcome, Outcome::Succeeded, "{report:#?}");
    assert_eq!(report.tasks["b"].output, Some(serde_json::json!("seen")));
    assert_eq!(report.tasks["b"].worker.as_deref(), Some("beneath"));
    assert_eq!(bus.status().unwrap()["daemon"]["watch"], "poll");
    d.stop();
}

#[test]
fn a_full_disk_is_survived_and_the_goal_finishes_once_space_is_freed() {
    if lacks_root("a_full_disk_is_survived_and_the_goal_finishes_once_space_is_freed") {
        return;
    }
    let bus = TestBus::with_config(&spawn_worker("w", &["x"], 1), "");
    fs::create_dir_all(&bus.root).unwrap();
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
        .arg(&bus.root)
        .status()
        .unwrap();
    assert!(ok.success(), "mount -t tmpfs failed");
    let _mount = Mount(bus.root.clone());
    let d = bus.start();
    let chain: String = (0..8)
        .map(|i| {
            let after = if i > 0 { format!("after = [\"t{}\"]\n", i - 1) } else { String::new() };
            format!("[[task]]\nid = \"t{i}\"\nneeds = [\"x\"]\n{after}input = {{ sleep = 0.3, output = \"{}\" }}\n", "z".repeat(20_000))
        })
        .collect();
    bus.submit("full.toml", &chain);
    wait_for(Duration::from_secs(30), "the first result", || {
        bus.path("archive/full/t0.1.result.json")
            .exists()
            .then_some(())
    });
    // Fill the disk.
    let filler = bus.path("filler");
    let mut f = fs::File::create(&filler).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
    drop(f);
    d.wait_log("No space left on device", Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        bus.report("full").is_none(),
        "nothing can finish on a full disk"
    );
    let mut d = d;
    assert!(
        d.child.try_wait().unwrap().is_none(),
        "the daemon is still running"
    );
    assert_whole_records(&bus.root);
    // Space again: the deferred writes go through and the goal finishes.
    fs::remove_file(&filler).unwrap();
    let r = bus.wait_report("full", Duration::from_secs(60));
    assert_eq!(r.outcome, Outcome::Succeeded, "{r:#?}");
    assert_eq!(r.tasks.len(), 8);
    d.wait_log("the bus is writable again", Duration::from_secs(5));
    assert_eq!(d.stop().code(), Some(0));
    assert_whole_records(&bus.root);
}

/// The Debian package, installed and driven in a booted systemd container
/// (tests/system/workbusd.sh).
#[test]
fn the_package_works_under_a_booted_systemd() {
    if lacks_root("the_package_works_under_a_booted_systemd") {
        return;
    }
    let script = format!("{}/tests/system/workbusd.sh", env!("CARGO_MANIFEST_DIR"));
    let t0 = std::time::Instant::now();
    let out = Command::new("bash").arg(&script).output().unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    match out.status.code() {
        Some(0) => eprintln!("tests/system/workbusd.sh passed in {:.0?}", t0.elapsed()),
        Some(77) => eprintln!(
            "SKIP the_package_works_under_a_booted_systemd: {}",
            text.lines()
                .filter(|l| l.contains("UNSUPPORTED"))
                .collect::<Vec<_>>()
                .join("; ")
        ),
        _ => panic!("tests/system/workbusd.sh failed:\n{text}"),
    }
}

#[test]
fn an_inotify_queue_overflow_is_caught_by_a_rescan() {
    if lacks_root("an_inotify_queue_overflow_is_caught_by_a_rescan") {
        return;
    }
    let _limits = INOTIFY_LIMITS.lock().unwrap_or_else(|e| e.into_inner());
    let bus = TestBus::new(&spawn_worker("w", &["x"], 4));
    // The daemon's inotify queue is sized when it starts: make it tiny.
    let small = Sysctl::set("/proc/sys/fs/inotify/max_queued_events", "4");
    let d = bus.start();
    drop(small);
    for i in 0..60 {
        bus.submit(
            &format!("flood{i}.toml"),
            "[[task]]\nid = \"a\"\nneeds = [\"x\"]\ninput = { output = 1 }\n",
        );
    }
    for i in 0..60 {
        assert_eq!(
            bus.wait_report(&format!("flood{i}"), Duration::from_secs(60))
                .outcome,
            Outcome::Succeeded
        );
    }
    assert!(
        d.log_text()
            .contains("rescanning every folder: the inotify queue overflowed"),
        "the overflow was seen and rescanned"
    );
}

#[test]
fn running_out_of_inotify_watches_falls_back_to_polling() {
    if lacks_root("running_out_of_inotify_watches_falls_back_to_polling") {
        return;
    }
    let _limits = INOTIFY_LIMITS.lock().unwrap_or_else(|e| e.into_inner());
    let bus = TestBus::new(&spawn_worker("w", &["x"], 1));
    let none_left = Sysctl::set("/proc/sys/fs/inotify/max_user_watches", "1");
    let d = bus.start();
    drop(none_left);
    d.wait_log("inotify is not usable", Duration::from_secs(5));
    d.wait_log("falling back to polling", Duration::from_secs(5));
    bus.submit("polled.toml", "[[task]]\nid = \"a\"\nneeds = [\"x\"]\n");
    assert_eq!(
        bus.wait_report("polled", Duration::from_secs(30)).outcome,
        Outcome::Succeeded
    );
    assert_eq!(bus.status().unwrap()["daemon"]["watch"], "poll");
}
