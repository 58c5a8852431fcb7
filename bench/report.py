#!/usr/bin/env python3
"""report.py -- the table of a benchmark run (standard library only).

    report.py [--limits LIMITS.jsonl] [--markdown] [--append] BENCH.jsonl

Reads the JSON lines of wb-bench (workloads against workbusd and the
reference polling design) and of bench/limits/run.sh (the physical limits
measured in the same run), and prints, per workload: every repetition, the
median over repetitions, ratios to the physical limits and to the reference
design, and each target of the issue with pass/fail. --markdown prints the
same as Markdown tables (for docs/PERFORMANCE.md). --append adds one
"summary" JSON line per row to BENCH.jsonl.

Only the kept attempt of each run counts ("final": true; a run during which
other processes used more than 10 % of the CPUs was measured again).
"""

import argparse
import json
import math
import statistics
import sys

PUBLISHED = {
    # the figures for the designs compared (polling = a Python
    # conductor polling the bus with backoff)
    ("W1", "per_hop_ms"): {"polling-one": "10.6", "polling-all": "10.7", "celery": "2.2"},
    ("W1", "first_ms"): {"polling-one": "333-694", "polling-all": "333-373", "celery": "17-25"},
    ("W2", "tasks_per_s"): {"polling-one": "78", "polling-all": "1 288 (tmpfs 3 506)", "celery": "305"},
    ("W3", "idle"): {"polling": "14.8 ms / 100", "celery": "61 ms / 306"},
    ("W4", "tasks_per_s"): {"polling-one": "60", "polling-all": "657 (tmpfs 1 068)", "celery": "328"},
}
HWM_LIMIT_KB = 200e6 / 1024  # 200 MB, read as 200 * 10^6 bytes (the stricter reading: 195 313 kB)


def med(xs):
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return statistics.median(xs) if xs else float("nan")


def p90(xs):
    xs = sorted(xs)
    return xs[max(1, math.ceil(0.9 * len(xs))) - 1] if xs else float("nan")


def n0(x):
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:,.0f}".replace(",", " ")


def f2(x, d=2):
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{d}f}"


class Out:
    """Plain text or Markdown tables."""

    def __init__(self, markdown):
        self.md = markdown

    def title(self, t):
        print(f"\n### {t}\n" if self.md else f"\n{t}\n{'-' * len(t)}")

    def note(self, t):
        print(t if not self.md else t + "\n")

    def table(self, head, rows):
        if self.md:
            print("| " + " | ".join(head) + " |")
            print("|" + "|".join("---" for _ in head) + "|")
            for r in rows:
                print("| " + " | ".join(str(c) for c in r) + " |")
            print()
            return
        w = [max(len(str(x)) for x in [h] + [r[i] for r in rows]) for i, h in enumerate(head)]
        print("  ".join(str(h).ljust(w[i]) for i, h in enumerate(head)))
        for r in rows:
            print("  ".join(str(c).ljust(w[i]) for i, c in enumerate(r)))


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bench")
    ap.add_argument("--limits")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--append", action="store_true")
    a = ap.parse_args()
    rows = load(a.bench)
    limits = load(a.limits) if a.limits else []
    o = Out(a.markdown)
    summaries = []
    targets = []  # (target, value, wanted, pass, official)

    host = next((r for r in rows if r.get("run") == "host"), {})
    if host:
        o.note(f"Run {host.get('stamp')} at {host.get('date')}, commit {host.get('commit')}; "
               f"{host.get('cpus'):.0f} CPUs ({host.get('cpu_model')}), "
               f"{host.get('mem_kb', 0) / 1048576:.1f} GiB, kernel {host.get('kernel')}")
    runs = [r for r in rows if r.get("bench") == "wb-bench" and "workload" in r
            and r.get("final") and not r.get("profiled") and "error" not in r]
    errors = [r for r in rows if "error" in r]
    contended = [r for r in runs if r.get("contended")]
    retried = [r for r in rows if "workload" in r and r.get("final") is False]

    # ----- limits -----
    lim_pub = {}
    lim_spawn = {}
    for r in limits:
        if r.get("probe") == "summary" and r.get("of") == "publish":
            lim_pub[(r["fs"], r["state"], r["mode"])] = r
        if r.get("probe") == "summary" and r.get("of") == "spawn":
            lim_spawn[(r["method"], r["inflight"])] = r
    if limits:
        o.title("Physical limits, measured in the same run (bench/limits)")
        t = []
        for (fs, st, m), r in sorted(lim_pub.items()):
            t.append([f"L publish {fs} {st}", m, n0(r["ops_per_s_median"]) + " ops/s",
                      f2(r["lat_us_median_median"], 1) + " us",
                      " ".join(n0(x) for x in r["ops_per_s"])])
        for (m, k), r in sorted(lim_spawn.items()):
            t.append([f"spawn /bin/true x{k}", m, n0(r["tasks_per_s_median"]) + " /s",
                      f2(1e6 / r["tasks_per_s_median"], 0) + " us", " ".join(n0(x) for x in r["tasks_per_s"])])
        o.table(["probe", "mode", "median rate", "median latency", "per rep"], t)

    def lim(fs, mode, state="clean"):
        r = lim_pub.get((fs, state, mode))
        return r["ops_per_s_median"] if r else None

    def lim_lat_us(fs, mode, state="clean"):
        r = lim_pub.get((fs, state, mode))
        return r["lat_us_median_median"] if r else None

    groups = {}
    for r in runs:
        groups.setdefault((r["workload"], r["config"], r["system"]), []).append(r)

    def get(w, c, s):
        return groups.get((w, c, s), [])

    configs = []
    for r in runs:
        if r["config"] not in configs:
            configs.append(r["config"])
    systems = ["workbusd", "polling-all", "polling-one"]

    def paired_chain(rs):
        """W1 against the chain floor wb-bench measured just before each run."""
        pairs = [(r["summary"]["median_s"] * 1e3, r["chain_before"]["lat_ms_median"])
                 for r in rs if r.get("chain_before")]
        if not pairs:
            return None
        return {"ratios": [a / b for a, b in pairs], "ratio": med([a / b for a, b in pairs]),
                "per_hop_ms": med([b for _, b in pairs]) / 3,
                "per_rep_ms": [b for _, b in pairs],
                "flushes_per_goal": [r["chain_before"]["dev"]["flushes"] / r["chain_before"]["goals"]
                                     for r in rs if r.get("chain_before", {}).get("dev")]}

    # ----- W1 -----
    if any(k[0] == "W1" for k in groups):
        o.title("W1 chain: 30 goals of gather -> narrate -> build, one after another (ms)")
        t = []
        for c in configs:
            for s in systems:
                rs = get("W1", c, s)
                if not rs:
                    continue
                sm = [r["summary"] for r in rs]
                medm = med([x["median_s"] for x in sm]) * 1e3
                fs_ = rs[0]["fs"]
                floor = None
                if lim_lat_us(fs_, "none") is not None:
                    floor = (lim_lat_us(fs_, "none")
                             + lim_lat_us(fs_, "file+dir" if rs[0]["fsync"] else "none")) / 1e3
                chain = paired_chain(rs)
                row = [c, s, len(rs),
                       " / ".join(f2(x["median_s"] * 1e3) for x in sm),
                       f2(medm), f2(med([x["p90_s"] for x in sm]) * 1e3),
                       f2(max(x["max_s"] for x in sm) * 1e3),
                       f2(medm / 3, 3),
                       " / ".join(f2(x["first_s"] * 1e3, 1) for x in sm),
                       f2(med([x["warm_median_s"] for x in sm]) * 1e3),
                       f"{medm / 3 / floor:.1f}x {floor:.3f}" if floor else "-",
                       (f"{chain['ratio']:.2f}x {chain['per_hop_ms']:.3f} ("
                        + " / ".join(f"{x:.2f}" for x in chain["ratios"]) + ")") if chain else "-"]
                t.append(row)
                summaries.append({"summary": "W1", "config": c, "system": s, "reps": len(rs),
                                  "median_ms": medm, "p90_ms": med([x["p90_s"] for x in sm]) * 1e3,
                                  "max_ms": max(x["max_s"] for x in sm) * 1e3,
                                  "per_hop_ms": medm / 3,
                                  "first_ms": [x["first_s"] * 1e3 for x in sm],
                                  **({"chain_floor": chain} if chain else {})})
        o.table(["config", "system", "reps", "median per rep", "median", "p90", "max",
                 "per hop", "first after idle per rep", "warm median", "per hop / L floor (ms)",
                 "per hop / chain floor (ms) (per rep)"], t)
        o.note("median, p90 = medians over the repetitions of each repetition's median and p90 "
               "(nearest rank) of 30 latencies; max = the largest of all; per hop = median / 3; "
               "first after idle = goal 1 of each repetition (>= 2 s idle); warm median = median of "
               "goals 2-30; L floor = "
               "the median latency of one atomic publish without fsync (the task) plus one with "
               "fsync of file and folder (the result; without fsync when fsync is off), from L "
               "in the same run: the disk work of one hop alone. Chain floor = bench/limits/chain.c "
               "run on the same parent folder just before each workbusd repetition: the same 30 "
               "goals kept to the bus's contract (the goal, each result and the report fdatasynced "
               "and their folders fsynced, separate processes woken by inotify) with nothing else; "
               "per hop = its median / 3; the ratio = the median of the per-repetition ratios of "
               "workbusd's median to the floor's.")
        for c in configs:
            rs = get("W1", c, "workbusd")
            if not rs:
                continue
            sm = [r["summary"] for r in rs]
            hop = med([x["median_s"] for x in sm]) * 1e3 / 3
            chain = paired_chain(rs)
            measured = f"{hop:.3f} ms" + (f" (chain floor {chain['per_hop_ms']:.3f} ms, "
                                         f"{chain['ratio']:.2f}x)" if chain else "")
            targets.append((f"W1 per-hop median ({c})", measured, "<= 1.1 ms", hop <= 1.1, c == "disk"))
            worst = max(x["first_s"] - x["warm_median_s"] for x in sm) * 1e3
            targets.append((f"W1 first goal after 2 s idle ({c})",
                            "first - warm median: " + " / ".join(
                                f"{(x['first_s'] - x['warm_median_s']) * 1e3:+.2f}" for x in sm) + " ms",
                            "<= +5 ms", worst <= 5.0, c == "disk"))
        trace = [r for r in rows if r.get("workload") == "W1-trace" and r.get("final")]
        if trace:
            h = trace[-1]["hop_medians_ms"]
            o.note("Where a W1 goal's time goes (one extra traced repetition, goals 2-30, medians, ms; "
                   "events timestamped by the submitter's inotify on tasks/, claimed/, results/, so "
                   "each figure includes the submitter's own wake-up):")
            keys = ["ingest", "gather_pickup", "gather_work", "gather_release", "narrate_pickup",
                    "narrate_work", "narrate_release", "build_pickup", "build_work", "report", "total"]
            o.table(["step"] + keys, [["ms"] + [f2(h.get(k), 3) for k in keys]])

    def paired_raw(rs):
        """W4 against the raw probe wb-bench ran just before each run."""
        pairs = [(r["summary"]["tasks_per_s"], r["raw_x4_before"]["tasks_per_s"])
                 for r in rs if r.get("raw_x4_before")]
        if not pairs:
            return None
        ratios = [a / b for a, b in pairs]
        return {"ratios": ratios, "ratio": med(ratios), "raw": [b for _, b in pairs]}

    def paired_floor(rs):
        """W4 against the spawn floor (spawnbus.c) wb-bench ran just before
        each run, and that floor against the raw probe before it."""
        rows = [(r["summary"]["tasks_per_s"], r["spawn_floor_before"]["tasks_per_s"],
                 r["raw_x4_before"]["tasks_per_s"])
                for r in rs if r.get("spawn_floor_before") and r.get("raw_x4_before")]
        if not rows:
            return None
        return {"floor": [f for _, f, _ in rows],
                "floor_of_raw": [f / raw for _, f, raw in rows],
                "of_floor": [a / f for a, f, _ in rows]}

    # ----- W2 / W4 -----
    for w, title, nt in (("W2", "W2 fan-out: root -> 2000 -> join, one goal (2002 tasks)", 2002),
                         ("W4", "W4 spawn: 500 independent tasks, each runs /bin/true", 500)):
        if not any(k[0] == w for k in groups):
            continue
        o.title(title)
        t = []
        for c in configs:
            ref = get(w, c, "polling-all")
            ref_rate = med([r["summary"]["tasks_per_s"] for r in ref]) if ref else None
            for s in systems:
                rs = get(w, c, s)
                if not rs:
                    continue
                rates = [r["summary"]["tasks_per_s"] for r in rs]
                walls = [r["summary"]["wall_s"] for r in rs]
                rate = med(rates)
                fs = rs[0]["fs"]
                if w == "W2":
                    mode = "file+dir" if rs[0]["fsync"] else "none"
                    l = lim(fs, mode)
                    ratio_lim = f"{rate / l:.2f} of L {mode} ({n0(l)}/s)" if l else "-"
                else:
                    l4 = lim_spawn.get(("posix_spawn", 4))
                    ratio_lim = (f"{rate / l4['tasks_per_s_median']:.2f} of raw x4 ({n0(l4['tasks_per_s_median'])}/s)"
                                 if l4 else "-")
                    pr = paired_raw(rs)
                    if pr:
                        ratio_lim = (f"{pr['ratio']:.2f} of raw x4 just before (per rep: "
                                     + " / ".join(f"{x:.2f}" for x in pr["ratios"])
                                     + f"; raw {' / '.join(n0(x) for x in pr['raw'])}/s)"
                                     + (f"; {ratio_lim} in the limits run" if l4 else ""))
                ratio_ref = f"{rate / ref_rate:.2f}" if ref_rate and s != "polling-all" else "-"
                t.append([c, s, len(rs), " / ".join(n0(x) for x in rates), n0(rate),
                          f2(med(walls), 3), f2(p90(walls), 3), f2(max(walls), 3), ratio_lim, ratio_ref])
                summaries.append({"summary": w, "config": c, "system": s, "reps": len(rs),
                                  "tasks_per_s": rates, "tasks_per_s_median": rate,
                                  "wall_s_median": med(walls), "wall_s_max": max(walls)})
        o.table(["config", "system", "reps", "tasks/s per rep", "tasks/s", "wall median s",
                 "wall p90 s", "wall max s", "ratio to limit", "ratio to polling-all"], t)
        if w == "W2":
            o.note("L file+dir = one writer doing nothing but durable atomic publishes (256 B) in a "
                   "clean folder of the same file system; every W2 task needs at least one (its "
                   "result) plus a task publish, a claim and two archive renames.")
            for c in configs:
                rs, ref = get("W2", c, "workbusd"), get("W2", c, "polling-all")
                if not rs:
                    continue
                rate = med([r["summary"]["tasks_per_s"] for r in rs])
                ref_rate = med([r["summary"]["tasks_per_s"] for r in ref]) if ref else None
                fsync = rs[0]["fsync"]
                if fsync and rs[0]["fs"] != "tmpfs":
                    targets.append((f"W2 default durability ({c})", f"{rate:,.0f} tasks/s", ">= 915 (3x Celery)", rate >= 915, c == "disk"))
                if ref_rate:
                    k = 1 if fsync else 2
                    targets.append((f"W2 vs polling-all, same run ({c})",
                                    f"{rate:,.0f} vs {ref_rate:,.0f} = {rate / ref_rate:.2f}x",
                                    f">= {k}x", rate >= k * ref_rate, c in ("disk", "disk-nofsync")))
        else:
            for c in configs:
                rs = get("W4", c, "workbusd")
                l4 = lim_spawn.get(("posix_spawn", 4))
                pf = paired_floor(rs) if rs else None
                if pf:
                    o.note(f"W4 floor ({c}; spawnbus.c, the same goal kept to the bus's contract and "
                           "nothing else, just before each run, after the raw probe): "
                           + " / ".join(n0(x) for x in pf["floor"]) + " tasks/s = "
                           + " / ".join(f"{100 * x:.0f}" for x in pf["floor_of_raw"])
                           + f" % of raw x4 (median {100 * med(pf['floor_of_raw']):.0f} %); workbusd "
                           + " / ".join(f"{100 * x:.0f}" for x in pf["of_floor"])
                           + f" % of the floor (median {100 * med(pf['of_floor']):.0f} %).")
                pr = paired_raw(rs) if rs else None
                if pr:
                    targets.append((f"W4 vs raw 4-wide posix_spawn just before each run ({c})",
                                    "median of " + " / ".join(f"{100 * x:.0f}" for x in pr["ratios"])
                                    + f" = {100 * pr['ratio']:.0f} %", ">= 80 %",
                                    pr["ratio"] >= 0.8, c == "disk"))
                    c = f"{c}, against the limits run"
                if rs and l4:
                    rate = med([r["summary"]["tasks_per_s"] for r in rs])
                    lr = l4["tasks_per_s_median"]
                    targets.append((f"W4 vs raw 4-wide posix_spawn ({c})",
                                    f"{rate:,.0f} vs {lr:,.0f} = {100 * rate / lr:.0f} %", ">= 80 %",
                                    rate >= 0.8 * lr, c == "disk"))

    # ----- W3 -----
    w3 = [r for r in runs if r["workload"] == "W3"]
    if w3:
        o.title("W3 idle: daemon + 4 resident workers, 20 s window after 5 s settle")
        t = []
        for r in w3:
            s = r["summary"]
            per = ", ".join(f"{p['comm']} {p['wakeups']}" for p in r.get("processes", []))
            t.append([r["config"], r["rep"], f2(s["sched_cpu_s"] * 1e3, 3), f2(s["cpu_s"] * 1e3, 0),
                      s["wakeups"], s["processes"], s["threads"], per])
        cpu = med([r["summary"]["sched_cpu_s"] for r in w3]) * 1e3
        wk = med([r["summary"]["wakeups"] for r in w3])
        t.append(["median", "", f2(cpu, 3), f2(med([r["summary"]["cpu_s"] for r in w3]) * 1e3, 0), wk, "", "", ""])
        o.table(["config", "rep", "CPU ms (schedstat)", "CPU ms (ticks)", "wakeups", "processes",
                 "threads", "wakeups per process"], t)
        targets.append(("W3 wakeups in 20 s (daemon + 4 workers)", f"{wk:g}", "< 20", wk < 20, True))
        targets.append(("W3 CPU in 20 s", f"{cpu:.3f} ms", "< 5 ms", cpu < 5, True))
    w3l = [r for r in runs if r["workload"] == "W3-long"]
    for r in w3l:
        s = r["summary"]
        k = 20.0 / s["window_s"]
        o.note(f"W3 over a longer window ({s['window_s']:.0f} s, so that every worker's heartbeat "
               f"(every 30 s) falls in it): {s['wakeups']} wakeups, {s['sched_cpu_s'] * 1e3:.2f} ms CPU "
               f"= {s['wakeups'] * k:.1f} wakeups and {s['sched_cpu_s'] * 1e3 * k:.2f} ms per 20 s; per process: "
               + ", ".join(f"{p['comm']} {p['wakeups']}" for p in r.get("processes", [])))
        targets.append((f"W3 wakeups per 20 s, averaged over {s['window_s']:.0f} s",
                        f"{s['wakeups'] * k:.1f}", "< 20", s["wakeups"] * k < 20, True))
        targets.append((f"W3 CPU per 20 s, averaged over {s['window_s']:.0f} s",
                        f"{s['sched_cpu_s'] * 1e3 * k:.2f} ms", "< 5 ms", s["sched_cpu_s"] * 1e3 * k < 5, True))

    # ----- scale -----
    sc = [r for r in rows if r.get("workload") == "scale" and "error" not in r]
    if sc:
        r = sc[-1]
        o.title(f"Scale: {r['tasks']:,} tasks".replace(",", " "))
        s = r["submit"]
        t = [["goal of %s tasks submitted (%.1f MB)" % (n0(r["tasks"]), s["goal_bytes"] / 1e6),
              f"accepted and {n0(s['tasks_published'])} published in {s['accepted_and_published_s']:.1f} s",
              f"VmHWM {n0(s['vmhwm_kb'])} kB (empty daemon {n0(s['vmhwm_empty_kb'])} kB)"]]
        for x in r["restarts"]:
            t.append([f"restart, {x['cache']} page cache ({n0(x['results_in_results_dir'])} results in results/)",
                      f"READY=1 after {x['ready_s']:.3f} s",
                      f"VmHWM {n0(x['vmhwm_kb'])} kB; CPU {x['cpu_s']:.2f} s"])
        o.table(["what", "time", "memory"], t)
        o.note(f"Bus: {r['shape']}; files before the restart: {r['files_before_restart']}.")
        for x in r["restarts"]:
            # the cold restart (page cache dropped) is shown for information
            targets.append((f"Scale: start to READY=1 with the big bus, {x['cache']} page cache",
                            f"{x['ready_s']:.3f} s", "< 2 s", x["ready_s"] < 2, x["cache"] == "warm"))
        hwm = s["vmhwm_kb"]
        targets.append((f"Scale: VmHWM holding a {r['tasks']:,}-task goal (submitted)",
                        f"{hwm * 1024 / 1e6:.0f} MB ({hwm:,.0f} kB)", "< 200 MB", hwm < HWM_LIMIT_KB, True))
        for x in r["restarts"]:
            targets.append((f"Scale: VmHWM after a restart, {x['cache']} page cache",
                            f"{x['vmhwm_kb'] * 1024 / 1e6:.0f} MB ({x['vmhwm_kb']:,.0f} kB)", "< 200 MB",
                            x["vmhwm_kb"] < HWM_LIMIT_KB, True))
        summaries.append({"summary": "scale", "ready_s": [x["ready_s"] for x in r["restarts"]],
                          "vmhwm_kb": [hwm] + [x["vmhwm_kb"] for x in r["restarts"]]})

    # ----- reference vs published -----
    if any(k[2].startswith("polling") for k in groups):
        o.title("The reference polling design here vs the published figures")
        t = []
        for c in configs:
            for s in ("polling-one", "polling-all"):
                w1 = get("W1", c, s)
                if w1:
                    sm = [r["summary"] for r in w1]
                    t.append([c, s, "W1 per hop ms", f2(med([x["median_s"] for x in sm]) * 1e3 / 3),
                              PUBLISHED[("W1", "per_hop_ms")][s]])
                    t.append([c, s, "W1 first after idle ms",
                              " / ".join(f2(x["first_s"] * 1e3, 0) for x in sm),
                              PUBLISHED[("W1", "first_ms")][s]])
                for w in ("W2", "W4"):
                    rs = get(w, c, s)
                    if rs:
                        t.append([c, s, f"{w} tasks/s", n0(med([r["summary"]["tasks_per_s"] for r in rs])),
                                  PUBLISHED[(w, "tasks_per_s")][s]])
        o.table(["config", "design", "figure", "measured here", "published"], t)

    # ----- targets -----
    if targets:
        o.title("Targets")
        o.table(["target", "measured", "wanted", "result"],
                [[a_, b_, c_, ("PASS" if ok else "FAIL") if off else ("(pass)" if ok else "(fail)")]
                 for a_, b_, c_, ok, off in targets])
        o.note("The targets are set for the default configuration (disk = ext4 under /var/tmp, fsync "
               "on; fsync off for the 2x target); results in parentheses are the same test in "
               "another configuration (or, for the restart, after dropping the page cache), for "
               "information. 200 MB is read as 200 * 10^6 bytes.")
        for a_, b_, c_, ok, off in targets:
            summaries.append({"summary": "target", "target": a_, "measured": b_, "wanted": c_,
                              "pass": ok, "official": off})
    if contended or retried or errors:
        o.note(f"{len(retried)} contended attempt(s) were re-run; {len(contended)} kept run(s) are "
               f"still contended (others used > 10 % of the CPUs); {len(errors)} run(s) failed.")
        for r in contended:
            o.note(f"  contended: {r['workload']} {r['config']} {r['system']} rep {r['rep']}: "
                   f"others {r['contention']['others_cpu_pct']} %")
        for r in errors:
            o.note(f"  failed: {r.get('run')}: {r['error']}")
    if a.append:
        with open(a.bench, "a") as f:
            for s in summaries:
                f.write(json.dumps(s) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
