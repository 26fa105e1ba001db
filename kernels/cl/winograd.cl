// Winograd convolution F(m x m, r x r) for stride-1 convolutions: an m x m output
// tile costs ALPHA^2 multiplies per (input, output) channel pair instead of m^2 r^2
// (F(4,3): 36 vs 144; F(2,3): 16 vs 36). The ALPHA^2 products become ALPHA^2 GEMMs
// (gemm_packed, dimension 2) between the transformed weights U (made once at load
// time) and the transformed input tiles V:
//   V = B^T d B (d: an ALPHA x ALPHA input patch),  M_e = U_e x V_e,  y = A^T M A.
// The transform matrices come in as compile-time constants (BT_VALUES, AT_VALUES,
// made by kernels/ops/winograd.py), so the unrolled loops fold their zeros and ones
// away and keep d, u and q in registers.
// Defines: ALPHA, MT (m), NB (the GEMM's panel width), RELU, BT_VALUES, AT_VALUES.

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
    const int TH, const int TW, const int C, const int T, const int es
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

// One work-item per tile of one channel, tiles along axis 0: PoCL vectorises across
// neighbouring work-items, whose stores into V are then adjacent (4x4 tiles).
__kernel void winograd_input_tiles(INPUT_ARGS)
{
    const int t = get_global_id(0), c = get_global_id(1);
    const int b = t / (TH * TW), r = t % (TH * TW);
    __global const float *xc = x + ((size_t)c * N + b) * H * W;
    input_tile(xc, H, W, MT * (r / TW) - PH, MT * (r % TW) - PW, V_AT(t), es);
}

#if RELU
#define ACT(x) fmax((x), 0.0f)
#else
#define ACT(x) (x)
#endif

// M (from float m_off on): ALPHA^2 x [M][T] at `ms` floats apart -> y: [M][N][OH][OW],
// bias and optional ReLU. GROUPED: image b takes the bias of its expert x (images
// [seg[x], seg[x + 1]]), x * M floats on; images past seg[experts] pad the batch.
__kernel void winograd_output(__global const float *restrict Mt, const int m_off,
                              __global const float *restrict bias,
                              __global float *restrict y, const int M, const int T,
                              const int N, const int OH, const int OW, const int TH, const int TW,
                              const int ms
#if GROUPED
                              , __global const int *restrict seg, const int experts
#endif
                              )
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
#if GROUPED
    if (b >= seg[experts]) return;  // a padding row: no expert's
    int x = 0;
    while (b >= seg[x + 1]) ++x;
    const float bb = bias[x * M + m];
#else
    const float bb = bias[m];
#endif
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
