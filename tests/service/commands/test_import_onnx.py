"""`moe-alexnet import-onnx` (service/commands/import_onnx.py): an exported model
imported into the repository with its labels, refused over an existing entry without
--force, then classified."""

from __future__ import annotations

import numpy as np
import pytest

from experts.model.architectures import random_weights
from experts.model.repository import Repository
from tests.service.commands.cli import one_line_error, run


def test_import_onnx_round_trip(capsys, repo, tmp_path, photo, tiny_meta):
    pytest.importorskip("onnx", reason="onnx (test extra) is not installed")
    from experts.onnx.export import to_onnx

    meta = {**tiny_meta, "name": "exported"}
    weights = random_weights(meta, seed=5)
    onnx_path = tmp_path / "exported.onnx"
    onnx_path.write_bytes(to_onnx(meta, weights).SerializeToString())
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\nfish\n")
    code, out, err = run(
        capsys, "import-onnx", str(onnx_path), "--name", "imported", "--labels", str(labels)
    )
    assert code == 0, err
    model = Repository(repo).load("imported")
    assert model.labels == ["cat", "dog", "fish"]
    for key, value in weights.items():
        np.testing.assert_array_equal(model.weights[key], value)
    # importing again without --force must not touch the existing entry
    code, _, err = run(capsys, "import-onnx", str(onnx_path), "--name", "imported")
    assert "imported" in one_line_error(code, err)
    code, out, err = run(capsys, "classify", str(photo), "--model", "imported", "--json")
    assert code == 0, err
