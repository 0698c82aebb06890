#!/usr/bin/python3
"""Writes docs/benchmarks.md from a ce-bench run: the Table I analogue, the issue's expected shapes
checked one by one (verdicts computed here, not typed), the θ sweep (Fig. 1 analogue), the accuracy
table (Table II analogue) and the loopback latency/overhead figures.

Usage: bench-report.py [--bench-dir docs/bench] [--model models/ce-brown-8l] [--out docs/benchmarks.md]
                       [--command "scripts/run-bench ..."]
"""
import argparse
import csv
import json
import os
import re
import sys

from bench_common import machine, provenance

LINK_NAMES = {"loopback": "loopback", "lan": "LAN", "wan": "WAN", "mobile": "mobile"}
SLOW_LINKS = ("wan", "mobile")
TABLE_LINKS = ("wan", "mobile", "lan", "loopback")  # the order of the page's tables
PAPER = """The paper's Table I (LLaMA-7B, A100s, Alpaca, 100 prompts): cloud 370.2 s; naïve 3371.8 s (comm
2877.0 s); standalone 201.6 s; collaborative 319.1 s with cloud cost 112.7 s (−70%) and 49.6% of
tokens sent to the cloud; bytes per request 112,128 KB (naïve) vs 956.6 KB (CE-CoLLM)."""


# The expected shapes the page checks, by the names --require takes.
SHAPES = ["collaborative_faster", "cloud_compute_halved", "naive_slowest", "bytes_exact",
          "standalone_fastest_least_accurate"]

def fail(msg):
    sys.exit(f"bench-report: {msg}")


def read_csv(path):
    if not os.path.exists(path):
        fail(f"{path} not found (run ce-bench first)")
    return list(csv.DictReader(open(path)))


def pct_change(new, old):
    return 100.0 * (new - old) / old if old else float("nan")


def signed_pct(new, old):
    change = pct_change(new, old)
    if round(change) == 0:
        return "±0%"  # not "−0%" for a change that rounds away
    return f"{change:+.0f}%".replace("-", "−")


def collaborative_vs_cloud_only(summary, link):
    return signed_pct(summary[(link, "collaborative")]["total_s"], summary[(link, "cloud-only")]["total_s"])


def fmt_s(x):
    return f"{x:.2f}"


def fmt_int(x):
    return f"{x:,.0f}"


def link_profile(name):
    """delay/jitter/bandwidth of bench/links/NAME.ini, as written there."""
    prof = {}
    try:
        for line in open(f"bench/links/{name}.ini"):
            m = re.match(r"\s*(delay|jitter|bandwidth)\s*=\s*(\S+)", line)
            if m:
                prof[m.group(1)] = m.group(2)
    except OSError:
        pass
    return prof


def by_link_and_mode(summary):
    return {(r["link"], r["mode"]): {k: (float(v) if k not in ("link", "mode") else v) for k, v in r.items()}
            for r in summary}


def parse_accuracy(results_md):
    """(weights hash, {θ: row dict}) from the ce-eval report that ce-bench appends to results.md."""
    text = open(results_md).read()
    weights = re.search(r"weights: `([0-9a-f]+)`", text)
    tokens = re.search(r"### Accuracy on (\d+) held-out tokens", text)
    rows = {}
    for m in re.finditer(r"^\| ([0-9.]+)(?: \(default\))? \|(.*)\|$", text, re.M):
        cells = [c.strip().rstrip("%") for c in m.group(2).split("|")]
        if len(cells) < 8:
            continue
        # exit shares..., edge, cloud, edge agreement, overall agreement, standalone, collaborative, full
        rows[float(m.group(1))] = {"edge": float(cells[-7]), "agreement": float(cells[-5]),
                                   "standalone": float(cells[-3]), "collaborative": float(cells[-2]),
                                   "full": float(cells[-1])}
    return (weights.group(1) if weights else "unknown"), (int(tokens.group(1)) if tokens else 0), rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bench-dir", default="docs/bench")
    ap.add_argument("--model", default="models/ce-brown-8l")
    ap.add_argument("--out", default="docs/benchmarks.md")
    ap.add_argument("--command", default="scripts/run-bench")
    ap.add_argument("--require", default="",
                    help="comma-separated shapes that must hold, else exit 1: " + ", ".join(SHAPES))
    a = ap.parse_args()
    required = [x for x in a.require.split(",") if x]
    for name in required:
        if name not in SHAPES:
            sys.exit(f"bench-report: --require {name}: no such shape (known: {', '.join(SHAPES)})")

    summary = read_csv(f"{a.bench_dir}/summary.csv")
    responses = read_csv(f"{a.bench_dir}/responses.csv")
    if not os.path.exists(f"{a.bench_dir}/results.md"):
        fail(f"{a.bench_dir}/results.md not found")
    cfg = json.load(open(f"{a.model}/config.json"))
    dim = cfg["hidden_size"]
    split = cfg["early_exit"]["default_split"]
    weights, eval_tokens, accuracy = parse_accuracy(f"{a.bench_dir}/results.md")

    s = by_link_and_mode(summary)
    links = [l for l in TABLE_LINKS if (l, "cloud-only") in s]
    if not links or not all((l, "collaborative") in s for l in links):
        fail(f"{a.bench_dir}/summary.csv lacks cloud-only or collaborative rows of the links wan/mobile/lan/loopback")
    any_link = links[0]
    theta = s[(any_link, "collaborative")]["threshold"]  # the θ the run used, even if config.json moved on
    n_resp = int(s[(any_link, "cloud-only")]["responses"])
    n_tokens = int(s[(any_link, "cloud-only")]["tokens"] / n_resp)
    prompt_tokens = int(next(r for r in responses if r["mode"] == "collaborative")["prompt_tokens"])
    has_08 = any(m == "collaborative-0.8" for _, m in s)

    def row(link, mode):
        return s.get((link, mode))

    out = []
    w = out.append
    w("# Benchmarks: the paper's comparison on our model\n")
    prov = provenance(a.bench_dir)
    wall = ""
    if int(prov.get("resumed_responses", 0)) > 0:
        wall = (f" The run was interrupted and resumed from its checkpoint: {prov['resumed_responses']} of "
                f"{prov['responses']} responses were measured in earlier sittings, the rest in a last sitting of "
                f"{prov['last_sitting_minutes']} minutes.")
    elif "last_sitting_minutes" in prov:
        wall = f" The run took {prov['last_sitting_minutes']} minutes."
    profiles = "; ".join(
        f"{LINK_NAMES.get(l, l)} {p.get('delay', '?')}"
        + (f" ± {p['jitter']}" if p.get("jitter", "0ms") not in ("0ms", "0") else "")
        + f" / {p.get('bandwidth', '?')}"
        for l in ("loopback", "lan", "wan", "mobile") for p in [link_profile(l)] if p)
    w(f"`{a.command}` (ce-bench) finished {prov['finished']}, commit `{prov['commit']}`: one machine "
      f"with {machine()}, model `{cfg.get('_name_or_path', a.model)}` (weights `{weights}`: "
      f"{cfg['num_hidden_layers']} layers, dim {dim}, split after layer {split}, default θ {theta:g}), "
      f"{n_resp} prompts of {prompt_tokens - 1} tokens (+ BOS) cut from the held-out test text, {n_tokens} new "
      f"tokens each, greedy. Cloud and edge are two CAF actor systems in one process talking BASP over "
      f"loopback TCP, through the cloud's BaspGuard relay and ce-linkem, which emulates each link "
      f"(`bench/links/*.ini`, delays one-way: {profiles}). Raw rows: [bench/responses.csv](bench/responses.csv), "
      f"summary: [bench/summary.csv](bench/summary.csv), all tables: [bench/results.md](bench/results.md)."
      f"{wall} Cloud and edge share the same cores, so \"cloud compute\" is CPU time of the cloud's layers on "
      f"the cores the edge also uses. This page is written by `scripts/bench-report.py` from those files.\n")

    # Table I analogue.
    w(f"## Table I analogue (sums over {n_resp} responses × {n_tokens} tokens)\n")
    w("| link | deployment | total (s) | cloud (s) | edge (s) | comm / wait (s) | p50 / p99 per token (ms) "
      "| bytes / response | tokens to cloud |")
    w("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    labels = [("cloud-only", "cloud-only"), ("naive-split", "naïve split"), ("standalone", "CE-CoLLM standalone"),
              ("collaborative", f"CE-CoLLM collaborative (θ {theta:g}, default)")]
    if has_08:
        labels.append(("collaborative-0.8", "CE-CoLLM collaborative (θ 0.8, paper's)"))
    for link in links:
        for mode, label in labels:
            r = row(link, mode)
            if not r:
                continue
            w(f"| {LINK_NAMES.get(link, link)} | {label} | {fmt_s(r['total_s'])} | {fmt_s(r['cloud_s'])} | "
              f"{fmt_s(r['edge_s'])} | {fmt_s(r['comm_s'])} | {r['p50_ms']:.1f} / {r['p99_ms']:.1f} | "
              f"{fmt_int(r['bytes_per_response'])} | {100 * r['cloud_share']:.1f}% |")
    w("\n" + PAPER + "\n")
    standalone = [row(l, "standalone")["total_s"] for l in links if row(l, "standalone")]
    if len(standalone) > 1:
        # Standalone does identical work on every link and never touches the network: its spread is the
        # machine's own drift between the times the links were measured.
        lo, hi = min(standalone), max(standalone)
        w(f"How much of a difference is noise: standalone does the same computation on every link and never "
          f"touches the network, yet its totals range {fmt_s(lo)}–{fmt_s(hi)} s across the links "
          f"({100 * (hi / lo - 1):.0f}% apart), measured minutes or hours apart on a shared 2-core VM. Compute "
          f"times of rows measured at different times differ by that much without any cause in the code; the "
          f"link's round trips, which dominate WAN and mobile, do not drift.\n")
    w("![time split](bench/time_split.png)\n")

    # Expected shapes, checked.
    w("## Does the expected shape hold?\n")
    w("| expectation | here | holds? |\n| --- | --- | --- |")
    verdicts = {}

    def verdict(shape, ok):
        verdicts[shape] = bool(ok)
        return "yes" if ok else "**no**"

    parts, ok = [], True
    for link in SLOW_LINKS:
        c, co = row(link, "collaborative"), row(link, "cloud-only")
        if c and co:
            ok &= c["total_s"] < co["total_s"]
            parts.append(f"{LINK_NAMES[link]} {fmt_s(c['total_s'])} vs {fmt_s(co['total_s'])} s "
                         f"({signed_pct(c['total_s'], co['total_s'])})")
    w(f"| collaborative (default θ) beats cloud-only in total time on WAN and mobile | {'; '.join(parts)} | "
      f"{verdict('collaborative_faster', ok and bool(parts))} |")
    parts, ok = [], True
    for link in SLOW_LINKS:
        c, co = row(link, "collaborative"), row(link, "cloud-only")
        if c and co:
            ok &= c["cloud_s"] < 0.5 * co["cloud_s"]
            parts.append(f"{LINK_NAMES[link]} {fmt_s(c['cloud_s'])} vs {fmt_s(co['cloud_s'])} s "
                         f"({signed_pct(c['cloud_s'], co['cloud_s'])})")
    w(f"| … and cuts cloud compute by more than half | {'; '.join(parts)} | {verdict('cloud_compute_halved', ok and bool(parts))} |")
    parts, ok = [], True
    for link in SLOW_LINKS:
        modes_here = {m: r for (l, m), r in s.items() if l == link and not m.startswith("sweep")}
        n = modes_here.get("naive-split")
        if n:
            slowest = max(modes_here.values(), key=lambda r: r["total_s"])
            ok &= slowest is n
            co = modes_here.get("cloud-only")
            parts.append(f"{LINK_NAMES[link]} {fmt_s(n['total_s'])} s"
                         + (f" ({signed_pct(n['total_s'], co['total_s'])} over cloud-only)" if co else ""))
    n_bytes = row(any_link, "naive-split")["bytes_per_response"] if row(any_link, "naive-split") else 0
    c_bytes = row(any_link, "collaborative")["bytes_per_response"]
    ok &= n_bytes >= 100 * c_bytes
    parts.append(f"{fmt_int(n_bytes)} vs {fmt_int(c_bytes)} bytes per response ({n_bytes / c_bytes:.0f}×)")
    w(f"| naïve split slowest by far on slow links, bytes orders of magnitude above | {'; '.join(parts)} | "
      f"{verdict('naive_slowest', ok)} |")
    collab = [r for r in responses if r["mode"].startswith("collaborative") or r["mode"].startswith("sweep")]
    # Confirmed bytes: a speculation's rolled-back rows are uploaded too, and counted apart.
    exact = all(int(r["bytes_uploaded"]) - int(r.get("bytes_wasted") or 0) ==
                (int(r["prompt_tokens"]) + int(r["generated"])) * dim * 2 for r in collab)
    w(f"| collaborative bytes = (prompt + generated) × dim × 2, exactly once | every one of {len(collab)} "
      f"collaborative responses: {fmt_int((prompt_tokens + n_tokens) * dim * 2)} = ({prompt_tokens} + {n_tokens}) × "
      f"{dim} × 2 | {verdict('bytes_exact', exact)} |")
    fastest_everywhere = all(
        min((r for (l, m), r in s.items() if l == link and not m.startswith("sweep")),
            key=lambda r: r["total_s"]) is row(link, "standalone") for link in links if row(link, "standalone"))
    acc = accuracy.get(theta)
    least = acc is not None and acc["standalone"] < acc["collaborative"] and acc["standalone"] < acc["full"]
    acc_text = (f"accuracy {acc['standalone']:.1f}% vs {acc['collaborative']:.1f}% collaborative and "
                f"{acc['full']:.1f}% full on {eval_tokens:,} test tokens" if acc else "accuracy not found")
    times = ", ".join(f"{LINK_NAMES[l]} {fmt_s(row(l, 'standalone')['total_s'])} s" for l in links
                      if row(l, "standalone"))
    w(f"| standalone fastest and least accurate | fastest on every link ({times}); {acc_text} | "
      f"{verdict('standalone_fastest_least_accurate', fastest_everywhere and least)} |\n")

    # A later re-measurement of some links in prompt-major order (every mode on a prompt before the next
    # prompt), kept beside a run that measured mode after mode; scripts/run-bench drops it after a full run.
    recheck_dir = f"{a.bench_dir}/prompt-major"
    again = (by_link_and_mode(read_csv(f"{recheck_dir}/summary.csv"))
             if os.path.exists(f"{recheck_dir}/summary.csv") else {})

    # Where the time goes.
    wan_c, wan_co = row("wan", "collaborative"), row("wan", "cloud-only")
    lo_c, lo_co = row("loopback", "collaborative"), row("loopback", "cloud-only")
    if wan_c and wan_co and lo_c and lo_co:
        w("Where the time goes: every token sent to the cloud pays one round trip of the link, which dominates "
          "the cloud-only and collaborative totals on WAN and mobile; collaborative saves in proportion to the "
          f"tokens its exits keep ({100 * (1 - wan_c['cloud_share']):.1f}% at θ {theta:g}) and the cloud computes "
          f"{cfg['num_hidden_layers'] - split} of {cfg['num_hidden_layers']} layers for the rest. The uploads "
          f"({fmt_int(c_bytes)} bytes per response) overlap edge compute. On loopback there is no network to "
          f"save and edge and cloud compete for the same cores: collaborative {fmt_s(lo_c['total_s'])} s vs "
          f"cloud-only {fmt_s(lo_co['total_s'])} s ({collaborative_vs_cloud_only(s, 'loopback')}"
          + (f"; {collaborative_vs_cloud_only(again, 'loopback')} when re-measured in prompt-major order, below"
             if ("loopback", "collaborative") in again else "")
          + ").\n")
    w("![bytes per response](bench/bytes_per_response.png)\n")

    if again:
        again_links = [l for l in links if (l, "cloud-only") in again]
        w(f"## Re-measured in prompt-major order ({', '.join(LINK_NAMES[l] for l in again_links)})\n")
        w(f"The run above measured one mode's {n_resp} responses after another, so modes met the machine at different "
          "speeds. ce-bench now measures every mode on a prompt before moving to the next prompt, which spreads "
          "the drift evenly over the modes compared. These links were measured again that way (same weights "
          "and prompts; [bench/prompt-major/](bench/prompt-major/results.md)); totals in seconds, "
          "mode-major run → prompt-major run:\n")
        modes = [m for m, _ in labels] + ["collaborative-all-cloud"]
        w("| link | " + " | ".join(modes) + " | collaborative vs cloud-only |")
        w("| --- |" + " ---: |" * (len(modes) + 1))
        for l in again_links:
            cells = [f"{fmt_s(row(l, m)['total_s'])} → {fmt_s(again[(l, m)]['total_s'])}" if row(l, m) and (l, m) in again
                     else "–" for m in modes]
            gap = f"{collaborative_vs_cloud_only(s, l)} → {collaborative_vs_cloud_only(again, l)}"
            w(f"| {LINK_NAMES[l]} | " + " | ".join(cells) + f" | {gap} |")
        w("")

    # θ sweep.
    sweep = sorted(((float(r["threshold"]), r) for (l, m), r in s.items() if m.startswith("sweep")),
                   key=lambda x: x[0])
    if sweep:
        sweep_link = next(l for (l, m) in s if m.startswith("sweep"))
        w(f"## Fig. 1 analogue: θ sweep on the {LINK_NAMES.get(sweep_link, sweep_link)} link\n")
        w("| θ | " + " | ".join(f"{t:g}" for t, _ in sweep) + " |")
        w("| --- | " + " | ".join("---:" for _ in sweep) + " |")
        w("| total (s) | " + " | ".join(fmt_s(r["total_s"]) for _, r in sweep) + " |")
        w("| tokens to cloud | " + " | ".join(f"{100 * r['cloud_share']:.1f}%" for _, r in sweep) + " |")
        w("| cloud compute (s) | " + " | ".join(fmt_s(r["cloud_s"]) for _, r in sweep) + " |")
        w("| p50 per token (ms) | " + " | ".join(f"{r['p50_ms']:.2f}" for _, r in sweep) + " |")
        co = row(sweep_link, "cloud-only")
        if co:
            w(f"\n(cloud-only on the same link: {fmt_s(co['total_s'])} s, {fmt_s(co['cloud_s'])} s of cloud "
              "compute.) Agreement with the final layer at each θ: the accuracy table below and the model card.\n")
        w("![theta sweep](bench/theta_sweep.png)\n")

    # Table II analogue.
    w("## Table II analogue: accuracy (next-token, held-out test text)\n")
    w(f"{eval_tokens:,} test tokens (ce-bench's accuracy table):\n")
    w("| θ | edge share | edge agreement | standalone | collaborative | cloud-only (full model) |")
    w("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for t in sorted(accuracy):
        r = accuracy[t]
        mark = " (default)" if abs(t - theta) < 1e-9 else ""
        w(f"| {t:g}{mark} | {r['edge']:.1f}% | {r['agreement']:.1f}% | {r['standalone']:.1f}% | "
          f"{r['collaborative']:.1f}% | {r['full']:.1f}% |")
    test_md = os.path.relpath(f"{a.model}/eval/test.md", os.path.dirname(os.path.abspath(a.out)))
    w(f"\nThe whole test set, θ 0.1 … 0.99: [{a.model}/eval/test.md]({test_md}).\n")

    # Loopback latency and overhead.
    lo_all = row("loopback", "collaborative-all-cloud")
    lo_s = row("loopback", "standalone")
    if lo_c and lo_co and lo_all and lo_s:
        def per_request(r):
            requests = r["cloud_share"] * r["tokens"]
            return 1000 * r["comm_s"] / requests if requests else float("nan")
        w("## Per-token latency and CAF overhead (loopback)\n")
        w(f"p50 / p99 per token: standalone {lo_s['p50_ms']:.2f} / {lo_s['p99_ms']:.2f} ms, collaborative "
          f"{lo_c['p50_ms']:.2f} / {lo_c['p99_ms']:.2f} ms, cloud-only {lo_co['p50_ms']:.2f} / {lo_co['p99_ms']:.2f} "
          "ms. The round trip of a cloud request beyond the cloud's own compute (two local actor hops, Cap'n "
          "Proto encode/decode, the guard relay, BASP over loopback, the context manager's dispatch): "
          f"**{per_request(lo_c):.2f} ms per request** at θ {theta:g} "
          f"({fmt_s(lo_c['comm_s'])} s over {lo_c['cloud_share'] * lo_c['tokens']:,.0f} requests) and "
          f"{per_request(lo_all):.2f} ms with every token sent.\n")

    w("## Round 2's benchmarks, each on its own page\n")
    w("- Speculative collaboration, its cost model T_spec ≈ T_standalone + misses × (RTT + t_cloud) against "
      "the measurement, and the link-aware θ: [bench/speculation/](bench/speculation/README.md)\n"
      "- Batch-1 decode against llama2.c's run.c and llama.cpp, catch-up cost, int8 accuracy: "
      "[bench/decode/](bench/decode/README.md)\n"
      "- One cloud under many edges (batched against one job at a time), an edge's concurrent completions: "
      "[bench/load/](bench/load/README.md)\n")

    open(a.out, "w").write("\n".join(out))
    print(f"wrote {a.out}: {sum(verdicts.values())} of {len(verdicts)} expected shapes hold")
    for shape, ok in verdicts.items():
        print(f"shape {shape}: {'holds' if ok else 'does not hold'}")
    broken = [x for x in required if not verdicts.get(x, False)]
    if broken:
        sys.exit(f"bench-report: required shapes do not hold: {', '.join(broken)}")


if __name__ == "__main__":
    main()
