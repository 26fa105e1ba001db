// Dual-module inference's little module (kernels/ops/dual.py). Arithmetic is float:
// the weights are stored as the layer's own are (precision.h's wtype and LOADW;
// quantised ones with a scale per row), but an estimate needs no exact sums, so the
// input is not quantised for it.
//  - little_project: the projection z[b][r] = (P[r] . x_b) * pscale[r] + shift[r], one
//    work-item per (r, b), for linear.cl's SKIP (GPUs, and CPU layers too wide for
//    dual_linear) or for dual_linear (PROJECTED).
//  - dual_linear (CPUs): estimate = A z for its rows, 16 at a time, then the rows
//    wanted computed as linear.cl's `linear` computes them (the same sums in the same
//    order, so the same outputs) but four at a time from a list, never branching
//    inside a row. Without PROJECTED it projects its image itself, all of it in one
//    launch: for small layers, where a launch costs as much as the arithmetic (a
//    mixture's experts); every work-item of an image repeats the projection, so it
//    takes many rows to pay for it.
// GROUPED (a mixture's experts, rows sorted by expert as linear.cl's): row b takes
// expert ex's weights; rows past seg[experts] are left alone.
// Defines: RANK, GROUPED, WEIGHT_HALF, QBITS, DOT4 (precision.h), ROWS, IN, PROJECTED.
#include "precision.h"

#if GROUPED
#define GROUP_ARGS , __global const int *restrict seg, const int experts
#define EXPERTS experts
#define EXPERT_OF(b) \
    if ((b) >= seg[experts]) return; \
    int ex = 0; \
    while ((b) >= seg[ex + 1]) ++ex;
#else
#define GROUP_ARGS
#define EXPERTS 1
#define EXPERT_OF(b) const int ex = 0;
#endif

// A row p of P against an image x (16 lanes at a time); int16: planes wplane apart.
inline float project(__global const wtype *p, __global const float *x, const int I,
                     const size_t wplane)
{
    const int I16 = I & ~15;
    float16 acc = 0;
    for (int i = 0; i < I16; i += 16) acc = MAD(LOADW16(0, p + i), vload16(0, x + i), acc);
    float s = fsum16(acc);
    for (int i = I16; i < I; ++i) s += LOADW(i, p) * x[i];
    return s;
}

__kernel void little_project(const int I, __global const float *restrict X,
                             __global const wtype *restrict P, __global const float *restrict pscale,
                             __global const float *restrict shift, __global float *restrict Z GROUP_ARGS)
{
    const int r = get_global_id(0), b = get_global_id(1);
    EXPERT_OF(b)
    P += (size_t)ex * RANK * I;
    const float s = project(P + (size_t)r * I, X + (size_t)b * I, I, (size_t)EXPERTS * RANK * I);
    Z[(size_t)b * RANK + r] = s * pscale[ex * RANK + r] + shift[ex * RANK + r];
}

#ifdef ROWS
#define R16 ((RANK + 15) / 16)  // float16s of a projection

// Work-item (g, b): image b, rows [g ROWS, (g + 1) ROWS), ROWS a multiple of 16. The
// little module comes transposed, its rows padded with zeros to a multiple of 16
// (dual.py's _transposed): A^T [RANK][O16], ascale and abias [O16]; P^T [IN][16 R16],
// pscale and shift [16 R16] (grouped: each expert's in turn). So 16 rows' estimates,
// or 16 projections, are one float16: no lanes are summed across. PROJECTED: Z [B][RANK]
// from little_project instead. Quantised: the work-item quantises x itself (IN
// elements) with the expert's qp[2 ex] (qinv) and qp[2 ex + 1] (qzero), as
// quantize_input would. stats as linear.cl's SKIP counts them.
#if DOT4
// The rows wanted on AVX-512 VNNI (linear.cl's linear_dot4, four rows at a time): x
// as bytes q + 128 (xb), each row's sum less corr[o]. The same integers as `linear`.
TARGET void wanted_dot4(const int computed, const int *need, __global const char *W, const int I,
                        const uchar *xb, __global const int *corr, __global const float *scale,
                        __global const float *bias, __global float *y)
{
    const int I64 = I & ~63;
    for (int j = 0; j < computed; j += 4) {
        __global const char *w[4];
        int16 acc[4];
#pragma unroll
        for (int r = 0; r < 4; ++r) {
            w[r] = W + (size_t)need[min(j + r, computed - 1)] * I;
            acc[r] = 0;
        }
        for (int i = 0; i < I64; i += 64) {
            const int16 xv = vload16(0, (const int *)(xb + i));
#pragma unroll
            for (int r = 0; r < 4; ++r)
                acc[r] = DOT4_MAC(acc[r], xv, vload16(0, (__global const int *)(w[r] + i)));
        }
        for (int r = 0; r < 4 && j + r < computed; ++r) {
            const int o = need[j + r];
            const int8 s8 = acc[r].lo + acc[r].hi;
            const int4 s4 = s8.lo + s8.hi;
            int s = s4.x + s4.y + s4.z + s4.w - corr[o];
            for (int i = I64; i < I; ++i) s += (int)w[r][i] * (int)xb[i];
            y[o] = fmax((float)s * scale[o] + bias[o], 0.0f);
        }
    }
}
#define CORR_ARG , __global const int *restrict corr
#else
#define CORR_ARG
#endif

#if PROJECTED
#define LITTLE_ARGS __global const float *restrict Z
#else
#define LITTLE_ARGS __global const wtype *restrict PT, __global const float *restrict pscale, \
    __global const float *restrict shift
#endif
__kernel void dual_linear(const int B, const int I, const int O,
                          __global const float *restrict X, __global const wtype *restrict W,
                          __global const float *restrict bias, __global const float *restrict scale,
                          __global float *restrict Y, LITTLE_ARGS,
                          __global const wtype *restrict AT, __global const float *restrict ascale,
                          __global const float *restrict abias, __global const float *restrict threshold,
                          __global int *restrict stats, __global const float *restrict qp CORR_ARG
                          GROUP_ARGS)
{
    const int o0 = get_global_id(0) * ROWS, b = get_global_id(1);
    EXPERT_OF(b)
    const int O16 = (O + 15) & ~15;
    __global const float *x = X + (size_t)b * I;
    float z[16 * R16];
#if PROJECTED
    for (int k = 0; k < RANK; ++k) z[k] = Z[(size_t)b * RANK + k];
#else
    {
        PLANE((size_t)EXPERTS * I * 16 * R16)
        __global const wtype *pt = PT + (size_t)ex * I * 16 * R16;
        float16 acc[R16];
        for (int c = 0; c < R16; ++c) acc[c] = 0;
        for (int i = 0; i < I; ++i)
            for (int c = 0; c < R16; ++c)
                acc[c] = MAD(LOADW16(0, pt + ((size_t)i * R16 + c) * 16), (float16)x[i], acc[c]);
        for (int c = 0; c < R16; ++c)
            vstore16(acc[c] * vload16(ex * R16 + c, pscale) + vload16(ex * R16 + c, shift), c, z);
    }
#endif
#if QBITS  // x quantised once for all the rows (quantize_input's QX), kept private
    const float qinv = qp[2 * ex], qzero = qp[2 * ex + 1];
#if DOT4  // as bytes q + 128, 4 to a uint
    uint xw[(IN + 63) / 64 * 16];
    uchar *xb = (uchar *)xw;
    for (int i = 0; i < (I & ~15); i += 16)
        vstore16(convert_uchar16(QX(vload16(0, x + i)) + qzero + 128.0f), 0, xb + i);
    for (int i = I & ~15; i < I; ++i) xb[i] = QBYTE(x[i]);
#else
    float xq[(IN + 15) & ~15];
    for (int i = 0; i < (I & ~15); i += 16) vstore16(QX(vload16(0, x + i)), 0, xq + i);
    for (int i = I & ~15; i < I; ++i) xq[i] = QX(x[i]);
#endif
#else
#define xq x
#endif
    // Decide every row first, 16 at a time, then compute the rows wanted 4 at a time:
    // they lie scattered, and 4 independent streams keep more misses in flight.
    int need[ROWS];
    int computed = 0;
    {
        PLANE((size_t)EXPERTS * RANK * O16)
        __global const wtype *at = AT + (size_t)ex * RANK * O16;
        const float thr = threshold[ex];
        const int end = min(o0 + ROWS, O);
        for (int o = o0; o < end; o += 16) {
            float16 e = 0;
            for (int k = 0; k < RANK; ++k) e = MAD(LOADW16(0, at + (size_t)k * O16 + o), (float16)z[k], e);
            float est[16];
            vstore16(e * vload16(0, ascale + ex * O16 + o) + vload16(0, abias + ex * O16 + o), 0, est);
            for (int l = 0; l < 16 && o + l < end; ++l) {
                if (est[l] >= thr)
                    need[computed++] = o + l;
                else
                    Y[(size_t)b * O + o + l] = 0.0f;
            }
        }
    }
    PLANE((size_t)EXPERTS * O * I)
    W += (size_t)ex * O * I;
#if DOT4
    const int e0 = ex * O;
    wanted_dot4(computed, need, W, I, xb, corr + e0, scale + e0, bias + e0, Y + (size_t)b * O);
#else
    const int I16 = I & ~15;
    for (int j = 0; j < computed; j += 4) {
        __global const wtype *w[4];
        acc16 acc[4];
        accs tot[4];
#pragma unroll
        for (int r = 0; r < 4; ++r) {  // past the last row wanted: it again, unwritten
            w[r] = W + (size_t)need[min(j + r, computed - 1)] * I;
            acc[r] = 0;
            tot[r] = 0;
        }
        for (int i0 = 0; i0 < I16; i0 += 16 * QCHUNK) {
            const int i1 = min(I16, i0 + 16 * QCHUNK);
            for (int i = i0; i < i1; i += 16) {
                const float16 xv = vload16(0, xq + i);
#pragma unroll
                for (int r = 0; r < 4; ++r) acc[r] = MACC(LOADW16(0, w[r] + i), xv, acc[r]);
            }
#pragma unroll
            for (int r = 0; r < 4; ++r) {
                tot[r] += hsum(acc[r]);
                acc[r] = 0;
            }
        }
        for (int r = 0; r < 4 && j + r < computed; ++r) {
            const int o = need[j + r];
            for (int i = I16; i < I; ++i) tot[r] += (accs)LOADW(i, w[r]) * (accs)xq[i];
            const int eo = ex * O + o;
            Y[(size_t)b * O + o] = fmax((float)tot[r] * scale[eo] + bias[eo], 0.0f);
        }
    }
#endif
    if (o0 == 0) atomic_inc(stats + 1);
    if (computed) {
        atomic_add(stats, computed);
        atomic_add(stats + 2, computed);
    }
}
#endif
