#!/usr/bin/env python3
"""Reference outputs of torchvision's augmentation kernels for tests/augment.rs.

Writes small JSON fixtures under tests/fixtures/augment/:

  colour.json     brightness, contrast, saturation, hue, greyscale, solarize, normalize and
                  colour jitter in a given order, with per-sample factors (3- and 1-channel)
  geometry.json   resized_crop with given boxes (down- and up-sampling, non-square), + hflip
  blur.json       gaussian_blur with given kernel sizes and per-sample sigmas
  crop_stats.json statistics of RandomResizedCrop.get_params over many draws, to compare the
                  distribution of our sampler with torchvision's

Every op is torchvision.transforms.v2.functional on float images in [0, 1], applied to each
sample alone with that sample's parameters. Run from the repository root:

    python3 scripts/make_augment_fixtures.py

(tested with torch 2.15, torchvision 0.29).
"""

import json
import math
import os

import torch
import torchvision
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

OUT = os.path.join("tests", "fixtures", "augment")
DECIMALS = 6


def tensor_json(t):
    t = t.detach().to(torch.float64).contiguous()
    return {
        "shape": list(t.shape),
        "data": [round(float(v), DECIMALS) for v in t.flatten()],
    }


def per_sample(images, fn, params):
    """Applies fn(image, param) to each [C, H, W] sample with its own parameter."""
    return torch.stack([fn(img, p) for img, p in zip(images, params)])


def inputs():
    g = torch.Generator().manual_seed(0)
    rgb = torch.rand(2, 3, 12, 12, generator=g)
    # A few grey and saturated pixels exercise the hue edge cases (max == min, max == r/g/b).
    rgb[0, :, 0, 0] = 0.5
    rgb[0, :, 0, 1] = torch.tensor([1.0, 0.0, 0.0])
    rgb[0, :, 0, 2] = torch.tensor([0.2, 0.9, 0.9])
    rgb[1, :, 0, 0] = torch.tensor([0.3, 0.3, 0.8])
    grey = torch.rand(2, 1, 12, 12, generator=g)
    # Rounded to the stored precision, so Rust reads exactly the values torch used.
    rgb = torch.round(rgb * 10**DECIMALS) / 10**DECIMALS
    grey = torch.round(grey * 10**DECIMALS) / 10**DECIMALS
    return rgb, grey


JITTER_FNS = [F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue]


def jitter_one(img, p):
    if p is None:
        return img
    for op in p["order"]:
        factor = p["factors"][op]
        if factor is not None:
            img = JITTER_FNS[op](img, factor)
    return img


def colour_cases(images, three):
    cases = []

    def case(op, params, output, **extra):
        cases.append({"op": op, "params": params, **extra, "output": tensor_json(output)})

    for op, fn, factors in [
        ("brightness", F.adjust_brightness, [0.6, 1.4]),
        ("contrast", F.adjust_contrast, [0.5, 1.6]),
        ("saturation", F.adjust_saturation, [0.3, 1.8]),
        ("hue", F.adjust_hue, [0.25, -0.4]),
        ("hue", F.adjust_hue, [0.05, -0.1]),
    ]:
        case(op, factors, per_sample(images, fn, factors))

    flags = [True, False]
    c = images.shape[1]
    case(
        "grayscale",
        flags,
        per_sample(images, lambda x, f: F.rgb_to_grayscale(x, num_output_channels=c) if f else x, flags),
    )
    for threshold, flags in [(0.5, [True, False]), (0.3, [True, True])]:
        case(
            "solarize",
            flags,
            per_sample(images, lambda x, f: F.solarize(x, threshold) if f else x, flags),
            threshold=threshold,
        )
    if three:
        mean, std = [0.4914, 0.4822, 0.4465], [0.247, 0.243, 0.261]
    else:
        mean, std = [0.2860], [0.3530]
    case("normalize", None, F.normalize(images, mean, std), mean=mean, std=std)

    # Colour jitter with explicit order (indices into brightness, contrast, saturation, hue)
    # and factors; None skips an op, a None sample is left unchanged.
    for jitter in [
        [
            {"order": [3, 0, 2, 1], "factors": [1.3, 0.7, 1.5, 0.08]},
            {"order": [1, 3, 0, 2], "factors": [0.8, 1.2, None, -0.15]},
        ],
        [
            None,
            {"order": [2, 1, 3, 0], "factors": [1.1, 0.6, 0.2, 0.3]},
        ],
    ]:
        case("color_jitter", jitter, per_sample(images, jitter_one, jitter))
    return cases


def geometry_cases(images):
    cases = []
    for boxes, size, flips in [
        ([[1, 2, 10, 9], [0, 0, 12, 12]], [5, 5], [False, False]),  # downsampling
        ([[3, 4, 4, 6], [5, 1, 7, 3]], [14, 14], [False, False]),  # upsampling
        ([[2, 1, 9, 11], [0, 3, 6, 8]], [7, 10], [False, False]),  # mixed, non-square
        ([[0, 0, 12, 12], [4, 4, 5, 5]], [12, 12], [False, True]),  # identity size, flip
        ([[1, 2, 10, 9], [3, 4, 4, 6]], [6, 8], [True, True]),  # crop + flip
    ]:

        def fn(img, p):
            (top, left, h, w), flip = p
            out = F.resized_crop(img, top, left, h, w, size, antialias=True)
            return F.horizontal_flip(out) if flip else out

        out = per_sample(images, fn, list(zip(boxes, flips)))
        cases.append(
            {
                "op": "resized_crop",
                "boxes": boxes,  # [top, left, height, width]
                "size": size,
                "flips": flips,
                "output": tensor_json(out),
            }
        )
    flags = [True, False]
    cases.append(
        {
            "op": "hflip",
            "flags": flags,
            "output": tensor_json(per_sample(images, lambda x, f: F.horizontal_flip(x) if f else x, flags)),
        }
    )
    return cases


def blur_cases(images):
    cases = []
    for kernel, sigmas in [(3, [0.5, 1.7]), (5, [1.0, 0.3]), (11, [2.0, None]), (23, [3.0, 0.1])]:
        if kernel // 2 >= images.shape[-1]:
            # torch's reflect padding needs pad < size; our blur folds the reflection again,
            # so compare with an explicitly reflected reference instead.
            continue

        def fn(img, s):
            return img if s is None else F.gaussian_blur(img, [kernel, kernel], [s, s])

        cases.append(
            {
                "op": "gaussian_blur",
                "kernel_size": kernel,
                "sigmas": sigmas,
                "output": tensor_json(per_sample(images, fn, sigmas)),
            }
        )
    return cases


def crop_stats():
    torch.manual_seed(0)
    stats = []
    draws = 20000
    for height, width, scale, ratio in [
        (32, 32, (0.08, 1.0), (3 / 4, 4 / 3)),
        (32, 32, (0.2, 1.0), (3 / 4, 4 / 3)),
        (24, 40, (0.08, 1.0), (3 / 4, 4 / 3)),
        (20, 20, (0.9, 1.0), (2.0, 3.0)),  # often falls back to the central crop
    ]:
        img = torch.zeros(1, height, width)
        crop = v2.RandomResizedCrop(8, scale=scale, ratio=ratio)
        areas, log_ratios, tops, lefts, full = [], [], [], [], 0
        for _ in range(draws):
            p = crop.make_params([img])
            i, j, h, w = p["top"], p["left"], p["height"], p["width"]
            areas.append(h * w / (height * width))
            log_ratios.append(math.log(w / h))
            tops.append(i / height)
            lefts.append(j / width)
            full += (h, w) == (height, width)
        t = torch.tensor
        stats.append(
            {
                "height": height,
                "width": width,
                "scale": list(scale),
                "ratio": list(ratio),
                "draws": draws,
                "area_mean": t(areas).mean().item(),
                "area_std": t(areas).std().item(),
                "log_ratio_mean": t(log_ratios).mean().item(),
                "log_ratio_std": t(log_ratios).std().item(),
                "top_mean": t(tops).mean().item(),
                "left_mean": t(lefts).mean().item(),
                "full_fraction": full / draws,
            }
        )
    return stats


def write(name, obj):
    path = os.path.join(OUT, name)
    with open(path, "w") as f:
        json.dump(obj, f, separators=(",", ":"))
        f.write("\n")
    print(f"{path}: {os.path.getsize(path)} bytes")


def main():
    os.makedirs(OUT, exist_ok=True)
    rgb, grey = inputs()
    meta = {"torch": torch.__version__, "torchvision": torchvision.__version__}
    write(
        "colour.json",
        {
            **meta,
            "sets": [
                # Colour ops are per pixel (contrast: per image), so 8x8 crops keep this small.
                {"input": tensor_json(rgb[..., :8, :8]), "cases": colour_cases(rgb[..., :8, :8], True)},
                {"input": tensor_json(grey[..., :8, :8]), "cases": colour_cases(grey[..., :8, :8], False)},
            ],
        },
    )
    write("geometry.json", {**meta, "input": tensor_json(rgb), "cases": geometry_cases(rgb)})
    write(
        "blur.json",
        {
            **meta,
            "sets": [
                {"input": tensor_json(rgb), "cases": blur_cases(rgb)},
                {"input": tensor_json(grey[:, :, :, :9]), "cases": blur_cases(grey[:, :, :, :9])},
            ],
        },
    )
    write("crop_stats.json", {**meta, "stats": crop_stats()})


if __name__ == "__main__":
    main()
