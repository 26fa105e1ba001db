// Max and average pooling over independent planes (P = C*N planes of H x W; the
// layout of planes does not matter). Ceil mode comes in through OH/OW: windows
// that overhang the bottom/right edge are clipped, as in torch and Caffe.
// One work-item computes one output row (per-element work-items cost PoCL more
// than the arithmetic). Max and sum are separable: a window is the reduction of its
// KW column reductions (KH values each). The geometry is compiled in; where every
// window lies inside the plane (no padding, no ceil-mode overhang: INSIDE) the loops
// are fixed and unrolled, free of bounds checks, and the KW column values live in
// registers, each window computing only the SW columns it does not share with the
// last (AlexNet's 3 x 3 windows at stride 2: 6 loads an output, not 9; at batch 8,
// fashion's pool1 40 -> 25 us, alexnet's 325 -> 194 us). Otherwise the window's rows
// are reduced into a private row of W values first, then the window's columns of it.
// Defines: H, W, OH, OW, KH, KW, SH, SW, PH, PW, INSIDE; MODE (0 max, 1 average),
// COUNT_PAD (average: count the zero padding, but never the ceil-mode overhang, like
// torch).
#if MODE == 0
#define START -FLT_MAX
// max, not fmax (NaN handling: 1.9x the pass on PoCL) nor a ?: (3.4x under
// -cl-fast-relaxed-math, which turns it into something PoCL does not vectorise)
#define ADD(acc, v) max((acc), (v))
#else
#define START 0.0f
#define ADD(acc, v) ((acc) + (v))
#endif

// FLAT_PLANE(p): the output plane of input plane p (= c * N + n of [C][N][H][W]): the
// same, or (flat: the flatten after the pool has nothing left to do) plane n * C + c
// of [N][C][OH][OW], PyTorch's flatten order for the fully connected layers.
#define FLAT_PLANE(p) (flat ? (p) % N * (int)(get_global_size(1) / N) + (p) / N : (p))

// QUANT_OUT (with flat, the float pools): the fully connected layer after the flatten is
// quantised, and the pool writes its input as its quantize_input would (QBITS and DOT4
// are that layer's: bytes q + 128 on VNNI, else offsets q - zero), saving that launch.
#include "precision.h"
#if QUANT_OUT
#if DOT4
#define OUT_T uchar
#define OUT(v) QBYTE(v)
#else
#define OUT_T float
#define OUT(v) QX(v, )
#endif
#define QOUT_ARGS , const float qinv, const float qzero
#else
#define OUT_T float
#define OUT(v) (v)
#define QOUT_ARGS
#endif

#if defined(KH) && !BYTES
__kernel void pool2d(__global const float *restrict x, __global OUT_T *restrict y, const int N,
                     const int flat QOUT_ARGS)
{
    const int oy = get_global_id(0), p = get_global_id(1);
    __global const float *xp = x + (size_t)p * H * W;
    __global OUT_T *yp = y + ((size_t)FLAT_PLANE(p) * OH + oy) * OW;
    const int y0 = oy * SH - PH;
#if INSIDE  // every window lies inside the plane: no bounds, no branches
    __global const float *xr = xp + y0 * W;
#define COLUMN(v, c) \
    { \
        v = xr[c]; \
        _Pragma("unroll") for (int ky = 1; ky < KH; ++ky) v = ADD(v, xr[ky * W + (c)]); \
    }
    float cols[KW];  // the current window's column reductions
#pragma unroll
    for (int kx = 0; kx < KW; ++kx) COLUMN(cols[kx], kx)
    for (int ox = 0;; ++ox) {
        float acc = cols[0];
#pragma unroll
        for (int kx = 1; kx < KW; ++kx) acc = ADD(acc, cols[kx]);
#if MODE == 1
        acc /= (float)(KH * KW);
#endif
        yp[ox] = OUT(acc);
        if (ox + 1 == OW) break;
#pragma unroll
        for (int kx = 0; kx < KW; ++kx) {  // slide by SW: shared columns move left
            if (kx + SW < KW)
                cols[kx] = cols[kx + SW];
            else
                COLUMN(cols[kx], (ox + 1) * SW + kx)
        }
    }
#else
    float row[W];
    const int ys = max(y0, 0), ye = min(y0 + KH, H);
    for (int ix = 0; ix < W; ++ix) {
        float acc = START;
        for (int iy = ys; iy < ye; ++iy) acc = ADD(acc, xp[iy * W + ix]);
        row[ix] = acc;
    }
    for (int ox = 0; ox < OW; ++ox) {
        const int x0 = ox * SW - PW, xs = max(x0, 0), xe = min(x0 + KW, W);
        float acc = START;
        for (int ix = xs; ix < xe; ++ix) acc = ADD(acc, row[ix]);
#if MODE == 1
#if COUNT_PAD
        acc /= (float)((min(y0 + KH, H + PH) - y0) * (min(x0 + KW, W + PW) - x0));
#else
        acc /= (float)((ye - ys) * (xe - xs));
#endif
#endif
        yp[ox] = OUT(acc);
    }
#endif
}
#endif

#if defined(KH) && BYTES
// Max pooling on the integer pipeline's bytes: a DOT4 convolution's output q + 128
// [N][H][W][C] (C a multiple of 8) -> the next convolution's input [N][OH + 2 * OPH]
// [OW + 2 * OPW][C], its padding bytes included (kernels/ops/pool.py): `pad`, or
// (GROUPED: a mixture's experts, expert x owning images [seg[x], seg[x + 1])) pad[x].
// FLAT: a fully connected layer's input instead, [N][C][OH][OW] (PyTorch's flatten
// order, no padding), so the flatten between them has nothing left to do.
// Quantising is monotonic, so the largest byte is the byte of the largest float: the
// bytes pooling the floats and padding them would give. A work-item takes R rows of
// the padded output, a pixel's channels 16 at a time (a vector; the last 8: half one),
// so that it reads each window pixel's C bytes in one run (one vector a work-item read
// them C bytes apart: 1.6x slower on AlexNet's pool2). Windows are clipped at the
// edges, as pool2d's. C (channels) is compiled in with the geometry.
#if FLAT
#define PAD_ARGS
#elif GROUPED  // precision.h's expert_of: which expert an image belongs to
#define PAD_ARGS , __global const int *restrict pad, __global const int *restrict seg, \
    const int experts
#define PAD_OF(b) pad[expert_of((b), seg, experts)]
#else
#define PAD_ARGS , const int pad
#define PAD_OF(b) pad
#endif
#if FLAT  // lane l of a pixel's vector -> channel c0 + l's plane
#define PUT(V, STORE, m, ox, c0) \
    { \
        uchar u[16]; \
        STORE(m, 0, u); \
        for (int l = 0; l < (int)sizeof(V); ++l) dst[(size_t)((c0) + l) * OH * OW + (ox)] = u[l]; \
    }
#else
#define PUT(V, STORE, m, ox, c0) STORE(m, 0, dst + (size_t)(OPW + (ox)) * C + (c0));
#endif
#define POOL_BLOCK(V, LOAD, STORE, c0) \
    { \
        V m = (V)(0);  /* bytes are >= 0, and every window holds one */ \
        for (int iy = ys; iy < ye; ++iy) \
            for (int ix = xs; ix < xe; ++ix) \
                m = max(m, LOAD(0, src + ((size_t)iy * W + ix) * C + (c0))); \
        PUT(V, STORE, m, ox, c0) \
    }
__kernel void pool2d_bytes(__global const uchar *restrict x, __global uchar *restrict y,
                           const int N, const int R PAD_ARGS)
{
    const int r0 = get_global_id(0) * R;
    const int HP = OH + 2 * OPH, WP = OW + 2 * OPW;
    for (int row = r0; row < min(r0 + R, N * HP); ++row) {  // row = b * HP + OPH + oy
        const int b = row / HP, oy = row % HP - OPH;
#if FLAT
        __global uchar *dst = y + (size_t)b * C * OH * OW + oy * OW;
#else
        const uchar16 fill = (uchar16)((uchar)PAD_OF(b));
        __global uchar *dst = y + (size_t)row * WP * C;
        for (int i = 0; i < WP; ++i) {
            if (oy >= 0 && oy < OH && i >= OPW && i < OPW + OW) continue;
            for (int c0 = 0; c0 + 16 <= C; c0 += 16) vstore16(fill, 0, dst + i * C + c0);
            if (C % 16) vstore8(fill.lo, 0, dst + i * C + C - 8);
        }
        if (oy < 0 || oy >= OH) continue;
#endif
        const int y0 = oy * SH - PH, ys = max(y0, 0), ye = min(y0 + KH, H);
        __global const uchar *src = x + (size_t)b * H * W * C;
        for (int ox = 0; ox < OW; ++ox) {
            const int x0 = ox * SW - PW, xs = max(x0, 0), xe = min(x0 + KW, W);
            for (int c0 = 0; c0 + 16 <= C; c0 += 16) POOL_BLOCK(uchar16, vload16, vstore16, c0)
            if (C % 16) POOL_BLOCK(uchar8, vload8, vstore8, C - 8)
        }
    }
}
#endif

#ifndef KH  // built without the geometry defines, which would clash with its arguments
// Adaptive average pooling: output cell i of O over an input of length L averages
// input rows [floor(i*L/O), ceil((i+1)*L/O)), the torch rule.
__kernel void adaptive_avgpool2d(__global const float *restrict x, __global OUT_T *restrict y,
                                 const int H, const int W, const int OH, const int OW,
                                 const int N, const int flat QOUT_ARGS)
{
    const int oy = get_global_id(0), p = get_global_id(1), q = FLAT_PLANE(p);
    __global const float *xp = x + (size_t)p * H * W;
    const int ys = (oy * H) / OH, ye = ((oy + 1) * H + OH - 1) / OH;
    for (int ox = 0; ox < OW; ++ox) {
        const int xs = (ox * W) / OW, xe = ((ox + 1) * W + OW - 1) / OW;
        float acc = 0.0f;
        for (int iy = ys; iy < ye; ++iy)
            for (int ix = xs; ix < xe; ++ix) acc += xp[iy * W + ix];
        y[((size_t)q * OH + oy) * OW + ox] = OUT(acc / (float)((ye - ys) * (xe - xs)));
    }
}
#endif
