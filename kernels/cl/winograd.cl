// Winograd convolution F(m x m, r x r) for stride-1 convolutions: an m x m output
// tile costs ALPHA^2 multiplies per (input, output) channel pair instead of m^2 r^2
// (F(4,3): 36 vs 144; F(2,3): 16 vs 36). The ALPHA^2 products become ALPHA^2 GEMMs
// (gemm_packed, dimension 2) between the transformed weights U (made once at load
// time) and the transformed input tiles V:
//   V = B^T d B (d: an ALPHA x ALPHA input patch),  M_e = U_e x V_e,  y = A^T M A.
// The transform matrices come in as compile-time constants (BT_VALUES, AT_VALUES,
// made by kernels/ops/winograd.py), so the unrolled loops fold their zeros and ones
// away and keep d, u and q in registers.
// Defines: ALPHA, MT (m), RELU, BT_VALUES, AT_VALUES. The GEMM's panel width NB is
// an argument, not a define: one build serves every batch size, so an image's tiles
// are transformed by the same machine code alone or in any batch (builds for two
// widths rounded F(4x4, 5x5)'s transform differently).

__constant float BT[ALPHA * ALPHA] = {BT_VALUES};
__constant float AT[MT * ALPHA] = {AT_VALUES};

// x: [C][N][H][W] -> V: ALPHA^2 x [P][C][NB] at `es` floats apart, P = ceil(T / NB)
// panels of tiles, tile t = (b * TH + ty) * TW + tx with its patch at
// (MT*ty - PH, MT*tx - PW). `xc` is the tile's channel plane of its image.
inline void input_tile(__global const float *restrict xc, const int H, const int W,
                       const int y0, const int x0, __global float *restrict v, const int es)
{
    float d[ALPHA][ALPHA], u[ALPHA][ALPHA];
#pragma unroll
    for (int i = 0; i < ALPHA; ++i) {
        const int iy = y0 + i;
#pragma unroll
        for (int j = 0; j < ALPHA; ++j) {
            const int ix = x0 + j;
            d[i][j] = (iy >= 0 && iy < H && ix >= 0 && ix < W) ? xc[iy * W + ix] : 0.0f;
        }
    }
#pragma unroll
    for (int i = 0; i < ALPHA; ++i)
#pragma unroll
        for (int j = 0; j < ALPHA; ++j) {
            float s = 0.0f;
#pragma unroll
            for (int k = 0; k < ALPHA; ++k) s += BT[i * ALPHA + k] * d[k][j];
            u[i][j] = s;
        }
#pragma unroll
    for (int i = 0; i < ALPHA; ++i)
#pragma unroll
        for (int j = 0; j < ALPHA; ++j) {
            float s = 0.0f;
#pragma unroll
            for (int k = 0; k < ALPHA; ++k) s += u[i][k] * BT[j * ALPHA + k];
            v[(size_t)(i * ALPHA + j) * es] = s;
        }
}

#define INPUT_ARGS __global const float *restrict x, __global float *restrict V, \
    const int N, const int H, const int W, const int PH, const int PW, \
    const int TH, const int TW, const int C, const int T, const int es, const int NB
#define V_AT(t) (V + ((size_t)((t) / NB) * C + c) * NB + (t) % NB)

// One work-item per row of tiles of one channel (2x2 tiles: see winograd.py).
__kernel void winograd_input(INPUT_ARGS)
{
    const int row = get_global_id(0), c = get_global_id(1);
    const int b = row / TH;
    const int y0 = MT * (row % TH) - PH;
    __global const float *xc = x + ((size_t)c * N + b) * H * W;
    for (int tx = 0; tx < TW; ++tx)
        input_tile(xc, H, W, y0, MT * tx - PW, V_AT(row * TW + tx), es);
}

// One work-item per VL consecutive tiles of one channel, one tile a lane: PoCL does
// not vectorise the kernels above across work-items (their patch loads are
// conditional), so their transforms ran as scalar code. Here each load is a lane's
// own (bounds-checked, into a private row), the arithmetic runs on VL lanes, and the
// VL tiles' elements are VL adjacent floats of one panel of V (VL divides NB, so the
// group never straddles two panels). Lanes past T repeat the last tile and fill the
// last panel's padding columns, which the GEMM computes but never stores.
// Defines: VL (8 or 16; the kernel exists where VL is defined).
#ifdef VL
#define vfloat CAT(float, VL)
#define CAT(a, b) CAT_(a, b)
#define CAT_(a, b) a##b
#define VLOAD CAT(vload, VL)
#define VSTORE CAT(vstore, VL)

__kernel void winograd_input_lanes(INPUT_ARGS)
{
    const int t0 = get_global_id(0) * VL, c = get_global_id(1);
    int at[VL], y0[VL], x0[VL];
    for (int l = 0; l < VL; ++l) {
        const int t = min(t0 + l, T - 1), b = t / (TH * TW), r = t % (TH * TW);
        at[l] = (c * N + b) * H * W;
        y0[l] = MT * (r / TW) - PH;
        x0[l] = MT * (r % TW) - PW;
    }
    // e = d B, a patch row k at a time; then V = B^T e.
    vfloat e[ALPHA][ALPHA];
#pragma unroll
    for (int k = 0; k < ALPHA; ++k) {
        vfloat d[ALPHA];
#pragma unroll
        for (int j = 0; j < ALPHA; ++j) {
            float row[VL];
            for (int l = 0; l < VL; ++l) {
                const int iy = y0[l] + k, ix = x0[l] + j;
                row[l] = (iy >= 0 && iy < H && ix >= 0 && ix < W) ? x[at[l] + iy * W + ix] : 0.0f;
            }
            d[j] = VLOAD(0, row);
        }
#pragma unroll
        for (int j = 0; j < ALPHA; ++j) {
            vfloat s = 0.0f;
#pragma unroll
            for (int m = 0; m < ALPHA; ++m) s += d[m] * BT[j * ALPHA + m];
            e[k][j] = s;
        }
    }
    __global float *v = V + ((size_t)(t0 / NB) * C + c) * NB + t0 % NB;
#pragma unroll
    for (int i = 0; i < ALPHA; ++i)
#pragma unroll
        for (int j = 0; j < ALPHA; ++j) {
            vfloat s = 0.0f;
#pragma unroll
            for (int k = 0; k < ALPHA; ++k) s += e[k][j] * BT[i * ALPHA + k];
            VSTORE(s, 0, v + (size_t)(i * ALPHA + j) * es);
        }
}
#endif

#if RELU
#define ACT(x) fmax((x), 0.0f)
#else
#define ACT(x) (x)
#endif

// M (from float m_off on): ALPHA^2 x [M][T] at `ms` floats apart -> y: [M][N][OH][OW],
// bias and optional ReLU. GROUPED: image b takes the bias of its expert x (images
// [seg[x], seg[x + 1]]), x * M floats on; images past seg[experts] pad the batch.
#if GROUPED
#define SEG_ARGS , __global const int *restrict seg, const int experts
// The bias of image b's expert, or a return for a padding image (no expert's).
#define EXPERT_BIAS(b, bb) \
    if ((b) >= seg[experts]) return; \
    int x = 0; \
    while ((b) >= seg[x + 1]) ++x; \
    const float bb = bias[x * M + m];
#else
#define SEG_ARGS
#define EXPERT_BIAS(b, bb) const float bb = bias[m];
#endif
#define OUTPUT_ARGS __global const float *restrict Mt, const int m_off, \
    __global const float *restrict bias, __global float *restrict y, const int M, \
    const int T, const int N, const int OH, const int OW, const int TH, const int TW, \
    const int ms SEG_ARGS

#ifdef VL
// One work-item per VL consecutive tiles of one output map, one tile a lane (as
// winograd_input_lanes): the VL tiles' elements of M are VL adjacent floats; the
// outputs go out lane by lane. Lanes past T read the map's padding (never stored).
__kernel void winograd_output_lanes(OUTPUT_ARGS)
{
    const int t0 = get_global_id(0) * VL, m = get_global_id(1);
    Mt += m_off + (size_t)m * T + t0;
    vfloat s[MT][ALPHA];  // A^T q, a column of q at a time
#pragma unroll
    for (int j = 0; j < ALPHA; ++j) {
        vfloat q[ALPHA];
#pragma unroll
        for (int k = 0; k < ALPHA; ++k) q[k] = VLOAD(0, Mt + (size_t)(k * ALPHA + j) * ms);
#pragma unroll
        for (int i = 0; i < MT; ++i) {
            vfloat acc = 0.0f;
#pragma unroll
            for (int k = 0; k < ALPHA; ++k) acc += AT[i * ALPHA + k] * q[k];
            s[i][j] = acc;
        }
    }
    float o[MT][MT][VL];
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int j = 0; j < MT; ++j) {
            vfloat acc = 0.0f;
#pragma unroll
            for (int k = 0; k < ALPHA; ++k) acc += s[i][k] * AT[j * ALPHA + k];
            VSTORE(acc, 0, o[i][j]);
        }
    for (int l = 0; l < VL && t0 + l < T; ++l) {
        const int t = t0 + l, b = t / (TH * TW), r = t % (TH * TW);
        const int oy = MT * (r / TW), ox = MT * (r % TW);
        EXPERT_BIAS(b, bb)
        __global float *out = y + (((size_t)m * N + b) * OH + oy) * OW + ox;
        for (int i = 0; i < MT && oy + i < OH; ++i)
            for (int j = 0; j < MT && ox + j < OW; ++j) out[i * OW + j] = ACT(o[i][j][l] + bb);
    }
}
#endif

__kernel void winograd_output(OUTPUT_ARGS)
{
    const int t = get_global_id(0), m = get_global_id(1);
    if (t >= T) return;
    Mt += m_off + (size_t)m * T + t;
    float q[ALPHA][ALPHA], s[MT][ALPHA];
#pragma unroll
    for (int i = 0; i < ALPHA; ++i)
#pragma unroll
        for (int j = 0; j < ALPHA; ++j) q[i][j] = Mt[(size_t)(i * ALPHA + j) * ms];
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int j = 0; j < ALPHA; ++j) {
            float acc = 0.0f;
#pragma unroll
            for (int k = 0; k < ALPHA; ++k) acc += AT[i * ALPHA + k] * q[k][j];
            s[i][j] = acc;
        }
    const int b = t / (TH * TW), r = t % (TH * TW);
    const int oy = MT * (r / TW), ox = MT * (r % TW);
    EXPERT_BIAS(b, bb)
    __global float *out = y + (((size_t)m * N + b) * OH + oy) * OW + ox;
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int j = 0; j < MT; ++j) {
            float acc = bb;
#pragma unroll
            for (int k = 0; k < ALPHA; ++k) acc += s[i][k] * AT[j * ALPHA + k];
            if (oy + i < OH && ox + j < OW) out[i * OW + j] = ACT(acc);
        }
}
