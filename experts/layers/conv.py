"""conv: 2-D convolution with bias, groups and a fused ReLU (AlexNet's conv1-conv5)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from experts.layers.base import Build, Layer, Pair, Shape, SpecError, Weights, positive, register
from kernels import ops
from kernels import reference as ref
from kernels.geometry import conv_out


def _from_onnx(imp: Any, node: Any) -> None:
    attrs = imp.attrs(node, {"auto_pad", "dilations", "group", "kernel_shape", "pads", "strides"})
    imp.expect_data_first(node)
    imp.need_rank(node, 3)
    weight = imp.weight(node, 1, "weight", ndim=4, required=True)
    bias = imp.weight(node, 2, "bias", ndim=1)
    out, per_group, kh, kw = weight.shape
    kernel = list(attrs.get("kernel_shape", [kh, kw]))
    if kernel != [kh, kw]:
        raise imp.reject(node, "kernel_shape", kernel, f"it must match the weight {weight.shape}")
    groups, channels = int(attrs.get("group", 1)), imp.shape[0]
    if groups < 1 or out % groups or per_group * groups != channels:
        raise imp.reject(
            node,
            "group",
            groups,
            f"with {channels} input channels and weight {weight.shape} the channels must "
            f"divide evenly into groups (weight in-channels x group == input channels)",
        )
    if bias is not None and bias.shape != (out,):
        raise imp.error(node, f"bias shape {bias.shape}, expected ({out},)")
    keys = {
        "out_channels": out,
        "kernel": [kh, kw],
        **imp.window(node, attrs),
        "groups": groups,
        "bias": bias is not None,
    }
    imp.emit(node, Conv, keys, weight, bias)


@register
@dataclass(frozen=True)
class Conv(Layer):
    out_channels: int
    kernel: Pair
    stride: Pair = (1, 1)
    padding: Pair = (0, 0)
    groups: int = 1
    relu: bool = False
    bias: bool = True

    op: ClassVar[str] = "conv"
    weighted: ClassVar[bool] = True
    fuses_relu: ClassVar[bool] = True
    onnx_name: ClassVar[str] = "conv"
    onnx_import: ClassVar = {"Conv": _from_onnx}

    def check(self, where: str) -> None:
        positive(self, where, "kernel", "stride", "out_channels", "groups")
        if min(self.padding) < 0:
            raise SpecError(f"{where}: padding must be >= 0, got {self.padding}")
        if self.out_channels % self.groups:
            raise SpecError(f"{where}: out_channels {self.out_channels} not divisible by groups")

    def output_shape(self, shape: Shape) -> Shape:
        c, h, w = self.chw(shape)
        if c % self.groups:
            raise SpecError(f"{self.name}: {c} input channels not divisible by groups")
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.padding
        oh, ow = conv_out(h, kh, sh, ph), conv_out(w, kw, sw, pw)
        if oh < 1 or ow < 1:
            raise SpecError(f"{self.name}: kernel {self.kernel} larger than input {h}x{w}")
        return (self.out_channels, oh, ow)

    def param_shapes(self, in_shape: Shape) -> dict[str, Shape]:
        shapes = {
            f"{self.name}.weight": (self.out_channels, in_shape[0] // self.groups, *self.kernel)
        }
        if self.bias:
            shapes[f"{self.name}.bias"] = (self.out_channels,)
        return shapes

    def launcher(self, build: Build, in_shape: Shape, weights: Weights) -> ops.Launcher:
        w, b = self.tensor(weights, "weight"), self.tensor(weights, "bias")
        geometry = (self.stride, self.padding, self.groups, self.relu)
        return ops.conv2d(
            build.device,
            in_shape,
            w,
            b,
            *geometry,
            build.precision,
            build.input_range,
            build.store,
            build.key,
            self.tensor(weights, "weight_scale"),
            build.segments,
            build.params,
        )

    def reference(self, x: np.ndarray, weights: Weights) -> np.ndarray:
        return ref.conv2d(
            x,
            self.tensor(weights, "weight"),
            self.tensor(weights, "bias"),
            self.stride,
            self.padding,
            self.groups,
            self.relu,
        )

    def torch_module(self, in_shape: Shape) -> Any:
        from torch import nn

        return nn.Conv2d(
            in_shape[0],
            self.out_channels,
            self.kernel,
            self.stride,
            self.padding,
            groups=self.groups,
            bias=self.bias,
        )

    def to_onnx(self, graph: Any, x: str, shape: Shape) -> str:
        (ph, pw) = self.padding
        y = graph.node(
            "Conv",
            [x, *graph.params(self)],
            self.name,
            kernel_shape=list(self.kernel),
            strides=list(self.stride),
            pads=[ph, pw, ph, pw],
            group=self.groups,
        )
        return graph.relu_if(self, y)
