"""The moe-alexnet command end to end, in-process through service.commands.main.main: every
expected failure is one line on stderr and a non-zero exit, and leaves nothing
half-written in the model repository."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from experts.model.architectures import random_weights
from experts.model.spec import parse_layers
from experts.networks.network import fuse_relu
from experts.model.repository import Repository
from service.commands.main import main
from tests.service_fixtures import TINY


@pytest.fixture
def repo(tmp_path: Path, monkeypatch) -> Path:
    root = tmp_path / "models"
    root.mkdir()
    Repository(root).save("tiny", TINY, random_weights(TINY, seed=1))
    monkeypatch.setenv("MOE_MODEL_REPOSITORY", str(root))
    return root


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    skimage_data = pytest.importorskip("skimage.data", reason="scikit-image is not installed")
    from PIL import Image

    path = tmp_path / "astronaut.jpg"
    Image.fromarray(skimage_data.astronaut()).save(path)
    return path


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code: int, err: str) -> str:
    assert code != 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("moe-alexnet: error: ")
    return lines[0]


def test_devices_lists_the_default(capsys):
    code, out, _ = run(capsys, "devices", "--json")
    assert code == 0
    devices = json.loads(out)["devices"]
    assert sum(d["default"] for d in devices) == 1
    assert all({"platform", "name", "compute_units", "fp16"} <= set(d) for d in devices)
    assert all(isinstance(d["int8_dot_products"], bool) for d in devices)


def test_classify_photo_json(capsys, repo, photo):
    code, out, err = run(
        capsys, "classify", str(photo), "--model", "tiny", "--json", "--top-k", "2"
    )
    assert code == 0, err
    doc = json.loads(out)
    assert doc["model"] == "tiny" and doc["precision"] == "fp32" and doc["device"]
    (result,) = doc["results"]
    assert result["input"] == str(photo)
    preds = result["predictions"]
    assert len(preds) == 2 and preds[0]["score"] >= preds[1]["score"]
    assert {p["label"] for p in preds} <= {"cat", "dog", "fish"}


def test_classify_npy_batch_matches_reference(capsys, repo, tmp_path):
    from experts.networks.reference import forward
    from kernels.reference import softmax

    x = np.random.default_rng(0).standard_normal((3, 3, 16, 16)).astype(np.float32)
    path = tmp_path / "batch.npy"
    np.save(path, x)
    code, out, err = run(capsys, "classify", str(path), "--model", "tiny", "--json")
    assert code == 0, err
    results = json.loads(out)["results"]
    assert [r["input"] for r in results] == [f"{path}[{i}]" for i in range(3)]
    want = softmax(forward(parse_layers(TINY["layers"]), Repository(repo).load("tiny").weights, x))
    for r, probs in zip(results, want, strict=True):
        top = r["predictions"][0]
        assert top["index"] == int(np.argmax(probs))
        assert top["score"] == pytest.approx(float(probs.max()), rel=1e-4)


def test_classify_builtin_with_random_weights(capsys, photo, tmp_path, monkeypatch):
    monkeypatch.setenv("MOE_MODEL_REPOSITORY", str(tmp_path))
    code, out, err = run(capsys, "classify", str(photo), "--model", "alexnet", "--random-weights")
    assert code == 0, err
    assert "model alexnet" in out


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


def test_unknown_precision_is_a_usage_error(capsys, repo):
    with pytest.raises(SystemExit) as exc:
        main(["classify", "x.jpg", "--precision", "fp64"])
    assert exc.value.code == 2
    assert "unknown precision fp64" in capsys.readouterr().err
    for flag in ("--layer-precisions", "--layer-precision"):  # the older spelling too
        with pytest.raises(SystemExit) as exc:
            main(["eval", "--model", "tiny", flag, "fc=int4"])
        assert exc.value.code == 2
        assert "layer precision for 'fc': unknown precision 'int4'" in capsys.readouterr().err


def test_corrupt_weights_are_reported(capsys, repo, photo):
    weights = repo / "tiny" / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    code, _, err = run(capsys, "classify", str(photo), "--model", "tiny")
    assert "weights" in one_line_error(code, err)


def test_import_onnx_round_trip(capsys, repo, tmp_path, photo):
    pytest.importorskip("onnx", reason="onnx (test extra) is not installed")
    from experts.onnx.export import to_onnx

    meta = {**TINY, "name": "exported"}
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


def test_bench_json_rows_with_onnxruntime(capsys, repo):
    pytest.importorskip("onnxruntime", reason="onnxruntime (test extra) is not installed")
    code, out, err = run(
        capsys,
        "bench",
        "--model",
        "tiny",
        "--batch",
        "1,3",
        "--iterations",
        "3",
        "--warmup",
        "1",
        "--compare",
        "onnxruntime",
        "--json",
    )
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [(r["runtime"], r["batch"]) for r in rows] == [
        ("moe-alexnet", 1),
        ("onnxruntime", 1),
        ("moe-alexnet", 3),
        ("onnxruntime", 3),
    ]
    keys = {
        "runtime",
        "model",
        "precision",
        "batch",
        "images_per_s",
        "latency_ms_p50",
        "latency_ms_p90",
        "weight_bytes",
        "peak_rss_bytes",
        "device",
    }
    for row in rows:
        assert keys <= set(row)
        assert row["images_per_s"] > 0 and row["latency_ms_p90"] >= row["latency_ms_p50"]
    assert rows[0]["weight_bytes"] >= 4 * sum(v.size for v in random_weights(TINY, 0).values())
    assert isinstance(rows[0]["int8_dot_products"], bool)  # which int8 path the device has
    want = rows[0]["images_per_s"] / rows[1]["images_per_s"]
    assert rows[1]["ratio"] == pytest.approx(want, abs=1e-3)  # rounded to 3 decimals


# -- mixtures of experts and eval --------------------------------------------------------


@pytest.fixture
def moe_repo(repo: Path) -> Path:
    from tests.test_mixture import SMALL

    Repository(repo).save("small-moe", SMALL, random_weights(SMALL, seed=2))
    return repo


def test_classify_mixture_reports_experts(capsys, moe_repo, tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.random.default_rng(0).standard_normal((2, 3, 12, 12)).astype(np.float32))
    code, out, err = run(
        capsys, "classify", str(path), "--model", "small-moe", "--k", "3", "--json"
    )
    assert code == 0, err
    for result in json.loads(out)["results"]:
        experts = result["experts"]
        assert len(experts) == 3 and len({e["expert"] for e in experts}) == 3
        assert sum(e["weight"] for e in experts) == pytest.approx(1.0, abs=1e-5)


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


def test_bench_mixture_rows_per_k(capsys, moe_repo):
    argv = [
        "bench",
        "--model",
        "small-moe",
        "--batch",
        "4",
        "--experts",
        "1,2",
        "--iterations",
        "2",
        "--warmup",
        "1",
        "--json",
    ]
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["k"] for r in rows] == [1, 2]
    assert all(r["activation_bytes"] > 0 for r in rows)


def test_bench_profile_gives_each_layer_its_device_time(capsys, moe_repo):
    """--profile: one entry per layer in launch order, named as in model.json (with the
    mixture part in front), each with its kernels and a device time."""
    argv = [
        "bench",
        "--model",
        "tiny,small-moe",
        "--batch",
        "2",
        "--iterations",
        "2",
        "--warmup",
        "1",
        "--profile",
        "--json",
    ]
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    tiny, moe = [json.loads(line) for line in out.splitlines()]
    layers = [layer.name for layer in fuse_relu(parse_layers(TINY["layers"]))]
    assert [p["layer"] for p in tiny["profile"]] == ["input", *layers]
    assert all(p["ms"] >= 0 and p["kernels"] for p in tiny["profile"])
    assert tiny["profile"][1]["ms"] > 0  # conv1 takes measurable time
    assert sum(p["ms"] for p in tiny["profile"]) < tiny["latency_ms_p90"] * 2
    named = [p["layer"] for p in moe["profile"]]
    assert named[0] == "stem.input" and named[-1].startswith("head.")
    assert "route" in named and any(n.startswith("experts.") for n in named)
    code, out, _ = run(capsys, *argv[:-1])  # the text form: a line per layer under the row
    assert code == 0 and "device time per layer" in out and "\n    conv" in out


@pytest.fixture
def test_split(tmp_path, monkeypatch) -> Path:
    """A 40-image Fashion-MNIST test split of noise, and an empty model repository."""
    from tests.test_datasets import write_split

    data = tmp_path / "fashion"
    data.mkdir()
    rng = np.random.default_rng(0)
    write_split(
        data,
        "test",
        rng.integers(0, 256, (40, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, 40, dtype=np.uint8),
    )
    monkeypatch.setenv("MOE_MODEL_REPOSITORY", str(tmp_path))
    return data


def test_eval_reports_accuracy_and_routing(capsys, test_split):
    data = test_split
    code, out, err = run(
        capsys,
        "eval",
        "--model",
        "fashion-moe",
        "--random-weights",
        "--data-dir",
        str(data),
        "--batch",
        "16",
        "--json",
    )
    assert code == 0, err
    (result,) = [json.loads(line) for line in out.splitlines()]
    assert result["images"] == 40 and 0 <= result["top1"] <= result["top5"] <= 1
    assert sum(result["routing_share"]) == pytest.approx(1.0)
    assert len(result["expert_top1"]) == 4 and 0 < result["mean_gate_weight"] <= 1
    assert result["agreement_with_first"] == 1.0


def test_eval_without_dataset_is_one_line(capsys, tmp_path):
    code, _, err = run(
        capsys,
        "eval",
        "--model",
        "fashion-alexnet",
        "--random-weights",
        "--data-dir",
        str(tmp_path / "nowhere"),
    )
    assert "dataset-fashion-mnist" in one_line_error(code, err)


def test_bench_on_dataset_images_reports_the_experts_used(capsys, tmp_path, test_split):
    data = test_split
    code, out, err = run(
        capsys,
        "bench",
        "--model",
        "fashion-moe",
        "--random-weights",
        "--dataset",
        "fashion-mnist",
        "--data-dir",
        str(data),
        "--batch",
        "8",
        "--iterations",
        "4",
        "--warmup",
        "0",
        "--json",
    )
    assert code == 0, err
    (row,) = [json.loads(line) for line in out.splitlines()]
    assert row["inputs"] == "fashion-mnist" and 1.0 <= row["experts_per_batch"] <= 4.0
    code, _, err = run(
        capsys,
        "bench",
        "--model",
        "fashion-moe",
        "--random-weights",
        "--dataset",
        "fashion-mnist",
        "--data-dir",
        str(data),
        "--batch",
        "41",
    )
    assert "fewer than batch 41" in one_line_error(code, err)
    missing = str(tmp_path / "none")
    code, _, err = run(
        capsys,
        "bench",
        "--model",
        "fashion-moe",
        "--random-weights",
        "--dataset",
        "fashion-mnist",
        "--data-dir",
        missing,
    )
    assert "does not exist" in one_line_error(code, err)


def test_bench_times_several_models_together(capsys, moe_repo):
    """Rows of one batch size come out per model and k, in the order asked."""
    argv = [
        "bench",
        "--model",
        "tiny,small-moe",
        "--batch",
        "2,3",
        "--experts",
        "1,2",
        "--iterations",
        "4",
        "--rounds",
        "2",
        "--warmup",
        "1",
        "--json",
    ]
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [(r["model"], r["batch"], r.get("k")) for r in rows] == [
        ("tiny", 2, None),
        ("small-moe", 2, 1),
        ("small-moe", 2, 2),
        ("tiny", 3, None),
        ("small-moe", 3, 1),
        ("small-moe", 3, 2),
    ]
    assert all(r["images_per_s"] > 0 for r in rows)
