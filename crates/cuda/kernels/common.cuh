// Shared helpers for every suanli kernel. Compiled by NVRTC at start-up (all files concatenated,
// this one first), so no system headers: f16/bf16 conversions are PTX, loads are byte-safe where
// a block format leaves fields unaligned.

typedef unsigned char u8;
typedef signed char i8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

#define DEV static __device__ __forceinline__
#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif

#ifndef SUANLI_CUDA_EMU
DEV float h2f(u16 h) {
    float f;
    asm("{ .reg .b16 t; mov.b16 t, %1; cvt.f32.f16 %0, t; }" : "=f"(f) : "h"(h));
    return f;
}
DEV u16 f2h(float f) {
    u16 h;
    asm("{ .reg .b16 t; cvt.rn.f16.f32 t, %1; mov.b16 %0, t; }" : "=h"(h) : "f"(f));
    return h;
}
// Σ of the four products of the signed bytes of a and b, plus c.
DEV int dp4a(int a, int b, int c) {
    int d;
    asm("dp4a.s32.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
}
// Ask L2 for the 128-byte line holding p (a hint: no register, nothing waits for it).
DEV void prefetch_l2(const void* p) { asm volatile("prefetch.global.L2 [%0];" ::"l"(p)); }
// Quantized weight loads (1, 2, 4, 16 bytes, naturally aligned): read-only and read once a
// launch, so they stream past L1 (no_allocate) and leave it to the activations, which every
// block of an SM reads again to quantize them — a down product's 74 KiB row of x, beside the
// blocks' 100 KiB of shared tiles, would otherwise be pushed out by the weight stream and come
// from L2 once a block (as many bytes as the weights). Float rows keep plain loads: through
// these, ptxas hoisted their activation loads too (80 registers, spills, where plain loads
// keep 63-72).
DEV u32 lds8(const void* p) {
    u32 v;
    asm("ld.global.nc.L1::no_allocate.u8 %0, [%1];" : "=r"(v) : "l"(p));
    return v;
}
DEV u16 lds16(const void* p) {
    u16 v;
    asm("ld.global.nc.L1::no_allocate.u16 %0, [%1];" : "=h"(v) : "l"(p));
    return v;
}
DEV u32 lds32(const void* p) {
    u32 v;
    asm("ld.global.nc.L1::no_allocate.u32 %0, [%1];" : "=r"(v) : "l"(p));
    return v;
}
DEV uint4 lds128(const void* p) {
    uint4 v;
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
        : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
        : "l"(p));
    return v;
}
#endif
// (Under SUANLI_CUDA_EMU — the host emulator of crates/cuda/tests — the emulator supplies
// h2f/f2h/dp4a, the weight loads lds* as plain loads, and prefetch_l2 as a read of the byte, so
// that a prefetch outside a buffer is caught.)
DEV float bf2f(u16 b) { return __uint_as_float(((u32)b) << 16); }
DEV u16 f2bf(float f) {
    // Round to nearest even (NaN stays NaN); sm_80 has cvt.rn.bf16.f32 but this works everywhere.
    u32 u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (u16)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (u16)(u >> 16);
}
DEV u16 ld16(const u8* p) { return (u16)(p[0] | (p[1] << 8)); }
DEV u32 ld32(const u8* p) { return (u32)p[0] | ((u32)p[1] << 8) | ((u32)p[2] << 16) | ((u32)p[3] << 24); }
DEV float ldh(const u8* p) { return h2f(ld16(p)); }

// silu(a) · u, the gated MLP's activation (silu_mul and the fused gate/up product).
DEV float silu_times(float a, float u) { return a / (1.0f + expf(-a)) * u; }

// Exactly (float)v for |v| < 2^22, without the conversion instruction (a quarter of the FMA rate):
// v in the mantissa of 1.5 · 2^23, then that constant taken off.
DEV float small_i2f(int v) { return __int_as_float(0x4B400000 + v) - 12582912.0f; }

DEV int warp_sum_int(int v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
DEV float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
DEV float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over a block of `blockDim.x` threads (a multiple of 32, at most 1024); every thread gets it.
DEV float block_sum(float v, float* shared32) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) shared32[warp] = v;
    __syncthreads();
    v = lane < nw ? shared32[lane] : 0.0f;
    return warp_sum(v);
}

// Loops over a row, a thread taking i = threadIdx.x, + blockDim.x, ...: the values are loaded
// eight at a time by predicated loads before any is used. A plain (or unrolled) loop checks its
// bound between loads, and ptxas keeps the branch — each load then waits for the last one's use,
// a memory latency per value (~150 a thread over a 152k vocabulary). `use(i, v)` sees the values
// in the plain loop's order.
template <int N = 8, class F>
DEV void each_value(const float* __restrict__ x, int n, F use) {
    const int stride = blockDim.x;
    for (int i0 = threadIdx.x; i0 < n; i0 += N * stride) {
        float v[N];
#pragma unroll
        for (int j = 0; j < N; j++) v[j] = i0 + j * stride < n ? x[i0 + j * stride] : 0.0f;
#pragma unroll
        for (int j = 0; j < N; j++)
            if (i0 + j * stride < n) use(i0 + j * stride, v[j]);
    }
}
// The same over two rows at once (values of x and y at i).
template <int N = 8, class F>
DEV void each_pair(const float* __restrict__ x, const float* __restrict__ y, int n, F use) {
    const int stride = blockDim.x;
    for (int i0 = threadIdx.x; i0 < n; i0 += N * stride) {
        float a[N], b[N];
#pragma unroll
        for (int j = 0; j < N; j++) {
            bool in = i0 + j * stride < n;
            a[j] = in ? x[i0 + j * stride] : 0.0f;
            b[j] = in ? y[i0 + j * stride] : 0.0f;
        }
#pragma unroll
        for (int j = 0; j < N; j++)
            if (i0 + j * stride < n) use(i0 + j * stride, a[j], b[j]);
    }
}

// 1 / RMS of the `cols` values at xr (+ eps inside the root), in every thread of the block:
// the RMS norm's scale, for rms_norm and the products that fold the norm in.
DEV float block_inv_rms(const float* __restrict__ xr, int cols, float eps, float* shared32) {
    float ss = 0.0f;
    each_value(xr, cols, [&](int, float v) { ss += v * v; });
    ss = block_sum(ss, shared32);
    return rsqrtf(ss / (float)cols + eps);
}

// Max over a block (as block_sum).
DEV float block_max(float v, float* shared32) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) shared32[warp] = v;
    __syncthreads();
    v = lane < nw ? shared32[lane] : -INFINITY;
    return warp_max(v);
}
