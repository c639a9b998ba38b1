#!/usr/bin/env python3
"""Builds the Fashion-MNIST sample embedded in the sslhost binary.

Reads the full dataset in MNIST idx format (by default from Debian's dataset-fashion-mnist,
/usr/share/datasets/fashion-mnist) and writes a class-balanced subset to
host/assets/fashion-mnist-sample/: the first TRAIN_PER_CLASS images of each class of the train
split and the first TEST_PER_CLASS of each class of the test split, in file order. The output is
byte-for-byte reproducible (gzip with mtime 0, fixed compression level).

    python3 scripts/make_fashion_sample.py [SOURCE_DIR] [OUT_DIR]
"""

import gzip
import os
import struct
import sys

TRAIN_PER_CLASS = 400
TEST_PER_CLASS = 100
CLASSES = 10


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic = struct.unpack(">I", data[:4])[0]
    ndim = magic & 0xFF
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return magic, dims, data[4 + 4 * ndim :]


def write_idx(path, magic, dims, payload):
    header = struct.pack(">I", magic) + struct.pack(">" + "I" * len(dims), *dims)
    with open(path, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as f:
            f.write(header + payload)


def subset(src, out, prefix, per_class):
    im_magic, im_dims, pixels = read_idx(os.path.join(src, f"{prefix}-images-idx3-ubyte.gz"))
    lb_magic, lb_dims, labels = read_idx(os.path.join(src, f"{prefix}-labels-idx1-ubyte.gz"))
    assert im_magic == 0x803 and lb_magic == 0x801, "not idx3 images / idx1 labels"
    n, rows, cols = im_dims
    assert lb_dims[0] == n
    size = rows * cols
    taken = [0] * CLASSES
    keep = []
    for i, label in enumerate(labels):
        if taken[label] < per_class:
            taken[label] += 1
            keep.append(i)
    assert all(t == per_class for t in taken), taken
    write_idx(
        os.path.join(out, f"{prefix}-images-idx3-ubyte.gz"),
        0x803,
        (len(keep), rows, cols),
        b"".join(pixels[i * size : (i + 1) * size] for i in keep),
    )
    write_idx(
        os.path.join(out, f"{prefix}-labels-idx1-ubyte.gz"),
        0x801,
        (len(keep),),
        bytes(labels[i] for i in keep),
    )
    print(f"{prefix}: {len(keep)} images ({per_class} per class)")


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    src = sys.argv[1] if len(sys.argv) > 1 else "/usr/share/datasets/fashion-mnist"
    out = sys.argv[2] if len(sys.argv) > 2 else os.path.join(here, "..", "host", "assets", "fashion-mnist-sample")
    os.makedirs(out, exist_ok=True)
    subset(src, out, "train", TRAIN_PER_CLASS)
    subset(src, out, "t10k", TEST_PER_CLASS)


if __name__ == "__main__":
    main()
