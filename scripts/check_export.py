"""Checks an `sslhost export` file against torchvision: the file loads into torchvision's
ResNet with strict=True (fc aside), and gives the features sslhost gives on the same images.

    sslhost export runs/byol-... -o backbone.safetensors
    python scripts/check_export.py backbone.safetensors [--sslhost target/release/sslhost]

sslhost computes the features of the first test images (scripts/export_features.rhai) and
saves the images it fed the backbone; torchvision's model, built from the file's recorded
architecture with torchvision's own classes, runs on those images in eval mode.
"""

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile

import torch
import torchvision
from safetensors.torch import load_file
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

ROOT = pathlib.Path(__file__).resolve().parent.parent


def torchvision_resnet(arch):
    """torchvision's ResNet of sslhost's architecture record, fc left as it is."""
    layout = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3]}[arch["depth"]]
    blocks = arch["blocks"] or layout
    block = Bottleneck if arch["depth"] == 50 else BasicBlock
    widths = arch["widths"]
    model = ResNet(block, blocks)
    # Torchvision's classes, with the stem and widths sslhost's record names.
    model.inplanes = widths[0]
    if arch["cifar_stem"]:
        model.conv1 = torch.nn.Conv2d(
            arch["in_channels"], widths[0], 3, arch["stem_stride"], 1, bias=False
        )
        model.maxpool = torch.nn.Identity()
    else:
        model.conv1 = torch.nn.Conv2d(arch["in_channels"], widths[0], 7, 2, 3, bias=False)
    model.bn1 = torch.nn.BatchNorm2d(widths[0])
    model.layer1 = model._make_layer(block, widths[0], blocks[0])
    model.layer2 = model._make_layer(block, widths[1], blocks[1], stride=2)
    model.layer3 = model._make_layer(block, widths[2], blocks[2], stride=2)
    model.layer4 = model._make_layer(block, widths[3], blocks[3], stride=2)
    model.fc = torch.nn.Identity()
    return model


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("backbone")
    parser.add_argument("--sslhost", default=str(ROOT / "target/release/sslhost"))
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--count", type=int, default=64)
    args = parser.parse_args()

    with open(args.backbone, "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    meta = header["__metadata__"]
    arch = json.loads(meta["architecture"])["resnet"]
    model_name = meta["torchvision_model"]

    state = load_file(args.backbone)
    if model_name.startswith("resnet"):
        # The standard shape: torchvision's own constructor.
        model = getattr(torchvision.models, model_name)()
        if arch["cifar_stem"]:
            model.conv1 = torch.nn.Conv2d(3, 64, 3, arch["stem_stride"], 1, bias=False)
            model.maxpool = torch.nn.Identity()
    else:
        model = torchvision_resnet(arch)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("fc.")]
    assert not missing and not unexpected, (missing, unexpected)
    model.fc = torch.nn.Identity()
    model.eval()
    print(f"loaded strictly (fc aside) into {model_name if model_name.startswith('resnet') else 'torchvision ResNet classes'}: {len(state)} tensors")

    # sslhost writes a script's tensors only below the working directory.
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        out = pathlib.Path(tmp).resolve().relative_to(pathlib.Path.cwd().resolve()) / "features.safetensors"
        subprocess.run(
            [
                args.sslhost, "run", str(ROOT / "scripts/export_features.rhai"),
                "--device", "cpu", "--runs", tmp,
                "--set", f"weights={args.backbone}", "--set", f"out={out}",
                "--set", f"size={args.size}", "--set", f"count={args.count}",
            ],
            check=True,
        )
        ours = load_file(str(out))
    with torch.no_grad():
        theirs = model(ours["images"])
    diff = (theirs - ours["features"]).abs().max().item()
    scale = ours["features"].abs().max().item()
    print(f"features {tuple(theirs.shape)}: max |torchvision - sslhost| = {diff:.3g} (largest feature {scale:.3g})")
    if diff > 1e-4:
        sys.exit("features differ by more than 1e-4")


if __name__ == "__main__":
    main()
