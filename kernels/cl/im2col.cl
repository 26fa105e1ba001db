// Convolution input columns for gemm_packed, written straight into its B panel
// layout [N/NB][K][NB]. The input is channel-major [C][N][H][W]; column n of the
// GEMM is image b, output pixel (oy, ox): n = (b * OH + oy) * OW + ox. Row k is
// (c, i, j) in the weight's [Cg][KH][KW] order. Padding reads as zero.
//
// One work-item copies one output row (b, oy) of one k: OW values, contiguous in the
// destination except where a panel ends, so the inner loop is a plain strided copy.
// Columns past the batch in the last panel are zeroed by im2col_tail.
// Quantised precisions quantise each value as they copy it (QX, precision.h).
// Defines: NB (im2col kernels only), QBITS, DOT4 (pad2d_pixels only), GROUPED (pads:
// each expert's images quantised with its own parameters, precision.h's QARGS), GATHER
// (pad2d_channels: the rows' images picked from a larger batch).
#include "precision.h"

#ifdef NB
__kernel void im2col_packed(__global const float *restrict x, __global float *restrict cols,
                            const int N, const int H, const int W, const int c0,
                            const int KH, const int KW, const int SH, const int SW,
                            const int PH, const int PW, const int OH, const int OW,
                            const int K, const float qinv, const float qzero)
{
    const int k = get_global_id(0);
    const int row = get_global_id(1);  // b * OH + oy
    if (k >= K) return;  // the global size is rounded up to whole work-groups
    const int b = row / OH, oy = row % OH;
    const int c = k / (KH * KW), r = k % (KH * KW);
    const int i = r / KW, j = r % KW;
    const int iy = oy * SH - PH + i;
    const bool row_in = iy >= 0 && iy < H;
    __global const float *src = x + (((size_t)(c0 + c) * N + b) * H + (row_in ? iy : 0)) * W;
    int n = row * OW;
    for (int ox = 0; ox < OW;) {
        const int t = n % NB;
        const int run = min(NB - t, OW - ox);
        __global float *dst = cols + ((size_t)(n / NB) * K + k) * NB + t;
        for (int q = 0; q < run; ++q) {
            const int ix = (ox + q) * SW - PW + j;
            dst[q] = (row_in && ix >= 0 && ix < W) ? QX(src[ix], ) : 0.0f;
        }
        ox += run;
        n += run;
    }
}

// Zero the columns of the last panel that lie past the batch (n >= ncols).
__kernel void im2col_tail(__global float *restrict cols, const int K, const int ncols)
{
    const int k = get_global_id(0);
    const int panel = ncols / NB, t0 = ncols % NB;
    __global float *dst = cols + ((size_t)panel * K + k) * NB;
    for (int t = t0; t < NB; ++t) dst[t] = 0.0f;
}
#endif

// Zero-pad each [H][W] plane into [H + 2*PH][W + 2*PW] (planes = C*N), so that the
// implicit-GEMM convolution gathers without bounds checks. One work-item per output
// row: per-element work-items cost PoCL more than the copy itself. Quantised
// precisions quantise here (QX), once per input value, so the GEMM's panel gathers
// only copy (quantising in the gather repeated the work for every panel and window).
__kernel void pad2d(__global const float *restrict x, __global float *restrict y,
                    const int H, const int W, const int PH, const int PW, const int N,
                    QARGS)
{
    const int oy = get_global_id(0), p = get_global_id(1);  // p = c * N + b
    QPARAMS(p % N)
    const int HP = H + 2 * PH, WP = W + 2 * PW;
    const int iy = oy - PH;
    __global float *dst = y + ((size_t)p * HP + oy) * WP;
    if (iy < 0 || iy >= H) {
        for (int i = 0; i < WP; ++i) dst[i] = 0.0f;
        return;
    }
    __global const float *src = x + ((size_t)p * H + iy) * W;
    for (int i = 0; i < PW; ++i) dst[i] = 0.0f;
    for (int i = 0; i < W; ++i) dst[PW + i] = QX(src[i], );
    for (int i = PW + W; i < WP; ++i) dst[i] = 0.0f;
}

#if DOT4
// gemm.cl's DOT4 input: [C][N][H][W] floats -> zero-padded [N][HP][WP][CP] bytes
// q + 128 (an input at the zero point, padding included, reads zero + 128). Channels
// are innermost so that four consecutive k of the GEMM are one aligned int: group g's
// CG channels start at g * CG4, CG4 being CG rounded up to four (the bytes between
// hold the padding value; their weights are zero). One work-item per output row.
__kernel void pad2d_pixels(__global const float *restrict x, __global uchar *restrict y,
                           const int H, const int W, const int PH, const int PW,
                           const int C, const int N, const int CG, const int CG4, QARGS)
{
    const int oy = get_global_id(0), b = get_global_id(1);
    QPARAMS(b)
    const int HP = H + 2 * PH, WP = W + 2 * PW, CP = C / CG * CG4;
    const int iy = oy - PH;
    const uchar pad = QBYTE(0.0f);
    __global uchar *dst = y + ((size_t)b * HP + oy) * WP * CP;
    for (int i = 0; i < WP * CP; ++i) dst[i] = pad;
    if (iy < 0 || iy >= H) return;
    for (int c = 0; c < C; ++c) {
        __global const float *src = x + (((size_t)c * N + b) * H + iy) * W;
        __global uchar *d = dst + PW * CP + c / CG * CG4 + c % CG;
        for (int i = 0; i < W; ++i) d[i * CP] = QBYTE(src[i]);
    }
}

// One padded row of bytes q + 128 for the direct DOT4 kernel's pads below: WR bytes at
// dst, the padding value outside the image (a row outside it: all of them), the
// image's row src quantised 16 values at a time in between.
#define PAD_ROW(dst, src, inside, WR) { \
    for (int i = 0; i < ((inside) ? PW : (WR)); ++i) (dst)[i] = pad; \
    if (inside) { \
        for (int i = PW + W; i < (WR); ++i) (dst)[i] = pad; \
        int i = 0; \
        for (; i + 16 <= W; i += 16) \
            vstore16(convert_uchar16(QU(vload16(0, (src) + i), 16)), 0, (dst) + PW + i); \
        for (; i < W; ++i) (dst)[PW + i] = QBYTE((src)[i]); } }

// gemm.cl's direct DOT4 input, [C][N][H][W] floats -> zero-padded rows of bytes q + 128:
//  - WINDOWS (stride 1): [C][N][HP][WP] ints, the int at a pixel holding its byte and
//    the next three pixels' of its row (past the row's end: the padding value; their
//    weights are zero), lowest address first, so that one int of B meets four taps of
//    a filter row in one vpdpbusd; each row is quantised once into `line` (local
//    memory: a work-item's own scratch on a CPU, WR = WP + 3 bytes and a vector of
//    slack) and read back four bytes at every pixel;
//  - else (a stride of 4 along rows, Conv2d.rows4): [C][N][HP][WR] bytes, WR a multiple
//    of four (past WP: the padding value), so that the int at 4 * ox + 4 * jq holds the
//    four taps 4 * jq .. 4 * jq + 3 of output pixel ox.
// A work-item takes R of the C * N * HP padded rows (a work-group costs PoCL about
// 0.15 us to start: one row each cost more than the row). NCHW (a network's input, C
// channels; 0: x is [C][N][H][W]) reads x in the images' own layout, so the network
// need not swap it first.
__kernel void pad2d_direct(__global const float *restrict x, __global uchar *restrict y,
                           const int H, const int W, const int PH, const int PW, const int N,
                           const int WR, const int rows, const int R,
                           __local uchar *restrict line, const int NCHW, QARGS)
{
    const int HP = H + 2 * PH, WP = W + 2 * PW, r0 = get_global_id(0) * R;
    for (int row = r0; row < min(r0 + R, rows); ++row) {  // row = p * HP + oy
        const int p = row / HP, iy = row % HP - PH;  // p = c * N + b
        QPARAMS(p % N)
        const uchar pad = QBYTE(0.0f);
        const bool inside = iy >= 0 && iy < H;
        const int plane = NCHW ? p % N * NCHW + p / N : p;
        __global const float *src = x + ((size_t)plane * H + (inside ? iy : 0)) * W;
#if WINDOWS
        PAD_ROW(line, src, inside, WR)
        __global uint *out = (__global uint *)y + (size_t)row * WP;
        int i = 0;
        for (; i + 16 <= WP; i += 16) {
            const uint16 w = convert_uint16(vload16(0, line + i))
                             | convert_uint16(vload16(0, line + i + 1)) << 8
                             | convert_uint16(vload16(0, line + i + 2)) << 16
                             | convert_uint16(vload16(0, line + i + 3)) << 24;
            vstore16(w, 0, out + i);
        }
        for (; i < WP; ++i) out[i] = as_uint(vload4(0, line + i));
#else
        PAD_ROW(y + (size_t)row * WR, src, inside, WR)
#endif
    }
}

// 16 channels x 16 pixels of a row (channel t's pixels at src + t * plane), quantised,
// to the first `count` pixels' 16 bytes at d (C bytes apart): each channel read as a
// vector, four channels' bytes packed into each pixel's int, and the 4 x 16 ints
// transposed by two rounds of two-vector permutes (vpermt2d). The pixel-by-pixel
// gathers below read 16 scalars a pixel.
#define PUT4(v, sw, p) if ((p) < count) vstore4((v).sw, 0, (__global uint *)(d + (p) * C));
inline void pixels16(__global const float *src, const size_t plane, const float qinv,
                     const float qzero, __global uchar *d, const int C, const int count)
{
    uint16 w[4];
    for (int g = 0; g < 4; ++g) {
        uint16 acc = 0;
        for (int k = 0; k < 4; ++k) {
            const float16 v = vload16(0, src + (4 * g + k) * plane);
            acc |= convert_uint16(QU(v, 16)) << (8 * k);
        }
        w[g] = acc;
    }
    const uint16 lo = (uint16)(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const uint16 hi = lo + (uint16)8;
    const uint16 u0 = shuffle2(w[0], w[1], lo), u1 = shuffle2(w[0], w[1], hi);
    const uint16 u2 = shuffle2(w[2], w[3], lo), u3 = shuffle2(w[2], w[3], hi);
    const uint16 first = (uint16)(0, 1, 16, 17, 2, 3, 18, 19, 4, 5, 20, 21, 6, 7, 22, 23);
    const uint16 second = first + (uint16)8;
    const uint16 v0 = shuffle2(u0, u2, first), v1 = shuffle2(u0, u2, second);
    const uint16 v2 = shuffle2(u1, u3, first), v3 = shuffle2(u1, u3, second);
    PUT4(v0, s0123, 0) PUT4(v0, s4567, 1) PUT4(v0, s89ab, 2) PUT4(v0, scdef, 3)
    PUT4(v1, s0123, 4) PUT4(v1, s4567, 5) PUT4(v1, s89ab, 6) PUT4(v1, scdef, 7)
    PUT4(v2, s0123, 8) PUT4(v2, s4567, 9) PUT4(v2, s89ab, 10) PUT4(v2, scdef, 11)
    PUT4(v3, s0123, 12) PUT4(v3, s4567, 13) PUT4(v3, s89ab, 14) PUT4(v3, scdef, 15)
}

// pad2d_pixels where every group's channels are a multiple of four (every layer but a
// network's first: no padding bytes within a pixel, CP = C): a work-item takes R padded
// rows (of all N * HP) and a block of 16 channels, 16 pixels at a time (pixels16)
// where the reads stay inside x, else gathering a pixel's 16 channels into one vector
// and storing its 16 bytes at once; the last block of 4, 8 or 12 channels four at a
// time. Work-items alone (no implicit vectorisation across them): 2-2.6x pad2d_pixels
// on 192-384 channels (docs/benchmark-log.md). R rows each, not one: on PoCL a
// work-group costs about 0.15 us to start, which one 13-pixel row did not repay.
// GATHER (a mixture's experts): row b is image images[first + b] of the NS images in x
// (the stem's output), so the routing's gather and this pass are one launch.
#define GATHER4(s, i, p) \
    (float4)((s)[i], (s)[(i) + (p)], (s)[(i) + 2 * (p)], (s)[(i) + 3 * (p)])
#if GATHER
#define GATHER_ARGS , __global const int *restrict images, const int NS, const int first
#define IMAGE(b) images[first + (b)]
#else
#define GATHER_ARGS
#define NS N
#define IMAGE(b) (b)
#endif
__kernel void pad2d_channels(__global const float *restrict x, __global uchar *restrict y,
                             const int H, const int W, const int PH, const int PW,
                             const int C, const int N, const int R, QARGS GATHER_ARGS)
{
    const int c0 = get_global_id(1) * 16, n = min(16, C - c0);
    const int HP = H + 2 * PH, WP = W + 2 * PW;
    const size_t plane = (size_t)NS * H * W;
    const int r0 = get_global_id(0) * R;
    for (int row = r0; row < min(r0 + R, N * HP); ++row) {  // row = b * HP + oy
        const int b = row / HP, iy = row % HP - PH;
        QPARAMS(b)
        const uchar pad = QBYTE(0.0f);
        __global uchar *dst = y + (size_t)row * WP * C + c0;
        const bool inside = iy >= 0 && iy < H;
        for (int i = 0; i < WP; ++i) {
            if (inside && i >= PW && i < PW + W) continue;
            for (int t = 0; t < n; ++t) dst[i * C + t] = pad;
        }
        if (!inside) continue;
        const int image = IMAGE(b);
        __global const float *src = x + (((size_t)c0 * NS + image) * H + iy) * W;
        __global uchar *d = dst + PW * C;
        if (n == 16) {
            // Whole tiles of 16 pixels where the last channel's read stays inside x.
            const size_t end = plane * C,
                         last = ((size_t)(c0 + 15) * NS + image) * H * W + (size_t)iy * W;
            int i = 0;
            for (; i < W && last + i + 16 <= end; i += 16)
                pixels16(src + i, plane, qinv, qzero, d + i * C, C, min(16, W - i));
            for (; i < W; ++i) {
                const float16 v = (float16)(GATHER4(src, i, plane), GATHER4(src + 4 * plane, i, plane),
                                            GATHER4(src + 8 * plane, i, plane),
                                            GATHER4(src + 12 * plane, i, plane));
                vstore16(convert_uchar16(QU(v, 16)), 0, d + i * C);
            }
            continue;
        }
        for (int t = 0; t < n; t += 4) {
            for (int i = 0; i < W; ++i) {
                const float4 v = GATHER4(src + t * plane, i, plane);
                vstore4(convert_uchar4(QU(v, 4)), 0, d + i * C + t);
            }
        }
    }
}
#endif
