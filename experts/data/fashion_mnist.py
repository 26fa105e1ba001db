"""Fashion-MNIST from Debian's `dataset-fashion-mnist` package (idx files, gzip).

No torch and no downloads: the files come from the distribution (or any folder named
by argument or `MOE_FASHION_MNIST_DIR`), so training and evaluation work offline and
read exactly the same bytes. Corrupt or missing files raise a `DatasetError` saying
which file and how to get it, instead of a numpy reshape error later.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
ENV_DIR = "MOE_FASHION_MNIST_DIR"
INSTALL_HINT = "apt-get install dataset-fashion-mnist"
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
IMAGE_SIZE = (28, 28)
NUM_CLASSES = 10
UBYTE = 0x08  # idx type code of unsigned bytes, the only one Fashion-MNIST uses


class DatasetError(ValueError):
    """Dataset files that are missing or unreadable; the message names the file."""


def resolve_dir(directory: str | Path | None = None) -> Path:
    """The folder to read: the argument, else MOE_FASHION_MNIST_DIR, else Debian's."""
    if directory is not None:
        return Path(directory).expanduser()
    env = os.environ.get(ENV_DIR)
    return Path(env).expanduser() if env else DEFAULT_DIR


def read_idx(path: str | Path, ndim: int) -> np.ndarray:
    """One gzip-compressed idx file of unsigned bytes -> array of its dims.

    The header is 4 magic bytes (0, 0, type code, number of dims) then one big-endian
    uint32 per dim; the data must hold exactly the product of the dims.
    """
    path = Path(path)
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError as exc:
        raise DatasetError(f"{path}: no such file; {INSTALL_HINT}") from exc
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        raise DatasetError(f"{path}: corrupt gzip file ({exc}); {INSTALL_HINT}") from exc
    header = 4 + 4 * ndim
    if len(data) < 4:
        raise DatasetError(f"{path}: truncated idx file ({len(data)} bytes)")
    zero, dtype, dims = struct.unpack_from(">HBB", data)
    if zero != 0 or dtype != UBYTE or dims != ndim:
        raise DatasetError(
            f"{path}: bad idx magic {data[:4].hex()}; expected 0000{UBYTE:02x}{ndim:02x} "
            f"(unsigned bytes, {ndim}-D)"
        )
    if len(data) < header:
        raise DatasetError(f"{path}: truncated idx file ({len(data)} bytes, header needs {header})")
    shape = struct.unpack_from(f">{ndim}I", data, 4)
    size = int(np.prod(shape, dtype=np.int64))
    if len(data) - header != size:
        raise DatasetError(
            f"{path}: idx header says {'x'.join(map(str, shape))} = {size} bytes of data, "
            f"the file holds {len(data) - header}"
        )
    return np.frombuffer(data, np.uint8, size, header).reshape(shape)


def load_fashion_mnist(
    split: str, data_dir: str | Path | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 28, 28), labels int64 (N,)) of the "train" or "test" split."""
    if split not in FILES:
        raise DatasetError(f"unknown split {split!r}; expected one of {', '.join(FILES)}")
    folder = _folder(data_dir)
    image_file, label_file = (folder / name for name in FILES[split])
    for path in (image_file, label_file):
        if not path.is_file():
            raise DatasetError(
                f"Fashion-MNIST {split} split: {path.name} not found in {folder}; "
                f"{INSTALL_HINT} (or set {ENV_DIR})"
            )
    images = read_idx(image_file, 3)
    labels = read_idx(label_file, 1)
    if images.shape[1:] != IMAGE_SIZE:
        raise DatasetError(f"{image_file}: images are {images.shape[1:]}, expected {IMAGE_SIZE}")
    if len(images) != len(labels):
        raise DatasetError(
            f"{folder}: {len(images)} images in {image_file.name} but {len(labels)} labels "
            f"in {label_file.name}"
        )
    if len(labels) and int(labels.max()) >= NUM_CLASSES:
        raise DatasetError(f"{label_file}: label {int(labels.max())} out of range 0..9")
    return images.copy(), labels.astype(np.int64)


def _folder(directory: str | Path | None) -> Path:
    folder = resolve_dir(directory)
    if not folder.is_dir():
        raise DatasetError(
            f"Fashion-MNIST directory {folder} does not exist; {INSTALL_HINT} (or set {ENV_DIR})"
        )
    return folder


def to_model_input(images: np.ndarray, input_meta: dict[str, Any]) -> np.ndarray:
    """uint8 (N, 28, 28) -> float32 (N, 1, 28, 28) preprocessed as service.images does
    for a 28 x 28 grey image: x / 255, then (x - mean) / std, in float32 throughout
    (the same operations in the same order, so the values are bit-identical)."""
    c, h, w = (int(s) for s in input_meta["shape"])
    if images.ndim != 3 or images.shape[1:] != (h, w) or c != 1:
        raise DatasetError(f"images of shape {images.shape} do not fit the model input {[c, h, w]}")
    x = images.astype(np.float32)[:, np.newaxis] / np.float32(255.0)
    mean = np.asarray(input_meta["mean"], np.float32).reshape(1, c, 1, 1)
    std = np.asarray(input_meta["std"], np.float32).reshape(1, c, 1, 1)
    return np.ascontiguousarray((x - mean) / std, dtype=np.float32)


def calibration_subset(images: np.ndarray, count: int = 512) -> np.ndarray:
    """`count` images evenly spaced over a set (every class of the training set, in
    the same proportions): the calibration sample of `calibrate` and of training."""
    pick = np.linspace(0, len(images) - 1, min(count, len(images))).astype(int)
    return images[pick]
