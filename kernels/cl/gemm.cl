// Register-blocked GEMM for the CPU: C[M][N] = A[M][K] x B[K][N] (+ bias, ReLU).
//
// A (the weights) is packed at load time as [M/8][K][8] and B (im2col columns) as
// [N/NB][K][NB], NB = 16*NV, so every work-item streams two contiguous panels and
// keeps an 8 x NB block of C in 8*NV float16 registers: each k step broadcasts 8
// scalars of A against NV vectors of B. No local memory: on PoCL's CPU device
// local-memory tiling was 10x slower than this (see OPENCL-NOTES).
// C rows start at c_row0 (a group of a grouped convolution writes its own rows).
// Defines: NV (2 or 3), RELU (0/1).
#define NB (16 * NV)

#if NV == 3
#define ACC(r) float16 c##r##0 = 0.0f, c##r##1 = 0.0f, c##r##2 = 0.0f;
#define FMA(r, s) { float16 t = (float16)(a8.s); c##r##0 = mad(t, b0, c##r##0); \
    c##r##1 = mad(t, b1, c##r##1); c##r##2 = mad(t, b2, c##r##2); }
#define LOADB float16 b0 = vload16(0, b), b1 = vload16(1, b), b2 = vload16(2, b);
#define VECS(r) float16 v[3] = {c##r##0, c##r##1, c##r##2};
#else
#define ACC(r) float16 c##r##0 = 0.0f, c##r##1 = 0.0f;
#define FMA(r, s) { float16 t = (float16)(a8.s); c##r##0 = mad(t, b0, c##r##0); \
    c##r##1 = mad(t, b1, c##r##1); }
#define LOADB float16 b0 = vload16(0, b), b1 = vload16(1, b);
#define VECS(r) float16 v[2] = {c##r##0, c##r##1};
#endif

#if RELU
#define ACT(x) fmax((x), 0.0f)
#else
#define ACT(x) (x)
#endif

// Row r of the block goes to C row m0 + r; the last panel may be cut at N.
#define STORE(r) if (m0 + r < M) { VECS(r) \
    const float bb = bias[m0 + r]; \
    __global float *o = C + (size_t)(c_row0 + m0 + r) * ldc + n0; \
    if (n0 + NB <= N) { for (int q = 0; q < NV; ++q) vstore16(ACT(v[q] + bb), q, o); } \
    else { for (int q = 0; q < NV; ++q) for (int e = 0; e < 16; ++e) \
        if (n0 + 16 * q + e < N) o[16 * q + e] = ACT(v[q][e] + bb); } }

__kernel void gemm_packed(const int M, const int N, const int K,
                          __global const float *restrict Ap,
                          __global const float *restrict Bp,
                          __global const float *restrict bias,
                          __global float *restrict C, const int ldc, const int c_row0)
{
    const int mt = get_global_id(0);  // row blocks fastest: they share one B panel in cache
    const int nt = get_global_id(1);
    const int m0 = mt * 8, n0 = nt * NB;
    __global const float *a = Ap + (size_t)mt * K * 8;
    __global const float *b = Bp + (size_t)nt * K * NB;
    ACC(0) ACC(1) ACC(2) ACC(3) ACC(4) ACC(5) ACC(6) ACC(7)
    for (int k = 0; k < K; ++k) {
        LOADB
        const float8 a8 = vload8(0, a);
        FMA(0, s0) FMA(1, s1) FMA(2, s2) FMA(3, s3) FMA(4, s4) FMA(5, s5) FMA(6, s6) FMA(7, s7)
        a += 8;
        b += NB;
    }
    STORE(0) STORE(1) STORE(2) STORE(3) STORE(4) STORE(5) STORE(6) STORE(7)
}
