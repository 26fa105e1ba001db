"""Fitting the little modules of dual-module inference (experts/model/dual_module.py)
on calibration images: each layer's inputs are observed through the fp32 numpy twins
(a mixture's experts on the images the gate sends them), their principal directions
give the projection, and the estimates' `skip_target` quantile the threshold."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from experts.model.dual_module import DualModule, DualModuleError, Little
from experts.networks.calibrate import DEFAULT_SAMPLES, run_observed, synthetic_images

# Measured on fashion-alexnet (BENCHMARKS.md, "Dual-module inference"): 16-32
# principal directions of the input predict the sign of fc6's and fc7's outputs well
# enough that skipping every output estimated negative costs under 0.05 point of
# accuracy; random projections (the paper's) cost points at the same size.
MAX_RANK = 32  # directions kept per layer, at most ...
RANK_SHARE = 10  # ... and at most min(inputs, outputs) / RANK_SHARE: a small layer's
# little module stays a small share of its bytes
DEFAULT_SKIP = 0.9  # the share of outputs skipped on the calibration images, at most


def default_rank(inputs: int, outputs: int) -> int:
    """Rounded down to 16 from 16 on: the kernels take the estimates 16 lanes at a time."""
    rank = min(MAX_RANK, min(inputs, outputs) // RANK_SHARE)
    return max(4, rank - rank % 16 if rank >= 16 else rank)


def fit_little(
    x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, rank: int, skip_target: float
) -> Little:
    """The little module of one layer (weight [O][I]) from its inputs x [N][I]:
    z = V (x - mean) on the top `rank` principal directions V, estimate = (W V^T) z
    + W mean + b. The threshold is the estimates' `skip_target` quantile, but never
    above 0: an output the little module estimates positive is always computed, so
    the skip rate is at most the share the little module sees as negative."""
    if not 0 < skip_target < 1:
        raise DualModuleError(f"skip target must lie in (0, 1), got {skip_target}")
    x = x.reshape(len(x), -1).astype(np.float64)
    rank = min(rank, *x.shape)
    mean = x.mean(axis=0)
    directions = np.linalg.svd(x - mean, full_matrices=False)[2][:rank]  # [r][I]
    w = weight.astype(np.float64)
    b = np.zeros(len(w)) if bias is None else bias.astype(np.float64)
    little = Little(
        directions.astype(np.float32),
        (-directions @ mean).astype(np.float32),
        (w @ directions.T).astype(np.float32),
        (w @ mean + b).astype(np.float32),
        np.zeros(1, np.float32),
    )
    threshold = min(float(np.quantile(little.estimate(x), skip_target)), 0.0)
    return replace(little, threshold=np.array([threshold], np.float32))


def fit_dual_module(
    meta: dict[str, Any],
    weights: dict[str, np.ndarray],
    batches: Iterable[np.ndarray],
    layers: Sequence[str],
    rank: int | None = None,
    skip_target: float = DEFAULT_SKIP,
    source: str = "",
    progress: Callable[[int], None] | None = None,
) -> DualModule:
    """Little modules for `layers` (full names, checked by dual_module.resolve_layers);
    `rank`: directions per layer (default: `default_rank` of each layer's size)."""
    if rank is not None and rank < 1:
        raise DualModuleError(f"rank must be at least 1, got {rank}")
    if not 0 < skip_target < 1:
        raise DualModuleError(f"skip target must lie in (0, 1), got {skip_target}")
    wanted = set(layers)
    seen: dict[str, list[np.ndarray]] = {name: [] for name in layers}

    def observe(name: str, x: np.ndarray) -> None:
        if name in wanted and len(x):
            seen[name].append(x.reshape(len(x), -1).copy())

    kept = [np.ascontiguousarray(x, np.float32) for x in batches]
    for x in kept:
        run_observed(meta, weights, x, observe)
        if progress:
            progress(len(x))
    wanted = {name for name in layers if not seen[name]}
    if wanted:  # experts the gate sent no image: fitted on every image instead
        for x in kept:
            run_observed(meta, weights, x, observe, every_expert=True)
    fitted = {}
    for name in layers:
        if not seen[name]:
            raise DualModuleError(f"{name}: no calibration image reached it; use more images")
        x = np.concatenate(seen[name])
        w, b = weights[f"{name}.weight"], weights.get(f"{name}.bias")
        r = rank or default_rank(*reversed(w.shape))
        fitted[name] = fit_little(x, w, b, r, skip_target)
    return DualModule(fitted, skip_target, sum(len(x) for x in kept), source)


def default_dual_module(
    meta: dict[str, Any], weights: dict[str, np.ndarray], layers: Sequence[str]
) -> DualModule:
    """Little modules fitted on the synthetic set, with a warning (as the default
    calibration): a model's own dual-module file, fitted on real images, is better."""
    warnings.warn(
        f"model {meta['name']!r} has no dual-module file: little modules fitted on "
        f"{DEFAULT_SAMPLES * 4} synthetic images; run `moe-alexnet calibrate --model "
        f"{meta['name']} --dual-module {','.join(layers)}` on real images",
        stacklevel=2,
    )
    images = synthetic_images(meta, DEFAULT_SAMPLES * 4)
    return fit_dual_module(meta, weights, [images], layers, source="synthetic (default)")
