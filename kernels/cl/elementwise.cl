// Small whole-tensor kernels: layout changes, ReLU, softmax and the mixture merge.

// [A][B][inner] -> [B][A][inner]: NCHW <-> CNHW (A, B = N, C or C, N). One
// work-item copies one contiguous run of `inner` floats.
__kernel void swap_outer(__global const float *restrict x, __global float *restrict y,
                         const int A, const int B, const int inner)
{
    const int b = get_global_id(0), a = get_global_id(1);
    __global const float *src = x + ((size_t)a * B + b) * inner;
    __global float *dst = y + ((size_t)b * A + a) * inner;
    for (int i = 0; i < inner; ++i) dst[i] = src[i];
}

__kernel void relu(__global const float *restrict x, __global float *restrict y, const int n)
{
    const int i = get_global_id(0);
    if (i < n) y[i] = fmax(x[i], 0.0f);
}

// Softmax over each row of a [rows][F] matrix; one work-item per row (rows = batch).
__kernel void softmax(__global const float *restrict x, __global float *restrict y, const int F)
{
    const int r = get_global_id(0);
    __global const float *xr = x + (size_t)r * F;
    __global float *yr = y + (size_t)r * F;
    float m = -FLT_MAX;
    for (int i = 0; i < F; ++i) m = fmax(m, xr[i]);
    float s = 0.0f;
    for (int i = 0; i < F; ++i) { const float e = exp(xr[i] - m); yr[i] = e; s += e; }
    const float inv = 1.0f / s;
    for (int i = 0; i < F; ++i) yr[i] *= inv;
}

// Mixture combine: y[n][f] = sum_j gates[n][j] * outputs[idx[n][j]][f], j < TOPK.
__kernel void merge(__global const float *restrict outputs, __global const int *restrict idx,
                    __global const float *restrict gates, __global float *restrict y,
                    const int F, const int topk)
{
    const int f = get_global_id(0), n = get_global_id(1);
    if (f >= F) return;
    float acc = 0.0f;
    for (int j = 0; j < topk; ++j)
        acc += gates[n * topk + j] * outputs[(size_t)idx[n * topk + j] * F + f];
    y[(size_t)n * F + f] = acc;
}

// Select images along the batch axis of a [C][N][inner] tensor into [C][MY][inner]:
// y[c][j] = x[c][idx[first + j]] for j < M <= MY (the mixture's split of a batch by
// expert; MY > M leaves padding images at the end).
__kernel void gather_images(__global const float *restrict x, __global float *restrict y,
                            __global const int *restrict idx, const int first, const int N,
                            const int M, const int MY, const int inner)
{
    const int j = get_global_id(0), c = get_global_id(1);
    __global const float *src = x + ((size_t)c * N + idx[first + j]) * inner;
    __global float *dst = y + ((size_t)c * MY + j) * inner;
    for (int i = 0; i < inner; ++i) dst[i] = src[i];
}

// Top-k bucketing on the device (a mixture's routing, so the host need not read the
// gate's logits mid-batch): for each of N rows of E scores, the K largest (ties to the
// lower index) with softmax weights over the kept scores; then the N*K (row, rank)
// pairs counting-sorted by bucket, stably: bucket e owns sorted rows
// [start[e], start[e + 1]), sorted row r comes from row src[r], pair p went to sorted
// row dst[p]. The report, from `at` floats on (a mixture writes its scores before it,
// so that the host reads both in one copy): the scores, each pair's bucket (int bits),
// then the weights. One work-item: N*E is small, and every output depends on all of it.
// Defines: BUCKETS (E).
#ifdef BUCKETS
__kernel void topk_buckets(__global const float *restrict scores, const int N, const int K,
                           __global float *restrict report, __global float *restrict weight,
                           __global int *restrict start, __global int *restrict src,
                           __global int *restrict dst, const int at)
{
    report += at;
    for (int i = 0; i < N * BUCKETS; ++i) report[i] = scores[i];
    __global int *index = (__global int *)(report + N * BUCKETS);
    int count[BUCKETS + 1];
    for (int e = 0; e <= BUCKETS; ++e) count[e] = 0;
    for (int n = 0; n < N; ++n) {
        __global const float *z = scores + (size_t)n * BUCKETS;
        uchar taken[BUCKETS];
        for (int e = 0; e < BUCKETS; ++e) taken[e] = 0;
        float top = 0.0f, sum = 0.0f;
        for (int j = 0; j < K; ++j) {
            int best = -1;
            for (int e = 0; e < BUCKETS; ++e)
                if (!taken[e] && (best < 0 || z[e] > z[best])) best = e;
            taken[best] = 1;
            if (j == 0) top = z[best];
            const float w = exp(z[best] - top);
            index[n * K + j] = best;
            weight[n * K + j] = w;
            sum += w;
            ++count[best + 1];
        }
        for (int j = 0; j < K; ++j) weight[n * K + j] /= sum;
    }
    for (int p = 0; p < N * K; ++p) report[N * BUCKETS + N * K + p] = weight[p];
    for (int e = 0; e < BUCKETS; ++e) count[e + 1] += count[e];
    for (int e = 0; e <= BUCKETS; ++e) start[e] = count[e];
    for (int p = 0; p < N * K; ++p) {
        const int row = count[index[p]]++;
        src[row] = p / K;
        dst[p] = row;
    }
}
#endif
