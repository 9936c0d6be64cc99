// The k largest logits of a row (k ≤ TOPK_MAX), for sampling on the device: the engine draws
// from these candidates exactly as from the whole vocabulary when the request's top-k bounds
// the draw. Order: larger value first, the lower index first on ties — the host sampler's.

#define TOPK_MAX 256
#define TOPK_THREADS 1024

// Float bits as an unsigned key with the same order (−0 below +0, as Rust's total_cmp).
DEV u32 order_key(float f) {
    u32 u = __float_as_uint(f);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// Exclusive prefix count of `flag` over the block (in thread order) and the block's total.
DEV u32 block_count_before(bool flag, u32* warp_counts, u32* total) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    u32 mask = __ballot_sync(0xffffffffu, flag);
    u32 before = __popc(mask & ((1u << lane) - 1u));
    __syncthreads();  // warp_counts may still be read from the previous call
    if (lane == 0) warp_counts[warp] = __popc(mask);
    __syncthreads();
    u32 sum = 0;
    for (int w = 0; w < nw; w++) {
        if (w < warp) before += warp_counts[w];
        sum += warp_counts[w];
    }
    *total = sum;
    return before;
}

// One block of TOPK_THREADS per row: the key of the k-th largest value is found by radix
// selection (four passes over the row, one byte each, most significant first, histograms per
// warp), then the values above it are gathered, the ties at it taken lowest index first, and
// the k candidates ranked. With `mass` (else null), the row's Σ exp(l − max) as well — top-p's
// normalizer over the whole vocabulary. A row with a NaN or an infinity gets (0xffffffff, NaN)
// pairs and a NaN mass.
extern "C" __global__ void __launch_bounds__(TOPK_THREADS)
    top_k_rows(const float* __restrict__ x, int cols, int k, u32* __restrict__ ids, float* __restrict__ vals,
               float* __restrict__ mass) {
    __shared__ u32 hist[TOPK_THREADS / 32][256];
    __shared__ u32 cand_id[TOPK_MAX];
    __shared__ float cand_v[TOPK_MAX];
    __shared__ u32 warp_counts[32];
    __shared__ u32 sh_prefix, sh_want, n_above;
    __shared__ float red[32];
    const float* xr = x + (u64)blockIdx.x * cols;
    u32* io = ids + (u64)blockIdx.x * k;
    float* vo = vals + (u64)blockIdx.x * k;
    int tid = threadIdx.x, warp = tid >> 5, nw = blockDim.x >> 5;

    // One block reads the whole row several times: each pass by each_value (eight loads in
    // flight a thread).
    float bad = 0.0f;
    each_value(xr, cols, [&](int, float v) {
        if (!(fabsf(v) <= 3.402823466e38f)) bad = 1.0f;
    });
    if (block_sum(bad, red) > 0.0f) {
        for (int i = tid; i < k; i += blockDim.x) {
            io[i] = 0xffffffffu;
            vo[i] = __int_as_float(0x7fc00000);
        }
        if (mass && tid == 0) mass[blockIdx.x] = __int_as_float(0x7fc00000);
        return;  // the whole block: the sum is the same in every thread
    }

    // Radix selection: `prefix` holds the selected key's bytes fixed so far (under `mask`),
    // `want` its rank among the keys that share them.
    u32 prefix = 0, mask = 0, want = (u32)k;
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int i = tid; i < (int)(sizeof(hist) / 4); i += blockDim.x) (&hist[0][0])[i] = 0;
        __syncthreads();
        each_value(xr, cols, [&](int, float v) {
            u32 key = order_key(v);
            if ((key & mask) == prefix) atomicAdd(&hist[warp][(key >> shift) & 255u], 1u);
        });
        __syncthreads();
        // Sum the warps' histograms into the first.
        for (int b = tid; b < 256; b += blockDim.x) {
            u32 s = 0;
            for (int w = 0; w < nw; w++) s += hist[w][b];
            hist[0][b] = s;
        }
        __syncthreads();
        if (tid == 0) {
            u32 acc = 0;
            int b = 255;
            for (; b > 0; b--) {
                if (acc + hist[0][b] >= want) break;
                acc += hist[0][b];
            }
            sh_prefix = prefix | ((u32)b << shift);
            sh_want = want - acc;
        }
        __syncthreads();
        prefix = sh_prefix;
        want = sh_want;
        mask |= 255u << shift;
    }
    // prefix is now the k-th largest key; k − want values lie above it, `want` ties are taken.
    if (tid == 0) n_above = 0;
    __syncthreads();
    each_value(xr, cols, [&](int i, float v) {
        if (order_key(v) > prefix) {
            u32 at = atomicAdd(&n_above, 1u);
            cand_id[at] = (u32)i;
            cand_v[at] = v;
        }
    });
    u32 taken = 0, first_tie = (u32)k - want;
    for (int base = 0; base < cols && taken < want; base += blockDim.x) {
        int i = base + tid;
        float v = i < cols ? xr[i] : 0.0f;
        bool tie = i < cols && order_key(v) == prefix;
        u32 total;
        u32 before = block_count_before(tie, warp_counts, &total);
        if (tie && taken + before < want) {
            cand_id[first_tie + taken + before] = (u32)i;
            cand_v[first_tie + taken + before] = v;
        }
        taken += total;
    }
    __syncthreads();
    // Rank: the candidates before this one in (value descending, index ascending) order.
    if (tid < k) {
        u32 key = order_key(cand_v[tid]), id = cand_id[tid], rank = 0;
        for (int j = 0; j < k; j++) {
            u32 kj = order_key(cand_v[j]);
            rank += kj > key || (kj == key && cand_id[j] < id);
        }
        io[rank] = id;
        vo[rank] = cand_v[tid];
    }
    if (mass) {
        float max = cand_v[0];
        for (int j = 1; j < k; j++) max = fmaxf(max, cand_v[j]);
        float sum = 0.0f;
        each_value(xr, cols, [&](int, float v) { sum += expf(v - max); });
        sum = block_sum(sum, red);
        if (tid == 0) mass[blockIdx.x] = sum;
    }
}

// One token drawn per row where the logits are (Backend::sample_logits): greedy (temperature
// ≤ 0: the first largest), else softmax(logits / temperature) over the tokens whose probability
// at temperature 1 is at least min_p of the largest, by walking the vocabulary in order to the
// first token whose cumulative weight exceeds u · total — the host sampler's draw without top-k
// and top-p. Weights and sums in f64; each thread owns a contiguous run of the vocabulary, the
// runs' sums are scanned in thread order, so the result depends on nothing but the inputs.
// params: per row (temperature, min_p); u: per row, in [0, 1). 0xffffffff: a non-finite logit.
extern "C" __global__ void __launch_bounds__(TOPK_THREADS)
    sample_rows(const float* __restrict__ x, int cols, const float* __restrict__ params,
                const double* __restrict__ u, u32* __restrict__ out) {
    __shared__ double scan[TOPK_THREADS];
    __shared__ float red[32];
    __shared__ ArgmaxShared sh;
    __shared__ int found;
    const float* xr = x + (u64)blockIdx.x * cols;
    const float t = params[2 * blockIdx.x], min_p = params[2 * blockIdx.x + 1];
    const int tid = threadIdx.x;

    float best;
    const u32 first_max = block_argmax(xr, cols, best, sh);
    if (first_max == 0xffffffffu || t <= 0.0f) {
        if (tid == 0) out[blockIdx.x] = first_max;
        return;  // the whole block
    }
    const float max = best;
    // This thread's run [lo, hi) and its weight; the last kept token of the row (the fallback
    // when rounding leaves u · total at the very end).
    const int run = (cols + blockDim.x - 1) / blockDim.x;
    const int lo = min(cols, tid * run), hi = min(cols, lo + run);
    double sum = 0.0;
    int last = -1;
    for (int i = lo; i < hi; i++) {
        float l = xr[i];
        if (min_p > 0.0f && !(expf(l - max) >= min_p)) continue;
        sum += exp((double)((l - max) / t));
        last = i;
    }
    scan[tid] = sum;
    float lastf = (float)last;
    lastf = block_max(lastf, red);  // ≤ 2^24 tokens: exact in a float
    // Inclusive scan of the runs' sums in thread order (Hillis–Steele; fixed order).
    for (int o = 1; o < (int)blockDim.x; o <<= 1) {
        __syncthreads();
        double add = tid >= o ? scan[tid - o] : 0.0;
        __syncthreads();
        scan[tid] += add;
    }
    if (tid == 0) found = (int)lastf;
    __syncthreads();
    const double total = scan[blockDim.x - 1];
    const double r = u[blockIdx.x] * total;
    // Runs own [inclusive sum of the runs before, own inclusive sum): no gaps, no overlaps.
    const double before = tid > 0 ? scan[tid - 1] : 0.0;
    if (sum > 0.0 && before <= r && r < scan[tid]) {
        double rest = r - before;
        int pick = last;  // rounding may leave rest beyond this run's weights: its last token
        for (int i = lo; i < hi; i++) {
            float l = xr[i];
            if (min_p > 0.0f && !(expf(l - max) >= min_p)) continue;
            double w = exp((double)((l - max) / t));
            if (rest < w) {
                pick = i;
                break;
            }
            rest -= w;
        }
        found = pick;
    }
    __syncthreads();
    if (tid == 0) out[blockIdx.x] = (u32)found;
}
