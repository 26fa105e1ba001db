"""onnxruntime beside our rows in `bench --compare onnxruntime`: the same network and
weights exported to ONNX, run float32, or for int8 rows quantised statically by
onnxruntime itself (QDQ, per-channel int8 weights, uint8 activations, min/max ranges)
on the same calibration images our int8 used: the reference an int8 engine on a CPU
is measured against."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from experts.data.fashion_mnist import calibration_subset, load_fashion_mnist, to_model_input
from experts.networks.calibrate import DEFAULT_SAMPLES, synthetic_images

QUANTISED = ("int8", "int8g")  # rows compared with onnxruntime's static int8
STATIC_INT8 = "int8 (onnxruntime static QDQ, per-channel)"


def calibration_images(model: Any, data_dir: Path | None = None) -> tuple[np.ndarray, str]:
    """The images our int8 took its ranges from, as far as they can be had again: the
    Fashion-MNIST training subset calibration.json names, else the synthetic set that a
    model without calibration.json uses (with what was used, for the row)."""
    cal = model.calibration
    if cal is not None and cal.source.startswith("fashion-mnist"):
        images, _ = load_fashion_mnist("train", data_dir)
        subset = calibration_subset(images, cal.samples)
        return to_model_input(subset, model.meta["input"]), cal.source
    x = synthetic_images(model.meta, DEFAULT_SAMPLES)
    ours = "synthetic" if cal is None or cal.source.startswith("synthetic") else cal.source
    return x, "synthetic" if ours == "synthetic" else f"synthetic (ours: {ours})"


def session(model: Any, precision: str = "fp32", data_dir: Path | None = None) -> Any:
    """An onnxruntime session of `model` at fp32, or (QUANTISED precisions) quantised
    statically by onnxruntime; its `calibration` attribute says on what."""
    import onnxruntime as ort  # the onnx extra

    from experts.onnx.export import to_onnx

    options = ort.SessionOptions()
    options.intra_op_num_threads = os.cpu_count() or 1
    proto = to_onnx(model.meta, model.weights).SerializeToString()
    note = ""
    if precision in QUANTISED:
        images, note = calibration_images(model, data_dir)
        proto = _static_int8(proto, images)
    s = ort.InferenceSession(proto, options, providers=["CPUExecutionProvider"])
    s.calibration = note  # what onnxruntime's int8 was calibrated on ("": fp32)
    s.weight_bytes = _initializer_bytes(proto)
    return s


def _initializer_bytes(proto: bytes) -> int:
    import onnx
    from onnx import numpy_helper

    graph = onnx.load_from_string(proto).graph
    return sum(numpy_helper.to_array(t).nbytes for t in graph.initializer)


def _static_int8(proto: bytes, images: np.ndarray) -> bytes:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self, name: str) -> None:
            self.batches = iter([{name: images[i : i + 16]} for i in range(0, len(images), 16)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    name = onnx.load_from_string(proto).graph.input[0].name
    with tempfile.TemporaryDirectory() as tmp:
        raw, src, dst = (Path(tmp) / f for f in ("raw.onnx", "fp32.onnx", "int8.onnx"))
        raw.write_bytes(proto)
        quant_pre_process(raw, src)  # shape inference and graph optimisation, as ORT asks
        quantize_static(
            src,
            dst,
            Reader(name),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
        return dst.read_bytes()
