// Dual-module inference's little module (kernels/ops/dual.py). Arithmetic is float:
// the weights are stored as the layer's own are (precision.h's wtype and LOADW;
// quantised ones with a scale per row), but an estimate needs no exact sums, so the
// input is not quantised.
//  - little_project: the projection z[b][r] = (P[r] . x_b) * pscale[r] + shift[r], one
//    work-item per (r, b); the rest, estimate = A z, runs inside the big layer's
//    kernel (linear.cl's SKIP), on the rows it decides about. Two launches: for layers
//    whose weight streaming dwarfs a launch.
//  - dual_linear (FUSED_RO): all of it in one launch, for small layers, where a launch
//    costs as much as the arithmetic (a mixture's experts): each work-item projects
//    its image itself (RANK x I products, repeated by every work-item of the image,
//    so it takes FUSED_RO rows to pay for that) and computes its rows as linear.cl's
//    `linear` does, row by row: the same sums in the same order, so the same outputs.
// GROUPED (a mixture's experts, rows sorted by expert as linear.cl's): row b takes
// expert ex's weights; rows past seg[experts] are left alone.
// Defines: RANK, GROUPED, WEIGHT_HALF, QBITS (precision.h), FUSED_RO, FUSED_I.
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

#ifdef FUSED_RO
// linear.cl's `estimate` on a private z.
inline float estimate(__global const wtype *a, const float *z, const size_t wplane)
{
    float16 acc = 0;
    int k = 0;
    for (; k + 16 <= RANK; k += 16) acc = MAD(LOADW16(0, a + k), vload16(0, z + k), acc);
    float e = fsum16(acc);
    for (; k < RANK; ++k) e += LOADW(k, a) * z[k];
    return e;
}

// Work-item (g, b): image b, rows [g FUSED_RO, (g + 1) FUSED_RO). Quantised: the
// work-item quantises x itself (FUSED_I = I elements) with the expert's qp[2 ex]
// (qinv) and qp[2 ex + 1] (qzero), as quantize_input would; stats as linear.cl's
// SKIP counts them.
__kernel void dual_linear(const int B, const int I, const int O,
                          __global const float *restrict X, __global const wtype *restrict W,
                          __global const float *restrict bias, __global const float *restrict scale,
                          __global float *restrict Y, __global const wtype *restrict P,
                          __global const float *restrict pscale, __global const float *restrict shift,
                          __global const wtype *restrict A, __global const float *restrict ascale,
                          __global const float *restrict abias, __global const float *restrict threshold,
                          __global int *restrict stats, __global const float *restrict qp GROUP_ARGS)
{
    const int o0 = get_global_id(0) * FUSED_RO, b = get_global_id(1);
    EXPERT_OF(b)
    __global const float *x = X + (size_t)b * I;
    float z[RANK];
    P += (size_t)ex * RANK * I;
    for (int r = 0; r < RANK; ++r)
        z[r] = project(P + (size_t)r * I, x, I, (size_t)EXPERTS * RANK * I) * pscale[ex * RANK + r] +
               shift[ex * RANK + r];
#if QBITS  // x quantised once for all the rows (quantize_input's QX), kept private
    const float qinv = qp[2 * ex], qzero = qp[2 * ex + 1];
    float xq[FUSED_I];
    for (int i = 0; i < I; ++i) xq[i] = QX(x[i]);
#else
#define xq x
#endif
    PLANE((size_t)EXPERTS * O * I)
    W += (size_t)ex * O * I;
    A += (size_t)ex * O * RANK;
    const int e0 = ex * O;
    const float thr = threshold[ex];
    // Decide every row first, then compute the rows wanted 4 at a time: they lie
    // scattered, and 4 independent streams keep more misses in flight than one.
    int need[FUSED_RO];
    int computed = 0;
    for (int o = o0; o < min(o0 + FUSED_RO, O); ++o) {
        const float e = estimate(A + (size_t)o * RANK, z, (size_t)EXPERTS * O * RANK);
        if (e * ascale[e0 + o] + abias[e0 + o] >= thr)
            need[computed++] = o;
        else
            Y[(size_t)b * O + o] = 0.0f;
    }
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
            Y[(size_t)b * O + o] = fmax((float)tot[r] * scale[e0 + o] + bias[e0 + o], 0.0f);
        }
    }
    if (o0 == 0) atomic_inc(stats + 1);
    if (computed) {
        atomic_add(stats, computed);
        atomic_add(stats + 2, computed);
    }
}
#endif
