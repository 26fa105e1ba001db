// Tiled GEMM with both operands staged in local memory, for GPUs (after CLBlast's
// xgemm and LibDNN's implicit-GEMM convolution): C[M][P] = A[M][K] x B[K][P].
//
// A work-group of MDIMC x NDIMC work-items computes an MWG x NWG tile of C. For each
// K tile of KWG it copies MWG x KWG of A and KWG x NWG of B into local memory (every
// work-item a share, neighbours reading neighbouring addresses so that a warp's
// reads coalesce), then each work-item multiplies its WPTM x WPTN register block out
// of local memory. Its rows and columns are MDIMC and NDIMC apart, so neighbouring
// work-items read neighbouring local words (no bank conflicts).
//
// A: the weights, [M][K] row-major (wtype: float, or half read through vload_half).
// B, by the define CONV:
//  - CONV 1: the implicit im2col of x [C][N][H][W] (channel-major activations): k over
//    (channel, i, j), p over (image, oy, ox); taps in the zero padding read 0. No
//    im2col matrix goes through memory.
//  - CONV 0: a fully connected layer's input x [P][K] (P images).
// C[m][p] + bias[m] (ReLU where RELU) goes to Y[m * ldm + p * ldp]: a convolution's
// [M][N][OH][OW] output (ldm = N*OH*OW, ldp = 1), a fully connected layer's [N][M]
// (ldm = 1, ldp = M).
// Defines: MWG, NWG, KWG, MDIMC, NDIMC, PADL (local-memory padding per row, 0 or 1),
// VWM (A's global loads: VWM consecutive k at once), VWN (the same for B; float fully
// connected layers only: a convolution's B is gathered tap by tap, int8's quantised
// four at a time), KWI (the K loop
// unrolled by KWI), CONV, RELU, MAD, WEIGHT_HALF and QBITS (precision.h), DP4A_PTX.
//
// QBITS 8 (int8, for a GPU's byte dot products): A is the layer's int8 rows, four
// weights of consecutive k in an int (rows padded to whole fours with zero weights),
// and B is quantised as it is staged, four inputs into an int of unsigned bytes q + 128
// (precision.h's QU, with the layer's qinv and qzero; a tap in the padding is an input
// of 0.0). KWG and the K loop count those ints; a step adds four products into an int
// sum (dot4: one dp4a instruction where Device.dp4a built and checked it, else
// portable C), and the epilogue takes off corr, (128 + zero) x each row's weight sum,
// and scales, as gemm.cl's DOT4 does.
#include "precision.h"

#if QBITS == 8
#define ltype int  // what the local tiles, registers and sums hold
#define LZERO 0
#define KSTEPS ((K + 3) / 4)  // ints a row
#define QUANT_ARGS , __global const float *restrict scale, __global const int *restrict corr, \
    const float qinv, const float qzero
#if DP4A_PTX
inline int dot4(const int u, const int s, const int acc)
{
    int d;
    asm("dp4a.u32.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(u), "r"(s), "r"(acc));
    return d;
}
#else
inline int dot4(const int u, const int s, const int acc)
{
    const int4 a = convert_int4(as_uchar4(u)), b = convert_int4(as_char4(s));
    return acc + a.s0 * b.s0 + a.s1 * b.s1 + a.s2 * b.s2 + a.s3 * b.s3;
}
#endif
#define STEP(a, b, acc) dot4((b), (a), (acc))
// Four inputs (floats) as the bytes q + 128 of one int, the first lowest.
#define PACK4(v0, v1, v2, v3) \
    ((int)QBYTE(v0) | (int)QBYTE(v1) << 8 | (int)QBYTE(v2) << 16 | (int)QBYTE(v3) << 24)
#elif QBITS
#error "tiled.cl: floating-point precisions and int8 only"
#else
#define ltype float
#define LZERO 0.0f
#define KSTEPS K
#define QUANT_ARGS
#define STEP(a, b, acc) MAD((a), (b), (acc))
#endif
#if MWG % MDIMC || NWG % NDIMC
#error "tiled.cl: MWG must be a multiple of MDIMC, NWG of NDIMC"
#endif
#if KWG % VWM || KWG % VWN || KWG % KWI || (CONV && VWN != 1)
#error "tiled.cl: VWM, VWN and KWI must divide KWG; a convolution's VWN is 1"
#endif

// VLOAD_K(V, LOAD, ONE, i, p, t, lim): t[0..V) = p[i..i+V) as floats, the elements
// from lim on 0: one vector load (LOAD) where all V are in range, else one by one (ONE).
// A is read through LOADW/VLOAD_W (half weights), B through LOADX/VLOAD_X.
#define CAT(a, b) CAT_(a, b)
#define CAT_(a, b) a##b
// Loads and stores of 1, 2 or 4 elements (OpenCL C has no vload1).
#define VLOADF_1(p) ((p)[0])
#define VLOADF_2(p) vload2(0, (p))
#define VLOADF_4(p) vload4(0, (p))
#define VLOADH_1(p) vload_half(0, (p))
#define VLOADH_2(p) vload_half2(0, (p))
#define VLOADH_4(p) vload_half4(0, (p))
#define VSTORE_1(v, t) ((t)[0] = (v))
#define VSTORE_2(v, t) vstore2((v), 0, (t))
#define VSTORE_4(v, t) vstore4((v), 0, (t))
#if WEIGHT_HALF
#define VLOAD_W(V, i, p) CAT(VLOADH_, V)((p) + (i))
#else
#define VLOAD_W(V, i, p) CAT(VLOADF_, V)((p) + (i))
#endif
#define VSTORE_T(V, v, t) CAT(VSTORE_, V)((v), (t))
#define VLOAD_K(V, LOAD, ONE, i, p, t, lim) \
    if ((i) + (V) <= (lim)) VSTORE_T(V, LOAD(V, i, p), t); \
    else for (int u_ = 0; u_ < (V); ++u_) (t)[u_] = (i) + u_ < (lim) ? ONE((i) + u_, p) : LZERO;
#define VLOAD_X(V, i, p) CAT(VLOADF_, V)((p) + (i))
#define LOADX(i, p) ((p)[i])
#define WPTM (MWG / MDIMC)
#define WPTN (NWG / NDIMC)
#define THREADS (MDIMC * NDIMC)

#if RELU
#define ACT(x) fmax((x), 0.0f)
#else
#define ACT(x) (x)
#endif

#if QBITS  // A: ints, four weights each
#define AW int
#define LOADA(i, p) ((p)[i])
#define VLOAD_A(V, i, p) CAT(VLOADF_, V)((p) + (i))
#else
#define AW wtype
#define LOADA(i, p) LOADW(i, p)
#define VLOAD_A(V, i, p) VLOAD_W(V, i, p)
#endif

#if CONV
// Tap k (over channel, i, j) of output pixel p (over image, oy, ox) of the implicit
// im2col of x [C][N][H][W]: 0 in the padding and past P or K.
inline float tap(__global const float *restrict x, const int p, const int k, const int P,
                 const int K, const int taps, const int plane, const int N, const int H,
                 const int W, const int KW, const int SH, const int SW, const int PH,
                 const int PW, const int OW)
{
    if (p >= P || k >= K) return 0.0f;
    const int c = k / taps, r = k - c * taps, i = r / KW, j = r - i * KW;
    const int n = p / plane, q = p - n * plane, oy = q / OW, ox = q - oy * OW;
    const int iy = oy * SH - PH + i, ix = ox * SW - PW + j;
    return iy >= 0 && iy < H && ix >= 0 && ix < W ? x[(((size_t)c * N + n) * H + iy) * W + ix]
                                                 : 0.0f;
}
#endif

__kernel __attribute__((reqd_work_group_size(MDIMC, NDIMC, 1)))
void tiled(const int M, const int P, const int K,
           __global const AW *restrict A, __global const float *restrict x,
           __global const float *restrict bias, __global float *restrict Y,
           const int ldm, const int ldp,
           const int N, const int H, const int W, const int KH, const int KW,
           const int SH, const int SW, const int PH, const int PW, const int OH,
           const int OW QUANT_ARGS)
{
    __local ltype As[KWG][MWG + PADL];
    __local ltype Bs[KWG][NWG + PADL];
    ltype t[VWM > VWN ? VWM : VWN];
    const int tm = get_local_id(0), tn = get_local_id(1);
    const int tid = tn * MDIMC + tm;
    const int m0 = get_group_id(0) * MWG, p0 = get_group_id(1) * NWG;
    const int KS = KSTEPS;
    ltype acc[WPTM][WPTN];
    for (int wm = 0; wm < WPTM; wm++)
        for (int wn = 0; wn < WPTN; wn++)
            acc[wm][wn] = LZERO;
#if CONV
    const int taps = KH * KW, plane = OH * OW;
#endif
    for (int k0 = 0; k0 < KS; k0 += KWG) {
        // A: consecutive work-items take consecutive runs of VWM k of a row.
        for (int e = tid; e < MWG * (KWG / VWM); e += THREADS) {
            const int kk = e % (KWG / VWM) * VWM, mm = e / (KWG / VWM);
            const int m = m0 + mm, k = k0 + kk;
#if VWM == 1
            t[0] = (m < M && k < KS) ? LOADA((size_t)m * KS + k, A) : LZERO;
#else
            if (m < M) {
                __global const AW *row = A + (size_t)m * KS;
                VLOAD_K(VWM, VLOAD_A, LOADA, k, row, t, KS)
            } else {
                for (int u = 0; u < VWM; ++u) t[u] = LZERO;
            }
#endif
            for (int u = 0; u < VWM; ++u) As[kk + u][mm] = t[u];
        }
        // B: consecutive work-items take consecutive output pixels of a convolution,
        // consecutive runs of VWN k of an image's input in a fully connected layer.
#if CONV
        for (int e = tid; e < KWG * NWG; e += THREADS) {
            const int pp = e % NWG, kk = e / NWG;
            const int p = p0 + pp;
#if QBITS
            float v[4];
            for (int u = 0; u < 4; ++u) v[u] = tap(x, p, 4 * (k0 + kk) + u, P, K, taps, plane,
                                                   N, H, W, KW, SH, SW, PH, PW, OW);
            Bs[kk][pp] = PACK4(v[0], v[1], v[2], v[3]);
#else
            Bs[kk][pp] = tap(x, p, k0 + kk, P, K, taps, plane, N, H, W, KW, SH, SW, PH, PW, OW);
#endif
        }
#elif QBITS
        for (int e = tid; e < KWG * NWG; e += THREADS) {  // VWN 1 (TiledGemm.tile)
            const int kk = e % KWG, pp = e / KWG;
            const int p = p0 + pp, k = 4 * (k0 + kk);
            float v[4];
            for (int u = 0; u < 4; ++u) v[u] = p < P && k + u < K ? x[(size_t)p * K + k + u] : 0.0f;
            Bs[kk][pp] = PACK4(v[0], v[1], v[2], v[3]);
        }
#else
        for (int e = tid; e < (KWG / VWN) * NWG; e += THREADS) {
            const int kk = e % (KWG / VWN) * VWN, pp = e / (KWG / VWN);
            const int p = p0 + pp, k = k0 + kk;
            if (p < P) {
                __global const float *img = x + (size_t)p * K;
                VLOAD_K(VWN, VLOAD_X, LOADX, k, img, t, K)
            } else {
                for (int u = 0; u < VWN; ++u) t[u] = 0.0f;
            }
            for (int u = 0; u < VWN; ++u) Bs[kk + u][pp] = t[u];
        }
#endif
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int k1 = 0; k1 < KWG; k1 += KWI) {
#pragma unroll
            for (int kk = k1; kk < k1 + KWI; kk++) {  // a constant trip count: unrolled
                ltype a[WPTM], b[WPTN];
                for (int wm = 0; wm < WPTM; wm++)
                    a[wm] = As[kk][tm + wm * MDIMC];
                for (int wn = 0; wn < WPTN; wn++)
                    b[wn] = Bs[kk][tn + wn * NDIMC];
                for (int wm = 0; wm < WPTM; wm++)
                    for (int wn = 0; wn < WPTN; wn++)
                        acc[wm][wn] = STEP(a[wm], b[wn], acc[wm][wn]);
            }
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    for (int wm = 0; wm < WPTM; wm++) {
        const int m = m0 + tm + wm * MDIMC;
        if (m >= M)
            continue;
        const float bm = bias[m];
        for (int wn = 0; wn < WPTN; wn++) {
            const int p = p0 + tn + wn * NDIMC;
#if QBITS
            const float v = (float)(acc[wm][wn] - corr[m]) * scale[m] + bm;
#else
            const float v = acc[wm][wn] + bm;
#endif
            if (p < P)
                Y[(size_t)m * ldm + (size_t)p * ldp] = ACT(v);
        }
    }
}
