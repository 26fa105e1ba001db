"""A mixture of experts compiled for one OpenCL device, with sparse execution.

The stem and the gate run on the whole batch; the (image, expert) pairs are then
sorted by expert and the experts run on their own images only: grouped (all experts
as one network, one launch per layer, each image with its expert's weights) where
every expert layer has a grouped kernel, else one expert after the other (an expert
no image chose costs nothing either way). The chosen experts' features are merged
back in image order, weighted by the renormalised gate weights, and the shared head
runs on the merged batch.

Grouped, the routing happens on the device too: a batch is queued to the end without
a wait, and one wait reads the scores with the routing, so batches pipeline as a
plain network's do. One by one, the host reads the gate's logits to route (a wait in
`submit`), then enqueues the gathers, the experts, the merge and the head, and the
returned function waits for the scores. Each wait costs PoCL's threads a sleep and a
wake-up, which at this network size is the main cost.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import numpy as np

from experts.layers import SpecError
from experts.model.dual_module import Little
from experts.model.mixture import MixtureSpec, mixture_spec, part_weights
from experts.networks.base import Output, Pending, Routing, Runnable
from experts.networks.network import Network, Plan
from experts.networks.reference import route
from kernels import ops
from kernels.ops import SkipStats
from kernels.precision import get_precision
from kernels.runtime import Device, Tape


class MixtureNetwork(Runnable):
    """Run a mixture on NCHW float32 batches: scores and each image's routing."""

    def __init__(
        self,
        device: Device,
        meta: dict[str, Any],
        weights: dict[str, np.ndarray],
        precision: str = "fp32",
        layer_precisions: dict[str, str] | None = None,
        ranges: dict[str, tuple[float, float]] | None = None,
        store: ops.PlaneStore | None = None,
        group_experts: bool = True,
    ) -> None:
        """`group_experts` False: the experts run one by one even where they could run
        grouped (to compare the two)."""
        self.device = device
        self.mixture: MixtureSpec = mixture_spec(meta)
        s = self.mixture
        if len(s.stem_shape) != 3:
            raise SpecError(f"mixture stem: must end in C x H x W features, gives {s.stem_shape}")

        def part(layers: list, shape: tuple[int, ...], prefix: str, **kw: Any) -> Network:
            # Per-layer maps name a part's layers with its prefix ("experts.3.conv2").
            return Network(
                device,
                layers,
                shape,
                part_weights(weights, prefix),
                precision=precision,
                name=prefix,
                layer_precisions=part_weights(layer_precisions or {}, prefix),
                ranges=part_weights(ranges or {}, prefix),
                store=store,
                **kw,
            )

        self.stem = part(s.stem, s.input_shape, "stem")
        self.gate = part(s.gate, s.stem_shape, "gate", input_layout="cnhw")
        self.segments = device.alloc(4 * (s.experts + 1))
        self.grouped = (
            self._grouped(weights, precision, layer_precisions or {}, ranges or {}, store)
            if group_experts
            else None
        )
        # Otherwise each expert runs on its own images, so it sees every sub-batch size
        # from 1 to the batch: keep all their plans.
        self.experts = (
            []
            if self.grouped is not None
            else [
                part(s.expert, s.stem_shape, f"experts.{i}", max_plans=64, input_layout="cnhw")
                for i in range(s.experts)
            ]
        )
        self.head = part(s.head, (s.features,), "head")
        self.weight_bytes = sum(p.weight_bytes for p in self.parts())
        self.input_shape = s.input_shape
        self.ends_in_probabilities = self.head.ends_in_probabilities
        c, h, w = s.stem_shape
        self.gather = ops.GatherImages(device, c, h * w)
        self.merge = ops.Merge(device, s.features)
        self.topk = ops.TopKBuckets(device, s.experts)
        self._scratch: dict[tuple[int, int], tuple[Any, ...]] = {}
        self._results: dict[int, Any] = {}  # per batch: the grouped path's one read
        # (n, k) -> (the plans and buffers recorded against, the two routing tapes)
        self._routes: dict[tuple[int, int], tuple[tuple[Any, ...], Tape, Tape]] = {}

    def _grouped(
        self,
        weights: dict[str, np.ndarray],
        precision: str,
        layer_precisions: dict[str, str],
        ranges: dict[str, tuple[float, float]],
        store: ops.PlaneStore | None,
    ) -> Network | None:
        """All experts as one network (one launch per layer, whatever the routing), where
        every expert layer has a grouped kernel: a precision with grouped kernels, the
        same for every expert (quantised ones with each expert's own input ranges and
        weight scales), and convolutions of a grouped shape (`ops.conv2d` with segments).
        None: run the experts one by one."""
        s = self.mixture
        names = {layer.name for layer in s.expert}
        chosen = {
            n: {layer_precisions.get(f"experts.{i}.{n}", precision) for i in range(s.experts)}
            for n in names
        }
        if any(len(p) > 1 or not get_precision(next(iter(p))).grouped for p in chosen.values()):
            return None
        per_expert = [part_weights(weights, f"experts.{i}") for i in range(s.experts)]
        stacked = {key: np.stack([w[key] for w in per_expert]) for key in per_expert[0]}
        per_range = [part_weights(ranges, f"experts.{i}") for i in range(s.experts)]
        spans = {n: [r[n] for r in per_range] for n in names if all(n in r for r in per_range)}
        try:
            return Network(
                self.device,
                s.expert,
                s.stem_shape,
                stacked,
                max_plans=64,
                input_layout="cnhw",
                precision=precision,
                name="experts",
                layer_precisions={n: next(iter(p)) for n, p in chosen.items()},
                ranges=spans,
                segments=self.segments,
                store=store,
            )
        except SpecError:  # a layer without a grouped kernel (e.g. a 5x5 float convolution)
            return None

    def with_dual_module(self, littles: Mapping[str, Little]) -> MixtureNetwork:
        """Little modules by full name ("experts.3.fc6"). The stem, gate and head (and
        their buffers) are shared unless a little module names their layers."""
        twin = copy.copy(self)
        twin._routes = {}  # its grouped plans are its own

        def part(net: Network) -> Network:
            mine = part_weights(dict(littles), net.name)
            return net.with_dual_module(mine) if mine else net

        twin.stem, twin.gate, twin.head = (part(p) for p in (self.stem, self.gate, self.head))
        twin.experts = [part(p) for p in self.experts]
        if self.grouped is not None:
            # One launch runs every expert: one whose layer has no little module of its
            # own takes one that skips nothing.
            experts = self.mixture.experts
            per_expert = [part_weights(dict(littles), f"experts.{i}") for i in range(experts)]
            stacked = {}
            for name in sorted(set().union(*per_expert)):
                like = next(mine[name] for mine in per_expert if name in mine)
                parts = [mine.get(name, like.never_skipping()) for mine in per_expert]
                stacked[name] = Little.stack(parts)
            twin.grouped = self.grouped.with_dual_module(stacked) if stacked else self.grouped
        known = set(self._parts_names())
        unknown = sorted({n.rsplit(".", 1)[0] for n in littles} - known)
        if unknown:
            raise SpecError(f"dual module: no part {', '.join(unknown)} in the mixture")
        twin.weight_bytes = self.weight_bytes + twin.little_bytes
        return twin

    def parts(self) -> list[Network]:
        grouped = [self.grouped] if self.grouped is not None else []
        return [self.stem, self.gate, *self.experts, self.head, *grouped]

    def _parts_names(self) -> list[str]:
        return ["stem", "gate", "head", *(f"experts.{i}" for i in range(self.mixture.experts))]

    def layer_bits(self) -> dict[str, tuple[int, float]]:
        return {name: bits for part in self.parts() for name, bits in part.layer_bits().items()}

    @property
    def little_bytes(self) -> int:
        return sum(p.little_bytes for p in self.parts())

    def take_skip_stats(self) -> dict[str, SkipStats]:
        """Grouped experts count their layers together, as "experts.fc6"."""
        out: dict[str, SkipStats] = {}
        for p in self.parts():
            out |= p.take_skip_stats()
        return out

    def activation_bytes(self, n: int) -> int:
        """Device buffers held for batch size n (the experts' for every sub-batch size)."""
        stem = self.stem.plan(n)
        sink = self._result(n)[0] if self.grouped is not None else None  # the plans served
        plans = [stem, self.gate.plan(n, source=stem.output), self.head.plan(n, sink=sink)]
        total = sum(p.activation_bytes for p in plans)
        experts = self.experts + ([self.grouped] if self.grouped is not None else [])
        return total + sum(p.planned_bytes() for p in experts)

    def _buffers(self, n: int, k: int) -> tuple[Any, ...]:
        """Per (batch, k): the image of each sorted pair, expert output rows, the sorted
        row of each pair, and gate weights."""
        found = self._scratch.get((n, k))
        if found is None:
            d = self.device
            found = (
                d.alloc(4 * n * k),
                d.alloc(4 * n * k * self.mixture.features),
                d.alloc(4 * n * k),
                d.alloc(4 * n * k),
            )
            self._scratch[(n, k)] = found
        return found

    def _result(self, n: int) -> tuple[Any, int]:
        """The grouped path's result for batch size n, read back in one copy, and where
        in it (floats) the routing's report (`TopKBuckets`, for any k) follows the head's
        scores [n][classes]."""
        at = n * self.mixture.num_classes
        found = self._results.get(n)
        if found is None:
            size = at + self.topk.report_size(n, self.mixture.experts)
            found = self._results[n] = self.device.alloc(4 * size)
        return found, at

    def submit(self, x: np.ndarray, k: int | None = None) -> Pending:
        """Each image goes to its top-k experts (default: the model's own k)."""
        k = self.mixture.check_k(k)
        x = self.check_input(x)
        d, n = self.device, len(x)
        stem = self.stem.plan(n)
        source, fed = d.feed(stem.input, x)
        written = [fed]  # kept until the wait: dropping one waits for it
        stem.tape.replay(source)
        gate = self.gate.plan(n, source=stem.output)
        gate.tape.replay()
        if self.grouped is not None:
            return self._submit_grouped(n, k, stem.output, gate.output, written)
        logits = d.read(gate.output, (n, self.mixture.experts))
        indices, gates = route(logits, k)

        # Images sorted by expert: expert e's images are order[start[e]:start[e+1]], and
        # row r of `rows` holds the features of pair order[r] (image, slot).
        pairs = indices.ravel()
        order = np.argsort(pairs, kind="stable").astype(np.int32)
        start = np.searchsorted(pairs[order], np.arange(self.mixture.experts + 1))
        row_of_pair = np.empty(n * k, np.int32)
        row_of_pair[order] = np.arange(n * k, dtype=np.int32)
        images = (order // k).astype(np.int32)
        image_buf, rows, row_buf, gate_buf = self._buffers(n, k)
        written += [
            d.write(image_buf, images),
            d.write(row_buf, row_of_pair),
            d.write(gate_buf, gates),
        ]
        width = 4 * self.mixture.features
        for e in range(self.mixture.experts):
            m = int(start[e + 1] - start[e])
            if m == 0:
                continue
            expert = self.experts[e].plan(m)
            with d.labelled("route"):
                self._fill(expert, m, stem.output, image_buf, n, int(start[e]))
            expert.tape.replay()
            d.copy(rows, expert.output, m * width, dst_offset=int(start[e]) * width)
        head = self.head.plan(n)
        with d.labelled("route"):
            self.merge(n, k, rows, row_buf, gate_buf, head.input)
        head.tape.replay()
        scores, read = d.read_later(head.output, (n, self.mixture.num_classes))
        routing = Routing(indices, gates, _confidence(logits))

        def wait() -> Output:
            for event in (read, *written):  # the read first: it comes after every launch
                event.wait()
            return Output(scores, routing)

        return wait

    def _submit_grouped(
        self, n: int, k: int, stem: Any, logits: Any, written: list[Any]
    ) -> Pending:
        """The grouped experts route on the device too: the batch is queued to the end
        with no wait, and the returned function reads the scores with the routing."""
        # Rows padded to a power of two: few plans (and launch geometries to build)
        # whatever the batch and k; the grouped kernels leave the padding rows alone.
        plan = self.grouped.plan(1 << (n * k - 1).bit_length())
        result, at = self._result(n)
        head = self.head.plan(n, sink=result)
        route, merge = self._routing(n, k, stem, logits, plan, head)
        route.replay()
        plan.tape.replay()
        merge.replay()
        head.tape.replay()
        # One read: each is a command on the queue, with PoCL's wait before it.
        out, read = self.device.read_later(result, (at + self.topk.report_size(n, k),))

        def wait() -> Output:
            for event in (read, *written):
                event.wait()
            z, indices, gates = self.topk.split(out[at:], n, k)
            return Output(out[:at].reshape(n, -1), Routing(indices, gates, _confidence(z)))

        return wait

    def _routing(
        self, n: int, k: int, stem: Any, logits: Any, plan: Plan, head: Plan
    ) -> tuple[Tape, Tape]:
        """The grouped path's routing launches (top-k and gather before the experts, the
        merge after), recorded per (n, k) like a plan's: setting their arguments took
        fashion-moe's submit from 0.30 to 0.40 ms of host time a batch. Made again when
        a plan they write or read has been (its shared buffers grew)."""
        held = (stem, logits, plan, head)
        found = self._routes.get((n, k))
        if found is None or any(a is not b for a, b in zip(found[0], held, strict=True)):
            d = self.device
            image_buf, _, row_buf, gate_buf = self._buffers(n, k)
            result, at = self._result(n)
            with d.labelled("route"), d.record() as before:
                args = (gate_buf, self.segments, image_buf, row_buf, at)
                self.topk(n, k, logits, result, *args)
                self._fill(plan, n * k, stem, image_buf, n, 0)
            with d.labelled("route"), d.record() as after:
                self.merge(n, k, plan.output, row_buf, gate_buf, head.input)
            found = self._routes[(n, k)] = (held, d.tape(before), d.tape(after))
        return found[1], found[2]

    def _fill(self, plan: Plan, rows: int, stem: Any, images: Any, n: int, first: int) -> None:
        """Fill `plan`'s input with `rows` of the stem's n images, those the int32
        device buffer `images` names from `first` on: the first layer's pad pass does it
        where it can gather (`Plan.gather`: an int8 convolution on VNNI, one launch, not
        two), else the gather."""
        if plan.gather is not None:
            plan.gather(rows, stem, plan.input, gather=(images, n, first))
        else:
            self.gather(n, rows, stem, images, plan.input, first=first, batch=plan.batch)

    def batch_sizes(self, max_batch: int) -> list[int]:
        """Every size up to `max_batch`: a padding image would be routed to experts and
        cost them real work, so batches run at their own size."""
        return list(range(1, max_batch + 1))

    def warm_up(self, max_batch: int) -> None:
        """Run every batch size (the stem, gate and head keep a plan for each), with
        k = E where the experts run one by one, so every expert is built at every
        sub-batch size; grouped experts run n * k rows, so there every (n, k). The
        largest first, so its buffers are the shared ones from the start."""
        for part in (self.stem, self.gate, self.head):
            part.max_plans = max(part.max_plans, max_batch)
        rng = np.random.default_rng(0)
        experts = self.mixture.experts
        for k in range(experts, 0, -1) if self.grouped is not None else [experts]:
            for size in reversed(self.batch_sizes(max_batch)):
                self.run(rng.standard_normal((size, *self.input_shape), dtype=np.float32), k)


def _confidence(logits: np.ndarray) -> np.ndarray:
    """The gate's softmax probability of each image's first choice."""
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (z.max(axis=1) / z.sum(axis=1)).astype(np.float32)
