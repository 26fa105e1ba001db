"""A sequential network compiled for one OpenCL device.

Layers become kernel launches once, at load time (weights packed and uploaded then);
buffers are planned per batch size and reused between calls: two activation buffers
used in turn (no layer needs more than its input and its output alive) and one
scratch buffer for the convolutions' im2col panels.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from experts.layers import Build, Layer, Shape, SpecError, Weights
from experts.layers.softmax import Softmax
from experts.model.mixture import check_k
from experts.model.model import ModelError
from experts.model.spec import fuse_relu
from experts.networks import handoffs
from experts.networks.base import Output, Pending, Runnable
from kernels import ops
from kernels.precision import get_precision
from kernels.runtime import Device


@dataclass
class Step:
    name: str
    op: ops.Launcher | None  # None: the layer's output is its input
    in_shape: Shape
    out_shape: Shape


@dataclass
class Plan:
    """The device buffers for one batch size."""

    batch: int
    input: Any
    ping: Any
    pong: Any
    scratch: Any
    activation_bytes: int
    source: bool = False  # the input is another network's output buffer
    # The first layer's pad pass where it fills the input (padded bytes) from a larger
    # batch, in place of a mixture's gather (`_gathering_pad`); None: the input holds floats.
    gather: Any = None
    sink: Any = None  # the buffer the last step writes, where given (else ping or pong)
    output: Any = None  # the buffer the last step writes
    tape: Any = None  # the recorded launches (kernels.runtime.Tape)


class Network(Runnable):
    """Run a list of layers on NCHW float32 batches; its scores are [N][features]."""

    mixture = None

    def __init__(
        self,
        device: Device,
        layers: Sequence[Layer],
        input_shape: Shape,
        weights: Weights,
        max_plans: int = 4,
        input_layout: str = "nchw",
        precision: str = "fp32",
        layer_precisions: dict[str, str] | None = None,
        ranges: dict[str, tuple[float, float]] | None = None,
        segments: Any = None,
        name: str = "",
        store: ops.PlaneStore | None = None,
        integer_pipeline: bool = True,
    ) -> None:
        """`integer_pipeline` False: every quantised layer writes floats (to compare)."""
        self.device = device
        self.integer_pipeline = integer_pipeline
        self.name = name  # the launches' label prefix when profiling ("stem", "experts.3")
        # Grouped (a mixture's experts as one network): weights carry a leading expert
        # axis and the rows, sorted by expert, are split by the `segments` buffer.
        self.segments = segments
        self.store = store  # int16 and int8 share their weights (kernels/ops/store.py)
        self.precision = get_precision(precision)
        # Per conv/linear layer: its own precision, and (quantised) its input's range.
        self.layer_precisions = layer_precisions or {}
        self.ranges = ranges or {}
        # "cnhw": the plan's input buffer is filled on the device in the internal layout
        # (by the mixture), so no layout change runs first.
        self.input_layout = input_layout
        self.max_plans = max_plans  # batch sizes whose buffers stay allocated
        self.input_shape = tuple(int(s) for s in input_shape)
        self.steps: list[Step] = []
        shape = self.input_shape
        layers = fuse_relu(layers)
        self.layers = {layer.name: layer for layer in layers}
        for layer in layers:
            out = layer.output_shape(shape)
            self.steps.append(Step(layer.name, self._launcher(layer, shape, weights), shape, out))
            shape = out
        self.output_shape = shape
        self.ends_in_probabilities = isinstance(layers[-1], Softmax)
        self.to_cnhw = ops.SwapOuter(device, int(np.prod(self.input_shape[1:])), batch_outer=True)
        self.weight_bytes = sum(s.op.weight_bytes for s in self.steps if s.op is not None)
        self._plans: OrderedDict[tuple[int, int | None], Plan] = OrderedDict()

    def build_for(self, layer: Layer) -> Build:
        key = self.full_name(layer.name)
        build = Build(self.device, segments=self.segments, store=self.store, key=key)
        if layer.weighted:
            p = get_precision(self.layer_precisions.get(layer.name, self.precision.name))
            span = self.ranges.get(layer.name)
            if p.quantized and span is None:
                raise SpecError(f"{layer.name}: {p.name} needs the calibrated range of its input")
            build = replace(build, precision=p, input_range=span)
        return build

    def _launcher(self, layer: Layer, shape: Shape, weights: Weights) -> ops.Launcher | None:
        try:
            return layer.launcher(self.build_for(layer), shape, weights)
        except (SpecError, ModelError):  # ModelError: a weights file, named
            raise
        except ValueError as exc:  # e.g. an accumulator that could overflow
            raise SpecError(f"{layer.name}: {exc}") from exc

    def with_dual_module(self, littles: Mapping[str, Any]) -> Network:
        """This network with little modules (experts/model/dual_module.py: layer name ->
        `Little`) on those layers: a second network sharing every launcher and weight
        buffer of this one, only the little modules added, and buffers of its own."""
        unknown = sorted(set(littles) - set(self.layers))
        if unknown:
            raise SpecError(
                f"dual module: no layer {', '.join(unknown)} in {self.name or 'the network'}"
            )
        twin = copy.copy(self)
        twin.steps = []
        for step in self.steps:
            little = littles.get(step.name)
            if little is not None:
                layer = self.layers[step.name]
                if not layer.takes_little_module:
                    raise SpecError(
                        f"dual module: {step.name} is not followed by ReLU, whose negative "
                        "outputs could be skipped"
                    )
                try:
                    op = layer.dual_launcher(self.build_for(layer), step.op, little)
                except ValueError as exc:
                    raise SpecError(f"{step.name}: {exc}") from exc
                step = replace(step, op=op)
            twin.steps.append(step)
        ran = [s.op for s in twin.steps if s.op is not None]  # dropout between: no op
        for first, second in zip(ran, ran[1:], strict=False):
            if isinstance(first, ops.DualLinear) and isinstance(second, ops.DualLinear):
                second.follows(first)  # one launch for both where they are small
        twin.weight_bytes = sum(s.op.weight_bytes for s in twin.steps if s.op is not None)
        twin._plans = OrderedDict()
        return twin

    def full_name(self, layer: str) -> str:
        """A layer's name with the network's part prefix ("experts.3.fc6")."""
        return f"{self.name}.{layer}" if self.name else layer

    def parts(self) -> list[Network]:
        return [self]

    def layer_bits(self) -> dict[str, tuple[int, float]]:
        return {
            self.full_name(s.name): (s.op.weight_count, s.op.bits_per_weight)
            for s in self.steps
            if s.op is not None and s.op.weight_count
        }

    @property
    def little_bytes(self) -> int:
        """Device bytes of the little modules (the rest is shared with the plain network)."""
        return sum(getattr(s.op, "little_bytes", 0) for s in self.steps)

    def take_skip_stats(self) -> dict[str, ops.SkipStats]:
        """Per layer with a little module, what its big layer did since the last call."""
        return {
            self.full_name(s.name): s.op.take_stats()
            for s in self.steps
            if isinstance(s.op, ops.DualLinear)
        }

    def plan(self, n: int, source: Any = None, sink: Any = None) -> Plan:
        """Buffers and the recorded launches for batch size n, made once and kept (a
        few at a time). `source`: read the input from this buffer (another network's
        output, as a mixture's gate reads its stem's) instead of a buffer of its own;
        `sink`: write the output at the start of this one (a mixture's head: its scores
        beside the routing, read back together).

        The buffers are the device's `shared` ones of this network's part name: every
        batch size, and every network of the same part (other precisions, models, the
        little modules' twin), runs in the same bytes, sized for the largest batch. A
        plan whose buffers a larger batch has since replaced is made again."""
        key = (n, *(None if b is None else id(b) for b in (source, sink)))  # kept alive
        plan = self._plans.get(key)
        if plan is not None and self._current(plan):
            self._plans.move_to_end(key)
            return plan
        sizes = [int(np.prod(s.out_shape)) for s in self.steps] + [int(np.prod(self.input_shape))]
        # A convolution fed bytes reads them padded: more values than floats at times.
        fed = [ops.at_batch(self.steps[j].op, n) for j in self.requant_links(n).values()]
        padded = [-(-op.pad.nbytes(1) // 4) for op in fed if type(op) is ops.Conv2d]
        act = 4 * n * max(sizes + padded)
        scratch = max((s.op.scratch_bytes(n) for s in self.steps if s.op is not None), default=0)
        d, role = self.device, self._role
        pad = self._gathering_pad(n) if source is None else None
        own_input = 0 if source is not None else pad.nbytes(n) if pad else 4 * n * sizes[-1]
        plan = Plan(
            n,
            source if source is not None else d.shared(f"{role}.input", own_input),
            d.shared(f"{role}.ping", act),
            d.shared(f"{role}.pong", act),
            d.shared(f"{role}.scratch", scratch),
            2 * act + scratch + own_input,
            source=source is not None,
            gather=pad,
            sink=sink,
        )
        with d.record() as launches:
            plan.output = self._enqueue(plan)
        plan.tape = d.tape(launches, None if plan.source else plan.input)
        for stale in [k for k, p in self._plans.items() if not self._current(p)]:
            del self._plans[stale]
        self._plans[key] = plan
        while len(self._plans) > self.max_plans:
            self._plans.popitem(last=False)
        return plan

    def _gathering_pad(self, n: int) -> ops.ConvPad | None:
        """Where a mixture fills this network's input (layout "cnhw") and the first
        layer is an int8 convolution on VNNI whose pad pass can gather images: that pass,
        which the mixture then runs in place of its gather (one launch, not two), the
        plan's input holding the padded bytes."""
        first = next((s.op for s in self.steps if s.op is not None), None)
        op = ops.at_batch(first, n) if first is not None else None
        if self.input_layout != "cnhw" or type(op) is not ops.Conv2d or not op.implicit:
            return None
        return op.pad if op.pad is not None and op.pad.channels4 else None

    @property
    def _role(self) -> str:
        """The name of this network's shared buffers (`Device.shared`): its part's."""
        return self.name or "network"

    def _current(self, plan: Plan) -> bool:
        """Whether the plan still runs in the device's current shared buffers."""
        d, role = self.device, self._role
        mine = [("ping", plan.ping), ("pong", plan.pong), ("scratch", plan.scratch)]
        if not plan.source:
            mine.append(("input", plan.input))
        return all(d.is_shared(f"{role}.{name}", buffer) for name, buffer in mine)

    def planned_bytes(self) -> int:
        """Device bytes the largest batch size planned so far needs (every plan runs
        in the same shared buffers)."""
        return max((p.activation_bytes for p in self._plans.values()), default=0)

    def _enqueue(self, p: Plan) -> Any:
        """Launch every step on the plan's buffers; returns the buffer holding the output."""
        n, d = p.batch, self.device
        with d.labelled(self.name):
            # One image, or one channel, is laid out alike in NCHW and CNHW: no copy
            # (nor in the flatten before the fully connected layers).
            nchw = len(self.input_shape) == 3 and self.input_layout == "nchw"
            nchw = nchw and n > 1 and self.input_shape[0] > 1
            # A first layer that reads the images as they come spares the copy.
            first = next((i for i, s in enumerate(self.steps) if s.op is not None), None)
            reads = first is not None and getattr(
                ops.at_batch(self.steps[first].op, n), "reads_nchw", False
            )
            if nchw and not reads:
                with d.labelled("input"):
                    self.to_cnhw(n, self.input_shape[0], p.input, p.ping)
                cur, spare = p.ping, p.pong
            else:
                cur, spare = p.input, p.ping
            links = self.requant_links(n)
            fed = set(links.values()) | ({first} if p.gather is not None else set())
            pools = handoffs.inside(self.steps, links)
            flat = handoffs.flat_writers(self.steps, pools)
            quantising = (
                handoffs.quantised_readers(self.steps, flat, fed, n)
                if self.integer_pipeline
                else {}
            )
            fed |= set(quantising.values())
            # A flatten after a pool that wrote its order has nothing left to do.
            runs = [
                i
                for i, s in enumerate(self.steps)
                if s.op is not None
                and s.op.runs_at(n)
                and not (type(s.op) is ops.Flatten and (i in pools or i in flat.values()))
            ]
            for i in runs:
                step, op = self.steps[i], ops.at_batch(self.steps[i].op, n)
                out = p.sink if p.sink is not None and i == runs[-1] else spare
                as_is = {"nchw": True} if i == first and nchw and reads else {}
                with d.labelled(step.name):
                    if i in flat:
                        reader = quantising.get(i)
                        quantise = ops.at_batch(self.steps[reader].op, n) if reader else None
                        op(n, cur, out, p.scratch, flat=True, quantise=quantise)
                    elif i in pools:  # a max pool on the integer pipeline's bytes
                        consumer = ops.at_batch(self.steps[pools[i]].op, n)
                        op.launch_bytes(n, cur, out, *consumer.input_bytes)
                    elif i in links or i in fed:  # the integer pipeline
                        requant = handoffs.requantizer(self.steps, i, n, links)
                        op.launch(
                            n,
                            cur,
                            out,
                            p.scratch,
                            requant=requant,
                            quantised_input=i in fed,
                            **as_is,
                        )
                    elif as_is:
                        op.launch(n, cur, out, p.scratch, **as_is)
                    else:
                        step.op(n, cur, out, p.scratch)
                cur, spare = out, (p.pong if spare is p.ping else p.ping)
        if p.sink is not None and not runs:
            raise ValueError(f"{self.name or 'network'}: no layer runs to write the sink")
        return cur

    def requant_links(self, n: int = 1) -> dict[int, int]:
        """Steps whose layer writes a later layer's quantised input itself at batch n,
        producer -> consumer step index (experts/networks/handoffs.py); none without
        the integer pipeline."""
        return handoffs.byte_links(self.steps, n) if self.integer_pipeline else {}

    def requantizer_for(self, i: int, n: int, op: Any) -> tuple:
        """What `op`, standing in for step i's launcher (a tuning candidate), passes as
        `requant` at batch n where this network hands its consumer bytes (see
        `requant_links`); () where it writes floats."""
        return handoffs.requantizer(self.steps, i, n, self.requant_links(n), op)

    def submit(self, x: np.ndarray, k: int | None = None) -> Pending:
        check_k(None, k)
        x = self.check_input(x)
        n = x.shape[0]
        p = self.plan(n)
        source, written = self.device.feed(p.input, x)
        p.tape.replay(source)
        cnhw = len(self.output_shape) == 3  # ends in CNHW: back to NCHW, flattened per image
        c, *rest = self.output_shape
        shape = (c, n, *rest) if cnhw else (n, c, *rest)
        out, read = self.device.read_later(p.output, shape)

        def wait() -> Output:
            read.wait()
            written.wait()  # kept until here: dropping it earlier would wait for it
            if cnhw:
                return Output(np.ascontiguousarray(out.transpose(1, 0, 2, 3).reshape(n, -1)))
            return Output(out)

        return wait

    def activation_bytes(self, n: int) -> int:
        return self.plan(n).activation_bytes

    def batch_sizes(self, max_batch: int) -> list[int]:
        """Powers of two below `max_batch`, and `max_batch`: a handful of sizes, each
        planned once, for any batch (a padded image costs only its own compute)."""
        sizes, b = [], 1
        while b < max_batch:
            sizes.append(b)
            b *= 2
        return [*sizes, max_batch]

    def warm_up(self, max_batch: int) -> None:
        """Run every batch size once: kernels built, plans recorded, all of them kept.
        The largest first, so its buffers are the shared ones from the start."""
        sizes = self.batch_sizes(max_batch)
        self.max_plans = max(self.max_plans, len(sizes))
        for size in reversed(sizes):
            self.run(np.zeros((size, *self.input_shape), dtype=np.float32))
