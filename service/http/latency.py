"""precision=auto: device-time predictions and the choice they drive.

The engine times every (model, precision, k, batch size) once it is warm. As batches
run, one machine-wide factor (a moving average of device time over that timing) scales
every prediction: on a shared machine a load that slows one precision slows them all,
including those not running now. For a batch asked at precision "auto" (or a mixture's k "auto") the
scheduler takes the most accurate loaded precision (the table's `fidelity`; then the
largest k up to the model's own) whose predicted finish, after the batches already
queued on the device, meets the earliest deadline in the batch and leaves the images
queued behind it time for theirs; when none does, the fastest. An explicit precision
or k is never changed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from kernels.precision import get_precision

AUTO = "auto"
SMOOTHING = 0.2  # weight of a new timing in a figure's moving average (warm-up)
FACTOR_SMOOTHING = 0.3  # weight of a batch's device time / prediction in the factor
FACTOR_RANGE = (0.25, 20.0)

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
        self._ahead = 0.0  # predicted seconds of the batches queued on the device
        self.factor = 1.0  # device time / the warm-up figures, lately
        self._lock = threading.Lock()

    def predict(self, model: str, precision: str, k: int | None, size: int) -> float | None:
        seconds = self.latency.predict((model, precision, k), size)
        return None if seconds is None else seconds * self.factor

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
        leave the `backlog` images queued behind, run the same way, done by theirs; the
        fastest when none is."""
        start = time.monotonic() + self._ahead
        fastest, fastest_s = candidates[0], float("inf")
        for precision, k in candidates:
            seconds = self.predict(model, precision, k, size)
            if seconds is None:
                continue
            drain = (self.predict(model, precision, k, backlog) or 0.0) if backlog else 0.0
            if start + seconds <= deadline and start + seconds + drain <= backlog_deadline:
                return precision, k
            if seconds < fastest_s:
                fastest, fastest_s = (precision, k), seconds
        return fastest

    def queued(self, model: str, precision: str, k: int | None, size: int) -> float | None:
        """A batch went onto the device, ahead of the next ones. Returns the prediction,
        for `landed` and `measured`."""
        seconds = self.predict(model, precision, k, size)
        with self._lock:
            self._ahead += seconds or 0.0
        return seconds

    def landed(self, predicted: float | None) -> None:
        """A batch `queued` with this prediction is off the device."""
        with self._lock:
            self._ahead = max(0.0, self._ahead - (predicted or 0.0))

    def measured(self, predicted: float, seconds: float) -> None:
        """A batch predicted at `predicted` took `seconds`: the factor moves toward it."""
        with self._lock:
            ratio = self.factor * seconds / predicted
            factor = self.factor + FACTOR_SMOOTHING * (ratio - self.factor)
            self.factor = min(max(factor, FACTOR_RANGE[0]), FACTOR_RANGE[1])
