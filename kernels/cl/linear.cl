// Fully connected layer: Y[b][o] = X[b][:] . W[o][:] * scale[o] + bias[o] (ReLU
// optional; scale is 1 for float precisions, weight scale * input scale quantised).
// Weights stay out x in (rows contiguous along K): at small batch this layer only
// streams its weights, so each work-item takes RO rows of W and dots them with RB
// rows of X, reading every weight once per batch tile. Quantised precisions get X
// already quantised (quantize_input, once per layer rather than once per row tile)
// and accumulate exactly (precision.h).
// Defines: RO, RB, RELU, WEIGHT_HALF, QBITS, DOT4 (precision.h), SKIP, PACKED (below).
#include "precision.h"

#if RELU
#define ACT(x) fmax((x), 0.0f)
#else
#define ACT(x) (x)
#endif

// The arguments of both kernels below. GROUPED (a mixture's experts in one launch,
// RB = 1): row b belongs to expert x (rows [seg[x], seg[x + 1])), whose W, bias and
// scale lie x * O rows on (EXPERT_ROWS moves them there); rows past seg[experts] pad
// the batch and are left alone (the whole work-item or work-group returns).
// The experts' rows all lie in one buffer, int16's low plane after all the high ones
// (EXPERTS * O * I elements on). DOT4 moves corr to the expert's rows too.
#if GROUPED
#define GROUP_ARGS , __global const int *restrict seg, const int experts
#define EXPERTS experts
#if DOT4
#define EXPERT_CORR(ex) corr += (ex) * O;
#else
#define EXPERT_CORR(ex)
#endif
#define EXPERT_ROWS(b0) \
    if ((b0) >= seg[experts]) return; \
    int ex = 0; \
    while ((b0) >= seg[ex + 1]) ++ex; \
    W += (size_t)ex * O * I; \
    bias += ex * O; \
    scale += ex * O; \
    EXPERT_CORR(ex) \
    REQ_ROWS(ex)
#else
#define GROUP_ARGS
#define EXPERTS 1
#define EXPERT_ROWS(b0) const int ex = 0;
#endif

// SKIP (dual-module inference, kernels/ops/dual.py; needs RELU): the little module's
// estimate of row o's pre-activation for image b is (A[o] . z[b]) * ascale[o] +
// abias[o] (A [O][RANK] stored as W is; z from little.cl), and an image whose estimate
// is below its expert's threshold[ex] gets the 0 that ReLU would give it, unread. A
// row's weights are read only when some image of the tile needs it: need[r] holds, as
// bits, the images of the tile that need row o0 + r. stats counts, for the bytes-read
// figures: [0] row reads, [1] images (counted by the work-items of row 0), [2] (image,
// row) outputs the big module computed.
#if SKIP
#if !RELU
#error "SKIP needs RELU"
#endif
#define SKIP_ARGS , __global const float *restrict z, __global const wtype *restrict A, \
    __global const float *restrict ascale, __global const float *restrict abias, \
    __global const float *restrict threshold, __global int *restrict stats
// A row of the little module's A against an image's z (16 lanes at a time); int16:
// A's planes lie wplane apart.
inline float estimate(__global const wtype *a, __global const float *z, const size_t wplane)
{
    float16 acc = 0;
    int k = 0;
    for (; k + 16 <= RANK; k += 16) acc = MAD(LOADW16(0, a + k), vload16(0, z + k), acc);
    float e = fsum16(acc);
    for (; k < RANK; ++k) e += LOADW(k, a) * z[k];
    return e;
}
#if GROUPED
#define LITTLE_ROWS(ex) \
    A += (size_t)(ex) * O * RANK; \
    ascale += (ex) * O; \
    abias += (ex) * O;
#else
#define LITTLE_ROWS(ex)
#endif
#define SENSITIVE(need, rows, o0, b0, first) \
    uint need[rows]; \
    { \
        LITTLE_ROWS(ex) \
        uint any = 0; \
        int reads = 0, computed = 0; \
        for (int r = 0; r < (rows); ++r) { \
            need[r] = 0; \
            const int row_ = min((o0) + r, O - 1); \
            for (int q = 0; q < RB && (b0) + q < B && (o0) + r < O; ++q) { \
                const float e = estimate(A + (size_t)row_ * RANK, z + (size_t)((b0) + q) * RANK, \
                                         (size_t)EXPERTS * O * RANK); \
                if (e * ascale[row_] + abias[row_] >= threshold[ex]) need[r] |= 1u << q; \
            } \
            any |= need[r]; \
            reads += need[r] != 0; \
            computed += popcount(need[r]); \
            if ((first) && !need[r] && (o0) + r < O) \
                for (int q = 0; q < RB && (b0) + q < B; ++q) \
                    Y[(size_t)((b0) + q) * O + (o0) + r] = 0.0f; \
        } \
        if (first) { \
            if ((o0) == 0) atomic_add(stats + 1, min(RB, B - (b0))); \
            if (reads) { \
                atomic_add(stats, reads); \
                atomic_add(stats + 2, computed); \
            } \
        } \
        if (!any) return; \
    }
#define KEEP(need, q, v) (((need) >> (q)) & 1u ? (v) : 0.0f)
#else
#define SKIP_ARGS
#define SENSITIVE(need, rows, o0, b0, first) \
    uint need[rows]; \
    for (int r = 0; r < (rows); ++r) need[r] = ~0u;
#define KEEP(need, q, v) (v)
#endif
// One work-item's RB images from b0 on (the last image repeated past B): its rows x[q]
// of X, and its running sums acc[q] and totals tot[q] zeroed; FLUSH_IMAGES moves the
// running sums into the totals (for int8, exactly: into int).
#define IMAGES(b0) \
    __global const float *x[RB]; \
    acc16 acc[RB]; \
    accs tot[RB]; \
    _Pragma("unroll") for (int q = 0; q < RB; ++q) { \
        x[q] = X + (size_t)min((b0) + q, B - 1) * I; \
        acc[q] = 0; \
        tot[q] = 0; \
    }
#define FLUSH_IMAGES \
    _Pragma("unroll") for (int q = 0; q < RB; ++q) { tot[q] += hsum(acc[q]); acc[q] = 0; }

// REQUANT (the integer pipeline, kernels/requant.py; int8 only, never with SKIP): the
// output is the next int8 layer's input, requantised from the int sums with integers
// only; REQUANT 1 writes bytes q + 128 (the next layer multiplies bytes, DOT4), 2
// floats q - zero (its float lanes). rmult, rshift, rbias: per row (grouped: the
// expert's rows, REQ_ROWS); rzero: the next layer's zero point, per expert.
#ifndef REQUANT
#define REQUANT 0
#endif
#if REQUANT
#if SKIP || QBITS != 8
#error "REQUANT: int8 layers without a little module"
#endif
#define REQ_ARGS , __global const int *restrict rmult, __global const int *restrict rshift, \
    __global const int *restrict rbias, __global const int *restrict rzero
#define REQ_PASS , rmult, rshift, rbias, rzero
#define REQ_ROWS(ex) rmult += (ex) * O; rshift += (ex) * O; rbias += (ex) * O; rzero += (ex);
inline int requant(const int s, const int m, const int sh, const int b, const int z)
{
    const long v = ((long)s + b) * m;
    long q = ((v + (1L << (sh - 1))) >> sh) + z;
#if RELU
    q = max(q, (long)z);
#endif
    return (int)clamp(q, -128L, 127L);
}
#define REQ(o, s) requant((s), rmult[o], rshift[o], rbias[o], rzero[0])
#if REQUANT == 1
#define OUT(need, q, b, o, s) ((__global uchar *)Y)[(size_t)(b) * O + (o)] = (uchar)(REQ(o, s) + 128)
#else
#define OUT(need, q, b, o, s) Y[(size_t)(b) * O + (o)] = (float)(REQ(o, s) - rzero[0])
#endif
#else
#define REQ_ARGS
#define REQ_PASS
#define REQ_ROWS(ex)
#define OUT(need, q, b, o, s) \
    Y[(size_t)(b) * O + (o)] = KEEP(need, q, ACT((float)(s) * scale[o] + bias[o]))
#endif

#define LINEAR_ARGS const int B, const int I, const int O, \
    __global const float *restrict X, __global const wtype *restrict W, \
    __global const float *restrict bias, __global const float *restrict scale, \
    __global float *restrict Y GROUP_ARGS SKIP_ARGS REQ_ARGS

#if defined(RO) && !DOT4
__kernel void linear(LINEAR_ARGS)
{
    const int o0 = get_global_id(0) * RO;
    const int b0 = get_global_id(1) * RB;
    PLANE((size_t)EXPERTS * O * I)
    EXPERT_ROWS(b0)
    SENSITIVE(need, RO, o0, b0, true)
    __global const wtype *w[RO];
    __global const float *x[RB];
#pragma unroll
    for (int r = 0; r < RO; ++r) w[r] = W + (size_t)min(o0 + r, O - 1) * I;
#pragma unroll
    for (int q = 0; q < RB; ++q) x[q] = X + (size_t)min(b0 + q, B - 1) * I;
    acc16 acc[RO][RB];
    accs tot[RO][RB];
#pragma unroll
    for (int r = 0; r < RO; ++r)
#pragma unroll
        for (int q = 0; q < RB; ++q) { acc[r][q] = 0; tot[r][q] = 0; }
    const int I16 = I & ~15;
    for (int i0 = 0; i0 < I16; i0 += 16 * QCHUNK) {
        const int i1 = min(I16, i0 + 16 * QCHUNK);
        for (int i = i0; i < i1; i += 16) {
            float16 xv[RB];
#pragma unroll
            for (int q = 0; q < RB; ++q) xv[q] = vload16(0, x[q] + i);
#pragma unroll
            for (int r = 0; r < RO; ++r) {
                if (!need[r]) continue;  // skipped (SKIP): its weights are not read
                const float16 wv = LOADW16(0, w[r] + i);
#pragma unroll
                for (int q = 0; q < RB; ++q) acc[r][q] = MACC(wv, xv[q], acc[r][q]);
            }
        }
        // Move each chunk's lanes into the total (for int8, exactly: into int).
#pragma unroll
        for (int r = 0; r < RO; ++r)
#pragma unroll
            for (int q = 0; q < RB; ++q) {
                tot[r][q] += hsum(acc[r][q]);
                acc[r][q] = 0;
            }
    }
#pragma unroll
    for (int r = 0; r < RO; ++r) {
        if (o0 + r >= O) break;
#pragma unroll
        for (int q = 0; q < RB; ++q) {
            if (b0 + q >= B) break;
            accs s = tot[r][q];
            if (!need[r]) break;
            for (int i = I16; i < I; ++i) s += (accs)LOADW(i, w[r]) * (accs)x[q][i];
            OUT(need[r], q, b0 + q, o0 + r, s);
        }
    }
}
#endif

#ifdef LS
#if REQUANT
#error "REQUANT: the CPU forms of linear only"
#endif
// GPUs: one work-group of LS work-items per output row and tile of RB images. The
// items split K between them (neighbours read neighbouring 16-element runs, so a
// warp's reads coalesce) and their totals are summed in local memory. The kernel
// above gives each work-item whole rows, which on a GPU is far too few work-items
// to keep its memory busy (fc6 at batch 1: 1024 items for 132 multiprocessors).
// Quantised sums stay exact: each lane still flushes every QCHUNK products, and
// integer totals add up in any order.
__kernel __attribute__((reqd_work_group_size(LS, 1, 1)))
void linear_split(LINEAR_ARGS)
{
    __local accs part[RB][LS];
    const int o = get_group_id(0);
    const int t = get_local_id(0);
    const int b0 = get_global_id(1) * RB;
    PLANE((size_t)EXPERTS * O * I)
    EXPERT_ROWS(b0)
    SENSITIVE(need, 1, o, b0, t == 0)
    __global const wtype *w = W + (size_t)o * I;
    IMAGES(b0)
    const int I16 = I & ~15;
    int added = 0;
    for (int i = 16 * t; i < I16; i += 16 * LS) {
        const float16 wv = LOADW16(0, w + i);
#pragma unroll
        for (int q = 0; q < RB; ++q) acc[q] = MACC(wv, vload16(0, x[q] + i), acc[q]);
        if (++added == QCHUNK) {
            FLUSH_IMAGES
            added = 0;
        }
    }
#pragma unroll
    for (int q = 0; q < RB; ++q) {
        tot[q] += hsum(acc[q]);
        for (int i = I16 + t; i < I; i += LS) tot[q] += (accs)LOADW(i, w) * (accs)x[q][i];
        part[q][t] = tot[q];
    }
    for (int step = LS / 2; step > 0; step >>= 1) {
        barrier(CLK_LOCAL_MEM_FENCE);
        if (t < step) {
#pragma unroll
            for (int q = 0; q < RB; ++q) part[q][t] += part[q][t + step];
        }
    }
    if (t == 0) {
#pragma unroll
        for (int q = 0; q < RB; ++q)
            if (b0 + q < B)
                Y[(size_t)(b0 + q) * O + o] =
                    KEEP(need[0], q, ACT((float)part[q][0] * scale[o] + bias[o]));
    }
}
#endif

#if defined(RO) && DOT4
#include "linear_dot4.h"
#endif

#if PACKED
// Grouped-precision weights (kernels/bitgroups.py, DPRed): row o's groups of 16 start
// at word off[o] of S; group g is w = (its nibble in wn) + 1 words, word b holding bit
// b of the group's 16 weights (weight j in bit j). A work-item decodes a row's groups
// into 16 lanes once for its RB images and sums them exactly as `linear` sums the
// plain int8 / int16 rows: the same integers, the same totals, the same epilogue.
__kernel void linear_packed(const int B, const int I, const int O,
                            __global const float *restrict X, __global const ushort *restrict S,
                            __global const uint *restrict off, __global const uchar *restrict wn,
                            __global const float *restrict bias,
                            __global const float *restrict scale,
                            __global float *restrict Y REQ_ARGS)
{
    const int o = get_global_id(0), b0 = get_global_id(1) * RB;
    if (o >= O) return;
    const int groups = (I + 15) / 16;
    __global const ushort *s = S + off[o];
    __global const uchar *nib = wn + (size_t)o * ((groups + 1) / 2);
    const short16 slane = (short16)(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    IMAGES(b0)
    int added = 0;
    for (int g = 0; g < groups; ++g) {
        const int w = ((nib[g >> 1] >> ((g & 1) << 2)) & 15) + 1;
        // Bit b of lane j: word b shifted right by j; a fixed, unrolled loop over the
        // precision's bits (words past w not read) runs faster than one of w steps.
        short16 v = 0;
#pragma unroll
        for (int b = 0; b < QBITS; ++b)
            if (b < w) v |= (((short16)(short)s[b] >> slane) & (short16)1) << (short16)b;
        s += w;
        const short16 up = (short16)(16 - w);
        const float16 wv = convert_float16((v << up) >> up);  // w-bit two's complement
        const int i = 16 * g;
        if (i + 16 <= I) {
#pragma unroll
            for (int q = 0; q < RB; ++q) acc[q] = MACC(wv, vload16(0, x[q] + i), acc[q]);
        } else {  // the last, partial group: X ends at I
            float wl[16];
            vstore16(wv, 0, wl);
#pragma unroll
            for (int q = 0; q < RB; ++q)
                for (int e = 0; i + e < I; ++e) tot[q] += (accs)wl[e] * (accs)x[q][i + e];
        }
        if (++added == QCHUNK) {
            FLUSH_IMAGES
            added = 0;
        }
    }
#pragma unroll
    for (int q = 0; q < RB; ++q) {
        if (b0 + q >= B) break;
        const accs t = tot[q] + hsum(acc[q]);
        OUT(~0u, q, b0 + q, o, t);
    }
}
#endif

#if QBITS
// X as quantised offsets q - zero (precision.h), for the kernels above; DOT4: as
// bytes q + 128.
#if DOT4
#define QTYPE uchar
#define QSTORE(v) QBYTE(v)
#else
#define QTYPE float
#define QSTORE(v) QX(v, )
#endif
__kernel void quantize_input(__global const float *restrict x, __global QTYPE *restrict y,
                             const int count, const int I, QARGS)
{
    const int i = get_global_id(0);
    if (i >= count) return;
    QPARAMS(i / I)
    y[i] = QSTORE(x[i]);
}
#endif
