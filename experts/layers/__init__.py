"""The op registry: every op the engine runs, one module per op in this package.

An op's module declares, in one class (experts/layers/base.py says what): its
model.json keys and their checks, its output shape and weights, its OpenCL launcher,
its numpy twin, its PyTorch module and its ONNX mapping both ways. Adding an op is
adding a module here (and its tests): the registry imports every module of the
package, and nothing else in the project switches on an op's name.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping
from typing import Any

from experts.layers.base import LAYERS, Build, Layer, Shape, SpecError, Weights

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["LAYERS", "Build", "Layer", "Shape", "SpecError", "Weights", "parse_layer"]


def parse_layer(doc: Any, index: int) -> Layer:
    """The layer a model.json object describes (`index`: its place, for messages)."""
    if not isinstance(doc, Mapping):
        raise SpecError(f"layer {index}: expected an object, got {type(doc).__name__}")
    name = doc.get("name", f"layer{index}")
    if not isinstance(name, str) or not name:
        raise SpecError(f"layer {index}: name must be a non-empty string, got {name!r}")
    where = f"layer {index} ({name})"
    cls = LAYERS.get(doc.get("op"))
    if cls is None:
        raise SpecError(f"{where}: unknown op {doc.get('op')!r}; supported: {', '.join(LAYERS)}")
    return cls.from_json({**doc, "name": name}, where)
