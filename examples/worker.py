#!/usr/bin/env python3
"""A workbus bus worker in plain Python (standard library only).

It follows docs/PROTOCOL.md: advertise and beat in workers/<name>.json, claim
tasks from tasks/ by renaming them into claimed/, write results atomically
into results/. Run it two ways:

  resident, started by workbusd (fleet.toml: mode = "resident"): it reads
  WORKBUS_ROOT, WORKBUS_WORKER, WORKBUS_CAPABILITIES, WORKBUS_CONCURRENCY and
  WORKBUS_HEARTBEAT_INTERVAL from its environment;

  external, on any host that shares the bus:
    worker.py --root /var/lib/workbus --name box2 --capabilities echo,llm

The work itself is an echo: the output of a task with one dependency is that
dependency's output, with several it is a map of their outputs, and without
any it is the task's input. `input.sleep` (seconds) makes it take that long.
Replace `work()` with something useful.

It watches tasks/ with inotify (through ctypes) and falls back to polling
where inotify is not available or blind (NFS: pass --poll).
"""
import argparse
import concurrent.futures
import ctypes
import ctypes.util
import datetime
import errno
import json
import os
import select
import signal
import socket
import sys
import threading
import time

SCHEMA_VERSION = 1


def now_rfc3339():
    t = datetime.datetime.now(datetime.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def write_atomic(folder, name, data, durable=True):
    """Write folder/name so that nobody ever sees half of it (PROTOCOL.md)."""
    tmp = os.path.join(folder, f".{name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o660)
    try:
        os.write(fd, data)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, os.path.join(folder, name))
    if durable:
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def work(task):
    """The job: echo (see the module docstring)."""
    inp = task.get("input")
    if isinstance(inp, dict) and "sleep" in inp:
        time.sleep(float(inp["sleep"]))
    deps = {k: v["output"] for k, v in (task.get("deps") or {}).items()}
    if len(deps) == 1:
        return next(iter(deps.values()))
    if deps:
        return deps
    return inp


class Inotify:
    """inotify on one folder, through libc (no third-party module)."""

    IN_MOVED_TO = 0x80
    IN_CLOSE_WRITE = 0x08
    IN_CREATE = 0x100
    IN_Q_OVERFLOW = 0x4000

    def __init__(self, folder):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        self.fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        mask = self.IN_MOVED_TO | self.IN_CLOSE_WRITE | self.IN_CREATE
        if libc.inotify_add_watch(self.fd, folder.encode(), mask) < 0:
            raise OSError(ctypes.get_errno(), "inotify_add_watch")

    def drain(self):
        try:
            while os.read(self.fd, 65536):
                pass
        except BlockingIOError:
            pass


class Worker:
    def __init__(self, root, name, capabilities, concurrency, heartbeat, poll):
        self.root = root
        self.name = name
        self.capabilities = set(capabilities)
        self.concurrency = max(1, concurrency)
        self.heartbeat = heartbeat
        self.started_at = now_rfc3339()
        self.stopping = False
        self.running = set()
        self.unsuitable = set()  # task files whose needs we do not meet
        self.pool = concurrent.futures.ThreadPoolExecutor(self.concurrency)
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        self.inotify = None
        if not poll:
            try:
                self.inotify = Inotify(self.dir("tasks"))
            except OSError as e:
                log(f"inotify unavailable ({e}); polling")

    def dir(self, name):
        return os.path.join(self.root, name)

    def beat(self, stopping=False):
        ad = {
            "schema_version": SCHEMA_VERSION,
            "name": self.name,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "capabilities": sorted(self.capabilities),
            "concurrency": self.concurrency,
            "running": len(self.running),
            "last_seen": now_rfc3339(),
            "started_at": self.started_at,
        }
        if stopping:
            ad["stopping"] = True
        write_atomic(self.dir("workers"), f"{self.name}.json", json.dumps(ad).encode(), durable=False)

    def candidates(self):
        """Claimable task files, best first (priority, then age)."""
        try:
            names = os.listdir(self.dir("tasks"))
        except FileNotFoundError:
            return []
        present = set(names)
        self.unsuitable &= present
        found = []
        for n in names:
            if n.startswith(".") or not n.endswith(".json") or n in self.unsuitable:
                continue
            try:
                with open(os.path.join(self.dir("tasks"), n), "rb") as f:
                    rec = json.load(f)
            except (OSError, ValueError):
                continue  # claimed by someone else meanwhile, or not ours to judge
            if not set(rec.get("needs", [])) <= self.capabilities:
                self.unsuitable.add(n)
                continue
            found.append((-rec.get("priority", 0), rec.get("published_at", ""), n))
        found.sort()
        return [n for _, _, n in found]

    def claim(self, name):
        stem = name[: -len(".json")]
        dst = os.path.join(self.dir("claimed"), f"{stem}.{self.name}.json")
        try:
            os.rename(os.path.join(self.dir("tasks"), name), dst)
        except OSError as e:
            if e.errno == errno.ENOENT:
                return None  # another worker won
            raise
        with open(dst, "rb") as f:
            return json.load(f)

    def run_task(self, task):
        key = f"{task['goal']}.{task['task']}.{task['attempt']}"
        result = {
            "schema_version": SCHEMA_VERSION,
            "goal": task["goal"],
            "task": task["task"],
            "attempt": task["attempt"],
            "worker": self.name,
            "started_at": now_rfc3339(),
        }
        try:
            result["output"] = work(task)
            result["status"] = "ok"
        except Exception as e:  # the task failed, the worker did not
            result["status"] = "error"
            result["error"] = f"{type(e).__name__}: {e}"
        result["finished_at"] = now_rfc3339()
        write_atomic(self.dir("results"), f"{key}.json", json.dumps(result).encode())
        return key

    def done(self, fut, key):
        self.running.discard(key)
        try:
            fut.result()
        except Exception as e:
            log(f"{key}: could not write the result: {e}")
        os.write(self.wake_w, b"x")

    def fill(self):
        if self.stopping or len(self.running) >= self.concurrency:
            return
        for name in self.candidates():
            if len(self.running) >= self.concurrency:
                break
            task = self.claim(name)
            if task is None:
                continue
            key = name[: -len(".json")]
            log(f"claimed {key}")
            self.running.add(key)
            fut = self.pool.submit(self.run_task, task)
            fut.add_done_callback(lambda f, k=key: self.done(f, k))

    def serve(self, poll_min=0.05, poll_max=2.0):
        self.beat()
        next_beat = time.monotonic() + self.heartbeat
        poll = poll_min
        while not self.stopping:
            self.fill()
            timeout = max(0.0, next_beat - time.monotonic())
            if self.inotify is None:
                timeout = min(timeout, poll)
            fds = [self.wake_r] + ([self.inotify.fd] if self.inotify else [])
            try:
                ready, _, _ = select.select(fds, [], [], timeout)
            except InterruptedError:
                ready = []
            if self.inotify and self.inotify.fd in ready:
                self.inotify.drain()
            if self.wake_r in ready:
                try:
                    os.read(self.wake_r, 4096)
                except BlockingIOError:
                    pass
            poll = poll_min if ready else min(poll * 2, poll_max)
            if time.monotonic() >= next_beat:
                self.beat()
                next_beat = time.monotonic() + self.heartbeat
        log(f"stopping: finishing {len(self.running)} task(s)")
        self.pool.shutdown(wait=True)
        self.beat(stopping=True)


def log(msg):
    print(f"worker.py: {msg}", file=sys.stderr, flush=True)


def main():
    env = os.environ
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", default=env.get("WORKBUS_ROOT", "/var/lib/workbus"))
    p.add_argument("--name", default=env.get("WORKBUS_WORKER", f"{socket.gethostname()}-{os.getpid()}"))
    p.add_argument("--capabilities", default=env.get("WORKBUS_CAPABILITIES", "echo"))
    p.add_argument("--concurrency", type=int, default=int(env.get("WORKBUS_CONCURRENCY", "1")))
    p.add_argument("--heartbeat", type=float, default=float(env.get("WORKBUS_HEARTBEAT_INTERVAL", "30")))
    p.add_argument("--poll", action="store_true", help="poll tasks/ instead of inotify (NFS)")
    a = p.parse_args()
    caps = [c for c in a.capabilities.split(",") if c]
    w = Worker(a.root, a.name, caps, a.concurrency, a.heartbeat, a.poll)

    def stop(signum, frame):
        w.stopping = True
        os.write(w.wake_w, b"x")

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log(f"{a.name} serving {','.join(caps)} on {a.root} (concurrency {w.concurrency})")
    w.serve()


if __name__ == "__main__":
    main()
