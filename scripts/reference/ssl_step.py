#!/usr/bin/env python3
"""PyTorch reference of the training steps `sslhost bench` times: BYOL, MoCo v2, SimCLR.

The same networks, heads, losses, optimisers, views and hyperparameters as recipes/*.rhai
(their CUDA settings) and scripts/bench_step.rhai, written for speed: channels_last,
cudnn.benchmark, bf16 autocast on CUDA, views made on the device in a few batched ops, foreach
optimiser and EMA updates, and no host sync inside a step except reading the loss at its end.

    python3 scripts/reference/ssl_step.py --device cpu --method byol --batch 64 \\
        --widths 16,32,64,128 --threads 2

The last line of stdout is the result as JSON (median_ms, img_per_s, peak_mem_mb, ...), with
the same field names as `sslhost bench`.

What is the same as sslhost:
  * ResNet in torchvision's layout with the CIFAR stem (3x3 conv, stride 1, no max-pool) and
    the given stage widths; heads Linear-BN-ReLU-Linear (BYOL projector and predictor, SimCLR
    projector; hidden 4096 for BYOL, 2048 for the others, output 256) and Linear-ReLU-Linear
    (MoCo v2 projector, hidden 2048).
  * Losses: BYOL 2 - 2 cos, symmetrised; MoCo InfoNCE against a 32768-key queue, T = 0.2,
    symmetrised; SimCLR NT-Xent over the 2N views, T = 0.2.
  * Optimisers: LARS as BYOL's reference (and sslhost's optim/lars.rs): d = g + wd p,
    d *= eta ||p|| / ||d|| (1 when a norm is 0), buf = mu buf + d, p -= lr buf; rank-1
    parameters (biases, norms) get neither decay nor adaptation; eta 0.02, mu 0.9, wd 1e-5.
    MoCo: SGD momentum 0.9, weight decay 1e-4 (PyTorch semantics). Learning rate
    warmup_cosine(base_lr * batch / 256); EMA tau cosine from 0.99; the target's parameters
    and batch-norm running statistics follow the EMA.
  * Views: random resized crop (scale [0.08, 1], MoCo [0.2, 1]; ratio [3/4, 4/3]), flip 0.5,
    colour jitter with p 0.8 (BYOL 0.4/0.4/0.2/0.1, SimCLR 0.8/0.8/0.8/0.2, MoCo 0.4/0.4/0.4/0.1),
    greyscale 0.2, Gaussian blur (only above 32 px, as the stdlib presets), solarize (BYOL's
    second view, p 0.2), normalize with mean 0.5 and std 0.5.

What differs (same kind of work, not the same numbers):
  * Crop and flip are one affine grid_sample (bilinear, no antialiasing) per view; the crop
    box is drawn with 10 vectorised tries, as torchvision's rejection loop.
  * Colour jitter applies brightness, contrast, saturation, hue in a fixed order to every
    sample (samples without jitter get the identity factors); torchvision and sslhost draw a
    random order per sample and skip the unjittered ones.
  * The MoCo queue is a ring buffer (one slice assignment per step) and is not re-normalised
    in the loss (its keys are stored normalised, as in MoCo's code); sslhost's stdlib
    info_nce normalises the queue on every call and its queue is rebuilt by a cat.
  * On CUDA the forwards and losses run under bf16 autocast (sslhost's --precision auto: its
    convolutions and linear layers in bf16, batch norm and losses in f32).
  * The loss is read (the one host sync) after the update; sslhost reads it inside opt.step,
    before the backward.
"""

import argparse
import copy
import json
import math
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

# ---------------------------------------------------------------------------------------
# Networks
# ---------------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """Two 3x3 convs with batch norm and a shortcut (1x1 conv + BN when the shape changes)."""

    expansion = 1

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.downsample = None
        if stride != 1 or cin != width:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, width, 1, stride, bias=False), nn.BatchNorm2d(width)
            )

    def forward(self, x):
        shortcut = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        return F.relu(out + shortcut, inplace=True)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (strided, torchvision's v1.5) -> 1x1 with 4x expansion."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        out = width * 4
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.downsample = None
        if stride != 1 or cin != out:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, out, 1, stride, bias=False), nn.BatchNorm2d(out)
            )

    def forward(self, x):
        shortcut = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = F.relu(self.bn2(self.conv2(out)), inplace=True)
        out = self.bn3(self.conv3(out))
        return F.relu(out + shortcut, inplace=True)


LAYOUTS = {18: (BasicBlock, [2, 2, 2, 2]), 34: (BasicBlock, [3, 4, 6, 3]), 50: (Bottleneck, [3, 4, 6, 3])}


class ResNet(nn.Module):
    """torchvision's ResNet without the classifier; CIFAR stem: 3x3 conv stride 1, no max-pool.

    `blocks` (four counts) replaces the depth's blocks per stage, as sslhost's
    `resnet(depth, #{ blocks })` (the depth still picks basic or bottleneck blocks);
    `stem_stride` is the stride of the CIFAR stem's conv (sslhost's `stem_stride`).
    """

    def __init__(self, depth: int, widths, cifar_stem: bool = True, blocks=None, stem_stride: int = 1) -> None:
        super().__init__()
        block, counts = LAYOUTS[depth]
        if blocks is not None:
            counts = list(blocks)
        if len(counts) != 4 or min(counts) < 1 or stem_stride < 1:
            raise ValueError(f"resnet: blocks must be four counts >= 1 and stem_stride >= 1, "
                             f"got {counts} and {stem_stride}")
        if cifar_stem:
            self.conv1 = nn.Conv2d(3, widths[0], 3, stem_stride, 1, bias=False)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(3, widths[0], 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.bn1 = nn.BatchNorm2d(widths[0])
        cin = widths[0]
        stages = []
        for i, (width, count) in enumerate(zip(widths, counts)):
            blocks = []
            for j in range(count):
                blocks.append(block(cin, width, 2 if i > 0 and j == 0 else 1))
                cin = width * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.features = cin

    def forward(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x)), inplace=True))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


def mlp(din: int, hidden: int, dout: int, batch_norm: bool = True) -> nn.Sequential:
    """Linear -> (BN) -> ReLU -> Linear, as stdlib/heads.rhai's mlp([din, hidden, dout])."""
    layers = [nn.Linear(din, hidden)]
    if batch_norm:
        layers.append(nn.BatchNorm1d(hidden))
    layers += [nn.ReLU(inplace=True), nn.Linear(hidden, dout)]
    return nn.Sequential(*layers)


# ---------------------------------------------------------------------------------------
# Views, batched on the device
# ---------------------------------------------------------------------------------------

LUMA = (0.2989, 0.587, 0.114)


def luma(x):
    """[N, 3, H, W] -> [N, 1, H, W] (ITU-R 601-2, as torchvision)."""
    return (LUMA[0] * x[:, 0:1] + LUMA[1] * x[:, 1:2] + LUMA[2] * x[:, 2:3])


def uniform(n, low, high, device):
    return torch.empty(n, device=device).uniform_(low, high)


def coin(n, p, device):
    return torch.rand(n, device=device) < p


def rgb_to_hsv(x):
    r, g, b = x.unbind(1)
    maxc, minc = x.amax(1), x.amin(1)
    delta = maxc - minc
    s = delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc))
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(delta > 0, torch.remainder(h / 6.0, 1.0), torch.zeros_like(h))
    return h, s, maxc


def hsv_to_rgb(h, s, v):
    n = torch.tensor([5.0, 3.0, 1.0], device=h.device).view(1, 3, 1, 1)
    k = torch.remainder(n + 6.0 * h.unsqueeze(1), 6.0)
    ramp = torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0)
    v, s = v.unsqueeze(1), s.unsqueeze(1)
    return v - v * s * ramp


class View:
    """One view preset of stdlib/transforms.rhai as a handful of batched ops."""

    def __init__(self, size, min_scale, jitter, blur=0.0, solarize=0.0, channels_last=True):
        self.size = size
        self.scale = (min_scale, 1.0)
        self.log_ratio = (math.log(3 / 4), math.log(4 / 3))
        self.jitter = jitter  # (brightness, contrast, saturation, hue)
        self.blur = blur if size > 32 else 0.0  # the presets blur only above 32 px
        self.solarize = solarize
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def crop_and_flip(self, x):
        n, _, h, w = x.shape
        dev = x.device
        tries = 10
        area = torch.empty(n, tries, device=dev).uniform_(*self.scale) * (h * w)
        ratio = torch.exp(torch.empty(n, tries, device=dev).uniform_(*self.log_ratio))
        cw = torch.round(torch.sqrt(area * ratio))
        ch = torch.round(torch.sqrt(area / ratio))
        ok = (cw >= 1) & (cw <= w) & (ch >= 1) & (ch <= h)
        first = ok.to(torch.uint8).argmax(1, keepdim=True)  # the first try that fits
        found = ok.any(1)
        cw = torch.where(found, cw.gather(1, first).squeeze(1), torch.full_like(found, w, dtype=x.dtype))
        ch = torch.where(found, ch.gather(1, first).squeeze(1), torch.full_like(found, h, dtype=x.dtype))
        left = torch.floor(torch.rand(n, device=dev) * (w - cw + 1))
        top = torch.floor(torch.rand(n, device=dev) * (h - ch + 1))
        flip = torch.where(coin(n, 0.5, dev), -1.0, 1.0)
        # Output [-1, 1] -> the box's pixel span in normalised input coordinates.
        theta = torch.zeros(n, 2, 3, device=dev, dtype=x.dtype)
        theta[:, 0, 0] = cw / w * flip
        theta[:, 0, 2] = (2 * left + cw) / w - 1
        theta[:, 1, 1] = ch / h
        theta[:, 1, 2] = (2 * top + ch) / h - 1
        grid = F.affine_grid(theta, [n, x.shape[1], self.size, self.size], align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def color_jitter(self, x):
        n, dev = x.shape[0], x.device
        b, c, s, hue = self.jitter
        on = coin(n, 0.8, dev).view(n, 1, 1, 1)
        one = torch.ones(n, 1, 1, 1, device=dev)

        def factor(strength):
            f = uniform(n, max(0.0, 1 - strength), 1 + strength, dev).view(n, 1, 1, 1)
            return torch.where(on, f, one)

        x = (x * factor(b)).clamp_(0, 1)
        cf = factor(c)
        x = (cf * x + (1 - cf) * luma(x).mean((1, 2, 3), keepdim=True)).clamp_(0, 1)
        sf = factor(s)
        x = (sf * x + (1 - sf) * luma(x)).clamp_(0, 1)
        shift = torch.where(on.view(n, 1, 1), uniform(n, -hue, hue, dev).view(n, 1, 1), 0.0)
        h, sat, v = rgb_to_hsv(x)
        return hsv_to_rgb(torch.remainder(h + shift, 1.0), sat, v)

    def gaussian_blur(self, x):
        n, c, h, w = x.shape
        dev = x.device
        k = max(3, int(0.1 * min(h, w)) // 2 * 2 + 1)
        sigma = uniform(n, 0.1, 2.0, dev).view(n, 1)
        taps = torch.arange(k, device=dev, dtype=x.dtype) - k // 2
        kernel = torch.softmax(-(taps.view(1, k) ** 2) / (2 * sigma**2), dim=1)  # [n, k]
        kernel = kernel.repeat_interleave(c, 0)  # one per (sample, channel)
        y = x.reshape(1, n * c, h, w)
        y = F.conv2d(F.pad(y, (k // 2, k // 2, 0, 0), mode="reflect"), kernel.view(n * c, 1, 1, k), groups=n * c)
        y = F.conv2d(F.pad(y, (0, 0, k // 2, k // 2), mode="reflect"), kernel.view(n * c, 1, k, 1), groups=n * c)
        return torch.where(coin(n, self.blur, dev).view(n, 1, 1, 1), y.view(n, c, h, w), x)

    @torch.no_grad()
    def __call__(self, images):
        n, dev = images.shape[0], images.device
        x = self.crop_and_flip(images)
        x = self.color_jitter(x)
        x = torch.where(coin(n, 0.2, dev).view(n, 1, 1, 1), luma(x).expand_as(x), x)
        if self.blur > 0:
            x = self.gaussian_blur(x)
        if self.solarize > 0:
            flagged = coin(n, self.solarize, dev).view(n, 1, 1, 1)
            x = torch.where(flagged & (x >= 0.5), 1.0 - x, x)
        x = (x - 0.5) / 0.5
        return x.contiguous(memory_format=self.memory_format)


# ---------------------------------------------------------------------------------------
# Losses, optimisers, schedules, EMA
# ---------------------------------------------------------------------------------------


def byol_loss(p, z):
    return 2 - 2 * (F.normalize(p, dim=1) * F.normalize(z, dim=1)).sum(1).mean()


def info_nce(q, k, queue, temperature):
    q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
    positive = (q * k).sum(1, keepdim=True)
    negatives = q @ queue.t()  # the queue holds normalised keys
    logits = torch.cat([positive, negatives], 1) / temperature
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


def nt_xent(z1, z2, temperature):
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    logits = (z @ z.t()) / temperature
    logits.fill_diagonal_(float("-inf"))
    partners = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, partners)


class LARS(torch.optim.Optimizer):
    """LARS as BYOL's reference and sslhost's optim/lars.rs, with foreach kernels."""

    def __init__(self, params, lr=0.1, momentum=0.9, weight_decay=0.0, eta=0.001):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            adapted = [p for p in params if p.ndim > 1]  # biases and norms are excluded
            if adapted:
                grads = [p.grad for p in adapted]
                if group["weight_decay"] != 0:
                    torch._foreach_add_(grads, adapted, alpha=group["weight_decay"])
                pn = torch.stack(torch._foreach_norm(adapted))
                dn = torch.stack(torch._foreach_norm(grads))
                trust = torch.where((pn > 0) & (dn > 0), group["eta"] * pn / dn.clamp_min(1e-30), 1.0)
                torch._foreach_mul_(grads, list(trust.unbind()))
            bufs, fresh = [], []
            for p in params:
                state = self.state[p]
                if "buf" in state:
                    bufs.append(state["buf"])
                    fresh.append(p.grad)
                else:
                    state["buf"] = p.grad.clone()
            if bufs:
                torch._foreach_mul_(bufs, group["momentum"])
                torch._foreach_add_(bufs, fresh)
            torch._foreach_add_(params, [self.state[p]["buf"] for p in params], alpha=-group["lr"])


def cosine_schedule(step, total, start, end):
    """stdlib/schedules.rhai's cosine_schedule: start at step 0, end at step total - 1."""
    if total <= 1 or step >= total - 1:
        return end
    return end - (end - start) * (math.cos(math.pi * step / (total - 1)) + 1) / 2


def warmup_cosine(step, total, warmup, peak, end):
    """stdlib/schedules.rhai's warmup_cosine: linear warm-up to peak, then cosine to end."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return cosine_schedule(step - warmup, total - warmup, peak, end)


def ema_state(net):
    """The EMA-updated tensors of a net: parameters, then floating-point buffers."""
    return [*net.parameters(), *(b for b in net.buffers() if b.is_floating_point())]


@torch.no_grad()
def update_momentum(online, target, m):
    t, o = ema_state(target), ema_state(online)
    torch._foreach_mul_(t, m)
    torch._foreach_add_(t, o, alpha=1 - m)


# ---------------------------------------------------------------------------------------
# The three methods
# ---------------------------------------------------------------------------------------

SETTINGS = {  # the recipes' CUDA defaults
    "byol": dict(base_lr=1.0, weight_decay=1e-5, hidden=4096, min_scale=0.08),
    "moco": dict(base_lr=0.3, weight_decay=1e-4, hidden=2048, min_scale=0.2),
    "simclr": dict(base_lr=0.4, weight_decay=1e-5, hidden=2048, min_scale=0.08),
}
PROJ_DIM, TEMPERATURE, QUEUE_SIZE = 256, 0.2, 32768


def build(method, depth, widths, image, device, channels_last):
    """Networks, optimiser and views of a method: what the recipe sets up before its loop."""
    s = SETTINGS[method]
    backbone = ResNet(depth, widths)
    f = backbone.features
    m = dict(method=method, predictor=None, target=None, queue=None)
    if method == "byol":
        jitter = (0.4, 0.4, 0.2, 0.1)
        m["views"] = (View(image, s["min_scale"], jitter, blur=1.0, channels_last=channels_last),
                      View(image, s["min_scale"], jitter, blur=0.1, solarize=0.2, channels_last=channels_last))
        m["online"] = nn.Sequential(backbone, mlp(f, s["hidden"], PROJ_DIM))
        m["predictor"] = mlp(PROJ_DIM, s["hidden"], PROJ_DIM)
    elif method == "moco":
        jitter = (0.4, 0.4, 0.4, 0.1)
        m["views"] = tuple(View(image, s["min_scale"], jitter, blur=0.5, channels_last=channels_last) for _ in range(2))
        m["online"] = nn.Sequential(backbone, mlp(f, s["hidden"], PROJ_DIM, batch_norm=False))
        m["queue"] = F.normalize(torch.randn(QUEUE_SIZE, PROJ_DIM, device=device), dim=1)
        m["queue_ptr"] = 0
    else:
        jitter = (0.8, 0.8, 0.8, 0.2)
        m["views"] = tuple(View(image, s["min_scale"], jitter, blur=0.5, channels_last=channels_last) for _ in range(2))
        m["online"] = nn.Sequential(backbone, mlp(f, s["hidden"], PROJ_DIM))
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for key in ("online", "predictor"):
        if m[key] is not None:
            m[key] = m[key].to(device=device, memory_format=fmt)
    if method in ("byol", "moco"):
        m["target"] = momentum_copy(m["online"])
    nets = [m["online"]] + ([m["predictor"]] if m["predictor"] is not None else [])
    params = [p for net in nets for p in net.parameters()]
    if method == "moco":
        m["opt"] = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=s["weight_decay"], foreach=True)
    else:
        m["opt"] = LARS(params, momentum=0.9, weight_decay=s["weight_decay"], eta=0.02)
    m["base_lr"] = s["base_lr"]
    return m


def momentum_copy(online):
    """A momentum target: the same weights, no gradients, train mode (batch statistics)."""
    target = copy.deepcopy(online)
    for p in target.parameters():
        p.requires_grad_(False)
    return target


def train_step(m, images, step, total, batch, amp):
    """One step; returns the loss tensor (not read: the caller's .item() is the sync)."""
    x1, x2 = (view(images) for view in m["views"])
    online, predictor, target = m["online"], m["predictor"], m["target"]
    lr = warmup_cosine(step, total, total // 10, 1.0, 0.0) * m["base_lr"] * batch / 256
    with torch.autocast(device_type=images.device.type, dtype=torch.bfloat16, enabled=amp):
        if m["method"] == "byol":
            p1 = predictor(online(x1))
            p2 = predictor(online(x2))
            with torch.no_grad():
                z1, z2 = target(x1), target(x2)
            loss = 0.5 * (byol_loss(p1.float(), z2.float()) + byol_loss(p2.float(), z1.float()))
        elif m["method"] == "moco":
            q1, q2 = online(x1), online(x2)
            with torch.no_grad():
                k1, k2 = target(x1).float(), target(x2).float()
            queue = m["queue"]
            loss = 0.5 * (info_nce(q1.float(), k2, queue, TEMPERATURE) + info_nce(q2.float(), k1, queue, TEMPERATURE))
        else:
            z1, z2 = online(x1), online(x2)
            loss = nt_xent(z1.float(), z2.float(), TEMPERATURE)
    opt = m["opt"]
    for group in opt.param_groups:
        group["lr"] = lr
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if target is not None:
        update_momentum(online, target, cosine_schedule(step, total, 0.99, 1.0))
    if m["method"] == "moco":
        keys = F.normalize(torch.cat([k1, k2]), dim=1)
        ptr, n = m["queue_ptr"], keys.shape[0]
        m["queue"][ptr:ptr + n] = keys  # a ring buffer: the oldest keys are overwritten
        m["queue_ptr"] = (ptr + n) % QUEUE_SIZE
    return loss


def device_memory(device):
    """The caching allocator after the last step, as sslhost's bench reports its pool's:
    reserved and in use now (what the run keeps between steps), and the most ever in use."""
    if device.type != "cuda":
        return None
    mib = 2**20
    return dict(reserved_mb=torch.cuda.memory_reserved(device) / mib,
                in_use_mb=torch.cuda.memory_allocated(device) / mib,
                peak_in_use_mb=torch.cuda.max_memory_allocated(device) / mib)


def peak_memory_mb(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_reserved(device) / 2**20
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--method", default="byol", choices=["byol", "moco", "simclr"])
    ap.add_argument("--depth", type=int, default=18, choices=sorted(LAYOUTS))
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--image", type=int, default=32)
    ap.add_argument("--widths", default="64,128,256,512")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave it)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--memory-format", default="auto", choices=["auto", "channels_last", "contiguous"],
                    help="auto: channels_last, except NCHW on the CPU when a stage is narrower than "
                         "16 channels (torch 2.15's CPU channels_last backward corrupts memory there)")
    ap.add_argument("--precision", default="auto", choices=["auto", "f32", "bf16"],
                    help="auto: bf16 autocast on CUDA, f32 on the CPU (as sslhost's --precision)")
    args = ap.parse_args()

    widths = [int(w) for w in args.widths.split(",")]
    if len(widths) != 4:
        ap.error("--widths needs four stage widths")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    amp = args.precision == "bf16" or (args.precision == "auto" and device.type == "cuda")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if args.memory_format == "auto":
        channels_last = device.type == "cuda" or min(widths) >= 16
    else:
        channels_last = args.memory_format == "channels_last"

    m = build(args.method, args.depth, widths, args.image, device, channels_last)
    images = torch.rand(args.batch, 3, args.image, args.image, device=device)
    total = args.warmup + args.steps
    times = []
    for step in range(total):
        t0 = time.perf_counter()
        loss = train_step(m, images, step, total, args.batch, amp)
        value = loss.item()  # the step's one host sync
        dt = (time.perf_counter() - t0) * 1000
        if not math.isfinite(value):
            raise SystemExit(f"step {step}: the loss is {value}")
        if step >= args.warmup:
            times.append(dt)

    median = statistics.median(times)
    model = f"resnet{args.depth}" if widths == [64, 128, 256, 512] else f"resnet{args.depth}[{args.widths}]"
    params = sum(p.numel() for p in m["online"].parameters())
    if m["predictor"] is not None:
        params += sum(p.numel() for p in m["predictor"].parameters())
    result = dict(
        impl="pytorch", torch=torch.__version__, method=args.method, model=model,
        device=device.type, depth=args.depth, widths=widths, batch=args.batch, image=args.image,
        warmup=args.warmup, steps=args.steps, threads=torch.get_num_threads(), amp=amp,
        precision="bf16" if amp else "f32",
        channels_last=channels_last, params=params, median_ms=median,
        mean_ms=statistics.fmean(times), min_ms=min(times), max_ms=max(times),
        img_per_s=args.batch * 1000 / median, peak_mem_mb=peak_memory_mb(device),
        device_memory=device_memory(device), step_ms=times,
    )
    print(f"{args.method} {model} {device.type} batch {args.batch} {args.image}x{args.image}: "
          f"median {median:.1f} ms, mean {result['mean_ms']:.1f} ms, {result['img_per_s']:.1f} img/s, "
          f"peak memory {result['peak_mem_mb'] or float('nan'):.0f} MiB")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
