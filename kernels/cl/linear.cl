// Fully connected layer: Y[b][o] = X[b][:] . W[o][:] * scale[o] + bias[o] (ReLU
// optional; scale is 1 for float precisions, weight scale * input scale quantised).
// Weights stay out x in (rows contiguous along K): at small batch this layer only
// streams its weights, so each work-item takes RO rows of W and dots them with RB
// rows of X, reading every weight once per batch tile. Quantised precisions get X
// already quantised (quantize_input, once per layer rather than once per row tile)
// and accumulate exactly (precision.h).
// Defines: RO, RB, RELU, WEIGHT_HALF, QBITS (precision.h).
#include "precision.h"

#if RELU
#define ACT(x) fmax((x), 0.0f)
#else
#define ACT(x) (x)
#endif

#ifdef RO
// GROUPED (a mixture's experts in one launch, RB = 1): row b belongs to expert x
// (rows [seg[x], seg[x + 1])), whose W, bias and scale lie x * O rows on; rows past
// seg[experts] pad the batch and are left alone.
__kernel void linear(const int B, const int I, const int O,
                     __global const float *restrict X, __global const wtype *restrict W,
                     __global const float *restrict bias, __global const float *restrict scale,
                     __global float *restrict Y
#if GROUPED
                     , __global const int *restrict seg, const int experts
#endif
                     )
{
    const int o0 = get_global_id(0) * RO;
    const int b0 = get_global_id(1) * RB;
#if GROUPED
    if (b0 >= seg[experts]) return;  // a padding row: no expert's
    int ex = 0;
    while (b0 >= seg[ex + 1]) ++ex;
    W += (size_t)ex * O * I;
    bias += ex * O;
    scale += ex * O;
#endif
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
            for (int i = I16; i < I; ++i) s += (accs)LOADW(i, w[r]) * (accs)x[q][i];
            Y[(size_t)(b0 + q) * O + o0 + r] = ACT((float)s * scale[o0 + r] + bias[o0 + r]);
        }
    }
}
#endif

#if QBITS
// X as quantised offsets q - zero (precision.h), for the kernel above.
__kernel void quantize_input(__global const float *restrict x, __global float *restrict y,
                             const int count, const float qinv, const float qzero)
{
    const int i = get_global_id(0);
    if (i < count) y[i] = QX(x[i]);
}
#endif
