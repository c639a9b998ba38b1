#!/usr/bin/env python3
"""Sums the per-kernel GPU times in the log cubecl writes with its profiler and compilation
logger on (see `scripts/gpu_session.sh probe`): kernels grouped by name, heaviest first, and
how many kernels were compiled.

    python3 scripts/profile_summary.py /tmp/cubecl.log [--steps N] [--top 25]

The log holds "[Compiling kernel] NAME" lines, one "| DURATION | NAME" entry per kernel run
(a name with generics can run over several lines), and at each explicit sync a table of the
kernels since the last one. Only the entries after the last table are summed (the run's own
steps; earlier tables come from the throughput probes cubecl runs at start-up). With --steps,
the times and counts are also given per step.
"""
import argparse
import re
from collections import defaultdict

UNITS = {"ns": 1e-6, "µs": 1e-3, "us": 1e-3, "ms": 1.0, "s": 1e3}
ENTRY = re.compile(r"^\| ([0-9.]+)(ns|µs|us|ms|s) +\| (.*)$")


def group(name):
    """A kernel's family: its base name without generics or hash, and the matmul family."""
    base = re.sub(r"_[0-9a-f]{8}$", "", re.split(r"[<{ ]", name.strip())[0])
    family = re.search(r"(\w+MatmulFamily|FusedMatmul\w*)", name)
    return f"{base} {family.group(1)}" if family else base


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("log")
    ap.add_argument("--steps", type=int, default=0, help="steps the logged run took")
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()

    lines = open(args.log, encoding="utf-8", errors="replace").read().split("\n")
    compiled = sum(1 for line in lines if line.startswith("[Compiling kernel]"))
    last_table = max((i for i, line in enumerate(lines) if line.startswith("| Total")), default=-1)
    entries = []  # [ms, name]
    for line in lines[last_table + 1:]:
        m = ENTRY.match(line)
        if m:
            entries.append([float(m.group(1)) * UNITS[m.group(2)], m.group(3)])
        elif entries and line and not line.startswith(("[Compiling", "|")):
            entries[-1][1] += " " + line.strip()
    totals = defaultdict(lambda: [0, 0.0])
    for ms, name in entries:
        t = totals[group(name)]
        t[0] += 1
        t[1] += ms
    gpu = sum(ms for ms, _ in entries)
    per = max(args.steps, 1)
    print(f"{len(entries)} kernel runs, {gpu:.1f} GPU ms summed, {compiled} kernels compiled")
    if args.steps:
        print(f"per step ({args.steps}): {len(entries) / per:.0f} kernel runs, {gpu / per:.1f} GPU ms")
    print(f"\n{'GPU ms' + (' a step' if args.steps else ''):>14} | {'runs':>7} | share | kernel")
    for name, (count, ms) in sorted(totals.items(), key=lambda kv: -kv[1][1])[: args.top]:
        print(f"{ms / per:14.2f} | {count / per:7.1f} | {100 * ms / max(gpu, 1e-9):4.0f}% | {name[:120]}")


if __name__ == "__main__":
    main()
