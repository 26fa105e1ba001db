"""A sequential network compiled for one OpenCL device.

Layers become kernel launches once, at load time (weights packed and uploaded then);
buffers are planned per batch size and reused between calls: two activation buffers
used in turn (no layer needs more than its input and its output alive) and one
scratch buffer for the convolutions' im2col panels.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from experts.spec import SpecError, normalise_layers, output_shape
from kernels import ops
from kernels.precision import get_precision
from kernels.runtime import Device


@dataclass
class Step:
    name: str
    op: Any  # a launcher: op(n, x, y, scratch)
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]


@dataclass
class Plan:
    """The device buffers for one batch size."""

    batch: int
    input: Any
    ping: Any
    pong: Any
    scratch: Any
    activation_bytes: int
    output: Any = None  # the buffer the last step writes
    tape: Any = None  # the recorded launches (kernels.runtime.Tape)


def fuse_relu(layers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Fold a relu layer into the conv/linear before it; drop dropout (identity)."""
    out: list[dict[str, Any]] = []
    for layer in layers:
        if layer["op"] == "dropout":
            continue
        prev = out[-1] if out else None
        if layer["op"] == "relu" and prev and prev["op"] in ("conv", "linear"):
            out[-1] = {**prev, "relu": True}
            continue
        out.append(layer)
    return out


class Network:
    """Run a list of layers on NCHW float32 batches; returns [N][features]."""

    def __init__(
        self,
        device: Device,
        layers: list[dict[str, Any]],
        input_shape: tuple[int, ...],
        weights: dict[str, np.ndarray],
        max_plans: int = 4,
        input_layout: str = "nchw",
        precision: str = "fp32",
        layer_precisions: dict[str, str] | None = None,
        ranges: dict[str, tuple[float, float]] | None = None,
        segments: Any = None,
        name: str = "",
    ) -> None:
        self.device = device
        self.name = name  # the launches' label prefix when profiling ("stem", "experts.3")
        # Grouped (a mixture's experts as one network): weights carry a leading expert
        # axis and the rows, sorted by expert, are split by the `segments` buffer.
        self.segments = segments
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
        for layer in fuse_relu(normalise_layers(layers)):
            out = output_shape(layer, shape)
            self.steps.append(
                Step(layer["name"], self._launcher(layer, shape, weights), shape, out)
            )
            shape = out
        self.output_shape = shape
        self.to_cnhw = ops.SwapOuter(device, int(np.prod(self.input_shape[1:])), batch_outer=True)
        self.weight_bytes = sum(getattr(s.op, "weight_bytes", 0) for s in self.steps)
        self._plans: OrderedDict[tuple[int, int | None], Plan] = OrderedDict()

    def _launcher(self, layer: dict[str, Any], shape: tuple[int, ...], weights: dict) -> Any:
        d, op, name = self.device, layer["op"], layer["name"]
        w = weights.get(f"{name}.weight")
        b = weights.get(f"{name}.bias")
        if op in ("conv", "linear"):
            p = get_precision(self.layer_precisions.get(name, self.precision.name))
            span = self.ranges.get(name)
            if p.quantized and span is None:
                raise SpecError(f"{name}: {p.name} needs the calibrated range of its input")
            try:
                if op == "linear":
                    return ops.Linear(d, w, b, layer["relu"], p, span, self.segments)
                geometry = (layer["stride"], layer["padding"], layer["groups"], layer["relu"])
                if self.segments is not None:
                    return ops.grouped_conv2d(d, shape, w, b, *geometry, p, self.segments)
                return ops.conv2d(d, shape, w, b, *geometry, p, span)
            except ValueError as exc:  # e.g. an accumulator that could overflow
                raise SpecError(f"{name}: {exc}") from exc
        if op in ("maxpool", "avgpool"):
            return ops.Pool2d(d, shape, op[:3], layer["kernel"], layer["stride"],
                              layer["padding"], layer["ceil_mode"],
                              layer.get("count_include_pad", True))  # fmt: skip
        if op == "adaptive_avgpool":
            if output_shape(layer, shape) == shape:
                return None  # already that size (alexnet at 224 x 224): an average of one
            return ops.AdaptiveAvgPool2d(d, shape, layer["output_size"])
        if op == "lrn":
            return ops.LRN(d, shape, layer["size"], layer["alpha"], layer["beta"], layer["k"])
        if op == "relu":
            return ops.Relu(d, int(np.prod(shape)))
        if op == "softmax":
            if len(shape) != 1:
                raise SpecError(f"{name}: softmax needs a flat input, got {shape}")
            return ops.Softmax(d, shape[0])
        if op == "flatten":
            if len(shape) == 1:
                return None  # already flat
            return _Flatten(d, shape)
        raise SpecError(f"{name}: op {op!r} has no OpenCL launcher")

    def plan(self, n: int, source: Any = None) -> Plan:
        """Buffers and the recorded launches for batch size n, made once and kept (a
        few at a time). `source`: read the input from this buffer (another network's
        output, as a mixture's gate reads its stem's) instead of a buffer of its own."""
        key = (n, None if source is None else id(source))  # the plan keeps `source` alive
        plan = self._plans.get(key)
        if plan is not None:
            self._plans.move_to_end(key)
            return plan
        sizes = [int(np.prod(s.out_shape)) for s in self.steps] + [int(np.prod(self.input_shape))]
        act = 4 * n * max(sizes)
        scratch = max((s.op.scratch_bytes(n) for s in self.steps if hasattr(s.op, "scratch_bytes")),
                      default=0)  # fmt: skip
        d = self.device
        own_input = 4 * n * sizes[-1] if source is None else 0
        plan = Plan(n, source if source is not None else d.alloc(own_input), d.alloc(act),
                    d.alloc(act), d.alloc(scratch), 2 * act + scratch + own_input)  # fmt: skip
        with d.record() as launches:
            plan.output = self._enqueue(plan)
        plan.tape = d.tape(launches)
        self._plans[key] = plan
        while len(self._plans) > self.max_plans:
            self._plans.popitem(last=False)
        return plan

    def planned_bytes(self) -> int:
        """Device bytes held by the buffers of every batch size planned so far."""
        return sum(p.activation_bytes for p in self._plans.values())

    def _enqueue(self, p: Plan) -> Any:
        """Launch every step on the plan's buffers; returns the buffer holding the output."""
        n, d = p.batch, self.device
        with d.labelled(self.name):
            # One image, or one channel, is laid out alike in NCHW and CNHW: no copy
            # (nor in _Flatten).
            nchw = len(self.input_shape) == 3 and self.input_layout == "nchw"
            if nchw and n > 1 and self.input_shape[0] > 1:
                with d.labelled("input"):
                    self.to_cnhw(n, self.input_shape[0], p.input, p.ping)
                cur, spare = p.ping, p.pong
            else:
                cur, spare = p.input, p.ping
            for step in self.steps:
                if step.op is None or (isinstance(step.op, _Flatten) and n == 1):
                    continue
                with d.labelled(step.name):
                    step.op(n, cur, spare, p.scratch)
                cur, spare = spare, (p.pong if spare is p.ping else p.ping)
        return cur

    def run(self, x: np.ndarray) -> np.ndarray:
        """Forward a batch: x is (N, C, H, W) float32; returns (N, features) float32.

        Blocks until the result is back. `plan(n)` gives the buffers and the recorded
        launches for callers that chain networks on the device (the mixture)."""
        return self.submit(x)()

    def submit(self, x: np.ndarray) -> Callable[[], np.ndarray]:
        """Queue a forward pass of `x` and return a function that waits for its output.

        The host can prepare the next batch while the device runs this one: the queue
        runs in order, so a pass queued behind this one on the same plan's buffers only
        overwrites them once this pass's output has been read back."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != len(self.input_shape) + 1 or x.shape[1:] != self.input_shape:
            raise ValueError(f"expected input (N, {', '.join(map(str, self.input_shape))}), "
                             f"got {x.shape}")  # fmt: skip
        n = x.shape[0]
        p = self.plan(n)
        written = self.device.write(p.input, x)
        p.tape.replay()
        cnhw = len(self.output_shape) == 3  # ends in CNHW: back to NCHW, flattened per image
        c, *rest = self.output_shape
        shape = (c, n, *rest) if cnhw else (n, c, *rest)
        out, read = self.device.read_later(p.output, shape)

        def wait() -> np.ndarray:
            written.wait()  # kept until here: dropping it earlier would wait for it
            read.wait()
            if cnhw:
                return np.ascontiguousarray(out.transpose(1, 0, 2, 3).reshape(n, -1))
            return out

        return wait


class _Flatten:
    """[C][N][H][W] -> [N][C*H*W] (PyTorch's flatten order for the fc layers)."""

    def __init__(self, device: Device, shape: tuple[int, ...]) -> None:
        self.c, self.inner = shape[0], int(np.prod(shape[1:]))
        self.swap = ops.SwapOuter(device, self.inner, batch_outer=False)

    def __call__(self, n: int, x: Any, y: Any, scratch: Any = None) -> None:
        self.swap(self.c, n, x, y)
