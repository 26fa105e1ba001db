// Local response normalisation across channels (AlexNet/Caffe):
// y_c = x_c / (k + alpha/size * sum of x^2 over channels [c - (size-1)/2, c + size/2])^beta.
// The channel stride is an argument, so the same kernel serves NCHW and CNHW.
//
// One work-item walks all channels of one pixel, keeping the window's sum of squares
// as a running sum (each input read once, not `size` times). The power is taken as
// exp2(-beta * log2(.)): PoCL's pow() was 7x slower and took 85% of the layer.
__kernel void lrn(__global const float *restrict x, __global float *restrict y,
                  const int C, const int inner, const long cstride,
                  const int size, const float alpha_over_size, const float beta, const float k)
{
    const int i = get_global_id(0);  // position inside one channel plane (all images)
    const int outer = get_global_id(1);  // NCHW: the image; CNHW: always 0
    if (i >= inner) return;
    __global const float *xp = x + (size_t)outer * C * cstride + i;
    __global float *yp = y + (size_t)outer * C * cstride + i;
    const int before = (size - 1) / 2, after = size / 2;
    float sum = 0.0f;
    for (int j = 0; j < min(after, C); ++j) {
        const float v = xp[(size_t)j * cstride];
        sum += v * v;
    }
    for (int c = 0; c < C; ++c) {
        const int add = c + after, drop = c - before - 1;
        if (add < C) { const float v = xp[(size_t)add * cstride]; sum += v * v; }
        if (drop >= 0) { const float v = xp[(size_t)drop * cstride]; sum -= v * v; }
        const float scale = exp2(-beta * log2(k + alpha_over_size * sum));
        yp[(size_t)c * cstride] = xp[(size_t)c * cstride] * scale;
    }
}
