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
//    takes many rows to pay for it. The body is cl/dual_layer.h, a template.
//  - dual_pair (CPUs, PAIR): two such layers, the first feeding the second, in one
//    launch, one work-item an image.
// GROUPED (a mixture's experts, rows sorted by expert as linear.cl's): row b takes
// expert ex's weights; rows past seg[experts] are left alone.
// Defines: RANK, GROUPED, WEIGHT_HALF, QBITS, DOT4 (precision.h), ROWS, IN, PROJECTED;
// PAIR with RANK2, IN2, ROWS2.
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
#define LITTLE Z
#else
#define LITTLE_ARGS __global const wtype *restrict PT, __global const float *restrict pscale, \
    __global const float *restrict shift
#define LITTLE PT, pscale, shift
#endif
#if DOT4
#define CORR , corr
#else
#define CORR
#endif

#if PAIR
// dual_pair: a fused layer and the fused layer it feeds (fc6 and fc7 of a mixture's
// experts) in one launch, one work-item an image: the first layer's output H row is
// written and then read by the same work-item, so nothing waits between the layers.
// The first layer takes RANK, IN, ROWS (all its rows), the second RANK2, IN2, ROWS2.
#define L_FN dual_first
#define L_RANK RANK
#define L_IN IN
#define L_ROWS ROWS
#define L_PROJECTED 0
#include "dual_layer.h"
#undef L_FN
#undef L_RANK
#undef L_IN
#undef L_ROWS
#define L_FN dual_second
#define L_RANK RANK2
#define L_IN IN2
#define L_ROWS ROWS2
#include "dual_layer.h"
#if DOT4
#define CORR_ARG2 , __global const int *restrict corr2
#define CORR2 , corr2
#else
#define CORR_ARG2
#define CORR2
#endif

inline void count(__global int *stats, const int computed)
{
    atomic_inc(stats + 1);
    if (computed) {
        atomic_add(stats, computed);
        atomic_add(stats + 2, computed);
    }
}

__kernel void dual_pair(const int B, const int I, const int O, const int O2,
                        __global const float *restrict X, __global const wtype *restrict W,
                        __global const float *restrict bias, __global const float *restrict scale,
                        __global float *restrict H, __global const wtype *restrict PT,
                        __global const float *restrict pscale, __global const float *restrict shift,
                        __global const wtype *restrict AT, __global const float *restrict ascale,
                        __global const float *restrict abias, __global const float *restrict threshold,
                        __global int *restrict stats, __global const float *restrict qp CORR_ARG,
                        __global const wtype *restrict W2, __global const float *restrict bias2,
                        __global const float *restrict scale2, __global float *restrict Y,
                        __global const wtype *restrict PT2, __global const float *restrict pscale2,
                        __global const float *restrict shift2, __global const wtype *restrict AT2,
                        __global const float *restrict ascale2, __global const float *restrict abias2,
                        __global const float *restrict threshold2, __global int *restrict stats2,
                        __global const float *restrict qp2 CORR_ARG2 GROUP_ARGS)
{
    const int b = get_global_id(1);
    EXPERT_OF(b)
    __global float *h = H + (size_t)b * O;
    count(stats, dual_first(b, ex, EXPERTS, 0, I, O, X + (size_t)b * I, W, bias, scale, h, PT,
                            pscale, shift, AT, ascale, abias, threshold, qp CORR));
    count(stats2, dual_second(b, ex, EXPERTS, 0, O, O2, h, W2, bias2, scale2, Y + (size_t)b * O2,
                              PT2, pscale2, shift2, AT2, ascale2, abias2, threshold2, qp2 CORR2));
}
#else
#define L_FN dual_layer
#define L_RANK RANK
#define L_IN IN
#define L_ROWS ROWS
#define L_PROJECTED PROJECTED
#include "dual_layer.h"
#undef L_FN
#undef L_RANK
#undef L_IN
#undef L_ROWS
#undef L_PROJECTED

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
    const int computed = dual_layer(b, ex, EXPERTS, o0, I, O, X + (size_t)b * I, W, bias, scale,
                                    Y + (size_t)b * O, LITTLE, AT, ascale, abias, threshold, qp CORR);
    if (o0 == 0) atomic_inc(stats + 1);
    if (computed) {
        atomic_add(stats, computed);
        atomic_add(stats + 2, computed);
    }
}
#endif  // PAIR
#endif
