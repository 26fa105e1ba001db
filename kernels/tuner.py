"""The autotuner's search for one layer: candidates from kernels/tuning.py's space (a
small fixed set first, then random samples while the budget lasts), each checked
against the numpy twin's output and timed with OpenCL profiling events; the winner is
re-timed against the built-in choice in alternating rounds, and kept only where it is
faster (so no layer gets slower tuned than untuned).
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kernels.devices import KernelError
from kernels.ops.launcher import Launcher
from kernels.precision import Precision
from kernels.runtime import Device
from kernels.tuning import SPACE, TILE

REPEATS = 5  # timed runs per candidate (median)
GIVE_UP = 200  # random draws in a row that find nothing new end the search
FINAL_ROUNDS = 5  # alternating rounds of the finalists against the built-in choice
FINALISTS = 3
# A kind (the op's first parameter: algorithm or form) whose fixed-set candidate ran this
# many times slower than the fastest is not sampled further: on a CPU the tiled GEMM
# (GPUs) lost every layer by far, yet drew a sixth to a third of the random points, each
# a kernel to compile; on a GPU the CPU kernels are the hopeless ones.
HOPELESS = 3.0
KEEP_MARGIN = 0.95  # a winner must be 5% faster than the built-in choice to be kept (identical
# kernels differ by 2-7% between rounds on these shared machines)


def tolerance(precision: Precision) -> float:
    """Largest |output - twin| a candidate may show, as a share of the twin's largest
    |output|: the precision's own rounding with room to spare (Winograd's transforms
    round differently from the direct sum)."""
    if precision.quantized:
        return 32.0 / 2**precision.bits
    return 2e-2 if precision.weight_dtype == np.float16 else 1e-3


# The parameters each kind of candidate reads (the op's first parameter says which
# kind); the rest would only make equal kernels look different.
READS = {
    "rows": {"ro", "rb", "kb"},
    "split": {"ls", "rb"},
    "implicit": {"nv", "spread"},
    "lanes": set(),
    "tiled": set(TILE),
}


def normalise(op: str, params: dict[str, Any]) -> dict[str, Any]:
    """`params` without the parameters its kind does not read (so equal kernels are
    tried once)."""
    kind = next(iter(SPACE[op]))
    reads = READS.get(params.get(kind), {"nv"}) | {kind}
    return {k: v for k, v in params.items() if k in reads}


def key(op: str, params: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(sorted(normalise(op, params).items()))


def candidates(
    op: str, rng: random.Random, excluded: set[Any] | None = None
) -> Iterator[dict[str, Any]]:
    """{} (the built-in choice) first, then one candidate per value of the op's first
    parameter, then random points of the space; each distinct kernel once. The space
    is sampled, not listed (the tiled GEMM's alone holds tens of thousands of points),
    and runs dry after GIVE_UP draws in a row that were all tried already. Values of
    the first parameter in `excluded` (which the caller may grow between draws) are
    no longer drawn; with every value excluded the search ends."""
    space = SPACE[op]
    names = list(space)
    excluded = set() if excluded is None else excluded
    seen: set[tuple[Any, ...]] = set()

    def fresh(params: dict[str, Any]) -> dict[str, Any] | None:
        params, k = normalise(op, params), key(op, params)
        if k in seen:
            return None
        seen.add(k)
        return params

    for params in [{}] + [{names[0]: v} for v in space[names[0]]]:
        if (found := fresh(params)) is not None:
            yield found
    misses = 0
    while misses < GIVE_UP:
        kinds = [v for v in space[names[0]] if v not in excluded]
        if not kinds:
            return
        draw = {name: rng.choice(values) for name, values in space.items()}
        found = fresh({**draw, names[0]: rng.choice(kinds)})
        misses = 0 if found is not None else misses + 1
        if found is not None:
            yield found


@dataclass
class Case:
    """One (layer, precision, batch) to tune. `build(params)` makes the layer's launcher
    for a candidate (a ValueError where the candidate does not fit the layer); `x` is
    an input of a few images and `want` the numpy twin's output for it, both in the
    device's layout, images along `batch_axis`. Candidates are checked on those
    images and timed on `batch` of them (repeated): the twin at batch 256 would take
    minutes per layer."""

    op: str
    shape: str
    precision: Precision
    batch: int
    label: str
    build: Callable[[dict[str, Any]], Launcher]
    x: np.ndarray
    want: np.ndarray
    batch_axis: int = 0
    # Where the network hands the layer's output on as the next layer's bytes (the
    # integer pipeline): `requant(form)`, the candidate's `launch` argument for that
    # (() where it cannot), so that it is timed writing what the network has it write.
    requant: Callable[[Launcher], tuple[Any, ...]] | None = None

    @property
    def checked(self) -> int:
        return self.x.shape[self.batch_axis]


@dataclass
class Outcome:
    params: dict[str, Any]
    ms: float
    builtin_ms: float
    tried: int = 0
    wrong: int = 0  # ran, but differed from the numpy twin: rejected
    failed: int = 0  # refused by the layer, or failed to build or launch: skipped
    errors: list[str] = field(default_factory=list)
    hopeless: list[Any] = field(default_factory=list)  # kinds not sampled (HOPELESS)


class Bench:
    """A case's device buffers and launchers (one per algorithm: the other parameters
    are set per launch), and the timing of a candidate."""

    def __init__(self, device: Device, case: Case) -> None:
        self.device, self.case = device, case
        self.x_check = device.upload(case.x.astype(np.float32))
        images = np.arange(case.batch) % case.checked
        self.x = device.upload(np.take(case.x, images, axis=case.batch_axis).astype(np.float32))
        per_image = case.want.nbytes // case.checked
        self.y = device.alloc(per_image * max(case.batch, case.checked))
        self.scratch, self.scratch_size = device.alloc(4), 4
        self.forms: dict[Any, Launcher] = {}

    def launcher(self, params: dict[str, Any]) -> Launcher:
        key = params.get("algorithm")
        form = self.forms.get(key)
        if form is None:
            form = self.forms[key] = self.case.build(params)
        form.params = params
        need = max(form.scratch_bytes(n) for n in (self.case.batch, self.case.checked))
        if need > self.scratch_size:
            self.scratch, self.scratch_size = self.device.alloc(need), need
        return form

    def run(self, form: Launcher, check: bool = False) -> float:
        """One run's device time in ms (the sum of its launches' profiling events), on
        `batch` images as the network runs the layer, or (`check`) on the checked ones,
        writing floats for the twin."""
        d = self.device
        n, x = (self.case.checked, self.x_check) if check else (self.case.batch, self.x)
        requant = () if check or self.case.requant is None else self.case.requant(form)
        d.events.clear()
        if requant:  # bytes, fewer than the floats `y` holds
            form.launch(n, x, self.y, self.scratch, requant=requant)
        else:
            form(n, x, self.y, self.scratch)
        d.finish()
        ms = sum(e.profile.end - e.profile.start for _, _, e in d.events) / 1e6
        d.events.clear()
        return ms

    def check(self, params: dict[str, Any]) -> float:
        """The candidate's error against the twin (a share of the twin's largest
        output)."""
        self.run(self.launcher(params), check=True)
        got = self.device.read(self.y, self.case.want.shape)
        peak = float(np.abs(self.case.want).max()) or 1.0
        return float(np.abs(got - self.case.want).max()) / peak

    def time(self, params: dict[str, Any], repeats: int = REPEATS) -> float:
        form = self.launcher(params)
        return statistics.median(self.run(form) for _ in range(repeats))


def tune(device: Device, case: Case, budget_s: float, seed: int = 0) -> Outcome:
    """Search `case`'s space for `budget_s` seconds (at least the built-in choice and
    the fixed set). `device` must profile (Device(profile=True))."""
    if device.events is None:
        raise ValueError("tuning needs a profiling device: Device(profile=True)")
    bench = Bench(device, case)
    limit = tolerance(case.precision)
    deadline = time.monotonic() + budget_s
    first = next(iter(SPACE[case.op]))  # the algorithm or form
    fixed = 1 + len(SPACE[case.op][first])
    timed: list[tuple[float, dict[str, Any]]] = []
    outcome = Outcome({}, 0.0, 0.0)
    # Kinds not sampled: the layer refused their fixed-set candidate, or it was hopeless.
    excluded: set[Any] = set()
    kind_ms: dict[Any, float] = {}  # each kind's best time in the fixed set
    ran: set[tuple[Any, ...]] = set()  # what the candidates tried so far run as
    for i, params in enumerate(candidates(case.op, random.Random(seed), excluded)):
        if i == fixed and kind_ms:
            fastest = min(kind_ms.values())
            outcome.hopeless = sorted(k for k, ms in kind_ms.items() if ms > HOPELESS * fastest)
            excluded.update(outcome.hopeless)
        if i >= fixed and time.monotonic() > deadline:
            break
        if i >= fixed and params.get(first) in excluded:  # drawn before it was excluded
            continue
        counted = False
        try:
            runs = bench.launcher(params).effective(case.batch)
            kernel = key(case.op, runs)
            if kernel in ran:  # the same kernel as a candidate tried already
                continue
            ran.add(kernel)
            outcome.tried, counted = outcome.tried + 1, True
            error = bench.check(params)
            if not error <= limit:  # NaN too
                outcome.wrong += 1
                outcome.errors.append(f"{params}: differs from the numpy twin by {error:.3g}")
                continue
            ms = bench.time(params)
            timed.append((ms, params))
            if i < fixed:
                kind_ms[runs[first]] = min(ms, kind_ms.get(runs[first], ms))
        except (ValueError, KernelError) as exc:
            outcome.tried += not counted
            if 0 < i < fixed:
                excluded.add(params[first])
            outcome.failed += 1
            outcome.errors.append(f"{params}: {' '.join(str(exc).split())[:200]}")
    if not any(p == {} for _, p in timed):
        raise KernelError(f"{case.label}: the built-in kernel fails its own check")
    # The finalists and the built-in choice, timed in turns so drift hits them alike.
    finalists = [p for _, p in sorted(timed, key=lambda t: t[0])[:FINALISTS]]
    if {} not in finalists:
        finalists.append({})
    rounds: dict[int, list[float]] = {i: [] for i in range(len(finalists))}
    for _ in range(FINAL_ROUNDS):
        for i, params in enumerate(finalists):
            rounds[i].append(bench.time(params))
    medians = {i: statistics.median(r) for i, r in rounds.items()}
    builtin = medians[finalists.index({})]
    best = min(medians, key=medians.get)
    if medians[best] > KEEP_MARGIN * builtin:
        best = finalists.index({})
    outcome.params, outcome.ms, outcome.builtin_ms = finalists[best], medians[best], builtin
    return outcome
