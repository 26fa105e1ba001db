"""Numpy twins of every OpenCL operation: the oracle the kernels are tested against.

All functions take and return NCHW (or N x features) float32 arrays and follow
PyTorch/ONNX semantics. They favour clarity over speed.
"""

from __future__ import annotations

import numpy as np

from kernels.geometry import conv_out, pool_out


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _windows(x: np.ndarray, kh: int, kw: int, sh: int, sw: int, oh: int, ow: int) -> np.ndarray:
    """View of shape (N, C, oh, ow, kh, kw) over an already padded x."""
    n, c, _, _ = x.shape
    s = x.strides
    return np.lib.stride_tricks.as_strided(
        x, (n, c, oh, ow, kh, kw), (s[0], s[1], s[2] * sh, s[3] * sw, s[2], s[3]), writeable=False
    )


def _conv64(x: np.ndarray, weight: np.ndarray, stride, padding, groups: int) -> np.ndarray:
    """Convolution without bias in float64 (exact for integer inputs whose sums stay
    below 2^53, as the quantised twins' do)."""
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    n, c, h, w = x.shape
    m, cg, kh, kw = weight.shape
    assert cg * groups == c and m % groups == 0
    oh, ow = conv_out(h, kh, sh, ph), conv_out(w, kw, sw, pw)
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    out = np.empty((n, m, oh, ow))
    mg = m // groups
    for g in range(groups):
        win = _windows(xp[:, g * cg : (g + 1) * cg], kh, kw, sh, sw, oh, ow)
        wg = weight[g * mg : (g + 1) * mg].astype(np.float64)
        out[:, g * mg : (g + 1) * mg] = np.einsum("ncyxij,mcij->nmyx", win, wg, optimize=True)
    return out


def conv2d(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    groups: int = 1,
    relu: bool = False,
) -> np.ndarray:
    out = _conv64(x, weight, stride, padding, groups)
    if bias is not None:
        out += bias.reshape(1, -1, 1, 1)
    if relu:
        out = np.maximum(out, 0)
    return out.astype(np.float32)


def _pool(x, kernel, stride, padding, ceil_mode, fill):
    kh, kw = _pair(kernel)
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    n, c, h, w = x.shape
    oh, ow = pool_out(h, kh, sh, ph, ceil_mode), pool_out(w, kw, sw, pw, ceil_mode)
    # pad right/bottom enough for the last (ceil-mode) window
    eh = max(0, (oh - 1) * sh + kh - h - ph)
    ew = max(0, (ow - 1) * sw + kw - w - pw)
    xp = np.pad(x, ((0, 0), (0, 0), (ph, eh), (pw, ew)), constant_values=fill)
    return _windows(xp, kh, kw, sh, sw, oh, ow), (h, w, ph, pw, kh, kw, sh, sw, oh, ow)


def maxpool2d(
    x: np.ndarray,
    kernel: int | tuple[int, int],
    stride: int | tuple[int, int] | None = None,
    padding: int | tuple[int, int] = 0,
    ceil_mode: bool = False,
) -> np.ndarray:
    win, _ = _pool(x, kernel, kernel if stride is None else stride, padding, ceil_mode, -np.inf)
    return win.max(axis=(4, 5)).astype(np.float32)


def avgpool2d(
    x: np.ndarray,
    kernel: int | tuple[int, int],
    stride: int | tuple[int, int] | None = None,
    padding: int | tuple[int, int] = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
) -> np.ndarray:
    """Average pooling; like torch, a ceil-mode window never counts the overhang."""
    stride = kernel if stride is None else stride
    win, geo = _pool(x.astype(np.float64), kernel, stride, padding, ceil_mode, 0.0)
    h, w, ph, pw, kh, kw, sh, sw, oh, ow = geo
    total = win.sum(axis=(4, 5))
    ys = np.arange(oh) * sh - ph
    xs = np.arange(ow) * sw - pw
    if count_include_pad:
        ch = np.minimum(ys + kh, h + ph) - ys
        cw = np.minimum(xs + kw, w + pw) - xs
    else:
        ch = np.minimum(ys + kh, h) - np.maximum(ys, 0)
        cw = np.minimum(xs + kw, w) - np.maximum(xs, 0)
    count = ch[:, None] * cw[None, :]
    return (total / count).astype(np.float32)


def adaptive_avgpool2d(x: np.ndarray, output_size: int | tuple[int, int]) -> np.ndarray:
    """Output cell i of O over an input of length L spans [floor(i*L/O), ceil((i+1)*L/O))."""
    oh, ow = _pair(output_size)
    n, c, h, w = x.shape
    out = np.empty((n, c, oh, ow))
    for i in range(oh):
        y0, y1 = (i * h) // oh, -((-(i + 1) * h) // oh)
        for j in range(ow):
            x0, x1 = (j * w) // ow, -((-(j + 1) * w) // ow)
            out[:, :, i, j] = x[:, :, y0:y1, x0:x1].astype(np.float64).mean(axis=(2, 3))
    return out.astype(np.float32)


def lrn(x: np.ndarray, size: int, alpha: float, beta: float, k: float) -> np.ndarray:
    """Local response normalisation across channels (Caffe/AlexNet, as in torch and ONNX):
    b_c = a_c / (k + alpha/size * sum_{c' in [c - (size-1)//2, c + size//2]} a_c'^2)^beta."""
    n, c, h, w = x.shape
    sq = np.pad(x.astype(np.float64) ** 2, ((0, 0), ((size - 1) // 2, size // 2), (0, 0), (0, 0)))
    acc = np.zeros((n, c, h, w))
    for i in range(size):
        acc += sq[:, i : i + c]
    return (x / (k + alpha / size * acc) ** beta).astype(np.float32)


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0).astype(np.float32)


def linear(
    x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None, relu: bool = False
) -> np.ndarray:
    """Fully connected: weight stored out x in, y = x W^T + b."""
    out = x.astype(np.float64) @ weight.astype(np.float64).T
    if bias is not None:
        out += bias
    if relu:
        out = np.maximum(out, 0)
    return out.astype(np.float32)


# -- quantised twins (kernels/precision.py): the same integer arithmetic as the kernels --


def quantize(x: np.ndarray, qinv: float, qzero: float, bits: int) -> np.ndarray:
    """Inputs as quantised offsets q - zero (int64): q = clamp(rint(x / scale) + zero),
    with x / scale computed as the kernels do, x * float32(1 / scale)."""
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    q = np.clip(np.rint(x.astype(np.float32) * np.float32(qinv)) + np.float32(qzero), lo, hi)
    return (q - np.float32(qzero)).astype(np.int64)


def dequantize(
    acc: np.ndarray, scale: np.ndarray, bias: np.ndarray | None, relu: bool, axis: int
) -> np.ndarray:
    """Integer accumulators -> float32 outputs: acc * scale[channel] + bias[channel]
    (float32 arithmetic, as the kernels' epilogue)."""
    shape = [1] * acc.ndim
    shape[axis] = -1
    y = acc.astype(np.float32) * scale.astype(np.float32).reshape(shape)
    if bias is not None:
        y = y + bias.astype(np.float32).reshape(shape)
    return np.maximum(y, 0) if relu else y


def conv2d_quantized(
    x: np.ndarray,
    q: np.ndarray,
    scale: np.ndarray,
    qinv: float,
    qzero: float,
    bits: int,
    bias: np.ndarray | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    groups: int = 1,
    relu: bool = False,
) -> np.ndarray:
    """Quantised convolution: q (integer weights, [M][Cg][KH][KW]) against the
    quantised input (padding is offset 0, an exact zero), exact integer sums, then
    dequantised per output channel."""
    xq = quantize(x, qinv, qzero, bits)
    acc = np.rint(_conv64(xq, q, stride, padding, groups)).astype(np.int64)
    return dequantize(acc, scale, bias, relu, axis=1)


def linear_quantized(
    x: np.ndarray,
    q: np.ndarray,
    scale: np.ndarray,
    qinv: float,
    qzero: float,
    bits: int,
    bias: np.ndarray | None = None,
    relu: bool = False,
) -> np.ndarray:
    """Quantised fully connected layer (q stored out x in), exact integer sums."""
    acc = quantize(x, qinv, qzero, bits) @ q.astype(np.int64).T
    return dequantize(acc, scale, bias, relu, axis=1)


def requantize(
    acc: np.ndarray,
    mult: np.ndarray,
    shift: np.ndarray,
    bias_acc: np.ndarray,
    zero: int,
    relu: bool,
    bits: int = 8,
) -> np.ndarray:
    """int32 sums [N][O] -> the next layer's quantised input q (int64), with integers
    only (kernels/requant.py): ((acc + bias_acc) * mult + 2^(shift-1)) >> shift, plus
    zero, max(q, zero) for ReLU, clamped to the precision's range."""
    v = (acc.astype(np.int64) + bias_acc.astype(np.int64)) * mult.astype(np.int64)
    sh = shift.astype(np.int64)
    q = ((v + (np.int64(1) << (sh - 1))) >> sh) + int(zero)
    if relu:
        q = np.maximum(q, int(zero))
    return np.clip(q, -(2 ** (bits - 1)), 2 ** (bits - 1) - 1)


def softmax(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, stable against large logits."""
    z = x.astype(np.float64) - x.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def merge(outputs: np.ndarray, indices: np.ndarray, gates: np.ndarray) -> np.ndarray:
    """Gate-weighted sum of expert outputs, the combine step of the mixture.

    outputs: (R, F) rows produced by the experts; indices: (N, k) row of `outputs` for
    each image's j-th chosen expert; gates: (N, k) renormalised gate weights.
    Returns (N, F) with y[n] = sum_j gates[n, j] * outputs[indices[n, j]].
    """
    picked = outputs.astype(np.float64)[indices]  # (N, k, F)
    return (picked * gates.astype(np.float64)[:, :, None]).sum(axis=1).astype(np.float32)


def topk_buckets(scores: np.ndarray, k: int) -> tuple[np.ndarray, ...]:
    """Twin of topk_buckets (elementwise.cl): the k largest of each row (ties to the
    lower index) with softmax weights over the kept scores, then the (row, rank) pairs
    stably sorted by bucket. Returns (index (N, k), weight (N, k), start (E + 1,),
    src (N*k,): the row each sorted pair came from, dst (N*k,): where pair p went)."""
    n, e = scores.shape
    index = np.argsort(-scores.astype(np.float64), axis=1, kind="stable")[:, :k]
    top = np.take_along_axis(scores, index, axis=1).astype(np.float32)
    w = np.exp(top - top[:, :1])
    weight = (w / w.sum(axis=1, keepdims=True)).astype(np.float32)
    pairs = index.ravel()
    order = np.argsort(pairs, kind="stable")
    start = np.searchsorted(pairs[order], np.arange(e + 1))
    dst = np.empty(n * k, np.int64)
    dst[order] = np.arange(n * k)
    return index, weight, start, order // k, dst


def little_estimate(
    x: np.ndarray,
    project: np.ndarray,
    pscale: np.ndarray,
    shift: np.ndarray,
    weight: np.ndarray,
    wscale: np.ndarray,
    bias: np.ndarray,
) -> np.ndarray:
    """Twin of little.cl: z = (x P^T) * pscale + shift, estimate = (z A^T) * wscale +
    bias, from the weights as stored (float, half, or int8 with a scale per row)."""
    z = x.astype(np.float64) @ project.astype(np.float64).T * pscale + shift
    return (z @ weight.astype(np.float64).T * wscale + bias).astype(np.float32)


def skip_insensitive(
    y: np.ndarray, estimate: np.ndarray, threshold: float | np.ndarray
) -> np.ndarray:
    """Dual-module inference (linear.cl, SKIP): the layer's ReLU output `y` where the
    little module's `estimate` of the pre-activation reaches the threshold, else the
    0 ReLU gives a clearly negative one. `threshold` broadcasts over rows (per image:
    a grouped layer's images each have their expert's)."""
    return np.where(estimate >= threshold, y, np.float32(0)).astype(np.float32)
