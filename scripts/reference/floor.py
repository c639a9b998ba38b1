#!/usr/bin/env python3
"""The floor of a training step: its GEMM work (conv and linear MACs) over the machine's
measured f32 matmul rate.

    python3 scripts/reference/floor.py --batch 64 --image 32 --widths 16,32,64,128 --threads 2
    python3 scripts/reference/floor.py --no-gemm ...     # only count, do not time

Work per step (N images, two views each), counted from the architecture by hooks on every
Conv2d and Linear of ssl_step.py's networks (the same as sslhost's):
  * online network (backbone + projector, + BYOL's predictor): forward MACs x 2N views x 3
    (forward, gradient of the input, gradient of the weights);
  * target network (BYOL, MoCo): forward MACs x 2N (no gradients);
  * loss matmuls: MoCo 2 x (N x 32768 x 256) forward + the same again for the queries'
    gradient; SimCLR (2N)^2 x 256 forward + twice that backward; BYOL's is negligible.
Batch norm, activations, views and optimiser updates are not counted: they are memory-bound,
so the floor is a lower bound (a step cannot be faster than its GEMMs at the GEMM rate).
FLOPs = 2 x MACs.
"""

import argparse
import json
import statistics
import time

import torch
import torch.nn as nn

import ssl_step


def forward_macs(net, image, in_dim=None):
    """MACs per image of one forward of `net` (conv: out elements x in/groups x kh x kw)."""
    total = [0]

    def conv_hook(m, inputs, out):
        total[0] += out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def linear_hook(m, inputs, out):
        total[0] += out.numel() * m.in_features

    handles = []
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    batch = 2
    x = torch.zeros(batch, 3, image, image) if in_dim is None else torch.zeros(batch, in_dim)
    net.eval()
    with torch.no_grad():
        net(x)
    for h in handles:
        h.remove()
    return total[0] / batch


def step_macs(method, depth, widths, batch, image):
    """(total MACs of one step, a breakdown) for a method's step at these settings."""
    m = ssl_step.build(method, depth, widths, image, torch.device("cpu"), channels_last=False)
    online = forward_macs(m["online"], image)
    predictor = forward_macs(m["predictor"], None, ssl_step.PROJ_DIM) if m["predictor"] is not None else 0
    views = 2 * batch
    parts = {"online_fwd_bwd": 3 * views * (online + predictor)}
    if m["target"] is not None:
        parts["target_fwd"] = views * online
    d = ssl_step.PROJ_DIM
    if method == "moco":
        parts["loss"] = 2 * 2 * batch * ssl_step.QUEUE_SIZE * d
    elif method == "simclr":
        parts["loss"] = 3 * (2 * batch) ** 2 * d
    return sum(parts.values()), parts


def gemm_gflops(threads, sizes=(1024, 2048), reps=5):
    """The best median f32 matmul rate (GFLOP/s) over square sizes, on `threads` threads."""
    torch.set_num_threads(threads)
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.mm(a, b)  # warm up
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            torch.mm(a, b)
            times.append(time.perf_counter() - t0)
        best = max(best, 2 * n**3 / statistics.median(times) / 1e9)
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--methods", default="byol,moco,simclr")
    ap.add_argument("--depth", type=int, default=18)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--image", type=int, default=32)
    ap.add_argument("--widths", action="append", help="repeatable; default 16,32,64,128 and 64,128,256,512")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--gflops", type=float, help="use this GEMM rate instead of measuring it")
    ap.add_argument("--no-gemm", action="store_true", help="count only")
    args = ap.parse_args()
    widths_list = args.widths or ["16,32,64,128", "64,128,256,512"]
    rate = None if args.no_gemm else (args.gflops or gemm_gflops(args.threads))
    if rate:
        print(f"f32 GEMM rate: {rate:.1f} GFLOP/s on {args.threads} threads (torch {torch.__version__})")
    print("| method | model | batch | GFLOP/step | floor ms |")
    print("|---|---|---:|---:|---:|")
    rows = []
    for widths in widths_list:
        w = [int(x) for x in widths.split(",")]
        model = f"resnet{args.depth}" if w == [64, 128, 256, 512] else f"resnet{args.depth}[{widths}]"
        for method in args.methods.split(","):
            macs, parts = step_macs(method, args.depth, w, args.batch, args.image)
            gflop = 2 * macs / 1e9
            floor = gflop / rate * 1000 if rate else None
            rows.append(dict(method=method, model=model, batch=args.batch, image=args.image,
                             gflop=gflop, floor_ms=floor, gemm_gflops=rate,
                             parts_gflop={k: 2 * v / 1e9 for k, v in parts.items()}))
            print(f"| {method} | {model} | {args.batch} | {gflop:.1f} | "
                  f"{'n/a' if floor is None else f'{floor:.0f}'} |")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
