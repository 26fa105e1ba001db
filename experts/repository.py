"""The model repository: one folder per model, `<root>/<name>/model.json` plus
`weights.safetensors` (float32).

Everything read from disk is checked here, once, so the network code can trust a
`Model`: a bad file becomes a `ModelError` naming the model and the part at fault
instead of a shape error deep inside a kernel launch. Saving is atomic (write into a
hidden temp folder, fsync, rename), so a crash or a failed validation never leaves a
half-written model that a later `load` would trip over.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy
from safetensors import SafetensorError

from experts.calibration import (
    CALIBRATION_FILE,
    Calibration,
    CalibrationError,
    layer_precisions,
)
from experts.mixture import MixtureSpec, is_mixture, mixture_params, mixture_spec
from experts.spec import SpecError, expected_params, infer_shapes, normalise_layers

FORMAT = 1
META_FILE = "model.json"
WEIGHTS_FILE = "weights.safetensors"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
COLORS = {1: "L", 3: "RGB"}
INPUT_KEYS = {"shape", "layout", "color", "resize", "mean", "std"}
FLOAT_DTYPES = (np.float16, np.float32, np.float64)


class ModelError(ValueError):
    """A model that cannot be loaded, saved or run; the message names the model and
    the part at fault (file, layer or tensor)."""


# -- the in-memory model --------------------------------------------------------------


@dataclass
class Model:
    """A validated model: its normalised metadata, float32 weights, and the folder it
    came from (None for models built in memory)."""

    meta: dict[str, Any]
    weights: dict[str, np.ndarray]
    path: Path | None = None
    calibration: Calibration | None = None  # calibration.json, checked against the model

    @property
    def name(self) -> str:
        return str(self.meta["name"])

    @property
    def version(self) -> str:
        return str(self.meta.get("version", "1"))

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = (int(s) for s in self.meta["input"]["shape"])
        return (c, h, w)

    @property
    def is_mixture(self) -> bool:
        return is_mixture(self.meta)

    @cached_property
    def mixture(self) -> MixtureSpec:
        """The checked parts of a mixture of experts (a ModelError for other models)."""
        if not self.is_mixture:
            raise ModelError(f"model {self.name!r} is not a mixture of experts")
        return mixture_spec(self.meta)

    @cached_property
    def layers(self) -> list[dict[str, Any]]:
        """Layers with defaults filled in (what the networks consume); for a mixture,
        the head's (whose last layer decides whether scores are probabilities)."""
        if self.is_mixture:
            return self.mixture.head
        return normalise_layers(self.meta["layers"])

    @cached_property
    def num_classes(self) -> int:
        if self.is_mixture:
            return self.mixture.num_classes
        return math.prod(infer_shapes(self.layers, self.input_shape)[-1])

    @property
    def labels(self) -> list[str]:
        """One label per class; the class indices as strings when the model has none."""
        labels = self.meta.get("labels")
        if labels is None:
            return [str(i) for i in range(self.num_classes)]
        return list(labels)

    @property
    def weight_bytes(self) -> int:
        return sum(int(w.nbytes) for w in self.weights.values())


# -- validation -----------------------------------------------------------------------


def check_name(name: Any, where: str = "model") -> str:
    """Model names become folder names: keep them to a portable, traversal-free set."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ModelError(
            f"{where}: invalid model name {name!r}: use 1 to 64 letters, digits, '.', '_' "
            f"or '-', starting with a letter or digit"
        )
    return name


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_input(spec: Any, where: str) -> dict[str, Any]:
    """The `input` block, with layout, colour and resize defaults filled in."""
    if not isinstance(spec, dict):
        raise ModelError(f"{where}: 'input' must be an object, got {type(spec).__name__}")
    unknown = set(spec) - INPUT_KEYS
    if unknown:
        raise ModelError(f"{where}: input: unknown keys {sorted(unknown)}")
    shape = spec.get("shape")
    if (
        not (isinstance(shape, list | tuple) and len(shape) == 3 and all(_is_int(s) for s in shape))
        or min(shape) < 1
    ):
        raise ModelError(f"{where}: input.shape must be 3 positive ints [C, H, W], got {shape!r}")
    c = shape[0]
    if c not in COLORS:
        raise ModelError(f"{where}: input.shape has {c} channels; supported: 1 (L) or 3 (RGB)")
    out = dict(spec, shape=list(shape))
    out["layout"] = spec.get("layout", "NCHW")
    if out["layout"] != "NCHW":
        raise ModelError(f"{where}: input.layout must be 'NCHW', got {out['layout']!r}")
    out["color"] = spec.get("color", COLORS[c])
    if out["color"] != COLORS[c]:
        raise ModelError(
            f"{where}: input.color {out['color']!r} does not fit {c} channel(s); "
            f"expected {COLORS[c]!r}"
        )
    resize = spec.get("resize")
    if resize is not None and not (_is_int(resize) and resize >= 1):
        raise ModelError(f"{where}: input.resize must be a positive int or null, got {resize!r}")
    out["resize"] = resize
    for key in ("mean", "std"):
        values = spec.get(key)
        if not (isinstance(values, list | tuple) and all(_is_number(v) for v in values)):
            raise ModelError(
                f"{where}: input.{key} must be a list of finite numbers, got {values!r}"
            )
        if len(values) != c:
            raise ModelError(f"{where}: input.{key} has {len(values)} values, expected {c}")
        out[key] = [float(v) for v in values]
    if min(out["std"]) <= 0:
        raise ModelError(f"{where}: input.std must be > 0, got {out['std']}")
    return out


def _check_meta(meta: Any, where: str) -> dict[str, Any]:
    """Top-level keys and the input block; layers are checked by `_check_layers`."""
    if not isinstance(meta, dict):
        raise ModelError(f"{where}: metadata must be a JSON object, got {type(meta).__name__}")
    if "format" not in meta:
        raise ModelError(f"{where}: missing required key 'format'")
    if meta["format"] != FORMAT:
        raise ModelError(
            f"{where}: unsupported format {meta['format']!r}; this version reads format {FORMAT}"
        )
    required = ("name", "input") + (() if is_mixture(meta) else ("layers",))
    for key in required:
        if key not in meta:
            raise ModelError(f"{where}: missing required key {key!r}")
    out = copy.deepcopy(meta)
    out["name"] = check_name(meta["name"], where)
    version = meta.get("version", "1")
    if not (isinstance(version, str) or _is_int(version)):
        raise ModelError(f"{where}: version must be a string, got {version!r}")
    out["version"] = str(version)
    out["input"] = _check_input(meta["input"], where)
    return out


def _check_layers(meta: dict[str, Any], where: str) -> dict[str, tuple[int, ...]]:
    """Layers must shape-check to a flat class vector; returns the expected tensors."""
    if is_mixture(meta):
        try:
            spec = mixture_spec(meta)
            params = mixture_params(meta)
        except SpecError as exc:
            raise ModelError(f"{where}: {exc}") from exc
        _check_labels(meta, spec.num_classes, where)
        return params
    try:
        layers = normalise_layers(meta["layers"])
        shapes = infer_shapes(layers, meta["input"]["shape"])
        params = expected_params(layers, meta["input"]["shape"])
    except SpecError as exc:
        raise ModelError(f"{where}: layers: {exc}") from exc
    if len(shapes[-1]) != 1:
        raise ModelError(
            f"{where}: layers: the network must end in a flat class vector, but the last "
            f"layer ({layers[-1]['name']}) outputs {shapes[-1]}; add flatten/linear layers"
        )
    _check_labels(meta, shapes[-1][0], where)
    return params


def _check_labels(meta: dict[str, Any], classes: int, where: str) -> None:
    labels = meta.get("labels")
    if labels is not None:
        if not (isinstance(labels, list) and all(isinstance(x, str) for x in labels)):
            raise ModelError(f"{where}: labels must be a list of strings")
        if len(labels) != classes:
            raise ModelError(
                f"{where}: labels has {len(labels)} entries but the network has {classes} classes"
            )


def _check_tensor(key: str, value: Any, shape: tuple[int, ...], where: str) -> np.ndarray:
    """One weight tensor: the right shape, floating point (made float32), all finite."""
    if not isinstance(value, np.ndarray):
        raise ModelError(f"{where}: tensor {key!r} is a {type(value).__name__}, not an array")
    if value.dtype not in FLOAT_DTYPES:
        raise ModelError(f"{where}: tensor {key!r} has dtype {value.dtype}, expected float32")
    if value.shape != shape:
        raise ModelError(f"{where}: tensor {key!r} has shape {value.shape}, expected {shape}")
    with np.errstate(over="ignore"):  # float64 overflow to inf is caught just below
        value = np.ascontiguousarray(value, dtype=np.float32)
    if not np.isfinite(value).all():
        bad = int(np.count_nonzero(~np.isfinite(value)))
        raise ModelError(f"{where}: tensor {key!r} has {bad} non-finite values (NaN or inf)")
    return value


def _check_weights(weights: Any, params: dict[str, tuple[int, ...]], where: str) -> None:
    if not isinstance(weights, dict):
        raise ModelError(f"{where}: weights must be a dict of arrays")
    missing = [k for k in params if k not in weights]
    if missing:
        raise ModelError(f"{where}: missing weight tensors {missing}")
    extra = sorted(set(weights) - set(params))
    if extra:
        raise ModelError(f"{where}: unexpected weight tensors {extra} (no layer uses them)")
    for key, shape in params.items():
        weights[key] = _check_tensor(key, weights[key], shape, where)


def validate(meta: Any, weights: dict[str, np.ndarray], where: str) -> dict[str, Any]:
    """Check metadata and weights against each other; return the normalised metadata
    (a copy, with defaults filled in).

    Float16/float64 tensors are converted to contiguous float32 *in place* in `weights`,
    so after this call the dict is exactly what the networks and `save` expect.
    `where` names the model in every message ("model 'alexnet'", "built-in alexnet").
    """
    out = _check_meta(meta, where)
    params = _check_layers(out, where)
    _check_weights(weights, params, where)
    try:
        layer_precisions(out)  # model.json's per-layer precision map names real layers
    except CalibrationError as exc:
        raise ModelError(f"{where}: {exc}") from exc
    return out


# -- the repository on disk -----------------------------------------------------------


def default_root() -> Path:
    """`MOE_MODEL_REPOSITORY`, else `models/` at the top of the source tree."""
    env = os.environ.get("MOE_MODEL_REPOSITORY")
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parent.parent / "models"


def _fsync_dir(path: Path) -> None:
    """Make a rename durable; not possible on every platform, so best effort."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_file(path: Path, data: bytes) -> None:
    """Write and fsync, so the later rename never exposes an empty or partial file."""
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _check_extra_files(extra_files: dict[str, bytes], where: str) -> None:
    for fname, data in extra_files.items():
        if (
            not isinstance(fname, str)
            or fname in (META_FILE, WEIGHTS_FILE)
            or fname.startswith(".")
            or Path(fname).name != fname
        ):
            raise ModelError(f"{where}: invalid extra file name {fname!r}")
        if not isinstance(data, bytes | bytearray):
            raise ModelError(f"{where}: extra file {fname!r} must be bytes")


class Repository:
    """A folder of models; see the module docstring for the layout."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def names(self) -> list[str]:
        """Models present (folders holding a model.json), sorted; temp folders excluded."""
        if not self.root.is_dir():
            return []
        return sorted(
            p.name
            for p in self.root.iterdir()
            if NAME_RE.match(p.name) and (p / META_FILE).is_file()
        )

    def path(self, name: str) -> Path:
        return self.root / check_name(name)

    def load(self, name: str) -> Model:
        """Read and validate one model; every failure is a ModelError naming the file."""
        folder = self.path(name)
        where = f"model {name!r}"
        if not (folder / META_FILE).is_file():
            available = ", ".join(self.names()) or "none"
            raise ModelError(
                f"unknown model {name!r} in repository {self.root}; available: {available}"
            )
        meta = self._read_meta(folder / META_FILE, where)
        weights = self._read_weights(folder / WEIGHTS_FILE, where)
        if isinstance(meta, dict) and meta.get("name") != name:
            raise ModelError(
                f"{where}: {folder / META_FILE} names the model {meta.get('name')!r}, but its "
                f"folder is {name!r}; make them agree"
            )
        meta = validate(meta, weights, where)
        calibration = None
        if (folder / CALIBRATION_FILE).is_file():
            doc = self._read_meta(folder / CALIBRATION_FILE, where)
            try:
                calibration = Calibration.from_json(doc, meta, f"{where}: {CALIBRATION_FILE}")
            except CalibrationError as exc:
                raise ModelError(str(exc)) from exc
        return Model(meta, weights, folder, calibration)

    @staticmethod
    def _read_meta(path: Path, where: str) -> Any:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ModelError(f"{where}: cannot read {path}: {exc.strerror or exc}") from exc
        except UnicodeDecodeError as exc:
            raise ModelError(f"{where}: {path} is not UTF-8 text: {exc}") from exc
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ModelError(
                f"{where}: {path} is not valid JSON: {exc.msg} at line {exc.lineno} "
                f"column {exc.colno}"
            ) from exc

    @staticmethod
    def _read_weights(path: Path, where: str) -> dict[str, np.ndarray]:
        if not path.is_file():
            raise ModelError(f"{where}: missing weights file {path}")
        try:
            return dict(safetensors.numpy.load_file(path))
        except (SafetensorError, ValueError, OSError) as exc:
            raise ModelError(f"{where}: corrupt weights file {path}: {exc}") from exc

    def save(
        self,
        name: str,
        meta: dict[str, Any],
        weights: dict[str, np.ndarray],
        overwrite: bool = False,
        extra_files: dict[str, bytes] | None = None,
    ) -> Path:
        """Validate, then write the model atomically; returns its folder.

        The files go into a hidden temp folder inside the root (same filesystem, so the
        final rename is atomic); an existing model is replaced only with `overwrite`,
        by renaming it aside first and removing it once the new one is in place.
        """
        where = f"model {name!r}"
        folder = self.path(name)
        if isinstance(meta, dict) and "name" in meta and meta["name"] != name:
            raise ModelError(f"{where}: metadata names the model {meta['name']!r}")
        weights = dict(weights)  # validate converts in place: leave the caller's dict alone
        meta = validate(meta, weights, where)
        extra_files = dict(extra_files or {})
        _check_extra_files(extra_files, where)
        if folder.exists() and not overwrite:
            raise ModelError(f"{where} already exists at {folder}; pass overwrite to replace it")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-{os.getpid()}-", dir=self.root))
        except OSError as exc:
            raise ModelError(f"{where}: cannot write to {self.root}: {exc}") from exc
        try:
            self._write_folder(tmp, meta, weights, extra_files)
            self._move_into_place(tmp, folder, overwrite)
        except BaseException as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(exc, OSError):
                raise ModelError(f"{where}: cannot save to {folder}: {exc}") from exc
            raise
        return folder

    def write_file(self, name: str, fname: str, data: bytes) -> Path:
        """Add or replace one file beside a model's weights (calibration.json),
        atomically: written to a hidden temp file, fsynced, renamed over."""
        folder = self.path(name)
        if not (folder / META_FILE).is_file():
            raise ModelError(f"unknown model {name!r} in repository {self.root}")
        _check_extra_files({fname: data}, f"model {name!r}")
        tmp = folder / f".{fname}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            _write_file(tmp, data)
            os.replace(tmp, folder / fname)
            _fsync_dir(folder)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise ModelError(f"model {name!r}: cannot write {folder / fname}: {exc}") from exc
        return folder / fname

    @staticmethod
    def _write_folder(
        tmp: Path, meta: dict[str, Any], weights: dict[str, np.ndarray], extra: dict[str, bytes]
    ) -> None:
        _write_file(tmp / META_FILE, (json.dumps(meta, indent=2) + "\n").encode("utf-8"))
        _write_file(tmp / WEIGHTS_FILE, safetensors.numpy.save(weights))
        for fname, data in extra.items():
            _write_file(tmp / fname, bytes(data))
        _fsync_dir(tmp)

    def _move_into_place(self, tmp: Path, folder: Path, overwrite: bool) -> None:
        """Rename `tmp` to `folder`; an old `folder` is set aside and restored on failure."""
        if not folder.exists():
            os.rename(tmp, folder)
            _fsync_dir(self.root)
            return
        if not overwrite:
            raise ModelError(f"model {folder.name!r} already exists at {folder}")
        old = self.root / f".{folder.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
        os.rename(folder, old)
        try:
            os.rename(tmp, folder)
        except BaseException:
            os.rename(old, folder)
            raise
        _fsync_dir(self.root)
        shutil.rmtree(old, ignore_errors=True)
