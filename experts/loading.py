"""From a model name to a runnable network: the repository first, then the built-in
architectures (seeded random weights, for benchmarks and smoke tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from experts.architectures import ARCHITECTURES, random_weights
from experts.calibration import default_calibration, layer_precisions, needs_ranges
from experts.mixture_network import MixtureNetwork, Routing
from experts.network import Network
from experts.repository import Model, ModelError, Repository, validate
from kernels.runtime import Device


def resolve_model(name: str, root: Path, random: bool = False, seed: int = 0) -> Model:
    """The repository's `name`; with `random`, a built-in architecture of that name with
    seeded random weights (a repository entry of the same name wins without `random`)."""
    repo = Repository(root)
    if random:
        if name not in ARCHITECTURES:
            raise ModelError(
                f"--random-weights needs a built-in architecture ({', '.join(ARCHITECTURES)}), "
                f"got {name!r}"
            )
        meta = ARCHITECTURES[name]()
        weights = random_weights(meta, seed)
        return Model(validate(meta, weights, f"built-in {name}"), weights, None)
    if name not in repo.names() and name in ARCHITECTURES:
        raise ModelError(
            f"model {name!r} is not in the repository {root}; it is a built-in architecture: "
            f"pass --random-weights to run it with seeded random weights, or bring trained "
            f"weights with `moe-alexnet import-onnx FILE --name {name}`"
        )
    return repo.load(name)


def build_network(
    model: Model,
    device: Device,
    precision: str = "fp32",
    layer_overrides: dict[str, str] | None = None,
) -> Network | MixtureNetwork:
    """The model compiled for `device` at `precision`: a sequential network or a
    mixture of experts. `layer_overrides` (layer -> precision) go over model.json's
    own `layer_precisions`. Quantised layers take their input ranges from the model's
    calibration.json, or (with a warning, computed once per model) from a synthetic
    calibration set."""
    layers = layer_precisions(model.meta, layer_overrides)
    ranges = None
    if needs_ranges(model.meta, precision, layers):
        if model.calibration is None:
            model.calibration = default_calibration(model.meta, model.weights)
        ranges = model.calibration.ranges
    if model.is_mixture:
        return MixtureNetwork(device, model.meta, model.weights, precision, layers, ranges)
    return Network(device, model.layers, model.input_shape, model.weights,
                   precision=precision, layer_precisions=layers, ranges=ranges)  # fmt: skip


def forward(
    network: Network | MixtureNetwork, x: np.ndarray, k: int | None = None
) -> tuple[np.ndarray, Routing | None]:
    """Scores for a batch, and for a mixture which experts each image went to.

    `k` (experts per image) only means something for a mixture: asking it of a plain
    network is an error rather than silently ignored.
    """
    if isinstance(network, MixtureNetwork):
        return network.run(x, k)
    if k is not None:
        raise ModelError("k (experts per image) applies only to mixture-of-experts models")
    return network.run(x), None
