"""`moe-alexnet train` (service/commands/train.py): a run with every option recorded in
training.json, a missing dataset in one line, and without torch a one-line hint of what
to install."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("torch", reason="torch (the train extra) is not installed")

from experts.model.repository import Repository  # noqa: E402
from service.commands.main import main  # noqa: E402
from tests.helpers import ROOT, needs_data  # noqa: E402


def test_without_torch_the_command_says_what_to_install():
    """Without torch everything imports, and `train` fails in one line with the hint."""
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from service.commands.main import main\n"
        "sys.exit(main(['train', '--arch', 'fashion-moe', '--limit', '1']))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 1, result.stderr
    assert result.stderr.count("\n") == 1
    assert "pip install 'moe-alexnet[train]'" in result.stderr


@needs_data
def test_cli_train(tmp_path, capsys):
    code = main(
        [
            "train",
            "--arch",
            "fashion-moe",
            "--epochs",
            "1",
            "--limit",
            "256",
            "--out",
            str(tmp_path),
            "--seed",
            "3",
            "--batch-size",
            "64",
            "--lr",
            "0.001",
            "--dropout",
            "0.1",
            "--clean-fraction",
            "1",
            "--no-route-clean",
            "--threads",
            "1",
            "--device",
            "cpu",
            "--autocast",
            "off",
        ]
    )
    assert code == 0
    assert Repository(tmp_path).names() == ["fashion-moe"]
    record = json.loads((tmp_path / "fashion-moe" / "training.json").read_text())
    assert record["seed"] == 3 and record["batch_size"] == 64
    assert record["lr"] == 0.001 and record["dropout"] == 0.1
    assert record["clean_fraction"] == 1.0 and record["history"][0]["gate_noise"] is False
    assert record["route_clean"] is False and record["threads"] == 1
    assert record["device"] == "cpu" and "gpu" not in record and record["autocast"] == "off"
    assert "test accuracy" in capsys.readouterr().out


def test_cli_train_without_dataset(tmp_path, capsys):
    code = main(
        [
            "train",
            "--arch",
            "fashion-moe",
            "--data-dir",
            str(tmp_path / "none"),
            "--out",
            str(tmp_path),
        ]
    )
    err = capsys.readouterr().err
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "apt-get install dataset-fashion-mnist" in err
