"""Whole networks (experts/networks/network.py) on OpenCL against onnxruntime (an
independent runtime) and against the numpy twins, on the same weights and inputs;
fp16, int16 and int8 alexnet against onnxruntime's fp32."""

from __future__ import annotations

import numpy as np
import pytest

from experts.model.architectures import alexnet, caffenet, random_weights
from experts.model.spec import fuse_relu, parse_layers
from experts.networks.calibrate import calibrate
from experts.networks.network import Network
from experts.networks.reference import forward

ort = pytest.importorskip("onnxruntime", reason="onnxruntime (test extra) is not installed")
pytest.importorskip("onnx", reason="onnx (test extra) is not installed")


def run_onnxruntime(meta: dict, weights: dict, x: np.ndarray) -> np.ndarray:
    from experts.onnx.export import to_onnx

    session = ort.InferenceSession(
        to_onnx(meta, weights).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    return session.run(None, {"input": x})[0]


@pytest.fixture(scope="module", params=["alexnet", "caffenet"])
def built(request, device):
    meta = {"alexnet": alexnet, "caffenet": caffenet}[request.param]()
    weights = random_weights(meta, seed=7)
    layers = parse_layers(meta["layers"])
    return meta, weights, Network(device, layers, meta["input"]["shape"], weights)


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_matches_onnxruntime(built, batch):
    meta, weights, net = built
    x = np.random.default_rng(batch).standard_normal((batch, *meta["input"]["shape"]), np.float32)
    ours = net.run(x).scores
    theirs = run_onnxruntime(meta, weights, x)
    assert ours.shape == theirs.shape == (batch, 1000)
    # Max error relative to the largest logit (or probability) of the batch.
    rel = np.abs(ours - theirs).max() / np.abs(theirs).max()
    assert rel <= 1e-4, rel
    for o, t in zip(ours, theirs, strict=True):
        assert set(np.argsort(-o)[:5]) == set(np.argsort(-t)[:5])


def test_batches_are_independent(built):
    """An image gives the same scores alone and inside a batch (no cross-talk through
    reused buffers, tiles or padding columns)."""
    meta, _, net = built
    x = np.random.default_rng(0).standard_normal((7, *meta["input"]["shape"]), np.float32)
    together = net.run(x).scores
    alone = np.concatenate([net.run(x[i : i + 1]).scores for i in range(7)])
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-6 * np.abs(alone).max())


def test_passes_queued_back_to_back_keep_their_own_outputs(built):
    """`submit` queues a pass without waiting; three passes queued on the same buffers
    (one batch size) and collected out of order each give what `run` gives."""
    meta, _, net = built
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal((3, *meta["input"]["shape"]), np.float32) for _ in range(3)]
    expected = [net.run(x).scores for x in xs]
    waits = [net.submit(x) for x in xs]
    got = [waits[i]().scores for i in (2, 0, 1)]
    for out, i in zip(got, (2, 0, 1), strict=True):
        np.testing.assert_array_equal(out, expected[i])


def test_images_read_in_place_at_any_address(built):
    """A CPU device's first kernel reads the caller's array itself (`Device.feed`): a
    read-only array two bytes off alignment, as the v2 binary extension's bytes give,
    scores as the same images copied."""
    meta, _, net = built
    x = np.random.default_rng(2).standard_normal((3, *meta["input"]["shape"]), np.float32)
    odd = np.frombuffer(b"\0\0" + x.tobytes(), np.float32, count=x.size, offset=2)
    odd = odd.reshape(x.shape)
    assert not odd.flags.writeable and odd.ctypes.data % 4 == 2
    np.testing.assert_array_equal(net.run(odd).scores, net.run(x.copy()).scores)


# Every op the spec knows, in one small network.
SMALL = [
    {"name": "c1", "op": "conv", "out_channels": 6, "kernel": 3, "padding": 1},
    {"name": "r1", "op": "relu"},
    {"name": "p1", "op": "maxpool", "kernel": 3, "stride": 2, "ceil_mode": True},
    {"name": "n1", "op": "lrn", "size": 3, "alpha": 1e-2, "beta": 0.75, "k": 2.0},
    {"name": "c2", "op": "conv", "out_channels": 8, "kernel": 3, "groups": 2, "relu": True},
    {"name": "a1", "op": "avgpool", "kernel": 2, "stride": 1, "padding": 1},
    {"name": "g1", "op": "adaptive_avgpool", "output_size": [3, 2]},
    {"name": "f", "op": "flatten"},
    {"name": "d", "op": "dropout"},
    {"name": "fc1", "op": "linear", "out_features": 11},
    {"name": "r2", "op": "relu"},
    {"name": "fc2", "op": "linear", "out_features": 5, "bias": False},
    {"name": "sm", "op": "softmax"},
]


def test_small_network_matches_numpy_twins(device):
    """Every op the spec knows, in one small network, against the numpy reference. The
    adaptive pool before the flatten writes the flatten's order: the flatten's layout
    swap never runs (only the input's, where there are channels to swap)."""
    for channels in (4, 1):  # one channel: NCHW is already CNHW, no layout swap
        meta = {"input": {"shape": [channels, 15, 13]}, "layers": SMALL}
        weights = random_weights(meta, seed=3)
        net = Network(device, parse_layers(SMALL), (channels, 15, 13), weights)
        x = np.random.default_rng(1).standard_normal((5, channels, 15, 13), np.float32)
        want = forward(parse_layers(SMALL), weights, x)
        np.testing.assert_allclose(net.run(x).scores, want, rtol=1e-4, atol=1e-6)
        ran = [item[0].function_name for item in net.plan(5).tape.items]
        assert ran.count("swap_outer") == (channels > 1)


def test_a_plan_writes_its_output_into_a_given_sink(device):
    """`plan(n, sink=buffer)` (a mixture's head: its scores beside the routing, read
    in one copy): the last layer writes there, the same scores; a network whose layers
    all pass their input through has nothing to write it and refuses."""
    meta = {"input": {"shape": [4, 15, 13]}, "layers": SMALL}
    weights = random_weights(meta, seed=3)
    net = Network(device, parse_layers(SMALL), (4, 15, 13), weights)
    x = np.random.default_rng(2).standard_normal((3, 4, 15, 13), np.float32)
    classes = net.output_shape[0]
    sink = device.alloc(4 * (3 * classes + 5))
    plan = net.plan(3, sink=sink)
    assert plan.output is sink and plan is not net.plan(3)
    source, _ = device.feed(plan.input, x)
    plan.tape.replay(source)
    got = device.read(sink, (3 * classes + 5,))[: 3 * classes].reshape(3, classes)
    np.testing.assert_array_equal(got, net.run(x).scores)
    idle = Network(device, parse_layers([{"name": "f", "op": "flatten"}]), (6,), {})
    with pytest.raises(ValueError, match="no layer runs to write the sink"):
        idle.plan(2, sink=device.alloc(48))


def test_networks_of_one_part_share_their_buffers(device):
    """Networks with the same part name (here two weight sets, at two precisions) run
    in the device's shared buffers at every batch size: passes of both queued back to
    back at mixed batch sizes, collected out of order, each give what the network gives
    alone; a larger batch replaces the buffers, and smaller plans are made again on
    them."""
    shape = (4, 15, 13)
    meta = {"input": {"shape": list(shape)}, "layers": SMALL}
    nets = [
        Network(
            device,
            parse_layers(SMALL),
            shape,
            random_weights(meta, seed=s),
            name="t.share",
            precision=p,
        )
        for s, p in ((1, "fp32"), (2, "fp16"))
    ]
    a, b = nets
    small = a.plan(2)
    assert b.plan(2).ping is small.ping and b.plan(2).pong is small.pong
    rng = np.random.default_rng(4)
    passes = [
        (nets[i % 2], rng.standard_normal((n, *shape), np.float32))
        for i, n in enumerate((2, 9, 1, 2, 9))
    ]
    expected = [
        forward(parse_layers(SMALL), random_weights(meta, seed=1 + i % 2), x)
        for i, (_, x) in enumerate(passes)
    ]
    waits = [net.submit(x) for net, x in passes]
    for i in (4, 0, 3, 1, 2):
        np.testing.assert_allclose(waits[i]().scores, expected[i], rtol=2e-3, atol=1e-4)
    assert a.plan(9).ping is b.plan(9).ping
    grown = a.plan(2)
    assert grown is not small and grown.ping is a.plan(9).ping
    assert a.planned_bytes() == a.plan(9).activation_bytes
    assert device.shared_bytes >= 2 * a.plan(9).ping.size


def test_fuse_relu_folds_into_conv_and_drops_dropout():
    layers = parse_layers(
        [
            {"name": "c", "op": "conv", "out_channels": 4, "kernel": 3, "relu": False},
            {"name": "r", "op": "relu"},
            {"name": "d", "op": "dropout"},
            {"name": "p", "op": "maxpool", "kernel": 2},
            {"name": "r2", "op": "relu"},
        ]
    )
    fused = fuse_relu(layers)
    assert [layer.name for layer in fused] == ["c", "p", "r2"]
    assert fused[0].relu is True


def test_batch_sizes_are_powers_of_two_and_the_maximum(built):
    _, _, net = built
    assert net.batch_sizes(1) == [1]
    assert net.batch_sizes(8) == [1, 2, 4, 8]
    assert net.batch_sizes(12) == [1, 2, 4, 8, 12]


def test_wrong_input_shape_is_refused(built):
    meta, _, net = built
    with pytest.raises(ValueError, match="expected input"):
        net.run(np.zeros((1, 3, 10, 10), np.float32))


def test_buffers_are_reused_per_batch_size(built):
    meta, _, net = built
    x = np.zeros((2, *meta["input"]["shape"]), np.float32)
    net.run(x)
    plan = net.plan(2)
    net.run(x)
    assert net.plan(2) is plan


def test_local_sizes_do_not_change_with_the_batch(built, device):
    """On a CPU every launch names its local size, the same at every batch size:
    PoCL compiles a kernel once per local size, so a batch-dependent one would mean
    compiles for every new batch size (see Device.work_group)."""
    if not device.is_cpu:
        pytest.skip("local sizes are left to the driver on non-CPU devices")
    _, _, net = built
    seen = {}
    for n in (1, 3, 8):
        items = net.plan(n).tape.items
        # one kernel is left to PoCL on purpose (see WinogradConv2d.__call__)
        items = [i for i in items if i[0].function_name != "winograd_output"]
        assert all(local is not None for _, _, local, _ in items)
        assert all(
            g % size == 0
            for _, glob, local, _ in items
            for g, size in zip(glob, local, strict=True)
        )
        seen[n] = {(kernel.function_name, local) for kernel, _, local, _ in items}
    assert seen[3] == seen[8]
    # one image needs no layout change (NCHW and CNHW coincide): no swap_outer at all
    assert seen[1] == {k for k in seen[3] if k[0] != "swap_outer"}


@pytest.mark.parametrize("arch", [alexnet, caffenet])
def test_fp16_weights_against_onnxruntime_fp32(device, arch):
    """fp16 keeps weights in half (11 significant bits, relative rounding <= 2^-11 per
    weight): the logits stay within nmse 1e-5 of onnxruntime's fp32 (measured 1.9e-6 on
    alexnet, whose Winograd transforms amplify the rounding; 7e-7 with conv2 direct)
    with the same top-1. Weight memory halves."""
    meta = arch()
    weights = random_weights(meta, seed=7)
    x = np.random.default_rng(5).standard_normal((4, *meta["input"]["shape"]), np.float32)
    layers = parse_layers(meta["layers"])
    fp32 = Network(device, layers, meta["input"]["shape"], weights)
    fp16 = Network(device, layers, meta["input"]["shape"], weights, precision="fp16")
    ours, theirs = fp16.run(x).scores, run_onnxruntime(meta, weights, x)
    assert np.mean((ours - theirs) ** 2) / np.mean(theirs**2) < 1e-5
    assert (ours.argmax(axis=1) == theirs.argmax(axis=1)).all()
    assert fp16.weight_bytes < 0.51 * fp32.weight_bytes


@pytest.fixture(scope="module")
def alexnet_calibrated():
    """alexnet on seeded weights, calibrated on 8 inputs other than the test's."""
    meta = alexnet()
    weights = random_weights(meta, seed=7)
    sample = np.random.default_rng(11).standard_normal((8, 3, 224, 224), np.float32)
    return meta, weights, calibrate(meta, weights, [sample[:4], sample[4:]])


# Limits on the logits' nmse against onnxruntime fp32 (the issue's starting points),
# measured 2.5e-6 (int16) and 6e-4 (int8): rounding each weight to 1 part in 2^15 or
# 2^7 of its row's largest, each layer's input to its calibrated range / 2^16 or
# / 2^8, and clipping test inputs that stray past the 8 calibration images' range
# (which dominates at int16). Weight memory measured 0.500x and 0.250x of fp32.
QUANT_NMSE = {"int16": 1e-4, "int8": 1e-2}


@pytest.mark.parametrize("precision", ["int16", "int8"])
def test_quantized_alexnet_against_onnxruntime_fp32(device, alexnet_calibrated, precision):
    meta, weights, calibration = alexnet_calibrated
    x = np.random.default_rng(5).standard_normal((4, 3, 224, 224), np.float32)
    net = Network(
        device,
        parse_layers(meta["layers"]),
        meta["input"]["shape"],
        weights,
        precision=precision,
        ranges=calibration.ranges,
    )
    ours, theirs = net.run(x).scores, run_onnxruntime(meta, weights, x)
    err = np.mean((ours - theirs) ** 2) / np.mean(theirs**2)
    assert err < QUANT_NMSE[precision], err
    # Same top-1 wherever onnxruntime's own margin is clear of the quantisation noise.
    top2 = np.sort(theirs, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 6 * np.sqrt(err * np.mean(theirs**2))
    assert (ours.argmax(axis=1) == theirs.argmax(axis=1))[clear].all()
    fp32_bytes = sum(w.nbytes for w in weights.values())
    limit = {"int16": 0.51, "int8": 0.26}[precision]  # one byte a weight + scales
    assert net.weight_bytes < limit * fp32_bytes, net.weight_bytes / fp32_bytes
