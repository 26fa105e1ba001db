"""dropout: kept in model.json for training; the identity at inference."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from experts.layers.base import Layer, Shape, Weights, readable_float, register


def _from_onnx(imp: Any, node: Any) -> None:
    attrs = imp.attrs(node, {"ratio", "seed"})
    ratio = attrs.get("ratio", 0.5)
    value = imp.const(node, 1, "ratio")
    if value is not None:
        ratio = float(value.reshape(-1)[0])
    training = imp.const(node, 2, "training_mode")
    if training is not None and bool(training.reshape(-1)[0]):
        raise imp.reject(
            node, "training_mode", True, "only inference (training_mode false) is supported"
        )
    imp.emit(node, Dropout, {"ratio": readable_float(ratio)})


@register
@dataclass(frozen=True)
class Dropout(Layer):
    ratio: float = 0.5

    op: ClassVar[str] = "dropout"
    inference_identity: ClassVar[bool] = True
    onnx_name: ClassVar[str] = "drop"
    onnx_import: ClassVar = {"Dropout": _from_onnx}

    def reference(self, x: np.ndarray, weights: Weights) -> np.ndarray:
        return x

    def torch_module(self, in_shape: Shape) -> Any:
        from torch import nn

        return nn.Dropout(self.ratio)

    def to_onnx(self, graph: Any, x: str, shape: Shape) -> str:
        return x
