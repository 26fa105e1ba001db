"""The model repository (experts/model/repository.py, with model.py's validation): round
trips, every error path, atomic and overwriting saves."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import experts.model.repository as repository
from experts.model.model import Model, ModelError, validate
from experts.model.repository import Repository, default_root
from experts.model.spec import expected_params, parse_layers

TINY: dict[str, Any] = {
    "format": 1,
    "name": "tiny",
    "version": "1",
    "input": {
        "shape": [3, 8, 8],
        "layout": "NCHW",
        "color": "RGB",
        "resize": None,
        "mean": [0.5, 0.5, 0.5],
        "std": [0.25, 0.25, 0.25],
    },
    "layers": [
        {"name": "conv1", "op": "conv", "out_channels": 4, "kernel": 3, "relu": True},
        {"name": "flat", "op": "flatten"},
        {"name": "fc", "op": "linear", "out_features": 3},
    ],
}


def tiny_meta(**changes: Any) -> dict[str, Any]:
    meta = copy.deepcopy(TINY)
    meta.update(changes)
    return meta


def tiny_weights(meta: dict[str, Any] | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    meta = meta or TINY
    rng = np.random.default_rng(seed)
    params = expected_params(parse_layers(meta["layers"]), meta["input"]["shape"])
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in params.items()}


def leftovers(root: Path) -> list[str]:
    """Anything under root besides finished model folders (temp or set-aside folders)."""
    return sorted(p.name for p in root.iterdir() if p.name.startswith("."))


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return Repository(tmp_path / "models")


@pytest.fixture
def saved(repo: Repository) -> dict[str, np.ndarray]:
    weights = tiny_weights()
    repo.save("tiny", tiny_meta(), weights)
    return weights


# -- round trip and Model -------------------------------------------------------------


def test_round_trip(repo: Repository, saved: dict[str, np.ndarray]) -> None:
    model = repo.load("tiny")
    assert model.path == repo.root / "tiny"
    assert model.name == "tiny" and model.version == "1"
    assert model.input_shape == (3, 8, 8)
    assert model.num_classes == 3
    assert model.labels == ["0", "1", "2"]
    assert [layer.name for layer in model.layers] == ["conv1", "flat", "fc"]
    assert model.layers[0].kernel == (3, 3)
    assert set(model.weights) == set(saved)
    for key, value in saved.items():
        assert model.weights[key].dtype == np.float32
        np.testing.assert_array_equal(model.weights[key], value)
    assert model.weight_bytes == sum(w.nbytes for w in saved.values())
    assert repo.names() == ["tiny"]
    assert leftovers(repo.root) == []


def test_labels_and_defaults(repo: Repository) -> None:
    meta = tiny_meta(labels=["cat", "dog", "fish"])
    del meta["version"]
    for key in ("layout", "color", "resize"):
        del meta["input"][key]
    repo.save("tiny", meta, tiny_weights())
    model = repo.load("tiny")
    assert model.labels == ["cat", "dog", "fish"]
    assert model.version == "1"
    assert model.meta["input"]["color"] == "RGB"
    assert model.meta["input"]["layout"] == "NCHW"
    assert model.meta["input"]["resize"] is None


def test_extra_files_saved(repo: Repository) -> None:
    path = repo.save("tiny", tiny_meta(), tiny_weights(), extra_files={"notes.json": b"{}"})
    assert (path / "notes.json").read_bytes() == b"{}"
    repo.load("tiny")


@pytest.mark.parametrize("fname", ["model.json", "../x", ".hidden", "a/b"])
def test_bad_extra_file_name(repo: Repository, fname: str) -> None:
    with pytest.raises(ModelError, match="extra file"):
        repo.save("tiny", tiny_meta(), tiny_weights(), extra_files={fname: b""})
    assert not repo.root.exists() or list(repo.root.iterdir()) == []


def test_float16_and_float64_weights_converted(repo: Repository) -> None:
    weights = tiny_weights()
    weights["fc.weight"] = weights["fc.weight"].astype(np.float16)
    weights["fc.bias"] = weights["fc.bias"].astype(np.float64)
    repo.save("tiny", tiny_meta(), weights)
    assert weights["fc.bias"].dtype == np.float64  # the caller's dict is left alone
    model = repo.load("tiny")
    assert all(w.dtype == np.float32 for w in model.weights.values())


def test_validate_converts_in_place_and_returns_copy() -> None:
    weights = tiny_weights()
    weights["fc.bias"] = weights["fc.bias"].astype(np.float64)
    meta = tiny_meta()
    out = validate(meta, weights, "test")
    assert weights["fc.bias"].dtype == np.float32
    assert out is not meta and out == meta
    model = Model(out, weights, None)
    assert model.num_classes == 3 and model.path is None


def test_names_skips_temp_and_non_models(repo: Repository, saved: Any) -> None:
    (repo.root / "notes").mkdir()
    (repo.root / ".tiny.tmp-1-x").mkdir()
    (repo.root / ".tiny.tmp-1-x" / "model.json").write_text("{}")
    assert repo.names() == ["tiny"]
    assert Repository(repo.root / "absent").names() == []


def test_default_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MOE_MODEL_REPOSITORY", raising=False)
    assert default_root() == Path(repository.__file__).resolve().parents[2] / "models"
    monkeypatch.setenv("MOE_MODEL_REPOSITORY", str(tmp_path))
    assert default_root() == tmp_path


# -- load errors ----------------------------------------------------------------------


def test_unknown_model_lists_available(repo: Repository, saved: Any) -> None:
    repo.save("other", tiny_meta(name="other"), tiny_weights())
    with pytest.raises(ModelError, match=r"unknown model 'nope'.*available: other, tiny"):
        repo.load("nope")


def test_unknown_model_in_empty_repository(repo: Repository) -> None:
    with pytest.raises(ModelError, match="available: none"):
        repo.load("nope")


def test_bad_json_names_line_and_column(repo: Repository, saved: Any) -> None:
    (repo.root / "tiny" / "model.json").write_text('{\n  "format": 1,\n  "name": \n}')
    with pytest.raises(ModelError, match=r"'tiny'.*model\.json is not valid JSON.*line 4 column 1"):
        repo.load("tiny")


def test_json_not_an_object(repo: Repository, saved: Any) -> None:
    (repo.root / "tiny" / "model.json").write_text("[1, 2]")
    with pytest.raises(ModelError, match="'tiny'"):
        repo.load("tiny")


def test_missing_weights_file(repo: Repository, saved: Any) -> None:
    (repo.root / "tiny" / "weights.safetensors").unlink()
    with pytest.raises(ModelError, match=r"'tiny': missing weights file .*weights\.safetensors"):
        repo.load("tiny")


@pytest.mark.parametrize("keep", [0, 5, 12, -7])
def test_truncated_weights_file(repo: Repository, saved: Any, keep: int) -> None:
    path = repo.root / "tiny" / "weights.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[:keep])
    with pytest.raises(ModelError, match=r"'tiny': corrupt weights file .*weights\.safetensors"):
        repo.load("tiny")


def test_folder_and_meta_name_disagree(repo: Repository, saved: Any) -> None:
    (repo.root / "tiny").rename(repo.root / "copy")
    with pytest.raises(ModelError, match="names the model 'tiny', but its folder is 'copy'"):
        repo.load("copy")


def _write_raw(repo: Repository, meta: dict[str, Any], weights: dict[str, np.ndarray]) -> None:
    """Bypass save's validation to put a broken model on disk."""
    import safetensors.numpy

    folder = repo.root / meta["name"]
    folder.mkdir(parents=True)
    (folder / "model.json").write_text(json.dumps(meta))
    safetensors.numpy.save_file(weights, folder / "weights.safetensors")


def test_load_reports_weight_mismatch(repo: Repository) -> None:
    weights = tiny_weights()
    weights["fc.weight"] = np.zeros((3, 5), np.float32)
    _write_raw(repo, tiny_meta(), weights)
    with pytest.raises(ModelError, match=r"'tiny'.*'fc\.weight' has shape \(3, 5\)"):
        repo.load("tiny")


# -- validation errors (through save, which validates first) ---------------------------


def _weights_with(**changes: Any) -> dict[str, np.ndarray]:
    weights = tiny_weights()
    for key, value in changes.items():
        key = key.replace("__", ".")
        if value is None:
            del weights[key]
        else:
            weights[key] = value
    return weights


def _nan_weight() -> np.ndarray:
    w = tiny_weights()["conv1.weight"]
    w[0, 0, 0, 0] = np.nan
    return w


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        (
            _weights_with(conv1__weight=np.zeros((4, 3, 3, 2), np.float32)),
            r"tensor 'conv1\.weight' has shape \(4, 3, 3, 2\), expected \(4, 3, 3, 3\)",
        ),
        (_weights_with(fc__bias=None), r"missing weight tensors \['fc\.bias'\]"),
        (
            _weights_with(fc2__weight=np.zeros(3, np.float32)),
            r"unexpected weight tensors \['fc2\.weight'\]",
        ),
        (_weights_with(conv1__weight=_nan_weight()), r"'conv1\.weight' has 1 non-finite"),
        (_weights_with(fc__bias=np.array([1e300, 0, 0])), r"'fc\.bias' has 1 non-finite"),
        (_weights_with(fc__bias=np.zeros(3, np.int32)), r"'fc\.bias' has dtype int32"),
    ],
)
def test_bad_weights(repo: Repository, weights: dict[str, np.ndarray], message: str) -> None:
    with pytest.raises(ModelError, match=r"model 'tiny': .*" + message):
        repo.save("tiny", tiny_meta(), weights)
    assert not repo.root.exists() or list(repo.root.iterdir()) == []


def _input(**changes: Any) -> dict[str, Any]:
    spec = copy.deepcopy(TINY["input"])
    spec.update(changes)
    return spec


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"format": 2}, "unsupported format 2"),
        ({"format": None}, "unsupported format None"),
        ({"labels": ["a", "b"]}, "labels has 2 entries but the network has 3 classes"),
        ({"labels": [1, 2, 3]}, "labels must be a list of strings"),
        ({"input": _input(shape=[3, 8])}, "input.shape must be 3 positive ints"),
        ({"input": _input(shape=[3, 0, 8])}, "input.shape must be 3 positive ints"),
        ({"input": _input(shape=[3, 8.0, 8])}, "input.shape must be 3 positive ints"),
        ({"input": _input(shape=[2, 8, 8])}, "2 channels"),
        ({"input": _input(mean=[0.5])}, "input.mean has 1 values, expected 3"),
        ({"input": _input(std=[0.2, 0.0, 0.2])}, "input.std must be > 0"),
        ({"input": _input(std=[0.2, "x", 0.2])}, "input.std must be a list of finite"),
        ({"input": _input(color="L")}, "input.color 'L' does not fit 3 channel"),
        ({"input": _input(resize=0)}, "input.resize must be a positive int"),
        ({"input": _input(resize=25.5)}, "input.resize must be a positive int"),
        ({"input": _input(layout="NHWC")}, "input.layout must be 'NCHW'"),
        ({"input": _input(resise=9)}, r"input: unknown keys \['resise'\]"),
        ({"input": [3, 8, 8]}, "'input' must be an object"),
        ({"layers": []}, "layers: layers must be a non-empty list"),
        ({"layers": [{"name": "x", "op": "warp"}]}, r"layers: layer 0 \(x\): unknown op"),
        ({"layers": TINY["layers"][:1]}, "must end in a flat class vector"),
        ({"layers": TINY["layers"][::2]}, "linear needs a flat input"),
        ({"version": 1.5}, "version must be a string"),
    ],
)
def test_bad_meta(repo: Repository, changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ModelError, match=r"model 'tiny': .*" + message):
        repo.save("tiny", tiny_meta(**changes), tiny_weights())
    assert not repo.root.exists() or list(repo.root.iterdir()) == []


@pytest.mark.parametrize("key", ["format", "name", "input", "layers"])
def test_missing_required_key(key: str) -> None:
    meta = tiny_meta()
    del meta[key]
    with pytest.raises(ModelError, match=f"built-in tiny: missing required key '{key}'"):
        validate(meta, tiny_weights(), "built-in tiny")


def test_grey_model_validates() -> None:
    meta = tiny_meta(input=_input(shape=[1, 8, 8], color="L", mean=[0.5], std=[0.5]))
    weights = tiny_weights(meta)
    assert validate(meta, weights, "grey")["input"]["color"] == "L"


@pytest.mark.parametrize(
    "name", ["", ".hidden", "-dash", "a/b", "..", "a b", "x" * 65, "ünï", "a\\b", 3]
)
def test_bad_names(repo: Repository, name: Any) -> None:
    with pytest.raises(ModelError, match="invalid model name"):
        repo.save(name, tiny_meta(name=name), tiny_weights())
    with pytest.raises(ModelError, match="invalid model name"):
        repo.load(name)


def test_save_name_must_match_meta(repo: Repository) -> None:
    with pytest.raises(ModelError, match="metadata names the model 'tiny'"):
        repo.save("other", tiny_meta(), tiny_weights())


# -- atomic writes and overwrite -------------------------------------------------------


def test_write_failure_leaves_nothing(repo: Repository, monkeypatch: pytest.MonkeyPatch) -> None:
    real = repository._write_file

    def failing(path: Path, data: bytes) -> None:
        if path.name == "weights.safetensors":
            real(path, data[: len(data) // 2])  # a half-written file, then the disk "fills"
            raise OSError(28, "No space left on device")
        real(path, data)

    monkeypatch.setattr(repository, "_write_file", failing)
    with pytest.raises(ModelError, match="No space left on device"):
        repo.save("tiny", tiny_meta(), tiny_weights())
    assert list(repo.root.iterdir()) == []


def test_interrupt_leaves_nothing(repo: Repository, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*args: Any) -> bytes:
        raise KeyboardInterrupt

    monkeypatch.setattr(repository.safetensors.numpy, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        repo.save("tiny", tiny_meta(), tiny_weights())
    assert list(repo.root.iterdir()) == []


def test_existing_model_needs_overwrite(repo: Repository, saved: dict[str, np.ndarray]) -> None:
    with pytest.raises(ModelError, match="already exists"):
        repo.save("tiny", tiny_meta(), tiny_weights(seed=1))
    np.testing.assert_array_equal(repo.load("tiny").weights["fc.bias"], saved["fc.bias"])
    assert leftovers(repo.root) == []


def test_overwrite_replaces(repo: Repository, saved: Any) -> None:
    (repo.root / "tiny" / "stale.txt").write_text("old")
    new = tiny_weights(seed=1)
    repo.save("tiny", tiny_meta(labels=["a", "b", "c"]), new, overwrite=True)
    model = repo.load("tiny")
    assert model.labels == ["a", "b", "c"]
    np.testing.assert_array_equal(model.weights["fc.bias"], new["fc.bias"])
    assert not (repo.root / "tiny" / "stale.txt").exists()
    assert leftovers(repo.root) == []


def test_failed_overwrite_keeps_old_model(
    repo: Repository, saved: dict[str, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(path: Path, data: bytes) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(repository, "_write_file", failing)
    with pytest.raises(ModelError, match="Input/output error"):
        repo.save("tiny", tiny_meta(), tiny_weights(seed=1), overwrite=True)
    monkeypatch.undo()
    np.testing.assert_array_equal(repo.load("tiny").weights["fc.bias"], saved["fc.bias"])
    assert leftovers(repo.root) == []


def test_failed_final_rename_restores_old_model(
    repo: Repository, saved: dict[str, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    real_rename = repository.os.rename

    def rename(src: Any, dst: Any) -> None:
        if Path(src).name.startswith(".tiny.tmp-"):
            raise OSError(13, "Permission denied")
        real_rename(src, dst)

    monkeypatch.setattr(repository.os, "rename", rename)
    with pytest.raises(ModelError, match="Permission denied"):
        repo.save("tiny", tiny_meta(), tiny_weights(seed=1), overwrite=True)
    monkeypatch.undo()
    np.testing.assert_array_equal(repo.load("tiny").weights["fc.bias"], saved["fc.bias"])
    assert leftovers(repo.root) == []


def test_invalid_overwrite_keeps_old_model(repo: Repository, saved: Any) -> None:
    with pytest.raises(ModelError):
        repo.save("tiny", tiny_meta(), _weights_with(fc__bias=None), overwrite=True)
    repo.load("tiny")
    assert leftovers(repo.root) == []
