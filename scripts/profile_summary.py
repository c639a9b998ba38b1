#!/usr/bin/env python3
"""Reads the log cubecl writes with its profiler and compilation logger on (see
`scripts/gpu_session.sh probe`) and prints, for each device sync (one per training step), how
many kernels ran, their summed GPU time and how many kernels were compiled; then the last
sync's heaviest kernels.

    python3 scripts/profile_summary.py /tmp/cubecl.log [TOP]

The log holds three kinds of line: "[Compiling kernel] NAME", one "| DURATION | NAME" line per
kernel run, and at every sync a table summing the kernels since the last one.
"""
import re
import sys

UNITS = {"ns": 1e-6, "µs": 1e-3, "us": 1e-3, "ms": 1.0, "s": 1e3}
DURATION = re.compile(r"^([0-9.]+)(ns|µs|us|ms|s)$")


def ms(text):
    m = DURATION.match(text.strip())
    return float(m.group(1)) * UNITS[m.group(2)] if m else None


def main():
    path = sys.argv[1]
    top = int(sys.argv[2]) if len(sys.argv) > 2 else 25
    syncs = []  # (kernels run, GPU ms, kernels compiled, the sync's table rows)
    runs, gpu, compiled, table = 0, 0.0, 0, []
    for line in open(path, encoding="utf-8", errors="replace"):
        line = line.rstrip("\n")
        if line.startswith("[Compiling kernel]"):
            compiled += 1
            continue
        if not line.startswith("| "):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if len(cells) == 2 and ms(cells[0]) is not None:
            runs += 1
            gpu += ms(cells[0])
        elif len(cells) == 4 and cells[0] == "Total":
            syncs.append((runs, gpu, compiled, table))
            runs, gpu, compiled, table = 0, 0.0, 0, []
        elif len(cells) == 4 and cells[0] != "Name":
            table.append(cells)
    if runs or compiled:
        syncs.append((runs, gpu, compiled, table))

    print("sync | kernels run | GPU ms (summed) | kernels compiled")
    for i, (r, g, c, _) in enumerate(syncs):
        print(f"{i:4} | {r:11} | {g:15.2f} | {c:16}")
    last = next((s for s in reversed(syncs) if s[3]), None)
    if last is None:
        print("no profile table in the log")
        return
    print(f"\nthe last step's heaviest kernels (of {len(last[3])} distinct):")
    print("GPU ms | runs | share | kernel")
    for name, duration, count, ratio in last[3][:top]:
        d = ms(duration)
        print(f"{d if d is not None else float('nan'):8.3f} | {count:>4} | {ratio:>5} | {name[:150]}")


if __name__ == "__main__":
    main()
