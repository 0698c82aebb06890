#!/usr/bin/python3
"""Plots ce-bench's summary.csv: time split per mode and link, bytes per response (log scale),
and the θ sweep (latency and cloud share vs θ). Usage: plot-bench.py SUMMARY_CSV OUT_DIR"""
import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

rows = list(csv.DictReader(open(sys.argv[1])))
out = sys.argv[2]
links = list(dict.fromkeys(r["link"] for r in rows))
modes = [m for m in dict.fromkeys(r["mode"] for r in rows) if not m.startswith("sweep")]

fig, axes = plt.subplots(1, len(links), figsize=(4.5 * len(links), 4), squeeze=False)
for ax, link in zip(axes[0], links):
    sel = [next(r for r in rows if r["link"] == link and r["mode"] == m) for m in modes
           if any(r["link"] == link and r["mode"] == m for r in rows)]
    names = [r["mode"] for r in sel]
    bottom = [0.0] * len(sel)
    for key, colour in (("edge_s", "tab:green"), ("cloud_s", "tab:blue"), ("comm_s", "tab:red")):
        vals = [float(r[key]) for r in sel]
        ax.bar(names, vals, bottom=bottom, color=colour, label=key[:-2])
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set_title(f"link: {link}")
    ax.set_ylabel("seconds (all responses)")
    ax.tick_params(axis="x", rotation=60)
axes[0][0].legend()
fig.tight_layout()
fig.savefig(f"{out}/time_split.png", dpi=110)

fig, ax = plt.subplots(figsize=(6, 4))
link = "wan" if "wan" in links else links[-1]
sel = [r for r in rows if r["link"] == link and not r["mode"].startswith("sweep")]
ax.bar([r["mode"] for r in sel], [max(float(r["bytes_per_response"]), 1) / 1024 for r in sel], color="tab:purple")
ax.set_yscale("log")
ax.set_ylabel("KiB sent per response (log)")
ax.set_title("Fig. 1 analogue: data sent per response")
ax.tick_params(axis="x", rotation=60)
fig.tight_layout()
fig.savefig(f"{out}/bytes_per_response.png", dpi=110)

sweep = sorted((r for r in rows if r["mode"].startswith("sweep")), key=lambda r: float(r["threshold"]))
if sweep:
    fig, ax1 = plt.subplots(figsize=(6, 4))
    th = [float(r["threshold"]) for r in sweep]
    ax1.plot(th, [float(r["total_s"]) for r in sweep], "o-", color="tab:blue", label="total time")
    ax1.set_xlabel("θ")
    ax1.set_ylabel("total time (s)")
    ax2 = ax1.twinx()
    ax2.plot(th, [100 * float(r["cloud_share"]) for r in sweep], "s--", color="tab:red", label="cloud share")
    ax2.set_ylabel("tokens sent to the cloud (%)")
    ax1.set_title(f"θ sweep on link {sweep[0]['link']}")
    fig.tight_layout()
    fig.savefig(f"{out}/theta_sweep.png", dpi=110)
print(f"wrote {out}/time_split.png, bytes_per_response.png" + (", theta_sweep.png" if sweep else ""))
