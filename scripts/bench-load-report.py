#!/usr/bin/env python3
"""Summarises scripts/bench-load's CSVs into README.md (min / median / max over the repeats, ratios
of medians batched / serial at the same session count, p99 against a lone session's), or with
--plot draws load.png (offloaded tokens/s and p99 against sessions, both schedulers). Usage:
  bench-load-report.py OUT_DIR [--plot]"""
import csv
import json
import os
import statistics
import sys

out = sys.argv[1]
rows = list(csv.DictReader(open(os.path.join(out, "results.csv"))))
catchup_csv = os.path.join(out, "catchup.csv")
catchup = list(csv.DictReader(open(catchup_csv))) if os.path.exists(catchup_csv) else []
memory = list(csv.DictReader(open(os.path.join(out, "memory.csv"))))
prov = json.load(open(os.path.join(out, "provenance.json")))
sessions = sorted({int(r["sessions"]) for r in rows})


def vals(mode, n, field, of=None):
    """A field of every run of `mode` at n sessions, in this run's rows or in `of`."""
    return [float(r[field]) for r in (rows if of is None else of) if r["mode"] == mode and int(r["sessions"]) == n]


def repeated_runs():
    """Where a repeat ran some session counts more than once (short runs), says so."""
    first = [r for r in rows if r["mode"] == rows[0]["mode"] and r["repeat"] == rows[0]["repeat"]]
    counts = {n: sum(1 for r in first if int(r["sessions"]) == n) for n in sessions}
    many = [f"{counts[n]} runs of {n}" for n in sessions if counts[n] > 1]
    return f" and the runs within one ({', '.join(many)} each repeat: short runs)" if many else ""


def med(v):
    return statistics.median(v) if v else float("nan")


if "--plot" in sys.argv:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for mode in ("batched", "serial"):
        for ax, field in ((a, "tokens_per_s"), (b, "p99_ms")):
            m = [med(vals(mode, n, field)) for n in sessions]
            lo = [x - min(vals(mode, n, field)) for x, n in zip(m, sessions)]
            hi = [max(vals(mode, n, field)) - x for x, n in zip(m, sessions)]
            ax.errorbar(sessions, m, yerr=[lo, hi], marker="o", capsize=3,
                        label="batched steps" if mode == "batched" else "one job at a time")
    a.set(xscale="log", xlabel="concurrent edge sessions", ylabel="offloaded tokens/s (median, min-max)",
          title="cloud throughput")
    b.set(xscale="log", yscale="log", xlabel="concurrent edge sessions", ylabel="request round trip p99, ms",
          title="cloud latency")
    for ax in (a, b):
        ax.set_xticks(sessions)
        ax.set_xticklabels([str(n) for n in sessions])
        ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "load.png"), dpi=110)
    sys.exit(0)

lone_p99 = med(vals("batched", 1, "p99_ms"))
has_split = "next_p99_ms" in rows[0]  # runs before the first/later split lack it
lone_next_p99 = med(vals("batched", 1, "next_p99_ms")) if has_split else float("nan")
md = ["# One cloud, many edges: batched steps against one job at a time", "",
      f"One run of `scripts/bench-load` at commit {prov['commit']}, {prov['date']}, on {prov['cpu']} (2 cores), "
      f"{prov['repeats']} repeats, the two clouds interleaved. Each session replays {prov['positions']} positions of "
      "data/brown/test.txt as an edge at the model's θ would (uploads of its split-layer states, an infer request "
      "for each position its exits leave to the cloud, waiting for the answer) against a cloud node on loopback "
      f"({os.path.basename(prov.get('model', 'models/ce-brown-8l'))}, ce.model.weights = {prov.get('weights', 'auto')}); "
      "no edge compute runs while timed. `batched`: ce.batch.max-sessions = 32; "
      "`serial`: ce.batch.max-sessions = 1, the same scheduler one context at a time (what the cloud did before). "
      "Tokens/s = answered requests / wall time; latency = one request's round trip (upload + infer sent, reply "
      "received). min / median / max over the repeats" + repeated_runs() + ".", ""]
if has_split:
    md += ["All sessions start together, and each one's first request carries its prompt "
           "(the cloud catches up sessions × prompt positions at once, chunked), as a serving benchmark's time to "
           "first token; `later` are the requests after it, one or a few new positions each (its inter-token "
           "latency). p99 over all requests mixes the two: at 32 sessions the first requests are 0.9% of them.", ""]
head = ("| sessions | batched tokens/s | serial tokens/s | batched / serial | batched p99 ms | serial p99 ms | "
        "batched p99 / lone p99 |")
if has_split:
    head += " batched first request p50 ms | batched later p99 ms | later p99 / lone later p99 |"
md += [head, "|" + " ---: |" * (head.count("|") - 1)]
for n in sessions:
    bt, st = vals("batched", n, "tokens_per_s"), vals("serial", n, "tokens_per_s")
    bp, sp = vals("batched", n, "p99_ms"), vals("serial", n, "p99_ms")
    line = (f"| {n} | {med(bt):.0f} ({min(bt):.0f}–{max(bt):.0f}) | {med(st):.0f} ({min(st):.0f}–{max(st):.0f}) | "
            f"{med(bt) / med(st):.2f} | {med(bp):.2f} ({min(bp):.2f}–{max(bp):.2f}) | "
            f"{med(sp):.2f} ({min(sp):.2f}–{max(sp):.2f}) | {med(bp) / lone_p99:.2f} |")
    if has_split:
        bf, bn = vals("batched", n, "first_p50_ms"), vals("batched", n, "next_p99_ms")
        line += (f" {med(bf):.1f} | {med(bn):.2f} ({min(bn):.2f}–{max(bn):.2f}) | {med(bn) / lone_next_p99:.2f} |")
    md.append(line)
if "math_step_ms" in prov:
    step, row = prov["math_step_ms"], prov["math_row_ms_at_32"]
    md += ["", f"The cloud's layers on their own in the same run (ce-bench-decode, both cores, "
           f"{prov.get('weights', 'auto')}): {step:.2f} ms for one offloaded token, {row:.3f} ms a "
           + ("row of a step of 32 sessions, one new position each (its head and token choice included)"
              if prov.get("math_row_of") == "batch" else "position when 32 go through together (a catch-up of 32)")
           + f", so a batch of 32 gains at most **{step / row:.1f}×** on the math alone; and with 32 "
           f"sessions each waiting for its answer, a request waits at least 32 × {row:.3f} = {32 * row:.1f} ms "
           "on average (Little's law: the cloud computes a row of every session between two requests of one)."]
md += ["", f"Offloaded positions per session: {rows[0]['offloaded_per_session']} of {prov['positions']} "
       f"(θ {float(rows[0]['threshold']):.2f}).", ""]
if catchup:
    long = max(int(r["catch_up"]) for r in catchup)
    md += ["## A long catch-up beside short requests (batched cloud)", "",
           f"8 sessions as above, alone and beside a ninth that uploads {long:,} positions and asks for the last one "
           "(ce.batch.catch-up-chunk = 64: it advances at most 64 positions a step, and while the others are active no "
           "more than they compute together, 4 at least, also in the gaps between their requests).", "",
           "| catch-up beside | others' p50 ms | others' p99 ms | others' max ms | the catch-up's request ms |",
           "| ---: | ---: | ---: | ---: | ---: |"]
    for c in (0, long):
        v = [r for r in catchup if int(r["catch_up"]) == c]
        f = lambda k: med([float(r[k]) for r in v])
        md.append(f"| {c or 'none'} | {f('p50_ms'):.2f} | {f('p99_ms'):.2f} | {f('max_ms'):.2f} | "
                  f"{f('catch_up_ms') if c else float('nan'):.1f} |")
    md += [""]
md += [f"Lone session p99 (batched, 1 session): {lone_p99:.2f} ms" +
       (f"; its later requests' p99: {lone_next_p99:.2f} ms." if has_split else "."), "", "## Memory after the runs", "",
       "| cloud | repeat | contexts live | context bytes | contexts ended |", "| --- | ---: | ---: | ---: | ---: |"]
for m in memory:
    md.append(f"| {m['mode']} | {m['repeat']} | {m['live']} | {m['bytes']} | {m['evicted']} |")
md.append("")
if os.path.exists(os.path.join(out, "load.png")):
    md += ["![throughput and p99 against sessions](load.png)", ""]


def headline(sub):
    """A sibling run's model, weights, commit and its 32-session figures (or None)."""
    try:
        p = json.load(open(os.path.join(sub, "provenance.json")))
        r = list(csv.DictReader(open(os.path.join(sub, "results.csv"))))
    except (OSError, ValueError):
        return None
    v = lambda mode, n, field: med(vals(mode, n, field, of=r))
    if not any(int(x["sessions"]) == 32 for x in r):
        return None
    ratio = v("batched", 32, "tokens_per_s") / v("serial", 32, "tokens_per_s")
    p99 = v("batched", 32, "p99_ms") / v("batched", 1, "p99_ms")
    return (f"{os.path.basename(p.get('model', '?'))}, weights {p.get('weights', 'auto')}, at {p.get('commit', '?')}: "
            f"{ratio:.2f}x one job at a time at 32 sessions, p99 {p99:.2f}x a lone session's")


# Runs of other models and precisions kept in subdirectories (scripts/bench-load --model/--weights
# --out-dir DIR/NAME): one line each, so that this page shows where batching has room.
others = [(d, headline(os.path.join(out, d))) for d in sorted(os.listdir(out))
          if os.path.isdir(os.path.join(out, d))]
others = [(d, h) for d, h in others if h]
if others:
    md += ["## Other models and precisions", ""] + [f"- [{d}/]({d}/README.md): {h}" for d, h in others] + [""]
open(os.path.join(out, "README.md"), "w").write("\n".join(md))
