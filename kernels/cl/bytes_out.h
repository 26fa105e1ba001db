// gemm.cl's BYTES_OUT epilogue, included where the define is set: a DOT4 convolution
// block writing the next convolution's input bytes instead of floats.
#if !DOT4
#error "gemm.cl: BYTES_OUT is for DOT4 convolutions"
#endif
// The integer pipeline (kernels/ops/conv_bytes.py): instead of floats the block writes
// the next convolution's input, bytes q + 128 quantised with its qinv and qzero
// (oqinv, oqzero; GROUPED: each expert's, from oqp) from the floats STORE would write,
// as pad2d does, so the bytes are the ones the float path gives. They go to padded
// pixels [N][OH + 2 * OPH][OW + 2 * OPW][ldc] (ldc: every channel), a column's eight
// rows (channels) as one 8-byte store: the block's 8 x 16 bytes of each column vector
// are transposed in registers (three rounds of interleaving). `pix` (out_pixels, for
// conv_item and conv_direct alike) holds each column's padded pixel, or -1 for a pixel
// on an edge, which also writes the padding beyond it (put_pixel), so no pass pads.
// out_pixels: pix[t] for column n0 + t; columns past N repeat the last.
inline void out_pixels(int *pix, const int n0, const int N, const int OH, const int OW)
{
    for (int t = 0; t < NB; ++t) {
        const int n = min(n0 + t, N - 1);
        const int b = n / (OH * OW), rem = n % (OH * OW), oy = rem / OW, ox = rem % OW;
        const bool edge = (OPH > 0) * (oy == 0 || oy == OH - 1) + (OPW > 0) * (ox == 0 || ox == OW - 1);
        pix[t] = edge ? -1 : (b * (OH + 2 * OPH) + oy + OPH) * (OW + 2 * OPW) + ox + OPW;
    }
}
inline void put_pixel(__global uchar *y, const int n, const int c, const uchar8 u,
                      const uchar8 pad, const int OH, const int OW, const int ldc)
{
    const int b = n / (OH * OW), rem = n % (OH * OW), oy = rem / OW, ox = rem % OW;
    const int HP = OH + 2 * OPH, WP = OW + 2 * OPW;
    const int y0 = oy ? oy + OPH : 0, y1 = oy == OH - 1 ? HP : oy + OPH + 1;
    const int x0 = ox ? ox + OPW : 0, x1 = ox == OW - 1 ? WP : ox + OPW + 1;
    __global uchar *img = y + (size_t)b * HP * WP * ldc + c;
    for (int yy = y0; yy < y1; ++yy)
        for (int xx = x0; xx < x1; ++xx)
            vstore8(yy == oy + OPH && xx == ox + OPW ? u : pad, 0, img + ((size_t)yy * WP + xx) * ldc);
}
inline uchar16 zip8(const uchar8 a, const uchar8 b)
{
    return (uchar16)(a.s0, b.s0, a.s1, b.s1, a.s2, b.s2, a.s3, b.s3, a.s4, b.s4, a.s5, b.s5,
                     a.s6, b.s6, a.s7, b.s7);
}
inline uchar16 zip16(const uchar16 a, const uchar16 b, const int hi)
{
    const ushort8 x = as_ushort8(a), y = as_ushort8(b);
    return as_uchar16(hi ? (ushort8)(x.s4, y.s4, x.s5, y.s5, x.s6, y.s6, x.s7, y.s7)
                         : (ushort8)(x.s0, y.s0, x.s1, y.s1, x.s2, y.s2, x.s3, y.s3));
}
inline ulong2 zip32(const uchar16 a, const uchar16 b, const int hi)
{
    const uint4 x = as_uint4(a), y = as_uint4(b);
    return as_ulong2(hi ? (uint4)(x.s2, y.s2, x.s3, y.s3) : (uint4)(x.s0, y.s0, x.s1, y.s1));
}
// Rows r0..r7 of 16 columns (lanes) -> the columns' 8 bytes each, stored at their pixels.
inline void put_columns(__global uchar *y, const uchar16 r0, const uchar16 r1,
                        const uchar16 r2, const uchar16 r3, const uchar16 r4,
                        const uchar16 r5, const uchar16 r6, const uchar16 r7, const int t0,
                        const int lo, const int hi, const int *pix, const int n0, const int c,
                        const uchar8 pad, const int OH, const int OW, const int ldc)
{
    const uchar16 a[2][4] = {{zip8(r0.lo, r1.lo), zip8(r2.lo, r3.lo), zip8(r4.lo, r5.lo),
                              zip8(r6.lo, r7.lo)},
                             {zip8(r0.hi, r1.hi), zip8(r2.hi, r3.hi), zip8(r4.hi, r5.hi),
                              zip8(r6.hi, r7.hi)}};
    ulong col[16];
#pragma unroll
    for (int h = 0; h < 2; ++h) {      // columns 8h..8h+7
#pragma unroll
        for (int g = 0; g < 2; ++g) {  // columns 8h+4g..: rows 0-3 and 4-7, 4 bytes each
            const uchar16 b0 = zip16(a[h][0], a[h][1], g), b1 = zip16(a[h][2], a[h][3], g);
            const ulong2 c0 = zip32(b0, b1, 0), c1 = zip32(b0, b1, 1);
            col[8 * h + 4 * g] = c0.s0;
            col[8 * h + 4 * g + 1] = c0.s1;
            col[8 * h + 4 * g + 2] = c1.s0;
            col[8 * h + 4 * g + 3] = c1.s1;
        }
    }
#pragma unroll
    for (int e = 0; e < 16; ++e) {
        const int t = t0 + e;
        if (t < lo || t >= hi) continue;
        if (pix[t] >= 0) *(__global ulong *)(y + (size_t)pix[t] * ldc + c) = col[e];
        else put_pixel(y, n0 + t, c, as_uchar8(col[e]), pad, OH, OW, ldc);
    }
}
#define QBYTES(r, q) const uchar16 u##r##q = QOUT(ACT( \
    convert_float16(c##r##q - corr[m0 + r]) * scale[m0 + r] + bias[m0 + r]), 16);
#define PUT(r, q) put_columns((__global uchar *)C, u0##q, u1##q, u2##q, u3##q, u4##q, u5##q, \
    u6##q, u7##q, LANES * q, lo - n0, hi - n0, pix, n0, c_row0 + m0, pad, OH, OW, ldc);
#define STORE_BLOCK { ROWS(QBYTES) \
    const uchar8 pad = (uchar8)(convert_uchar(clamp(oqzero, QLO, QHI) + 128.0f)); \
    EACH(PUT, 0) }
