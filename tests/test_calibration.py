"""Calibration (experts/networks/calibrate.py, experts/model/calibration.py), per-layer precision maps and
quantised networks end to end, on small models."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from experts.model.architectures import random_weights
from experts.layers import SpecError
from experts.model.calibration import (
    Calibration,
    CalibrationError,
    merge_layer_precisions,
    parse_layer_precisions,
    weighted_layers,
)
from experts.model.mixture import mixture_spec, part_weights
from experts.model.model import Model, ModelError, validate
from experts.model.repository import Repository
from experts.model.spec import parse_layers
from experts.networks.build import build_network
from experts.networks.calibrate import calibrate, synthetic_images
from experts.networks.network import Network
from experts.networks.reference import forward, route
from tests.service_fixtures import TINY, TINY_MOE


@pytest.fixture
def tiny():
    return dict(TINY), random_weights(TINY, seed=1)


@pytest.fixture
def sample(rng):
    return rng.standard_normal((12, 3, 16, 16), np.float32)


def test_weighted_layer_names():
    assert weighted_layers(TINY) == ["conv1", "fc"]
    names = weighted_layers(TINY_MOE)
    assert names[:2] == ["stem.c1", "gate.g"] and names[-1] == "head.out"
    assert "experts.3.c2" in names and "experts.0.fc" in names and len(names) == 11


def test_minmax_ranges_are_the_inputs_extremes(tiny, sample):
    meta, weights = tiny
    cal = calibrate(meta, weights, [sample[:5], sample[5:]])
    assert cal.samples == 12 and set(cal.ranges) == {"conv1", "fc"}
    assert cal.ranges["conv1"] == (float(sample.min()), float(sample.max()))
    seen = {}
    forward(parse_layers(meta["layers"]), weights, sample, lambda n, x: seen.setdefault(n, x))
    assert cal.ranges["fc"] == (float(seen["fc"].min()), float(seen["fc"].max()))


def test_percentile_clips_outliers(tiny, rng):
    meta, weights = tiny
    sample = rng.standard_normal((64, 3, 16, 16), np.float32)
    sample[0, 0, 0, 0] = 50.0  # one wild pixel in 49,152
    mm = calibrate(meta, weights, [sample]).ranges["conv1"]
    pc = calibrate(meta, weights, [sample], method="percentile").ranges["conv1"]
    assert mm[1] == 50.0 and pc[1] < 5.0 and pc[0] >= mm[0]


def test_mixture_experts_are_calibrated_on_their_own_images(rng, sample):
    meta, weights = dict(TINY_MOE), random_weights(TINY_MOE, seed=2)
    cal = calibrate(meta, weights, [sample])
    assert set(cal.ranges) == set(weighted_layers(meta))
    spec = mixture_spec(meta)
    stem = forward(spec.stem, part_weights(weights, "stem"), sample).reshape(
        len(sample), *spec.stem_shape
    )
    indices, _ = route(forward(spec.gate, part_weights(weights, "gate"), stem), spec.k)
    for e in range(spec.experts):
        rows = np.nonzero((indices == e).any(axis=1))[0]
        if len(rows):
            mine = stem[rows]
            assert cal.ranges[f"experts.{e}.c2"] == (float(mine.min()), float(mine.max()))


def test_calibration_json_round_trip_and_mismatches(tiny, sample):
    meta, weights = tiny
    meta = validate(meta, weights, "tiny")
    cal = calibrate(meta, weights, [sample], source="test")
    doc = json.loads(cal.to_json(meta))
    assert Calibration.from_json(doc, meta, "x").ranges == cal.ranges
    with pytest.raises(CalibrationError, match="calibrated for model 'other', not 'tiny'"):
        Calibration.from_json({**doc, "model": "other"}, meta, "x")
    with pytest.raises(CalibrationError, match="unknown: conv9; missing: fc"):
        Calibration.from_json({**doc, "ranges": {"conv1": [0, 1], "conv9": [0, 1]}}, meta, "x")
    with pytest.raises(CalibrationError, match=r"range of fc must be \[low, high\]"):
        Calibration.from_json({**doc, "ranges": {"conv1": [0, 1], "fc": [2, 1]}}, meta, "x")


def test_repository_checks_calibration_at_load(tmp_path, tiny, sample):
    meta, weights = tiny
    repo = Repository(tmp_path)
    repo.save("tiny", meta, weights)
    assert repo.load("tiny").calibration is None
    cal = calibrate(meta, weights, [sample])
    repo.write_file("tiny", "calibration.json", cal.to_json(meta).encode())
    assert repo.load("tiny").calibration.ranges == cal.ranges
    (tmp_path / "tiny" / "calibration.json").write_text(json.dumps({"model": "tiny", "ranges": {}}))
    with pytest.raises(ModelError, match="calibration.json: does not match the model's layers"):
        repo.load("tiny")
    assert not [p for p in (tmp_path / "tiny").iterdir() if p.name.startswith(".")]


def test_layer_precision_maps_are_checked():
    assert parse_layer_precisions("conv1=fp32, fc = int8,") == {"conv1": "fp32", "fc": "int8"}
    with pytest.raises(CalibrationError, match="expected LAYER=PRECISION"):
        parse_layer_precisions("conv1")
    with pytest.raises(CalibrationError, match="has no conv or linear layer of that name"):
        merge_layer_precisions(TINY, {"pool1": "fp32"})
    with pytest.raises(CalibrationError, match="unknown precision 'fp8'"):
        merge_layer_precisions(TINY, {"fc": "fp8"})
    with pytest.raises(CalibrationError, match="unknown precision 'fp8'"):
        parse_layer_precisions("fc=fp8")
    meta = {**TINY, "layer_precisions": {"conv1": "fp16"}}
    assert merge_layer_precisions(meta, {"fc": "int8"}) == {"conv1": "fp16", "fc": "int8"}
    with pytest.raises(ModelError, match="layer precision for 'conv7'"):
        validate({**TINY, "layer_precisions": {"conv7": "fp16"}}, random_weights(TINY, 1), "t")


def test_per_layer_override_runs_that_layer_at_its_precision(device, tiny, sample):
    meta, weights = tiny
    model = Model(validate(meta, weights, "tiny"), weights)
    model.calibration = calibrate(meta, weights, [sample])
    net = build_network(model, device, "int8", {"fc": "fp32"})
    kinds = {s.name: s.op.precision.name for s in net.steps if hasattr(s.op, "precision")}
    assert kinds == {"conv1": "int8", "fc": "fp32"}
    fp32 = build_network(model, device, "fp32").run(sample).scores
    mixed = net.run(sample).scores
    err = np.mean((mixed - fp32) ** 2) / np.mean(fp32**2)
    assert 0 < err < 1e-3  # quantised conv1 (not exact), close


def test_quantized_network_matches_the_twins_layer_by_layer(device, tiny, sample):
    """Run conv1 -> pool -> fc at int8 and check the whole against the quantised twins
    (kernels/reference.py), which share the quantisation arithmetic."""
    from kernels import reference as ref
    from kernels.precision import PRECISIONS

    meta, weights = tiny
    cal = calibrate(meta, weights, [sample])
    layers = parse_layers(meta["layers"])
    net = Network(device, layers, meta["input"]["shape"], weights, precision="int8", ranges=cal.ranges)
    p = PRECISIONS["int8"]
    w1 = weights["conv1.weight"]
    c1 = p.prepare(w1.reshape(len(w1), -1), cal.ranges["conv1"])
    h = ref.conv2d_quantized(
        sample,
        c1.weights.reshape(w1.shape),
        c1.scale,
        c1.qinv,
        c1.qzero,
        8,
        weights["conv1.bias"],
        1,
        1,
        relu=True,
    )
    h = ref.maxpool2d(h, 2, 2, 0, False).reshape(len(sample), -1)
    fc = p.prepare(weights["fc.weight"], cal.ranges["fc"])
    want = ref.linear_quantized(h, fc.weights, fc.scale, fc.qinv, fc.qzero, 8, weights["fc.bias"])
    np.testing.assert_allclose(
        net.run(sample).scores, want, rtol=1e-5, atol=1e-5 * np.abs(want).max()
    )


def test_uncalibrated_model_warns_and_uses_synthetic_ranges(device, tiny):
    meta, weights = tiny
    model = Model(validate(meta, weights, "tiny"), weights)
    with pytest.warns(UserWarning, match="has no calibration.json"):
        build_network(model, device, "int8")
    assert model.calibration.source == "synthetic (default)"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # computed once per model
        build_network(model, device, "int16")
        build_network(Model(model.meta, weights), device, "fp32")  # floats need no ranges
    a, b = synthetic_images(meta, 4), synthetic_images(meta, 4)
    np.testing.assert_array_equal(a, b)  # deterministic


def test_quantized_layer_without_range_is_refused(device, tiny):
    meta, weights = tiny
    with pytest.raises(SpecError, match="conv1: int8 needs the calibrated range"):
        Network(device, parse_layers(meta["layers"]), meta["input"]["shape"], weights, precision="int8")


def test_no_sample_reaching_an_expert_borrows_its_peers_range(sample):
    meta, weights = dict(TINY_MOE), random_weights(TINY_MOE, seed=2)
    cal = calibrate(meta, weights, [sample[:1]])  # one image: k=2 of 4 experts see it
    assert set(cal.ranges) == set(weighted_layers(meta))


def test_calibrate_cli_writes_calibration_json(tmp_path: Path, capsys, monkeypatch, sample):
    from service.commands.main import main
    from tests.service_fixtures import make_repo

    root = make_repo(tmp_path / "models")
    monkeypatch.setenv("MOE_MODEL_REPOSITORY", str(root))
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        np.save(images / f"{i}.npy", sample[i : i + 1])
    assert main(["calibrate", "--model", "tiny", "--images", str(images)]) == 0
    out = capsys.readouterr().out
    assert "calibrated tiny: 2 layers, 3 images" in out
    assert Repository(root).load("tiny").calibration.samples == 3
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
