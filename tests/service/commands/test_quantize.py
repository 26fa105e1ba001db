"""`moe-alexnet quantize` (service/commands/quantize.py): writes quantised copies beside
a model's weights, refuses what it cannot copy in one line, and `calibrate` makes the
copies again with its new ranges, so they never go stale."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from experts.model.quantized import copy_name, load_copy
from experts.model.repository import Repository
from tests.service.commands.cli import one_line_error, run


def _calibrate(capsys, tmp_path: Path, sample: np.ndarray, count: int) -> str:
    images = tmp_path / f"images{count}"
    images.mkdir()
    for i in range(count):
        np.save(images / f"{i}.npy", sample[i : i + 1])
    code, out, _ = run(capsys, "calibrate", "--model", "tiny", "--images", str(images))
    assert code == 0
    return out


def test_quantize_writes_copies_that_calibrate_keeps_fresh(capsys, tmp_path, repo, sample):
    _calibrate(capsys, tmp_path, sample, 3)
    code, out, _ = run(capsys, "quantize", "--model", "tiny", "--precision", "int8,fp16")
    assert code == 0
    for precision in ("int8", "fp16"):
        assert f"quantised tiny at {precision}: " in out
        assert (repo / "tiny" / copy_name(precision)).is_file()
    assert load_copy(Repository(repo).load("tiny"), "int8") is not None
    out = _calibrate(capsys, tmp_path, sample, 7)  # other ranges: the copies follow
    assert "made the int8 copy again with the new ranges" in out
    model = Repository(repo).load("tiny")
    assert model.calibration.samples == 7 and load_copy(model, "int8") is not None
    code, out, _ = run(
        capsys,
        "classify",
        "--model",
        "tiny",
        "--precision",
        "int8",
        str(tmp_path / "images3" / "0.npy"),
    )
    assert code == 0 and "int8" in out


def test_quantize_refusals(capsys, repo):
    code, _, err = run(capsys, "quantize", "--model", "tiny", "--precision", "int8")
    assert "no calibration.json, which int8 needs: run `moe-alexnet calibrate" in one_line_error(
        code, err
    )
    code, _, err = run(capsys, "quantize", "--model", "tiny", "--precision", "fp32")
    assert "fp32 has no quantised copy" in one_line_error(code, err)
    code, _, err = run(capsys, "quantize", "--model", "nope", "--precision", "fp16")
    assert "unknown model 'nope'" in one_line_error(code, err)
    assert not list((repo / "tiny").glob("weights.*.safetensors"))
