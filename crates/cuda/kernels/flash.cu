// Prefill attention over an f16 or Q8_0 paged cache as one fused kernel (flash attention on the tensor
// cores): per block 64 query rows of one sequence and one head, 4 warps of 16 rows; K and V come
// through shared memory 64 positions at a time straight from the cache's pages (their mma
// fragments read back by ldmatrix, V's transposed on the way); scores, the
// online softmax and P·V stay in registers (mma.sync m16n8k16, f16 in, f32 accumulate), so
// nothing of size rows × context is written anywhere. Decode rows take attention.cu's kernel.

#define FA_ROWS 64   // query rows per block (16 per warp)
#define FA_KEYS 64   // positions per K/V tile
#define FA_PAD 8     // f16s of padding per shared row: the fragment loads hit distinct banks

// D += A·B on the tensor cores for one warp: A 16×16 (row-major f16 pairs), B 16×8 (column
// pairs), D 16×8 f32. Fragment layout (PTX ISA, mma.m16n8k16): g = lane / 4, t = lane % 4;
// a0 (row g, cols 2t, 2t+1), a1 (row g+8, same), a2 (row g, cols 2t+8, 2t+9), a3 (row g+8, same);
// b0 (rows 2t, 2t+1, col g), b1 (rows 2t+8, 2t+9, col g); d0,d1 (row g, cols 2t, 2t+1), d2,d3
// (row g+8, same).
#ifndef SUANLI_CUDA_EMU
DEV void mma16816(float* d, const u32* a, const u32* b) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// A shared-memory address (ldmatrix takes one): computed once per thread, the per-tile offsets
// are then constants added to it.
typedef u32 sptr;
DEV sptr smem_addr(const void* p) {
    u32 a;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
    return a;
}
// ldmatrix .x4: four 8×8 matrices of 16-bit values in one warp instruction. Lanes 8i .. 8i + 7
// give the (16-byte aligned) addresses of matrix i's 8 rows; lane l receives in r[i] matrix
// i's row l / 4, columns 2(l % 4) and 2(l % 4) + 1 — with .trans, rows 2(l % 4) and
// 2(l % 4) + 1 of column l / 4 — the first value in the low half. That is an mma B fragment
// of a tile stored position-major (K, no transpose) or key-major (V, transposed).
DEV void ldsm_x4(u32* r, sptr row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(row)
                 : "memory");
}
DEV void ldsm_x4_trans(u32* r, sptr row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(row)
                 : "memory");
}
// Asynchronous 16-byte copies global → shared (sm_80+): `src_bytes` of 0 reads nothing and
// zero-fills. Copies issued before a commit form a group; wait<N> returns once at most the N
// most recent groups of this thread are still in flight (other threads' copies: a barrier after).
DEV void cp_async16(sptr dst, const void* src, u32 src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src), "r"(src_bytes) : "memory");
}
DEV void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N> DEV void cp_async_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory"); }
#endif
// (Under the emulator, cuda_emu.h supplies mma16816, sptr, smem_addr, ldsm_x4(_trans) and the
// cp.async calls — copies made when waited for, so a read before the wait sees stale data.)

DEV u32 pack_f16(float lo, float hi) { return (u32)f2h(lo) | ((u32)f2h(hi) << 16); }

// Start copying cache rows k0 .. k0 + 63 of one KV head into shared memory as f16, from their
// pages; positions past the block's last row are zero (and masked). f16 cache: 16-byte cp.async
// copies, in flight while the block computes (the caller commits and waits).
template <int HD>
DEV void fa_issue_tile(const u16* c, const u32* table, int block_size, int kv_dim, int kvh, int k0, int last_pos,
                       u16 (*dst)[HD + FA_PAD]) {
    for (int i = threadIdx.x; i < FA_KEYS * HD / 8; i += blockDim.x) {
        int r = i / (HD / 8), col = 8 * (i % (HD / 8)), p = k0 + r;
        const u16* src = c;  // read from only when the row exists
        u32 bytes = 0;
        if (p <= last_pos) {
            u64 slot = (u64)table[p / block_size] * block_size + p % block_size;
            src = c + slot * kv_dim + (u64)kvh * HD + col;
            bytes = 16;
        }
        cp_async16(smem_addr(&dst[r][col]), src, bytes);
    }
}
// Q8_0 cache: a thread per 32-value block, dequantized to f16 — synchronously (the values pass
// through registers), so the caller's waits find nothing in flight.
template <int HD>
DEV void fa_issue_tile(const q8kv* c, const u32* table, int block_size, int kv_dim, int kvh, int k0, int last_pos,
                      u16 (*dst)[HD + FA_PAD]) {
    for (int i = threadIdx.x; i < FA_KEYS * HD / 32; i += blockDim.x) {
        int r = i / (HD / 32), b = i % (HD / 32), p = k0 + r;
        u32 packed[16];
        if (p <= last_pos) {
            u64 slot = (u64)table[p / block_size] * block_size + p % block_size;
            const u8* blk = (const u8*)c + slot * (u64)(kv_dim / 32 * 34) + (kvh * HD / 32 + b) * 34;
            float d = ldh(blk);
#pragma unroll
            for (int j = 0; j < 16; j++) {
                u16 two = ld16(blk + 2 + 2 * j);
                packed[j] = pack_f16(d * (float)(i8)(u8)two, d * (float)(i8)(u8)(two >> 8));
            }
        } else {
#pragma unroll
            for (int j = 0; j < 16; j++) packed[j] = 0;
        }
#pragma unroll
        for (int j = 0; j < 4; j++)
            *(uint4*)&dst[r][32 * b + 8 * j] = uint4{packed[4 * j], packed[4 * j + 1], packed[4 * j + 2], packed[4 * j + 3]};
    }
}

// tiles[4 * blockIdx.x ..]: first query row (in q and out), rows (≤ 64), offset of the
// sequence's block table in `tables`, position of the first row. A row at position p sees
// positions 0..=p. Grid: (tiles, heads); 128 threads.
template <int HD, typename C>
DEV void flash_prefill_impl(const float* __restrict__ q, const C* __restrict__ kc, const C* __restrict__ vc,
                            const u32* __restrict__ tables, const u32* __restrict__ tiles, int n_heads, int n_kv,
                            int block_size, float scale, float* __restrict__ out) {
    __shared__ __align__(16) u16 ks[FA_KEYS][HD + FA_PAD];
    __shared__ __align__(16) u16 vs[FA_KEYS][HD + FA_PAD];
    const u32* tile = tiles + 4 * blockIdx.x;
    const int row0 = (int)tile[0], nrows = (int)tile[1], pos0 = (int)tile[3];
    const u32* table = tables + tile[2];
    const int h = blockIdx.y, kvh = h / (n_heads / n_kv), kv_dim = n_kv * HD;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int wrow = warp * 16;                  // the warp's first row in the tile
    const bool active = wrow < nrows;            // warp-uniform
    const int last_pos = pos0 + nrows - 1;       // the block's last visible position
    const int warp_last = pos0 + min(wrow + 15, nrows - 1);

    // Q fragments, scaled by scale·log2(e) so that the softmax is exp2.
    u32 qa[HD / 16][4];
    const float qscale = scale * 1.4426950408889634f;
#pragma unroll
    for (int kk = 0; kk < HD / 16; kk++) {
#pragma unroll
        for (int i = 0; i < 4; i++) {
            int r = wrow + g + 8 * (i & 1), c = 16 * kk + 2 * t + 8 * (i >> 1);
            float lo = 0.0f, hi = 0.0f;
            if (r < nrows) {
                const float* qr = q + ((u64)(row0 + r) * n_heads + h) * HD + c;
                lo = qr[0] * qscale;
                hi = qr[1] * qscale;
            }
            qa[kk][i] = pack_f16(lo, hi);
        }
    }
    float o[HD / 8][4];
#pragma unroll
    for (int i = 0; i < HD / 8; i++) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};  // rows g and g + 8
    const int qpos[2] = {pos0 + wrow + g, pos0 + wrow + g + 8};
    // This lane's ldmatrix rows (see below), in bytes from which the tiles' offsets count.
    const sptr k_row = smem_addr(&ks[lane & 7][8 * (lane >> 3)]);
    const sptr v_row = smem_addr(&vs[(lane & 7) + 8 * ((lane >> 3) & 1)][8 * (lane >> 4)]);
    constexpr int ROW_BYTES = 2 * (HD + FA_PAD);

    // K and V tiles arrive by turns (as in FlashAttention-2): V_j is copied while S = Q·K_jᵀ is
    // computed, K_{j+1} while the softmax and P·V_j are. Each tile has one buffer: the barriers
    // after S and after P·V free them for the next copy.
    const int ntiles = last_pos / FA_KEYS + 1;
    fa_issue_tile<HD>(kc, table, block_size, kv_dim, kvh, 0, last_pos, ks);
    cp_async_commit();
    for (int j = 0; j < ntiles; j++) {
        const int k0 = j * FA_KEYS;
        fa_issue_tile<HD>(vc, table, block_size, kv_dim, kvh, k0, last_pos, vs);
        cp_async_commit();
        cp_async_wait<1>();  // K_j is here (V_j may not be)
        __syncthreads();
        // Warp-uniform; every warp reaches every barrier.
        const bool work = active && k0 <= warp_last;

        // S = Q·Kᵀ: 8 tiles of 8 positions. One ldmatrix gives the B fragments of two 16-value
        // steps of the head: lane l addresses position 8·nt + l % 8, values 8·(l / 8) on.
        float s[FA_KEYS / 8][4];
#pragma unroll
        for (int nt = 0; nt < FA_KEYS / 8; nt++) {
            s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
            if (!work) continue;
#pragma unroll
            for (int kk = 0; kk < HD / 16; kk += 2) {
                u32 b[4];
                ldsm_x4(b, k_row + 8 * nt * ROW_BYTES + 2 * 16 * kk);
                mma16816(s[nt], qa[kk], b);
                mma16816(s[nt], qa[kk + 1], b + 2);
            }
        }
        __syncthreads();  // K_j is read no more
        if (j + 1 < ntiles) fa_issue_tile<HD>(kc, table, block_size, kv_dim, kvh, k0 + FA_KEYS, last_pos, ks);
        cp_async_commit();  // (empty after the last tile: the waits count groups)
        if (work) {
            // Causal mask, then the online softmax per row (a row's values are spread over the 4
            // lanes of its group).
            float corr[2];
#pragma unroll
            for (int half = 0; half < 2; half++) {
                float mx = m[half];
#pragma unroll
                for (int nt = 0; nt < FA_KEYS / 8; nt++)
#pragma unroll
                    for (int c = 0; c < 2; c++) {
                        int p = k0 + 8 * nt + 2 * t + c;
                        float& v = s[nt][2 * half + c];
                        if (p > qpos[half]) v = -INFINITY;
                        mx = fmaxf(mx, v);
                    }
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
                // Position k0 ≤ qpos for every row this warp computes, so mx is finite.
                corr[half] = exp2f(m[half] - mx);
                m[half] = mx;
                float sum = 0.0f;
#pragma unroll
                for (int nt = 0; nt < FA_KEYS / 8; nt++)
#pragma unroll
                    for (int c = 0; c < 2; c++) {
                        float& v = s[nt][2 * half + c];
                        v = exp2f(v - mx);
                        sum += v;
                    }
                l[half] = l[half] * corr[half] + sum;  // this lane's share; summed at the end
            }
#pragma unroll
            for (int i = 0; i < HD / 8; i++) {
                o[i][0] *= corr[0];
                o[i][1] *= corr[0];
                o[i][2] *= corr[1];
                o[i][3] *= corr[1];
            }
        }
        cp_async_wait<1>();  // V_j is here (K_{j+1} may not be)
        __syncthreads();
        if (work) {
            // O += P·V: the score accumulators of two adjacent tiles are the A fragment of 16 keys.
#pragma unroll
            for (int kk = 0; kk < FA_KEYS / 16; kk++) {
                u32 pa[4] = {pack_f16(s[2 * kk][0], s[2 * kk][1]), pack_f16(s[2 * kk][2], s[2 * kk][3]),
                             pack_f16(s[2 * kk + 1][0], s[2 * kk + 1][1]), pack_f16(s[2 * kk + 1][2], s[2 * kk + 1][3])};
                // One transposing ldmatrix gives the B fragments of two 8-value column tiles: lane l
                // addresses key 16·kk + l % 8 (+ 8 for matrices 1 and 3), values 8·dt (+ 8 for 2 and 3).
#pragma unroll
                for (int dt = 0; dt < HD / 8; dt += 2) {
                    u32 b[4];
                    ldsm_x4_trans(b, v_row + 16 * kk * ROW_BYTES + 2 * 8 * dt);
                    mma16816(o[dt], pa, b);
                    mma16816(o[dt + 1], pa, b + 2);
                }
            }
        }
        __syncthreads();  // V_j is read no more
    }
    cp_async_wait<0>();  // (nothing is in flight: the last group is empty)
    if (!active) return;
#pragma unroll
    for (int half = 0; half < 2; half++) {
        float total = l[half];
        total += __shfl_xor_sync(0xffffffffu, total, 1);
        total += __shfl_xor_sync(0xffffffffu, total, 2);
        int r = wrow + g + 8 * half;
        if (r < nrows) {
            float* orow = out + ((u64)(row0 + r) * n_heads + h) * HD;
            float inv = 1.0f / total;
#pragma unroll
            for (int dt = 0; dt < HD / 8; dt++) {
                orow[8 * dt + 2 * t] = o[dt][2 * half] * inv;
                orow[8 * dt + 2 * t + 1] = o[dt][2 * half + 1] * inv;
            }
        }
    }
}

#define FLASH_KERNEL(name, HD, C)                                                                         \
    extern "C" __global__ void __launch_bounds__(128)                                                    \
        flash_prefill_##name##_##HD(const float* q, const C* kc, const C* vc, const u32* tables,          \
                                    const u32* tiles, int n_heads, int n_kv, int block_size, float scale, \
                                    float* out) {                                                        \
        flash_prefill_impl<HD, C>(q, kc, vc, tables, tiles, n_heads, n_kv, block_size, scale, out);      \
    }
FLASH_KERNEL(f16, 64, u16)
FLASH_KERNEL(f16, 128, u16)
FLASH_KERNEL(q8_0, 64, q8kv)
FLASH_KERNEL(q8_0, 128, q8kv)
