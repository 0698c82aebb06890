#!/usr/bin/env python3
"""Summarises scripts/bench-decode's results.csv and catchup.csv into summary.csv and README.md
(min / median / max over the repeats, ratios of medians against run.c, and against llama.cpp at the
same precision when it was measured, in the same run), or with
--plot draws decode.png (tokens/s per engine and precision, full model). Usage:
  bench-decode-report.py OUT_DIR [--plot]"""
import csv
import json
import os
import statistics
import sys

out = sys.argv[1]
rows = list(csv.DictReader(open(os.path.join(out, "results.csv"))))
catchup = list(csv.DictReader(open(os.path.join(out, "catchup.csv"))))
prov = json.load(open(os.path.join(out, "provenance.json")))
models = list(dict.fromkeys(r["model"] for r in rows))
configs = list(dict.fromkeys((r["engine"], r["weights"], r["range"]) for r in rows))


def values(model, engine, weights, threads, rng):
    return [float(r["tokens_per_s"]) for r in rows if r["model"] == model and r["engine"] == engine and
            r["weights"] == weights and r["threads"] == str(threads) and r["range"] == rng]


def median(v):
    return statistics.median(v) if v else float("nan")


if "--plot" in sys.argv:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    engines = [("run.c", "fp32"), ("cecollm", "fp32"), ("cecollm", "fp16"), ("cecollm", "int8")]
    if any(r["engine"] == "llama.cpp" for r in rows):
        engines = [("run.c", "fp32")] + [(e, w) for w in ("fp32", "fp16", "int8") for e in ("llama.cpp", "cecollm")]
    fig, axes = plt.subplots(1, len(models), figsize=(1.0 * len(engines) * len(models) + 1, 4.5), squeeze=False)
    for ax, model in zip(axes[0], models):
        for i, threads in enumerate((1, 2)):
            meds = [median(values(model, e, w, threads, "full")) for e, w in engines]
            lo = [m - min(values(model, e, w, threads, "full")) for m, (e, w) in zip(meds, engines)]
            hi = [max(values(model, e, w, threads, "full")) - m for m, (e, w) in zip(meds, engines)]
            ax.bar([x + 0.4 * i for x in range(len(engines))], meds, 0.4, yerr=[lo, hi], capsize=3,
                   label=f"{threads} thread{'s' if threads > 1 else ''}")
        ax.set_xticks([x + 0.2 for x in range(len(engines))])
        ax.set_xticklabels([f"{e}\n{w}" for e, w in engines], fontsize=8)
        ax.set_ylabel("tokens/s (median, min-max bars)")
        ax.set_title(f"{model}: full-model batch-1 decode")
        ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "decode.png"), dpi=110)
    sys.exit(0)

summary = []
for model in models:
    for threads in (1, 2):
        base = median(values(model, "run.c", "fp32", threads, "full"))
        for engine, weights, rng in configs:
            llamacpp = median(values(model, "llama.cpp", weights, threads, "full"))
            v = values(model, engine, weights, threads, rng)
            if not v:
                continue
            rss = [float(r["peak_rss_mib"]) for r in rows if r["model"] == model and r["engine"] == engine and
                   r["weights"] == weights and r["threads"] == str(threads) and r["range"] == rng and r["peak_rss_mib"]]
            summary.append(dict(model=model, engine=engine, weights=weights, threads=threads, range=rng, runs=len(v),
                                min=round(min(v), 2), median=round(median(v), 2), max=round(max(v), 2),
                                vs_runc=round(median(v) / base, 3) if rng == "full" else "",
                                vs_llamacpp=round(median(v) / llamacpp, 3) if rng == "full" and llamacpp == llamacpp else "",
                                peak_rss_mib=round(max(rss), 1) if rss else ""))
with open(os.path.join(out, "summary.csv"), "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(summary[0]))
    w.writeheader()
    w.writerows(summary)

md = ["# Batch-1 decode: cecollm against llama2.c's run.c", "",
      f"One run of `scripts/bench-decode` at commit {prov['commit']}, {prov['date']}, on {prov['cpu']} "
      f"(2 cores), {prov['repeats']} interleaved repeats; run.c from llama2.c {prov['runc_commit'][:12]} built with "
      "`gcc -Ofast -fopenmp -march=native`, reading the same weights exported by `ce-model --export-llama2c` "
      "(fp32). Tokens/s of greedy decoding from BOS (run.c's own `achieved tok/s`; ours from `ce-bench-decode`), "
      "min / median / max; `vs run.c` is the ratio of medians at the same thread count."]
if prov.get("kernels"):
    md[-1] += (f" Our kernels: {prov['kernels']['isa']}, products of several input rows in "
               f"{dict(dot='dot-product').get(prov['kernels']['row_blocks'], prov['kernels']['row_blocks'])} blocks "
               "(`kernels::row_blocks()`: dot-product blocks on AMD cores, "
               "broadcast blocks on others).")
if prov.get("llamacpp"):
    md[-1] += (f" llama.cpp: the CPU libraries of {prov['llamacpp']} (npm), driven by `bench/llamacpp/decode.cpp` "
               "(greedy from BOS, one llama_decode per token, timed after the first like run.c), reading GGUF files "
               "written by `ce-model --export-gguf`: F32 for fp32, F16 for fp16, Q8_0 (blocks of 32, fp16 scale; "
               "activations quantized to Q8_0 by llama.cpp) for int8; `vs llama.cpp` is the ratio of medians "
               "against llama.cpp at the same precision and thread count.")
md.append("")
for name, same, chars in prov["checks"]:
    engine = "llama.cpp's F32" if "llama.cpp" in name else "run.c's"
    name = name.replace(" (llama.cpp F32)", "")
    md.append(f"- {name}: {engine} greedy text from BOS {'equals' if same else '**differs from**'} "
              f"`ce-generate --mode full --weights fp32` over its first {chars} characters.")
md += ["", "Ranges: `full` = layers [0, L) + final head (what run.c does); `edge` = [0, split) with every edge "
       "exit read (the edge's work per token); `cloud` = [split, L) + final head from one uploaded fp16 state "
       "(the cloud's work per offloaded token). fp16 is the shipped file's own precision (`auto`); fp32 widens "
       "it at load; int8 keeps one fp32 scale per 32 values.", ""]
for model in models:
    md += [f"## {model}", "", "| engine | weights | range | threads | min | median | max | vs run.c | vs llama.cpp | peak RSS MiB |",
           "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for s in summary:
        if s["model"] == model:
            md.append(f"| {s['engine']} | {s['weights']} | {s['range']} | {s['threads']} | {s['min']} | "
                      f"{s['median']} | {s['max']} | {s['vs_runc']} | {s['vs_llamacpp']} | {s['peak_rss_mib']} |")
    md.append("")
memory_csv = os.path.join(out, "memory.csv")
if os.path.exists(memory_csv) and prov.get("fp32_bytes_per_token"):
    memory = list(csv.DictReader(open(memory_csv)))
    gbps = {t: median([float(m["gb_per_s"]) for m in memory if int(m["threads"]) == t]) for t in (1, 2)}
    md += ["## What memory allows (fp32)", "",
           "A batch-1 step reads every weight once, so no engine decodes faster than the machine's read bandwidth "
           "over the bytes of weights a token reads. Bandwidth measured in the same run (`ce-bench-decode --ranges "
           f"memory`: libtorch's sum over 1 GiB, best of 8, each repeat): {gbps[1]:.1f} GB/s on 1 thread, "
           f"{gbps[2]:.1f} GB/s on 2 (medians).", "",
           "| model | fp32 MB a token | threads | ceiling tokens/s | run.c | cecollm | 1.2 × run.c |",
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for model in models:
        mb = prov["fp32_bytes_per_token"].get(model)
        if not mb:
            continue
        for t in (1, 2):
            ceiling = gbps[t] * 1e9 / mb
            runc = median(values(model, "run.c", "fp32", t, "full"))
            mine = median(values(model, "cecollm", "fp32", t, "full"))
            md.append(f"| {model} | {mb / 1e6:.1f} | {t} | {ceiling:.1f} | {runc:.1f} ({100 * runc / ceiling:.0f}%) | "
                      f"{mine:.1f} ({100 * mine / ceiling:.0f}%) | {1.2 * runc:.1f} ({120 * runc / ceiling:.0f}%) |")
    llc = prov.get("last_level_cache")
    md += ["", "A model whose weights fit in the last-level cache" + (f" ({llc}B here)" if llc else "")
           + " is not bound by this.", ""]
md += ["## Catch-up: the cloud filling a gap of uploaded positions in one infer", "",
       "Per caught-up position (one infer that fills the gap after `context` computed positions) against a "
       "decode step over the same positions (the gap stepped one position at a time: append one state, infer "
       "it), at the same thread count; best of 3 each (5 for gaps under 16), the two measured in turn. A cloud node computes with all cores (ce.threads = 0): on this 2-core machine, the "
       "2-thread rows are its configuration.", "",
       "| model | weights | threads | context | gap | ms per position | ms per step | ratio |",
       "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
for c in catchup:
    md.append(f"| {c['model']} | {c['weights']} | {c.get('threads', 1)} | {c['context']} | {c['gap']} | "
              f"{float(c['ms_per_position']):.4f} | {float(c['ms_per_step']):.4f} | {float(c['ratio_to_step']):.3f} |")
md.append("")
if os.path.exists(os.path.join(out, "decode.png")):
    md += ["![tokens/s per engine and precision](decode.png)", ""]
open(os.path.join(out, "README.md"), "w").write("\n".join(md))
