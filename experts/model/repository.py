"""The model repository: one folder per model, `<root>/<name>/model.json` plus
`weights.safetensors` (float32) and, beside them, `calibration.json`.

Everything read from disk is checked once, at load (experts/model/model.py's
`validate`). Saving is atomic (write into a hidden temp folder, fsync, rename), so a
crash or a failed validation never leaves a half-written model that a later `load`
would trip over.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy

from experts.model.calibration import CALIBRATION_FILE, Calibration, CalibrationError
from experts.model.dual_module import DUAL_MODULE_FILE, DualModule, DualModuleError
from experts.model.model import NAME_RE, Model, ModelError, check_name, lazy_weights, validate
from experts.model.tensors import LazyWeights, TensorFile

META_FILE = "model.json"
WEIGHTS_FILE = "weights.safetensors"


def default_root() -> Path:
    """`MOE_MODEL_REPOSITORY`, else `models/` at the top of the source tree."""
    env = os.environ.get("MOE_MODEL_REPOSITORY")
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[2] / "models"


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
        dual = None
        if (folder / DUAL_MODULE_FILE).is_file():
            try:
                dual = DualModule.load(folder / DUAL_MODULE_FILE, meta)
            except DualModuleError as exc:
                raise ModelError(f"{where}: {exc}") from exc
        return Model(meta, weights, folder, calibration, dual)

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
    def _read_weights(path: Path, where: str) -> LazyWeights:
        """The header now; each tensor when a layer needs it (experts/model/tensors.py)."""
        if not path.is_file():
            raise ModelError(f"{where}: missing weights file {path}")
        try:
            return lazy_weights(TensorFile(path), where)
        except ValueError as exc:
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
