#!/usr/bin/env python3
"""summarize.py -- table of the JSON lines written by run.sh (standard library only).

    summarize.py [--append] FILE.jsonl

Groups the "publish" lines by (dir, state, mode) and the "spawn" lines by
(method, inflight); prints every repetition and the median; with --append,
adds one "summary" JSON line per group to FILE. A "decay" series (publish
lines with "burst") is printed as a time series.
"""

import argparse
import json
import os
import statistics
import sys


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from quiet import contention_pct as contention  # noqa: E402

WAIT_WARN = 10.0


def fmt_rate(x):
    return f"{x:,.0f}".replace(",", " ")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("file")
    ap.add_argument("--append", action="store_true")
    a = ap.parse_args()
    with open(a.file) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    # run.sh re-measures contended runs: only the last attempt counts
    retried = sum(1 for r in rows if "attempt" in r and not r.get("final"))
    rows = [r for r in rows if "attempt" not in r or r.get("final")]

    summaries = []
    pub = {}
    decay = []
    for r in rows:
        if r.get("probe") != "publish":
            continue
        if "burst" in r:
            decay.append(r)
            continue
        pub.setdefault((r["dir"], r["fs"], r["state"], r["mode"]), []).append(r)
    if pub:
        print("L: atomic publish (open, write 256 B, [fsync file], close, rename, [fsync dir])")
        print(f"{'dir':<10} {'fs':<6} {'state':<8} {'mode':<9} {'ops/s per rep':<28} "
              f"{'ops/s':>8} {'med us':>8} {'p90 us':>8} {'wait%':>6}")
        for (d, fs, st, m), rs in pub.items():
            rates = [r["ops_per_s"] for r in rs]
            med = statistics.median(r["lat_us_median"] for r in rs)
            p90 = statistics.median(r["lat_us_p90"] for r in rs)
            wait = max(contention(r) for r in rs)
            print(f"{d:<10} {fs:<6} {st:<8} {m:<9} "
                  f"{' '.join(fmt_rate(x) for x in rates):<28} "
                  f"{fmt_rate(statistics.median(rates)):>8} {med:>8.1f} {p90:>8.1f} "
                  f"{wait:>5.1f}{'!' if wait > WAIT_WARN else ' '}")
            summaries.append({"probe": "summary", "of": "publish", "dir": d, "fs": fs,
                              "state": st, "mode": m, "reps": len(rs),
                              "ops_per_s": rates, "ops_per_s_median": statistics.median(rates),
                              "lat_us_median_median": med, "lat_us_p90_median": p90,
                              "cpu_wait_pct_max": wait})
        print(f"wait% = the largest share of a run's time that the program spent runnable but "
              f"waiting for a CPU;\n! = over {WAIT_WARN:.0f}%: other processes competed for the "
              f"CPUs, and ops that sleep (fsync) paid for it.")
        print()

    spawn = {}
    for r in rows:
        if r.get("probe") == "spawn":
            spawn.setdefault((r["method"], r["inflight"], r["n"]), []).append(r)
    if spawn:
        print("W4 raw limit: spawn /bin/true and wait")
        print(f"{'method':<12} {'in flight':>9} {'n':>5} {'tasks/s per rep':<24} "
              f"{'tasks/s':>8} {'us/task':>8} {'failed':>6} {'wait%':>6}")
        for (m, k, n), rs in spawn.items():
            rates = [r["tasks_per_s"] for r in rs]
            medr = statistics.median(rates)
            wait = max(contention(r) for r in rs)
            print(f"{m:<12} {k:>9} {n:>5} {' '.join(fmt_rate(x) for x in rates):<24} "
                  f"{fmt_rate(medr):>8} {1e6 / medr:>8.0f} {sum(r['failed'] for r in rs):>6} "
                  f"{wait:>5.1f}{'!' if wait > WAIT_WARN else ' '}")
            summaries.append({"probe": "summary", "of": "spawn", "method": m, "inflight": k,
                              "n": n, "reps": len(rs), "tasks_per_s": rates,
                              "tasks_per_s_median": medr})
        print("wait% for 1 in flight: as above; for more: % of the machine's CPU time used by "
              "other processes")
        print()

    if decay:
        print(f"Decay after churn ({decay[0]['dir']}, {decay[0].get('churn', '?')} files "
              f"created+unlinked in {decay[0].get('churn_s', 0):.2f} s, then "
              f"{decay[0]['max_ops']} publishes every few seconds)")
        print(f"{'t (s)':>6} {'ops/s':>8} {'med us':>8} {'p90 us':>8} {'wait%':>6}")
        for r in decay:
            print(f"{r['since_start_s']:>6.0f} {fmt_rate(r['ops_per_s']):>8} "
                  f"{r['lat_us_median']:>8.1f} {r['lat_us_p90']:>8.1f} {contention(r):>6.1f}")
        print()

    if retried:
        print(f"({retried} contended attempts were re-measured; they are in the file, "
              f"without \"final\")")
    for r in rows:
        if r.get("probe") == "test_proctree":
            print(f"test_proctree: {'ok' if r['ok'] else 'FAILED'}")

    if a.append and summaries:
        with open(a.file, "a") as f:
            for s in summaries:
                f.write(json.dumps(s) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
