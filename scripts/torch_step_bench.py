#!/usr/bin/env python3
"""PyTorch reference benchmark for one ResNet training step on CPU.

This is the yardstick that sslhost's Rust/Burn step time is compared against.
One "training step" is:

    forward -> cross-entropy loss -> backward -> SGD(momentum=0.9) step

on a random batch of shape (batch, 3, image, image) with random labels.

Models (--model):
  resnet18        torchvision resnet18(num_classes=10). With --cifar-stem the
                  7x7/stride-2 conv1 is replaced by a 3x3/stride-1 conv and the
                  max-pool is removed (the usual CIFAR adaptation).
  small           A small ResNet written here: BasicBlock stages of width
                  16-32-64-128 (one block per stage), always with a CIFAR stem.

A second mode, --tiny-ops N, times N tiny tensor ops (a = a + b on 4-element
tensors, no autograd) and prints ns/op, to gauge per-op framework overhead.

Examples:
  python scripts/torch_step_bench.py --model resnet18 --cifar-stem
  python scripts/torch_step_bench.py --model small --json
  python scripts/torch_step_bench.py --tiny-ops 100000
"""

import argparse
import json
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


# ---------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------

class BasicBlock(nn.Module):
    """Standard ResNet basic block: two 3x3 convs with BN, plus a shortcut.

    The shortcut is a 1x1 strided conv + BN when the shape changes, identity
    otherwise (same layout as torchvision's BasicBlock).
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_ch),
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class SmallResNet(nn.Module):
    """Small CIFAR-style ResNet: stem 3x3 conv(16) -> stages 16/32/64/128.

    Each stage holds `blocks_per_stage` BasicBlocks; the first block of every
    stage after the first downsamples with stride 2 (32->16->8->4 at 32x32
    input). Ends with global average pooling and a linear classifier.
    """

    def __init__(self, num_classes: int = 10, widths=(16, 32, 64, 128),
                 blocks_per_stage: int = 1) -> None:
        super().__init__()
        # CIFAR stem: 3x3 stride 1, no max-pool.
        self.stem = nn.Sequential(
            nn.Conv2d(3, widths[0], 3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        layers = []
        in_ch = widths[0]
        for i, w in enumerate(widths):
            for j in range(blocks_per_stage):
                stride = 2 if (i > 0 and j == 0) else 1
                layers.append(BasicBlock(in_ch, w, stride))
                in_ch = w
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def build_model(name: str, cifar_stem: bool, num_classes: int,
                small_blocks: int) -> tuple[nn.Module, str]:
    """Return (model, descriptive label used in the output)."""
    if name == "resnet18":
        from torchvision.models import resnet18
        model = resnet18(num_classes=num_classes)
        if cifar_stem:
            # Replace the ImageNet stem (7x7 s2 conv + 3x3 s2 max-pool).
            model.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
            model.maxpool = nn.Identity()
            return model, "resnet18-cifar"
        return model, "resnet18-imagenet"
    if name == "small":
        # The small model always uses the CIFAR stem.
        return SmallResNet(num_classes, blocks_per_stage=small_blocks), \
            f"small-resnet-16-32-64-128x{small_blocks}"
    raise ValueError(f"unknown model {name!r}")


# ---------------------------------------------------------------------------
# Benchmarks
# ---------------------------------------------------------------------------

def bench_step(args: argparse.Namespace) -> None:
    torch.manual_seed(0)
    model, label = build_model(args.model, args.cifar_stem, args.num_classes,
                               args.small_blocks)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)

    # Fixed random batch; data generation is excluded from timing.
    x = torch.randn(args.batch, 3, args.image, args.image)
    y = torch.randint(0, args.num_classes, (args.batch,))

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        opt.step()
        # .item() forces completion of all queued work (a no-op sync on CPU,
        # but keeps the timing honest if run on another device).
        return loss.item()

    for _ in range(args.warmup):
        step()

    times_ms = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        times_ms.append((time.perf_counter() - t0) * 1e3)

    median_ms = statistics.median(times_ms)
    mean_ms = statistics.fmean(times_ms)
    img_per_s = args.batch / (median_ms / 1e3)

    if args.json:
        print(json.dumps({
            "model": label,
            "batch": args.batch,
            "image": args.image,
            "threads": torch.get_num_threads(),
            "median_ms": round(median_ms, 3),
            "mean_ms": round(mean_ms, 3),
            "min_ms": round(min(times_ms), 3),  # extra: robust under load
            "img_per_s": round(img_per_s, 2),
        }))
    else:
        nparams = sum(p.numel() for p in model.parameters())
        print(f"model={label} params={nparams} batch={args.batch} "
              f"image={args.image} threads={torch.get_num_threads()} "
              f"torch={torch.__version__}")
        print(f"steps={args.steps} (warmup {args.warmup})  "
              f"min={min(times_ms):.1f} ms  max={max(times_ms):.1f} ms")
        print(f"median {median_ms:.1f} ms/step  mean {mean_ms:.1f} ms/step  "
              f"{img_per_s:.1f} img/s (from median)")


def bench_tiny_ops(args: argparse.Namespace) -> None:
    """Time N iterations of `a = a + b` on 4-element float tensors.

    Measures per-op dispatch overhead (Python -> ATen -> kernel), not compute.
    """
    n = args.tiny_ops
    a = torch.zeros(4)
    b = torch.ones(4)
    for _ in range(min(n, 1000)):  # warm-up
        a = a + b
    a = torch.zeros(4)
    t0 = time.perf_counter()
    for _ in range(n):
        a = a + b
    dt = time.perf_counter() - t0
    assert float(a[0]) == float(n)  # make sure the work actually happened
    ns_per_op = dt * 1e9 / n
    if args.json:
        print(json.dumps({"mode": "tiny-ops", "ops": n,
                          "threads": torch.get_num_threads(),
                          "total_ms": round(dt * 1e3, 3),
                          "ns_per_op": round(ns_per_op, 1)}))
    else:
        print(f"tiny-ops: {n} x (a = a + b, 4 elems) in {dt * 1e3:.1f} ms "
              f"-> {ns_per_op:.0f} ns/op  threads={torch.get_num_threads()}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["resnet18", "small"], default="resnet18")
    p.add_argument("--cifar-stem", action="store_true",
                   help="resnet18 only: 3x3 s1 conv1 and no max-pool")
    p.add_argument("--small-blocks", type=int, default=1,
                   help="BasicBlocks per stage for --model small (default 1)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--image", type=int, default=32, help="square input size")
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--json", action="store_true", help="print one JSON line")
    p.add_argument("--tiny-ops", type=int, default=0, metavar="N",
                   help="instead of a training step, time N tiny tensor ops")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    if args.tiny_ops > 0:
        bench_tiny_ops(args)
    else:
        bench_step(args)


if __name__ == "__main__":
    main()
