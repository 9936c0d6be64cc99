// Integer views of a 32-value unit of a quantized row, for dot products with 8-bit activations
// on dp4a (four 8-bit products summed per instruction). A unit comes back as eight words of
// four 8-bit values (value 4i + j in byte j of word i, the order of the activations' bytes) and
// the affine map back to real values: value = d · byte + c, with d = d0 for values 0..15 and d1
// for 16..31 (only Q6_K has two). Against activations quantized per 32 as x ≈ dx · qx
// (llama.cpp's q8_1, with sx = dx · Σqx):
//     Σ value · x ≈ dx · (d0 · Σ_lo byte·qx + d1 · Σ_hi byte·qx) + c · sx.
// The arithmetic of the values follows suanli_core::quant (the oracle); only the split into
// integer and scale differs. No integer-to-float conversion per value: that instruction runs at
// a quarter of the rate of an FMA, which made the float path compute-bound.

struct QUnit {
    int w[8];
    float d0, d1, c;
};

// An f16 field of a block (2-byte aligned: every block format's sizes and offsets are even).
DEV float ldhs(const u8* p) { return h2f(lds16(p)); }

// Bytes p[0..32) as eight words, from 2-byte aligned memory.
DEV void ld_words16(const u8* p, int n, int* w) {
    const u16* h = (const u16*)p;
#pragma unroll
    for (int i = 0; i < 8; i++)
        if (i < n) w[i] = (int)((u32)lds16(h + 2 * i) | ((u32)lds16(h + 2 * i + 1) << 16));
}

// Bit k of the 4-bit `h4` to bit 4 of byte k: a Q5 value's fifth bit beside its nibble.
DEV int spread4(u32 h4) { return (int)(((h4 * 0x00204081u) & 0x01010101u) << 4); }

// Each QFmt gives its storage block's bytes and 32-value units (block_bytes, block_units), and
// `unit`, a unit's integer view.
template <int T> struct QFmt;

// This warp's lanes ask L2 for a line each of units [u0, u0 + tu) of `row`: the first 4 KiB.
template <int T> DEV void prefetch_units(const u8* row, int u0, int tu) {
    typedef QFmt<T> F;
    const u8* lo = row + (u64)(u0 / F::block_units) * F::block_bytes;
    const u8* hi = row + (u64)((u0 + tu + F::block_units - 1) / F::block_units) * F::block_bytes;
    // Lines from the one holding lo (lane 0 asks for lo itself: the line may start before the row).
    const u8* p = (const u8*)(((u64)lo & ~(u64)127) + 128 * (threadIdx.x & 31));
    if (p < lo) p = lo;
    if (p < hi) prefetch_l2(p);
}

// 32-value blocks: 16 bytes of nibbles, value j in the low nibble of byte j, j + 16 in the high.
DEV void nibbles16(const int* raw, int* w) {
#pragma unroll
    for (int i = 0; i < 4; i++) {
        w[i] = raw[i] & 0x0F0F0F0F;
        w[4 + i] = (raw[i] >> 4) & 0x0F0F0F0F;
    }
}

template <> struct QFmt<T_Q4_0> {
    static const int block_bytes = 18, block_units = 1;
    static const bool halves = false;
    DEV void unit(const u8* row, int u, QUnit& q) {
        const u8* b = row + (u64)u * 18;
        int raw[4];
        ld_words16(b + 2, 4, raw);
        nibbles16(raw, q.w);
        q.d0 = q.d1 = ldhs(b);
        q.c = -8.0f * q.d0;
    }
};
template <> struct QFmt<T_Q4_1> {
    static const int block_bytes = 20, block_units = 1;
    static const bool halves = false;
    DEV void unit(const u8* row, int u, QUnit& q) {
        const u8* b = row + (u64)u * 20;
        const int* qw = (const int*)(b + 4);  // 20-byte blocks keep 4-byte alignment
        int raw[4] = {(int)lds32(qw), (int)lds32(qw + 1), (int)lds32(qw + 2), (int)lds32(qw + 3)};
        nibbles16(raw, q.w);
        q.d0 = q.d1 = ldhs(b);
        q.c = ldhs(b + 2);
    }
};
template <> struct QFmt<T_Q5_0> {
    static const int block_bytes = 22, block_units = 1;
    static const bool halves = false;
    DEV void unit(const u8* row, int u, QUnit& q) {
        const u8* b = row + (u64)u * 22;
        int raw[4];
        ld_words16(b + 6, 4, raw);
        nibbles16(raw, q.w);
        const u16* hp = (const u16*)(b + 2);
        u32 qh = (u32)lds16(hp) | ((u32)lds16(hp + 1) << 16);
#pragma unroll
        for (int i = 0; i < 8; i++) q.w[i] |= spread4((qh >> (4 * i)) & 0xF);
        q.d0 = q.d1 = ldhs(b);
        q.c = -16.0f * q.d0;
    }
};
template <> struct QFmt<T_Q5_1> {
    static const int block_bytes = 24, block_units = 1;
    static const bool halves = false;
    DEV void unit(const u8* row, int u, QUnit& q) {
        const u8* b = row + (u64)u * 24;
        const int* qw = (const int*)(b + 8);  // 24-byte blocks: 8-byte alignment
        int raw[4] = {(int)lds32(qw), (int)lds32(qw + 1), (int)lds32(qw + 2), (int)lds32(qw + 3)};
        nibbles16(raw, q.w);
        u32 qh = lds32(b + 4);
#pragma unroll
        for (int i = 0; i < 8; i++) q.w[i] |= spread4((qh >> (4 * i)) & 0xF);
        q.d0 = q.d1 = ldhs(b);
        q.c = ldhs(b + 2);
    }
};
template <> struct QFmt<T_Q8_0> {
    static const int block_bytes = 34, block_units = 1;
    static const bool halves = false;
    DEV void unit(const u8* row, int u, QUnit& q) {
        const u8* b = row + (u64)u * 34;  // 34-byte blocks: 2-byte alignment
        ld_words16(b + 2, 8, q.w);
        q.d0 = q.d1 = ldhs(b);
        q.c = 0.0f;
    }
};
template <> struct QFmt<T_Q4_K> {
    static const int block_bytes = 144, block_units = 8;
    static const bool halves = false;
    DEV void unit(const u8* row, int u, QUnit& q) {
        const u8* b = row + (u64)(u >> 3) * 144;
        int j = u & 7, sc, mn;
        scale_min_k4_of(j, [&](int i) { return (int)lds8(b + 4 + i); }, &sc, &mn);
        const uint4* qp = (const uint4*)(b + 16 + (j >> 1) * 32);  // 144-byte blocks: 16-aligned
        int shift = (j & 1) * 4;
#pragma unroll
        for (int h = 0; h < 2; h++) {
            uint4 r = lds128(qp + h);
            q.w[4 * h] = (int)((r.x >> shift) & 0x0F0F0F0Fu);
            q.w[4 * h + 1] = (int)((r.y >> shift) & 0x0F0F0F0Fu);
            q.w[4 * h + 2] = (int)((r.z >> shift) & 0x0F0F0F0Fu);
            q.w[4 * h + 3] = (int)((r.w >> shift) & 0x0F0F0F0Fu);
        }
        q.d0 = q.d1 = ldhs(b) * (float)sc;
        q.c = -(ldhs(b + 2) * (float)mn);
    }
};
template <> struct QFmt<T_Q5_K> {
    static const int block_bytes = 176, block_units = 8;
    static const bool halves = false;
    DEV void unit(const u8* row, int u, QUnit& q) {
        const u8* b = row + (u64)(u >> 3) * 176;  // 176-byte blocks: 16-aligned
        int j = u & 7, sc, mn;
        scale_min_k4_of(j, [&](int i) { return (int)lds8(b + 4 + i); }, &sc, &mn);
        const uint4* hp = (const uint4*)(b + 16);
        const uint4* qp = (const uint4*)(b + 48 + (j >> 1) * 32);
        int shift = (j & 1) * 4;
#pragma unroll
        for (int h = 0; h < 2; h++) {
            uint4 r = lds128(qp + h), hh = lds128(hp + h);
            u32 lo[4] = {r.x, r.y, r.z, r.w}, hi[4] = {hh.x, hh.y, hh.z, hh.w};
#pragma unroll
            for (int i = 0; i < 4; i++)
                q.w[4 * h + i] = (int)(((lo[i] >> shift) & 0x0F0F0F0Fu) | (((hi[i] >> j) & 0x01010101u) << 4));
        }
        q.d0 = q.d1 = ldhs(b) * (float)sc;
        q.c = -(ldhs(b + 2) * (float)mn);
    }
};
template <> struct QFmt<T_Q6_K> {
    static const int block_bytes = 210, block_units = 8;
    static const bool halves = true;
    DEV void unit(const u8* row, int u, QUnit& q) {
        const u8* b = row + (u64)(u >> 3) * 210;  // 210-byte blocks: 2-byte alignment
        int s = u & 7, n = s >> 2, part = s & 3;
        int lo[8], hi[8];
        ld_words16(b + n * 64 + (part & 1) * 32, 8, lo);
        ld_words16(b + 128 + n * 32, 8, hi);
        int lshift = (part >> 1) * 4, hshift = part * 2;
#pragma unroll
        for (int i = 0; i < 8; i++) {
            u32 v = (((u32)lo[i] >> lshift) & 0x0F0F0F0Fu) | ((((u32)hi[i] >> hshift) & 0x03030303u) << 4);
            // v − 32 per byte as signed bytes (bytes 0..63; no borrow crosses a byte).
            q.w[i] = (int)(((v | 0x80808080u) - 0x20202020u) ^ 0x80808080u);
        }
        const u8* sc = b + 192 + n * 8 + part * 2;
        float d = ldhs(b + 208);
        q.d0 = d * (float)(i8)lds8(sc);
        q.d1 = d * (float)(i8)lds8(sc + 1);
        q.c = 0.0f;
    }
};

// Types whose matrix-vector products take the integer path.
template <int T> struct IsQuant { static const bool value = true; };
template <> struct IsQuant<T_F32> { static const bool value = false; };
template <> struct IsQuant<T_F16> { static const bool value = false; };
template <> struct IsQuant<T_BF16> { static const bool value = false; };
