// One layer of dual_linear for one image (little.cl), a template: little.cl includes it
// with L_FN (the function's name), L_RANK, L_IN, L_ROWS and L_PROJECTED defined, once
// per layer shape it needs (dual_pair: two). x, y: the image's input and output rows.
// Returns the rows computed.
#define L_R16 ((L_RANK + 15) / 16)  // float16s of a projection
inline int L_FN(const int b, const int ex, const int E, const int o0, const int I, const int O,
                __global const float *x, __global const wtype *W, __global const float *bias,
                __global const float *scale, __global float *y,
#if L_PROJECTED
                __global const float *Z,
#else
                __global const wtype *PT, __global const float *pscale, __global const float *shift,
#endif
                __global const wtype *AT, __global const float *ascale, __global const float *abias,
                __global const float *threshold, __global const float *qp
#if DOT4
                , __global const int *corr
#endif
)
{
    const int O16 = (O + 15) & ~15;
    float z[16 * L_R16];
#if L_PROJECTED
    for (int k = 0; k < L_RANK; ++k) z[k] = Z[(size_t)b * L_RANK + k];
#else
    {
        PLANE((size_t)E * I * 16 * L_R16)
        __global const wtype *pt = PT + (size_t)ex * I * 16 * L_R16;
        float16 acc[L_R16];
        for (int c = 0; c < L_R16; ++c) acc[c] = 0;
        for (int i = 0; i < I; ++i)
            for (int c = 0; c < L_R16; ++c)
                acc[c] = MAD(LOADW16(0, pt + ((size_t)i * L_R16 + c) * 16), (float16)x[i], acc[c]);
        for (int c = 0; c < L_R16; ++c)
            vstore16(acc[c] * vload16(ex * L_R16 + c, pscale) + vload16(ex * L_R16 + c, shift), c, z);
    }
#endif
#if QBITS  // x quantised once for all the rows (quantize_input's QX), kept private
    const float qinv = qp[2 * ex], qzero = qp[2 * ex + 1];
#if DOT4  // as bytes q + 128, 4 to a uint
    uint xw[(L_IN + 63) / 64 * 16];
    uchar *xb = (uchar *)xw;
    for (int i = 0; i < (I & ~15); i += 16)
        vstore16(convert_uchar16(QU(vload16(0, x + i), 16)), 0, xb + i);
    for (int i = I & ~15; i < I; ++i) xb[i] = QBYTE(x[i]);
#else
    float xq[(L_IN + 15) & ~15];
    for (int i = 0; i < (I & ~15); i += 16) vstore16(QX(vload16(0, x + i), 16), 0, xq + i);
    for (int i = I & ~15; i < I; ++i) xq[i] = QX(x[i], );
#endif
#else
#define xq x
#define L_XQ_ALIAS
#endif
    // Decide every row first, 16 at a time, then compute the rows wanted 4 at a time:
    // they lie scattered, and 4 independent streams keep more misses in flight.
    int need[L_ROWS];
    int computed = 0;
    {
        PLANE((size_t)E * L_RANK * O16)
        __global const wtype *at = AT + (size_t)ex * L_RANK * O16;
        const float thr = threshold[ex];
        const int end = min(o0 + L_ROWS, O);
        for (int o = o0; o < end; o += 16) {
            float16 e = 0;
            for (int k = 0; k < L_RANK; ++k) e = MAD(LOADW16(0, at + (size_t)k * O16 + o), (float16)z[k], e);
            float est[16];
            vstore16(e * vload16(0, ascale + ex * O16 + o) + vload16(0, abias + ex * O16 + o), 0, est);
            // Without branches (a third of the rows wanted, at random, mispredicted):
            // every output 0 first, the wanted ones overwritten below.
            if (o + 16 <= end) {
                vstore16((float16)0.0f, 0, y + o);
                for (int l = 0; l < 16; ++l) {
                    need[computed] = o + l;
                    computed += est[l] >= thr;
                }
            } else {
                for (int l = 0; o + l < end; ++l) {
                    y[o + l] = 0.0f;
                    need[computed] = o + l;
                    computed += est[l] >= thr;
                }
            }
        }
    }
    PLANE((size_t)E * O * I)
    W += (size_t)ex * O * I;
#if DOT4
    const int e0 = ex * O;
    wanted_dot4(computed, need, W, I, xb, corr + e0, scale + e0, bias + e0, y);
#else
    const int I16 = I & ~15;
    for (int j = 0; j < computed; j += 4) {
        __global const wtype *w[4];
        acc16 acc[4];
        accs tot[4];
#pragma unroll
        for (int r = 0; r < 4; ++r) {  // past the last row wanted: it again, unwritten
            w[r] = W + (size_t)need[min(j + r, computed - 1)] * I;
            acc[r] = 0;
            tot[r] = 0;
        }
        for (int i0 = 0; i0 < I16; i0 += 16 * QCHUNK) {
            const int i1 = min(I16, i0 + 16 * QCHUNK);
            for (int i = i0; i < i1; i += 16) {
                const float16 xv = vload16(0, xq + i);
#pragma unroll
                for (int r = 0; r < 4; ++r) acc[r] = MACC(LOADW16(0, w[r] + i), xv, acc[r]);
            }
#pragma unroll
            for (int r = 0; r < 4; ++r) {
                tot[r] += hsum(acc[r]);
                acc[r] = 0;
            }
        }
        for (int r = 0; r < 4 && j + r < computed; ++r) {
            const int o = need[j + r];
            for (int i = I16; i < I; ++i) tot[r] += (accs)LOADW(i, w[r]) * (accs)xq[i];
            const int eo = ex * O + o;
            y[o] = fmax((float)tot[r] * scale[eo] + bias[eo], 0.0f);
        }
    }
#endif
    return computed;
}
#ifdef L_XQ_ALIAS
#undef xq
#undef L_XQ_ALIAS
#endif
#undef L_R16
