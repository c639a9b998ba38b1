#!/usr/bin/env python3
"""BYOL on Fashion-MNIST in PyTorch, as `sslhost run recipes/byol.rhai` trains it.

The recipe's preset for the device, end to end: BYOL, then the weighted kNN of the backbone's
features (test split against train split), for an equal-epoch quality and wall-time
comparison with the sslhost run. On the CPU the quick preset below; with --device cuda the
recipe's CUDA preset (ResNet-18, 32x32 views, batch 256, projector 4096; bf16 autocast as
sslhost's --precision auto there; give --epochs, the recipe's 100 being the default).

    nice -n 19 python3 scripts/reference/train_byol.py --threads 2      # the full run
    python3 scripts/reference/train_byol.py --limit 512 --epochs 1 --knn-limit 2000   # smoke
    python3 scripts/reference/train_byol.py --device cuda --epochs 2    # against gpu_session.sh quality

It prints the loss every 50 steps, the kNN accuracy and the wall time, and as its last line a
JSON object: {"method": "byol", "knn_top1": .., "epochs": .., "wall_s": .., "img_per_s": ..,
...}. knn_top1 is a fraction (as sslhost's metrics.jsonl); wall_s covers the whole program
(data loading, training, kNN) as the README's wall times do; img_per_s is training images
(not views) per second of the training loop.

Time it on a quiet machine: with --threads 2 on cores that another process keeps busy, torch's
OpenMP threads wait on each other at every op (a smoke test ran at 10 img/s with 2 threads and
at 510 img/s with 1 thread while a benchmark held both cores).

The settings are recipes/byol.rhai's CPU preset (device "cpu"; CUDA_PRESET lists what differs on
"cuda"):
  * data: Fashion-MNIST, grey images expanded to 3 equal channels in [0, 1] (`rgb: true`);
    shuffled every epoch, batch 64, the last partial batch dropped (937 steps an epoch);
  * backbone: ResNet with basic blocks, one per stage, widths 16-32-64-128, 3x3 stem conv of
    stride 2, no max-pool (ssl_step.ResNet with blocks and stem_stride); conv weights
    Kaiming-normal (fan-out), as torchvision and sslhost's layers.rs; linear layers and batch
    norms with PyTorch's defaults (sslhost's too);
  * projector and predictor: Linear-BN-ReLU-Linear, 128 -> 1024 -> 256 and 256 -> 1024 -> 256;
  * loss 2 - 2 cos(p, z), symmetrised and halved; forwards in the recipe's order;
  * LARS (ssl_step.LARS: sslhost's optim/lars.rs) over online + predictor, momentum 0.9,
    eta 0.02, weight decay 1e-5, biases and norms neither decayed nor adapted;
    lr = warmup_cosine(step, total, total / 10, 1, 0) * 1.0 * 64 / 256;
  * target: an EMA copy of online (parameters and batch-norm running statistics), in train
    mode, tau = cosine_schedule(step, total, 0.96, 1);
  * views: stdlib byol_view1_transform / byol_view2_transform at 28 px with min_scale 0.2 and
    the default normalisation (mean 0.5, std 0.5); no blur at 28 px; view 2 solarizes with
    p 0.2 (threshold 0.5); see RecipeView for how they are made;
  * kNN: the backbone in eval mode (running statistics), the eval view (the whole 28x28 image,
    normalised), features L2-normalised, k = 200, T = 0.1, votes exp(sim / T), ties to the
    lowest class, as host/src/train/knn.rs.
"""

import argparse
import copy
import gzip
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ssl_step as ref  # noqa: E402  (the networks, LARS, schedules, EMA and views)

# recipes/byol.rhai, `cfg` with device_kind() == "cpu".
CPU_PRESET = dict(
    size=28,
    min_scale=0.2,
    batch_size=64,
    epochs=3,
    depth=18,
    widths=[16, 32, 64, 128],
    blocks=1,
    stem_stride=2,
    base_lr=1.0,
    tau_base=0.96,
    weight_decay=1e-5,
    proj_hidden=1024,
    proj_dim=256,
    knn_k=200,
    log_every=50,
)
# recipes/byol.rhai, `cfg` with device_kind() == "cuda" (the recipe's 100 epochs; --epochs).
CUDA_PRESET = dict(
    CPU_PRESET,
    size=32,
    min_scale=0.08,
    batch_size=256,
    epochs=100,
    widths=[64, 128, 256, 512],
    blocks=2,
    stem_stride=1,
    tau_base=0.99,
    proj_hidden=4096,
)
KNN_TEMPERATURE = 0.1
KNN_BATCH = 256  # KnnConfig::default().batch_size
MEAN, STD = 0.5, 0.5  # the presets' default normalisation
BYOL_JITTER = (0.4, 0.4, 0.2, 0.1)  # brightness, contrast, saturation, hue

DATA_DIR = "/usr/share/datasets/fashion-mnist"


# ---------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------


def read_idx(path):
    """An idx file (optionally gzipped) as a numpy array: big-endian header, then the data."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    zero, dtype_code, ndim = raw[0] * 256 + raw[1], raw[2], raw[3]
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte idx file (header {raw[:4].hex()})")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: {data.size} bytes of data for shape {shape}")
    return data.reshape(shape)


def idx_path(data_dir, name):
    """`name`.gz in data_dir, else plain `name` (as sslhost's reader takes either)."""
    gz = os.path.join(data_dir, name + ".gz")
    return gz if os.path.exists(gz) else os.path.join(data_dir, name)


def load_split(data_dir, split):
    """Images [N, 28, 28] uint8 and labels [N] int64 of 'train' or 't10k'."""
    images = read_idx(idx_path(data_dir, f"{split}-images-idx3-ubyte"))
    labels = read_idx(idx_path(data_dir, f"{split}-labels-idx1-ubyte"))
    if len(images) != len(labels):
        raise ValueError(f"{split}: {len(images)} images but {len(labels)} labels")
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


def as_rgb(images_u8):
    """uint8 [B, H, W] -> float [B, 3, H, W] in [0, 1] (sslhost's `rgb: true`)."""
    x = images_u8.to(torch.float32).div_(255.0)
    return x.unsqueeze(1).expand(-1, 3, -1, -1).contiguous()


# ---------------------------------------------------------------------------------------
# Views: sslhost's augment/ semantics on top of ssl_step.View
# ---------------------------------------------------------------------------------------


def interpolation_matrices(start, length, total, out):
    """Per-sample [n, out, total] weights taking the window start..start+length of an axis of
    `total` pixels to `out` samples: torch's antialiased bilinear resize (align_corners=False),
    as host/src/augment/resize.rs's resize_weights; plain bilinear with edge clamping when
    upsampling (a crop of at most the image resized to the image's size always upsamples)."""
    scale = (length / out).view(-1, 1, 1)  # [n, 1, 1]
    support = torch.clamp(scale, min=1.0)
    centre = scale * (torch.arange(out, dtype=torch.float32).view(1, out, 1) + 0.5)
    local = torch.arange(total, dtype=torch.float32).view(1, 1, total) - start.view(-1, 1, 1)
    inside = (local >= 0) & (local < length.view(-1, 1, 1))
    w = torch.clamp(1.0 - ((local - centre + 0.5) / support).abs(), min=0.0) * inside
    return w / w.sum(2, keepdim=True)


def resample(x, rows, cols):
    """out_n = A_n x_n B_n^T over the channels: x [n, C, H, W], rows A [n, S, H] and cols
    B [n, S, W] (made on the host, a few KB) -> [n, C, S, S] on x's device."""
    rows, cols = rows.to(x.device), cols.to(x.device)
    return rows.unsqueeze(1) @ x @ cols.transpose(1, 2).unsqueeze(1)


class RecipeView(ref.View):
    """A stdlib BYOL view preset, with sslhost's (torchvision's) crop and jitter semantics.

    ssl_step.View's order and its greyscale, solarize and normalise steps are kept; two steps
    are redone to match sslhost rather than ssl_step's faster approximations:
      * crop + flip: torchvision's box sampling (10 tries, else the central crop clamped to
        the ratio range) and a crop-then-resize by per-sample interpolation matrices (no
        sampling outside the box), instead of one grid_sample over the whole image;
      * colour jitter: a random order of the four adjustments per sample, and samples that are
        not jittered (p 0.2) left untouched, instead of a fixed order for all.
    """

    def __init__(self, size, min_scale, jitter, solarize=0.0, channels_last=True):
        # blur=0: the presets do not blur at 32 px or less (this script's sizes: 28 and 32).
        super().__init__(size, min_scale, jitter, blur=0.0, solarize=solarize, channels_last=channels_last)
        self.ratio = (3 / 4, 4 / 3)

    def crop_boxes(self, n, h, w):
        """(top, left, height, width) float tensors of n boxes, as torchvision's get_params."""
        tries = 10
        area = torch.empty(n, tries).uniform_(*self.scale) * (h * w)
        aspect = torch.exp(torch.empty(n, tries).uniform_(*self.log_ratio))
        cw = torch.round(torch.sqrt(area * aspect))  # round half to even, as Python's round
        ch = torch.round(torch.sqrt(area / aspect))
        fits = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
        first = fits.to(torch.uint8).argmax(1, keepdim=True)
        found = fits.any(1)
        # The fallback: the central crop with the aspect ratio clamped to the range.
        in_ratio = w / h
        if in_ratio < self.ratio[0]:
            fw, fh = w, min(max(round(w / self.ratio[0]), 1), h)
        elif in_ratio > self.ratio[1]:
            fw, fh = min(max(round(h * self.ratio[1]), 1), w), h
        else:
            fw, fh = w, h
        cw = torch.where(found, cw.gather(1, first).squeeze(1), torch.full((n,), float(fw)))
        ch = torch.where(found, ch.gather(1, first).squeeze(1), torch.full((n,), float(fh)))
        top = torch.floor(torch.rand(n) * (h - ch + 1)).clamp_(max=h - ch)
        left = torch.floor(torch.rand(n) * (w - cw + 1)).clamp_(max=w - cw)
        top = torch.where(found, top, torch.full((n,), float((h - fh) // 2)))
        left = torch.where(found, left, torch.full((n,), float((w - fw) // 2)))
        return top, left, ch, cw

    def crop_and_flip(self, x):
        n, c, h, w = x.shape
        top, left, ch, cw = self.crop_boxes(n, h, w)
        rows = interpolation_matrices(top, ch, h, self.size)  # [n, S, H]
        cols = interpolation_matrices(left, cw, w, self.size)  # [n, S, W]
        flip = ref.coin(n, 0.5, "cpu")
        cols = torch.where(flip.view(n, 1, 1), cols.flip(1), cols)
        return resample(x, rows, cols)

    def color_jitter(self, x):
        n = x.shape[0]
        b, c, s, hue = self.jitter
        # Which samples get which adjustment in which order: drawn on the host.
        on = ref.coin(n, 0.8, "cpu")
        factors = [
            ref.uniform(n, max(0.0, 1 - b), 1 + b, "cpu"),
            ref.uniform(n, max(0.0, 1 - c), 1 + c, "cpu"),
            ref.uniform(n, max(0.0, 1 - s), 1 + s, "cpu"),
            ref.uniform(n, -hue, hue, "cpu"),
        ]
        order = torch.argsort(torch.rand(n, 4), dim=1)  # a uniform permutation per sample
        x = x.clone()
        for position in range(4):
            for op in range(4):
                idx = torch.nonzero(on & (order[:, position] == op)).squeeze(1)
                if idx.numel() == 0:
                    continue
                f = factors[op][idx].view(-1, 1, 1, 1).to(x.device)
                idx = idx.to(x.device)
                x[idx] = self.adjust(op, x[idx], f)
        return x

    @staticmethod
    def adjust(op, x, f):
        """torchvision's adjust_brightness / contrast / saturation / hue with factors f."""
        if op == 0:
            return (x * f).clamp_(0, 1)
        if op == 1:
            mean = ref.luma(x).mean((1, 2, 3), keepdim=True)
            return (f * x + (1 - f) * mean).clamp_(0, 1)
        if op == 2:
            return (f * x + (1 - f) * ref.luma(x)).clamp_(0, 1)
        h, s, v = ref.rgb_to_hsv(x)
        return ref.hsv_to_rgb(torch.remainder(h + f.view(-1, 1, 1), 1.0), s, v)


def eval_view(images, size):
    """stdlib eval_transform(size): the whole image resized to size x size (the identity at the
    images' own size), then normalised."""
    n, _, h, w = images.shape
    if (h, w) != (size, size):
        zero, full_h, full_w = torch.zeros(n), torch.full((n,), float(h)), torch.full((n,), float(w))
        images = resample(images, interpolation_matrices(zero, full_h, h, size),
                          interpolation_matrices(zero, full_w, w, size))
    return (images - MEAN) / STD


# ---------------------------------------------------------------------------------------
# Networks
# ---------------------------------------------------------------------------------------


def build_networks(cfg, memory_format):
    backbone = ref.ResNet(cfg["depth"], cfg["widths"], cifar_stem=True,
                          blocks=[cfg["blocks"]] * 4, stem_stride=cfg["stem_stride"])
    for m in backbone.modules():
        if isinstance(m, nn.Conv2d):  # torchvision's ResNet init (sslhost's Conv2dConfig::init)
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    online = nn.Sequential(backbone, ref.mlp(backbone.features, cfg["proj_hidden"], cfg["proj_dim"]))
    predictor = ref.mlp(cfg["proj_dim"], cfg["proj_hidden"], cfg["proj_dim"])
    online = online.to(memory_format=memory_format)
    predictor = predictor.to(memory_format=memory_format)
    target = ref.momentum_copy(online)
    return backbone, online, predictor, target


def embedding_std(z):
    """stdlib/monitors.rhai's embedding_std: mean per-dimension std of unit-normalised rows."""
    u = F.normalize(z.detach(), dim=1)
    return (u - u.mean(0, keepdim=True)).pow(2).mean(0).sqrt().mean().item()


# ---------------------------------------------------------------------------------------
# kNN
# ---------------------------------------------------------------------------------------


@torch.inference_mode()
def embed(encoder, images_u8, size, memory_format, amp):
    out = []
    for start in range(0, len(images_u8), KNN_BATCH):
        x = eval_view(as_rgb(images_u8[start:start + KNN_BATCH]), size).contiguous(memory_format=memory_format)
        with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=amp):
            f = encoder(x)
        out.append(F.normalize(f.float(), dim=1))
    return torch.cat(out)


@torch.inference_mode()
def knn_top1(train_f, train_y, test_f, test_y, k, temperature, classes):
    """host/src/train/knn.rs: each test row's k most similar train rows vote exp(sim / T)."""
    k = min(k, len(train_f))
    correct = 0
    for start in range(0, len(test_f), KNN_BATCH):
        sim = test_f[start:start + KNN_BATCH] @ train_f.t()
        top_sim, top_idx = sim.topk(k, dim=1)
        weights = torch.exp(top_sim.double() / temperature)
        scores = torch.zeros(len(sim), classes, dtype=torch.float64, device=sim.device)
        scores.scatter_add_(1, train_y[top_idx], weights)
        correct += (scores.argmax(1) == test_y[start:start + KNN_BATCH]).sum().item()
    return correct / len(test_f)


# ---------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------


def main():
    t_start = time.perf_counter()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                    help="also picks the recipe's preset for that device (as device_kind() does)")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--epochs", type=int, help="default: the preset's (CPU 3, CUDA 100)")
    ap.add_argument("--batch", type=int, help="default: the preset's (CPU 64, CUDA 256)")
    ap.add_argument("--limit", type=int, default=0, help="train on the first N training images (0: all)")
    ap.add_argument("--knn-limit", type=int, default=0,
                    help="kNN on the first N images of the training images used and of the test split (0: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", default=DATA_DIR, help="folder of the Fashion-MNIST idx .gz files")
    ap.add_argument("--log-every", type=int, default=CPU_PRESET["log_every"])  # CUDA's is the same
    ap.add_argument("--memory-format", default="auto", choices=["auto", "channels_last", "contiguous"],
                    help="auto: as ssl_step.py (channels_last when every stage is >= 16 channels)")
    args = ap.parse_args()
    preset = CUDA_PRESET if args.device == "cuda" else CPU_PRESET
    args.epochs = preset["epochs"] if args.epochs is None else args.epochs
    args.batch = preset["batch_size"] if args.batch is None else args.batch
    if args.epochs < 1 or args.batch < 1 or args.limit < 0 or args.knn_limit < 0:
        ap.error("--epochs and --batch must be >= 1, --limit and --knn-limit >= 0")

    cfg = dict(preset, batch_size=args.batch, epochs=args.epochs)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: torch sees no GPU")
    amp = device.type == "cuda"  # bf16 products, as sslhost's --precision auto there
    torch.backends.cudnn.benchmark = True
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if args.memory_format == "auto":
        channels_last = min(cfg["widths"]) >= 16
    else:
        channels_last = args.memory_format == "channels_last"
    fmt = torch.channels_last if channels_last else torch.contiguous_format

    train_x, train_y = load_split(args.data, "train")
    test_x, test_y = load_split(args.data, "t10k")
    if args.limit:
        train_x, train_y = train_x[:args.limit], train_y[:args.limit]
    # The uint8 images live on the device (47 MB for the train split); batches are gathered there.
    train_x, train_y, test_x, test_y = (t.to(device) for t in (train_x, train_y, test_x, test_y))
    classes = int(max(train_y.max(), test_y.max())) + 1
    n = len(train_x)
    steps_per_epoch = n // cfg["batch_size"]  # drop_last
    if steps_per_epoch == 0:
        ap.error(f"--batch {cfg['batch_size']} is larger than the {n} training images")
    total = cfg["epochs"] * steps_per_epoch
    warmup = total // 10  # Rhai's integer division in lr()
    lr_scale = cfg["base_lr"] * cfg["batch_size"] / 256

    backbone, online, predictor, target = build_networks(cfg, fmt)
    backbone, online, predictor, target = (m.to(device) for m in (backbone, online, predictor, target))
    opt = ref.LARS([*online.parameters(), *predictor.parameters()], momentum=0.9,
                   weight_decay=cfg["weight_decay"], eta=0.02)
    view1 = RecipeView(cfg["size"], cfg["min_scale"], BYOL_JITTER, channels_last=channels_last)
    view2 = RecipeView(cfg["size"], cfg["min_scale"], BYOL_JITTER, solarize=0.2, channels_last=channels_last)
    shuffle = torch.Generator().manual_seed(args.seed)
    params = sum(p.numel() for p in backbone.parameters())
    print(f"BYOL: backbone {params} params, {steps_per_epoch} steps per epoch, {cfg['epochs']} epochs, "
          f"batch {cfg['batch_size']}, {n} training images, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, {'channels_last' if channels_last else 'NCHW'}, {device}"
          f"{' (bf16 autocast)' if amp else ''}", flush=True)

    t_train = time.perf_counter()
    step = 0
    for epoch in range(cfg["epochs"]):
        order = torch.randperm(n, generator=shuffle).to(device)
        for b in range(steps_per_epoch):
            images = as_rgb(train_x[order[b * cfg["batch_size"]:(b + 1) * cfg["batch_size"]]])
            x1, x2 = view1(images), view2(images)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
                h1 = online(x1)
                p1 = predictor(h1)
                p2 = predictor(online(x2))
                with torch.no_grad():
                    z1 = target(x1)
                    z2 = target(x2)
            loss = 0.5 * (ref.byol_loss(p1.float(), z2.float()) + ref.byol_loss(p2.float(), z1.float()))
            rate = ref.warmup_cosine(step, total, warmup, 1.0, 0.0) * lr_scale
            tau = ref.cosine_schedule(step, total, cfg["tau_base"], 1.0)
            for group in opt.param_groups:
                group["lr"] = rate
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            ref.update_momentum(online, target, tau)
            value = loss.item()
            if not math.isfinite(value):
                raise SystemExit(f"step {step}: the loss is {value}")
            if step % args.log_every == 0:
                elapsed = time.perf_counter() - t_train
                rate_img = (step + 1) * cfg["batch_size"] / elapsed
                print(f"step {step:5d}/{total} epoch {epoch}  loss {value:.4f}  lr {rate:.4f}  "
                      f"tau {tau:.4f}  embedding_std {embedding_std(h1):.4f}  "
                      f"{elapsed:.0f} s, {rate_img:.1f} img/s", flush=True)
            step += 1
    train_s = time.perf_counter() - t_train
    img_per_s = total * cfg["batch_size"] / train_s
    print(f"trained {total} steps in {train_s:.1f} s ({img_per_s:.1f} img/s)", flush=True)

    t_knn = time.perf_counter()
    knn_train_x, knn_train_y = train_x, train_y
    knn_test_x, knn_test_y = test_x, test_y
    if args.knn_limit:
        knn_train_x, knn_train_y = knn_train_x[:args.knn_limit], knn_train_y[:args.knn_limit]
        knn_test_x, knn_test_y = knn_test_x[:args.knn_limit], knn_test_y[:args.knn_limit]
    encoder = copy.deepcopy(backbone).eval()  # running statistics, as the evaluation copy
    train_f = embed(encoder, knn_train_x, cfg["size"], fmt, amp)
    test_f = embed(encoder, knn_test_x, cfg["size"], fmt, amp)
    acc = knn_top1(train_f, knn_train_y, test_f, knn_test_y, cfg["knn_k"], KNN_TEMPERATURE, classes)
    knn_s = time.perf_counter() - t_knn
    wall_s = time.perf_counter() - t_start
    print(f"kNN top-1 (k={cfg['knn_k']}, T={KNN_TEMPERATURE}, {len(knn_test_x)} test against "
          f"{len(knn_train_x)} train): {100 * acc:.2f}%  ({knn_s:.1f} s)")
    print(f"wall time {wall_s:.1f} s ({wall_s / 60:.1f} min): training {train_s:.1f} s, kNN {knn_s:.1f} s")
    print(json.dumps(dict(
        method="byol", knn_top1=acc, epochs=cfg["epochs"], wall_s=round(wall_s, 2),
        img_per_s=round(img_per_s, 2), train_s=round(train_s, 2), knn_s=round(knn_s, 2),
        steps=total, batch=cfg["batch_size"], train_images=n, knn_train=len(knn_train_x),
        knn_test=len(knn_test_x), threads=torch.get_num_threads(), seed=args.seed,
        channels_last=channels_last, impl="pytorch", torch=torch.__version__, device=str(device),
    )))


if __name__ == "__main__":
    main()
