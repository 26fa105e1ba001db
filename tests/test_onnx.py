"""ONNX import and export: layers and weights come through unchanged, the re-exported
network computes what the original computes in onnxruntime, and unsupported graphs
fail with a message naming the node."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from experts.onnx.export import to_onnx  # noqa: E402
from experts.onnx.importer import OnnxImportError, import_onnx  # noqa: E402
from experts.networks.reference import forward  # noqa: E402
from experts.model.spec import expected_params, parse_layers  # noqa: E402

RNG = np.random.default_rng(20240607)


def rand(*shape: int) -> np.ndarray:
    return (RNG.standard_normal(shape) * 0.5).astype(np.float32)


class Net:
    """A chain of ONNX nodes: each `add` feeds the previous output plus constants."""

    def __init__(self, in_shape: tuple[Any, ...] = ("N", 4, 15, 15)) -> None:
        self.in_shape = in_shape
        self.nodes: list[onnx.NodeProto] = []
        self.inits: dict[str, np.ndarray] = {}
        self.x = "x"

    def add(self, op: str, name: str, *consts: np.ndarray | None, **attrs: Any) -> Net:
        extra = attrs.pop("extra_outputs", [])
        base = f"{name or op}_{len(self.nodes)}"  # tensors stay distinct for unnamed nodes
        inputs = [self.x]
        for i, value in enumerate(consts):
            key = f"{base}_c{i}" if value is not None else ""
            if value is not None:
                self.inits[key] = value
            inputs.append(key)
        self.x = f"{base}_out"
        node = helper.make_node(op, inputs, [self.x, *extra], name=name, **attrs)
        self.nodes.append(node)
        return self

    def model(self, opset: int = 17) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes,
            "test",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(self.in_shape))],
            [helper.make_tensor_value_info(self.x, TensorProto.FLOAT, None)],
            initializer=[numpy_helper.from_array(v, k) for k, v in self.inits.items()],
        )
        opsets = [helper.make_opsetid("", opset)]
        ir = helper.find_min_ir_version_for(opsets)
        return helper.make_model(graph, opset_imports=opsets, ir_version=ir)


def run_ort(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # tiny graphs; the machine is shared
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def assert_same_in_ort(
    original: onnx.ModelProto,
    meta: dict[str, Any],
    weights: dict[str, np.ndarray],
    opset: int,
    batches: tuple[int, ...] = (1, 3),
) -> None:
    exported = to_onnx(meta, weights, opset)
    for n in batches:
        x = rand(n, *meta["input"]["shape"])
        want = run_ort(original, x)
        np.testing.assert_allclose(run_ort(exported, x), want, rtol=1e-5, atol=1e-7)


def check_weights(meta: dict[str, Any], weights: dict[str, np.ndarray]) -> None:
    layers = parse_layers(meta["layers"])
    want = expected_params(layers, meta["input"]["shape"])
    assert {k: v.shape for k, v in weights.items()} == want
    assert all(v.dtype == np.float32 for v in weights.values())


# -- import: the AlexNet shape in several opsets ---------------------------------------


def alexnet_like(opset: int, pool: str) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    w = {
        "conv1": rand(8, 2, 3, 3),
        "conv1b": rand(8),
        "conv2": rand(6, 8, 3, 3),
        "conv2b": rand(6),
        "fc1": rand(10, 24 if pool == "avg" else 6),
        "fc1b": rand(10),
        "fc2": rand(10, 5),
        "fc2b": rand(1, 5),
    }
    net = Net(("N", 4, 15, 15))
    net.add(
        "Conv",
        "conv1",
        w["conv1"],
        w["conv1b"],
        group=2,
        pads=[1, 1, 1, 1],
        strides=[2, 2],
        kernel_shape=[3, 3],
    )
    net.add("Relu", "relu1").add(
        "MaxPool", "pool1", kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1
    )
    net.add("LRN", "norm1", size=3, alpha=1e-3, beta=0.75, bias=2.0)
    net.add("Conv", "conv2", w["conv2"], w["conv2b"], pads=[1, 1, 1, 1]).add("Relu", "relu2")
    if pool == "avg":
        net.add("AveragePool", "pool2", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    else:
        net.add("GlobalAveragePool", "pool2")
    net.add("Flatten", "flatten", axis=1)
    net.add("Gemm", "fc1", w["fc1"], w["fc1b"], transB=1).add("Relu", "relu3")
    if opset < 12:
        net.add("Dropout", "drop", ratio=0.3)
    else:
        net.add("Dropout", "drop", np.array(0.3, np.float32))
    net.add("Gemm", "fc2", w["fc2"], w["fc2b"])  # transB=0: weight stored in x out
    net.add("Softmax", "prob", axis=1 if opset < 13 else -1)
    return net.model(opset), w


@pytest.mark.parametrize("pool", ["avg", "global"])
@pytest.mark.parametrize("opset", [11, 13, 17, 21])
def test_import_alexnet_like(opset: int, pool: str) -> None:
    model, w = alexnet_like(opset, pool)
    meta, weights = import_onnx(model, "tiny", labels=[f"c{i}" for i in range(5)])

    pool2 = (
        {
            "name": "pool2",
            "op": "avgpool",
            "kernel": 3,
            "stride": 2,
            "padding": 1,
            "count_include_pad": False,
        }
        if pool == "avg"
        else {"name": "pool2", "op": "adaptive_avgpool", "output_size": 1}
    )
    assert meta["layers"] == [
        {
            "name": "conv1",
            "op": "conv",
            "out_channels": 8,
            "kernel": 3,
            "stride": 2,
            "padding": 1,
            "groups": 2,
            "relu": True,
        },
        {"name": "pool1", "op": "maxpool", "kernel": 3, "stride": 2, "ceil_mode": True},
        {"name": "norm1", "op": "lrn", "size": 3, "alpha": 0.001, "k": 2.0},
        {"name": "conv2", "op": "conv", "out_channels": 6, "kernel": 3, "padding": 1, "relu": True},
        pool2,
        {"name": "flatten", "op": "flatten"},
        {"name": "fc1", "op": "linear", "out_features": 10, "relu": True},
        {"name": "drop", "op": "dropout", "ratio": 0.3},
        {"name": "fc2", "op": "linear", "out_features": 5},
        {"name": "prob", "op": "softmax"},
    ]
    assert meta["input"] == {
        "shape": [4, 15, 15],
        "layout": "NCHW",
        "color": "L",
        "resize": None,
        "mean": [0.5],
        "std": [0.5],
    }
    assert meta["labels"] == ["c0", "c1", "c2", "c3", "c4"]
    assert meta["format"] == 1 and meta["name"] == "tiny"
    check_weights(meta, weights)
    np.testing.assert_array_equal(weights["conv1.weight"], w["conv1"])
    np.testing.assert_array_equal(weights["fc1.weight"], w["fc1"])
    np.testing.assert_array_equal(weights["fc2.weight"], w["fc2"].T)
    np.testing.assert_array_equal(weights["fc2.bias"], w["fc2b"][0])
    assert_same_in_ort(model, meta, weights, opset)


@pytest.mark.parametrize("opset", [13, 17])
def test_import_matmul_add(opset: int) -> None:
    w = {"c": rand(4, 3, 3, 3), "a": rand(64, 7), "ab": rand(7), "b": rand(7, 5)}
    net = Net(("N", 3, 6, 6)).add("Conv", "c", w["c"]).add("Relu", "c_relu")
    net.add("Identity", "same").add("Flatten", "flat").add("MatMul", "fc_a", w["a"])
    bias = helper.make_node("Constant", [], ["bias"], value=numpy_helper.from_array(w["ab"]))
    net.nodes.append(bias)
    net.nodes.append(helper.make_node("Add", [net.x, "bias"], ["added"], name="fc_a_bias"))
    net.x = "added"
    net.add("Relu", "fc_a_relu").add("MatMul", "fc_b", w["b"])
    model = net.model(opset)
    meta, weights = import_onnx(model, "mm")
    assert meta["layers"] == [
        {"name": "c", "op": "conv", "out_channels": 4, "kernel": 3, "relu": True, "bias": False},
        {"name": "flat", "op": "flatten"},
        {"name": "fc_a", "op": "linear", "out_features": 7, "relu": True},
        {"name": "fc_b", "op": "linear", "out_features": 5, "bias": False},
    ]
    assert meta["input"]["color"] == "RGB" and meta["input"]["mean"] == [0.485, 0.456, 0.406]
    assert "labels" not in meta
    check_weights(meta, weights)
    np.testing.assert_array_equal(weights["fc_a.weight"], w["a"].T)
    np.testing.assert_array_equal(weights["fc_a.bias"], w["ab"])
    assert_same_in_ort(model, meta, weights, opset)


@pytest.mark.parametrize(
    ("target", "batches"), [([0, -1], (1, 3)), ([-1, 12], (1, 3)), ([1, -1], (1,))]
)
def test_import_reshape_flatten(target: list[int], batches: tuple[int, ...]) -> None:
    net = Net(("N", 2, 5, 5)).add("Conv", "conv", rand(3, 2, 3, 3), rand(3))
    net.add("MaxPool", "pool", kernel_shape=[2, 2])  # strides default to 1 in ONNX
    net.add("Reshape", "reshape", np.array(target, np.int64))
    net.add("Gemm", "fc", rand(4, 12), rand(4), transB=1)
    model = net.model(15)
    meta, weights = import_onnx(model, "r")
    assert [(layer["name"], layer["op"]) for layer in meta["layers"]] == [
        ("conv", "conv"),
        ("pool", "maxpool"),
        ("reshape", "flatten"),
        ("fc", "linear"),
    ]
    assert meta["layers"][1]["stride"] == 1
    check_weights(meta, weights)
    assert_same_in_ort(model, meta, weights, 15, batches)


def test_generated_and_sanitised_names() -> None:
    net = Net(("N", 1, 8, 8))
    net.add("Conv", "", rand(2, 1, 3, 3)).add("Relu", "")
    net.add("MaxPool", "", kernel_shape=[2, 2], strides=[2, 2])
    net.add("Conv", "/features/features.3/Conv", rand(2, 2, 2, 2)).add("Relu", "")
    net.add("Flatten", "").add("Gemm", "fc", rand(3, 8), transB=1)
    net.add("Gemm", "fc", rand(3, 3), transB=1).add("Softmax", "")
    meta, _ = import_onnx(net.model(13), "names")
    assert [layer["name"] for layer in meta["layers"]] == [
        "conv1",
        "pool1",
        "features_features_3_Conv",
        "flatten",
        "fc",
        "fc_2",
        "prob",
    ]


def test_file_path_labels_and_input_defaults(tmp_path) -> None:
    net = Net(("N", 1, 64, 64)).add("Conv", "conv", rand(2, 1, 5, 5), strides=[4, 4])
    net.add("GlobalAveragePool", "gap").add("Flatten", "flat").add("Gemm", "fc", rand(2, 3))
    path = tmp_path / "tiny.onnx"
    onnx.save(net.model(17), str(path))
    meta, _ = import_onnx(path, "tiny", labels=["a", "b", "c"])
    assert meta["description"] == "imported from tiny.onnx"
    assert meta["input"]["resize"] == 73 and meta["input"]["color"] == "L"
    assert meta["labels"] == ["a", "b", "c"]
    with pytest.raises(OnnxImportError, match="2 labels given, the network has 3 outputs"):
        import_onnx(path, "tiny", labels=["a", "b"])
    with pytest.raises(OnnxImportError, match="cannot read ONNX model"):
        import_onnx(tmp_path / "missing.onnx", "x")


def test_float16_weights_become_float32() -> None:
    w = rand(2, 4, 3, 3).astype(np.float16)
    meta, weights = import_onnx(Net().add("Conv", "conv", w).model(17), "h")
    assert weights["conv.weight"].dtype == np.float32
    np.testing.assert_array_equal(weights["conv.weight"], w.astype(np.float32))
    check_weights(meta, weights)


# -- export: hand-written specs --------------------------------------------------------

HAND_LAYERS = [
    {
        "name": "conv1",
        "op": "conv",
        "out_channels": 6,
        "kernel": [3, 2],
        "stride": [1, 2],
        "padding": [1, 0],
        "groups": 3,
        "relu": True,
    },
    {"name": "norm1", "op": "lrn", "size": 4, "alpha": 1e-3, "beta": 0.75, "k": 2.0},
    # ceil mode whose last row window would start in the padding: exported with a trim
    {"name": "pool1", "op": "maxpool", "kernel": 2, "stride": 2, "padding": 1, "ceil_mode": True},
    {"name": "pool2", "op": "avgpool", "kernel": 2, "stride": 1, "count_include_pad": False},
    {"name": "relu2", "op": "relu"},
    {"name": "pool3", "op": "adaptive_avgpool", "output_size": 3},  # 5x5 -> 3x3
    {"name": "flatten", "op": "flatten"},
    {"name": "fc1", "op": "linear", "out_features": 7, "relu": True},
    {"name": "drop1", "op": "dropout"},
    {"name": "fc2", "op": "linear", "out_features": 4, "bias": False},
    {"name": "prob", "op": "softmax"},
]


def hand_model(layers: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    meta = {"name": "hand", "input": {"shape": [3, 11, 21]}, "layers": layers}
    params = expected_params(parse_layers(layers), meta["input"]["shape"])
    return meta, {key: rand(*shape) for key, shape in params.items()}


@pytest.mark.parametrize("opset", [11, 17, 21])
def test_export_then_import_keeps_layers(opset: int) -> None:
    meta, weights = hand_model(HAND_LAYERS)
    model = to_onnx(meta, weights, opset)
    ops = [node.op_type for node in model.graph.node]
    assert ops.count("Slice") == 1 and ops.count("MatMul") == 2 and "Dropout" not in ops
    back, back_weights = import_onnx(model, "hand")
    without_dropout = [layer for layer in HAND_LAYERS if layer["op"] != "dropout"]
    assert parse_layers(back["layers"]) == parse_layers(without_dropout)
    assert back["input"]["shape"] == [3, 11, 21]
    assert back_weights.keys() == weights.keys()
    for key, value in weights.items():
        np.testing.assert_array_equal(back_weights[key], value)


@pytest.mark.parametrize("opset", [11, 17, 21])
def test_export_matches_numpy_reference(opset: int) -> None:
    # onnxruntime's LRN takes odd sizes only; everything else as in HAND_LAYERS
    layers = [dict(layer, size=5) if layer["op"] == "lrn" else layer for layer in HAND_LAYERS]
    layers[3] = dict(layers[3], count_include_pad=True, padding=1, ceil_mode=True)
    meta, weights = hand_model(layers)
    x = rand(2, 3, 11, 21)
    got = run_ort(to_onnx(meta, weights, opset), x)
    np.testing.assert_allclose(got, forward(parse_layers(layers), weights, x), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    ("size", "out", "op"),
    [(6, 1, "GlobalAveragePool"), (6, 3, "AveragePool"), (5, 3, "MatMul"), (4, 6, "MatMul")],
)
def test_export_adaptive_pool(size: int, out: int, op: str) -> None:
    layers = [{"name": "pool", "op": "adaptive_avgpool", "output_size": out}]
    meta = {"input": {"shape": [2, size, size]}, "layers": layers}
    model = to_onnx(meta, {})
    assert model.graph.node[0].op_type == op
    x = rand(3, 2, size, size)
    got = run_ort(model, x).reshape(3, -1)
    np.testing.assert_allclose(got, forward(parse_layers(layers), {}, x), rtol=1e-5, atol=1e-7)


def test_export_rejects_wrong_weights() -> None:
    meta, weights = hand_model(HAND_LAYERS)
    weights["fc1.weight"] = weights["fc1.weight"][:, :-1]
    with pytest.raises(ValueError, match="fc1.weight"):
        to_onnx(meta, weights)
    with pytest.raises(ValueError, match="opset 9"):
        to_onnx(meta, weights, opset=9)


# -- what the importer refuses ---------------------------------------------------------


def _conv(**attrs: Any) -> onnx.ModelProto:
    return Net().add("Conv", "conv1", rand(2, 4, 3, 3), **attrs).model()


def _branch() -> onnx.ModelProto:
    net = Net().add("Conv", "conv1", rand(4, 4, 1, 1))
    conv = net.x
    net.add("Relu", "relu1")
    net.nodes.append(helper.make_node("Add", [net.x, conv], ["y"], name="sum"))
    net.x = "y"
    return net.model()


def _square() -> onnx.ModelProto:
    net = Net().add("Relu", "relu1")
    net.nodes.append(helper.make_node("Mul", [net.x, net.x], ["y"], name="square"))
    net.x = "y"
    return net.model()


def _side_node() -> onnx.ModelProto:
    net = Net().add("Relu", "relu1")
    net.nodes.append(helper.make_node("Shape", ["relu1_0_c0"], ["s"], name="shape_of_w"))
    net.inits["relu1_0_c0"] = rand(2)
    return net.model()


def _symbolic_hw() -> onnx.ModelProto:
    return Net(("N", 4, "H", "W")).add("Relu", "relu1").model()


ERRORS = {
    "unsupported op": (
        lambda: Net().add("Conv", "conv1", rand(2, 4, 3, 3)).add("Sigmoid", "act").model(),
        ["'act'", "Sigmoid", "not supported"],
    ),
    "batchnorm": (
        lambda: Net().add("BatchNormalization", "bn", *(rand(4) for _ in range(4))).model(),
        ["'bn'", "BatchNormalization", "not supported"],
    ),
    "asymmetric pads": (lambda: _conv(pads=[0, 0, 1, 1]), ["'conv1'", "Conv", "pads"]),
    "dilation": (lambda: _conv(dilations=[2, 2]), ["'conv1'", "Conv", "dilations=[2, 2]"]),
    "auto_pad same": (lambda: _conv(auto_pad="SAME_UPPER"), ["'conv1'", "Conv", "SAME_UPPER"]),
    "groups": (lambda: _conv(group=3), ["'conv1'", "Conv", "group=3"]),
    "int weights": (
        lambda: Net().add("Conv", "conv1", np.ones((2, 4, 3, 3), np.int8)).model(),
        ["'conv1'", "Conv", "int8"],
    ),
    "opset 9": (lambda: Net().add("Relu", "relu1").model(opset=9), ["opset 9", "11 to 21"]),
    "symbolic H W": (_symbolic_hw, ["symbolic H", "fixed image size"]),
    "branch": (_branch, ["'conv1'", "Conv", "'relu1'", "'sum'", "single chain"]),
    "maxpool indices": (
        lambda: Net().add("MaxPool", "pool1", kernel_shape=[2, 2], extra_outputs=["idx"]).model(),
        ["'pool1'", "MaxPool", "indices"],
    ),
    "storage order": (
        lambda: Net().add("MaxPool", "pool1", kernel_shape=[2, 2], storage_order=1).model(),
        ["'pool1'", "MaxPool", "storage_order=1"],
    ),
    "lrn on 2-D": (
        lambda: Net().add("Flatten", "flat").add("LRN", "norm", size=3).model(),
        ["'norm'", "LRN", "4-D"],
    ),
    "gemm transA": (
        lambda: (
            Net(("N", 4, 1, 1))
            .add("Flatten", "flat")
            .add("Gemm", "fc", rand(4, 3), transA=1)
            .model()
        ),
        ["'fc'", "Gemm", "transA"],
    ),
    "reshape not flat": (
        lambda: Net().add("Reshape", "rs", np.array([-1, 15], np.int64)).model(),
        ["'rs'", "Reshape", "[-1, 15]", "flattening"],
    ),
    "softmax on 4-D": (
        lambda: Net().add("Softmax", "sm", axis=1).model(),
        ["'sm'", "Softmax", "N x 4 x 15 x 15"],
    ),
    "slice that cuts": (
        lambda: Net().add("Slice", "cut", *(np.array([v], np.int64) for v in (0, 7, 2))).model(),
        ["'cut'", "Slice", "ends=[7]", "whole"],
    ),
    "reshape to another batch": (
        lambda: Net((1, 4, 15, 15)).add("Reshape", "rs", np.array([2, -1], np.int64)).model(),
        ["'rs'", "Reshape", "[2, -1]", "the batch is 1"],
    ),
    "two computed inputs": (_square, ["'square'", "Mul", "2 computed inputs"]),
    "side computation": (_side_node, ["'shape_of_w'", "Shape", "not on the chain"]),
    "bare add": (
        lambda: Net().add("Add", "plus", rand(4, 15, 15)).model(),
        ["'plus'", "Add", "MatMul"],
    ),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_import_errors_name_the_node(case: str) -> None:
    build, fragments = ERRORS[case]
    with pytest.raises(OnnxImportError) as info:
        import_onnx(build(), "bad")
    assert isinstance(info.value, ValueError)
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)
