#!/usr/bin/env python3
"""polling.py -- the reference design for shared WORKLOADS.md: a Python
conductor that polls the bus with backoff, and 4 worker processes that poll
it too (standard library only).

    polling.py --root DIR --workload W1|W2|W4 --variant all|one [options]
    polling.py --worker NAME --root DIR [options]        (started by the conductor)

The same work per task as workbusd does on its bus:
  - the conductor accepts the goal by writing goals/<goal>.json (fsync of the
    file and the folder when --fsync 1), then publishes task records
    atomically (temp name, write, rename; not fsynced: workbusd does not fsync
    task records either) into tasks/<goal>.<task>.1.json;
  - a worker lists tasks/, claims a task by rename into
    claimed/<goal>.<task>.1.<worker>.json, reads it, does the task (echo: no
    dependency -> its input, one -> that output, several -> the map of their
    outputs; W4: subprocess.run(["/bin/true"], check=True)), and writes its
    result atomically into results/ (fdatasync of the file, rename, fsync of
    the folder when --fsync 1);
  - the conductor lists results/, reads each result, moves it and its claimed
    task into archive/<goal>/ (renames, as workbusd does), releases the
    dependents whose dependencies are all done, and at the end writes
    reports/<goal>.json (fsynced when --fsync 1).
Variants: "one" publishes one task at a time (the next only once the previous
one's result is in); "all" publishes every ready task at once.

Polling with backoff, both sides: after a look that found nothing, sleep,
then double the sleep, from --poll-min (5 ms) up to --poll-max (1 s); a look
that found something resets it (a worker that did a task looks again at
once). After >= 2 s idle every poller sleeps 1 s at a time: 5 processes x 1
wake-up per second is the 100 wake-ups in 20 s of the published W3 figure.

Timing (the submitter is the conductor itself, "in-process"): t0 just before
the goal is accepted (written to goals/), t1 when the report is written and
the final result is in hand; time.monotonic(). The workers are started
first, and the goal is submitted after --idle seconds (2): their backoff is
at its cap.

Output: one JSON line on stdout: {"goals": [{"id", "latency_s", "tasks"}],
"reference": {parameters}}. Logs on stderr.
"""

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import deque

FOLDERS = ("tasks", "claimed", "results", "goals", "reports", "archive", "workers")
_seq = 0


def write_atomic(folder, name, data, durable):
    """temp name in the same folder, write, [fdatasync], rename, [fsync folder]"""
    global _seq
    _seq += 1
    tmp = os.path.join(folder, f".{name}.{os.getpid()}.{_seq}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o660)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        if durable:
            os.fdatasync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, os.path.join(folder, name))
    if durable:
        dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def listing(folder):
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    return [n for n in names if n.endswith(".json") and not n.startswith(".")]


def now_iso():
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"


# ----- worker ---------------------------------------------------------------


def worker(a):
    root, name = a.root, a.worker
    tasks, claimed, results = (os.path.join(root, d) for d in ("tasks", "claimed", "results"))
    index = int("".join(c for c in name if c.isdigit()) or 0)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    write_atomic(os.path.join(root, "workers"), f"{name}.json",
                 json.dumps({"name": name, "pid": os.getpid(), "started_at": now_iso()}).encode(), False)
    backoff = a.poll_min
    while True:
        names = listing(tasks)
        did = False
        if names:
            # start at different places, so that the workers do not all race
            # for the same file
            k = (index * len(names)) // a.workers
            names = names[k:] + names[:k]
            for n in names:
                stem = n[:-5]
                mine = os.path.join(claimed, f"{stem}.{name}.json")
                try:
                    os.rename(os.path.join(tasks, n), mine)
                except FileNotFoundError:
                    continue  # another worker won
                with open(mine, "rb") as f:
                    task = json.loads(f.read())
                started = now_iso()
                if "spawn" in task.get("needs", []):
                    subprocess.run(["/bin/true"], check=True)
                    output = ""
                else:
                    deps = task.get("deps") or {}
                    if not deps:
                        output = task.get("input")
                    elif len(deps) == 1:
                        output = next(iter(deps.values()))["output"]
                    else:
                        output = {k: v["output"] for k, v in deps.items()}
                result = {
                    "schema_version": 1, "goal": task["goal"], "task": task["task"],
                    "attempt": task["attempt"], "worker": name, "status": "ok",
                    "output": output, "started_at": started, "finished_at": now_iso(),
                }
                write_atomic(results, n, json.dumps(result).encode(), a.fsync)
                did = True
        if did:
            backoff = a.poll_min
            continue
        time.sleep(backoff)
        backoff = min(backoff * a.factor, a.poll_max)


# ----- conductor ------------------------------------------------------------


def make_goal(workload, gid, n):
    payload = f"goal {gid}"
    if workload == "W1":
        return [
            {"id": "gather", "needs": ["gather"], "after": [], "input": payload},
            {"id": "narrate", "needs": ["narrate"], "after": ["gather"]},
            {"id": "build", "needs": ["build"], "after": ["narrate"]},
        ]
    if workload == "W2":
        mids = [f"t{i:05d}" for i in range(1, n + 1)]
        return ([{"id": "root", "needs": ["echo"], "after": [], "input": payload}]
                + [{"id": m, "needs": ["echo"], "after": ["root"]} for m in mids]
                + [{"id": "join", "needs": ["echo"], "after": mids}])
    if workload == "W4":
        return [{"id": f"t{i:06d}", "needs": ["spawn"], "after": [], "input": payload}
                for i in range(1, n + 1)]
    raise ValueError(workload)


class Conductor:
    def __init__(self, a):
        self.a = a
        self.d = {f: os.path.join(a.root, f) for f in FOLDERS}

    def run_goal(self, gid, tasks, timeout=600.0):
        """Runs one goal to its end; returns its final output."""
        a, d = self.a, self.d
        deadline = time.monotonic() + timeout
        write_atomic(d["goals"], f"{gid}.json",
                     json.dumps({"id": gid, "accepted_at": now_iso(), "tasks": tasks}).encode(), a.fsync)
        archive = os.path.join(d["archive"], gid)
        os.mkdir(archive)
        spec = {t["id"]: t for t in tasks}
        left = {t["id"]: len(t["after"]) for t in tasks}
        dependents = {t["id"]: [] for t in tasks}
        for t in tasks:
            for dep in t["after"]:
                dependents[dep].append(t["id"])
        ready = deque(t["id"] for t in tasks if not t["after"])
        outputs = {}
        state = {"inflight": 0}

        def publish(tid):
            t = spec[tid]
            rec = {
                "schema_version": 1, "goal": gid, "task": tid, "attempt": 1,
                "needs": t["needs"], "input": t.get("input"),
                "deps": {dep: {"output": outputs[dep]} for dep in t["after"]},
                "priority": 0, "published_at": now_iso(),
            }
            write_atomic(d["tasks"], f"{gid}.{tid}.1.json", json.dumps(rec).encode(), False)
            state["inflight"] += 1

        def release():
            if a.variant == "all":
                while ready:
                    publish(ready.popleft())
            elif state["inflight"] == 0 and ready:
                publish(ready.popleft())

        release()
        done = 0
        backoff = a.poll_min
        while done < len(tasks):
            names = [n for n in listing(d["results"]) if n.startswith(gid + ".")]
            if not names:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"goal {gid}: {done} of {len(tasks)} tasks done after {timeout} s")
                time.sleep(backoff)
                backoff = min(backoff * a.factor, a.poll_max)
                continue
            for n in names:
                _, tid, attempt = n[:-5].split(".")
                path = os.path.join(d["results"], n)
                with open(path, "rb") as f:
                    r = json.loads(f.read())
                if r.get("status") != "ok":
                    raise RuntimeError(f"{n}: {r.get('error')}")
                outputs[tid] = r.get("output")
                os.rename(path, os.path.join(archive, f"{tid}.{attempt}.result.json"))
                claim = os.path.join(d["claimed"], f"{n[:-5]}.{r['worker']}.json")
                os.rename(claim, os.path.join(archive, f"{tid}.{attempt}.task.json"))
                state["inflight"] -= 1
                done += 1
                for dep in dependents[tid]:
                    left[dep] -= 1
                    if left[dep] == 0:
                        ready.append(dep)
            release()
            backoff = a.poll_min
        report = {
            "schema_version": 1, "goal": gid, "outcome": "succeeded", "finished_at": now_iso(),
            "tasks": {tid: {"state": "succeeded", "attempts": 1, "output": outputs[tid]} for tid in spec},
        }
        write_atomic(d["reports"], f"{gid}.json", json.dumps(report).encode(), a.fsync)
        return outputs[tasks[-1]["id"]]


def conductor(a):
    for f in FOLDERS:
        os.makedirs(os.path.join(a.root, f), exist_ok=True)
    common = ["--root", a.root, "--fsync", "1" if a.fsync else "0",
              "--poll-min", str(a.poll_min), "--poll-max", str(a.poll_max),
              "--factor", str(a.factor), "--workers", str(a.workers)]
    procs = [subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker", f"w{i}"] + common,
                              stdin=subprocess.DEVNULL)
             for i in range(1, a.workers + 1)]
    try:
        t_start = time.monotonic()
        for i in range(1, a.workers + 1):
            p = os.path.join(a.root, "workers", f"w{i}.json")
            while not os.path.exists(p):
                if time.monotonic() - t_start > 30:
                    raise RuntimeError(f"worker w{i} did not start")
                time.sleep(0.005)
        # Every poller's backoff is at its cap after --idle; the random part
        # puts the submission at a random phase of their 1 s sleeps (the
        # workers started together, so their wake-ups are in step).
        time.sleep(a.idle + random.uniform(0, a.poll_max))
        c = Conductor(a)
        count = a.n if a.workload == "W1" else 1
        goals = []
        for k in range(1, count + 1):
            gid = f"{a.workload.lower()}-r{a.rep}-g{k:02d}"
            tasks = make_goal(a.workload, gid, a.n)
            t0 = time.monotonic()
            final = c.run_goal(gid, tasks)
            t1 = time.monotonic()
            payload = f"goal {gid}"
            if a.workload == "W1" and final != payload:
                raise RuntimeError(f"{gid}: final output {final!r}")
            if a.workload == "W2" and (len(final) != a.n or any(v != payload for v in final.values())):
                raise RuntimeError(f"{gid}: join output has {len(final)} entries")
            goals.append({"id": gid, "latency_s": t1 - t0, "tasks": len(tasks)})
            print(f"{gid}: {1e3 * (t1 - t0):.2f} ms", file=sys.stderr)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()
    json.dump({"goals": goals, "reference": {
        "variant": a.variant, "workers": a.workers, "poll_min_s": a.poll_min,
        "poll_max_s": a.poll_max, "factor": a.factor, "fsync": a.fsync,
        "submitter": "in-process (the conductor)", "python": sys.version.split()[0],
    }}, sys.stdout)
    sys.stdout.write("\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", required=True)
    ap.add_argument("--worker", help="run as the worker of this name")
    ap.add_argument("--workload", choices=["W1", "W2", "W4"], default="W1")
    ap.add_argument("--variant", choices=["all", "one"], default="all")
    ap.add_argument("--fsync", type=int, choices=[0, 1], default=1)
    ap.add_argument("--n", type=int, default=None,
                    help="W1: goals (30); W2: middle tasks (2000); W4: tasks (500)")
    ap.add_argument("--rep", type=int, default=1)
    ap.add_argument("--idle", type=float, default=2.0)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--poll-min", type=float, default=0.005)
    ap.add_argument("--poll-max", type=float, default=1.0)
    ap.add_argument("--factor", type=float, default=2.0)
    a = ap.parse_args()
    a.fsync = bool(a.fsync)
    a.root = os.path.abspath(a.root)
    if a.worker:
        worker(a)
        return 0
    if a.n is None:
        a.n = {"W1": 30, "W2": 2000, "W4": 500}[a.workload]
    conductor(a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
