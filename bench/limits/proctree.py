#!/usr/bin/env python3
"""proctree.py -- the W3 idle meter of shared WORKLOADS.md (standard library only).

    proctree.py [--settle S] [--window W] [--interval I] [--label TEXT] PID [PID ...]

Waits S seconds (settle, default 5), then expands the root PIDs to every
descendant process, and measures a window of W seconds (default 20):

  cpu_s        delta(utime + stime) of /proc/PID/stat, in clock ticks / CLK_TCK
               (whole process, includes threads that ended; 10 ms resolution)
  sched_cpu_s  sum over threads of delta(sum_exec_runtime) of
               /proc/PID/task/TID/schedstat (ns; precise)
  wakeups      sum over threads of delta(voluntary_ctxt_switches) of
               /proc/PID/task/TID/status (each one is a sleep ended by a wakeup)
  nonvoluntary the same for nonvoluntary_ctxt_switches (preemptions), for context

per process and in total, as one JSON object on stdout.

Processes and threads that come and go during the window:
- the set is fixed at the start of the window (the roots and all their
  descendants then); the tree is also re-read at every sample, and descendants
  born during the window are counted from zero and marked "appeared": they are
  part of "total"; "total_initial" leaves them out;
- every process and thread is keyed by (id, start time), so a recycled PID is
  never mistaken for the old one;
- the counters are sampled every I seconds (default 0.5): a thread or process
  that ends keeps the values of its last sample ("vanished": true), so what it
  did in its last interval is lost (at most I seconds of its activity); its
  CPU time then shows up in its parent's cutime/cstime, reported as
  "reaped_children_cpu_s" of the parent but not added to the totals.
"""

import argparse
import json
import os
import sys
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


def read(path):
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None


def parse_stat(text):
    """Fields of /proc/PID/stat after the comm; comm may hold spaces and ')'."""
    lpar, rpar = text.index("("), text.rindex(")")
    comm = text[lpar + 1 : rpar]
    rest = text[rpar + 2 :].split()
    # rest[0] is field 3 (state): field k is rest[k - 3]
    return {
        "comm": comm,
        "ppid": int(rest[1]),
        "utime": int(rest[11]),
        "stime": int(rest[12]),
        "cutime": int(rest[13]),
        "cstime": int(rest[14]),
        "start": int(rest[19]),
    }


def ctxt_switches(text):
    vol = invol = 0
    for line in text.splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            vol = int(line.split()[1])
        elif line.startswith("nonvoluntary_ctxt_switches:"):
            invol = int(line.split()[1])
    return vol, invol


def all_ppids():
    """{pid: (ppid, start)} of every process now."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        text = read(f"/proc/{name}/stat")
        if text is None:
            continue
        try:
            st = parse_stat(text)
        except (ValueError, IndexError):
            continue
        out[int(name)] = (st["ppid"], st["start"])
    return out


def descendants(roots, tracked_keys=()):
    """PIDs of roots, of the tracked (pid, start) still alive, and of all
    their descendants."""
    table = all_ppids()
    children = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    seen = set()
    stack = [p for p in roots if p in table]
    stack += [pid for pid, start in tracked_keys if table.get(pid, (0, None))[1] == start]
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        stack.extend(children.get(pid, ()))
    return seen, table


def sample_process(pid):
    """One reading of a process and its threads, or None if it is gone."""
    text = read(f"/proc/{pid}/stat")
    if text is None:
        return None
    try:
        st = parse_stat(text)
    except (ValueError, IndexError):
        return None
    threads = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except (FileNotFoundError, ProcessLookupError):
        tids = []
    for name in tids:
        tstat = read(f"/proc/{pid}/task/{name}/stat")
        sched = read(f"/proc/{pid}/task/{name}/schedstat")
        status = read(f"/proc/{pid}/task/{name}/status")
        if tstat is None or sched is None or status is None:
            continue  # the thread ended while we read it
        try:
            tst = parse_stat(tstat)
            vol, invol = ctxt_switches(status)
            threads[(int(name), tst["start"])] = {
                "sched_ns": int(sched.split()[0]),
                "vol": vol,
                "invol": invol,
            }
        except (ValueError, IndexError):
            continue
    cmdline = read(f"/proc/{pid}/cmdline") or ""
    return {
        "key": (pid, st["start"]),
        "comm": st["comm"],
        "cmdline": cmdline.replace("\0", " ").strip()[:200],
        "ppid": st["ppid"],
        "ticks": st["utime"] + st["stime"],
        "child_ticks": st["cutime"] + st["cstime"],
        "threads": threads,
    }


class Tracked:
    """First and last reading of one process (and of each of its threads)."""

    def __init__(self, s, appeared):
        self.key = s["key"]
        self.appeared = appeared
        self.vanished = False
        self.first = s
        self.last = s
        # threads: key -> [first, last, appeared]
        self.threads = {k: [v, v, appeared] for k, v in s["threads"].items()}
        self.gone_threads = set()

    def update(self, s):
        self.last = s
        for k, v in s["threads"].items():
            if k in self.threads:
                self.threads[k][1] = v
            else:
                self.threads[k] = [None, v, True]  # born in the window: from zero
        for k in self.threads:
            if k not in s["threads"]:
                self.gone_threads.add(k)

    def result(self):
        base_ticks = 0 if self.appeared else self.first["ticks"]
        base_child = 0 if self.appeared else self.first["child_ticks"]
        sched = vol = invol = 0
        for first, last, _ in self.threads.values():
            f = first or {"sched_ns": 0, "vol": 0, "invol": 0}
            sched += last["sched_ns"] - f["sched_ns"]
            vol += last["vol"] - f["vol"]
            invol += last["invol"] - f["invol"]
        return {
            "pid": self.key[0],
            "comm": self.last["comm"],
            "cmdline": self.last["cmdline"],
            "ppid": self.last["ppid"],
            "appeared": self.appeared,
            "vanished": self.vanished,
            "threads": len(self.threads),
            "threads_ended": len(self.gone_threads),
            "cpu_ticks": self.last["ticks"] - base_ticks,
            "cpu_s": (self.last["ticks"] - base_ticks) / CLK_TCK,
            "sched_cpu_s": sched / 1e9,
            "wakeups": vol,
            "nonvoluntary": invol,
            "reaped_children_cpu_s": (self.last["child_ticks"] - base_child) / CLK_TCK,
        }


def measure(roots, settle, window, interval, me):
    if settle > 0:
        time.sleep(settle)
    pids, _ = descendants(roots)
    pids.discard(me)
    tracked = {}
    t0 = time.monotonic()
    for pid in sorted(pids):
        s = sample_process(pid)
        if s is not None:
            tracked[s["key"]] = Tracked(s, appeared=False)
    initial = set(tracked)
    samples = 1
    t_end = t0 + window
    while True:
        now = time.monotonic()
        if now >= t_end:
            break
        time.sleep(min(interval, t_end - now))
        samples += 1
        live = [k for k, t in tracked.items() if not t.vanished]
        pids, _ = descendants(roots, live)
        pids.discard(me)
        seen = set()
        for pid in sorted(pids):
            s = sample_process(pid)
            if s is None:
                continue
            seen.add(s["key"])
            if s["key"] in tracked:
                tracked[s["key"]].update(s)
            else:
                tracked[s["key"]] = Tracked(s, appeared=True)
        for key, t in tracked.items():
            if key not in seen:
                t.vanished = True
    t1 = time.monotonic()
    procs = [t.result() for t in tracked.values()]
    procs.sort(key=lambda p: (p["appeared"], p["pid"]))

    def total(ps):
        return {
            "processes": len(ps),
            "threads": sum(p["threads"] for p in ps),
            "cpu_ticks": sum(p["cpu_ticks"] for p in ps),
            "cpu_s": round(sum(p["cpu_ticks"] for p in ps) / CLK_TCK, 6),
            "sched_cpu_s": round(sum(p["sched_cpu_s"] for p in ps), 9),
            "wakeups": sum(p["wakeups"] for p in ps),
            "nonvoluntary": sum(p["nonvoluntary"] for p in ps),
            # not in cpu_s: CPU of children reaped in the window, which holds
            # children too short-lived to be sampled (and double-counts the
            # last sample of those that were)
            "reaped_children_cpu_s": round(sum(p["reaped_children_cpu_s"] for p in ps), 6),
        }

    init_keys = {k[0] for k in initial}
    return {
        "probe": "proctree",
        "roots": roots,
        "missing_roots": [r for r in roots if r not in init_keys],
        "settle_s": settle,
        "window_s": window,
        "window_actual_s": round(t1 - t0, 4),
        "interval_s": interval,
        "samples": samples,
        "clk_tck": CLK_TCK,
        "processes": procs,
        "total": total(procs),
        "total_initial": total([p for p in procs if not p["appeared"]]),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("pids", nargs="+", type=int, metavar="PID")
    ap.add_argument("--settle", type=float, default=5.0)
    ap.add_argument("--window", type=float, default=20.0)
    ap.add_argument("--interval", type=float, default=0.5,
                    help="sampling period in seconds (catches processes and threads that come and go)")
    ap.add_argument("--label", default="")
    ap.add_argument("--pretty", action="store_true", help="indented JSON instead of one line")
    a = ap.parse_args(argv)
    if a.window <= 0 or a.interval <= 0 or a.settle < 0:
        ap.error("settle must be >= 0, window and interval > 0")
    res = measure(a.pids, a.settle, a.window, a.interval, os.getpid())
    res["label"] = a.label
    json.dump(res, sys.stdout, indent=2 if a.pretty else None)
    sys.stdout.write("\n")
    return 1 if len(res["missing_roots"]) == len(a.pids) else 0


if __name__ == "__main__":
    sys.exit(main())
