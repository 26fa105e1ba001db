"""scripts/torch_bench.py (PyTorch on the same network and weights, the GPU
reference) on the CPU: one row per batch size, written where asked."""

from __future__ import annotations

import json

import pytest

from tests.helpers import script


def test_torch_bench_on_the_cpu(tmp_path, capsys):
    pytest.importorskip("torch", reason="torch is not installed (the train extra)")
    torch_bench = script("torch_bench")
    out = tmp_path / "torch.json"
    argv = ["--model", "fashion-alexnet", "--random-weights", "--batch", "1,3", "--device",
            "cpu", "--iterations", "2", "--warmup", "1", "--out", str(out)]  # fmt: skip
    assert torch_bench.main(argv) == 0
    rows = json.loads(out.read_text())
    assert [r["batch"] for r in rows] == [1, 3]
    assert all(r["images_per_s"] > 0 and r["tf32"] is False for r in rows)
    assert len(capsys.readouterr().out.splitlines()) == 2
