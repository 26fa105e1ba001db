"""Quantised copies of a model's weights on disk (experts/model/quantized.py): networks
built from a copy answer exactly as networks quantised from the float32 weights, and
never read those; a copy made for other layer precisions is passed over; a stale or
broken copy is refused in one line naming the file (and the layer)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy

from experts.model.model import Model, ModelError
from experts.model.quantized import PRECISIONS, CopyWeights, copy_name, make_copy
from experts.model.repository import Repository
from experts.model.tensors import TensorFile
from experts.networks.build import build_network, store_for, weights_for
from experts.networks.calibrate import calibrate, synthetic_images
from kernels import bitgroups
from tests.helpers import make_repo


@pytest.fixture(scope="module")
def copies(tmp_path_factory) -> Path:
    """tiny and tiny-moe, calibrated on synthetic images, with a copy at every precision."""
    root = make_repo(tmp_path_factory.mktemp("copies"), mixture=True)
    repo = Repository(root)
    for name in ("tiny", "tiny-moe"):
        model = repo.load(name)
        ranges = calibrate(model.meta, model.weights, [synthetic_images(model.meta, 16)])
        repo.write_file(name, "calibration.json", ranges.to_json(model.meta).encode())
        model = repo.load(name)
        for precision in PRECISIONS:
            repo.write_file(name, copy_name(precision), make_copy(model, precision))
    return root


def in_memory(model: Model) -> Model:
    """The same model with its float32 weights in a dict: no copy to read."""
    return Model(model.meta, dict(model.weights), None, model.calibration)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("name", ["tiny", "tiny-moe"])
def test_networks_from_copies_answer_as_from_float_weights(device, copies, name, precision):
    model = Repository(copies).load(name)
    assert isinstance(weights_for(model, precision), CopyWeights)
    x = np.random.default_rng(5).random((3, *model.input_shape), np.float32)
    got = build_network(model, device, precision).run(x).scores
    assert model.weights.read_keys == []  # the float32 weights were never read
    want = build_network(in_memory(Repository(copies).load(name)), device, precision)
    np.testing.assert_array_equal(got, want.run(x).scores)


def test_a_store_builds_int8_from_int16s_copy(device, copies):
    model = Repository(copies).load("tiny-moe")
    store, floats = store_for(["int16", "int8"]), store_for(["int16", "int8"])
    assert weights_for(model, "int8", store=store).path.name == copy_name("int16")
    x = np.random.default_rng(6).random((4, *model.input_shape), np.float32)
    reference = in_memory(Repository(copies).load("tiny-moe"))
    for precision in ("int8", "int16"):
        got = build_network(model, device, precision, store=store).run(x).scores
        want = build_network(reference, device, precision, store=floats).run(x).scores
        np.testing.assert_array_equal(got, want)
    assert model.weights.read_keys == [] and len(store) == len(floats)


def test_other_layer_precisions_read_the_float_weights(copies):
    model = Repository(copies).load("tiny")
    assert weights_for(model, "int8", {"conv1": "fp32"}) is model.weights
    assert weights_for(model, "fp32") is model.weights  # fp32 is the weights file


def test_copies_hold_less(copies):
    folder = Path(copies) / "tiny"
    floats = (folder / "weights.safetensors").stat().st_size
    assert (folder / copy_name("int8")).stat().st_size < 0.5 * floats


# -- refused: stale copies, and broken ones -------------------------------------------------


@pytest.fixture
def own(copies, tmp_path) -> Repository:
    """A repository of the test's own, copied from `copies`."""
    import shutil

    shutil.copytree(copies, tmp_path / "repo")
    return Repository(tmp_path / "repo")


def _build(device, repo: Repository, precision: str = "int8") -> None:
    build_network(repo.load("tiny"), device, precision)


def test_a_copy_of_other_float_weights_is_refused(device, own):
    path = own.root / "tiny" / "weights.safetensors"
    weights = safetensors.numpy.load_file(path)
    weights["fc.bias"] = weights["fc.bias"] + 1
    safetensors.numpy.save_file(weights, path)
    with pytest.raises(ModelError, match=r"weights\.int8\.safetensors is stale: weights\.safe"):
        _build(device, own)


def test_a_copy_with_other_ranges_is_refused(device, own):
    model = own.load("tiny")
    model.calibration.ranges["fc"] = (-5.0, 5.0)
    own.write_file("tiny", "calibration.json", model.calibration.to_json(model.meta).encode())
    with pytest.raises(ModelError, match=r"layer fc: input range .* disagrees with calibration"):
        _build(device, own)


def _rewrite(repo: Repository, precision: str, change) -> None:
    """The copy's tensors changed by `change` (a function of the dict), metadata kept."""
    path = repo.root / "tiny" / copy_name(precision)
    metadata = TensorFile(path).metadata
    tensors = safetensors.numpy.load_file(path)
    change(tensors)
    safetensors.numpy.save_file(tensors, path, metadata)


def _packed_fc(tensors: dict[str, np.ndarray]) -> None:
    """The fc layer's int8 rows packed (bitgroups), as a copy holds packed layers."""
    packed = bitgroups.encode(tensors.pop("fc.weight"), 8)
    tensors |= {
        "fc.weight_stream": packed.stream,
        "fc.weight_offsets": packed.offsets,
        "fc.weight_widths": packed.widths,
    }


def _widen(tensors):
    _packed_fc(tensors)
    tensors["fc.weight_widths"][0, 0] = 9


def _truncate(tensors):
    _packed_fc(tensors)
    tensors["fc.weight_stream"] = tensors["fc.weight_stream"][:-1]


def _shift(tensors):
    _packed_fc(tensors)
    tensors["fc.weight_widths"][1, 0] = (tensors["fc.weight_widths"][1, 0] % 8) + 1


@pytest.mark.parametrize(
    "precision,change,message",
    [
        ("int8", lambda t: t["conv1.weight"].__setitem__((0, 0, 0, 0), -128), "beyond \\+-127"),
        ("int8", lambda t: t.__setitem__("fc.weight", t["fc.weight"][:, :-1]), "fc.weight is"),
        ("int8", lambda t: t.pop("conv1.weight_scale"), "missing tensor conv1.weight_scale"),
        ("int8", lambda t: t.__setitem__("conv1.extra", np.zeros(1)), "unexpected tensors"),
        ("fp16", lambda t: t["fc.weight"].__setitem__((0, 0), np.inf), "non-finite"),
        ("int8g", _widen, "a group of width 9 in a 8-bit precision"),
        ("int8g", _truncate, "truncated"),
        ("int8g", _shift, "row offsets disagree|truncated"),
    ],
    ids=["range", "shape", "missing", "extra", "inf", "width", "truncated", "offsets"],
)
def test_broken_copies_are_refused_naming_file_and_layer(device, own, precision, change, message):
    _rewrite(own, precision, change)
    with pytest.raises(ModelError, match=f"{copy_name(precision)}.*{message}") as err:
        build_network(own.load("tiny"), device, precision)
    assert "\n" not in str(err.value) and "moe-alexnet quantize --model tiny" in str(err.value)


def test_a_well_packed_copy_runs(device, own):
    """The packing the refusals above break, intact: int8's answers."""
    _rewrite(own, "int8g", _packed_fc)
    model = own.load("tiny")
    x = np.random.default_rng(7).random((2, *model.input_shape), np.float32)
    got = build_network(model, device, "int8g")
    assert got.layer_bits()["fc"][1] != 8  # the fc layer runs packed
    want = build_network(in_memory(own.load("tiny")), device, "int8").run(x).scores
    np.testing.assert_array_equal(got.run(x).scores, want)


def test_a_truncated_copy_file_is_refused(device, own):
    path = own.root / "tiny" / copy_name("int8")
    path.write_bytes(path.read_bytes()[:-9])
    with pytest.raises(ModelError, match=r"weights\.int8\.safetensors: corrupt quantised copy"):
        _build(device, own)


def test_quantised_copies_need_a_calibration(tmp_path):
    repo = Repository(make_repo(tmp_path))
    model = repo.load("tiny")
    with pytest.raises(ModelError, match="no calibration.json, which int8 needs"):
        make_copy(model, "int8")
    assert make_copy(model, "fp16")  # fp16 needs none
    with pytest.raises(ModelError, match="fp32 has no quantised copy"):
        make_copy(model, "fp32")
