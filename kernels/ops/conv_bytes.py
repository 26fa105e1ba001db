"""The integer pipeline of convolutions: an int8 convolution on VNNI (DOT4) writes the
next one's input bytes itself, padded as that one reads them (gemm.cl's BYTES_OUT),
and a max pool between them pools the bytes (Pool2d.launch_bytes); the last one's
bytes go through its max pool to the first fully connected layer. Conv2d's part of
it, as a mixin; Network.requant_links decides where it applies."""

from __future__ import annotations

from typing import Any

import numpy as np

from kernels.ops.linear import Linear


class ByteLink:
    """Conv2d's methods for the integer pipeline (the attributes are Conv2d's)."""

    device: Any
    dot4: bool
    implicit: bool
    segments: Any
    mg: int
    m: int
    c: int
    cg: int
    ph: int
    pw: int
    qargs: tuple[Any, ...]
    qzero: np.ndarray
    _pad_bytes: Any = None

    def feeds(self, consumer: Any) -> bool:
        """Whether this layer can write `consumer`'s input bytes itself: a convolution's
        straight or through a max pool, DOT4 into the implicit GEMM's DOT4, whole fours
        of channels in the consumer's groups (its pixels hold just its channels, as
        pad2d_channels's do); a fully connected layer's on VNNI (DOT4 rows) through a max
        pool, which writes them in the flatten's order. Either way grouped alike (a
        mixture's experts: each expert's images quantised with its own parameters), and
        whole eights of output channels (one store a column)."""
        if type(consumer) is Linear:
            fits = consumer.dot4
        elif isinstance(consumer, ByteLink):
            fits = consumer.implicit and consumer.dot4 and consumer.cg % 4 == 0
            fits = fits and consumer.c == self.m
        else:
            return False
        return fits and self.dot4 and self.segments is consumer.segments and self.mg % 8 == 0

    @property
    def input_bytes(self) -> tuple[tuple[int, int], tuple[Any, ...]]:
        """This layer's input as the integer pipeline writes it: its padding, and the
        byte that pads it (an input of 0.0: the zero point's) as the pooling kernel
        takes it: one value, or (grouped) each expert's with the segment table."""
        pads = (np.clip(np.rint(self.qzero), -128, 127) + 128).astype(np.int32)
        if self.segments is None:
            return (self.ph, self.pw), (np.int32(pads[0]),)
        if self._pad_bytes is None:
            self._pad_bytes = self.device.upload(pads)
        return (self.ph, self.pw), (self._pad_bytes, *self.qargs[1:])

    def requantizer(self, consumer: Any, pooled: bool) -> tuple[Any, ...]:
        """`launch`'s `requant` for writing `consumer`'s input bytes: their padding (none
        where `pooled`: the max pool between pads) and the consumer's input parameters
        (qinv and qzero; grouped: the device table of each expert's)."""
        padding = (0, 0) if pooled else consumer.input_bytes[0]
        return (padding, *(consumer.qargs if self.segments is None else consumer.qargs[:1]))
