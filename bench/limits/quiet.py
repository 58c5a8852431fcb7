#!/usr/bin/env python3
"""quiet.py -- helpers for run.sh on a shared machine (standard library only).

    quiet.py wait [--busy F] [--max S]   wait until the other processes use less
                                          than F of the CPUs (default 0.10),
                                          measured over 0.5 s; give up after S
                                          seconds (default 30); prints
                                          '<waited_s> <busy_fraction>'
    quiet.py contended [--pct P] LINE    exit 1 if the JSON LINE (publish or
                                          spawn) was contended: it spent more
                                          than P % (default 10) of its time
                                          waiting for a CPU -- or, for spawn
                                          with several children in flight
                                          (whose waits are mostly its own
                                          children's doing), others used more
                                          than P % of the machine's CPU time

A probe that sleeps in the kernel (fsync, waitpid) pays a scheduler delay on
every wake-up when other processes keep the CPUs busy: on this 2-CPU machine a
concurrent `cargo build` turned 0.2 ms fsyncs into 4 ms ones (one 250 Hz tick).
"""

import json
import sys
import time


def cpu_times():
    with open("/proc/stat") as f:
        vals = [int(x) for x in f.readline().split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)  # idle + iowait
    return sum(vals[:8]), idle


def busy_fraction(period=0.5):
    t0, i0 = cpu_times()
    time.sleep(period)
    t1, i1 = cpu_times()
    return 1 - (i1 - i0) / (t1 - t0) if t1 > t0 else 0.0


def main(argv):
    if len(argv) < 1 or argv[0] not in ("wait", "contended"):
        print(__doc__, file=sys.stderr)
        return 2
    opts = {"--busy": 0.10, "--max": 30.0, "--pct": 10.0}
    args = []
    it = iter(argv[1:])
    for a in it:
        if a in opts:
            opts[a] = float(next(it))
        else:
            args.append(a)
    if argv[0] == "wait":
        start = time.monotonic()
        while True:
            b = busy_fraction()
            waited = time.monotonic() - start
            if b < opts["--busy"] or waited >= opts["--max"]:
                print(f"{waited:.1f} {b:.3f}")
                return 0
            time.sleep(1.0)
    return 1 if contention_pct(json.loads(args[0])) > opts["--pct"] else 0


def contention_pct(r):
    """How contended a publish or spawn run was, in % (see the doc above)."""
    if r.get("probe") == "spawn" and r.get("inflight", 1) > 1:
        return r.get("others_cpu_pct", 0.0)
    secs = r.get("seconds") or r.get("wall_s") or 0
    return 100 * r.get("run_delay_ms", 0) / 1000 / secs if secs else 0.0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
