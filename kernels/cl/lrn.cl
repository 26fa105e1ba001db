// Local response normalisation across channels (AlexNet/Caffe):
// y_c = x_c / (k + alpha/size * sum of x^2 over channels [c - (size-1)/2, c + size/2])^beta.
// The channel stride is an argument, so the same kernel serves NCHW and CNHW.
__kernel void lrn(__global const float *restrict x, __global float *restrict y,
                  const int C, const int inner, const long cstride,
                  const int size, const float alpha_over_size, const float beta, const float k)
{
    const int i = get_global_id(0);  // position inside one channel plane (all images)
    const int c = get_global_id(1);
    const int outer = get_global_id(2);  // NCHW: the image; CNHW: always 0
    if (i >= inner) return;
    const size_t base = (size_t)outer * C * cstride + i;
    const int lo = max(c - (size - 1) / 2, 0), hi = min(c + size / 2, C - 1);
    float sum = 0.0f;
    for (int j = lo; j <= hi; ++j) {
        const float v = x[base + (size_t)j * cstride];
        sum += v * v;
    }
    const float v = x[base + (size_t)c * cstride];
    y[base + (size_t)c * cstride] = v * pow(k + alpha_over_size * sum, -beta);
}
