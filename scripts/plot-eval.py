#!/usr/bin/env python3
"""Plots a ce-eval threshold sweep.

Usage: plot-eval.py SWEEP.csv OUT.png

SWEEP.csv is what `ce-eval --out-csv` writes: one row per threshold θ with the columns
threshold, share_exit_<layer>..., edge_share, cloud_share, edge_tokens, edge_agreement,
overall_agreement, accuracy_standalone, accuracy_collaborative, accuracy_full.

Left panel: share of tokens resolved at the edge (each exit stacked, and the total) against θ.
Middle panel: agreement of the resolved token with the final layer's (edge-resolved tokens
and all tokens). Right panel: next-token accuracy of the standalone, collaborative and
full-model rules.
"""
import csv
import sys


def main(argv):
    if len(argv) != 3 or argv[1] in ("-h", "--help"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    csv_path, png_path = argv[1], argv[2]
    try:
        with open(csv_path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        print(f"plot-eval.py: cannot read {csv_path}: {e.strerror}", file=sys.stderr)
        return 1
    if not rows:
        print(f"plot-eval.py: {csv_path} has no rows", file=sys.stderr)
        return 1
    needed = ["threshold", "edge_share", "edge_agreement", "overall_agreement", "accuracy_standalone",
              "accuracy_collaborative", "accuracy_full"]
    missing = [c for c in needed if c not in rows[0]]
    if missing:
        print(f"plot-eval.py: {csv_path} lacks columns {', '.join(missing)}", file=sys.stderr)
        return 1

    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plot-eval.py: matplotlib is missing (apt-get install python3-matplotlib)", file=sys.stderr)
        return 1

    def column(name):
        return [float(r[name]) for r in rows]

    theta = column("threshold")
    exits = [c for c in rows[0] if c.startswith("share_exit_")]

    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(16, 4.5))
    bottom = [0.0] * len(theta)
    for name in exits:
        share = column(name)
        top = [b + s for b, s in zip(bottom, share)]
        left.fill_between(theta, bottom, top, step=None, alpha=0.35, label=f"exit {name[len('share_exit_'):]}")
        bottom = top
    left.plot(theta, column("edge_share"), "k-o", markersize=3, label="edge total")
    left.set_xlabel("threshold θ")
    left.set_ylabel("share of tokens resolved at the edge")
    left.set_ylim(0, 1.02)
    left.grid(alpha=0.3)
    left.legend(loc="upper right")
    left.set_title("Edge share")

    middle.plot(theta, column("edge_agreement"), "-o", markersize=3, label="edge-resolved tokens")
    middle.plot(theta, column("overall_agreement"), "--", label="all tokens")
    middle.set_xlabel("threshold θ")
    middle.set_ylabel("resolved token == final layer's")
    middle.set_ylim(0, 1.02)
    middle.grid(alpha=0.3)
    middle.legend(loc="lower right")
    middle.set_title("Agreement with the final layer")

    # Accuracies differ by little; the y axis follows the data.
    right.plot(theta, column("accuracy_standalone"), "-s", markersize=3, label="standalone (edge only)")
    right.plot(theta, column("accuracy_collaborative"), "-^", markersize=3, label="collaborative")
    right.plot(theta, column("accuracy_full"), ":", color="black", label="full model")
    right.set_xlabel("threshold θ")
    right.set_ylabel("next-token accuracy")
    right.grid(alpha=0.3)
    right.legend(loc="best", fontsize="small")
    right.set_title("Next-token accuracy")

    fig.tight_layout()
    try:
        fig.savefig(png_path, dpi=120)
    except OSError as e:
        print(f"plot-eval.py: cannot write {png_path}: {e.strerror}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
