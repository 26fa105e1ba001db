// Register-blocked GEMM for CPUs: C[M][N] = A[M][K] x B[K][N] (+ bias, ReLU).
//
// A (the weights) is packed at load time as [M/8][K][8]; B comes in panels of NB =
// 16*NV columns laid out [K][NB], so a work-item streams two contiguous panels and
// keeps an 8 x NB block of C in 8*NV float16 registers: each k step broadcasts 8
// scalars of A against NV vectors of B. No local-memory tiling: on PoCL's CPU
// device GPU-style tiles ran 10x slower than this (see OPENCL-NOTES).
//
// Two entry points share the inner block:
//  - conv_packed: implicit-GEMM convolution. A work-group (one work-item) gathers its
//    B panel (K x NB columns of im2col) from the input into local memory, which on a
//    CPU is a cache-resident scratch area, then runs a range of row blocks over it.
//    The im2col matrix is never written to global memory.
//  - gemm_packed: B already packed in global memory (the im2col fallback for devices
//    whose local memory cannot hold a panel).
// C rows start at c_row0 (a group of a grouped convolution writes its own rows).
// Defines: NV (1, 2 or 3), RELU (0/1), MAD (fma or mad, see runtime.py), WEIGHT_HALF
// (A stored as half, precision.h).
#include "precision.h"

#define NB (16 * NV)

#if NV == 3
#define ACC(r) float16 c##r##0 = 0.0f, c##r##1 = 0.0f, c##r##2 = 0.0f;
#define FMA(r, s) { float16 t = (float16)(a8.s); c##r##0 = MAD(t, b0, c##r##0); \
    c##r##1 = MAD(t, b1, c##r##1); c##r##2 = MAD(t, b2, c##r##2); }
#define LOADB(p) float16 b0 = vload16(0, p), b1 = vload16(1, p), b2 = vload16(2, p);
#define VECS(r) float16 v[3] = {c##r##0, c##r##1, c##r##2};
#elif NV == 1
#define ACC(r) float16 c##r##0 = 0.0f;
#define FMA(r, s) { c##r##0 = MAD((float16)(a8.s), b0, c##r##0); }
#define LOADB(p) float16 b0 = vload16(0, p);
#define VECS(r) float16 v[1] = {c##r##0};
#else
#define ACC(r) float16 c##r##0 = 0.0f, c##r##1 = 0.0f;
#define FMA(r, s) { float16 t = (float16)(a8.s); c##r##0 = MAD(t, b0, c##r##0); \
    c##r##1 = MAD(t, b1, c##r##1); }
#define LOADB(p) float16 b0 = vload16(0, p), b1 = vload16(1, p);
#define VECS(r) float16 v[2] = {c##r##0, c##r##1};
#endif

#if RELU
#define ACT(x) fmax((x), 0.0f)
#else
#define ACT(x) (x)
#endif

// Row r of the block goes to C row c_row0 + m0 + r; the last panel may be cut at N.
#define STORE(r) if (m0 + r < M) { VECS(r) \
    const float bb = bias[m0 + r]; \
    __global float *o = C + (size_t)(c_row0 + m0 + r) * ldc + n0; \
    if (n0 + NB <= N) { for (int q = 0; q < NV; ++q) vstore16(ACT(v[q] + bb), q, o); } \
    else { for (int q = 0; q < NV; ++q) for (int e = 0; e < 16; ++e) \
        if (n0 + 16 * q + e < N) o[16 * q + e] = ACT(v[q][e] + bb); } }

// One 8 x NB block of C: rows m0.. from A panel `a`, columns n0.. from B panel `bp`.
#define BLOCK(bp) { \
    ACC(0) ACC(1) ACC(2) ACC(3) ACC(4) ACC(5) ACC(6) ACC(7) \
    for (int k = 0; k < K; ++k) { \
        LOADB((bp) + k * NB) \
        const float8 a8 = LOADW8(k, a); \
        FMA(0, s0) FMA(1, s1) FMA(2, s2) FMA(3, s3) FMA(4, s4) FMA(5, s5) FMA(6, s6) FMA(7, s7) \
    } \
    STORE(0) STORE(1) STORE(2) STORE(3) STORE(4) STORE(5) STORE(6) STORE(7) }

// Dimension 2 runs independent GEMMs (Winograd's 16) whose A, B and C lie the given
// strides (in floats) apart.
__kernel void gemm_packed(const int M, const int N, const int K,
                          __global const wtype *restrict Ap,
                          __global const float *restrict Bp,
                          __global const float *restrict bias,
                          __global float *restrict C, const int ldc, const int c_row0,
                          const int a_stride, const int b_stride, const int c_stride)
{
    const int mt = get_global_id(0);  // row blocks fastest: they share one B panel in cache
    const int nt = get_global_id(1);
    const int e = get_global_id(2);
    const int m0 = mt * 8, n0 = nt * NB;
    __global const wtype *a = Ap + (size_t)e * a_stride + (size_t)mt * K * 8;
    __global const float *bp = Bp + (size_t)e * b_stride + (size_t)nt * K * NB;
    C += (size_t)e * c_stride;
    BLOCK(bp)
}

// x: the (padded) input [C][N][HP][WP]; columns n = (b * OH + oy) * OW + ox.
__kernel void conv_packed(const int M, const int N, const int K,
                          __global const wtype *restrict Ap,
                          __global const float *restrict x,
                          __global const float *restrict bias,
                          __global float *restrict C, const int ldc, const int c_row0,
                          const int batch, const int HP, const int WP, const int c0,
                          const int KH, const int KW, const int SH, const int SW,
                          const int OH, const int OW, const int blocks_per_item,
                          __local float *restrict panel)
{
    const int nt = get_global_id(0);
    const int part = get_global_id(1);
    const int n0 = nt * NB;
    // Gather the panel: column t reads the input window at off[t]; columns past N
    // repeat the last one (computed, never stored).
    int off[NB];
    for (int t = 0; t < NB; ++t) {
        const int n = min(n0 + t, N - 1);
        const int b = n / (OH * OW), rem = n % (OH * OW);
        off[t] = (b * HP + (rem / OW) * SH) * WP + (rem % OW) * SW;
    }
    const size_t plane = (size_t)batch * HP * WP;
    const int cg = K / (KH * KW);
    __local float *dst = panel;
    for (int c = 0; c < cg; ++c) {
        for (int i = 0; i < KH; ++i) {
            for (int j = 0; j < KW; ++j) {
                __global const float *src = x + (c0 + c) * plane + i * WP + j;
                for (int t = 0; t < NB; ++t) dst[t] = src[off[t]];
                dst += NB;
            }
        }
    }
    const int blocks = (M + 7) / 8;
    const int mt1 = min((part + 1) * blocks_per_item, blocks);
    for (int mt = part * blocks_per_item; mt < mt1; ++mt) {
        const int m0 = mt * 8;
        __global const wtype *a = Ap + (size_t)mt * K * 8;
        BLOCK(panel)
    }
}
