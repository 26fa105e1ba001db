// The projection of dual-module inference's little module (kernels/ops/dual.py):
// z[b][r] = (P[r] . x_b) * pscale[r] + shift[r], one work-item per (r, b). The rest of
// the little module, estimate = A z, runs inside the big layer's kernel (linear.cl's
// SKIP), on the rows it decides about. Arithmetic is float: the weights are stored as
// the layer's own are (precision.h's wtype and LOADW; quantised ones with a scale per
// row), but an estimate needs no exact sums, so the input is not quantised.
// GROUPED (a mixture's experts, rows sorted by expert as linear.cl's): row b takes
// expert ex's P, pscale and shift; rows past seg[experts] are left alone.
// Defines: RANK, GROUPED, WEIGHT_HALF, QBITS (precision.h).
#include "precision.h"

#if GROUPED
#define GROUP_ARGS , __global const int *restrict seg, const int experts
#else
#define GROUP_ARGS
#endif

__kernel void little_project(const int I, __global const float *restrict X,
                             __global const wtype *restrict P, __global const float *restrict pscale,
                             __global const float *restrict shift, __global float *restrict Z GROUP_ARGS)
{
    const int r = get_global_id(0), b = get_global_id(1);
    PLANE((size_t)RANK * I)  // int16 runs ungrouped
#if GROUPED
    if (b >= seg[experts]) return;
    int ex = 0;
    while (b >= seg[ex + 1]) ++ex;
    P += (size_t)ex * RANK * I;
    pscale += ex * RANK;
    shift += ex * RANK;
#endif
    __global const float *x = X + (size_t)b * I;
    __global const wtype *p = P + (size_t)r * I;
    const int I16 = I & ~15;
    float16 acc = 0;
    for (int i = 0; i < I16; i += 16) acc = MAD(LOADW16(0, p + i), vload16(0, x + i), acc);
    float s = fsum16(acc);
    for (int i = I16; i < I; ++i) s += LOADW(i, p) * x[i];
    Z[(size_t)b * RANK + r] = s * pscale[r] + shift[r];
}
