"""Throughput of a torchvision BYOL two-view input pipeline, the reference for
scripts/pipeline_throughput.rhai: Fashion-MNIST from Debian's idx files, per-sample
torchvision v2 transforms (the BYOL settings), DataLoader with 2 workers, batch 256, 32x32.
Counts source images per second (each gives two views).

    python3 scripts/torch_pipeline_throughput.py [--workers 2] [--batches 20]
"""

import argparse
import gzip
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

ROOT = "/usr/share/datasets/fashion-mnist"


def read_idx_images(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    n, h, w = (int.from_bytes(data[i : i + 4], "big") for i in (4, 8, 12))
    return np.frombuffer(data, dtype=np.uint8, offset=16).reshape(n, 1, h, w)


def byol_view(size, blur_p, solarize_p):
    return v2.Compose(
        [
            v2.RandomResizedCrop(size, scale=(0.08, 1.0), antialias=True),
            v2.RandomHorizontalFlip(0.5),
            v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
            v2.RandomGrayscale(0.2),
            v2.RandomApply([v2.GaussianBlur(3, sigma=(0.1, 2.0))], p=blur_p),
            v2.RandomSolarize(0.5, p=solarize_p),
            v2.Normalize([0.5] * 3, [0.5] * 3),
        ]
    )


class TwoViews(Dataset):
    def __init__(self, images, size):
        self.images = images
        self.view1 = byol_view(size, 1.0, 0.0)
        self.view2 = byol_view(size, 0.1, 0.2)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        x = torch.from_numpy(self.images[i].copy()).float().div(255).expand(3, -1, -1)
        return self.view1(x), self.view2(x)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batches", type=int, default=20)
    a = p.parse_args()
    torch.set_num_threads(1)
    ds = TwoViews(read_idx_images(f"{ROOT}/train-images-idx3-ubyte.gz"), a.size)
    loader = DataLoader(ds, batch_size=a.batch_size, shuffle=True, drop_last=True,
                        num_workers=a.workers, persistent_workers=a.workers > 0)
    images, start = 0, time.perf_counter()
    for i, (x1, x2) in enumerate(loader):
        if i == a.warmup:
            images, start = 0, time.perf_counter()
        images += x1.shape[0]
        if i + 1 == a.warmup + a.batches:
            break
    seconds = time.perf_counter() - start
    print(f"torchvision BYOL two-view pipeline, batch {a.batch_size}, {a.size}x{a.size}, "
          f"{a.workers} workers: {images / seconds:.0f} images/s ({images} images in {seconds:.2f} s)")


if __name__ == "__main__":
    main()
