// gemm.cl's direct convolution (included there: its ROWS, LOADB, MAC, STORE macros).
// For stride-1 layers whose K = CG * KH * KW is small (a network's first layer: one
// grey channel, 5 x 5): a work-item computes 8 output channels x NB pixels of one
// output row at a time, broadcasting 8 weights against NV vectors of the padded input
// per tap (c, i, j), the same inner step as BLOCK. The implicit GEMM's panel gather
// costs as much as its multiply-adds at such K; here there is none. x is pad2d's
// output [C][N][HP][WP] (quantised for QBITS); a row's last vectors read up to NB - 1
// values past its end, into the next row or, after the last, into slack that the
// buffer carries (Conv2d.scratch_bytes); those columns are never stored. Work-item
// (item, part): item = (b * OH + oy) * chunks + chunk, NB columns per chunk, and row
// blocks [part * blocks_per_item, ...) of 8 output channels, over the same input.
// DOT4 (int8 on VNNI): x is pad2d_direct's windows, the int at a pixel holding the bytes
// of it and the next three along its row, so one step takes four taps (i, 4 * jq ..
// 4 * jq + 3) of a row: KJ = KW / 4 steps a row, rounded up (the taps past KW have zero
// weights), A laid out for them (blocking.window_rows), a step JS = 4 ints along the
// row. With a stride of 4 along rows (Conv2d.rows4) x is pad2d_direct's plain bytes
// read as ints, WP of them a row: int ox + jq holds those four taps of output pixel
// ox, so JS = 1, and output row oy reads input rows from SH * oy.
#if DOT4 && BYTES_OUT  // the next convolution's input bytes (bytes_out.h)
#define dxtype int
#define DCORR_ARG , __global const int *restrict corr, const float oqinv, const float oqzero
#define DCORR , corr, oqinv, oqzero
#elif DOT4
#define dxtype int
#define DCORR_ARG , __global const int *restrict corr
#define DCORR , corr
#else
#define dxtype float
#define DCORR_ARG
#define DCORR
#endif
TARGET void direct_item(const int item, const int part, const int M, const int K,
                        __global const wtype *restrict Ap, __global const dxtype *restrict x,
                        __global const float *restrict bias, __global const float *restrict scale,
                        __global float *restrict C, const int ldc, const int c_row0,
                        const int batch, const int HP, const int WP, const int c0,
                        const int KH, const int KJ, const int SH, const int JS,
                        const int OH, const int OW, const int chunks,
                        const int blocks_per_item DCORR_ARG)
{
    const int chunk = item % chunks, row = item / chunks;  // row = b * OH + oy
    const int b = row / OH, oy = row % OH;
    const int blocks = (M + ROW_BLOCK - 1) / ROW_BLOCK;
    PLANE((size_t)blocks * K * ROW_BLOCK)
    const size_t plane = (size_t)batch * HP * WP;
    __global const dxtype *xr = x + (size_t)c0 * plane + ((size_t)b * HP + oy * SH) * WP + chunk * NB;
    const int cg = K / (KH * KJ);
    const int n0 = row * OW + chunk * NB, lo = n0, hi = row * OW + min(OW, chunk * NB + NB);
    const int mt1 = min(blocks, (part + 1) * blocks_per_item);
#if BYTES_OUT
    int pix[NB];
    out_pixels(pix, n0, batch * OH * OW, OH, OW);
#endif
    for (int mt = part * blocks_per_item; mt < mt1; ++mt) {  // the row blocks share xr in L1
        const int m0 = mt * ROW_BLOCK;
        __global const wtype *a = Ap + (size_t)mt * K * ROW_BLOCK * (DOT4 ? 4 : 1);
        ROWS(DECL)
        int k = 0;
        for (int c = 0; c < cg; ++c) {
            for (int i = 0; i < KH; ++i) {
                for (int j = 0; j < KJ; ++j, ++k) {
                    __global const dxtype *bk = xr + c * plane + i * WP + j * JS;
                    EACH(LOADB, 0)
                    const atype8 a8 = LOADA8(k, a);
                    ROWS(MAC)
                    if (k % QCHUNK == QCHUNK - 1) { ROWS(FLUSH) }  // int8 in float lanes
                }
            }
        }
        ROWS(FLUSH)
        STORE_BLOCK
    }
}

__kernel void conv_direct(const int M, const int K, __global const wtype *restrict Ap,
                          __global const dxtype *restrict x,
                          __global const float *restrict bias,
                          __global const float *restrict scale,
                          __global float *restrict C, const int ldc, const int c_row0,
                          const int batch, const int HP, const int WP, const int c0,
                          const int KH, const int KJ, const int SH, const int JS,
                          const int OH, const int OW, const int chunks,
                          const int blocks_per_item DCORR_ARG)
{
    // The ids as arguments: PoCL cannot inline a TARGET function that reads them.
    direct_item(get_global_id(0), get_global_id(1), M, K, Ap, x, bias, scale, C, ldc, c_row0,
                batch, HP, WP, c0, KH, KJ, SH, JS, OH, OW, chunks, blocks_per_item DCORR);
}
