"""How a network's steps hand each other their outputs other than as floats in
[C][N][H][W]: the integer pipeline's links (a layer writing a later layer's quantised
input itself), and pools writing the flatten's order (and, before a quantised fully
connected layer, its quantised input). Each takes the network's steps
(anything with an `op`, None where the layer's output is its input)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kernels import ops

# The integer pipeline's routes: producer, the steps between (max pools of bytes, the
# flatten), consumer.
BYTE_ROUTES = (
    (ops.Linear, ops.Linear),
    (ops.Conv2d, ops.Conv2d),
    (ops.Conv2d, ops.Pool2d, ops.Conv2d),
    (ops.Conv2d, ops.Pool2d, ops.Flatten, ops.Linear),
)
FLAT_WRITERS = (ops.Pool2d, ops.AdaptiveAvgPool2d)


def byte_links(steps: Sequence[Any], n: int) -> dict[int, int]:
    """Steps whose layer writes a later layer's quantised input itself at batch n,
    producer -> consumer step index, along one of BYTE_ROUTES where the producer
    `feeds` the consumer and every max pool between takes bytes: int8 fully connected
    layers into int8 ones (kernels/requant.py), int8 convolutions on VNNI into such
    convolutions, straight or through a max pool, and the last one into the first
    fully connected layer through its max pool (kernels/ops/conv_bytes.py). Steps
    without an op between them (dropout) do not break a link; a layer built per batch
    size links as its form for n does."""
    ran = [(i, ops.at_batch(s.op, n)) for i, s in enumerate(steps) if s.op is not None]
    kinds = [type(op) for _, op in ran]
    links = {}
    for t, (i, a) in enumerate(ran):
        for route in BYTE_ROUTES:
            if tuple(kinds[t : t + len(route)]) != route:
                continue
            between = [op for _, op in ran[t + 1 : t + len(route) - 1]]
            j, b = ran[t + len(route) - 1]
            if all(op.takes_bytes for op in between if type(op) is ops.Pool2d) and a.feeds(b):
                links[i] = j
                break
    return links


def inside(steps: Sequence[Any], links: dict[int, int]) -> dict[int, int]:
    """The steps inside links -> the consumer's step: max pools on bytes, and the
    flatten that a pool writing in its order leaves nothing to do."""
    return {j: k for i, k in links.items() for j in range(i + 1, k) if steps[j].op is not None}


def flat_writers(steps: Sequence[Any], inside_links: dict[int, int]) -> dict[int, int]:
    """Pools on floats followed by a flatten -> the flatten's step: the pool writes its
    output in the flatten's order, so the flatten does not run."""
    ran = [(i, s.op) for i, s in enumerate(steps) if s.op is not None]
    return {
        i: j
        for (i, a), (j, b) in zip(ran, ran[1:], strict=False)
        if type(a) in FLAT_WRITERS and type(b) is ops.Flatten and i not in inside_links
    }


def quantised_readers(
    steps: Sequence[Any], flat: dict[int, int], fed: set[int], n: int
) -> dict[int, int]:
    """Flat writers whose flatten feeds a quantised fully connected layer that no link
    feeds (`fed`) and that is not grouped (one qinv and qzero) -> that layer's step:
    the pool writes its quantised input, and it runs no quantising pass."""
    ran = [i for i, s in enumerate(steps) if s.op is not None]
    out = {}
    for i, j in flat.items():
        k = next((k for k in ran if k > j), None)
        op = ops.at_batch(steps[k].op, n) if k is not None else None
        quantised = type(op) is ops.Linear and op.precision.quantized
        if quantised and op.segments is None and k not in fed:
            out[i] = k
    return out


def requantizer(
    steps: Sequence[Any], i: int, n: int, links: dict[int, int], op: Any = None
) -> tuple:
    """Step i's epilogue arguments for writing its consumer's input at batch n (none
    where it is a consumer only); `op`: a launcher standing in for step i's (a tuning
    candidate: none where it cannot write them)."""
    if i not in links:
        return ()
    own, consumer = (ops.at_batch(steps[j].op, n) for j in (i, links[i]))
    op = own if op is None else op
    if op is not own and not (hasattr(op, "feeds") and op.feeds(consumer)):
        return ()
    if type(op) is ops.Conv2d:
        pooled = any(type(steps[j].op) is ops.Pool2d for j in range(i + 1, links[i]))
        return op.requantizer(consumer, pooled=pooled)
    return op.requantizer(consumer)
