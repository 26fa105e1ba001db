"""scripts/weight_entropy.py: per fully connected layer, int8g's and int16g's bits per
weight beside the entropy of the integers, which no lossless code goes below."""

from __future__ import annotations

import json

import pytest

from tests.helpers import script


@pytest.fixture
def weight_entropy():
    return script("weight_entropy")


def test_a_mixtures_layers_and_their_bound(weight_entropy, capsys):
    argv = ["--model", "fashion-moe", "--random-weights", "--json"]
    assert weight_entropy.main(argv) == 0
    rows = {r["layer"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert set(rows) == {"gate.gfc", "experts.fc6", "experts.fc7", "head.fc8"}
    assert rows["experts.fc6"]["weights"] == 4 * 256 * 160  # the four experts together
    for r in rows.values():
        assert 0 < r["int8_entropy_bits"] < r["int8g_bits"] and r["int8_entropy_bits"] <= 8
        # int16's finer steps hold more information (a small layer: log2 of its count)
        assert r["int8_entropy_bits"] < r["int16_entropy_bits"] < r["int16g_bits"]


def test_an_unknown_model_is_one_line(weight_entropy, capsys, tmp_path):
    argv = ["--model", "no-such-model", "--models-dir", str(tmp_path)]
    assert weight_entropy.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("weight_entropy: ") and "no-such-model" in err[0]
