"""PyTorch's side of examples/conv_layers.rs: the forward and the forward + backward (both
gradients) of each convolution shape of a CIFAR ResNet, timed on their own, best of 5 after a
warm-up, in the same table format, so the two print side by side:

    cargo run --release --example conv_layers
    python3 scripts/torch_conv_layers.py --threads 2
    python3 scripts/torch_conv_layers.py --threads 2 --image 28 --stem-stride 2   # the CPU preset

Channels-last as the reference step uses on the CPU (--memory-format contiguous for NCHW).
"""
import argparse
import time

import torch


def best_ms(f, reps=5):
    f()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f()
        times.append((time.perf_counter() - t0) * 1000)
    return min(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--widths", default="16,32,64,128")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--image", type=int, default=32)
    ap.add_argument("--stem-stride", type=int, default=1)
    ap.add_argument("--memory-format", default="channels_last", choices=["channels_last", "contiguous"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    fmt = torch.channels_last if args.memory_format == "channels_last" else torch.contiguous_format
    widths = [int(w) for w in args.widths.split(",")]
    # (c_in, c_out, input side, kernel, stride), as in examples/conv_layers.rs.
    layers = [(3, widths[0], args.image, 3, args.stem_stride)]
    side = (args.image - 1) // args.stem_stride + 1  # a 3x3 with padding 1 at that stride
    for i, w in enumerate(widths):
        if i > 0:
            layers += [(widths[i - 1], w, side, 3, 2), (widths[i - 1], w, side, 1, 2)]
            side = (side - 1) // 2 + 1
        layers.append((w, w, side, 3, 1))
    print(f"batch {args.batch}, torch {torch.__version__}, {args.memory_format}, {torch.get_num_threads()} threads")
    print("| layer | forward ms | forward + backward ms | GFLOP/s (f+b) |")
    print("|---|---:|---:|---:|")
    for c_in, c_out, side, k, stride in layers:
        pad = k // 2
        out_side = (side + 2 * pad - k) // stride + 1
        conv = torch.nn.Conv2d(c_in, c_out, k, stride, pad, bias=False).to(memory_format=fmt)
        x = torch.randn(args.batch, c_in, side, side).contiguous(memory_format=fmt)
        with torch.no_grad():
            forward = best_ms(lambda: conv(x))
        xg = x.clone().requires_grad_(True)

        def both():
            conv.zero_grad(set_to_none=True)
            xg.grad = None
            conv(xg).sum().backward()

        total = best_ms(both)
        flops = 3 * 2 * args.batch * out_side * out_side * c_in * c_out * k * k
        print(f"| {c_in}→{c_out}, {k}x{k} stride {stride}, {side}x{side} | {forward:.2f} | {total:.2f} | {flops / total / 1e6:.0f} |")


if __name__ == "__main__":
    main()
