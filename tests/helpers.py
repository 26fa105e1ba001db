"""Plain helpers shared by test modules in several folders (not a test module, not a
conftest): the tiny models' model.json dicts and a repository writer, image encoders,
in-process app and port helpers, Fashion-MNIST idx writers, and the project's root.

The fixtures built on these (the tiny metas, the repositories holding them) are in
tests/conftest.py and tests/service/conftest.py.
"""

from __future__ import annotations

import gzip
import importlib
import io
import socket
import struct
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from PIL import Image

from experts.data.fashion_mnist import DEFAULT_DIR, FILES
from experts.model.architectures import random_weights
from experts.model.repository import Repository

ROOT = Path(__file__).resolve().parent.parent


def script(name: str) -> ModuleType:
    """scripts/<name>.py imported as a module (scripts/ is not a package)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.pop(0)


# -- tiny models ---------------------------------------------------------------------------

TINY: dict[str, Any] = {
    "format": 1,
    "name": "tiny",
    "version": "1",
    "input": {
        "shape": [3, 16, 16],
        "layout": "NCHW",
        "color": "RGB",
        "resize": None,
        "mean": [0.5, 0.5, 0.5],
        "std": [0.25, 0.25, 0.25],
    },
    "labels": ["cat", "dog", "fish"],
    "layers": [
        {"name": "conv1", "op": "conv", "out_channels": 8, "kernel": 3, "padding": 1, "relu": True},
        {"name": "pool1", "op": "maxpool", "kernel": 2, "stride": 2},
        {"name": "flat", "op": "flatten"},
        {"name": "fc", "op": "linear", "out_features": 3},
    ],
}

# A mixture of experts of the same input size: 4 experts, top-2 by default.
TINY_MOE: dict[str, Any] = {
    "format": 1,
    "name": "tiny-moe",
    "version": "3",
    "kind": "mixture",
    "input": dict(TINY["input"]),
    "labels": ["cat", "dog", "fish"],
    "stem": [
        {"name": "c1", "op": "conv", "out_channels": 6, "kernel": 3, "relu": True},
        {"name": "p1", "op": "maxpool", "kernel": 2, "stride": 2},
    ],
    "gate": [{"name": "gf", "op": "flatten"}, {"name": "g", "op": "linear", "out_features": 4}],
    "expert": [
        {"name": "c2", "op": "conv", "out_channels": 4, "kernel": 3, "padding": 1, "relu": True},
        {"name": "f", "op": "flatten"},
        {"name": "fc", "op": "linear", "out_features": 5, "relu": True},
    ],
    "experts": 4,
    "k": 2,
    "head": [{"name": "out", "op": "linear", "out_features": 3}],
}

# Dual-module inference's network: fc6 with a fused ReLU, fc7 with a relu layer (and a
# dropout) after it, fc8 without.
DUAL_NET: dict[str, Any] = {
    **TINY,
    "name": "dual-net",
    "layers": [
        {"name": "conv1", "op": "conv", "out_channels": 4, "kernel": 3, "padding": 1, "relu": True},
        {"name": "pool1", "op": "maxpool", "kernel": 2, "stride": 2},
        {"name": "flat", "op": "flatten"},
        {"name": "fc6", "op": "linear", "out_features": 48, "relu": True},
        {"name": "fc7", "op": "linear", "out_features": 32},
        {"name": "r7", "op": "relu"},
        {"name": "d7", "op": "dropout"},
        {"name": "fc8", "op": "linear", "out_features": 3},
    ],
}


# A mixture on 12 x 12 inputs with 5 experts (top-2) and a softmax head: the mixture
# network's tests (experts/networks/mixture.py) and the commands' mixture rows.
SMALL: dict[str, Any] = {
    "format": 1,
    "name": "small-moe",
    "kind": "mixture",
    "input": {"shape": [3, 12, 12], "mean": [0.5] * 3, "std": [0.5] * 3},
    "stem": [
        {"name": "c1", "op": "conv", "out_channels": 6, "kernel": 3, "relu": True},
        {"name": "p1", "op": "maxpool", "kernel": 2, "stride": 2},
    ],
    "gate": [{"name": "gf", "op": "flatten"}, {"name": "g", "op": "linear", "out_features": 5}],
    "expert": [
        {"name": "c2", "op": "conv", "out_channels": 4, "kernel": 3, "padding": 1, "relu": True},
        {"name": "f", "op": "flatten"},
        {"name": "fc", "op": "linear", "out_features": 7, "relu": True},
    ],
    "experts": 5,
    "k": 2,
    "head": [{"name": "out", "op": "linear", "out_features": 3}, {"name": "sm", "op": "softmax"}],
}


def make_repo(root: Path, mixture: bool = False) -> Path:
    """A model repository at `root` holding tiny (seed 1), and tiny-moe (seed 2) if asked."""
    root.mkdir(parents=True, exist_ok=True)
    Repository(root).save("tiny", TINY, random_weights(TINY, seed=1))
    if mixture:
        Repository(root).save("tiny-moe", TINY_MOE, random_weights(TINY_MOE, seed=2))
    return root


# -- images ----------------------------------------------------------------------------------


def encode(array: np.ndarray, fmt: str = "PNG", **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, fmt, **kwargs)
    return buf.getvalue()


def random_rgb(h: int = 24, w: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def photo_jpeg(name: str = "astronaut", size: int = 128) -> bytes:
    """A real photo from scikit-image, downscaled (tests skip without scikit-image)."""
    data = pytest.importorskip("skimage.data", reason="scikit-image is not installed")
    image = Image.fromarray(getattr(data, name)()).convert("RGB")
    image.thumbnail((size, size))
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=90)
    return buf.getvalue()


# -- servers ---------------------------------------------------------------------------------


def wait_loaded(app: Any, timeout: float = 120.0) -> None:
    assert app.state.service.wait_loaded(timeout), "models did not load in time"


def fp32_request(x: np.ndarray, **parameters: Any) -> dict[str, Any]:
    """A v2 inference request (JSON) of one FP32 input tensor, with request parameters."""
    tensor = {"name": "input", "datatype": "FP32", "shape": list(x.shape)}
    return {"inputs": [{**tensor, "data": x.ravel().tolist()}], "parameters": parameters}


@contextmanager
def serving(settings: Any, **client_options: Any) -> Iterator[Any]:
    """The app in-process under FastAPI's TestClient, loaded: the client."""
    from fastapi.testclient import TestClient

    from service.http.app import create_app

    app = create_app(settings)
    with TestClient(app, **client_options) as client:
        wait_loaded(app)
        yield client


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- Fashion-MNIST ---------------------------------------------------------------------------

# The installed test split (Debian's dataset-fashion-mnist), for the tests that train on it.
needs_data = pytest.mark.skipif(
    not (DEFAULT_DIR / "t10k-images-idx3-ubyte.gz").is_file(),
    reason="dataset-fashion-mnist is not installed",
)


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    header = struct.pack(">HBB", 0, type_code, array.ndim)
    return header + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_gz(path: Path, data: bytes) -> Path:
    path.write_bytes(gzip.compress(data))
    return path


def write_split(folder: Path, split: str, images: np.ndarray, labels: np.ndarray) -> None:
    image_file, label_file = FILES[split]
    write_gz(folder / image_file, idx_bytes(images))
    write_gz(folder / label_file, idx_bytes(labels))
