#!/usr/bin/env python3
"""One line per result of a bench JSONL file (sslhost's variants and PyTorch's steps).

    python3 scripts/bench_rows.py target/gpu-session/bench.jsonl

An sslhost row that repeats an earlier row's method and variant (another cuDNN ordering, the
warm start, the step replayed through a graph: `capture`) also shows how far its losses are
from that row's, step by step: the same seed and
kernels give the same losses up to the order atomics land in, so a large difference says two
streams raced.
"""
import json
import sys

first = {}
for line in open(sys.argv[1]):
    if not line.strip():
        continue
    r = json.loads(line)
    who = r.get("impl", "?")
    variant = f'{r.get("batch_norm", "")}:{r.get("activations", "")}' if who == "sslhost" else "-"
    tags = " ".join(t for t in (r.get("cudnn_order", ""), "warm" if r.get("warm_start") else "",
                                r.get("capture", "")) if t)
    row = (f'{who:8} {r["method"]:7} {variant:12} {tags:11} median {r["median_ms"]:7.1f} ms '
           f'{r["img_per_s"]:7.0f} img/s  peak {r.get("peak_mem_mb", float("nan")):6.0f} MB  '
           f'first step {r.get("first_step_ms", float("nan")) / 1000:5.1f} s')
    memory = r.get("device_memory")
    if memory:
        row += f'  ({memory["in_use_mb"]:.0f} MB held between steps'
        before = r.get("device_memory_before_backward")
        if before:  # sslhost: a lower bound on its peak
            row += f', {before["in_use_mb"]:.0f} MB in use before the backward'
        if memory.get("peak_in_use_mb") is not None:  # PyTorch: its allocator's own peak
            row += f', {memory["peak_in_use_mb"]:.0f} MB in use at most'
        row += ')'
    key = (who, r["method"], variant)
    losses = r.get("losses")
    if losses and key in first:
        steps = list(zip(losses, first[key]))
        worst = max(abs(a - b) / max(abs(b), 1e-12) for a, b in steps)
        row += f'  losses vs the first such row: {worst:.1e} over {len(steps)} steps'
    elif losses:
        first[key] = losses
    print(row)
