"""A model compiled for a device at a precision: a plain network or a mixture, behind
the one interface of experts/networks/base.py."""

from __future__ import annotations

from experts.model.calibration import merge_layer_precisions, needs_ranges
from experts.model.model import Model
from experts.networks.base import Runnable
from experts.networks.calibrate import default_calibration
from experts.networks.mixture import MixtureNetwork
from experts.networks.network import Network
from kernels.runtime import Device


def build_network(
    model: Model,
    device: Device,
    precision: str = "fp32",
    layer_precisions: dict[str, str] | None = None,
) -> Runnable:
    """`layer_precisions` (layer -> precision) go over model.json's own. Quantised
    layers take their input ranges from the model's calibration.json, or (with a
    warning, computed once per model) from a synthetic calibration set."""
    merged = merge_layer_precisions(model.meta, layer_precisions)
    ranges = None
    if needs_ranges(model.meta, precision, merged):
        if model.calibration is None:
            model.calibration = default_calibration(model.meta, model.weights)
        ranges = model.calibration.ranges
    if model.is_mixture:
        return MixtureNetwork(device, model.meta, model.weights, precision, merged, ranges)
    return Network(
        device,
        model.layers,
        model.input_shape,
        model.weights,
        precision=precision,
        layer_precisions=merged,
        ranges=ranges,
    )
