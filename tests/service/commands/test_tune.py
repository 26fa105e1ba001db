"""`moe-alexnet tune` (service/commands/tune.py): a database written for the tiny
model on PoCL, read back by `devices` and `bench`; its bad inputs; Ctrl-C keeps what
was found."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kernels.tuning import read
from service.commands import tune as tune_command
from tests.service.commands.cli import one_line_error, run


def _tune(capsys, model: str, batches: str, budget: int, out_dir) -> tuple[int, str, str]:
    """`tune --model M --precision fp32,int8 --batch B --budget S --output DIR --json`."""
    argv = ["--model", model, "--precision", "fp32,int8", "--batch", batches]
    return run(capsys, "tune", *argv, "--budget", str(budget), "--output", str(out_dir), "--json")


def test_tune_writes_a_database_that_bench_and_devices_read(repo, tmp_path, capsys, monkeypatch):
    out_dir = tmp_path / "tuning"
    code, out, err = _tune(capsys, "tiny", "1,3", 3, out_dir)
    assert code == 0, err
    result = json.loads(out)
    layers = result["layers"]
    # conv1 and fc at two precisions and two batch buckets (1 and 8)
    assert len(layers) == 8
    assert {r["layer"].split()[0] for r in layers} == {"conv1", "fc"}
    assert all(r["tuned_ms"] <= r["builtin_ms"] and r["rejected"] == 0 for r in layers)
    db = read(out_dir / result["database"].rsplit("/", 1)[1], None)
    assert len(db.entries) == 8
    assert not [p for p in out_dir.iterdir() if p.name.startswith(".")]  # nothing half-written

    monkeypatch.setenv("MOE_TUNING_DIR", str(out_dir))
    monkeypatch.setenv("MOE_TUNING", "1")
    code, out, _ = run(capsys, "devices", "--json")
    assert any(d["tuned_layers"] >= 8 for d in json.loads(out)["devices"])  # with shipped ones
    code, out, _ = run(capsys, "bench", "--model", "tiny", "--batch", "1", "--iterations", "2",
                       "--json")  # fmt: skip
    assert code == 0 and json.loads(out.splitlines()[0])["tuned"] is True
    code, out, _ = run(capsys, "bench", "--model", "tiny", "--batch", "1", "--iterations", "2",
                       "--untuned", "--json")  # fmt: skip
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [r["tuned"] for r in rows] == [True, False]
    monkeypatch.setenv("MOE_TUNING_DIR", str(tmp_path / "empty"))
    code, out, _ = run(capsys, "bench", "--model", "tiny", "--batch", "1", "--iterations", "2",
                       "--json")  # fmt: skip
    assert code == 0 and json.loads(out.splitlines()[0])["tuned"] is False


def test_a_mixtures_grouped_experts_are_tuned_and_run_tuned(moe_repo, tmp_path, capsys,
                                                            monkeypatch):  # fmt: skip
    """small-moe's grouped experts (five, in one launch a layer) are cases of their own,
    each candidate checked against every expert's twin; the mixture then runs what was
    kept and still matches the dense reference."""
    out_dir = tmp_path / "tuning"
    code, out, err = _tune(capsys, "small-moe", "1,8", 4, out_dir)
    assert code == 0, err
    layers = {r["layer"]: r for r in json.loads(out)["layers"]}
    grouped = [name for name in layers if name.startswith("experts.")]
    assert {name.split()[0] for name in grouped} == {"experts.c2", "experts.fc"}
    assert len(grouped) == 8 and all(layers[n]["rejected"] == 0 for n in grouped)
    db = read(next(out_dir.glob("*.json")), None)
    assert sum("/e5" in key for key in db.entries) == 8

    from experts.model.architectures import random_weights
    from experts.networks.mixture import MixtureNetwork
    from experts.networks.reference import mixture_forward
    from kernels.runtime import Device
    from tests.helpers import SMALL

    monkeypatch.setenv("MOE_TUNING_DIR", str(out_dir))
    monkeypatch.setenv("MOE_TUNING", "1")
    weights = random_weights(SMALL, seed=2)
    net = MixtureNetwork(Device(), SMALL, weights)
    assert net.grouped is not None
    for n in (1, 8):
        x = np.random.default_rng(n).standard_normal((n, 3, 12, 12)).astype(np.float32)
        want, indices, _ = mixture_forward(SMALL, weights, x, 2)
        scores, routing = net.run(x, 2)
        np.testing.assert_array_equal(routing.indices, indices)
        np.testing.assert_allclose(scores, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--budget", "0"], "--budget must be more than 0"),
        (["--budget", "-5"], "--budget must be more than 0"),
        (["--device", "no-such-device"], "no OpenCL device matches"),
        (["--model", "no-such-model"], "no-such-model"),
        (["--output", "/dev/null/tuning"], "cannot write the tuning database"),
    ],
)
def test_bad_input_is_one_line(repo, tmp_path, capsys, argv, message):
    args = ["tune", "--model", "tiny", "--budget", "1", "--output", str(tmp_path / "db"), *argv]
    code, _, err = run(capsys, *args)
    assert message in one_line_error(code, err)
    assert not (tmp_path / "db").exists() or not list((tmp_path / "db").iterdir())


def test_interrupted_keeps_what_was_found(repo, tmp_path, capsys, monkeypatch):
    real, calls = tune_command.tune, []

    def tune_then_interrupt(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(tune_command, "tune", tune_then_interrupt)
    code, _, err = run(capsys, "tune", "--model", "tiny", "--budget", "1", "--output",
                       str(tmp_path))  # fmt: skip
    assert code == 130 and "interrupted: 1 layers kept" in err
    (path,) = tmp_path.glob("*.json")
    assert len(read(path, None).entries) == 1
