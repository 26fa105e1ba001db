"""Quantised networks end to end on small models (experts/networks/network.py and
build.py): a per-layer precision override, int8 against the quantised numpy twins
layer by layer, a quantised layer without a calibrated range refused, and the integer
pipeline of convolutions against the float hand-offs (a first layer reading the images
as they come among them, float pools writing a linear layer's quantised input)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from experts.layers import SpecError
from experts.model.architectures import random_weights
from experts.model.model import Model, validate
from experts.model.spec import parse_layers
from experts.networks.build import build_network
from experts.networks.calibrate import calibrate
from experts.networks.network import Network
from kernels.ops.launcher import PerBatch
from kernels.runtime import Device
from tests.kernels.helpers import skip_unless_dot4


def test_per_layer_override_runs_that_layer_at_its_precision(device, tiny_model, sample):
    meta, weights = tiny_model
    model = Model(validate(meta, weights, "tiny"), weights)
    model.calibration = calibrate(meta, weights, [sample])
    net = build_network(model, device, "int8", {"fc": "fp32"})
    kinds = {s.name: s.op.precision.name for s in net.steps if hasattr(s.op, "precision")}
    assert kinds == {"conv1": "int8", "fc": "fp32"}
    fp32 = build_network(model, device, "fp32").run(sample).scores
    mixed = net.run(sample).scores
    err = np.mean((mixed - fp32) ** 2) / np.mean(fp32**2)
    assert 0 < err < 1e-3  # quantised conv1 (not exact), close


def test_quantized_network_matches_the_twins_layer_by_layer(device, tiny_model, sample):
    """Run conv1 -> pool -> fc at int8 and check the whole against the quantised twins
    (kernels/reference.py), which share the quantisation arithmetic."""
    from kernels import reference as ref
    from kernels.precision import PRECISIONS

    meta, weights = tiny_model
    cal = calibrate(meta, weights, [sample])
    layers = parse_layers(meta["layers"])
    net = Network(
        device, layers, meta["input"]["shape"], weights, precision="int8", ranges=cal.ranges
    )
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


def test_quantized_layer_without_range_is_refused(device, tiny_model):
    meta, weights = tiny_model
    with pytest.raises(SpecError, match="conv1: int8 needs the calibrated range"):
        Network(
            device, parse_layers(meta["layers"]), meta["input"]["shape"], weights, precision="int8"
        )


def _int8_networks(device, meta: dict, sample: np.ndarray, seed: int) -> tuple:
    """`meta` on seeded random weights at int8, calibrated on `sample`: the network, the
    same without the integer pipeline (float hand-offs), and (its layers, weights)."""
    weights = random_weights(meta, seed=seed)
    ranges = calibrate(meta, weights, [sample]).ranges
    layers, shape = parse_layers(meta["layers"]), meta["input"]["shape"]
    nets = [
        Network(device, layers, shape, weights, precision="int8", ranges=ranges, **pipeline)
        for pipeline in ({}, {"integer_pipeline": False})
    ]
    return nets[0], nets[1], (layers, weights)


def test_int8_convolutions_write_each_others_input_bytes(device, tiny_meta, sample):
    """The integer pipeline of convolutions (Conv2d.feeds): on VNNI conv1 writes the
    bytes that pool1 pools and conv2 reads, conv2 writes conv3's, and conv3 the fully
    connected layer's through pool3 (in the flatten's order: the flatten does not run);
    the scores are the float hand-offs' bit for bit (the same bytes: quantising is
    monotonic, so it commutes with the max)."""
    skip_unless_dot4(device, True)
    conv = {"op": "conv", "kernel": 3, "padding": 1, "relu": True}
    pool = {"op": "maxpool", "kernel": 2, "stride": 2}
    meta = dict(
        tiny_meta,
        layers=[
            # Stride 2 and 32 channels in: implicit GEMMs (DOT4), not the direct kernel.
            {"name": "conv1", **conv, "out_channels": 32, "stride": 2},
            {"name": "pool1", **pool},
            {"name": "conv2", **conv, "out_channels": 32},
            {"name": "conv3", **conv, "out_channels": 24},
            {"name": "pool3", **pool},
            {"name": "flat", "op": "flatten"},
            {"name": "fc", "op": "linear", "out_features": 3},
        ],
    )
    net, floats, (layers, weights) = _int8_networks(device, meta, sample, seed=2)
    names = {net.steps[i].name: net.steps[j].name for i, j in net.requant_links().items()}
    assert names == {"conv1": "conv2", "conv2": "conv3", "conv3": "fc"}
    ran = [item[0].function_name for item in net.plan(len(sample)).tape.items]
    assert ran[0] == "swap_outer" and ran[-2:] == ["pool2d_bytes", "linear"]  # input, pool3, fc
    for x in (sample, sample[:1]):
        np.testing.assert_array_equal(net.run(x).scores, floats.run(x).scores)
    # A layer built per batch size (the tuner's winners differ) links as its form does.
    step = net.steps[2]
    build = replace(net.build_for(layers[2]), params={"algorithm": "implicit", "nv": 1})
    narrow = layers[2].launcher(build, step.in_shape, weights)
    net.steps[2] = replace(step, op=PerBatch({1: step.op, 8: narrow}))
    net._plans.clear()
    assert net.requant_links(1) == net.requant_links(8) == {0: 2, 2: 3, 3: 6}
    for x in (sample, sample[:1]):
        np.testing.assert_array_equal(net.run(x).scores, floats.run(x).scores)


@pytest.mark.parametrize("precision", ["int8", "int16"])
@pytest.mark.parametrize("pool", ["adaptive_avgpool", "maxpool"])
def test_float_pools_write_the_next_linear_layers_quantised_input(
    device, tiny_meta, sample, precision, pool
):
    """A float pool before the flatten (a mixture's gate: its average pool) writes the
    quantised input of the fully connected layer after it (pool.cl's QUANT_OUT; bytes
    q + 128 on VNNI), which then runs no quantising pass: the scores are the float
    hand-offs' bit for bit (the same rounding of the same floats)."""
    window = {"output_size": 2} if pool == "adaptive_avgpool" else {"kernel": 2, "stride": 2}
    meta = dict(
        tiny_meta,
        layers=[
            {"name": "conv", "op": "conv", "kernel": 3, "out_channels": 5, "relu": True},
            {"name": "pool", "op": pool, **window},
            {"name": "flat", "op": "flatten"},
            {"name": "fc", "op": "linear", "out_features": 3},
        ],
    )
    weights = random_weights(meta, seed=3)
    ranges = calibrate(meta, weights, [sample]).ranges
    layers, shape = parse_layers(meta["layers"]), meta["input"]["shape"]
    kw = {"precision": "fp32", "layer_precisions": {"fc": precision}, "ranges": ranges}
    net = Network(device, layers, shape, weights, **kw)
    floats = Network(device, layers, shape, weights, integer_pipeline=False, **kw)
    for x in (sample, sample[:1]):
        ran = [item[0].function_name for item in net.plan(len(x)).tape.items]
        assert "quantize_input" not in ran and ran[-1] == "linear"
        np.testing.assert_array_equal(net.run(x).scores, floats.run(x).scores)
    assert "quantize_input" in [i[0].function_name for i in floats.plan(len(sample)).tape.items]


def test_tuning_times_a_layer_writing_what_the_network_has_it_write(device, tiny_meta, sample):
    """experts/networks/tune.py's cases: a layer that hands its consumer bytes is timed
    launching with the consumer's requantiser (a candidate that cannot write them, as
    floats), the last convolution and the fully connected layer writing floats; the
    tuner's timings then take that path and still check against the twin in floats."""
    from experts.networks.tune import tuning_cases
    from kernels.tuner import Bench, tune

    skip_unless_dot4(device, True)
    conv = {"op": "conv", "kernel": 3, "padding": 1, "relu": True}
    meta = dict(
        tiny_meta,
        layers=[
            {"name": "conv1", **conv, "out_channels": 32, "stride": 2},
            {"name": "conv2", **conv, "out_channels": 32},
            {"name": "flat", "op": "flatten"},
            {"name": "fc", "op": "linear", "out_features": 3},
        ],
    )
    net, _, (_, weights) = _int8_networks(device, meta, sample, seed=3)
    cases, _ = tuning_cases(net, weights, [2])
    by_label = {c.label.split()[0]: c for c in cases}
    assert set(by_label) == {"conv1", "conv2", "fc"}
    first = by_label["conv1"]
    assert first.requant(first.build({})) and first.requant(first.build({"algorithm": "implicit"}))
    assert first.requant(first.build({"algorithm": "im2col"})) == ()  # floats only
    assert by_label["conv2"].requant(by_label["conv2"].build({})) == ()
    profiling = Device(device.info.index, profile=True)
    profiled, _, _ = _int8_networks(profiling, meta, sample, seed=3)
    case = next(c for c in tuning_cases(profiled, weights, [2])[0] if c.label.startswith("conv1"))
    bench = Bench(profiling, case)
    form, calls = bench.launcher({}), []
    launch = form.launch
    form.launch = lambda *args, **kwargs: calls.append(kwargs) or launch(*args, **kwargs)
    bench.run(form)
    bench.run(form, check=True)
    assert calls[0]["requant"] and not calls[1].get("requant")
    out = tune(profiling, case, budget_s=0.3)
    assert out.wrong == 0 and out.tried >= 3


def test_int8_first_layer_reads_the_images_as_they_come(device, tiny_meta, sample):
    """A first convolution with a stride of 4 along rows runs int8's direct kernel on
    VNNI, whose pad pass reads the images in their own [N][C][H][W] layout: a batch
    runs without the layout swap, writes conv2's bytes through the max pool, and each
    image scores as it does alone (where the two layouts coincide) and as the float
    hand-offs give it."""
    skip_unless_dot4(device, True)
    meta = dict(
        tiny_meta,
        layers=[
            {
                "name": "conv1",
                "op": "conv",
                "out_channels": 24,
                "kernel": 5,
                "stride": 4,
                "padding": 2,
                "relu": True,
            },  # fmt: skip
            {"name": "pool1", "op": "maxpool", "kernel": 2, "stride": 1},
            # K = 24 * 9 > DIRECT_MAX_K: the implicit GEMM, which takes conv1's bytes
            {"name": "conv2", "op": "conv", "out_channels": 8, "kernel": 3, "padding": 1},
            {"name": "flat", "op": "flatten"},
            {"name": "fc", "op": "linear", "out_features": 3},
        ],
    )
    net, floats, _ = _int8_networks(device, meta, sample, seed=5)
    conv1 = net.steps[0].op
    assert conv1.direct and conv1.rows4 and conv1.reads_nchw
    assert net.requant_links() == {0: 2}
    first = [item[0].function_name for item in net.plan(len(sample)).tape.items][:2]
    assert first == ["pad2d_direct", "conv_direct"]  # no swap_outer of the input first
    batch = net.run(sample).scores
    alone = np.concatenate([net.run(x[None]).scores for x in sample])
    np.testing.assert_array_equal(batch, alone)
    np.testing.assert_array_equal(batch, floats.run(sample).scores)
