// Register-blocked GEMM for CPUs: C[M][N] = A[M][K] x B[K][N] (+ bias, ReLU).
//
// A (the weights) is packed at load time as [M/8][K][8]; B comes in panels of NB =
// 16*NV columns laid out [K][NB], so a work-item streams two contiguous panels and
// keeps an 8 x NB block of C in 8*NV float16 registers: each k step broadcasts 8
// scalars of A against NV vectors of B. No local-memory tiling: on PoCL's CPU
// device GPU-style tiles ran far slower than this (docs/benchmark-log.md).
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
// and QBITS (precision.h), TAPS (the float lanes reading DOT4's layout of A, below).
// Quantised precisions take B already quantised (by pad2d or im2col), accumulate
// exactly (precision.h) and scale each row's total by scale[row]; float ones pass
// scale = 1.
//
// DOT4 (int8, conv_packed and conv_direct, x86 CPUs with AVX-512 VNNI): the products
// run on vpdpbusd, which adds four byte products into each int lane, 64 multiply-adds
// per instruction where a float FMA does 16. B holds unsigned bytes (pad2d_pixels
// stores q + 128, so an input at zero point z reads z + 128), A signed ones; both are
// grouped by four along K, which runs over (i, j, channel) with the channels padded to
// four (A [M/8][K/4][8][4], the panel [K/4][NB][4]; the padding's weights are zero;
// conv_direct.h groups taps along a filter row instead). The int sums are exact and
// equal the float path's once each row takes off corr[row] = (128 + z) * (sum of its
// weights). OpenCL C has no byte dot product (cl_khr_integer_dot_product is absent
// from PoCL) and LLVM does not find vpdpbusd on its own, so the builtin is called from
// a function compiled for the feature; the runtime sets DOT4 only where the CPU has it
// (runtime.py: Device.dot4).
#include "precision.h"

// ROW_BLOCK and LANES come from kernels/blocking.py as -D defines; the macros below
// unroll exactly 8 rows of 16-float vectors, so other values must not build.
#if ROW_BLOCK != 8 || LANES != 16
#error "gemm.cl unrolls 8 rows of float16 lanes: kernels/blocking.py must say ROW_BLOCK 8, LANES 16"
#endif
#define NB (LANES * NV)

// EACH(X, r): X(r, q) for the NV column vectors q of block row r.
#if NV == 3
#define EACH(X, r) X(r, 0) X(r, 1) X(r, 2)
#elif NV == 2
#define EACH(X, r) X(r, 0) X(r, 1)
#else
#define EACH(X, r) X(r, 0)
#endif
#define ROWS(X) EACH(X, 0) EACH(X, 1) EACH(X, 2) EACH(X, 3) \
    EACH(X, 4) EACH(X, 5) EACH(X, 6) EACH(X, 7)

// c: the running sums; int8 also keeps t, the int totals its chunks flush into.
// btype: what a B panel holds (DOT4: four bytes of consecutive k per int).
#if DOT4
#define btype int
#define DECL(r, q) int16 c##r##q = 0;
#define FLUSH(r, q)
#define TOTAL(r, q) convert_float16(c##r##q - corr[m0 + r]),
#define LOADB(r, q) const int16 b##q = vload16(q, bk);
// A's eight ints of a step stay in memory: each row's is broadcast straight from there
// (a load), where held in registers each took a shuffle beside the vpdpbusd.
#define atype8 __global int *  // read as `const atype8`: a pointer to const ints
#define LOADA8(k, a) ((__global const int *)(a) + 8 * (k))
#define MAC(r, q) c##r##q = DOT4_MAC(c##r##q, b##q, (int16)(a8[r]));
#else
#define btype float
#if QBITS == 8
#define DECL(r, q) acc16 c##r##q = 0; int16 t##r##q = 0;
#define FLUSH(r, q) t##r##q += convert_int16(c##r##q); c##r##q = 0.0f;
#define TOTAL(r, q) convert_float16(t##r##q),
#else
#define DECL(r, q) acc16 c##r##q = 0;
#define FLUSH(r, q)
#define TOTAL(r, q) convert_float16(c##r##q),
#endif
#define LOADB(r, q) const float16 b##q = vload16(q, bk);
#define atype8 float8
#if TAPS
// A in DOT4's layout, [M/8][K/4][8][4] (a weight store shared with int8 on VNNI,
// kernels/ops/store.py): row r's weight at k is byte k % 4 of the block's int
// (k / 4) * 8 + r: eight bytes picked four apart. int16's low plane, which int8 never
// reads, lies as the float lanes read it, [M/8][K][8], k in the same order.
inline char8 taps_pick(const int k, __global const char *p)
{
    p += (k >> 2) * 32 + (k & 3);
    return (char8)(p[0], p[4], p[8], p[12], p[16], p[20], p[24], p[28]);
}
#define TAPS_PICK(k, p) taps_pick((k), (p))
#if QBITS == 16
#define LOADA8(k, a) \
    (convert_float8(TAPS_PICK(k, a)) * 256.0f + convert_float8(vload8((k), (a) + wplane)))
#else
#define LOADA8(k, a) convert_float8(TAPS_PICK(k, a))
#endif
#else
#define LOADA8(k, a) LOADW8((k), (a))
#endif
#define MAC(r, q) c##r##q = MACC((float16)(a8.s##r), b##q, c##r##q);
#endif

#if RELU
#define ACT(x) fmax((x), 0.0f)
#else
#define ACT(x) (x)
#endif

// Row r of the block goes to C row c_row0 + m0 + r, columns [lo, hi) of the panel
// only: the last panel is cut at N, and (GROUPED) a panel that straddles two experts'
// images is computed once per expert, each storing its own columns.
#define STORE(r) if (m0 + r < M) { float16 v[NV] = {EACH(TOTAL, r)}; \
    const float bb = bias[m0 + r], sc = scale[m0 + r]; \
    __global float *o = C + (size_t)(c_row0 + m0 + r) * ldc + n0; \
    for (int q = 0; q < NV; ++q) { \
        const int e0 = max(lo - n0 - LANES * q, 0), e1 = min(hi - n0 - LANES * q, LANES); \
        if (e0 == 0 && e1 == LANES) vstore16(ACT(v[q] * sc + bb), q, o); \
        else if (e0 == 0) store_head(ACT(v[q] * sc + bb), e1, o + LANES * q); \
        else for (int e = e0; e < e1; ++e) o[LANES * q + e] = ACT(v[q][e] * sc + bb); } }

// The first n (< 16) lanes of v to o: the last, partial vector of a row or panel.
inline void store_head(const float16 v, const int n, __global float *o)
{
    if (n <= 0) return;
    float8 h = v.lo;
    if (n >= 8) { vstore8(h, 0, o); h = v.hi; o += 8; }
    const int r = n & 7;
    float4 f = h.lo;
    if (r >= 4) { vstore4(f, 0, o); f = h.hi; o += 4; }
    if (r & 2) { vstore2(f.xy, 0, o); f.xy = f.zw; o += 2; }
    if (r & 1) o[0] = f.x;
}

#if BYTES_OUT
#include "bytes_out.h"
#else
#define STORE_BLOCK STORE(0) STORE(1) STORE(2) STORE(3) STORE(4) STORE(5) STORE(6) STORE(7)
#endif

// One 8 x NB block of C: rows m0.. from A panel `a`, columns n0.. from B panel `bp`
// (in address space `space`), over `steps` steps of k (DOT4: of four k).
#define BLOCK(bp, space, steps) { \
    ROWS(DECL) \
    for (int k0 = 0; k0 < (steps); k0 += QCHUNK) { \
        const int k1 = min((steps), k0 + QCHUNK); \
        for (int k = k0; k < k1; ++k) { \
            space const btype *bk = (bp) + k * NB; \
            EACH(LOADB, 0) \
            const atype8 a8 = LOADA8(k, a); \
            ROWS(MAC) \
        } \
        ROWS(FLUSH) \
    } \
    STORE_BLOCK }

#if !DOT4  // (DOT4 builds conv_packed alone)
// Dimension 2 runs independent GEMMs (Winograd's 16) whose A, B and C lie the given
// strides (in elements) apart. B is already quantised (im2col applied QX).
// GROUPED (a mixture's experts in one launch): the columns are `cols` per image, the
// images sorted by expert, expert x owning images [seg[x], seg[x + 1]); its A lies
// x * a_expert elements on. Columns past seg[experts] (padding) are not written.
__kernel void gemm_packed(const int M, const int N, const int K,
                          __global const wtype *restrict Ap,
                          __global const float *restrict Bp,
                          __global const float *restrict bias,
                          __global const float *restrict scale,
                          __global float *restrict C, const int ldc, const int c_row0,
                          const int a_stride, const int b_stride, const int c_stride
#if GROUPED
                          , __global const int *restrict seg, const int experts,
                          const int cols, const int a_expert
#endif
                          )
{
    const int mt = get_global_id(0);  // row blocks fastest: they share one B panel in cache
    const int nt = get_global_id(1);
    const int g = get_global_id(2);
    const int m0 = mt * ROW_BLOCK, n0 = nt * NB;
    PLANE((size_t)((M + ROW_BLOCK - 1) / ROW_BLOCK) * K * ROW_BLOCK)  // int16: one GEMM
    __global const float *bp = Bp + (size_t)g * b_stride + (size_t)nt * K * NB;
    C += (size_t)g * c_stride;
#if GROUPED
    for (int x = 0; x < experts; ++x) {
        const int lo = max(n0, seg[x] * cols), hi = min(min(n0 + NB, N), seg[x + 1] * cols);
        if (lo >= hi) continue;
        __global const wtype *a = Ap + (size_t)x * a_expert + (size_t)g * a_stride
                                  + (size_t)mt * K * ROW_BLOCK;
        BLOCK(bp, __global, K)
    }
#else
    const int lo = n0, hi = N;
    __global const wtype *a = Ap + (size_t)g * a_stride + (size_t)mt * K * ROW_BLOCK;
    BLOCK(bp, __global, K)
#endif
}
#endif

// x: the (padded, and for quantised precisions quantised: pad2d) input
// [C][N][HP][WP] (DOT4: pad2d_pixels' bytes [N][HP][WP][CP], CP channels a pixel);
// columns n = (b * OH + oy) * OW + ox.
#if DOT4
#define xtype uchar
#if BYTES_OUT && GROUPED
#define CORR_ARG , __global const int *restrict corr, const int CP, \
    __global const float *restrict oqp
#define CORR , corr, CP, oqp
#elif BYTES_OUT
#define CORR_ARG , __global const int *restrict corr, const int CP, const float oqinv, \
    const float oqzero
#define CORR , corr, CP, oqinv, oqzero
#else
#define CORR_ARG , __global const int *restrict corr, const int CP
#define CORR , corr, CP
#endif
#else
#define xtype float
#define CORR_ARG
#define CORR
#endif
#include "conv_direct.h"

// GROUPED (a mixture's experts in one launch): images sorted by expert, expert x
// owning images [seg[x], seg[x + 1]) (columns OH * OW times that); its A lies x times
// one expert's A on, its bias, scale and corr x * M on.
#if GROUPED
#define SEG_ARG , __global const int *restrict seg, const int experts
#define SEG , seg, experts
#else
#define SEG_ARG
#define SEG
#endif
#define CONV_ARGS const int M, const int N, const int K, \
    __global const wtype *restrict Ap, __global const xtype *restrict x, \
    __global const float *restrict bias, __global const float *restrict scale, \
    __global float *restrict C, const int ldc, const int c_row0, \
    const int batch, const int HP, const int WP, const int c0, \
    const int KH, const int KW, const int SH, const int SW, \
    const int OH, const int OW, const int blocks_per_item, const int CG, \
    __local btype *restrict panel CORR_ARG SEG_ARG
#define CONV_PASS M, N, K, Ap, x, bias, scale, C, ldc, c_row0, batch, HP, WP, c0, \
    KH, KW, SH, SW, OH, OW, blocks_per_item, CG, panel CORR SEG

#if DOT4
// Four rows of a DOT4 panel at once: 16 columns' four ints (16 bytes: four quads of
// channels) each read whole, four columns to a vector, then transposed by two rounds
// of two-vector permutes (vpermt2d), in place of four 16-int gathers.
#define LOAD4COLS(k) (int16)(vload4(0, src + off[4 * k]), vload4(0, src + off[4 * k + 1]), \
    vload4(0, src + off[4 * k + 2]), vload4(0, src + off[4 * k + 3]))
inline void quads16(__global const int *src, const int *off, __local int *dst)
{
    const int16 a0 = LOAD4COLS(0), a1 = LOAD4COLS(1), a2 = LOAD4COLS(2), a3 = LOAD4COLS(3);
    // Columns 0-7 (a0, a1) and 8-15 (a2, a3): quads 0 and 1, then 2 and 3, eight each.
    const uint16 lo = (uint16)(0, 4, 8, 12, 16, 20, 24, 28, 1, 5, 9, 13, 17, 21, 25, 29);
    const uint16 hi = lo + (uint16)2;
    const int16 t0 = shuffle2(a0, a1, lo), t1 = shuffle2(a0, a1, hi);
    const int16 t2 = shuffle2(a2, a3, lo), t3 = shuffle2(a2, a3, hi);
    const uint16 first = (uint16)(0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23);
    const uint16 second = first + (uint16)8;
    vstore16(shuffle2(t0, t2, first), 0, dst);
    vstore16(shuffle2(t0, t2, second), 0, dst + NB);
    vstore16(shuffle2(t1, t3, first), 0, dst + 2 * NB);
    vstore16(shuffle2(t1, t3, second), 0, dst + 3 * NB);
}
#endif

// The work of one item, in a function of its own so that DOT4 can compile it for the
// VNNI feature (a kernel cannot be: PoCL wraps it in code built for the plain target).
TARGET void conv_item(const int nt, const int part, CONV_ARGS)
{
    const int n0 = nt * NB;
    // Gather the panel: column t reads the input window at off[t]; columns past N
    // repeat the last one (computed, never stored).
    int off[NB];
    for (int t = 0; t < NB; ++t) {
        const int n = min(n0 + t, N - 1);
        const int b = n / (OH * OW), rem = n % (OH * OW);
        off[t] = (b * HP + (rem / OW) * SH) * WP + (rem % OW) * SW;
    }
    const int cg = K / (KH * KW);
#if BYTES_OUT
    int pix[NB];
    out_pixels(pix, n0, N, OH, OW);
#endif
#if DOT4
    // x: pad2d_pixels' [N][HP][WP][CP] bytes, this group's channels from c0 on; K runs
    // over (i, j, channel), so four consecutive k are one aligned int of one pixel.
    const int steps = K / 4, c4s = cg / 4;
    __local int *dst = panel;
    for (int t = 0; t < NB; ++t) off[t] *= CP / 4;
    for (int i = 0; i < KH; ++i) {
        for (int j = 0; j < KW; ++j) {
            __global const int *src = (__global const int *)(x + (i * WP + j) * CP + c0);
            int c4 = 0;
            for (; c4 + 4 <= c4s; c4 += 4, dst += 4 * NB)
                for (int t = 0; t < NB; t += 16)
                    quads16(src + c4, off + t, dst + t);
            for (; c4 < c4s; ++c4, dst += NB)
                for (int t = 0; t < NB; t += 16)
                    vstore16(GATHER16(src + c4, vload16(0, off + t)), 0, dst + t);
        }
    }
#elif TAPS
    // K runs over (i, j, channel) as A's DOT4 layout does, the group's CG channels
    // padded with zeros to cg (a multiple of four).
    const int steps = K;
    const size_t plane = (size_t)batch * HP * WP;
    __local float *dst = panel;
    for (int i = 0; i < KH; ++i) {
        for (int j = 0; j < KW; ++j) {
            for (int c = 0; c < cg; ++c, dst += NB) {
                __global const float *src = x + (c0 + min(c, CG - 1)) * plane + i * WP + j;
                for (int t = 0; t < NB; ++t) dst[t] = c < CG ? src[off[t]] : 0.0f;
            }
        }
    }
#else
    const int steps = K;
    const size_t plane = (size_t)batch * HP * WP;
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
#endif
    const int blocks = (M + ROW_BLOCK - 1) / ROW_BLOCK;
    const size_t block_a = (size_t)steps * ROW_BLOCK * (DOT4 ? 4 : 1);  // A per row block
    const int mt0 = part * blocks_per_item, mt1 = min(mt0 + blocks_per_item, blocks);
#if GROUPED
    // A panel straddling two experts' images runs once per expert, each storing its
    // own columns.
    PLANE((size_t)experts * blocks * block_a)
    __global const wtype *A0 = Ap;
    __global const float *bias0 = bias, *scale0 = scale;
#if DOT4
    __global const int *corr0 = corr;
#endif
    const int cols = OH * OW;
    for (int ex = 0; ex < experts; ++ex) {
        const int lo = max(n0, seg[ex] * cols), hi = min(min(n0 + NB, N), seg[ex + 1] * cols);
        if (lo >= hi) continue;
        Ap = A0 + (size_t)ex * blocks * block_a;
        bias = bias0 + ex * M;
        scale = scale0 + ex * M;
#if DOT4
        corr = corr0 + ex * M;
#endif
#if BYTES_OUT
        const float oqinv = oqp[2 * ex], oqzero = oqp[2 * ex + 1];
#endif
#else
    PLANE((size_t)blocks * block_a)
    {
        const int lo = n0, hi = N;
#endif
        for (int mt = mt0; mt < mt1; ++mt) {
            const int m0 = mt * ROW_BLOCK;
            __global const wtype *a = Ap + mt * block_a;
            BLOCK(panel, __local, steps)
        }
    }
}

__kernel void conv_packed(CONV_ARGS)
{
    conv_item(get_global_id(0), get_global_id(1), CONV_PASS);
}
