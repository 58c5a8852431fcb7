#!/usr/bin/env python3
"""test_proctree.py -- checks proctree.py against processes whose cost is known.

    python3 bench/limits/test_proctree.py [--window W]

Starts, under one root (a bash that waits), processes whose idle cost is known
in advance, measures them with proctree.measure() and checks each figure:

  sleeper   `sleep 1000`                           0 wakeups, 0 CPU
  pyloop    python: time.sleep(0.1) forever        10 wakeups/s
  readloop  bash: `read -t 0.1` on an empty fifo   10 wakeups/s, no children
  forkloop  bash: `sleep 0.1` in a loop            children that come and go
  threads   python: a new thread each second that  threads that come and go
            sleeps 0.1 s five times, then 0.6 s, and ends
  burner    python: sleeps 1 s, burns 1.0 s of CPU, then sleeps

Exit status 0 when every check passes; prints the measurement and the checks.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import proctree  # noqa: E402

PYLOOP = "import time\nwhile True: time.sleep(0.1)\n"
THREADS = """
import threading, time
def work():
    for _ in range(5):
        time.sleep(0.1)
    time.sleep(0.6)
while True:
    threading.Thread(target=work).start()
    time.sleep(1.0)
"""
BURNER = """
import time, sys
time.sleep(float(sys.argv[1]))
t = time.process_time()
while time.process_time() - t < 1.0:
    pass
time.sleep(1000)
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--window", type=float, default=6.0)
    a = ap.parse_args()
    w = a.window
    tmp = tempfile.mkdtemp(prefix="proctree-test-")
    fifo = os.path.join(tmp, "fifo")
    os.mkfifo(fifo)
    py = sys.executable
    # the root: a bash that starts everything and waits; each child is
    # recognisable by its argv[0] (exec -a)
    script = f"""
sleep 1000 &
(exec -a pyloop {py} -c '{PYLOOP}') &
(exec -a readloop bash -c 'exec 3<>"{fifo}"; while :; do read -t 0.1 -u 3; done') &
(exec -a forkloop bash -c 'while :; do sleep 0.1; done') &
(exec -a threads {py} -c '{THREADS}') &
(exec -a burner {py} -c '{BURNER}' 1.5) &
wait
"""
    root = subprocess.Popen(["bash", "-c", script], start_new_session=True)
    try:
        time.sleep(0.5)  # let bash start its children; the meter's settle is 0
        res = proctree.measure([root.pid], settle=0, window=w, interval=0.25, me=os.getpid())
    finally:
        os.killpg(root.pid, signal.SIGTERM)
        root.wait()
        os.unlink(fifo)
        os.rmdir(tmp)

    procs = res["processes"]

    def one(pred, what):
        found = [p for p in procs if pred(p)]
        if len(found) != 1:
            raise SystemExit(f"FAIL: expected one {what}, found {len(found)}: {found}")
        return found[0]

    checks = []

    def check(name, value, lo, hi):
        ok = lo <= value <= hi
        checks.append({"check": name, "value": value, "expected": [lo, hi], "ok": ok})

    sleeper = one(lambda p: p["cmdline"] == "sleep 1000", "sleep 1000")
    check("sleeper wakeups", sleeper["wakeups"], 0, 0)
    check("sleeper cpu_s", sleeper["cpu_s"], 0, 0)
    check("sleeper sched_cpu_s", sleeper["sched_cpu_s"], 0, 0.0005)

    n10 = 10 * w  # 10 wakeups a second
    pyloop = one(lambda p: p["cmdline"].startswith("pyloop "), "pyloop")
    check("pyloop wakeups", pyloop["wakeups"], 0.93 * n10, 1.02 * n10 + 1)
    readloop = one(lambda p: p["cmdline"].startswith("readloop ") and not p["appeared"], "readloop")
    check("readloop wakeups", readloop["wakeups"], 0.93 * n10, 1.02 * n10 + 1)

    forkloop = one(lambda p: p["cmdline"].startswith("forkloop ") and not p["appeared"], "forkloop")
    kids = [p for p in procs if p["ppid"] == forkloop["pid"]]
    # bash waits for each `sleep 0.1` child: at least one wakeup per iteration
    check("forkloop bash wakeups", forkloop["wakeups"], 0.8 * n10, 3 * n10)
    check("forkloop children seen", len(kids), 0.8 * w / 0.25, 1.2 * n10 + 2)
    check("forkloop children vanished", sum(p["vanished"] for p in kids), len(kids) - 2, len(kids))

    threads = one(lambda p: p["cmdline"].startswith("threads "), "threads")
    # main thread: 2 wakeups/s (its sleep(1.0) and Thread.start() waiting for
    # the thread to run); each worker thread: 6 sleeps; ~1 new thread/s.
    # A thread's last wakeup (end of its 0.6 s sleep) can fall after its last
    # sample, and the threads alive at both ends are only partly in the window.
    check("threads: threads seen", threads["threads"], w, w + 3)
    check("threads: threads ended", threads["threads_ended"], w - 2, w + 1)
    check("threads wakeups", threads["wakeups"], 5 * (w - 2) + w, 2 * (w + 1) + 6 * (w + 2) + 4)

    burner = one(lambda p: p["cmdline"].startswith("burner "), "burner")
    check("burner cpu_s (ticks)", burner["cpu_s"], 0.95, 1.10)
    check("burner sched_cpu_s", burner["sched_cpu_s"], 0.97, 1.06)

    tot = res["total"]
    check("total = sum of processes (wakeups)", tot["wakeups"], sum(p["wakeups"] for p in procs),
          sum(p["wakeups"] for p in procs))
    check("root found", int(res["missing_roots"] == []), 1, 1)

    out = {"measurement": res, "checks": checks, "ok": all(c["ok"] for c in checks)}
    json.dump(out, sys.stdout, indent=1)
    print()
    for c in checks:
        print(f"{'ok  ' if c['ok'] else 'FAIL'} {c['check']}: {c['value']} in {c['expected']}",
              file=sys.stderr)
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
