"""Kernel parameters as tuning data: the space each tunable op searches, and the
database of the winners `moe-alexnet tune` found on a device.

A database is one JSON file per device (platform, device name and driver version),
written atomically to the tuning directory (MOE_TUNING_DIR, default
~/.cache/moe-alexnet/tuning); the package ships the databases of the devices the
project has tuned (kernels/tuned/). Launchers ask their device's database for their
layer's entry (`Tuning.lookup`) and fall back, in order, to the nearest batch bucket of
the same layer, the nearest shape of the same op, the vendor's defaults (a shipped
`vendor-<name>.json`), and their built-in choices (an empty answer).
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

FORMAT = "moe-alexnet-tuning/1"

# Batch sizes are tuned in buckets; a batch runs with its bucket's parameters (the
# smallest bucket at least as large, else the largest).
BUCKETS = (1, 8, 64, 256)

# The tiled GEMM's tile (kernels/cl/tiled.cl): MWG x NWG outputs per work-group of
# MDIMC x NDIMC work-items, K tiles of KWG, both operands in local memory.
TILE = {
    "mwg": (16, 32, 64, 128),
    "nwg": (16, 32, 64, 128),
    "kwg": (8, 16, 32),
    "mdimc": (8, 16, 32),
    "ndimc": (8, 16, 32),
    "vwm": (1, 2, 4),
    "vwn": (1, 2, 4),
    "kwi": (1, 2, 4),
    "padl": (0, 1),
}

# op -> parameter -> the values the tuner may try. A launcher refuses a combination it
# cannot run (ValueError), and the tuner counts it as skipped.
SPACE: dict[str, dict[str, tuple[Any, ...]]] = {
    # algorithm: Winograd F(4x4), conv_direct, the implicit GEMM, its int8 form with
    # channels in the lanes (conv_lanes), im2col + GEMM (the register-blocked CPU
    # kernels), or the tiled GEMM (GPUs); nv: the CPU GEMMs' panel width (16 * nv
    # columns); spread: work-items per compute unit the implicit GEMM aims for at small
    # batch (it splits row blocks to get them).
    "conv": {
        "algorithm": ("winograd", "direct", "implicit", "lanes", "im2col", "tiled"),
        "nv": (1, 2, 3),
        "spread": (1, 2, 4, 8),
        **TILE,
    },
    # form: RO rows per work-item (linear, CPUs), a work-group of LS per row splitting
    # K (linear_split, GPUs at small batch), or the tiled GEMM (GPUs at large batch);
    # rb: images per work-item; kb: bytes of k per block (int8 rows on VNNI).
    "linear": {
        "form": ("rows", "split", "tiled"),
        "ro": (1, 2, 4, 6, 8),
        "rb": (1, 2, 4, 8),
        "kb": (0, 512, 1024, 2048),
        "ls": (32, 64, 128, 256),
        **TILE,
    },
}


class TuningError(ValueError):
    """A tuning database that cannot be used: the message names the file."""


def bucket(n: int) -> int:
    return next((b for b in BUCKETS if n <= b), BUCKETS[-1])


def tuning_dir() -> Path:
    """Where `tune` writes: MOE_TUNING_DIR, else the user's cache directory."""
    given = os.environ.get("MOE_TUNING_DIR")
    if given:
        return Path(given)
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "moe-alexnet" / "tuning"


def device_key(platform: str, device: str, driver: str) -> dict[str, str]:
    return {"platform": platform.strip(), "device": device.strip(), "driver": driver.strip()}


def file_name(key: Mapping[str, str]) -> str:
    """A file name that says which device: its words, lower case, joined by dashes."""
    words = " ".join((key["platform"], key["device"], key["driver"])).lower()
    return re.sub(r"[^a-z0-9.]+", "-", words).strip("-")[:150] + ".json"


def entry_key(op: str, shape: str, precision: str, batch: int) -> str:
    return f"{op}|{shape}|{precision}|{bucket(batch)}"


def conv_shape(
    in_shape: tuple[int, ...],
    weight_shape: tuple[int, ...],
    stride: tuple[int, int],
    padding: tuple[int, int],
    groups: int,
) -> str:
    """A convolution's shape key: input C x H x W, filters M x Cg x KH x KW, stride,
    padding, groups, and for a mixture's grouped experts (filters [E][M][Cg][KH][KW])
    one expert's filters and E."""
    c, h, w = in_shape
    m, cg, kh, kw = weight_shape[-4:]
    experts = weight_shape[0] if len(weight_shape) == 5 else 1
    key = f"{c}x{h}x{w}/{m}x{cg}x{kh}x{kw}/s{stride[0]}x{stride[1]}/p{padding[0]}x{padding[1]}"
    return key + f"/g{groups}" + ("" if experts == 1 else f"/e{experts}")


def _numbers(shape: str) -> list[float]:
    return [math.log1p(int(v)) for v in re.findall(r"\d+", shape)]


def _distance(a: str, b: str) -> float:
    """How far apart two shape keys of one op are (inf where they do not compare)."""
    x, y = _numbers(a), _numbers(b)
    if len(x) != len(y) or re.sub(r"\d+", "", a) != re.sub(r"\d+", "", b):
        return math.inf
    return sum(abs(p - q) for p, q in zip(x, y, strict=True))


@dataclass
class Tuning:
    """One device's database: entry key -> {"params": ..., "ms": ...}."""

    key: dict[str, str]
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)
    vendor: dict[str, dict[str, Any]] = field(default_factory=dict)  # op -> params
    source: str = ""  # the file it was read from ("" when none)

    def lookup(self, op: str, shape: str, precision: str, batch: int) -> tuple[dict, str]:
        """(params, where they came from: "tuned", "nearest bucket", "nearest shape",
        "vendor" or "built-in"); the params of a fallback are the caller's to validate."""
        exact = self.entries.get(entry_key(op, shape, precision, batch))
        if exact is not None:
            return dict(exact["params"]), "tuned"
        want = bucket(batch)
        same, near = [], []
        for key in self.entries:
            e_op, e_shape, e_precision, e_bucket = key.split("|")
            if e_op != op or e_precision != precision:
                continue
            gap = abs(math.log2(int(e_bucket)) - math.log2(want))
            if e_shape == shape:
                same.append((gap, key))
            else:
                near.append((_distance(shape, e_shape), gap, key))
        if same:
            return dict(self.entries[min(same)[1]]["params"]), "nearest bucket"
        near = [n for n in near if n[0] < math.inf]
        if near:
            return dict(self.entries[min(near)[2]]["params"]), "nearest shape"
        if op in self.vendor:
            return dict(self.vendor[op]), "vendor"
        return {}, "built-in"

    def buckets(self, op: str, shape: str, precision: str) -> dict[int, dict[str, Any]]:
        """The tuned entries of one layer, by batch bucket."""
        prefix = f"{op}|{shape}|{precision}|"
        return {
            int(k[len(prefix) :]): dict(e["params"])
            for k, e in self.entries.items()
            if k.startswith(prefix)
        }

    def put(self, op: str, shape: str, precision: str, batch: int, params: dict, ms: float) -> None:
        _check_params(op, params, "a tuned entry")
        self.entries[entry_key(op, shape, precision, batch)] = {
            "params": dict(params),
            "ms": round(float(ms), 5),
        }

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "device": self.key, "entries": dict(sorted(self.entries.items()))}

    def save(self, directory: Path | None = None) -> Path:
        """Write the database atomically (a temporary file renamed over the old one)."""
        directory = tuning_dir() if directory is None else directory
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / file_name(self.key)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tuning-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self.to_json(), f, indent=1)
                f.write("\n")
            os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide it from a server's other user
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self.source = str(path)
        return path


def _check_params(op: str, params: Any, where: str) -> None:
    space = SPACE.get(op)
    if space is None:
        raise TuningError(f"{where}: unknown op {op!r}")
    if not isinstance(params, dict):
        raise TuningError(f"{where}: params of {op} must be an object")
    for name, value in params.items():
        if name not in space or value not in space[name]:
            raise TuningError(f"{where}: {op} parameter {name}={value!r} is not in the space")


def parse(data: Any, key: Mapping[str, str] | None, where: str) -> Tuning:
    """A database from its JSON, checked: its format, that it is `key`'s device (None:
    any), and every entry's key and params."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise TuningError(f"{where}: not a tuning database ({FORMAT!r} expected)")
    device = data.get("device")
    if not isinstance(device, dict) or set(device) != {"platform", "device", "driver"}:
        raise TuningError(f"{where}: no device platform, name and driver")
    if key is not None and device != dict(key):
        raise TuningError(
            f"{where}: tuned for {device['device']} ({device['platform']}, driver "
            f"{device['driver']}), not this device"
        )
    entries = data.get("entries")
    if not isinstance(entries, dict):
        raise TuningError(f"{where}: entries must be an object")
    for name, entry in entries.items():
        parts = name.split("|")
        if len(parts) != 4 or not parts[3].isdigit() or int(parts[3]) not in BUCKETS:
            raise TuningError(f"{where}: bad entry key {name!r}")
        if not isinstance(entry, dict) or not isinstance(entry.get("ms"), int | float):
            raise TuningError(f"{where}: entry {name!r} needs params and ms")
        _check_params(parts[0], entry.get("params"), f"{where}: entry {name!r}")
    return Tuning(dict(device), dict(entries), source=where)


def read(path: Path, key: Mapping[str, str] | None) -> Tuning:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TuningError(f"{path}: unreadable tuning database ({exc})") from exc
    return parse(data, key, str(path))


def read_usable(path: Path, key: Mapping[str, str]) -> Tuning | None:
    """The database at `path`, or None where there is none or it is refused (one line
    on stderr naming the file)."""
    if not path.is_file():
        return None
    try:
        return read(path, key)
    except TuningError as exc:
        print(f"moe-alexnet: warning: {exc}; left out", file=sys.stderr)
        return None


def vendor_defaults(platform: str, directory: Any = None) -> dict[str, dict[str, Any]]:
    """The defaults for a vendor's devices (`vendor-<word>.json` in `directory`, default
    the package's kernels/tuned/, a word of the platform's name), op -> params."""
    shipped = resources.files("kernels").joinpath("tuned") if directory is None else directory
    for word in re.findall(r"[a-z]+", platform.lower()):
        item = shipped.joinpath(f"vendor-{word}.json")
        if item.is_file():
            data = json.loads(item.read_text(encoding="utf-8"))
            for op, params in data.items():
                _check_params(op, params, str(item))
            return data
    return {}


def load(key: Mapping[str, str]) -> Tuning:
    """The database for a device: the package's entries with the user's over them
    (tuning_dir()), or none (also where MOE_TUNING=0, to compare with the built-in
    choices). A corrupt or foreign file is refused with one line on
    stderr naming it, and left out (its layers keep their built-in choices)."""
    name = file_name(key)
    shipped = Path(str(resources.files("kernels").joinpath("tuned", name)))
    tuning = Tuning(dict(key))
    if os.environ.get("MOE_TUNING", "1") == "0":  # the built-in choices everywhere
        return tuning
    for path in (shipped, tuning_dir() / name):
        found = read_usable(path, key)
        if found is not None:
            tuning.entries.update(found.entries)
            tuning.source = found.source
    try:
        tuning.vendor = vendor_defaults(key["platform"])
    except (TuningError, json.JSONDecodeError) as exc:
        print(f"moe-alexnet: warning: vendor defaults: {exc}", file=sys.stderr)
    return tuning
