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
// CONV, RELU, MAD and WEIGHT_HALF (precision.h). Float precisions only.
#include "precision.h"

#if QBITS
#error "tiled.cl: floating-point precisions only"
#endif
#if MWG % MDIMC || NWG % NDIMC
#error "tiled.cl: MWG must be a multiple of MDIMC, NWG of NDIMC"
#endif
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
        // A: consecutive work-items take consecutive k of a row.
        for (int e = tid; e < MWG * KWG; e += THREADS) {
            const int kk = e % KWG, mm = e / KWG;
            const int m = m0 + mm, k = k0 + kk;
            As[kk][mm] = (m < M && k < K) ? LOADW((size_t)m * K + k, A) : 0.0f;
        }
        // B: consecutive work-items take consecutive output pixels of a convolution,
        // consecutive k of an image's input in a fully connected layer.
        for (int e = tid; e < KWG * NWG; e += THREADS) {
#if CONV
            const int pp = e % NWG, kk = e / NWG;
#else
            const int kk = e % KWG, pp = e / KWG;
#endif
            const int p = p0 + pp, k = k0 + kk;
            float v = 0.0f;
            if (p < P && k < K) {
#if CONV
                const int c = k / taps, t = k - c * taps, i = t / KW, j = t - i * KW;
                const int n = p / plane, q = p - n * plane, oy = q / OW, ox = q - oy * OW;
                const int iy = oy * SH - PH + i, ix = ox * SW - PW + j;
                if (iy >= 0 && iy < H && ix >= 0 && ix < W)
                    v = x[(((size_t)c * N + n) * H + iy) * W + ix];
#else
                v = x[(size_t)p * K + k];
#endif
            }
            Bs[kk][pp] = v;
        }
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int kk = 0; kk < KWG; kk++) {
            float a[WPTM], b[WPTN];
            for (int wm = 0; wm < WPTM; wm++)
                a[wm] = As[kk][tm + wm * MDIMC];
            for (int wn = 0; wn < WPTN; wn++)
                b[wn] = Bs[kk][tn + wn * NDIMC];
            for (int wm = 0; wm < WPTM; wm++)
                for (int wn = 0; wn < WPTN; wn++)
                    acc[wm][wn] = MAD(a[wm], b[wn], acc[wm][wn]);
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
