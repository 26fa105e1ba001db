"""The tuning database (kernels/tuning.py) and the tuner (kernels/tuner.py) on PoCL:
round trips, fallbacks, refusals, candidates checked against the numpy twins at every
precision, a wrong candidate rejected, a layer in two forms by batch bucket."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kernels import ops
from kernels import reference as ref
from kernels.ops.launcher import Launcher, PerBatch
from kernels.precision import PRECISIONS
from kernels.runtime import Device
from kernels.tuner import Case, tolerance, tune
from kernels.tuning import (
    SPACE,
    Tuning,
    TuningError,
    bucket,
    conv_shape,
    device_key,
    file_name,
    load,
    parse,
    read,
)

KEY = device_key("Portable Computing Language", "pthread-test", "3.1")
UNPACKED = ["fp32", "fp16", "int16", "int8"]


@pytest.fixture(scope="module")
def profiling():
    from kernels.devices import DeviceError

    try:
        return Device(profile=True)
    except DeviceError as exc:
        pytest.skip(f"no OpenCL device: {exc}")


def test_buckets():
    assert [bucket(n) for n in (1, 2, 8, 9, 64, 65, 256, 1000)] == [1, 8, 8, 64, 64, 256, 256, 256]


def test_round_trip_is_atomic(tmp_path: Path):
    t = Tuning(KEY)
    t.put("linear", "10x20", "int8", 8, {"ro": 2, "rb": 4, "form": "rows"}, 0.123456)
    t.put("conv", "3x9x9/4x3x3x3/s1x1/p1x1/g1", "fp32", 1, {"algorithm": "implicit"}, 1.0)
    path = t.save(tmp_path)
    assert path.name == file_name(KEY) and path.name.startswith("portable-computing-language")
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary left behind
    assert path.stat().st_mode & 0o777 == 0o644
    back = read(path, KEY)
    assert back.entries == t.entries
    assert back.lookup("linear", "10x20", "int8", 5) == (
        {"ro": 2, "rb": 4, "form": "rows"},
        "tuned",
    )


def test_fallbacks():
    t = Tuning(KEY, vendor={"linear": {"form": "split"}})
    t.put("linear", "4096x9216", "fp32", 1, {"ro": 2}, 1.0)
    t.put("linear", "4096x9216", "fp32", 64, {"ro": 8}, 1.0)
    t.put("linear", "1000x4096", "fp32", 1, {"ro": 1}, 1.0)
    assert t.lookup("linear", "4096x9216", "fp32", 1) == ({"ro": 2}, "tuned")
    # nearest bucket of the same layer: 256 is nearer 64 than 1
    assert t.lookup("linear", "4096x9216", "fp32", 200) == ({"ro": 8}, "nearest bucket")
    # nearest shape of the same op and precision
    assert t.lookup("linear", "1024x4096", "fp32", 1) == ({"ro": 1}, "nearest shape")
    assert t.lookup("linear", "4096x4096", "fp32", 1) == ({"ro": 2}, "nearest shape")
    # nothing at this precision: the vendor's defaults, then the built-in choice
    assert t.lookup("linear", "10x10", "int8", 1) == ({"form": "split"}, "vendor")
    assert t.lookup("conv", "1x2x2/1x1x1x1/s1x1/p0x0/g1", "fp32", 1) == ({}, "built-in")


@pytest.mark.parametrize(
    "data, message",
    [
        ({"format": "other"}, "not a tuning database"),
        ({"format": "moe-alexnet-tuning/1", "device": {"platform": "x"}}, "no device"),
        (
            {"format": "moe-alexnet-tuning/1", "device": {**KEY, "device": "a GPU"}, "entries": {}},
            "tuned for a GPU",
        ),
        (
            {"format": "moe-alexnet-tuning/1", "device": KEY, "entries": {"linear|1x1|fp32|3": {}}},
            "bad entry key",
        ),
        (
            {
                "format": "moe-alexnet-tuning/1",
                "device": KEY,
                "entries": {"linear|1x1|fp32|1": {"params": {"ro": 3}, "ms": 1}},
            },
            "ro=3 is not in the space",
        ),
    ],
)
def test_refused_databases_name_the_file(data, message):
    with pytest.raises(TuningError, match=message) as info:
        parse(data, KEY, "/some/db.json")
    assert str(info.value).startswith("/some/db.json: ")


def test_a_corrupt_database_is_refused_in_one_line_and_left_out(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MOE_TUNING_DIR", str(tmp_path))
    monkeypatch.setenv("MOE_TUNING", "1")
    (tmp_path / file_name(KEY)).write_text("{not json")
    t = load(KEY)
    assert t.entries == {}
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(tmp_path) in err[0] and "left out" in err[0]


def _linear_case(rng, precision: str, n: int, o: int, i: int, device: Device) -> Case:
    p = PRECISIONS[precision]
    w = rng.standard_normal((o, i), np.float32) / np.sqrt(i)
    b = rng.standard_normal(o, np.float32)
    x = rng.uniform(-1, 1, (8, i)).astype(np.float32)

    def build(params):
        return ops.Linear(device, w, b, True, p, (-1.0, 1.0), params=params)

    want = ref.linear(x, w, b, True)
    return Case("linear", f"{o}x{i}", p, n, f"linear {o}x{i}", build, x, want)


def _conv_case(rng, precision: str, n: int, c: int, m: int, hw: int, k: int, device: Device):
    p = PRECISIONS[precision]
    w = rng.standard_normal((m, c, k, k), np.float32) / np.sqrt(c * k * k)
    b = rng.standard_normal(m, np.float32)
    x = rng.uniform(-1, 1, (8, c, hw, hw)).astype(np.float32)
    pad = (k // 2, k // 2)

    def build(params):
        return ops.conv2d(device, (c, hw, hw), w, b, (1, 1), pad, 1, True, p, (-1.0, 1.0),
                          params=params)  # fmt: skip

    want = ref.conv2d(x, w, b, 1, pad, 1, True)
    shape = conv_shape((c, hw, hw), w.shape, (1, 1), pad, 1)
    cnhw = np.ascontiguousarray(x.transpose(1, 0, 2, 3))
    return Case("conv", shape, p, n, "conv", build, cnhw, want.transpose(1, 0, 2, 3), 1)


def _check_kept(device: Device, case: Case, params: dict) -> None:
    """The winner, built afresh and run on the checked images, matches the twin."""
    form = case.build(params)
    x = device.upload(case.x)
    y = device.alloc(case.want.nbytes)
    scratch = device.alloc(max(form.scratch_bytes(case.checked), 4))
    form(case.checked, x, y, scratch)
    got = device.read(y, case.want.shape)
    peak = np.abs(case.want).max()
    assert np.abs(got - case.want).max() <= tolerance(case.precision) * peak


@pytest.mark.parametrize("precision", UNPACKED)
@pytest.mark.parametrize("n,o,i", [(1, 37, 45), (5, 20, 300)])
def test_tuned_linear_matches_the_twin(profiling, rng, precision, n, o, i):
    case = _linear_case(rng, precision, n, o, i, profiling)
    out = tune(profiling, case, budget_s=0.3)
    assert out.wrong == 0 and out.tried >= 3
    assert set(out.params) <= set(SPACE["linear"])
    _check_kept(profiling, case, out.params)


@pytest.mark.parametrize("precision", UNPACKED)
@pytest.mark.parametrize("n,c,m,hw,k", [(1, 5, 11, 7, 3), (3, 16, 9, 10, 5)])
def test_tuned_conv_matches_the_twin(profiling, rng, precision, n, c, m, hw, k):
    case = _conv_case(rng, precision, n, c, m, hw, k, profiling)
    out = tune(profiling, case, budget_s=0.3)
    assert out.wrong == 0
    assert out.tried >= 5  # the built-in choice and one per algorithm at least
    if PRECISIONS[precision].quantized or k == 5:
        assert out.failed >= 1  # Winograd refused: quantised, or 5x5 over few channels
    _check_kept(profiling, case, out.params)


class Corrupting(Launcher):
    """A launcher that adds 1 to its output when its params ask for the split form: the
    deliberately wrong candidate."""

    def __init__(self, inner: Launcher) -> None:
        self.inner, self.params = inner, None

    def effective(self, n):
        self.inner.params = self.params
        return self.inner.effective(n)

    def scratch_bytes(self, n):
        return self.inner.scratch_bytes(n)

    def __call__(self, n, x, y, scratch):
        self.inner.params = self.params
        self.inner(n, x, y, scratch)
        if self.params and self.params.get("form") == "split":
            cl_y = self.inner.device.read(y, (n, self.inner.o))
            import pyopencl as cl

            cl.enqueue_copy(self.inner.device.queue, y, cl_y + 1.0, is_blocking=True)


def test_a_wrong_candidate_is_rejected(profiling, rng):
    case = _linear_case(rng, "fp32", 2, 16, 64, profiling)
    inner = case.build
    case.build = lambda params: Corrupting(inner(params))
    out = tune(profiling, case, budget_s=1.0)
    assert out.wrong >= 1
    assert any("differs from the numpy twin" in e for e in out.errors)
    assert out.params.get("form") != "split"


def test_a_layer_in_two_forms_by_batch_bucket(device, rng, monkeypatch, tmp_path):
    c, m, hw = 8, 12, 9
    w = rng.standard_normal((m, c, 3, 3), np.float32)
    b = rng.standard_normal(m, np.float32)
    shape = conv_shape((c, hw, hw), w.shape, (1, 1), (1, 1), 1)
    t = Tuning(device.tuning.key)
    t.put("conv", shape, "fp32", 1, {"algorithm": "implicit", "nv": 1, "spread": 4}, 1.0)
    t.put("conv", shape, "fp32", 8, {"algorithm": "winograd", "nv": 2}, 1.0)
    monkeypatch.setattr(device, "tuning", t)  # device.tuning is read once per Device
    op = ops.conv2d(device, (c, hw, hw), w, b, (1, 1), (1, 1), 1, True)
    assert isinstance(op, PerBatch)
    assert type(op.form(1)).__name__ == "Conv2d" and op.form(1).implicit
    assert type(op.form(6)).__name__ == "WinogradConv2d"
    assert op.weight_bytes == op.form(1).weight_bytes + op.form(6).weight_bytes
    for n in (1, 6):
        x = rng.standard_normal((n, c, hw, hw), np.float32)
        xb = device.upload(np.ascontiguousarray(x.transpose(1, 0, 2, 3)))
        y = device.alloc(4 * n * m * hw * hw)
        op(n, xb, y, device.alloc(max(op.scratch_bytes(n), 4)))
        got = device.read(y, (m, n, hw, hw)).transpose(1, 0, 2, 3)
        np.testing.assert_allclose(got, ref.conv2d(x, w, b, 1, 1, 1, True), rtol=1e-3, atol=1e-3)
    # an entry this layer cannot run (a stale database): the built-in choice
    t.put("conv", shape, "int8", 1, {"algorithm": "winograd"}, 1.0)
    int8 = ops.conv2d(device, (c, hw, hw), w, b, (1, 1), (1, 1), 1, True, PRECISIONS["int8"],
                      (-3.0, 3.0))  # fmt: skip
    assert not isinstance(int8, PerBatch)


def test_a_bucket_on_the_built_in_algorithm_shares_the_tuned_form(device, rng, monkeypatch):
    """Buckets that all run Winograd, one by the built-in choice and one tuned to it
    with another panel width, build one layer (one copy of its weights), not two."""
    w = rng.standard_normal((12, 8, 3, 3), np.float32)
    shape = conv_shape((8, 9, 9), w.shape, (1, 1), (1, 1), 1)
    t = Tuning(device.tuning.key)
    t.put("conv", shape, "fp32", 1, {}, 1.0)
    t.put("conv", shape, "fp32", 8, {"algorithm": "winograd", "nv": 2}, 1.0)
    monkeypatch.setattr(device, "tuning", t)
    op = ops.conv2d(device, (8, 9, 9), w, None, (1, 1), (1, 1), 1, True)
    assert type(op).__name__ == "WinogradConv2d"
    assert op.effective(8)["nv"] == 2


def test_grouped_experts_tuned_to_another_algorithm_by_bucket(device, rng, monkeypatch):
    """A mixture's grouped layer is looked up by one expert's filters: tuned to the
    implicit GEMM at batch 8 and built in (Winograd) at batch 1, it runs in two forms,
    the implicit one with its tuned panel width, both under the layer's one key."""
    e, m, c, hw = 3, 8, 5, 6
    w = rng.standard_normal((e, m, c, 3, 3), np.float32)
    shape = conv_shape((c, hw, hw), w.shape, (1, 1), (1, 1), 1)
    assert shape.endswith("/e3") and f"/{m}x{c}x3x3/" in shape
    t = Tuning(device.tuning.key)
    t.put("conv", shape, "fp32", 1, {}, 1.0)
    t.put("conv", shape, "fp32", 8, {"algorithm": "implicit", "nv": 1, "spread": 2}, 1.0)
    monkeypatch.setattr(device, "tuning", t)
    seg = device.upload(np.array([0, 3, 5, 8], np.int32))
    op = ops.conv2d(device, (c, hw, hw), w, None, (1, 1), (1, 1), 1, True, segments=seg)
    assert isinstance(op, PerBatch)
    small, large = op.form(1), op.form(8)
    assert type(small).__name__ == "WinogradConv2d" and type(large).__name__ == "Conv2d"
    assert small.shape == large.shape == shape and large.effective(8)["nv"] == 1
    with pytest.raises(ValueError, match="grouped experts run Winograd or the implicit GEMM"):
        ops.conv2d(device, (c, hw, hw), w, None, (1, 1), (1, 1), 1, True, segments=seg,
                   params={"algorithm": "direct"})  # fmt: skip


def test_a_float_layer_of_a_model_with_a_store_is_tuned(device, rng, monkeypatch):
    """A model held at int16 and int8 has a weight store; its fp32 network reads none
    of it and runs what the tuning chose (the implicit GEMM, not the built-in
    Winograd); int16 keeps the built-in choice, whose layout the store holds."""
    w = rng.standard_normal((12, 8, 3, 3), np.float32)
    shape = conv_shape((8, 9, 9), w.shape, (1, 1), (1, 1), 1)
    t = Tuning(device.tuning.key)
    for p in ("fp32", "int16"):
        t.put("conv", shape, p, 1, {"algorithm": "im2col"}, 1.0)
    monkeypatch.setattr(device, "tuning", t)
    store = ops.PlaneStore()
    fp32 = ops.conv2d(device, (8, 9, 9), w, None, (1, 1), (1, 1), 1, True, store=store, key="c")
    assert type(fp32).__name__ == "Conv2d" and not fp32.implicit and not fp32.direct
    int16 = ops.conv2d(device, (8, 9, 9), w, None, (1, 1), (1, 1), 1, True, PRECISIONS["int16"],
                       (-3.0, 3.0), store=store, key="c")  # fmt: skip
    assert type(int16).__name__ == "Conv2d" and int16.implicit


def test_tuning_off_reads_nothing(tmp_path, monkeypatch):
    t = Tuning(KEY)
    t.put("linear", "1x1", "fp32", 1, {"ro": 2}, 0.5)
    t.save(tmp_path)
    monkeypatch.setenv("MOE_TUNING_DIR", str(tmp_path))
    monkeypatch.setenv("MOE_TUNING", "1")
    assert load(KEY).entries == t.entries
    monkeypatch.setenv("MOE_TUNING", "0")
    assert load(KEY).entries == {}


def test_database_written_by_put_parses(tmp_path):
    t = Tuning(KEY)
    t.put("linear", "1x1", "fp32", 1, {}, 0.5)
    with pytest.raises(TuningError):
        t.put("linear", "1x1", "fp32", 1, {"algorithm": "winograd"}, 0.5)
    assert parse(json.loads(json.dumps(t.to_json())), KEY, "x").entries == t.entries


def test_candidates_start_with_the_fixed_set_each_kernel_once():
    import random
    from itertools import islice

    from kernels.tuner import candidates, key

    found = list(islice(candidates("conv", random.Random(0)), 2000))
    assert len(found) == 2000  # sampled lazily: the space holds tens of thousands
    algorithms = ("winograd", "direct", "implicit", "lanes", "im2col", "tiled")
    assert found[:7] == [{}] + [{"algorithm": a} for a in algorithms]
    assert all(set(p) == {"algorithm"} for p in found if p.get("algorithm") == "lanes")
    # irrelevant parameters are dropped, so every candidate is a distinct kernel
    assert len({key("conv", p) for p in found}) == len(found)
    assert all(set(p) <= {"algorithm", "nv"} for p in found if p.get("algorithm") == "direct")
    # a small space runs dry once every kernel in it has been drawn
    rows = [p for p in candidates("linear", random.Random(1)) if p.get("form") == "rows"]
    space = SPACE["linear"]  # every (ro, rb, kb), and {"form": "rows"}
    assert len(rows) == 1 + len(space["ro"]) * len(space["rb"]) * len(space["kb"])


def test_excluded_kinds_are_no_longer_drawn():
    import random

    from kernels.tuner import candidates

    excluded: set = set()
    drawn = candidates("conv", random.Random(0), excluded)
    fixed = [next(drawn) for _ in range(7)]  # {} and one per algorithm
    assert [p.get("algorithm") for p in fixed[1:]][-1] == "tiled"
    excluded.update({"tiled", "im2col"})  # grown while drawing, as tune does
    later = list(drawn)  # the rest of the space: a few dozen kernels
    assert later and not {p["algorithm"] for p in later} & excluded
    # every kind excluded: the fixed set, then the search ends
    everything = set(SPACE["conv"]["algorithm"])
    assert list(candidates("conv", random.Random(0), everything)) == fixed


def test_a_kind_far_slower_in_the_fixed_set_is_not_sampled(profiling, rng, monkeypatch):
    from kernels import tuner

    case = _linear_case(rng, "fp32", 2, 16, 64, profiling)
    timed: list[dict] = []

    def fake_time(bench, params, repeats=tuner.REPEATS):
        timed.append(params)
        form = bench.launcher(params).effective(case.batch)["form"]
        return 10.0 if form == "split" else 1.0 + 0.01 * len(timed)

    monkeypatch.setattr(tuner.Bench, "time", fake_time)
    out = tune(profiling, case, budget_s=1.0)
    assert out.hopeless == ["split"]
    fixed = 1 + len(SPACE["linear"]["form"])
    assert sum(p.get("form") == "split" for p in timed[fixed:]) == 0
    assert len(timed) > fixed + 2  # the other kinds were still sampled


def test_the_shipped_databases_parse():
    from importlib import resources

    shipped = [
        p
        for p in resources.files("kernels").joinpath("tuned").iterdir()
        if p.name.endswith(".json")
    ]
    assert shipped, "kernels/tuned/ ships no database"
    for item in shipped:
        db = read(Path(str(item)), None)
        assert db.entries and item.name == file_name(db.key)


def test_vendor_defaults_by_a_word_of_the_platform(tmp_path):
    from kernels.tuning import vendor_defaults

    (tmp_path / "vendor-nvidia.json").write_text(json.dumps({"linear": {"form": "split"}}))
    assert vendor_defaults("NVIDIA CUDA", tmp_path) == {"linear": {"form": "split"}}
    assert vendor_defaults("Portable Computing Language", tmp_path) == {}
    (tmp_path / "vendor-nvidia.json").write_text(json.dumps({"linear": {"form": "odd"}}))
    with pytest.raises(TuningError, match="form='odd' is not in the space"):
        vendor_defaults("NVIDIA CUDA", tmp_path)
