// Max and average pooling over independent planes (P = C*N planes of H x W; the
// layout of planes does not matter). Ceil mode comes in through OH/OW: windows
// that overhang the bottom/right edge are clipped, as in torch and Caffe.
// One work-item computes one output row (per-element work-items cost PoCL more
// than the arithmetic).
// Defines: MODE (0 max, 1 average), COUNT_PAD (average: count the zero padding,
// but never the ceil-mode overhang, like torch).
__kernel void pool2d(__global const float *restrict x, __global float *restrict y,
                     const int H, const int W, const int OH, const int OW,
                     const int KH, const int KW, const int SH, const int SW,
                     const int PH, const int PW)
{
    const int oy = get_global_id(0), p = get_global_id(1);
    __global const float *xp = x + (size_t)p * H * W;
    const int y0 = oy * SH - PH;
    const int ys = max(y0, 0), ye = min(y0 + KH, H);
    for (int ox = 0; ox < OW; ++ox) {
    const int x0 = ox * SW - PW;
    const int xs = max(x0, 0), xe = min(x0 + KW, W);
#if MODE == 0
    float acc = -FLT_MAX;
    for (int iy = ys; iy < ye; ++iy)
        for (int ix = xs; ix < xe; ++ix) acc = fmax(acc, xp[iy * W + ix]);
#else
    float acc = 0.0f;
    for (int iy = ys; iy < ye; ++iy)
        for (int ix = xs; ix < xe; ++ix) acc += xp[iy * W + ix];
#if COUNT_PAD
    const int count = (min(y0 + KH, H + PH) - y0) * (min(x0 + KW, W + PW) - x0);
#else
    const int count = (ye - ys) * (xe - xs);
#endif
    acc /= (float)count;
#endif
    y[((size_t)p * OH + oy) * OW + ox] = acc;
    }
}

// Adaptive average pooling: output cell i of O over an input of length L averages
// input rows [floor(i*L/O), ceil((i+1)*L/O)), the torch rule.
__kernel void adaptive_avgpool2d(__global const float *restrict x, __global float *restrict y,
                                 const int H, const int W, const int OH, const int OW)
{
    const int oy = get_global_id(0), p = get_global_id(1);
    __global const float *xp = x + (size_t)p * H * W;
    const int ys = (oy * H) / OH, ye = ((oy + 1) * H + OH - 1) / OH;
    for (int ox = 0; ox < OW; ++ox) {
        const int xs = (ox * W) / OW, xe = ((ox + 1) * W + OW - 1) / OW;
        float acc = 0.0f;
        for (int iy = ys; iy < ye; ++iy)
            for (int ix = xs; ix < xe; ++ix) acc += xp[iy * W + ix];
        y[((size_t)p * OH + oy) * OW + ox] = acc / (float)((ye - ys) * (xe - xs));
    }
}
