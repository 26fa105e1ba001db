"""`moe-alexnet calibrate` (service/commands/calibrate.py): writes calibration.json into
the repository from a folder of images, refuses a missing folder in one line, and what
it wrote serves `classify` at int8 with per-layer overrides."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from experts.model.repository import Repository
from service.commands.main import main


def test_calibrate_cli_writes_calibration_json(tmp_path: Path, capsys, repo, sample):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        np.save(images / f"{i}.npy", sample[i : i + 1])
    assert main(["calibrate", "--model", "tiny", "--images", str(images)]) == 0
    out = capsys.readouterr().out
    assert "calibrated tiny: 2 layers, 3 images" in out
    assert Repository(repo).load("tiny").calibration.samples == 3
    assert main(["calibrate", "--model", "tiny", "--images", str(tmp_path / "none")]) == 1
    assert "not a folder of images" in capsys.readouterr().err
    code = main(
        [
            "classify",
            "--model",
            "tiny",
            "--precision",
            "int8",
            "--layer-precision",
            "fc=fp16",
            str(images / "0.npy"),
            "--json",
        ]
    )
    assert code == 0 and json.loads(capsys.readouterr().out)["precision"] == "int8"
    code = main(
        ["classify", "--model", "tiny", "--layer-precision", "nope=int8", str(images / "0.npy")]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "'nope'" in err[0]
