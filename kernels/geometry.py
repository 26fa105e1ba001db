"""Output sizes of sliding windows, shared by the kernels, their numpy twins and the
model specs (pure Python: importing it needs no OpenCL)."""

from __future__ import annotations


def conv_out(size: int, kernel: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - kernel) // stride + 1


def pool_out(size: int, kernel: int, stride: int, pad: int, ceil_mode: bool) -> int:
    """Pooled length; in ceil mode the last window must start inside the input or its
    left padding, else it is dropped (torch, ONNX and Caffe agree for AlexNet's pads)."""
    span = size + 2 * pad - kernel
    if span < 0:
        return 0
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return out
