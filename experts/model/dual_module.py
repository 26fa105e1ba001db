"""Dual-module inference: a little module per fully connected layer with ReLU, kept
beside the weights in `dual-module.safetensors` (Liu et al., ICML 2020).

The little module estimates the layer's pre-activations from a projection of its
input onto the r directions in which the layer's inputs vary most on calibration
images (principal components): z = P x + p, estimate = A z + c, with A = W P^T
(kernels/ops/dual.py runs it). Outputs estimated below the layer's threshold are
written 0, as ReLU would make them, without reading their weight rows. The threshold
is the estimate's `skip_target` quantile on the calibration images: a measured skip
rate, whose accuracy cost `eval` reports. experts/networks/dual_fit.py fits it.

The file holds, per layer (full names, as calibration.json's: "fc6",
"experts.3.fc6"), the tensors `<layer>.project` [r][I], `<layer>.shift` [r],
`<layer>.weight` [O][r], `<layer>.bias` [O] and `<layer>.threshold` [1], and in its
metadata the model's name, the skip target and the calibration source.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy
from safetensors import SafetensorError

from experts.layers import Layer, SpecError
from experts.model.mixture import is_mixture, mixture_spec
from experts.model.spec import fuse_relu, infer_shapes, parse_layers
from kernels import reference as ref

DUAL_MODULE_FILE = "dual-module.safetensors"
FORMAT = "1"
KEYS = ("project", "shift", "weight", "bias", "threshold")


class DualModuleError(SpecError):
    """A dual-module request or file that does not fit the model; names the layer or file."""


@dataclass(frozen=True)
class Little:
    """One layer's little module (grouped experts: each array gains a leading expert
    axis and `threshold` holds one value per expert)."""

    project: np.ndarray  # [r][I]
    shift: np.ndarray  # [r]
    weight: np.ndarray  # [O][r]
    bias: np.ndarray  # [O]
    threshold: np.ndarray  # [1]

    @property
    def rank(self) -> int:
        return int(self.project.shape[-2])

    def estimate(self, x: np.ndarray) -> np.ndarray:
        """The estimates in numpy (fitting, and the networks' numpy twin)."""
        ones_r, ones_o = np.ones(self.rank), np.ones(len(self.bias))
        return ref.little_estimate(
            x, self.project, ones_r, self.shift, self.weight, ones_o, self.bias
        )

    def never_skipping(self) -> Little:
        """A little module of the same shapes that skips nothing (a grouped expert whose
        layer runs without one while the others' have theirs)."""
        zeros = [np.zeros_like(a) for a in (self.project, self.shift, self.weight, self.bias)]
        return Little(*zeros, np.full_like(self.threshold, -np.inf))

    def padded(self, rank: int) -> Little:
        """The same estimates from `rank` directions: the extra ones are zero."""
        extra = rank - self.rank
        return Little(
            np.pad(self.project, ((0, extra), (0, 0))),
            np.pad(self.shift, (0, extra)),
            np.pad(self.weight, ((0, 0), (0, extra))),
            self.bias,
            self.threshold,
        )

    @staticmethod
    def stack(parts: Sequence[Little]) -> Little:
        """The little modules of every expert's same layer, as grouped experts run them
        (an expert that saw few calibration images may have fewer directions)."""
        rank = max(p.rank for p in parts)
        parts = [p.padded(rank) for p in parts]
        return Little(
            *(np.stack([getattr(p, key) for p in parts]) for key in KEYS[:4]),
            np.concatenate([p.threshold for p in parts]),
        )


def dual_layers(meta: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """The layers a little module can serve, by full name, with their (inputs,
    outputs): layers whose op has a dual-module kernel and whose ReLU is fused."""

    def found(layers: list[Layer], shape: Sequence[int], prefix: str) -> dict[str, tuple]:
        fused = fuse_relu(layers)
        shapes = [tuple(shape), *infer_shapes(fused, shape)]
        return {
            f"{prefix}{layer.name}": (int(np.prod(shapes[i])), int(np.prod(shapes[i + 1])))
            for i, layer in enumerate(fused)
            if layer.takes_little_module
        }

    if not is_mixture(meta):
        return found(parse_layers(meta["layers"]), meta["input"]["shape"], "")
    s = mixture_spec(meta)
    out = found(s.stem, s.input_shape, "stem.")
    out |= found(s.gate, s.stem_shape, "gate.")
    for i in range(s.experts):
        out |= found(s.expert, s.stem_shape, f"experts.{i}.")
    return out | found(s.head, (s.features,), "head.")


def _all_layers(meta: dict[str, Any]) -> list[str]:
    if not is_mixture(meta):
        return [layer.name for layer in parse_layers(meta["layers"])]
    s = mixture_spec(meta)
    parts = [("stem.", s.stem), ("gate.", s.gate), ("head.", s.head)]
    parts += [(f"experts.{i}.", s.expert) for i in range(s.experts)]
    return [f"{prefix}{layer.name}" for prefix, layers in parts for layer in layers]


def parse_dual_request(text: str | None) -> tuple[str, ...]:
    """A request as flags, settings and query parameters write it: "fc6,fc7", "all"
    (every layer that can), or "" / "none" (off)."""
    names = tuple(dict.fromkeys(n.strip() for n in (text or "").split(",") if n.strip()))
    if names in ((), ("none",)):
        return ()
    if "none" in names:
        raise DualModuleError(f"dual module {text!r}: 'none' cannot be combined with layers")
    return names


def resolve_layers(meta: dict[str, Any], names: Sequence[str]) -> list[str]:
    """Full layer names for a request: a name matches the layer of that name, or in a
    mixture every part's layer of that name ("fc6": each expert's); "all": every layer
    that can. A layer that is not followed by ReLU is refused, naming it."""
    capable = dual_layers(meta)
    if tuple(names) == ("all",):
        if not capable:
            raise DualModuleError(f"model {meta['name']!r} has no layer followed by ReLU")
        return list(capable)
    every = _all_layers(meta)
    out: list[str] = []
    for name in names:
        matched = [n for n in every if n == name or n.endswith("." + name)]
        if not matched:
            raise DualModuleError(
                f"dual module: model {meta['name']!r} has no layer {name!r}; "
                f"layers that can: {', '.join(capable) or 'none'}"
            )
        for full in matched:
            if full not in capable:
                raise DualModuleError(
                    f"dual module: {full} is not a fully connected layer followed by ReLU, "
                    f"whose negative outputs could be skipped; layers that can: "
                    f"{', '.join(capable) or 'none'}"
                )
        out += [m for m in matched if m not in out]
    return out


@dataclass
class DualModule:
    """The little modules of a model, fitted on `samples` images of `source`."""

    layers: dict[str, Little]
    skip_target: float
    samples: int = 0
    source: str = ""

    def to_bytes(self, meta: dict[str, Any]) -> bytes:
        """The file's bytes (Repository.write_file puts them in place atomically)."""
        tensors = {
            f"{name}.{key}": np.ascontiguousarray(getattr(little, key), np.float32)
            for name, little in self.layers.items()
            for key in KEYS
        }
        info = {
            "format": FORMAT,
            "model": str(meta["name"]),
            "skip_target": repr(self.skip_target),
            "samples": str(self.samples),
            "source": self.source,
        }
        return safetensors.numpy.save(tensors, metadata=info)

    @classmethod
    def load(cls, path: Path, meta: dict[str, Any]) -> DualModule:
        """Read and check against the model: every layer one that can take a little
        module, every shape its layer's; a DualModuleError naming the file and layer."""
        where = str(path)
        try:
            with safetensors.safe_open(path, "numpy") as f:
                info = f.metadata() or {}
                tensors = {key: f.get_tensor(key) for key in f.keys()}
        except (SafetensorError, OSError, ValueError) as exc:
            raise DualModuleError(f"{where}: unreadable dual-module file: {exc}") from exc
        if info.get("model") != meta["name"]:
            raise DualModuleError(
                f"{where}: fitted for model {info.get('model')!r}, not {meta['name']!r}"
            )
        try:
            skip_target = float(info["skip_target"])
        except (KeyError, ValueError, TypeError) as exc:
            raise DualModuleError(f"{where}: metadata lacks {exc}; re-run the fit") from exc
        capable = dual_layers(meta)
        names = sorted({key.rsplit(".", 1)[0] for key in tensors})
        layers = {}
        for name in names:
            if name not in capable:
                raise DualModuleError(
                    f"{where}: {name} is not a layer of {meta['name']!r} followed by ReLU"
                )
            got = {key: tensors.get(f"{name}.{key}") for key in KEYS}
            layers[name] = _checked(got, capable[name], f"{where}: {name}")
        if not layers:
            raise DualModuleError(f"{where}: holds no little module")
        return cls(layers, skip_target, int(info.get("samples", 0)), info.get("source", ""))


def _checked(got: dict[str, np.ndarray | None], io: tuple[int, int], where: str) -> Little:
    missing = [key for key, value in got.items() if value is None]
    if missing:
        raise DualModuleError(f"{where}: missing {', '.join(missing)}")
    i, o = io
    r = got["project"].shape[0] if got["project"].ndim == 2 else -1
    want = {"project": (r, i), "shift": (r,), "weight": (o, r), "bias": (o,), "threshold": (1,)}
    for key, shape in want.items():
        if got[key].shape != shape or r < 1:
            raise DualModuleError(
                f"{where}: {key} has shape {got[key].shape}, the layer needs {shape} "
                f"(rank {r}, {i} inputs, {o} outputs)"
            )
        if not np.isfinite(got[key]).all():
            raise DualModuleError(f"{where}: {key} holds values that are not finite")
    return Little(*(np.ascontiguousarray(got[key], np.float32) for key in KEYS))
