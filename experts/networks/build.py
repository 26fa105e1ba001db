"""A model compiled for a device at a precision: a plain network or a mixture, behind
the one interface of experts/networks/base.py."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from experts.model.calibration import merge_layer_precisions, needs_ranges
from experts.model.dual_module import DUAL_MODULE_FILE, DualModuleError, Little, resolve_layers
from experts.model.model import Model
from experts.model.quantized import load_copy
from experts.networks.base import Runnable
from experts.networks.calibrate import default_calibration
from experts.networks.dual_fit import default_dual_module
from experts.networks.mixture import MixtureNetwork
from experts.networks.network import Network
from kernels.ops import PlaneStore
from kernels.precision import get_precision
from kernels.runtime import Device


def little_modules(model: Model, request: Sequence[str]) -> dict[str, Little]:
    """The little modules a dual-module request (layer names, or "all") asks for,
    from the model's dual-module file, or (with a warning, fitted once per model and
    layer) from a synthetic calibration set where the model has no such file."""
    names = resolve_layers(model.meta, request)
    have = model.dual_module.layers if model.dual_module is not None else {}
    missing = [n for n in names if n not in have]
    if missing and model.dual_module is not None and model.path is not None:
        raise DualModuleError(
            f"{model.path / DUAL_MODULE_FILE}: no little module for {', '.join(missing)}; "
            f"re-run `moe-alexnet calibrate --model {model.name} --dual-module "
            f"{','.join(names)}`"
        )
    if missing:
        fitted = default_dual_module(model.meta, model.weights, missing)
        if model.dual_module is None:
            model.dual_module = fitted
        else:
            model.dual_module.layers.update(fitted.layers)
        have = model.dual_module.layers
    return {n: have[n] for n in names}


def store_for(precisions: Sequence[str]) -> PlaneStore | None:
    """A weight store for one model held at these precisions: one where int16 and int8
    are both among them (int8 then reads int16's high plane), else None."""
    return PlaneStore() if {"int16", "int8"} <= set(precisions) else None


def bits_per_weight(network: Runnable) -> dict[str, float]:
    """Bits per weight as stored, per layer and (key "model") over all of them: what
    `bench` and `eval` report for packed precisions (kernels/bitgroups.py)."""
    layers = network.layer_bits()
    total = sum(count for count, _ in layers.values())
    out = {name: round(bits, 3) for name, (_, bits) in layers.items()}
    out["model"] = round(sum(c * b for c, b in layers.values()) / max(total, 1), 3)
    return out


def storage_note(precision: str, network: Runnable, store: PlaneStore | None) -> dict[str, Any]:
    """A result row's note of how its weights are stored, where that is news: read from
    another precision's high plane (a store), or packed (with the bits per weight)."""
    p = get_precision(precision)
    note: dict[str, Any] = {}
    if store is not None and p.high_plane_of:
        note["weights"] = f"{p.high_plane_of}'s high byte plane"
    if p.packed:
        note["bits_per_weight"] = bits_per_weight(network)
    return note


def weights_for(
    model: Model,
    precision: str,
    layer_precisions: dict[str, str] | None = None,
    store: PlaneStore | None = None,
) -> Mapping[str, Any]:
    """The weights a build reads: the model's quantised copy at `precision` where it
    has one made for these per-layer precisions (experts/model/quantized.py; with a
    store, int8 reads int16's integers, so int16's copy), else its float32 weights."""
    source, layers = precision, dict(layer_precisions or {})
    high = get_precision(precision).high_plane_of
    if store is not None and high:
        source = high
        layers = {name: high if p == precision else p for name, p in layers.items()}
    copy = load_copy(model, source, layers)
    return model.weights if copy is None else copy


def build_network(
    model: Model,
    device: Device,
    precision: str = "fp32",
    layer_precisions: dict[str, str] | None = None,
    dual_module: Sequence[str] = (),
    store: PlaneStore | None = None,
) -> Runnable:
    """`layer_precisions` (layer -> precision) go over model.json's own. Quantised
    layers take their input ranges from the model's calibration.json, or (with a
    warning, computed once per model) from a synthetic calibration set.
    `dual_module`: layers to run with their little modules (`little_modules`).
    `store`: one per model, passed to its int16 and int8 builds, makes them share one
    copy of the weights (kernels/ops/store.py; int8 then reads int16's high plane)."""
    network = _build(model, device, precision, layer_precisions, store)
    if dual_module:
        return network.with_dual_module(little_modules(model, dual_module))
    return network


def _build(
    model: Model,
    device: Device,
    precision: str,
    layer_precisions: dict[str, str] | None,
    store: PlaneStore | None,
) -> Runnable:
    merged = merge_layer_precisions(model.meta, layer_precisions)
    ranges = None
    if needs_ranges(model.meta, precision, merged):
        if model.calibration is None:
            model.calibration = default_calibration(model.meta, model.weights)
        ranges = model.calibration.ranges
    weights = weights_for(model, precision, layer_precisions, store)
    if model.is_mixture:
        return MixtureNetwork(device, model.meta, weights, precision, merged, ranges, store)
    return Network(
        device,
        model.layers,
        model.input_shape,
        weights,
        precision=precision,
        layer_precisions=merged,
        ranges=ranges,
        store=store,
    )
