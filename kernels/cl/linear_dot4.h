// linear.cl's rows for int8 on AVX-512 VNNI, included where RO and DOT4 are set
// (gemm.cl explains DOT4). X holds bytes q + 128, and each
// DOT4_MAC takes 64 consecutive k of a row of X and a row of W into 16 int lanes,
// summed at the end; corr[o] = (128 + zero) * (sum of row o of W) is then taken off.
// I is a multiple of four, so every row starts on an int.
#define DOT4_ARGS const int B, const int I, const int O, \
    __global const uchar *restrict X, __global const char *restrict W, \
    __global const float *restrict bias, __global const float *restrict scale, \
    __global float *restrict Y, __global const int *restrict corr

// DOT4_PASS(R, r0, k0, k1): rows r0 .. r0 + R - 1 of the work-item take k in [k0, k1)
// into acc, their sums held in registers for the pass.
#define DOT4_PASS(R, r0, k0, k1) \
    { \
        int16 a[R][RB]; \
        _Pragma("unroll") for (int r = 0; r < R; ++r) \
            _Pragma("unroll") for (int q = 0; q < RB; ++q) a[r][q] = acc[(r0) + r][q]; \
        for (int i = (k0); i < (k1); i += 64) { \
            int16 xv[RB]; \
            _Pragma("unroll") for (int q = 0; q < RB; ++q) \
                xv[q] = vload16(0, (__global const int *)(x[q] + i)); \
            _Pragma("unroll") for (int r = 0; r < R; ++r) { \
                if (!need[(r0) + r]) continue; \
                const int16 wv = vload16(0, (__global const int *)(w[(r0) + r] + i)); \
                _Pragma("unroll") for (int q = 0; q < RB; ++q) a[r][q] = DOT4_MAC(a[r][q], xv[q], wv); \
            } \
        } \
        _Pragma("unroll") for (int r = 0; r < R; ++r) \
            _Pragma("unroll") for (int q = 0; q < RB; ++q) acc[(r0) + r][q] = a[r][q]; \
    }

// KB (bytes of k, a multiple of 64; 0: all of them at once): at a batch whose rows of X
// outgrow the L1 cache, the work-item runs k in blocks of KB, and each block over its
// rows RG at a time, so that the block's KB bytes of each of the RB rows of X are read
// from L1 by every pass instead of from L2 (the RO rows' sums wait in memory between
// passes; RO is 1, even or a multiple of three). Three rows a pass where RO allows:
// 3 * RB sums against RB inputs read, a third more work per load than two (fc6 at
// batch 8: 1.45 against 1.59-1.63 ms; docs/benchmark-log.md).
#ifndef KB
#define KB 0
#endif
#define RG (RO % 3 == 0 ? 3 : RO < 2 ? RO : 2)
TARGET void linear_dot4(const int o0, const int b0, const uint *need, DOT4_ARGS REQ_ARGS)
{
    __global const char *w[RO];
    __global const uchar *x[RB];
    int16 acc[RO][RB];
#pragma unroll
    for (int r = 0; r < RO; ++r) w[r] = W + (size_t)min(o0 + r, O - 1) * I;
#pragma unroll
    for (int q = 0; q < RB; ++q) x[q] = X + (size_t)min(b0 + q, B - 1) * I;
#pragma unroll
    for (int r = 0; r < RO; ++r)
#pragma unroll
        for (int q = 0; q < RB; ++q) acc[r][q] = 0;
    const int I64 = I & ~63;
#if KB
    for (int k0 = 0; k0 < I64; k0 += KB) {
        const int k1 = min(k0 + KB, I64);
#pragma unroll 1
        for (int r0 = 0; r0 < RO; r0 += RG) DOT4_PASS(RG, r0, k0, k1)
    }
#else
    DOT4_PASS(RO, 0, 0, I64)
#endif
    for (int r = 0; r < RO && o0 + r < O; ++r) {
        for (int q = 0; q < RB && b0 + q < B && need[r]; ++q) {
            const int8 s8 = acc[r][q].lo + acc[r][q].hi;
            const int4 s4 = s8.lo + s8.hi;
            int s = s4.x + s4.y + s4.z + s4.w - corr[o0 + r];
            for (int i = I64; i < I; ++i) s += (int)w[r][i] * (int)x[q][i];
            OUT(need[r], q, b0 + q, o0 + r, s);
        }
    }
}

__kernel void linear(DOT4_ARGS GROUP_ARGS SKIP_ARGS REQ_ARGS)
{
    const int o0 = get_global_id(0) * RO, b0 = get_global_id(1) * RB;
    EXPERT_ROWS(b0)
    SENSITIVE(need, RO, o0, b0, true)
    linear_dot4(o0, b0, need, B, I, O, X, W, bias, scale, Y, corr REQ_PASS);
}
