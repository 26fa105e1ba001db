"""safetensors files read one tensor at a time.

A model's weights are read when a layer needs them, not all at load: a server that
holds a model only at precisions it has quantised copies for (experts/model/quantized.py)
never reads its float32 weights at all, and a layer's tensors are dropped once its
launcher has uploaded them. The header (names, dtypes, shapes, metadata) is read and
checked at once, so a truncated or corrupt file still fails when the model loads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, MutableMapping
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open

DTYPES = {
    "F16": np.float16,
    "F32": np.float32,
    "F64": np.float64,
    "I8": np.int8,
    "I16": np.int16,
    "I32": np.int32,
    "I64": np.int64,
    "U8": np.uint8,
    "U16": np.uint16,
    "U32": np.uint32,
}


class TensorFile:
    """The header of a safetensors file, and its tensors read one at a time. Every
    failure is a ValueError (the caller names the file)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            with safe_open(self.path, "np") as f:
                self.metadata: dict[str, str] = dict(f.metadata() or {})
                slices = {key: f.get_slice(key) for key in f.keys()}  # noqa: SIM118
                self.shapes = {k: tuple(int(n) for n in s.get_shape()) for k, s in slices.items()}
                names = {k: s.get_dtype() for k, s in slices.items()}
        except (SafetensorError, OSError, ValueError) as exc:
            raise ValueError(f"its header cannot be read: {exc}") from exc
        unknown = sorted({v for v in names.values() if v not in DTYPES})
        if unknown:
            raise ValueError(f"unsupported tensor dtype {', '.join(unknown)}")
        self.dtypes = {k: np.dtype(DTYPES[v]) for k, v in names.items()}

    def read(self, key: str) -> np.ndarray:
        try:
            with safe_open(self.path, "np") as f:
                return f.get_tensor(key)
        except (SafetensorError, OSError, ValueError) as exc:
            raise ValueError(f"{self.path}: cannot read {key!r}: {exc}") from exc


class LazyWeights(MutableMapping[str, np.ndarray]):
    """A model's weights as a mapping: each tensor read from its file on first use,
    through `check` (validation and conversion, as experts/model/model.py does for
    weights in memory), and kept; tensors set by hand replace the file's."""

    def __init__(self, file: TensorFile, check: Callable[[str, np.ndarray], np.ndarray]) -> None:
        self.file = file
        self._check = check
        self._keys = dict.fromkeys(file.shapes)  # ordered, as in the file
        self._loaded: dict[str, np.ndarray] = {}

    def __getitem__(self, key: str) -> np.ndarray:
        found = self._loaded.get(key)
        if found is None:
            if key not in self._keys:
                raise KeyError(key)
            found = self._loaded[key] = self._check(key, self.file.read(key))
        return found

    def __setitem__(self, key: str, value: np.ndarray) -> None:
        self._keys[key] = None
        self._loaded[key] = value

    def __delitem__(self, key: str) -> None:
        del self._keys[key]
        self._loaded.pop(key, None)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    @property
    def read_keys(self) -> list[str]:
        """The tensors read (or set) so far."""
        return list(self._loaded)
