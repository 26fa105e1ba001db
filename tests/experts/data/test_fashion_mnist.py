"""The Fashion-MNIST idx reader and the training-time preprocessing
(experts/data/fashion_mnist.py, no torch needed): synthetic idx.gz files written here,
every corruption a DatasetError naming the file."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from experts.data.fashion_mnist import (
    DEFAULT_DIR,
    FILES,
    DatasetError,
    load_fashion_mnist,
    read_idx,
    resolve_dir,
    to_model_input,
)
from experts.model.architectures import FASHION_INPUT
from service.images import preprocess
from tests.helpers import idx_bytes, write_gz, write_split


@pytest.fixture
def tiny(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    labels = np.array([0, 9, 3, 3, 1], np.uint8)
    write_split(tmp_path, "train", images, labels)
    write_split(tmp_path, "test", images[:2], labels[:2])
    return tmp_path, images, labels


def test_reads_synthetic_split(tiny):
    folder, images, labels = tiny
    x, y = load_fashion_mnist("train", folder)
    assert x.dtype == np.uint8 and x.shape == (5, 28, 28)
    assert y.dtype == np.int64 and y.tolist() == labels.tolist()
    np.testing.assert_array_equal(x, images)
    x, y = load_fashion_mnist("test", data_dir=folder)
    assert x.shape == (2, 28, 28) and y.tolist() == [0, 9]
    assert x.flags.writeable  # a copy, not a view of the decompressed bytes


def test_directory_from_environment(tiny, monkeypatch):
    folder, _, _ = tiny
    monkeypatch.setenv("MOE_FASHION_MNIST_DIR", str(folder))
    assert resolve_dir() == folder
    assert len(load_fashion_mnist("test")[1]) == 2
    monkeypatch.delenv("MOE_FASHION_MNIST_DIR")
    assert resolve_dir() == DEFAULT_DIR


def test_missing_directory_says_how_to_install(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetError, match="apt-get install dataset-fashion-mnist") as info:
        load_fashion_mnist("train", missing)
    assert str(missing) in str(info.value)


def test_missing_file_is_named(tiny):
    folder, _, _ = tiny
    (folder / FILES["test"][1]).unlink()
    with pytest.raises(DatasetError) as info:
        load_fashion_mnist("test", folder)
    message = str(info.value)
    assert FILES["test"][1] in message and str(folder) in message
    assert "apt-get install dataset-fashion-mnist" in message


def test_bad_magic(tmp_path):
    path = write_gz(tmp_path / "x.gz", idx_bytes(np.zeros((2, 3), np.uint8), type_code=0x0D))
    with pytest.raises(DatasetError, match="bad idx magic"):
        read_idx(path, 2)
    path = write_gz(tmp_path / "y.gz", idx_bytes(np.zeros(4, np.uint8)))
    with pytest.raises(DatasetError, match="bad idx magic"):
        read_idx(path, 3)  # 1-D labels where images were expected


def test_truncated_data_and_header(tmp_path):
    data = idx_bytes(np.zeros((3, 28, 28), np.uint8))
    path = write_gz(tmp_path / "short.gz", data[:-10])
    with pytest.raises(DatasetError, match="the file holds"):
        read_idx(path, 3)
    path = write_gz(tmp_path / "header.gz", data[:6])  # magic intact, dims cut
    with pytest.raises(DatasetError, match="truncated"):
        read_idx(path, 3)


def test_truncated_gzip_stream(tmp_path):
    compressed = gzip.compress(idx_bytes(np.zeros((3, 28, 28), np.uint8)))
    path = tmp_path / "cut.gz"
    path.write_bytes(compressed[: len(compressed) // 2])
    with pytest.raises(DatasetError, match="corrupt gzip"):
        read_idx(path, 3)
    path.write_bytes(b"not gzip at all")
    with pytest.raises(DatasetError, match="corrupt gzip"):
        read_idx(path, 3)


def test_count_mismatch_and_bad_labels(tiny):
    folder, images, labels = tiny
    write_gz(folder / FILES["train"][1], idx_bytes(labels[:4]))
    with pytest.raises(DatasetError, match="5 images .* but 4 labels"):
        load_fashion_mnist("train", folder)
    write_gz(folder / FILES["train"][1], idx_bytes(np.array([0, 1, 2, 10, 4], np.uint8)))
    with pytest.raises(DatasetError, match="out of range"):
        load_fashion_mnist("train", folder)
    write_gz(folder / FILES["train"][0], idx_bytes(np.zeros((5, 27, 28), np.uint8)))
    with pytest.raises(DatasetError, match="expected \\(28, 28\\)"):
        load_fashion_mnist("train", folder)


def test_unknown_split(tiny):
    with pytest.raises(DatasetError, match="unknown split"):
        load_fashion_mnist("validation", tiny[0])


def test_to_model_input_matches_service_preprocessing(tiny):
    """Bit-identical to what the service computes for the same image as a PNG file."""
    _, images, _ = tiny
    x = to_model_input(images, FASHION_INPUT)
    assert x.dtype == np.float32 and x.shape == (5, 1, 28, 28)
    for image, got in zip(images, x, strict=True):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        want = preprocess(Image.open(buffer), FASHION_INPUT)
        np.testing.assert_array_equal(got, want)


def test_to_model_input_rejects_wrong_shape():
    with pytest.raises(DatasetError, match="do not fit"):
        to_model_input(np.zeros((2, 32, 32), np.uint8), FASHION_INPUT)


@pytest.mark.skipif(not DEFAULT_DIR.is_dir(), reason="dataset-fashion-mnist is not installed")
def test_real_test_split():
    x, y = load_fashion_mnist("test", DEFAULT_DIR)
    assert x.shape == (10000, 28, 28)
    assert np.bincount(y).tolist() == [1000] * 10
