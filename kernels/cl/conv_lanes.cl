// int8 convolution on VNNI with the output channels in the lanes (kernels/ops/conv_lanes.py).
//
// gemm.cl's DOT4 GEMM puts pixels in the lanes: it must first gather each panel of
// pixels into [K/4][NB] ints, and its bytes out leave as 8-byte scatters. Here a
// vpdpbusd instead multiplies one int of the input, four channels of one pixel
// broadcast to every lane (an unsigned byte each, q + 128), by sixteen output channels'
// four weights (signed). The input is read where it lies, the padded pixels
// [N][HP][WP][CP] that pad2d_channels and the byte pipeline write, and an output
// pixel's sixteen channels leave as one 16-byte store into the next layer's pixels.
//
// A work-item takes P output pixels along one row and `blocks` blocks of 32 output
// channels (two vectors of 16) one after the other: 2 * P int16 sums, P <= 14 so that
// they, the two weight vectors and the broadcast fit AVX-512's 32 registers. Weights:
// [M/32][K/4][32][4], k over (i, j, channel) as gemm.cl's DOT4 (blocking.lane_rows).
// The sums are exact and equal gemm.cl's; the epilogue takes off corr, scales, adds
// the bias and applies the ReLU with the same float operations as its STORE and QBYTES.
// Defines: the geometry (OH, OW, HP, WP, SH, SW, KH, KW, CP: bytes a pixel of x, CG4:
// this group's channels padded to four, P: pixels a work-item, dividing OW), RELU,
// BYTES_OUT (with OPH, OPW: the consumer's padding) and precision.h's.
#include "precision.h"

#if !DOT4
#error "conv_lanes.cl is for int8 on VNNI (DOT4)"
#endif
#if P > 14
#error "conv_lanes.cl: P > 14 pixels would not fit the registers"
#endif

#define T1(X) X(0)
#define T2(X) T1(X) X(1)
#define T3(X) T2(X) X(2)
#define T4(X) T3(X) X(3)
#define T5(X) T4(X) X(4)
#define T6(X) T5(X) X(5)
#define T7(X) T6(X) X(6)
#define T8(X) T7(X) X(7)
#define T9(X) T8(X) X(8)
#define T10(X) T9(X) X(9)
#define T11(X) T10(X) X(10)
#define T12(X) T11(X) X(11)
#define T13(X) T12(X) X(12)
#define T14(X) T13(X) X(13)
#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)
#define EACH_PIXEL(X) CAT(T, P)(X)  // X(t) for the work-item's pixels t = 0 .. P - 1

#if RELU
#define ACT(x) fmax((x), 0.0f)
#else
#define ACT(x) (x)
#endif

#if BYTES_OUT
#define OUT_T uchar
#define OUT_ARG , const float oqinv, const float oqzero
#define OUT_PASS , oqinv, oqzero
// The 16 channels from c of pixel (b, oy, ox) into the consumer's padded pixels (ldc
// channels each); a pixel on an edge also writes the padding beyond it (`pad`), so no
// pass pads them (as bytes_out.h's put_pixel does with 8).
inline void put16(__global uchar *y, const int b, const int oy, const int ox, const int c,
                  const uchar16 u, const uchar16 pad, const int ldc)
{
    const int HO = OH + 2 * OPH, WO = OW + 2 * OPW;
    __global uchar *img = y + (size_t)b * HO * WO * ldc + c;
    const bool edge = (OPH > 0) * (oy == 0 || oy == OH - 1) + (OPW > 0) * (ox == 0 || ox == OW - 1);
    if (!edge) {
        vstore16(u, 0, img + ((size_t)(oy + OPH) * WO + ox + OPW) * ldc);
        return;
    }
    const int y0 = oy ? oy + OPH : 0, y1 = oy == OH - 1 ? HO : oy + OPH + 1;
    const int x0 = ox ? ox + OPW : 0, x1 = ox == OW - 1 ? WO : ox + OPW + 1;
    for (int yy = y0; yy < y1; ++yy)
        for (int xx = x0; xx < x1; ++xx)
            vstore16(yy == oy + OPH && xx == ox + OPW ? u : pad, 0, img + ((size_t)yy * WO + xx) * ldc);
}
#define QBYTES16(v) QOUT(v, 16)
#define PUT(t) { const int ox = ox0 + t; \
    put16(C, b, oy, ox, c_row0 + r0, QBYTES16(ACT(convert_float16(s##t - corr0) * scale0 + bias0)), \
          pad, ldc); \
    put16(C, b, oy, ox, c_row0 + r0 + 16, QBYTES16(ACT(convert_float16(u##t - corr1) * scale1 \
          + bias1)), pad, ldc); }
#else
#define OUT_T float
#define OUT_ARG
#define OUT_PASS
// Floats to C [C][N][OH][OW] (ldc: a channel's values), one lane a channel.
#define PUT(t) { const size_t n = (size_t)row * OW + ox0 + t; \
    const float16 v0 = ACT(convert_float16(s##t - corr0) * scale0 + bias0); \
    const float16 v1 = ACT(convert_float16(u##t - corr1) * scale1 + bias1); \
    __global float *o = C + (size_t)(c_row0 + r0) * ldc + n; \
    for (int l = 0; l < 16; ++l) { o[l * ldc] = v0[l]; o[(l + 16) * ldc] = v1[l]; } }
#endif

#define DECL(t) int16 s##t = 0, u##t = 0;
#define MAC(t) { const int16 q = (int16)(xp[c4 + t * (SW * CP / 4)]); \
    s##t = DOT4_MAC(s##t, q, w0); u##t = DOT4_MAC(u##t, q, w1); }

// The work of one item, in a function of its own so that it can be compiled for VNNI
// (gemm.cl's conv_item says why); the ids come as arguments.
TARGET void lanes_item(const int block, const int part, __global const int *restrict w,
                       __global const uchar *restrict x, __global const float *restrict bias,
                       __global const float *restrict scale, __global const int *restrict corr,
                       __global OUT_T *restrict C, const int ldc, const int c_row0,
                       const int c0, const int M, const int blocks OUT_ARG)
{
    const int row = block / (OW / P), ox0 = block % (OW / P) * P;  // row = b * OH + oy
    const int b = row / OH, oy = row % OH;
    __global const uchar *xr = x + (((size_t)b * HP + oy * SH) * WP + ox0 * SW) * CP + c0;
#if BYTES_OUT
    const uchar16 pad = (uchar16)(convert_uchar(clamp(oqzero, QLO, QHI) + 128.0f));
#endif
    const int cb1 = min(M / 32, (part + 1) * blocks);
    for (int cb = part * blocks; cb < cb1; ++cb) {
        __global const int *wb = w + (size_t)cb * (KH * KW * CG4 / 4) * 32;
        EACH_PIXEL(DECL)
        for (int i = 0; i < KH; ++i) {
#if CP == CG4  // one group: a filter row's taps are KW whole pixels, one run of ints
            __global const int *xp = (__global const int *)(xr + i * WP * CP);
            for (int c4 = 0; c4 < KW * CP / 4; ++c4, wb += 32) {
                const int16 w0 = vload16(0, wb), w1 = vload16(1, wb);
                EACH_PIXEL(MAC)
            }
#else
            for (int j = 0; j < KW; ++j) {
                __global const int *xp = (__global const int *)(xr + (i * WP + j) * CP);
                for (int c4 = 0; c4 < CG4 / 4; ++c4, wb += 32) {
                    const int16 w0 = vload16(0, wb), w1 = vload16(1, wb);
                    EACH_PIXEL(MAC)
                }
            }
#endif
        }
        const int r0 = cb * 32;
        const int16 corr0 = vload16(0, corr + r0), corr1 = vload16(1, corr + r0);
        const float16 scale0 = vload16(0, scale + r0), scale1 = vload16(1, scale + r0);
        const float16 bias0 = vload16(0, bias + r0), bias1 = vload16(1, bias + r0);
        EACH_PIXEL(PUT)
    }
}

// x: the padded input bytes; C: floats [C][N][OH][OW], or (BYTES_OUT) the consumer's
// padded pixels; c_row0: this group's first output channel, c0 its first input byte
// of a pixel; M: this group's channels, in `blocks` blocks of 32 a work-item. Global
// size: (N * OH * OW / P, M / 32 / blocks).
__kernel void conv_lanes(__global const int *restrict w, __global const uchar *restrict x,
                         __global const float *restrict bias,
                         __global const float *restrict scale,
                         __global const int *restrict corr, __global OUT_T *restrict C,
                         const int ldc, const int c_row0, const int c0, const int M,
                         const int blocks OUT_ARG)
{
    lanes_item(get_global_id(0), get_global_id(1), w, x, bias, scale, corr, C, ldc, c_row0, c0,
               M, blocks OUT_PASS);
}
