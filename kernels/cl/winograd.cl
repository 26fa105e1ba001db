// Winograd F(2x2, 3x3) for 3x3 stride-1 convolutions: each 2x2 output tile costs 16
// multiplies per (input, output) channel pair instead of 36. The 16 products become
// 16 GEMMs (gemm_packed, dimension 2) between the transformed weights U (made once at
// load time) and the transformed input tiles V:
//   V = B^T d B (d: a 4x4 input patch),  M_e = U_e x V_e,  y = A^T M A.
// Defines: NB (the GEMM's panel width), RELU.

// Everything below is written out in scalars: PoCL keeps small private arrays in
// memory, which made these transforms 5x slower than the GEMM between them.

// x: [C][N][H][W] -> V: 16 x [P][C][NB] at `es` floats apart, P = ceil(T / NB) panels
// of tiles, tile t = (b * TH + ty) * TW + tx with its patch at (2*ty - PH, 2*tx - PW).
#define LD(i, j) ((rin##i && cin##j) ? row##i[x0 + j] : 0.0f)
#define ROWPTR(i) const int iy##i = y0 + i; const bool rin##i = iy##i >= 0 && iy##i < H; \
    __global const float *row##i = xc + (rin##i ? iy##i : 0) * W;
#define COLOK(j) const bool cin##j = x0 + j >= 0 && x0 + j < W;
// (B^T d) for column j, then the row transform of each of the 4 rows
#define COLT(j) const float d0##j = LD(0, j), d1##j = LD(1, j), d2##j = LD(2, j), \
    d3##j = LD(3, j); \
    const float u0##j = d0##j - d2##j, u1##j = d1##j + d2##j, \
    u2##j = d2##j - d1##j, u3##j = d1##j - d3##j;
#define ROWT(i) v[(4 * i + 0) * es] = u##i##0 - u##i##2; v[(4 * i + 1) * es] = u##i##1 + u##i##2; \
    v[(4 * i + 2) * es] = u##i##2 - u##i##1; v[(4 * i + 3) * es] = u##i##1 - u##i##3;

__kernel void winograd_input(__global const float *restrict x, __global float *restrict V,
                             const int N, const int H, const int W, const int PH, const int PW,
                             const int TH, const int TW, const int C, const int T,
                             const int es)
{
    // One work-item transforms one row of tiles of one channel, left to right.
    const int row = get_global_id(0), c = get_global_id(1);
    const int b = row / TH;
    const int y0 = 2 * (row % TH) - PH;
    __global const float *xc = x + ((size_t)c * N + b) * H * W;
    ROWPTR(0) ROWPTR(1) ROWPTR(2) ROWPTR(3)
    for (int tx = 0; tx < TW; ++tx) {
        const int t = row * TW + tx;
        const int x0 = 2 * tx - PW;
        COLOK(0) COLOK(1) COLOK(2) COLOK(3)
        COLT(0) COLT(1) COLT(2) COLT(3)
        __global float *v = V + ((size_t)(t / NB) * C + c) * NB + t % NB;
        ROWT(0) ROWT(1) ROWT(2) ROWT(3)
    }
}

// Mt (from float m_off on): 16 x [M][T] at MT floats apart -> y: [M][N][OH][OW], bias and optional ReLU.
#if RELU
#define ACT(x) fmax((x), 0.0f)
#else
#define ACT(x) (x)
#endif
#define LQ(i, j) const float q##i##j = Mt[(size_t)(4 * i + j) * MT];
#define COLQ(j) LQ(0, j) LQ(1, j) LQ(2, j) LQ(3, j) \
    const float s0##j = q0##j + q1##j + q2##j, s1##j = q1##j - q2##j - q3##j;

__kernel void winograd_output(__global const float *restrict Mt, const int m_off,
                              __global const float *restrict bias,
                              __global float *restrict y, const int M, const int T,
                              const int N, const int OH, const int OW, const int TH, const int TW,
                              const int MT)
{
    const int t = get_global_id(0), m = get_global_id(1);
    if (t >= T) return;
    Mt += m_off + (size_t)m * T + t;
    COLQ(0) COLQ(1) COLQ(2) COLQ(3)
    const int b = t / (TH * TW), r = t % (TH * TW);
    const int oy = 2 * (r / TW), ox = 2 * (r % TW);
    const float bb = bias[m];
    __global float *out = y + (((size_t)m * N + b) * OH + oy) * OW + ox;
    const bool right = ox + 1 < OW;
    out[0] = ACT(s00 + s01 + s02 + bb);
    if (right) out[1] = ACT(s01 - s02 - s03 + bb);
    if (oy + 1 < OH) {
        out[OW] = ACT(s10 + s11 + s12 + bb);
        if (right) out[OW + 1] = ACT(s11 - s12 - s13 + bb);
    }
}
