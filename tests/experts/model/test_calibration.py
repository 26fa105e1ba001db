"""Calibration files and precision maps (experts/model/calibration.py): the weighted
layers' names, calibration.json's round trip and every mismatch, the repository's check
at load, and per-layer precision maps."""

from __future__ import annotations

import json

import pytest

from experts.model.architectures import random_weights
from experts.model.calibration import (
    Calibration,
    CalibrationError,
    merge_layer_precisions,
    parse_layer_precisions,
    weighted_layers,
)
from experts.model.model import ModelError, validate
from experts.model.repository import Repository
from experts.networks.calibrate import calibrate


def test_weighted_layer_names(tiny_meta, tiny_moe_meta):
    assert weighted_layers(tiny_meta) == ["conv1", "fc"]
    names = weighted_layers(tiny_moe_meta)
    assert names[:2] == ["stem.c1", "gate.g"] and names[-1] == "head.out"
    assert "experts.3.c2" in names and "experts.0.fc" in names and len(names) == 11


def test_calibration_json_round_trip_and_mismatches(tiny_model, sample):
    meta, weights = tiny_model
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


def test_repository_checks_calibration_at_load(tmp_path, tiny_model, sample):
    meta, weights = tiny_model
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


def test_layer_precision_maps_are_checked(tiny_meta):
    assert parse_layer_precisions("conv1=fp32, fc = int8,") == {"conv1": "fp32", "fc": "int8"}
    with pytest.raises(CalibrationError, match="expected LAYER=PRECISION"):
        parse_layer_precisions("conv1")
    with pytest.raises(CalibrationError, match="has no conv or linear layer of that name"):
        merge_layer_precisions(tiny_meta, {"pool1": "fp32"})
    with pytest.raises(CalibrationError, match="unknown precision 'fp8'"):
        merge_layer_precisions(tiny_meta, {"fc": "fp8"})
    with pytest.raises(CalibrationError, match="unknown precision 'fp8'"):
        parse_layer_precisions("fc=fp8")
    meta = {**tiny_meta, "layer_precisions": {"conv1": "fp16"}}
    assert merge_layer_precisions(meta, {"fc": "int8"}) == {"conv1": "fp16", "fc": "int8"}
    with pytest.raises(ModelError, match="layer precision for 'conv7'"):
        validate(
            {**tiny_meta, "layer_precisions": {"conv7": "fp16"}}, random_weights(tiny_meta, 1), "t"
        )
