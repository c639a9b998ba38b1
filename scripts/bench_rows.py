#!/usr/bin/env python3
"""One line per result of a bench JSONL file (sslhost's variants and PyTorch's steps).

    python3 scripts/bench_rows.py target/gpu-session/bench.jsonl
"""
import json
import sys

for line in open(sys.argv[1]):
    if not line.strip():
        continue
    r = json.loads(line)
    who = r.get("impl", "?")
    variant = f'{r.get("batch_norm", "")}:{r.get("activations", "")}' if who == "sslhost" else "-"
    print(f'{who:8} {r["method"]:7} {variant:12} median {r["median_ms"]:7.1f} ms '
          f'{r["img_per_s"]:7.0f} img/s  peak {r.get("peak_mem_mb", float("nan")):6.0f} MB  '
          f'first step {r.get("first_step_ms", float("nan")) / 1000:5.1f} s')
