"""What a training run reports: routing shares, the summary line, a collapse warning
(no torch needed)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def routing_histogram(indices: np.ndarray, num_experts: int) -> dict[str, Any]:
    """Images per expert (every routing slot counted), their shares, and the largest
    share divided by the fair share k/E (the product caps it at 3)."""
    counts = np.bincount(indices.reshape(-1), minlength=num_experts)
    share = counts / max(int(counts.sum()), 1)
    return {
        "counts": counts.tolist(),
        "share": [round(float(s), 4) for s in share],
        "max_over_fair": round(float(share.max() * num_experts), 3),
    }


def summary_line(summary: dict[str, Any]) -> str:
    """One line for the CLI: what was trained, how well, how long, where it went."""
    line = (
        f"trained {summary['name']}: test accuracy {100 * summary['test_accuracy']:.2f}% "
        f"(train {100 * summary['train_accuracy']:.2f}%), {summary['epochs']} epochs in "
        f"{summary['seconds']:.0f} s ({summary['seconds_per_epoch']:.0f} s/epoch)"
    )
    if "routing" in summary:
        line += f", routing share % {percent_shares(summary['routing']['share'])}"
    return f"{line} -> {summary['path']}"


def percent_shares(shares: Sequence[float]) -> str:
    """Expert shares as whole percents, "27/26/26/21"."""
    return "/".join(f"{100 * s:.0f}" for s in shares)


def routing_warning(summary: dict[str, Any]) -> str | None:
    """A mixture whose test images crowd onto few experts (over 3x an expert's fair
    share): the gate collapsed, and the model will not be faster than one expert."""
    routing = summary.get("routing")
    if routing is None or routing["max_over_fair"] <= 3:
        return None
    return (
        f"warning: the gate sends {routing['max_over_fair']:.1f}x an expert's fair share "
        "of the test images to one expert (it collapsed); try another --seed"
    )
