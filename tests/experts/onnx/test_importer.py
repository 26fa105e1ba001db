"""ONNX import (experts/onnx/importer.py): layers and weights come through unchanged from
graphs of several opsets, the re-exported network computes what the original computes
in onnxruntime, and unsupported graphs fail with a message naming the node."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import helper, numpy_helper  # noqa: E402

from experts.onnx.importer import OnnxImportError, import_onnx  # noqa: E402
from tests.experts.onnx.graphs import Net, assert_same_in_ort, check_weights, rand  # noqa: E402

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
