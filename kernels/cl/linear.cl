// Fully connected layer: Y[b][o] = X[b][:] . W[o][:] + bias[o] (ReLU optional).
// Weights stay out x in (rows contiguous along K): at small batch this layer only
// streams its weights, so each work-item takes RO rows of W and dots them with RB
// rows of X, reading every weight once per batch tile. Defines: RO, RB, RELU,
// WEIGHT_HALF (precision.h).
#include "precision.h"

#if RELU
#define ACT(x) fmax((x), 0.0f)
#else
#define ACT(x) (x)
#endif

__kernel void linear(const int B, const int I, const int O,
                     __global const float *restrict X, __global const wtype *restrict W,
                     __global const float *restrict bias, __global float *restrict Y)
{
    const int o0 = get_global_id(0) * RO;
    const int b0 = get_global_id(1) * RB;
    __global const wtype *w[RO];
    __global const float *x[RB];
#pragma unroll
    for (int r = 0; r < RO; ++r) w[r] = W + (size_t)min(o0 + r, O - 1) * I;
#pragma unroll
    for (int q = 0; q < RB; ++q) x[q] = X + (size_t)min(b0 + q, B - 1) * I;
    float16 acc[RO][RB];
#pragma unroll
    for (int r = 0; r < RO; ++r)
#pragma unroll
        for (int q = 0; q < RB; ++q) acc[r][q] = 0.0f;
    const int I16 = I & ~15;
    for (int i = 0; i < I16; i += 16) {
        float16 xv[RB];
#pragma unroll
        for (int q = 0; q < RB; ++q) xv[q] = vload16(0, x[q] + i);
#pragma unroll
        for (int r = 0; r < RO; ++r) {
            const float16 wv = LOADW16(0, w[r] + i);
#pragma unroll
            for (int q = 0; q < RB; ++q) acc[r][q] = MAD(wv, xv[q], acc[r][q]);
        }
    }
#pragma unroll
    for (int r = 0; r < RO; ++r) {
        if (o0 + r >= O) break;
#pragma unroll
        for (int q = 0; q < RB; ++q) {
            if (b0 + q >= B) break;
            const float16 a = acc[r][q];
            float8 s8 = a.lo + a.hi;
            float4 s4 = s8.lo + s8.hi;
            float s = s4.x + s4.y + s4.z + s4.w;
            for (int i = I16; i < I; ++i) s += LOADW(i, w[r]) * x[q][i];
            Y[(size_t)(b0 + q) * O + o0 + r] = ACT(s + bias[o0 + r]);
        }
    }
}
