// Types and macros of each precision (the table in kernels/precision.py).
// Defines: WEIGHT_HALF (0/1: weights stored as half, read through vload_half, which
// needs no cl_khr_fp16), QBITS (0 floating point, 8 or 16 quantised).
//
// Activations between layers are float; a quantised layer's input is quantised once
// (pad2d, im2col, quantize_input) with the arguments qinv (1 / input scale) and qzero
// (zero point): QX gives q - zero, an integer held exactly in a float. The GEMM and
// linear kernels then accumulate (see precision.py for why):
//  - QBITS 8: float partial sums, flushed every QCHUNK products into int totals;
//  - QBITS 16: int64 (long) products and sums;
// the epilogue multiplies the total by the per-row scale (weight scale * input scale).
#ifndef WEIGHT_HALF
#define WEIGHT_HALF 0
#endif
#ifndef QBITS
#define QBITS 0
#endif
#ifndef DOT4
#define DOT4 0
#endif

// DOT4 (int8 on x86 AVX-512 VNNI, gemm.cl explains it): DOT4_MAC(acc, u, s) adds to
// each int lane of acc the four products of its unsigned bytes of u and signed bytes
// of s. Only code in a function marked TARGET may call it.
#if DOT4
#define TARGET __attribute__((target("avx512vnni")))
#define DOT4_MAC(acc, u, s) __builtin_ia32_vpdpbusd512((acc), (u), (s))
// GATHER16(p, idx): the ints p[idx[0]] .. p[idx[15]] in one vpgatherdd (LLVM keeps a
// loop of scalar loads; the gather is 1.4x faster).
#define GATHER16(p, idx) \
    __builtin_ia32_gathersiv16si((int16)0, (const void *)(size_t)(p), (idx), (ushort)0xffff, 4)
#else
#define TARGET
#endif

// int16 weights are two byte planes, q = 256 * high + low (precision.py's
// split_planes): a kernel reading them declares with PLANE(n) how many elements lie
// from a weight's high byte to its low byte (one plane, as the kernel lays it out).
#if QBITS == 16
#define PLANE(n) const size_t wplane = (n);
#else
#define PLANE(n)
#endif

#if QBITS == 8 || QBITS == 16
#define wtype char
#elif WEIGHT_HALF
#define wtype half
#else
#define wtype float
#endif

#if WEIGHT_HALF
#define LOADW(i, p) vload_half((i), (p))
#define LOADW8(i, p) vload_half8((i), (p))
#define LOADW16(i, p) vload_half16((i), (p))
#elif QBITS == 16
#define LOADW(i, p) ((float)(p)[i] * 256.0f + (float)(p)[(i) + wplane])
#define LOADW8(i, p) \
    (convert_float8(vload8((i), (p))) * 256.0f + convert_float8(vload8((i), (p) + wplane)))
#define LOADW16(i, p) \
    (convert_float16(vload16((i), (p))) * 256.0f + convert_float16(vload16((i), (p) + wplane)))
#elif QBITS
#define LOADW(i, p) ((float)(p)[i])
#define LOADW8(i, p) convert_float8(vload8((i), (p)))
#define LOADW16(i, p) convert_float16(vload16((i), (p)))
#else
#define LOADW(i, p) ((p)[i])
#define LOADW8(i, p) vload8((i), (p))
#define LOADW16(i, p) vload16((i), (p))
#endif

#if QBITS
#define QLO (-(float)(1 << (QBITS - 1)))
#define QHI ((float)((1 << (QBITS - 1)) - 1))
// Rounding half to even as rint does, for |x| <= 2^22: adding 1.5 * 2^23 leaves the
// integer in the sum's low mantissa bits. PoCL's rint on vectors cost a quantising pad
// pass 40% of its time. n: the vector width's suffix, empty for one float.
#define ROUND(x, n) convert_float##n(as_int##n((x) + 12582912.0f) - 0x4B400000)
// QOFF: v quantised with (qi, qz), less the zero point (q - qz). Clamped before rounding,
// the same as after: the bounds less the zero point (an integer) are integers, and small.
// QX: the layer's input (qinv, qzero); QOUT: a byte q + 128 of the next layer's input
// (oqinv, oqzero), written by an epilogue.
#define QOFF(v, n, qi, qz) ROUND(clamp((v) * (qi), QLO - (qz), QHI - (qz)), n)
#define QX(v, n) QOFF(v, n, qinv, qzero)
#define QOUT(v, n) convert_uchar##n(QOFF(v, n, oqinv, oqzero) + (oqzero + 128.0f))
// DOT4's form of an int8 input: the byte q + 128, held in floats by QU (the pads
// convert it at their width), one uchar by QBYTE.
#define QU(v, n) (QX(v, n) + (qzero + 128.0f))
#define QBYTE(v) convert_uchar(QU(v, ))
#else
#define QX(v, n) (v)
#endif

// The quantising kernels' input parameters: one qinv and qzero for the layer, or
// (GROUPED: a mixture's experts in one launch) each expert's own, as qp[2 x + 0 / 1],
// expert x owning the rows (images) [seg[x], seg[x + 1]) of the batch. QPARAMS(b)
// declares the qinv and qzero of row b; rows past seg[experts] pad the batch and take
// the last expert's (their outputs are never stored).
#if GROUPED
#define QARGS __global const float *restrict qp, __global const int *restrict seg, \
    const int experts
inline int expert_of(const int b, __global const int *seg, const int experts)
{
    int x = 0;
    while (x < experts - 1 && b >= seg[x + 1]) ++x;
    return x;
}
#define QPARAMS(b) \
    const int qx_ = expert_of((b), seg, experts); \
    const float qinv = qp[2 * qx_], qzero = qp[2 * qx_ + 1];
#else
#define QARGS const float qinv, const float qzero
#define QPARAMS(b)
#endif

// acc16: the running sum of 16 lanes; MACC(w, x, c): c + w * x on it (w, x float16);
// QCHUNK: products a lane may add before FLUSH moves its partial sum into tot16.
#if QBITS == 16
#define acc16 long16
#define accs long
#define MACC(w, x, c) ((c) + convert_long16(w) * convert_long16(x))
#define QCHUNK (1 << 26)
#elif QBITS == 8
#define acc16 float16
#define accs int
#define MACC(w, x, c) MAD(w, x, c)
#define QCHUNK 512
#else
#define acc16 float16
#define accs float
#define MACC(w, x, c) MAD(w, x, c)
#define QCHUNK (1 << 26)
#endif

// The 16 lanes of a running sum added up into the scalar total type (for int8, the
// float lanes hold integers below 2^24: converted exactly, added in int).
#if QBITS == 8
inline int hsum(float16 a)
{
    int16 v = convert_int16(a);
    int8 s8 = v.lo + v.hi;
    int4 s4 = s8.lo + s8.hi;
    return s4.x + s4.y + s4.z + s4.w;
}
#elif QBITS == 16
inline long hsum(long16 a)
{
    long8 s8 = a.lo + a.hi;
    long4 s4 = s8.lo + s8.hi;
    return s4.x + s4.y + s4.z + s4.w;
}
#else
inline float hsum(float16 a)
{
    float8 s8 = a.lo + a.hi;
    float4 s4 = s8.lo + s8.hi;
    return s4.x + s4.y + s4.z + s4.w;
}
#endif

// The 16 float lanes of a sum added up (whatever the precision's total type).
inline float fsum16(float16 a)
{
    float8 s8 = a.lo + a.hi;
    float4 s4 = s8.lo + s8.hi;
    return s4.x + s4.y + s4.z + s4.w;
}
