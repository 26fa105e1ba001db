"""One launcher per operation. A launcher is built once per layer (it compiles its
kernel and packs its weights then) and enqueued per batch on preallocated buffers.

4-D activations are channel-major, [C][N][H][W] (see docs/ARCHITECTURE.md); fully
connected layers take and give [N][features].
"""

from kernels.ops.conv import Conv2d
from kernels.ops.conv_choice import conv2d
from kernels.ops.dual import DualLinear, SkipStats
from kernels.ops.elementwise import (
    Flatten,
    GatherImages,
    Merge,
    Relu,
    Softmax,
    SwapOuter,
    TopKBuckets,
)
from kernels.ops.launcher import Launcher, at_batch
from kernels.ops.linear import Linear
from kernels.ops.lrn import LRN
from kernels.ops.pad import ConvPad
from kernels.ops.pool import AdaptiveAvgPool2d, Pool2d
from kernels.ops.store import PlaneStore
from kernels.ops.winograd import WinogradConv2d

__all__ = [
    "AdaptiveAvgPool2d",
    "Conv2d",
    "ConvPad",
    "DualLinear",
    "Flatten",
    "GatherImages",
    "LRN",
    "Launcher",
    "Linear",
    "Merge",
    "PlaneStore",
    "Pool2d",
    "Relu",
    "SkipStats",
    "Softmax",
    "SwapOuter",
    "TopKBuckets",
    "WinogradConv2d",
    "at_batch",
    "conv2d",
]
