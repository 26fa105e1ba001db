"""Built-in architectures and seeded random weights (no pretrained weights can be
downloaded here: benchmarks and tests run on random weights, real models are trained
here or imported from ONNX)."""

from __future__ import annotations

from importlib import resources
from typing import Any

import numpy as np

from experts.model.mixture import is_mixture, mixture_params
from experts.model.spec import expected_params, parse_layers

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def _conv(name: str, out: int, k: int, s: int = 1, p: int = 0, g: int = 1) -> dict[str, Any]:
    return {
        "name": name,
        "op": "conv",
        "out_channels": out,
        "kernel": k,
        "stride": s,
        "padding": p,
        "groups": g,
        "relu": True,
    }


def _fc(name: str, out: int, relu: bool = True) -> dict[str, Any]:
    return {"name": name, "op": "linear", "out_features": out, "relu": relu}


def _pool(name: str, ceil_mode: bool = False) -> dict[str, Any]:
    return {"name": name, "op": "maxpool", "kernel": 3, "stride": 2, "ceil_mode": ceil_mode}


def _lrn(name: str) -> dict[str, Any]:
    return {"name": name, "op": "lrn", "size": 5, "alpha": 1e-4, "beta": 0.75, "k": 1.0}


def alexnet(num_classes: int = 1000) -> dict[str, Any]:
    """torchvision's AlexNet (61.1 M parameters at 1000 classes)."""
    layers = [
        _conv("conv1", 64, 11, 4, 2),
        _pool("pool1"),
        _conv("conv2", 192, 5, 1, 2),
        _pool("pool2"),
        _conv("conv3", 384, 3, 1, 1),
        _conv("conv4", 256, 3, 1, 1),
        _conv("conv5", 256, 3, 1, 1),
        _pool("pool5"),
        {"name": "avgpool", "op": "adaptive_avgpool", "output_size": 6},
        {"name": "flatten", "op": "flatten"},
        {"name": "drop6", "op": "dropout"},
        _fc("fc6", 4096),
        {"name": "drop7", "op": "dropout"},
        _fc("fc7", 4096),
        _fc("fc8", num_classes, relu=False),
    ]
    meta = _imagenet_meta("alexnet", "AlexNet, torchvision geometry", [3, 224, 224], num_classes)
    return {**meta, "layers": layers}


def caffenet(num_classes: int = 1000) -> dict[str, Any]:
    """The BVLC CaffeNet variant of Krizhevsky's AlexNet: LRN, grouped convolutions
    (the two-GPU split), ceil-mode pooling, 227 x 227 input."""
    layers = [
        _conv("conv1", 96, 11, 4),
        _pool("pool1", True),
        _lrn("norm1"),
        _conv("conv2", 256, 5, 1, 2, g=2),
        _pool("pool2", True),
        _lrn("norm2"),
        _conv("conv3", 384, 3, 1, 1),
        _conv("conv4", 384, 3, 1, 1, g=2),
        _conv("conv5", 256, 3, 1, 1, g=2),
        _pool("pool5", True),
        {"name": "flatten", "op": "flatten"},
        _fc("fc6", 4096),
        {"name": "drop6", "op": "dropout"},
        _fc("fc7", 4096),
        {"name": "drop7", "op": "dropout"},
        _fc("fc8", num_classes, relu=False),
        {"name": "prob", "op": "softmax"},
    ]
    description = "CaffeNet (AlexNet with LRN and groups)"
    return {**_imagenet_meta("caffenet", description, [3, 227, 227], num_classes), "layers": layers}


def imagenet_labels() -> list[str]:
    """The 1000 ILSVRC-2012 class names (first WordNet lemma of each synset, in the
    usual class-index order; taken from timm's data files, Apache-2.0)."""
    text = resources.files("experts.data").joinpath("imagenet_classes.txt").read_text()
    return text.splitlines()


def _imagenet_meta(
    name: str, description: str, shape: list[int], num_classes: int
) -> dict[str, Any]:
    """Everything of an ImageNet model's model.json but its layers: input size and
    preprocessing (resize to 256, centre crop), and the labels at 1000 classes."""
    labels = imagenet_labels() if num_classes == 1000 else None
    return {
        "format": 1,
        "name": name,
        "version": "1",
        "description": description,
        "input": {
            "shape": shape,
            "layout": "NCHW",
            "color": "RGB",
            "resize": 256,
            "mean": IMAGENET_MEAN,
            "std": IMAGENET_STD,
        },
        **({"labels": labels} if labels else {}),
    }


FASHION_LABELS = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
FASHION_INPUT = {
    "shape": [1, 28, 28],
    "layout": "NCHW",
    "color": "L",
    "resize": None,
    "mean": [0.2860],
    "std": [0.3530],
}


def _fashion_stem() -> list[dict[str, Any]]:
    """conv1, relu, pool, LRN on 28 x 28 grey: 32 x 13 x 13 features."""
    return [_conv("conv1", 32, 5, 1, 2), _pool("pool1"), _lrn("norm1")]


def _fashion_tail(widths: tuple[int, ...]) -> list[dict[str, Any]]:
    """conv2 .. fc7 of the AlexNet pattern on the 13 x 13 stem output."""
    c2, c3, c4, c5, f6, f7 = widths
    return [
        _conv("conv2", c2, 3, 1, 1),
        _pool("pool2"),
        _conv("conv3", c3, 3, 1, 1),
        _conv("conv4", c4, 3, 1, 1),
        _conv("conv5", c5, 3, 1, 1),
        _pool("pool5"),
        {"name": "flatten", "op": "flatten"},
        {"name": "drop6", "op": "dropout"},
        _fc("fc6", f6),
        {"name": "drop7", "op": "dropout"},
        _fc("fc7", f7),
    ]


# Tschopp's ImageNet experts are about a quarter of AlexNet's width (conv3 96 of 384,
# fc6 1024 of 4096); fashion-moe's experts are about a fifth of this baseline's.
FASHION_ALEXNET_TAIL = (192, 320, 320, 192, 1024, 1024)
FASHION_EXPERT_TAIL = (40, 64, 64, 40, 256, 256)


def fashion_alexnet() -> dict[str, Any]:
    """The monolithic baseline for Fashion-MNIST: the AlexNet pattern at full width."""
    layers = [*_fashion_stem(), *_fashion_tail(FASHION_ALEXNET_TAIL), _fc("fc8", 10, relu=False)]
    return {
        "format": 1,
        "name": "fashion-alexnet",
        "version": "1",
        "description": "AlexNet pattern sized for Fashion-MNIST (monolithic baseline)",
        "input": dict(FASHION_INPUT),
        "labels": list(FASHION_LABELS),
        "layers": layers,
    }


def fashion_moe(experts: int = 4, k: int = 1) -> dict[str, Any]:
    """The mixture for Fashion-MNIST: the same stem, E narrow experts, top-k routing."""
    gate = [
        _conv("gconv", 16, 3, 2, 1),
        {"name": "gpool", "op": "adaptive_avgpool", "output_size": 2},
        {"name": "gflat", "op": "flatten"},
        _fc("gfc", experts, relu=False),
    ]
    return {
        "format": 1,
        "name": "fashion-moe",
        "version": "1",
        "kind": "mixture",
        "description": f"{experts} narrow AlexNet experts, top-{k} routing, Fashion-MNIST",
        "input": dict(FASHION_INPUT),
        "labels": list(FASHION_LABELS),
        "stem": _fashion_stem(),
        "gate": gate,
        "expert": _fashion_tail(FASHION_EXPERT_TAIL),
        "experts": experts,
        "k": k,
        "head": [_fc("fc8", 10, relu=False)],
    }


def alexnet_moe(k: int = 1) -> dict[str, Any]:
    """Tschopp's ImageNet-scale mixture: conv1 48 filters; 16 experts with conv2 64,
    conv3 96, conv4 96, conv5 64, fc6 1024, fc7 2048; a shared fc8 (he routed top-4)."""
    stem = [_conv("conv1", 48, 11, 4, 2), _pool("pool1"), _lrn("norm1")]
    gate = [
        _conv("gconv", 32, 3, 2, 1),
        _pool("gpool"),
        {"name": "gflat", "op": "flatten"},
        _fc("gfc", 16, relu=False),
    ]
    expert = [
        _conv("conv2", 64, 5, 1, 2),
        _pool("pool2"),
        _conv("conv3", 96, 3, 1, 1),
        _conv("conv4", 96, 3, 1, 1),
        _conv("conv5", 64, 3, 1, 1),
        _pool("pool5"),
        {"name": "flatten", "op": "flatten"},
        {"name": "drop6", "op": "dropout"},
        _fc("fc6", 1024),
        {"name": "drop7", "op": "dropout"},
        _fc("fc7", 2048),
    ]
    description = "Tschopp's mixture-of-experts AlexNet (16 experts)"
    return {
        **_imagenet_meta("alexnet-moe", description, [3, 224, 224], 1000),
        "kind": "mixture",
        "stem": stem,
        "gate": gate,
        "expert": expert,
        "experts": 16,
        "k": k,
        "head": [_fc("fc8", 1000, relu=False)],
    }


ARCHITECTURES = {
    "alexnet": alexnet,
    "caffenet": caffenet,
    "alexnet-moe": alexnet_moe,
    "fashion-alexnet": fashion_alexnet,
    "fashion-moe": fashion_moe,
}


def random_weights(meta: dict[str, Any], seed: int = 0) -> dict[str, np.ndarray]:
    """He-normal weights and small biases, so activations keep their scale through
    the network and the logits are neither all zero nor overflowing."""
    rng = np.random.default_rng(seed)
    weights = {}
    if is_mixture(meta):
        params = mixture_params(meta)
    else:
        params = expected_params(parse_layers(meta["layers"]), meta["input"]["shape"])
    for key, shape in params.items():
        if key.endswith(".bias"):
            weights[key] = (0.01 * rng.standard_normal(shape)).astype(np.float32)
        else:
            fan_in = int(np.prod(shape[1:]))
            w = rng.standard_normal(shape, dtype=np.float32)
            weights[key] = w * np.float32(np.sqrt(2.0 / fan_in))
    return weights
