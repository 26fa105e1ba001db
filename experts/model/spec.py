"""A network as model.json gives it: a list of layer objects, parsed by the op
registry (experts/layers), with the shape of every layer's output and the weight
tensors the whole list needs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from experts.layers import Layer, Shape, SpecError, parse_layer
from experts.layers.relu import Relu


def parse_layers(docs: Any) -> list[Layer]:
    """Every layer of a model.json list, checked; names must be unique."""
    if not isinstance(docs, list) or not docs:
        raise SpecError("layers must be a non-empty list")
    layers = [parse_layer(doc, i) for i, doc in enumerate(docs)]
    names = [layer.name for layer in layers]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise SpecError(f"duplicate layer names: {dupes}")
    return layers


def infer_shapes(layers: Sequence[Layer], input_shape: Sequence[int]) -> list[Shape]:
    """Per-image output shape of every layer, in order; a SpecError on a mismatch."""
    shape = tuple(int(s) for s in input_shape)
    shapes = []
    for layer in layers:
        shape = layer.output_shape(shape)
        shapes.append(shape)
    return shapes


def expected_params(layers: Sequence[Layer], input_shape: Sequence[int]) -> dict[str, Shape]:
    """Every weight tensor the network needs, with its shape."""
    shape = tuple(int(s) for s in input_shape)
    params: dict[str, Shape] = {}
    for layer in layers:
        params.update(layer.param_shapes(shape))
        shape = layer.output_shape(shape)
    return params


def fuse_relu(layers: Sequence[Layer]) -> list[Layer]:
    """Fold a relu layer into the layer before it where that layer can apply it; drop
    the layers that compute nothing at inference (dropout)."""
    out: list[Layer] = []
    for layer in layers:
        if layer.inference_identity:
            continue
        if isinstance(layer, Relu) and out and out[-1].fuses_relu:
            out[-1] = replace(out[-1], relu=True)
            continue
        out.append(layer)
    return out
