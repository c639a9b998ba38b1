"""Writes tests/fixtures/torchvision_resnet.json: the state_dict layout (key, shape, dtype, in
order) of torchvision's ResNet-18/34/50, with its ImageNet stem and with the CIFAR stem
(3x3 stride-1 conv1, no max-pool), without `fc`. `sslhost export` is tested against it.

    pip install torch torchvision
    python scripts/make_torchvision_fixture.py
"""

import json
import pathlib

import torch
import torchvision


def layout(model):
    return [
        [key, list(value.shape), str(value.dtype).removeprefix("torch.")]
        for key, value in model.state_dict().items()
        if not key.startswith("fc.")
    ]


def main():
    out = {"torchvision": torchvision.__version__, "models": {}}
    for depth in (18, 34, 50):
        model = getattr(torchvision.models, f"resnet{depth}")()
        out["models"][f"resnet{depth}"] = layout(model)
        # The CIFAR stem as solo-learn and lightly write it.
        model.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        model.maxpool = torch.nn.Identity()
        out["models"][f"resnet{depth}-cifar"] = layout(model)
    path = pathlib.Path(__file__).resolve().parent.parent / "tests/fixtures/torchvision_resnet.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
