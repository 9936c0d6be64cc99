// Row-wise and element-wise ops on f32 activations.

// out[r] = w * x[r] / rms(x[r]); one block per row.
extern "C" __global__ void rms_norm(const float* __restrict__ x, const float* __restrict__ w, int cols, float eps,
                                    float* __restrict__ out) {
    __shared__ float red[32];
    const float* xr = x + (u64)blockIdx.x * cols;
    float scale = block_inv_rms(xr, cols, eps, red);
    float* o = out + (u64)blockIdx.x * cols;
    each_pair(xr, w, cols, [&](int i, float v, float wi) { o[i] = wi * (v * scale); });
}

// The same straight into bf16, for a GEMM's input: what rms_norm then to_bf16 give, in one pass
// (large batches: the f32 rows were written, read back and converted).
extern "C" __global__ void rms_norm_bf16(const float* __restrict__ x, const float* __restrict__ w, int cols,
                                         float eps, u16* __restrict__ out) {
    __shared__ float red[32];
    const float* xr = x + (u64)blockIdx.x * cols;
    float scale = block_inv_rms(xr, cols, eps, red);
    u16* o = out + (u64)blockIdx.x * cols;
    each_pair(xr, w, cols, [&](int i, float v, float wi) { o[i] = f2bf(wi * (v * scale)); });
}

// In place, over each group of `g` values (per-head Q/K norm): one warp per group.
extern "C" __global__ void rms_norm_groups(float* __restrict__ x, const float* __restrict__ w, int g, u64 groups,
                                           float eps) {
    u64 grp = (u64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (grp >= groups) return;
    float* xg = x + grp * g;
    float ss = 0.0f;
    for (int i = lane; i < g; i += 32) ss += xg[i] * xg[i];
    ss = warp_sum(ss);
    float scale = rsqrtf(ss / (float)g + eps);
    for (int i = lane; i < g; i += 32) xg[i] = w[i] * (xg[i] * scale);
}

// Rotate pair p of one head at `hp` by (cos, sin): neox pairs (p, p + half), else (2p, 2p + 1).
DEV void rope_rotate(float* hp, int p, int half, int neox, float c, float s) {
    int a = neox ? p : 2 * p, b = neox ? p + half : 2 * p + 1;
    float x0 = hp[a], x1 = hp[b];
    hp[a] = x0 * c - x1 * s;
    hp[b] = x0 * s + x1 * c;
}

// Rotary embedding in place: one thread per (row, head, pair). The angle is position · inv_freq
// in f32, as the model defines it.
extern "C" __global__ void rope(float* __restrict__ x, const u32* __restrict__ pos, const float* __restrict__ inv_freq,
                                int rows, int heads, int head_dim, int rot, int neox) {
    int half = rot >> 1;
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (u64)rows * heads * half) return;
    int p = (int)(i % half);
    u64 rh = i / half;
    int row = (int)(rh / heads), h = (int)(rh % heads);
    float s, c;
    sincosf((float)pos[row] * inv_freq[p], &s, &c);
    rope_rotate(x + ((u64)row * heads + h) * head_dim, p, half, neox, c, s);
}

extern "C" __global__ void silu_mul(const float* __restrict__ g, const float* __restrict__ u, u64 n,
                                    float* __restrict__ out) {
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    out[i] = silu_times(g[i], u[i]);
}

// The large-batch MLP's middle in bf16: g ← silu(g) · u, both bf16 (the gate and up products'
// outputs), in place — the down product reads it as it stands.
extern "C" __global__ void silu_mul_bf16(u16* __restrict__ g, const u16* __restrict__ u, u64 n) {
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) g[i] = f2bf(silu_times(bf2f(g[i]), bf2f(u[i])));
}

extern "C" __global__ void add(float* __restrict__ acc, const float* __restrict__ x, u64 n) {
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) acc[i] += x[i];
}

// out[r][c] += bias[c]
extern "C" __global__ void add_bias(float* __restrict__ out, const float* __restrict__ bias, int cols, u64 n) {
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] += bias[i % cols];
}

extern "C" __global__ void to_bf16(const float* __restrict__ x, u64 n, u16* __restrict__ out) {
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = f2bf(x[i]);
}

// out[i] = x[rows[i]] (rows of `cols` floats); one block per selected row.
extern "C" __global__ void gather_rows(const float* __restrict__ x, const u32* __restrict__ rows, int cols,
                                       float* __restrict__ out) {
    const float* src = x + (u64)rows[blockIdx.x] * cols;
    float* dst = out + (u64)blockIdx.x * cols;
    each_value(src, cols, [&](int i, float v) { dst[i] = v; });
}

// Index of the largest value of each row (first on ties), for greedy sampling on the device;
// 0xffffffff when the row holds a NaN or an infinity (the engine fails that sequence).
DEV void argmax_merge(float& best, int& idx, int& bad, int o) {
    float ov = __shfl_xor_sync(0xffffffffu, best, o);
    int oi = __shfl_xor_sync(0xffffffffu, idx, o);
    bad |= __shfl_xor_sync(0xffffffffu, bad, o);
    if (ov > best || (ov == best && oi < idx)) { best = ov; idx = oi; }
}
// The warps' partial results of block_argmax, in shared memory.
struct ArgmaxShared {
    float best[32];
    int idx[32], bad[32];
};
// The first largest value of row `xr` and its index, in every thread of the block; the index
// is 0xffffffff when the row holds a NaN or an infinity.
DEV u32 block_argmax(const float* __restrict__ xr, int cols, float& best, ArgmaxShared& sh) {
    best = -INFINITY;
    int idx = 0x7fffffff, bad = 0;
    each_value(xr, cols, [&](int i, float v) {
        if (!(fabsf(v) <= 3.402823466e38f)) bad = 1;  // NaN or ±inf
        if (v > best) { best = v; idx = i; }
    });
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) argmax_merge(best, idx, bad, o);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    if (lane == 0) { sh.best[warp] = best; sh.idx[warp] = idx; sh.bad[warp] = bad; }
    __syncthreads();
    best = lane < nw ? sh.best[lane] : -INFINITY;
    idx = lane < nw ? sh.idx[lane] : 0x7fffffff;
    bad = lane < nw ? sh.bad[lane] : 0;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) argmax_merge(best, idx, bad, o);
    return bad ? 0xffffffffu : (u32)(idx == 0x7fffffff ? 0 : idx);
}
extern "C" __global__ void argmax_rows(const float* __restrict__ x, int cols, u32* __restrict__ out,
                                       float* __restrict__ out_v) {
    __shared__ ArgmaxShared sh;
    float best;
    u32 id = block_argmax(x + (u64)blockIdx.x * cols, cols, best, sh);
    if (threadIdx.x == 0) {
        out[blockIdx.x] = id;
        out_v[blockIdx.x] = id == 0xffffffffu ? __int_as_float(0x7fc00000) : best;
    }
}
