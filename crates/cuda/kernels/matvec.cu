// x · wᵀ for up to MV_MAX_TOKENS rows of x (decode and small batches): one warp per weight row
// (or 2 or 4 sharing one, for matrices of few rows), its lanes taking the row's pieces in turn,
// dequantized in registers and dotted with every token's activations, so the weights are read
// from memory exactly once.
//
// Float rows (f32, f16, bf16) are dotted in f32 with 16-byte loads. Quantized rows are dotted in
// integers: the block's threads first quantize the activations to 8 bits per 32 values in shared
// memory (llama.cpp's q8_1; a tile of them at a time), then each lane takes 32-value units
// u = lane, lane + 32, ... of its row and sums byte products four at a time with dp4a
// (qdot.cuh), one scale per unit — no per-value conversion to float. Every warp of a block takes
// part in the quantization, so the host sizes blocks (4 to 16 warps) by the number of tokens.

#define MV_MAX_TOKENS 8
#define MV_MAX_WARPS 16
// Launch bounds by type (pasted from the kernel's name): float rows go 4 warps a block; quantized
// ones up to 16. The minimum of resident blocks sets ptxas's register budget: without one it
// trades registers for occupancy and spills (bf16/f16 up to 8 tokens: 62–96 registers, 4 blocks
// of 4 warps an SM, each lane with two 16-byte weight loads in flight; f32 matrices — tiny test
// models — may take more).
#define MV_BOUNDS_f32 128, 2
#define MV_BOUNDS_f16 128, 4
#define MV_BOUNDS_bf16 128, 4
#define MV_BOUNDS_Q MV_MAX_WARPS * 32, 1
#define MV_BOUNDS_q4_0 MV_BOUNDS_Q
#define MV_BOUNDS_q4_1 MV_BOUNDS_Q
#define MV_BOUNDS_q5_0 MV_BOUNDS_Q
#define MV_BOUNDS_q5_1 MV_BOUNDS_Q
#define MV_BOUNDS_q8_0 MV_BOUNDS_Q
#define MV_BOUNDS_q4_k MV_BOUNDS_Q
#define MV_BOUNDS_q5_k MV_BOUNDS_Q
#define MV_BOUNDS_q6_k MV_BOUNDS_Q
// One token (`*_t1_*` kernels): blocks of 4 warps for every type (quantized kernels size blocks
// by tokens), room for 6 of them an SM for bf16/f16 (63–72 registers, eight 16-byte weight loads
// a lane in flight: ~96 KiB an SM, what the H200's latency × bandwidth asks), 5 for quantized
// types (58–96 registers: two units a lane and two rounds of activation loads in flight), 4 for
// Q6_K (102–126: two of its units are 70 two-byte loads; at 96 the Q/K/V kernel spilled).
#define MV_BOUNDS1 128, 5
#define MV_BOUNDS1_f32 128, 4
#define MV_BOUNDS1_f16 128, 6
#define MV_BOUNDS1_bf16 128, 6
#define MV_BOUNDS1_q4_0 MV_BOUNDS1
#define MV_BOUNDS1_q4_1 MV_BOUNDS1
#define MV_BOUNDS1_q5_0 MV_BOUNDS1
#define MV_BOUNDS1_q5_1 MV_BOUNDS1
#define MV_BOUNDS1_q8_0 MV_BOUNDS1
#define MV_BOUNDS1_q4_k MV_BOUNDS1
#define MV_BOUNDS1_q5_k MV_BOUNDS1
#define MV_BOUNDS1_q6_k 128, 4

// Float rows: lane-contiguous 16-byte loads at element 8·lane + 256·i (see Vec8).
// With `norm` (an RMS norm's weight), the weights are dotted times it (the caller scales by the
// rows' inverse RMS): the norm of the products' input folded into them.
template <int T, int MT, int NR> struct FloatRowDot {
    // Steps whose weight loads are in flight together: a loop that checks its bound between
    // steps issues the next load only after the last one's products — one load per lane in
    // flight, a fraction of the bandwidth. Per row: two rows (gate and up) have twice the loads
    // in flight per step; f32 rows load twice the bytes; one token leaves the registers for more.
    static constexpr int U = (T == T_F32 ? 2 : MT == 1 ? 8 : 2) / NR;
    typedef typename Vec8<T>::Raw Raw;

    // acc[t] += the 8 weights at e (times norm) · token t's activations there.
    DEV void step(const Raw& raw, int e, int cols, const float* __restrict__ x, int nt, float* acc,
                  const float* __restrict__ norm) {
        float v[8];
        Vec8<T>::expand(raw, v);
        if (norm) {
            const float4* np = (const float4*)(norm + e);
            float4 a = __ldg(np), b = __ldg(np + 1);
            v[0] *= a.x; v[1] *= a.y; v[2] *= a.z; v[3] *= a.w;
            v[4] *= b.x; v[5] *= b.y; v[6] *= b.z; v[7] *= b.w;
        }
#pragma unroll
        for (int t = 0; t < MT; t++) {
            if (t < nt) {
                const float4* xp = (const float4*)(x + (u64)t * cols + e);
                float4 a = __ldg(xp), b = __ldg(xp + 1);
                acc[t] += v[0] * a.x + v[1] * a.y + v[2] * a.z + v[3] * a.w + v[4] * b.x + v[5] * b.y +
                          v[6] * b.z + v[7] * b.w;
            }
        }
    }

    // Steps e, e + stride, ... (G of them) of rows r0 and (NR = 2) r1.
    template <int G>
    DEV void group(const u8* __restrict__ r0, const u8* __restrict__ r1, int e, int stride, int cols,
                   const float* __restrict__ x, int nt, float* a0, float* a1, const float* __restrict__ norm) {
        Raw w0[G], w1[G];
#pragma unroll
        for (int j = 0; j < G; j++) {
            if (r0) w0[j] = Vec8<T>::fetch(r0, e + j * stride);
            if (NR == 2 && r1) w1[j] = Vec8<T>::fetch(r1, e + j * stride);
        }
#pragma unroll
        for (int j = 0; j < G; j++) {
            if (r0) step(w0[j], e + j * stride, cols, x, nt, a0, norm);
            if (NR == 2 && r1) step(w1[j], e + j * stride, cols, x, nt, a1, norm);
        }
    }

    DEV void run(const u8* __restrict__ r0, const u8* __restrict__ r1, int cols, const float* __restrict__ x,
                 int nt, float* a0, float* a1, const float* __restrict__ norm, int part, int wpr) {
        const int stride = 256 * wpr;
        int e = (part * 32 + (threadIdx.x & 31)) * 8;
        for (; e + (U - 1) * stride < cols; e += U * stride) group<U>(r0, r1, e, stride, cols, x, nt, a0, a1, norm);
        for (; e < cols; e += stride) group<1>(r0, r1, e, stride, cols, x, nt, a0, a1, norm);
    }
};

// Activations quantized per 32 values, MVQ_TILE units (of all tokens together) at a time: unit
// i's bytes in q[8i..8i+8), its scale d[i] and d[i]·Σq in s[i]. Aligned for the 16-byte reads of
// q (shared memory is laid out at the declared alignment).
#define MVQ_TILE 512
struct __align__(16) XTile {
    int q[MVQ_TILE * 8];
    float d[MVQ_TILE], s[MVQ_TILE];
};

// Units [u0, u0 + tu) of every token's row of x (times `norm`, when given) into the tile (item
// t·tu + u): four lanes per unit, 8 values each by two 16-byte loads (a warp reads 8 units, 1 KiB,
// at once), max and sum over the four by two shuffles each — a warp per unit reduced over 32
// lanes was a chain of dependent loads and 10 shuffles per unit, ~28 units a warp, before the
// block read any weight; d = amax / 127, q = round(x / d) (to nearest, by the 1.5·2^23
// addition). QX_GROUP rounds of the block load before any is used (a long row — a down
// product's 18944 columns — is ~18 rounds for 4 warps). The loop runs whole warps (the
// shuffles need every lane); lanes past the end reduce zeros and store nothing.
#define QX_GROUP 2
DEV void quantize_tile(const float* __restrict__ x, int cols, int nt, int u0, int tu, XTile& sm,
                       const float* __restrict__ norm) {
    const int lane = threadIdx.x & 31, total = 4 * nt * tu, step = blockDim.x;
    const float4 zero = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int g0 = threadIdx.x - lane; g0 < total; g0 += QX_GROUP * step) {
        float4 xa[QX_GROUP][2], na[QX_GROUP][2];
#pragma unroll
        for (int g = 0; g < QX_GROUP; g++) {
            const int i = g0 + g * step + lane, item = i >> 2;
            const bool live = i < total;
            const int t = live ? item / tu : 0, col = live ? (u0 + item % tu) * 32 + 8 * (i & 3) : 0;
            const float4* xp = (const float4*)(x + (u64)t * cols + col);
            xa[g][0] = live ? __ldg(xp) : zero;
            xa[g][1] = live ? __ldg(xp + 1) : zero;
            if (norm) {
                const float4* np = (const float4*)(norm + col);
                na[g][0] = live ? __ldg(np) : zero;
                na[g][1] = live ? __ldg(np + 1) : zero;
            }
        }
#pragma unroll
        for (int g = 0; g < QX_GROUP; g++) {
            if (g0 + g * step >= total) break;  // warp-uniform
            const int i = g0 + g * step + lane, item = i >> 2, quarter = i & 3;
            const bool live = i < total;
            float v[8] = {xa[g][0].x, xa[g][0].y, xa[g][0].z, xa[g][0].w,
                          xa[g][1].x, xa[g][1].y, xa[g][1].z, xa[g][1].w};
            if (norm) {
                v[0] *= na[g][0].x; v[1] *= na[g][0].y; v[2] *= na[g][0].z; v[3] *= na[g][0].w;
                v[4] *= na[g][1].x; v[5] *= na[g][1].y; v[6] *= na[g][1].z; v[7] *= na[g][1].w;
            }
            float amax = 0.0f;
#pragma unroll
            for (int j = 0; j < 8; j++) amax = fmaxf(amax, fabsf(v[j]));
            amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 1));
            amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 2));
            float id = amax > 0.0f ? 127.0f / amax : 0.0f;
            int sum = 0;
            u32 packed[2] = {0, 0};
#pragma unroll
            for (int j = 0; j < 8; j++) {
                int q = __float_as_int(v[j] * id + 12582912.0f) - 0x4B400000;
                sum += q;
                packed[j >> 2] |= (u32)(u8)(i8)q << (8 * (j & 3));
            }
            sum += __shfl_xor_sync(0xffffffffu, sum, 1);
            sum += __shfl_xor_sync(0xffffffffu, sum, 2);
            if (live) {
                *(uint2*)(sm.q + item * 8 + 2 * quarter) = uint2{packed[0], packed[1]};
                if (quarter == 0) {
                    float d = amax / 127.0f;
                    sm.d[item] = d;
                    sm.s[item] = d * small_i2f(sum);
                }
            }
        }
    }
}

// acc[t] += unit q (of item u of the tile) · tile item (t·tu + u), for every token.
template <int T, int MT>
DEV void qunit_dot(const QUnit& q, int u, int tu, int nt, float* acc, const XTile& sm) {
#pragma unroll
    for (int t = 0; t < MT; t++) {
        // Token 0 always (nt ≥ 1: launches come from the host's matvec_chunks): no branch around
        // the first use for the compiler to sink the unit's loads into, one load at a time.
        if (t == 0 || t < nt) {
            int i = t * tu + u;
            const uint4* xq = (const uint4*)(sm.q + i * 8);
            uint4 a = xq[0], b = xq[1];
            int lo = dp4a(q.w[3], (int)a.w, dp4a(q.w[2], (int)a.z, dp4a(q.w[1], (int)a.y, dp4a(q.w[0], (int)a.x, 0))));
            int hi = dp4a(q.w[7], (int)b.w, dp4a(q.w[6], (int)b.z, dp4a(q.w[5], (int)b.y, dp4a(q.w[4], (int)b.x, 0))));
            // |lo + hi| ≤ 32 · 127 · 127 < 2^22: small_i2f is exact.
            float dot = QFmt<T>::halves ? q.d0 * small_i2f(lo) + q.d1 * small_i2f(hi) : q.d0 * small_i2f(lo + hi);
            acc[t] += sm.d[i] * dot + q.c * sm.s[i];
        }
    }
}

// Units [u, u + QU·ustep, ...) of the tile from rows r0 and (NR = 2) r1 — both rows or neither
// (null) — the units' loads all issued before the first is used (see FloatRowDot::U).
template <int T, int NR, int MT, int QU>
DEV void qunit_group(const u8* __restrict__ r0, const u8* __restrict__ r1, int u0, int u, int ustep, int tu, int nt,
                     float* a0, float* a1, const XTile& sm) {
    QUnit q0[QU], q1[QU];
#pragma unroll
    for (int j = 0; j < QU; j++) {
        if (r0) {
            QFmt<T>::unit(r0, u0 + u + j * ustep, q0[j]);
            if (NR == 2) QFmt<T>::unit(r1, u0 + u + j * ustep, q1[j]);
        }
    }
#pragma unroll
    for (int j = 0; j < QU; j++) {
        if (r0) {
            qunit_dot<T, MT>(q0[j], u + j * ustep, tu, nt, a0, sm);
            if (NR == 2) qunit_dot<T, MT>(q1[j], u + j * ustep, tu, nt, a1, sm);
        }
    }
}

// This lane's partial dots of rows r0 and, with NR = 2, r1 (both null: none) with each of the
// `nt` activation rows (times `norm` elementwise, when given), over part `part` of `wpr` of the
// row (the warps sharing a row take its 256-value chunks / 32-value units in turn). Quantized
// types: every thread of the block calls this (it synchronizes).
template <int T, int NR, int MT>
DEV void row_partials(const u8* __restrict__ r0, const u8* __restrict__ r1, int cols, const float* __restrict__ x,
                      int nt, float* a0, float* a1, int part, int wpr, const float* __restrict__ norm = nullptr) {
#pragma unroll
    for (int t = 0; t < MT; t++) {
        a0[t] = 0.0f;
        if (NR == 2) a1[t] = 0.0f;
    }
    if constexpr (IsQuant<T>::value) {
        __shared__ XTile sm;
        int lane = threadIdx.x & 31, units = cols >> 5, per = MVQ_TILE / nt;
        for (int u0 = 0; u0 < units; u0 += per) {
            int tu = min(per, units - u0);
            // The weights of the tile asked of L2 before the block quantizes it: a launch's blocks
            // all start with that (a few L2 round trips and a barrier; ~8 for a down product's
            // 18944 columns), and memory would otherwise sit idle meanwhile.
            if (r0) {
                prefetch_units<T>(r0, u0, tu);
                if (NR == 2) prefetch_units<T>(r1, u0, tu);
            }
            __syncthreads();  // the last tile is read no more
            quantize_tile(x, cols, nt, u0, tu, sm, norm);
            __syncthreads();
            // Two units a lane in flight (a gate/up pair is two already).
            constexpr int QU = NR == 2 ? 1 : 2;
            const int ustep = 32 * wpr;
            int u = part * 32 + lane;
            for (; u + (QU - 1) * ustep < tu; u += QU * ustep)
                qunit_group<T, NR, MT, QU>(r0, r1, u0, u, ustep, tu, nt, a0, a1, sm);
            for (; u < tu; u += ustep) qunit_group<T, NR, MT, 1>(r0, r1, u0, u, ustep, tu, nt, a0, a1, sm);
        }
    } else {
        FloatRowDot<T, MT, NR>::run(r0, r1, cols, x, nt, a0, a1, norm, part, wpr);
    }
}

// RMS norm folded into a launch: the inverse RMS of each of the nt rows of x into inv[] (shared,
// as the rms_norm kernel computes it), every thread of the block taking part.
DEV void rows_inv_rms(const float* __restrict__ x, int cols, int nt, float eps, float* inv, float* red) {
    for (int t = 0; t < nt; t++) {
        float s = block_inv_rms(x + (u64)t * cols, cols, eps, red);
        if (threadIdx.x == 0) inv[t] = s;
    }
    __syncthreads();
}

// acc[t] *= inv[t] when the launch folds a norm in.
template <int MT>
DEV void scale_rows(float* acc, int nt, const float* norm, const float* inv) {
#pragma unroll
    for (int t = 0; t < MT; t++)
        if (norm && t < nt) acc[t] *= inv[t];
}

// Splitting rows between warps: `wpr` (1, 2 or 4) warps of a block share a row, so that a matrix
// of few rows — the output and down products of a decode step — still has enough warps to keep
// every SM reading (its last blocks would otherwise run with the GPU mostly idle).
DEV int warp_row(int wpr) { return blockIdx.x * ((blockDim.x >> 5) / wpr) + (threadIdx.x >> 5) / wpr; }
DEV int warp_part(int wpr) { return (threadIdx.x >> 5) % wpr; }

// The row's totals from this warp's partial sums: reduced over the warp, then over the row's
// `wpr` warps in part order (deterministic) through `sh`; valid in lane 0 of the part-0 warp.
// Every warp of the block calls this (it synchronizes when wpr > 1).
template <int MT>
DEV void row_totals(float* acc, int nt, int wpr, float (*sh)[MV_MAX_TOKENS]) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int t = 0; t < MT; t++)
        if (t < nt) acc[t] = warp_sum(acc[t]);
    if (wpr == 1) return;
    __syncthreads();  // sh may still be read by an earlier call
    // (Token loops unrolled to MT: acc[] stays in registers.)
#pragma unroll
    for (int t = 0; t < MT; t++)
        if (lane == 0 && t < nt) sh[warp][t] = acc[t];
    __syncthreads();
    if (lane == 0 && warp % wpr == 0) {
#pragma unroll
        for (int t = 0; t < MT; t++) {
            if (t < nt) {
                float s = 0.0f;
                for (int p = 0; p < wpr; p++) s += sh[warp + p][t];
                acc[t] = s;
            }
        }
    }
}

// Store of row r's totals (from lane 0 of the row's part-0 warp): + bias, or, with `accumulate`,
// added to what `out` holds (a product folded into the residual stream).
template <int MT>
DEV void store_row(const float* acc, int nt, int rows, int r, const float* __restrict__ bias, float* __restrict__ out,
                   int accumulate, int wpr) {
    if ((threadIdx.x & 31) != 0 || warp_part(wpr) != 0) return;
#pragma unroll
    for (int t = 0; t < MT; t++) {
        if (t < nt) {
            float s = acc[t] + (bias ? bias[r] : 0.0f);
            float* o = out + (u64)t * rows + r;
            *o = accumulate ? *o + s : s;
        }
    }
}

template <int T, int MT>
DEV void matvec_impl(const u8* __restrict__ w, int rows, int cols, u64 row_bytes, const float* __restrict__ x,
                     int nt, const float* __restrict__ bias, float* __restrict__ out, int accumulate, int wpr) {
    __shared__ float sh[MV_MAX_WARPS][MV_MAX_TOKENS];
    int r = warp_row(wpr);
    float acc[MT];
    row_partials<T, 1, MT>(r < rows ? w + (u64)r * row_bytes : nullptr, nullptr, cols, x, nt, acc, acc, warp_part(wpr),
                       wpr);
    row_totals<MT>(acc, nt, wpr, sh);
    if (r < rows) store_row<MT>(acc, nt, rows, r, bias, out, accumulate, wpr);
}

// Up to three products of the same input in one launch (Q/K/V, gate/up): the grid covers the
// rows of all of them, each warp finds its matrix. Same type and columns for all.
// With `norm`, the products are of rms_norm(x) · norm (the block's input norm, eps `eps`).
template <int T, int MT>
DEV void matvec3_impl(const u8* w0, const u8* w1, const u8* w2, int r0, int r1, int r2, int cols, u64 row_bytes,
                      const float* x, int nt, const float* b0, const float* b1, const float* b2, float* o0, float* o1,
                      float* o2, const float* norm, float eps, int wpr) {
    __shared__ float inv[MV_MAX_TOKENS], red[32], sh[MV_MAX_WARPS][MV_MAX_TOKENS];
    int r = warp_row(wpr);
    // This warp's matrix by selects (indexed arrays would live in local memory); what the
    // store needs is selected after the dot, so that it does not hold registers through it.
    bool in0 = r < r0, in1 = !in0 && r < r0 + r1, live = r < r0 + r1 + r2;
    int rr = in0 ? r : in1 ? r - r0 : r - r0 - r1;
    const u8* w = in0 ? w0 : in1 ? w1 : w2;
    float acc[MT];
    row_partials<T, 1, MT>(live ? w + (u64)rr * row_bytes : nullptr, nullptr, cols, x, nt, acc, acc, warp_part(wpr), wpr,
                       norm);
    if (norm) rows_inv_rms(x, cols, nt, eps, inv, red);  // after the dot: see matvec_glu_impl
    scale_rows<MT>(acc, nt, norm, inv);
    row_totals<MT>(acc, nt, wpr, sh);
    if (live)
        store_row<MT>(acc, nt, in0 ? r0 : in1 ? r1 : r2, rr, in0 ? b0 : in1 ? b1 : b2, in0 ? o0 : in1 ? o1 : o2, 0, wpr);
}

// The gated MLP's first half: out = silu(x · gateᵀ) · (x · upᵀ), one warp per row r taking row
// r of both matrices (same type and shape), so neither product is stored; with `norm`, of
// rms_norm(x) · norm.
template <int T, int MT>
DEV void matvec_glu_impl(const u8* __restrict__ wg, const u8* __restrict__ wu, int rows, int cols, u64 row_bytes,
                         const float* __restrict__ x, int nt, float* __restrict__ out, const float* __restrict__ norm,
                         float eps, int wpr) {
    __shared__ float inv[MV_MAX_TOKENS], red[32], sh[MV_MAX_WARPS][MV_MAX_TOKENS];
    int r = warp_row(wpr);
    bool live = r < rows;
    float g[MT], u[MT];
    row_partials<T, 2, MT>(live ? wg + (u64)r * row_bytes : nullptr, live ? wu + (u64)r * row_bytes : nullptr, cols, x,
                       nt, g, u, warp_part(wpr), wpr, norm);
    // The norm's scale only multiplies the totals, so it is taken after the dot: before it, every
    // block's first weight load waited for a pass over x and a block reduction (a few L2 round
    // trips and two barriers), and a launch's blocks all start together — dead time at the start of
    // each of a decode step's normed products. Here x is in L1 from the dot.
    if (norm) rows_inv_rms(x, cols, nt, eps, inv, red);
    scale_rows<MT>(g, nt, norm, inv);
    scale_rows<MT>(u, nt, norm, inv);
    row_totals<MT>(g, nt, wpr, sh);
    row_totals<MT>(u, nt, wpr, sh);
    if (!live || (threadIdx.x & 31) != 0 || warp_part(wpr) != 0) return;
#pragma unroll
    for (int t = 0; t < MT; t++)
        if (t < nt) out[(u64)t * rows + r] = silu_times(g[t], u[t]);
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

// The products for up to MV_MAX_TOKENS rows of x (`matvec_*`, `matvec3_*`, `matvec_glu_*`) and
// for one (`*_t1_*`: batch-1 decode). One token's kernels hold one accumulator per row instead of
// eight, which leaves registers for more resident warps and more loads in flight per lane —
// what a decode step's products are bound by.
#define MATVEC_PRODUCTS(kind, name, T, MT, BOUNDS)                                                    \
    extern "C" __global__ void __launch_bounds__(BOUNDS) matvec##kind##name(                          \
        const u8* w, int rows, int cols, u64 row_bytes, const float* x, int nt, const float* bias,   \
        float* out, int accumulate, int wpr) {                                                        \
        matvec_impl<T, MT>(w, rows, cols, row_bytes, x, nt, bias, out, accumulate, wpr);             \
    }                                                                                                 \
    extern "C" __global__ void __launch_bounds__(BOUNDS) matvec_glu##kind##name(                      \
        const u8* wg, const u8* wu, int rows, int cols, u64 row_bytes, const float* x, int nt,       \
        float* out, const float* norm, float eps, int wpr) {                                          \
        matvec_glu_impl<T, MT>(wg, wu, rows, cols, row_bytes, x, nt, out, norm, eps, wpr);           \
    }                                                                                                 \
    extern "C" __global__ void __launch_bounds__(BOUNDS) matvec3##kind##name(                         \
        const u8* w0, const u8* w1, const u8* w2, int r0, int r1, int r2, int cols, u64 row_bytes,   \
        const float* x, int nt, const float* b0, const float* b1, const float* b2, float* o0,        \
        float* o1, float* o2, const float* norm, float eps, int wpr) {                                \
        matvec3_impl<T, MT>(w0, w1, w2, r0, r1, r2, cols, row_bytes, x, nt, b0, b1, b2, o0, o1, o2, norm, eps, wpr); \
    }
#define MATVEC_KERNELS(name, T)                                                                      \
    MATVEC_PRODUCTS(_, name, T, MV_MAX_TOKENS, MV_BOUNDS_##name)                                      \
    MATVEC_PRODUCTS(_t1_, name, T, 1, MV_BOUNDS1_##name)                                              \
    extern "C" __global__ void dequant_bf16_##name(const u8* w, int rows, int cols, u64 row_bytes,   \
                                                   u16* out) {                                        \
        dequant_bf16_impl<T>(w, rows, cols, row_bytes, out);                                          \
    }                                                                                                 \
    extern "C" __global__ void embed_##name(const u8* w, int rows, int cols, u64 row_bytes,          \
                                            const u32* ids, float* out) {                             \
        embed_impl<T>(w, rows, cols, row_bytes, ids, out);                                            \
    }
FOR_EACH_TYPE(MATVEC_KERNELS)
