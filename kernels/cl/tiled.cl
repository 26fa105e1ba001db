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
// VWM (A's global loads: VWM consecutive k at once), VWN (the same for B; fully
// connected layers only, a convolution's B is gathered tap by tap), KWI (the K loop
// unrolled by KWI), CONV, RELU, MAD and WEIGHT_HALF (precision.h). Float precisions
// only.
#include "precision.h"

#if QBITS
#error "tiled.cl: floating-point precisions only"
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
    else for (int u_ = 0; u_ < (V); ++u_) (t)[u_] = (i) + u_ < (lim) ? ONE((i) + u_, p) : 0.0f;
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

__kernel __attribute__((reqd_work_group_size(MDIMC, NDIMC, 1)))
void tiled(const int M, const int P, const int K,
           __global const wtype *restrict A, __global const float *restrict x,
           __global const float *restrict bias, __global float *restrict Y,
           const int ldm, const int ldp,
           const int N, const int H, const int W, const int KH, const int KW,
           const int SH, const int SW, const int PH, const int PW, const int OH, const int OW)
{
    __local float As[KWG][MWG + PADL];
    __local float Bs[KWG][NWG + PADL];
    float t[VWM > VWN ? VWM : VWN];
    const int tm = get_local_id(0), tn = get_local_id(1);
    const int tid = tn * MDIMC + tm;
    const int m0 = get_group_id(0) * MWG, p0 = get_group_id(1) * NWG;
    float acc[WPTM][WPTN];
    for (int wm = 0; wm < WPTM; wm++)
        for (int wn = 0; wn < WPTN; wn++)
            acc[wm][wn] = 0.0f;
#if CONV
    const int taps = KH * KW, plane = OH * OW;
#endif
    for (int k0 = 0; k0 < K; k0 += KWG) {
        // A: consecutive work-items take consecutive runs of VWM k of a row.
        for (int e = tid; e < MWG * (KWG / VWM); e += THREADS) {
            const int kk = e % (KWG / VWM) * VWM, mm = e / (KWG / VWM);
            const int m = m0 + mm, k = k0 + kk;
#if VWM == 1
            t[0] = (m < M && k < K) ? LOADW((size_t)m * K + k, A) : 0.0f;
#else
            if (m < M) {
                __global const wtype *row = A + (size_t)m * K;
                VLOAD_K(VWM, VLOAD_W, LOADW, k, row, t, K)
            } else {
                for (int u = 0; u < VWM; ++u) t[u] = 0.0f;
            }
#endif
            for (int u = 0; u < VWM; ++u) As[kk + u][mm] = t[u];
        }
        // B: consecutive work-items take consecutive output pixels of a convolution,
        // consecutive runs of VWN k of an image's input in a fully connected layer.
#if CONV
        for (int e = tid; e < KWG * NWG; e += THREADS) {
            const int pp = e % NWG, kk = e / NWG;
            const int p = p0 + pp, k = k0 + kk;
            float v = 0.0f;
            if (p < P && k < K) {
                const int c = k / taps, r = k - c * taps, i = r / KW, j = r - i * KW;
                const int n = p / plane, q = p - n * plane, oy = q / OW, ox = q - oy * OW;
                const int iy = oy * SH - PH + i, ix = ox * SW - PW + j;
                if (iy >= 0 && iy < H && ix >= 0 && ix < W)
                    v = x[(((size_t)c * N + n) * H + iy) * W + ix];
            }
            Bs[kk][pp] = v;
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
                float a[WPTM], b[WPTN];
                for (int wm = 0; wm < WPTM; wm++)
                    a[wm] = As[kk][tm + wm * MDIMC];
                for (int wn = 0; wn < WPTN; wn++)
                    b[wn] = Bs[kk][tn + wn * NDIMC];
                for (int wm = 0; wm < WPTM; wm++)
                    for (int wn = 0; wn < WPTN; wn++)
                        acc[wm][wn] = MAD(a[wm], b[wn], acc[wm][wn]);
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
            if (p < P)
                Y[(size_t)m * ldm + (size_t)p * ldp] = ACT(acc[wm][wn] + bm);
        }
    }
}
