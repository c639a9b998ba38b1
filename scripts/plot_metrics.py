#!/usr/bin/env python3
"""The matplotlib reference for curves.png: the same panels from the same metrics.jsonl.

    python3 scripts/plot_metrics.py runs/byol-.../metrics.jsonl -o curves-matplotlib.png

Panels as sslhost chooses them (loss, lr, tau, knn*, then other numbers logged at two steps
or more), two a row; noisy metrics smoothed with TensorBoard's debiased EMA (weight 0.6)
over the faint raw values; lr on a log axis when it spans a decade or more. Needs pandas and
matplotlib (pip install pandas matplotlib).
"""

import argparse
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

FIRST = ["loss", "lr", "tau"]
NOT_CURVES = {"step", "time", "epoch", "wall_s", "img_per_s"}
SCHEDULES = {"lr", "tau"}
FEW_POINTS = 30


def smooth(values, weight):
    """TensorBoard's smoothing: an EMA whose start is divided by 1 - weight^n."""
    out, last, n = [], 0.0, 0
    for v in values:
        last = last * weight + (1 - weight) * v
        n += 1
        out.append(last / (1 - weight**n))
    return out


def panels(frame):
    def rank(name):
        if name in FIRST:
            return FIRST.index(name)
        return len(FIRST) if name.startswith("knn") else len(FIRST) + 1

    names = []
    for col in frame.columns:
        if col in NOT_CURVES or not pd.api.types.is_numeric_dtype(frame[col]):
            continue
        finite = frame[col].dropna()
        if len(finite) >= (1 if rank(col) <= len(FIRST) else 2):
            names.append(col)
    return sorted(names, key=lambda n: (rank(n), n))[:16]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("metrics")
    parser.add_argument("-o", "--output", default="curves-matplotlib.png")
    parser.add_argument("--smoothing", type=float, default=0.6)
    args = parser.parse_args()

    frame = pd.read_json(args.metrics, lines=True)
    # A resumed run logs its replayed steps again: keep each step's last value.
    frame = frame.groupby("step", as_index=False).last().sort_values("step")
    names = panels(frame)
    cols = min(2, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.8 * cols, 3.0 * rows), dpi=100, squeeze=False)
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    for ax, name in zip(axes.flat, names):
        s = frame[["step", name]].dropna()
        steps, values = s["step"].tolist(), s[name].tolist()
        ax.set_title(f"{name}   (last {values[-1]:.4g})", fontsize=11)
        ax.set_xlabel("step", fontsize=9, color="0.4")
        ax.grid(True, color="0.9")
        positive = [v for v in values if v > 0]
        if name == "lr" and positive and max(positive) >= 10 * min(positive):
            ax.set_yscale("log")
        if len(values) <= FEW_POINTS:
            ax.plot(steps, values, "o-", color="C0", markersize=4, linewidth=1)
        elif args.smoothing > 0 and name not in SCHEDULES:
            ax.plot(steps, values, color="C0", alpha=0.3, linewidth=1)
            ax.plot(steps, smooth(values, args.smoothing), color="C0", linewidth=2)
        else:
            ax.plot(steps, values, color="C0", linewidth=1)
    fig.tight_layout()
    fig.savefig(args.output)
    print(args.output)


if __name__ == "__main__":
    main()
