#!/usr/bin/env python3
"""Writes the speculation page (issue 19) from a ce-bench run of standalone, collaborative and
collaborative-speculative on the emulated links:

    build/tools/ce-bench --links loopback,lan,wan,mobile --prompts 100 --tokens 100 \\
        --modes standalone,collaborative,collaborative-speculative,collaborative-budget \\
        --sweep-link none --eval-tokens 2000 --out-dir docs/bench/speculation
    # optional, for the cost model without the request window (BENCH_DIR/unwindowed):
    build/tools/ce-bench --links wan,mobile --prompts 20 --tokens 100 \\
        --modes standalone,collaborative,collaborative-speculative --sweep-link none --eval-tokens 500 \\
        --max-requests 1024 --min-path-confidence 0 --out-dir docs/bench/speculation/unwindowed
    python3 scripts/bench-speculation-report.py [--bench-dir docs/bench/speculation]

Per link: total time of each mode and the ratio speculative / collaborative (sums over the run, and
min / median / max over the prompts, each prompt's modes measured back to back), blocking round trips,
wasted upload bytes against the confirmed ones, and the cost model
    T_spec ≈ T_standalone + misses × (RTT + t_cloud)
(RTT = twice the link's one-way delay, t_cloud = the cloud's compute per request in the speculative
run) against the measured time. Output: BENCH_DIR/README.md (and stdout). Exit 1 on a missing input.
"""
import argparse
import csv
import os
import re
import statistics
import sys

from bench_common import machine, provenance

TARGETS = {"wan": 0.5, "mobile": 0.45, "loopback": 1.05, "lan": 1.05}


def read_csv(path):
    if not os.path.exists(path):
        sys.exit(f"bench-speculation-report: {path} is missing (run ce-bench first)")
    with open(path) as f:
        return list(csv.DictReader(f))


def one_way_delay_ms(link):
    try:
        for line in open(f"bench/links/{link}.ini"):
            m = re.match(r"\s*delay\s*=\s*([0-9.]+)ms", line)
            if m:
                return float(m.group(1))
    except OSError:
        pass
    return 0.0


def speculation_tables(w, summary, responses, links):
    """The time / round trips / bytes table and the cost model of one run; returns the verdicts."""
    w("## Time, round trips and bytes (sums over the run)\n")
    w("| link | standalone (s) | collaborative (s) | speculative (s) | speculative / collaborative: all (per prompt min / median / max) | target | "
      "blocking round trips / response: collaborative → speculative (ratio) | time blocked (s): collaborative → speculative (ratio) | "
      "misses / cloud tokens | wasted / confirmed upload bytes | edge positions computed / rolled back per generated token |")
    w("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    verdicts = []
    model_rows = []
    for link in links:
        st, co, sp = (summary[(link, m)] for m in ("standalone", "collaborative", "collaborative-speculative"))
        t_st, t_co, t_sp = float(st["total_s"]), float(co["total_s"]), float(sp["total_s"])
        per_prompt = {}
        for r in responses:
            if r["link"] == link and r["mode"] in ("collaborative", "collaborative-speculative"):
                per_prompt.setdefault(r["prompt"], {})[r["mode"]] = float(r["total_ms"])
        ratios = sorted(p["collaborative-speculative"] / p["collaborative"] for p in per_prompt.values()
                        if len(p) == 2 and p["collaborative"] > 0)
        n = float(sp["responses"])
        b_co, b_sp = float(co["blocking_round_trips"]) / n, float(sp["blocking_round_trips"]) / n
        def mode_sum(mode, key):  # `key` summed over this link's responses in `mode`
            return sum(float(r[key]) for r in responses if r["link"] == link and r["mode"] == mode)
        spec = "collaborative-speculative"
        wasted = int(mode_sum(spec, "bytes_wasted"))
        confirmed = int(mode_sum(spec, "bytes_uploaded")) - wasted
        blocked_co, blocked_sp = mode_sum("collaborative", "blocked_ms") / 1e3, mode_sum(spec, "blocked_ms") / 1e3
        generated = mode_sum(spec, "generated")
        computed = mode_sum(spec, "speculated") / max(generated, 1)
        rolled = mode_sum(spec, "rolled_back") / max(generated, 1)
        misses, cloud_tokens = int(float(sp["misses"])), int(float(sp["tokens"]) * float(sp["cloud_share"]) + 0.5)
        ratio = t_sp / t_co
        target = TARGETS.get(link)
        ok = target is not None and ratio <= target
        verdicts.append((link, ratio, target, ok, b_sp / b_co if b_co else 0, wasted / confirmed if confirmed else 0))
        w(f"| {link} | {t_st:.2f} | {t_co:.2f} | {t_sp:.2f} | **{ratio:.2f}×** ({ratios[0]:.2f} / "
          f"{statistics.median(ratios):.2f} / {ratios[-1]:.2f}) | ≤ {target:g}× {'✓' if ok else '✗'} | "
          f"{b_co:.1f} → {b_sp:.1f} ({b_sp / b_co if b_co else 0:.2f}×) | {blocked_co:.1f} → {blocked_sp:.1f} "
          f"({blocked_sp / blocked_co if blocked_co else 0:.2f}×) | {misses} / {cloud_tokens} "
          f"({100 * misses / max(cloud_tokens, 1):.1f}%) | {wasted:,} / {confirmed:,} ({100 * wasted / max(confirmed, 1):.0f}%) | "
          f"{computed:.1f} / {rolled:.1f} |")
        rtt_s = 2 * one_way_delay_ms(link) / 1000
        t_cloud = float(sp["cloud_s"]) / max(float(sp["cloud_requests"]), 1)
        predicted = t_st + misses * (rtt_s + t_cloud)
        ends = int(float(sp["responses"]))  # each response waits for its last answers once
        waits = int(float(sp["blocking_round_trips"]))
        # The longest chain of round trips each waiting for the one before (ce-bench after 8f3d500);
        # non-speculative collaborative mode has one per cloud token.
        rounds = int(float(sp["critical_round_trips"])) if "critical_round_trips" in sp else None
        rounds_co = int(float(co["critical_round_trips"])) if "critical_round_trips" in co else None
        t_cloud_co = float(co["cloud_s"]) / max(float(co["cloud_requests"]), 1)
        model_rows.append(dict(link=link, t_st=t_st, misses=misses, rtt_s=rtt_s, t_cloud=t_cloud, predicted=predicted,
                               t_sp=t_sp, with_ends=predicted + ends * (rtt_s + t_cloud), waits=waits,
                               by_waits=t_st + waits * (rtt_s + t_cloud), rounds=rounds,
                               by_rounds=None if rounds is None else t_st + rounds * (rtt_s + t_cloud),
                               rounds_co=rounds_co,
                               by_rounds_co=None if rounds_co is None else t_st + rounds_co * (rtt_s + t_cloud_co),
                               t_co=t_co))

    w("\n## Cost model\n")
    w("A confirmed guess costs the edge nothing: it has already computed on. A miss costs what the edge "
      "computed past the guess, which is about one round trip plus the cloud's compute of that request, "
      "after which it starts over from the cloud's token. So\n")
    w("    T_spec ≈ T_standalone + misses × (RTT + t_cloud)\n")
    w("with RTT twice the link's one-way delay and t_cloud the cloud's compute per request. A response also "
      "waits once at its end for the answers to its last guesses, one more (RTT + t_cloud) per response: the "
      "second prediction adds it. Neither counts the window of requests (ce.speculation.max-requests, "
      "min-path-confidence: a guess deep in an uncertain path is asked only once the guesses before it hold), "
      "the upload of the rows, the cloud's queueing, or the edge's own steps between answers, which on a near "
      "link (loopback, LAN) are most of the time: the model is meant for links where the round trip dominates.\n")
    w("The edge also stands, misses or not, when it has run a round trip's worth of positions past its oldest "
      "unanswered guess while that guess's answer is still out (the window asks a deep guess only once those "
      "before it hold, so its answer comes rounds later); the last prediction counts every time it stood (the "
      "blocking round trips) as one (RTT + t_cloud): T_standalone + waits × (RTT + t_cloud). A wait is at "
      "most that: an answer is often on its way when the edge stops.\n")
    with_rounds = all(row["rounds"] is not None for row in model_rows)
    if with_rounds:
        w("What the misses leave out is the window's own round trips: a wave of asked guesses is answered a round "
          "trip later, and only then are the guesses behind it asked, so a response whose guesses all held still "
          "takes about (guesses / guesses a wave) round trips. The edge counts them (`critical_round_trips` in "
          "x_ce): a request's round is one more than the latest round of the answers in when it went out, and a "
          "response's rounds are the latest answered, the longest chain of round trips each of which waited for "
          "the one before (a wave behind the last, the restart after a miss). That gives the model the window "
          "needs, T_standalone + rounds × (RTT + t_cloud), whose case without a window is the misses' one. "
          "Without speculation each request waits for the answer before it, one round per cloud token: the same "
          "model for non-speculative collaborative mode is the last column.\n")
    w("| link | T_standalone (s) | misses | RTT (ms) | t_cloud (ms) | predicted (s) | measured / predicted | "
      "predicted with the end waits (s) | measured / that | waits | predicted by waits (s) | measured / that | measured (s) |"
      + (" rounds | predicted by rounds (s) | measured / that | collaborative: rounds, measured / predicted |"
         if with_rounds else ""))
    w("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
      + (" ---: | ---: | ---: | ---: |" if with_rounds else ""))
    for r in model_rows:
        w(f"| {r['link']} | {r['t_st']:.2f} | {r['misses']} | {1000 * r['rtt_s']:.0f} | {1000 * r['t_cloud']:.2f} | "
          f"{r['predicted']:.2f} | {r['t_sp'] / r['predicted']:.2f} | {r['with_ends']:.2f} | {r['t_sp'] / r['with_ends']:.2f} | "
          f"{r['waits']} | {r['by_waits']:.2f} | {r['t_sp'] / r['by_waits']:.2f} | {r['t_sp']:.2f} |"
          + (f" {r['rounds']} | {r['by_rounds']:.2f} | **{r['t_sp'] / r['by_rounds']:.2f}** | {r['rounds_co']}, "
             f"{r['t_co'] / r['by_rounds_co']:.2f} |" if with_rounds else ""))
    return verdicts


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench-dir", default="docs/bench/speculation")
    a = ap.parse_args()
    summary = {(r["link"], r["mode"]): r for r in read_csv(f"{a.bench_dir}/summary.csv")}
    responses = read_csv(f"{a.bench_dir}/responses.csv")
    prov = provenance(a.bench_dir)
    links = [l for l in ["loopback", "lan", "wan", "mobile"] if (l, "collaborative-speculative") in summary]
    if not links:
        sys.exit(f"bench-speculation-report: {a.bench_dir}/summary.csv has no collaborative-speculative rows")

    out = []
    w = out.append
    any_row = summary[(links[0], "collaborative")]
    w("# Speculative collaboration: measured (issue 19)\n")
    knobs = ", ".join(f"{k} {prov[k]}" for k in ("max_ahead", "max_requests", "min_path_confidence", "run_ahead")
                      if k in prov)
    nodes = (f", cloud and edge in one process, {prov['threads']} compute thread(s) each" if "threads" in prov
             else ", cloud and edge in one process sharing them")
    w(f"ce-bench run {prov.get('finished', '?')}, commit `{prov.get('commit', '?')}`, "
      f"{prov.get('machine', machine() + nodes)}; {'speculation: ' + knobs + '; ' if knobs else ''}{any_row['responses']} prompts × "
      f"{int(float(any_row['tokens']) / float(any_row['responses']))} new tokens each, greedy, θ {float(any_row['threshold']):g} "
      "(the model's default), links emulated by ce-linkem (`bench/links/*.ini`). Modes of one prompt run back to back "
      "(prompt-major), so the machine's drift spreads over all of them. Raw rows: [responses.csv](responses.csv), "
      "sums: [summary.csv](summary.csv). Written by `scripts/bench-speculation-report.py`.\n")
    w("Every speculative response equals its non-speculative one token for token (ce-bench checks it and fails "
      "otherwise), and uploads each confirmed position exactly once: uploaded − wasted = (prompt + generated) × dim × 2.\n")

    verdicts = speculation_tables(w, summary, responses, links)
    if os.path.exists(f"{a.bench_dir}/window/README.md"):
        w("\nHow far the edge asks ahead trades time for wasted uploads: "
          "[window/](window/README.md) (`scripts/bench-speculation-window`).\n")
    if os.path.exists(f"{a.bench_dir}/rounds/README.md"):
        w("\nThe cost model with the request window's rounds (x_ce's `critical_round_trips`), measured on WAN and "
          "mobile: [rounds/](rounds/README.md).\n")
    unwindowed = f"{a.bench_dir}/unwindowed"
    if os.path.exists(f"{unwindowed}/summary.csv"):
        u_summary = {(r["link"], r["mode"]): r for r in read_csv(f"{unwindowed}/summary.csv")}
        u_links = [l for l in links if (l, "collaborative-speculative") in u_summary]
        u_rows = read_csv(f"{unwindowed}/responses.csv")
        n = u_summary[(u_links[0], "collaborative")]["responses"] if u_links else "?"
        w(f"\n## Without the request window ({n} prompts, [unwindowed/](unwindowed/summary.csv))\n")
        w("Every guess asked at once and every row uploaded as soon as computed (--max-requests 1024 "
          "--min-path-confidence 0): the time the cost model describes, and the bytes the window saves.\n")
        speculation_tables(w, u_summary, u_rows, u_links)

    budget_links = [l for l in links if (l, "collaborative-budget") in summary]
    if budget_links:
        curve = {}
        test_csv = "models/ce-brown-8l/eval/test.csv"
        if os.path.exists(test_csv):
            for r in read_csv(test_csv):
                curve[round(float(r["threshold"]), 4)] = float(r["accuracy_collaborative"])

        def accuracy(theta):
            if not curve:
                return "?"
            nearest = min(curve, key=lambda t: abs(t - theta))
            return f"{100 * curve[nearest]:.2f}%"

        w("\n## Link-aware θ (ce.exit.policy = latency-budget)\n")
        w("Without speculation, against the fixed θ: the edge's exit decider keeps moving averages of the round "
          "trip and of an edge step and gives each new response the highest θ (at most the configured one) whose "
          "expected time per token, edge step + cloud share(θ) × round trip, fits ce.exit.latency-budget "
          f"({prov.get('latency_budget_ms', '10')} ms here), never below ce.exit.threshold-floor; cloud share(θ) "
          "comes from the model's validation sweep (eval/valid.csv). Accuracy: next-token accuracy of collaborative "
          "inference at that θ on the held-out test text (the model's eval/test.csv). The first response of a run "
          "has no measured round trip yet and runs at the configured θ.\n")
        w("| link | policy | θ (median over responses; min – max) | total (s) | ms / token | to cloud | accuracy at θ |")
        w("| --- | --- | --- | ---: | ---: | ---: | ---: |")
        for link in budget_links:
            for mode, label in (("collaborative", "fixed"), ("collaborative-budget", "latency-budget")):
                s = summary[(link, mode)]
                thetas = sorted(float(r["threshold"]) for r in responses if r["link"] == link and r["mode"] == mode)
                med = statistics.median(thetas)
                w(f"| {link} | {label} | {med:g} ({thetas[0]:g} – {thetas[-1]:g}) | {float(s['total_s']):.2f} | "
                  f"{1000 * float(s['total_s']) / float(s['tokens']):.2f} | {100 * float(s['cloud_share']):.1f}% | "
                  f"{accuracy(med)} |")

    w("\n## Against the issue's targets\n")
    for link, ratio, target, ok, blocking, waste in verdicts:
        w(f"- {link}: total {ratio:.2f}× non-speculative (target ≤ {target:g}×: {'met' if ok else 'NOT met'}); "
          f"blocking round trips {blocking:.2f}× (target ≤ 0.45×: {'met' if blocking <= 0.45 else 'NOT met'}); "
          f"wasted upload bytes {100 * waste:.0f}% of the confirmed ones (target ≤ 50%: "
          f"{'met' if waste <= 0.5 else 'NOT met'}).")
    text = "\n".join(out) + "\n"
    with open(f"{a.bench_dir}/README.md", "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
