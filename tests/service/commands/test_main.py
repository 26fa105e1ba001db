"""The moe-alexnet command's error handling (service/commands/main.py), in-process:
every expected failure of any command is one line on stderr and a non-zero exit, and
leaves nothing half-written in the model repository."""

from __future__ import annotations

import numpy as np
import pytest

from tests.service.commands.cli import one_line_error, run


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["classify", "missing.jpg", "--model", "tiny"], "missing.jpg"),
        (["classify", "{garbage}", "--model", "tiny"], "not a readable image"),
        (["classify", "{badnpy}", "--model", "tiny"], "shape"),
        (["classify", "{garbage}", "--model", "nope"], "nope"),
        (["classify", "{garbage}", "--model", "alexnet"], "--random-weights"),
        (
            ["classify", "{garbage}", "--model", "tiny", "--device", "no-such-device"],
            "no-such-device",
        ),
        (
            ["classify", "{garbage}", "--model", "tiny", "--precision", "fp32,int8"],
            "one precision at a time",
        ),
        (["calibrate", "--model", "tiny", "--images", "{garbage}"], "not a folder of images"),
        (["import-onnx", "missing.onnx", "--name", "x"], "missing.onnx"),
        (["import-onnx", "{garbage}", "--name", "x"], "garbage"),
    ],
)
def test_errors_are_one_line(capsys, repo, tmp_path, argv, needle):
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"this is not an image")
    badnpy = tmp_path / "bad.npy"
    np.save(badnpy, np.zeros((2, 5, 5), np.float32))
    argv = [a.format(garbage=garbage, badnpy=badnpy) for a in argv]
    if argv[-1] == "no-such-device":  # the input must be fine for the device to matter
        argv[1] = str(badnpy.with_name("ok.npy"))
        np.save(argv[1], np.zeros((1, 3, 16, 16), np.float32))
    code, _, err = run(capsys, *argv)
    assert needle in one_line_error(code, err)
    assert sorted(p.name for p in repo.iterdir()) == ["tiny"]


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["classify", "{npy}", "--model", "tiny", "--experts", "2"], "mixture"),
        (["classify", "{npy12}", "--model", "small-moe", "--experts", "9"], "between 1 and 5"),
        (["bench", "--model", "small-moe", "--compare", "onnxruntime"], "sequential models only"),
    ],
)
def test_mixture_errors(capsys, moe_repo, tmp_path, argv, needle):
    npy, npy12 = tmp_path / "a.npy", tmp_path / "b.npy"
    np.save(npy, np.zeros((1, 3, 16, 16), np.float32))
    np.save(npy12, np.zeros((1, 3, 12, 12), np.float32))
    code, _, err = run(capsys, *[a.format(npy=npy, npy12=npy12) for a in argv])
    assert needle in one_line_error(code, err)
