// The paged KV cache: per layer, K and V as [slots, kv_dim] rows (slot = block * block_size +
// offset), f32, f16, or Q8_0 (a row is kv_dim / 32 blocks of an f16 scale and 32 signed bytes,
// llama.cpp's block_q8_0). Attention reads it through each sequence's block table.

struct q8kv { u8 b; };  // a Q8_0 cache, addressed by bytes
DEV float kv_elem(const float* c, u64 slot, int kv_dim, int col) { return c[slot * kv_dim + col]; }
DEV float kv_elem(const u16* c, u64 slot, int kv_dim, int col) { return h2f(c[slot * kv_dim + col]); }
DEV float kv_elem(const q8kv* c, u64 slot, int kv_dim, int col) {
    const u8* blk = (const u8*)c + slot * (u64)(kv_dim / 32 * 34) + (col / 32) * 34;
    return ldh(blk) * (float)(i8)blk[2 + col % 32];
}
DEV void kv_put(float* p, float v) { *p = v; }
DEV void kv_put(u16* p, float v) { *p = f2h(v); }

// One warp per 32 values of a row (rows · kv_dim threads, whole warps): Q8_0 as llama.cpp
// rounds it — d = amax / 127, q = roundf(x / d) — the scale stored as f16.
DEV void q8_put(float x, u8* blk) {
    float amax = warp_max(fabsf(x));
    float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
    int lane = threadIdx.x & 31;
    blk[2 + lane] = (u8)(i8)roundf(x * id);
    if (lane == 0) {
        u16 h = f2h(d);
        blk[0] = (u8)h;
        blk[1] = (u8)(h >> 8);
    }
}

// Column c of K and V into slot `slot`. Q8_0 takes the 32 columns of a block from the 32 lanes
// of a warp, so callers run whole warps over whole rows (kv_dim is a multiple of 32).
template <typename C> DEV void kv_store(float k, float v, u64 slot, int kv_dim, int c, C* kc, C* vc) {
    u64 at = slot * kv_dim + c;
    kv_put(kc + at, k);
    kv_put(vc + at, v);
}
DEV void kv_store(float k, float v, u64 slot, int kv_dim, int c, q8kv* kc, q8kv* vc) {
    u64 at = slot * (u64)(kv_dim / 32 * 34) + c / 32 * 34;
    q8_put(k, (u8*)kc + at);
    q8_put(v, (u8*)vc + at);
}

// A thread per value, whole warps (rows · kv_dim is a multiple of 32 where Q8_0 needs it).
template <typename C>
DEV void write_kv_impl(const float* k, const float* v, const u32* slots, int rows, int kv_dim, C* kc, C* vc) {
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (u64)rows * kv_dim) return;
    u64 r = i / kv_dim;
    kv_store(k[i], v[i], (u64)slots[r], kv_dim, (int)(i % kv_dim), kc, vc);
}

// Everything between the Q/K/V products and attention for one row per block: the rotary
// embedding of q and k in place (the row's cos/sin computed once, shared by all heads), then k
// and v into the row's slot. q and k share the rotation (head_dim, rotary_dim ≤ 256, style).
#define ROPE_MAX_HALF 128
template <typename C>
DEV void rope_write_kv_impl(float* q, float* k, const float* __restrict__ v, const u32* __restrict__ pos,
                            const float* __restrict__ inv_freq, int hq, int hk, int hd, int rot, int neox,
                            const u32* __restrict__ slots, C* kc, C* vc) {
    __shared__ float cs[2][ROPE_MAX_HALF];
    int row = blockIdx.x, half = rot >> 1;
    for (int p = threadIdx.x; p < half; p += blockDim.x)
        sincosf((float)pos[row] * inv_freq[p], &cs[1][p], &cs[0][p]);
    __syncthreads();
    float* qr = q + (u64)row * hq * hd;
    float* kr = k + (u64)row * hk * hd;
    for (int i = threadIdx.x; i < (hq + hk) * half; i += blockDim.x) {
        int h = i / half, p = i % half;
        rope_rotate(h < hq ? qr + h * hd : kr + (h - hq) * hd, p, half, neox, cs[0][p], cs[1][p]);
    }
    __syncthreads();  // the rotated k, written by other threads, is read below
    int kv_dim = hk * hd;
    const float* vr = v + (u64)row * kv_dim;
    for (int c = threadIdx.x; c < kv_dim; c += blockDim.x) kv_store(kr[c], vr[c], (u64)slots[row], kv_dim, c, kc, vc);
}

#define ATT_CHUNK 8
#define ATT_MAX_DIMS 8  // head_dim ≤ 256

#define ATT_WARPS 8  // warps per (row, head): the context is split between them

// One block of ATT_WARPS warps per (query row, head) (split-K decoding): warp w takes rounds
// w, w + ATT_WARPS, ... of ATT_CHUNK positions, keeps its own online softmax (max, sum, output),
// and the warps' partial results are merged at the end through shared memory. Within a round
// the ATT_CHUNK reductions overlap. `row_meta[r]` = (table offset into `tables`, number of
// positions the row sees; 0: the row belongs to the GEMM path). Lanes own dims lane, lane + 32, ...
//
// Long contexts are also split across blocks (flash-decoding): with n_split > 1, block x covers
// head x % n_heads and positions [span·s, span·(s + 1)) for s = x / n_heads, and leaves its
// merged but unnormalized result (max, sum, output[hd]) in `part` for attention_merge.
template <typename C>
DEV void attention_impl(const float* __restrict__ q, const C* __restrict__ kc, const C* __restrict__ vc,
                        const u32* __restrict__ tables, const u32* __restrict__ row_meta, int n_heads, int n_kv,
                        int hd, int block_size, float scale, int span, int n_split, float* __restrict__ part,
                        float* __restrict__ out) {
    __shared__ float sm_m[ATT_WARPS], sm_l[ATT_WARPS];
    __shared__ float sm_acc[ATT_WARPS][ATT_MAX_DIMS * 32];
    int h = blockIdx.x % n_heads, split = blockIdx.x / n_heads, row = blockIdx.y;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int kvh = h / (n_heads / n_kv), kv_dim = n_kv * hd;
    const u32* table = tables + row_meta[2 * row];
    int n_ctx = (int)row_meta[2 * row + 1];
    if (n_ctx == 0) return;  // the whole block returns together
    const int p_begin = split * span, p_end = min(n_ctx, p_begin + span);
    const float* qh = q + ((u64)row * n_heads + h) * hd;
    float qv[ATT_MAX_DIMS], acc[ATT_MAX_DIMS];
#pragma unroll
    for (int i = 0; i < ATT_MAX_DIMS; i++) {
        int d = lane + 32 * i;
        qv[i] = d < hd ? qh[d] * scale : 0.0f;
        acc[i] = 0.0f;
    }
    float m = -INFINITY, l = 0.0f;
    // A round's loads are issued together: positions past the end read the last one (and are
    // masked) instead of being branched around — a branch per position made every position's
    // table, K and V loads wait for the previous position's (two dozen memory latencies a round).
    for (int p0 = p_begin + warp * ATT_CHUNK; p0 < p_end; p0 += ATT_WARPS * ATT_CHUNK) {
        float s[ATT_CHUNK];
        u64 base[ATT_CHUNK];
#pragma unroll
        for (int c = 0; c < ATT_CHUNK; c++) {
            int p = min(p0 + c, p_end - 1);
            base[c] = (u64)table[p / block_size] * block_size + p % block_size;
        }
#pragma unroll
        for (int c = 0; c < ATT_CHUNK; c++) {
            s[c] = 0.0f;
#pragma unroll
            for (int i = 0; i < ATT_MAX_DIMS; i++) {
                int d = lane + 32 * i;
                if (d < hd) s[c] += qv[i] * kv_elem(kc, base[c], kv_dim, kvh * hd + d);
            }
        }
        float cm = m;
#pragma unroll
        for (int c = 0; c < ATT_CHUNK; c++) {
            s[c] = warp_sum(s[c]);
            if (p0 + c < p_end) cm = fmaxf(cm, s[c]);
        }
        float corr = expf(m - cm);  // m = -inf on the first round: corr = 0, acc and l are 0
        l *= corr;
#pragma unroll
        for (int i = 0; i < ATT_MAX_DIMS; i++) acc[i] *= corr;
        float e[ATT_CHUNK];
#pragma unroll
        for (int c = 0; c < ATT_CHUNK; c++) {
            e[c] = p0 + c < p_end ? expf(s[c] - cm) : 0.0f;  // a masked position adds 0·v
            l += e[c];
        }
#pragma unroll
        for (int c = 0; c < ATT_CHUNK; c++) {
#pragma unroll
            for (int i = 0; i < ATT_MAX_DIMS; i++) {
                int d = lane + 32 * i;
                if (d < hd) acc[i] += e[c] * kv_elem(vc, base[c], kv_dim, kvh * hd + d);
            }
        }
        m = cm;
    }
    // Merge: out = Σ_w acc_w·e^(m_w − M) / Σ_w l_w·e^(m_w − M), M = max_w m_w. A warp that saw
    // no position has m = −inf and l = 0 and adds nothing.
    if (lane == 0) {
        sm_m[warp] = m;
        sm_l[warp] = l;
    }
#pragma unroll
    for (int i = 0; i < ATT_MAX_DIMS; i++) sm_acc[warp][lane + 32 * i] = acc[i];
    __syncthreads();
    float big = -INFINITY;
#pragma unroll
    for (int w = 0; w < ATT_WARPS; w++) big = fmaxf(big, sm_m[w]);
    float total = 0.0f;
#pragma unroll
    for (int w = 0; w < ATT_WARPS; w++) total += sm_m[w] == -INFINITY ? 0.0f : sm_l[w] * expf(sm_m[w] - big);
    // With one split, the row's output; else this split's part (an empty split: max −inf, sum 0).
    float* o = n_split == 1 ? out + ((u64)row * n_heads + h) * hd
                            : part + (((u64)row * n_heads + h) * n_split + split) * (hd + 2) + 2;
    float inv = n_split == 1 ? 1.0f / total : 1.0f;
    if (n_split > 1 && threadIdx.x == 0) {
        o[-2] = big;
        o[-1] = total;
    }
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float v = 0.0f;
#pragma unroll
        for (int w = 0; w < ATT_WARPS; w++)
            if (sm_m[w] != -INFINITY) v += sm_acc[w][d] * expf(sm_m[w] - big);
        o[d] = v * inv;
    }
}

// The splits of each (row, head) into its output: as the warps' merge above, over the parts.
// Grid (heads, rows); rows another path computes (row_meta 0) are left alone.
extern "C" __global__ void attention_merge(const float* __restrict__ part, const u32* __restrict__ row_meta,
                                           int n_heads, int hd, int n_split, float* __restrict__ out) {
    int h = blockIdx.x, row = blockIdx.y;
    if (row_meta[2 * row + 1] == 0) return;
    const float* pr = part + ((u64)row * n_heads + h) * n_split * (hd + 2);
    float big = -INFINITY, total = 0.0f;
    for (int s = 0; s < n_split; s++) big = fmaxf(big, pr[s * (hd + 2)]);
    for (int s = 0; s < n_split; s++) {
        float m = pr[s * (hd + 2)];
        if (m != -INFINITY) total += pr[s * (hd + 2) + 1] * expf(m - big);
    }
    float* o = out + ((u64)row * n_heads + h) * hd;
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float v = 0.0f;
        for (int s = 0; s < n_split; s++) {
            float m = pr[s * (hd + 2)];
            if (m != -INFINITY) v += pr[s * (hd + 2) + 2 + d] * expf(m - big);
        }
        o[d] = v / total;
    }
}

// Long prefill chunks take cuBLAS instead (see lib.rs): a sequence's K and V are gathered from
// the pages into contiguous [ctx, kv_dim] rows, scores S = Q·Kᵀ come from a batched GEMM, this
// softmax turns each row into probabilities under the causal mask, and O = P·V is a second GEMM.
template <typename C>
DEV void gather_kv_impl(const C* kc, const C* vc, const u32* table, int ctx, int kv_dim, int bs, C* ko, C* vo) {
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (u64)ctx * kv_dim) return;
    int p = (int)(i / kv_dim), c = (int)(i % kv_dim);
    u64 at = ((u64)table[p / bs] * bs + p % bs) * kv_dim + c;
    ko[i] = kc[at];
    vo[i] = vc[at];
}

// Row r of S ([rows, ctx], rows = heads of a group × q_len) is query i = r % q_len, which sees
// positions < ctx - q_len + i + 1. One block per row.
template <typename C>
DEV void softmax_causal_impl(const float* s, int q_len, int ctx, C* p) {
    __shared__ float red[32];
    int r = blockIdx.x, i = r % q_len, visible = ctx - q_len + i + 1;
    const float* sr = s + (u64)r * ctx;
    C* pr = p + (u64)r * ctx;
    float m = -INFINITY;
    for (int j = threadIdx.x; j < visible; j += blockDim.x) m = fmaxf(m, sr[j]);
    m = block_max(m, red);
    float sum = 0.0f;
    for (int j = threadIdx.x; j < visible; j += blockDim.x) sum += expf(sr[j] - m);
    sum = block_sum(sum, red);
    float inv = 1.0f / sum;
    for (int j = threadIdx.x; j < ctx; j += blockDim.x) kv_put(pr + j, j < visible ? expf(sr[j] - m) * inv : 0.0f);
}

extern "C" __global__ void to_f16(const float* __restrict__ x, u64 n, u16* __restrict__ out) {
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = f2h(x[i]);
}

#define ATT_KERNEL(name, C)                                                                              \
    extern "C" __global__ void attention_##name(const float* q, const C* kc, const C* vc, const u32* tables, \
                                                const u32* row_meta, int n_heads, int n_kv, int hd,        \
                                                int block_size, float scale, int span, int n_split,        \
                                                float* part, float* out) {                                 \
        attention_impl<C>(q, kc, vc, tables, row_meta, n_heads, n_kv, hd, block_size, scale, span, n_split, \
                          part, out);                                                                      \
    }
ATT_KERNEL(f32, float)
ATT_KERNEL(f16, u16)
ATT_KERNEL(q8_0, q8kv)

// Writing the cache (every type).
#define WRITE_KERNELS(name, C)                                                                           \
    extern "C" __global__ void write_kv_##name(const float* k, const float* v, const u32* slots, int rows, \
                                               int kv_dim, C* kc, C* vc) {                                \
        write_kv_impl<C>(k, v, slots, rows, kv_dim, kc, vc);                                             \
    }                                                                                                     \
    extern "C" __global__ void rope_write_kv_##name(float* q, float* k, const float* v, const u32* pos,   \
                                                    const float* inv_freq, int hq, int hk, int hd, int rot, \
                                                    int neox, const u32* slots, C* kc, C* vc) {           \
        rope_write_kv_impl<C>(q, k, v, pos, inv_freq, hq, hk, hd, rot, neox, slots, kc, vc);             \
    }
WRITE_KERNELS(f32, float)
WRITE_KERNELS(f16, u16)
WRITE_KERNELS(q8_0, q8kv)

// Element caches: the GEMM path's kernels.
#define KV_KERNELS(name, C)                                                                              \
    extern "C" __global__ void gather_kv_##name(const C* kc, const C* vc, const u32* table, int ctx,      \
                                                int kv_dim, int bs, C* ko, C* vo) {                        \
        gather_kv_impl<C>(kc, vc, table, ctx, kv_dim, bs, ko, vo);                                        \
    }                                                                                                     \
    extern "C" __global__ void softmax_causal_##name(const float* s, int q_len, int ctx, C* p) {          \
        softmax_causal_impl<C>(s, q_len, ctx, p);                                                          \
    }
KV_KERNELS(f32, float)
KV_KERNELS(f16, u16)
