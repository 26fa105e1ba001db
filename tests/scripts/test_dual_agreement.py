"""scripts/dual_agreement.py: top-1 answers a model's little modules leave unchanged,
on real photos and synthetic images (alexnet's figures in BENCHMARKS.md)."""

from __future__ import annotations

import re

import pytest

from tests.helpers import script


@pytest.fixture
def dual_agreement():
    pytest.importorskip("skimage.data", reason="scikit-image is not installed")
    return script("dual_agreement")


def test_each_precision_counts_its_unchanged_answers(dual_agreement, capsys):
    argv = ["--model", "fashion-alexnet", "--random-weights", "--precision", "fp32,int8"]
    assert dual_agreement.main([*argv, "--synthetic", "12"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["fp32", "int8"]
    for line in lines:
        (photos, n_photos), (synthetic, n_synthetic) = re.findall(r"(\d+)/(\d+)", line)
        assert (int(n_photos), int(n_synthetic)) == (4, 12)
        assert int(photos) <= 4 and int(synthetic) <= 12


def test_without_little_modules_every_answer_agrees(dual_agreement, capsys):
    argv = ["--model", "fashion-alexnet", "--random-weights", "--layers", "none"]
    assert dual_agreement.main([*argv, "--precision", "fp16", "--synthetic", "5"]) == 0
    assert capsys.readouterr().out.strip() == "fp16 photos 4/4, synthetic 5/5"


def test_a_layer_without_a_little_module_is_one_line(dual_agreement, capsys):
    argv = ["--model", "fashion-alexnet", "--random-weights", "--layers", "conv2"]
    assert dual_agreement.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dual_agreement: ") and "conv2" in err[0]
