// Local response normalisation across channels (AlexNet/Caffe):
// y_c = x_c / (k + alpha/size * sum of x^2 over channels [c - (size-1)/2, c + size/2])^beta.
// The channel stride is an argument, so the same kernel serves NCHW and CNHW.
//
// One work-item walks all channels of 8 neighbouring pixels, keeping the window's sum
// of squares as a running sum (each input read once, not `size` times), in float8 so
// that the power, taken as exp2(-beta * log2(.)), runs on vectors: scalar pow() per
// element dominated this layer's time on PoCL. The last partial group of pixels goes
// through the same code one pixel at a time.
// BETA_075 (AlexNet's and Caffe's beta, 0.75): t^-0.75 = rsqrt(t) * rsqrt(sqrt(t)),
// square roots being far cheaper than the logarithm and exponential of the general
// power (the stem of the Fashion-MNIST models spent most of this layer on them).
#if BETA_075
#define POWER(t) (rsqrt(t) * rsqrt(sqrt(t)))
#else
#define POWER(t) exp2(-beta * log2(t))
#endif

#define LRN_WALK(T, LOAD, STORE) { \
    T sum = (T)(0.0f); \
    for (int j = 0; j < min(after, C); ++j) { const T v = LOAD(j); sum += v * v; } \
    for (int c = 0; c < C; ++c) { \
        const int add = c + after, drop = c - before - 1; \
        if (add < C) { const T v = LOAD(add); sum += v * v; } \
        if (drop >= 0) { const T v = LOAD(drop); sum -= v * v; } \
        STORE(c, LOAD(c) * POWER(k + alpha_over_size * sum)); \
    } }

#define LOAD8(c) vload8(0, xp + (size_t)(c) * cstride)
#define STORE8(c, v) vstore8((v), 0, yp + (size_t)(c) * cstride)
#define LOAD1(c) xp[(size_t)(c) * cstride]
#define STORE1(c, v) yp[(size_t)(c) * cstride] = (v)

__kernel void lrn(__global const float *restrict x, __global float *restrict y,
                  const int C, const int inner, const long cstride,
                  const int size, const float alpha_over_size, const float beta, const float k)
{
    const int i0 = get_global_id(0) * 8;  // first of 8 pixels of one channel plane
    const int outer = get_global_id(1);  // NCHW: the image; CNHW: always 0
    if (i0 >= inner) return;
    const int before = (size - 1) / 2, after = size / 2;
    if (i0 + 8 <= inner) {
        __global const float *xp = x + (size_t)outer * C * cstride + i0;
        __global float *yp = y + (size_t)outer * C * cstride + i0;
        LRN_WALK(float8, LOAD8, STORE8)
    } else {
        for (int i = i0; i < inner; ++i) {
            __global const float *xp = x + (size_t)outer * C * cstride + i;
            __global float *yp = y + (size_t)outer * C * cstride + i;
            LRN_WALK(float, LOAD1, STORE1)
        }
    }
}
