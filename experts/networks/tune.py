"""A model's layers as tuning cases (kernels/tuner.py): one per distinct (op, layer
shape, precision, batch bucket) among its convolutions and fully connected layers,
with the layer's own weights, an input in its calibrated range and the numpy twin's
answer. A mixture's grouped experts are tuned as they run: all experts' weights in one
launch, the images split evenly between them, each checked against its expert."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import replace
from typing import Any

import numpy as np

from experts.model.mixture import part_weights
from experts.networks.base import Runnable
from kernels.ops.launcher import Launcher, PerBatch, Tuned
from kernels.tuner import Case
from kernels.tuning import bucket

CHECK_IMAGES = 8  # images each candidate is checked on against the numpy twin


def _layers(network: Runnable) -> Iterator[tuple[Any, int, Tuned | None, str]]:
    """Every layer with weights: (its part, its step's index, the launcher whose
    parameters are tuning data (a PerBatch's first form), or None with the reason it
    keeps its built-in kernels)."""
    for part in network.parts():
        for i, step in enumerate(part.steps):
            op = step.op.forms[min(step.op.forms)] if isinstance(step.op, PerBatch) else step.op
            if op is None or not op.weight_count:
                continue
            if not isinstance(op, Tuned):
                yield part, i, None, "keeps its built-in kernels"
            elif part.store is not None and part.store.serves(op.precision):
                yield part, i, None, "a shared int16/int8 store keeps its built-in kernels"
            else:
                yield part, i, op, ""


def tuning_cases(
    network: Runnable,
    weights: Mapping[str, np.ndarray],
    batches: Iterable[int],
    seed: int = 0,
) -> tuple[list[Case], list[str]]:
    """(cases, layers left out and why). `weights`: the model's float32 weights."""
    rng = np.random.default_rng(seed)
    cases: list[Case] = []
    left_out: list[str] = []
    seen: set[tuple[Any, ...]] = set()
    for part, index, op, why in _layers(network):
        step = part.steps[index]
        label = part.full_name(step.name)
        if op is None:
            left_out.append(f"{label}: {why}")
            continue
        layer = part.layers[step.name]
        build = part.build_for(layer)
        experts = op.experts if getattr(op, "segments", None) is not None else 0
        if experts:  # a mixture's grouped experts: each expert's weights, and all stacked
            per_expert = [part_weights(weights, f"{part.name}.{e}") for e in range(experts)]
            part_w = {k: np.stack([w[k] for w in per_expert]) for k in per_expert[0]}
        else:
            part_w = part_weights(weights, part.name) if part.name else weights
        for n in batches:
            key = (op.op, op.shape, build.precision.name, bucket(n))
            if key in seen:
                continue
            seen.add(key)
            if experts:
                # The images split evenly between the experts, in expert order, as the
                # mixture sorts them; each one checked against its expert's twin.
                owner, segments = _split(part.device, max(n, CHECK_IMAGES), experts)
                spans = build.input_range or [None] * experts
                x = np.concatenate([_input(rng, step.in_shape, spans[e], 1) for e in owner])
                want = np.concatenate(
                    [layer.reference(x[i : i + 1], per_expert[e]) for i, e in enumerate(owner)]
                ).astype(np.float32)
                build = replace(build, segments=segments)
            else:
                x = _input(rng, step.in_shape, build.input_range)
                want = layer.reference(x, part_w).astype(np.float32)
            axis = 1 if x.ndim == 4 else 0  # conv: [C][N][H][W] on the device

            def make(
                params: dict[str, Any],
                layer: Any = layer,
                build: Any = build,
                shape: Any = step.in_shape,
                w: Any = part_w,
            ) -> Launcher:
                return layer.launcher(replace(build, params=params), shape, w)

            def requant(form: Launcher, part: Any = part, i: int = index, n: int = n) -> tuple:
                return part.requantizer_for(i, n, form)

            cases.append(
                Case(
                    op.op,
                    op.shape,
                    build.precision,
                    n,
                    f"{label} {build.precision.name} batch {n}",
                    make,
                    np.ascontiguousarray(np.moveaxis(x, 0, axis)),
                    np.ascontiguousarray(np.moveaxis(want, 0, axis)),
                    axis,
                    requant,
                )
            )
    return cases, left_out


def _input(
    rng: np.random.Generator,
    shape: tuple[int, ...],
    span: tuple[float, float] | None,
    count: int = CHECK_IMAGES,
) -> np.ndarray:
    """`count` inputs spread over the layer's calibrated range (quantised layers),
    else over [-1, 1)."""
    lo, hi = span if span is not None else (-1.0, 1.0)
    return rng.uniform(lo, hi, (count, *shape)).astype(np.float32)


def _split(device: Any, rows: int, experts: int) -> tuple[np.ndarray, Any]:
    """`rows` images split evenly between the experts in order: each image's expert
    (the first CHECK_IMAGES are checked), and the segment table on the device."""
    counts = [len(a) for a in np.array_split(np.arange(rows), experts)]
    table = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    return np.repeat(np.arange(experts), counts)[:CHECK_IMAGES], device.upload(table)


def is_tuned(network: Runnable) -> bool:
    """Whether the device's tuning has entries for every tunable layer (any batch
    bucket): what `bench` rows report as `tuned`."""
    ops = [op for _, _, op, _ in _layers(network) if op is not None]
    return bool(ops) and all(
        op.device.tuning.buckets(op.op, op.shape, op.precision.name) for op in ops
    )
