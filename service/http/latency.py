"""precision=auto: device-time predictions and the choice they drive.

The engine times every (model, precision, k, batch size) once it is warm. As batches
run, one machine-wide factor (a moving average of device time over that timing) scales
every prediction: on a shared machine a load that slows one precision slows them all,
including those not running now. For a batch asked at precision "auto" (or a mixture's k "auto") the
scheduler takes the most accurate loaded precision (the table's `fidelity`; then the
largest k up to the model's own) whose predicted finish, after the batches already
queued on the device, meets the earliest deadline in the batch and leaves the images
queued behind it (state.py counts the requests still being decoded among them) done
within a share of the time they have left (BACKLOG_SHARE; the rest is kept for a burst
of arrivals); when none does, the fastest. An explicit precision or k is never changed.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence

from kernels.precision import get_precision

AUTO = "auto"
SMOOTHING = 0.2  # weight of a new timing in a figure's moving average (warm-up)
FACTOR_SMOOTHING = 0.3  # weight of a batch's device time / prediction in the factor
FACTOR_RANGE = (0.25, 20.0)
# A precision is chosen only if it fits with its prediction taken this much longer: the
# factor lags a sudden slowdown, and the answer still has to be sent after the device.
HEADROOM = 1.2
# The images queued behind a batch must be predicted done within this share of the time
# their earliest deadline leaves. Taking all of it let the queue sit at the edge of the
# deadline under overload, where each burst of arrivals missed it (and filled the queue:
# 503s); the rest absorbs bursts, and the fast precision brings the queue back.
BACKLOG_SHARE = 0.3

Key = tuple[str, str, int | None]  # (model, precision, k)


class LatencyModel:
    """Seconds of device time per (model, precision, k, batch size)."""

    def __init__(self) -> None:
        self._seconds: dict[tuple[Key, int], float] = {}
        self._lock = threading.Lock()

    def observe(self, key: Key, size: int, seconds: float) -> None:
        with self._lock:
            old = self._seconds.get((key, size))
            new = seconds if old is None else old + SMOOTHING * (seconds - old)
            self._seconds[(key, size)] = new

    def predict(self, key: Key, size: int) -> float | None:
        """The figure for this size, else the nearest larger size's (a batch runs
        padded up), else the largest's scaled by size; None if the key was never seen."""
        with self._lock:
            sizes = sorted(s for k, s in self._seconds if k == key)
            if not sizes:
                return None
            larger = [s for s in sizes if s >= size]
            if larger:
                return self._seconds[(key, larger[0])]
            return self._seconds[(key, sizes[-1])] * size / sizes[-1]


class Scheduler:
    """Chooses precisions for "auto" batches, and tracks when the device will be free."""

    def __init__(self, model: LatencyModel, precisions: Sequence[str]) -> None:
        self.latency = model
        # Most accurate first.
        self.order = sorted(precisions, key=lambda p: -get_precision(p).fidelity)
        # Batches on the device, in the order they run: (when queued, predicted seconds).
        self._in_flight: deque[tuple[float, float]] = deque()
        self._last_landed = 0.0
        self.factor = 1.0  # device time / the warm-up figures, lately
        self._lock = threading.Lock()

    def predict(self, model: str, precision: str, k: int | None, size: int) -> float | None:
        seconds = self.latency.predict((model, precision, k), size)
        return None if seconds is None else seconds * self.factor

    def fastest(
        self, model: str, candidates: Sequence[tuple[str, int | None]], size: int
    ) -> float | None:
        """The predicted seconds of the fastest candidate for a batch of `size` (None
        when none has a figure)."""
        times = [self.predict(model, p, k, size) for p, k in candidates]
        known = [t for t in times if t is not None]
        return min(known) if known else None

    def busy_for(self) -> float:
        """Predicted seconds until the batches on the device are done: the one running
        less what it has run already (it started when queued or when the one before it
        landed), and the ones queued behind it."""
        with self._lock:
            if not self._in_flight:
                return 0.0
            (queued_at, first), *rest = self._in_flight
            started = max(queued_at, self._last_landed)
            left = max(0.0, first - (time.monotonic() - started))
            return left + sum(seconds for _, seconds in rest)

    def choose(
        self,
        model: str,
        candidates: Sequence[tuple[str, int | None]],
        size: int,
        deadline: float,
        backlog: int = 0,
        backlog_deadline: float = float("inf"),
    ) -> tuple[str, int | None]:
        """The first (precision, k) of `candidates` (most accurate first) predicted to
        finish by `deadline` (monotonic seconds) after the work queued ahead, and to
        leave the `backlog` images queued behind, run the same way, done within
        BACKLOG_SHARE of the time to theirs (each prediction taken HEADROOM times
        longer); the fastest when none is."""
        now = time.monotonic()
        start = now + self.busy_for()
        backlog_by = now + BACKLOG_SHARE * (backlog_deadline - now)
        fastest, fastest_s = candidates[0], float("inf")
        for precision, k in candidates:
            seconds = self.predict(model, precision, k, size)
            if seconds is None:
                continue
            drain = (self.predict(model, precision, k, backlog) or 0.0) if backlog else 0.0
            end = start + HEADROOM * seconds
            if end <= deadline and end + HEADROOM * drain <= backlog_by:
                return precision, k
            if seconds < fastest_s:
                fastest, fastest_s = (precision, k), seconds
        return fastest

    def queued(self, model: str, precision: str, k: int | None, size: int) -> float | None:
        """A batch went onto the device, behind those already there. Returns the
        prediction, for `measured`; `landed` must follow, in the same order."""
        seconds = self.predict(model, precision, k, size)
        with self._lock:
            self._in_flight.append((time.monotonic(), seconds or 0.0))
        return seconds

    def landed(self) -> None:
        """The oldest batch `queued` is off the device."""
        with self._lock:
            if self._in_flight:
                self._in_flight.popleft()
            self._last_landed = time.monotonic()

    def measured(self, predicted: float, seconds: float) -> None:
        """A batch predicted at `predicted` took `seconds`: the factor moves toward it."""
        with self._lock:
            ratio = self.factor * seconds / predicted
            factor = self.factor + FACTOR_SMOOTHING * (ratio - self.factor)
            self.factor = min(max(factor, FACTOR_RANGE[0]), FACTOR_RANGE[1])
