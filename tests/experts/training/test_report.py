"""The training report (experts/training/report.py): a collapsed gate is flagged."""

from __future__ import annotations

import pytest

pytest.importorskip("torch", reason="torch (the train extra) is not installed")

from experts.training.report import routing_warning  # noqa: E402


def test_a_collapsed_gate_is_flagged():
    balanced = {"routing": {"share": [0.25] * 4, "max_over_fair": 1.09}}
    collapsed = {"routing": {"share": [1.0, 0, 0, 0], "max_over_fair": 4.0}}
    assert routing_warning(balanced) is None and routing_warning({}) is None
    assert "4.0x" in routing_warning(collapsed) and "collapsed" in routing_warning(collapsed)
