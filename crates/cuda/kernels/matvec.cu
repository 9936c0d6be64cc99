// x · wᵀ for up to MV_MAX_TOKENS rows of x (decode and small batches): one warp per weight row,
// its lanes taking the row's 32-value units in turn, each unit dequantized once in registers and
// dotted with every token's activations, so the weights are read from memory exactly once.

#define MV_MAX_TOKENS 8
#define MV_WARPS 4

// This lane's partial dot products of one stored row with each of `nt` activation rows.
// Quantized rows: the lane takes 32-value units u = lane, lane + 32, ...
template <int T> struct RowDot {
    DEV void run(const u8* __restrict__ row, int cols, const float* __restrict__ x, int nt, float* acc) {
        int lane = threadIdx.x & 31, units = cols >> 5;
        for (int u = lane; u < units; u += 32) {
            float v[32];
            Fmt<T>::unit(row, u, v);
#pragma unroll
            for (int t = 0; t < MV_MAX_TOKENS; t++) {
                if (t < nt) {
                    const float4* xp = (const float4*)(x + (u64)t * cols + u * 32);
                    float s = 0.0f;
#pragma unroll
                    for (int i = 0; i < 8; i++) {
                        float4 a = __ldg(xp + i);
                        s += v[4 * i] * a.x + v[4 * i + 1] * a.y + v[4 * i + 2] * a.z + v[4 * i + 3] * a.w;
                    }
                    acc[t] += s;
                }
            }
        }
    }
};

// Float rows: lane-contiguous 16-byte loads at element 8·lane + 256·i (see Vec8).
template <int T> struct FloatRowDot {
    DEV void run(const u8* __restrict__ row, int cols, const float* __restrict__ x, int nt, float* acc) {
        int lane = threadIdx.x & 31;
#pragma unroll 4
        for (int e = lane * 8; e < cols; e += 256) {
            float v[8];
            Vec8<T>::load(row, e, v);
#pragma unroll
            for (int t = 0; t < MV_MAX_TOKENS; t++) {
                if (t < nt) {
                    const float4* xp = (const float4*)(x + (u64)t * cols + e);
                    float4 a = __ldg(xp), b = __ldg(xp + 1);
                    acc[t] += v[0] * a.x + v[1] * a.y + v[2] * a.z + v[3] * a.w + v[4] * b.x + v[5] * b.y +
                              v[6] * b.z + v[7] * b.w;
                }
            }
        }
    }
};
template <> struct RowDot<T_F32> : FloatRowDot<T_F32> {};
template <> struct RowDot<T_F16> : FloatRowDot<T_F16> {};
template <> struct RowDot<T_BF16> : FloatRowDot<T_BF16> {};

// This lane's partial dots of stored row r with each of the `nt` activation rows.
template <int T>
DEV void row_partials(const u8* __restrict__ w, int r, int cols, u64 row_bytes, const float* __restrict__ x, int nt,
                      float* acc) {
#pragma unroll
    for (int t = 0; t < MV_MAX_TOKENS; t++) acc[t] = 0.0f;
    RowDot<T>::run(w + (u64)r * row_bytes, cols, x, nt, acc);
}

// One warp per weight row: partial sums, warp reduction, bias, store — or, with `accumulate`,
// add to what `out` holds (a product folded into the residual stream).
template <int T>
DEV void matvec_row(const u8* __restrict__ w, int rows, int r, int cols, u64 row_bytes, const float* __restrict__ x,
                    int nt, const float* __restrict__ bias, float* __restrict__ out, int accumulate = 0) {
    float acc[MV_MAX_TOKENS];
    row_partials<T>(w, r, cols, row_bytes, x, nt, acc);
    int lane = threadIdx.x & 31;
#pragma unroll
    for (int t = 0; t < MV_MAX_TOKENS; t++) {
        if (t < nt) {
            float s = warp_sum(acc[t]) + (bias ? bias[r] : 0.0f);
            float* o = out + (u64)t * rows + r;
            if (lane == 0) *o = accumulate ? *o + s : s;
        }
    }
}

template <int T>
DEV void matvec_impl(const u8* __restrict__ w, int rows, int cols, u64 row_bytes, const float* __restrict__ x,
                     int nt, const float* __restrict__ bias, float* __restrict__ out, int accumulate) {
    int r = blockIdx.x * MV_WARPS + (threadIdx.x >> 5);
    if (r >= rows) return;
    matvec_row<T>(w, rows, r, cols, row_bytes, x, nt, bias, out, accumulate);
}

// The gated MLP's first half: out = silu(x · gateᵀ) · (x · upᵀ), one warp per row r taking row
// r of both matrices (same type and shape), so neither product is stored.
template <int T>
DEV void matvec_glu_impl(const u8* __restrict__ wg, const u8* __restrict__ wu, int rows, int cols, u64 row_bytes,
                         const float* __restrict__ x, int nt, float* __restrict__ out) {
    int r = blockIdx.x * MV_WARPS + (threadIdx.x >> 5);
    if (r >= rows) return;
    float g[MV_MAX_TOKENS], u[MV_MAX_TOKENS];
    row_partials<T>(wg, r, cols, row_bytes, x, nt, g);
    row_partials<T>(wu, r, cols, row_bytes, x, nt, u);
    int lane = threadIdx.x & 31;
#pragma unroll
    for (int t = 0; t < MV_MAX_TOKENS; t++) {
        if (t < nt) {
            float gs = warp_sum(g[t]), us = warp_sum(u[t]);
            if (lane == 0) out[(u64)t * rows + r] = silu_times(gs, us);
        }
    }
}

// Up to three products of the same input in one launch (Q/K/V, gate/up): the grid covers the
// rows of all of them, each warp finds its matrix. Same type and columns for all.
template <int T>
DEV void matvec3_impl(const u8* w0, const u8* w1, const u8* w2, int r0, int r1, int r2, int cols, u64 row_bytes,
                      const float* x, int nt, const float* b0, const float* b1, const float* b2, float* o0, float* o1,
                      float* o2) {
    int r = blockIdx.x * MV_WARPS + (threadIdx.x >> 5);
    if (r < r0) {
        matvec_row<T>(w0, r0, r, cols, row_bytes, x, nt, b0, o0);
    } else if (r < r0 + r1) {
        matvec_row<T>(w1, r1, r - r0, cols, row_bytes, x, nt, b1, o1);
    } else if (r < r0 + r1 + r2) {
        matvec_row<T>(w2, r2, r - r0 - r1, cols, row_bytes, x, nt, b2, o2);
    }
}

// Dequantize a whole matrix to bf16 (row-major, as stored) for the tensor-core path: one thread
// per unit.
template <int T>
DEV void dequant_bf16_impl(const u8* __restrict__ w, int rows, int cols, u64 row_bytes, u16* __restrict__ out) {
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    int units = cols >> 5;
    if (i >= (u64)rows * units) return;
    int r = (int)(i / units), u = (int)(i % units);
    float v[32];
    Fmt<T>::unit(w + (u64)r * row_bytes, u, v);
    u32* o = (u32*)(out + (u64)r * cols + u * 32);
#pragma unroll
    for (int j = 0; j < 16; j++) o[j] = (u32)f2bf(v[2 * j]) | ((u32)f2bf(v[2 * j + 1]) << 16);
}

// Rows of an embedding table, dequantized to f32: block per id, threads over units.
template <int T>
DEV void embed_impl(const u8* __restrict__ w, int rows, int cols, u64 row_bytes, const u32* __restrict__ ids,
                    float* __restrict__ out) {
    u32 id = ids[blockIdx.x];
    if (id >= (u32)rows) return;  // checked on the host; never read outside the table
    const u8* row = w + (u64)id * row_bytes;
    for (int u = threadIdx.x; u < (cols >> 5); u += blockDim.x) {
        float v[32];
        Fmt<T>::unit(row, u, v);
        float* o = out + (u64)blockIdx.x * cols + u * 32;
#pragma unroll
        for (int j = 0; j < 32; j++) o[j] = v[j];
    }
}

#define MATVEC_KERNELS(name, T)                                                                      \
    extern "C" __global__ void __launch_bounds__(MV_WARPS * 32) matvec_##name(                      \
        const u8* w, int rows, int cols, u64 row_bytes, const float* x, int nt, const float* bias,   \
        float* out, int accumulate) {                                                                 \
        matvec_impl<T>(w, rows, cols, row_bytes, x, nt, bias, out, accumulate);                      \
    }                                                                                                 \
    extern "C" __global__ void __launch_bounds__(MV_WARPS * 32) matvec_glu_##name(                  \
        const u8* wg, const u8* wu, int rows, int cols, u64 row_bytes, const float* x, int nt,       \
        float* out) {                                                                                 \
        matvec_glu_impl<T>(wg, wu, rows, cols, row_bytes, x, nt, out);                               \
    }                                                                                                 \
    extern "C" __global__ void __launch_bounds__(MV_WARPS * 32) matvec3_##name(                     \
        const u8* w0, const u8* w1, const u8* w2, int r0, int r1, int r2, int cols, u64 row_bytes,   \
        const float* x, int nt, const float* b0, const float* b1, const float* b2, float* o0,        \
        float* o1, float* o2) {                                                                       \
        matvec3_impl<T>(w0, w1, w2, r0, r1, r2, cols, row_bytes, x, nt, b0, b1, b2, o0, o1, o2);     \
    }                                                                                                 \
    extern "C" __global__ void dequant_bf16_##name(const u8* w, int rows, int cols, u64 row_bytes,   \
                                                   u16* out) {                                        \
        dequant_bf16_impl<T>(w, rows, cols, row_bytes, out);                                          \
    }                                                                                                 \
    extern "C" __global__ void embed_##name(const u8* w, int rows, int cols, u64 row_bytes,          \
                                            const u32* ids, float* out) {                             \
        embed_impl<T>(w, rows, cols, row_bytes, ids, out);                                            \
    }
FOR_EACH_TYPE(MATVEC_KERNELS)
