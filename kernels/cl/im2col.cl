// Convolution input columns for gemm_packed, written straight into its B panel
// layout [N/NB][K][NB]. The input is channel-major [C][N][H][W]; column n of the
// GEMM is image b, output pixel (oy, ox): n = (b * OH + oy) * OW + ox. Row k is
// (c, i, j) in the weight's [Cg][KH][KW] order. Padding and the columns past the
// batch read as zero. One work-item fills one row of one panel.
// Defines: NB.
__kernel void im2col_packed(__global const float *restrict x, __global float *restrict cols,
                            const int N, const int H, const int W, const int c0,
                            const int KH, const int KW, const int SH, const int SW,
                            const int PH, const int PW, const int OH, const int OW,
                            const int K)
{
    const int k = get_global_id(0);
    const int panel = get_global_id(1);
    const int c = k / (KH * KW), r = k % (KH * KW);
    const int i = r / KW, j = r % KW;
    __global const float *xc = x + (size_t)(c0 + c) * N * H * W;
    __global float *dst = cols + ((size_t)panel * K + k) * NB;
    const int n = panel * NB;
    int b = n / (OH * OW);
    const int rem = n % (OH * OW);
    int oy = rem / OW, ox = rem % OW;
    for (int t = 0; t < NB; ++t) {
        float v = 0.0f;
        const int iy = oy * SH - PH + i, ix = ox * SW - PW + j;
        if (b < N && iy >= 0 && iy < H && ix >= 0 && ix < W)
            v = xc[((size_t)b * H + iy) * W + ix];
        dst[t] = v;
        if (++ox == OW) {
            ox = 0;
            if (++oy == OH) { oy = 0; ++b; }
        }
    }
}
