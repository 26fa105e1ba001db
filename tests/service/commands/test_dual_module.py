"""--dual-module on the commands: `calibrate` fits and writes the little modules,
`classify` runs with them, `eval` reports accuracy with and without and what the big
layers computed, `bench --json` rows carry the big-module bytes read per image; bad
layers, skip targets and files are one line on stderr."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from experts.model.architectures import random_weights
from experts.model.dual_module import DUAL_MODULE_FILE
from experts.model.repository import Repository
from tests.helpers import DUAL_NET
from tests.service.commands.cli import one_line_error, run


@pytest.fixture
def dual_repo(repo: Path, tmp_path: Path, sample) -> tuple[Path, Path]:
    """dual-net in the test's repository, and a folder of its calibration images."""
    Repository(repo).save("dual-net", DUAL_NET, random_weights(DUAL_NET, seed=3))
    images = tmp_path / "images"
    images.mkdir()
    for i in range(len(sample)):
        np.save(images / f"{i}.npy", sample[i : i + 1])
    return repo, images


def test_calibrate_classify_and_bench_with_little_modules(capsys, dual_repo):
    repo, images = dual_repo
    code, out, err = run(
        capsys, "calibrate", "--model", "dual-net", "--images", str(images),
        "--dual-module", "all", "--skip-target", "0.5", "--rank", "4",
    )  # fmt: skip
    assert code == 0, err
    assert "little modules for 2 layers, 12 images" in out and DUAL_MODULE_FILE in out
    dual = Repository(repo).load("dual-net").dual_module
    assert list(dual.layers) == ["fc6", "fc7"] and dual.layers["fc6"].rank == 4

    args = ("--model", "dual-net", "--dual-module", "fc6,fc7", "--json")
    code, out, err = run(capsys, "classify", str(images / "0.npy"), *args)
    assert code == 0, err
    assert json.loads(out)["dual_module"] == ["fc6", "fc7"]

    code, out, err = run(capsys, "bench", *args, "--batch", "1,2", "--iterations", "2")
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [("dual_module" in r, r["batch"]) for r in rows] == [
        (False, 1), (True, 1), (False, 2), (True, 2),
    ]  # fmt: skip
    fc6 = rows[1]["dual_module"]["fc6"]
    assert fc6["big_bytes"] == 48 * 256 * 4
    assert 0 <= fc6["big_bytes_per_image"] <= fc6["big_bytes"]
    assert fc6["read_share_at_batch_1"] == pytest.approx(
        fc6["computed_share"] + fc6["little_bytes"] / fc6["big_bytes"], abs=1e-4
    )
    assert rows[1]["weight_bytes"] > rows[0]["weight_bytes"]  # plus the little modules


def test_eval_reports_with_and_without(capsys, test_split):
    # No dual-module file: fitted on synthetic images, with a warning.
    with pytest.warns(UserWarning, match="no dual-module file"):
        code, out, err = run(
            capsys, "eval", "--model", "fashion-alexnet", "--random-weights", "--data-dir",
            str(test_split), "--dual-module", "fc6,fc7", "--json",
        )  # fmt: skip
    assert code == 0, err
    plain, dual = (json.loads(line) for line in out.splitlines())
    assert "dual_module" not in plain
    report = dual["dual_module"]
    assert report["top1_without"] == plain["top1"]
    assert set(report["layers"]) == {"fc6", "fc7"}
    assert all(0 <= s["computed_share"] <= 1 for s in report["layers"].values())


def test_bad_layers_are_one_line(capsys, repo, sample, tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, sample[:1])
    code, _, err = run(capsys, "classify", "--model", "tiny", str(path), "--dual-module", "fc")
    line = one_line_error(code, err)
    assert "fc is not a fully connected layer followed by ReLU" in line
    with pytest.raises(SystemExit) as exit_:  # a flag argparse refuses: usage, status 2
        run(capsys, "classify", "--model", "tiny", str(path), "--dual-module", "none,fc")
    assert exit_.value.code == 2
    assert "'none' cannot be combined with layers" in capsys.readouterr().err


def test_calibrate_refuses_a_skip_target_outside_0_1(capsys, dual_repo):
    _, images = dual_repo
    code, _, err = run(
        capsys, "calibrate", "--model", "dual-net", "--images", str(images),
        "--dual-module", "fc6", "--skip-target", "1.5",
    )  # fmt: skip
    assert "--skip-target must lie in (0, 1), got 1.5" in one_line_error(code, err)


def test_a_dual_module_file_of_another_model_is_refused(capsys, dual_repo, sample, tmp_path):
    repo, images = dual_repo
    assert run(capsys, "calibrate", "--model", "dual-net", "--images", str(images),
               "--dual-module", "fc6")[0] == 0  # fmt: skip
    Repository(repo).save("other", {**DUAL_NET, "name": "other"}, random_weights(DUAL_NET))
    data = (repo / "dual-net" / DUAL_MODULE_FILE).read_bytes()
    (repo / "other" / DUAL_MODULE_FILE).write_bytes(data)
    code, _, err = run(capsys, "classify", "--model", "other", str(images / "0.npy"))
    line = one_line_error(code, err)
    assert "fitted for model 'dual-net', not 'other'" in line and DUAL_MODULE_FILE in line


def test_serve_takes_the_flag_over_the_environment(monkeypatch):
    from service.commands import serve
    from service.commands.args import settings
    from service.commands.main import build_parser

    monkeypatch.setenv("MOE_DUAL_MODULE", "fc6")
    args = build_parser().parse_args(["serve", "--dual-module", "fc6,fc7"])
    assert settings(args, serve.FLAGS).dual_module == ("fc6", "fc7")
    args = build_parser().parse_args(["serve", "--dual-module", "none"])
    assert settings(args, serve.FLAGS).dual_module == ()
    assert settings(build_parser().parse_args(["serve"]), serve.FLAGS).dual_module == ("fc6",)
