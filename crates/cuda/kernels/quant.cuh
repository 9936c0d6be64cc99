// Dequantization of one "unit" of 32 consecutive values of a stored row, per GGML block format.
// A unit is a whole block for the 32-value formats and one sub-block of a 256-value K-quant
// block, so every format splits a row into cols/32 independent pieces of work. The arithmetic
// follows suanli_core::quant (the oracle), which is bit-exact with gguf-py.

#define T_F32 0
#define T_F16 1
#define T_Q4_0 2
#define T_Q4_1 3
#define T_Q5_0 6
#define T_Q5_1 7
#define T_Q8_0 8
#define T_Q4_K 12
#define T_Q5_K 13
#define T_Q6_K 14
#define T_BF16 30

template <int T> struct Fmt;

// Eight consecutive values at element `e` (a multiple of 8) of a float-typed row: one 16-byte
// load for f16/bf16, two for f32, so a warp reading e = 8·lane + 256·i covers 512 contiguous
// bytes (f16/bf16) per load — fully coalesced. `fetch` loads them as stored, `expand` turns that
// into floats — apart, so that a loop can have several fetches in flight before it uses the first.
template <int T> struct Vec8;
template <> struct Vec8<T_F32> {
    struct Raw { float4 a, b; };
    DEV Raw fetch(const u8* row, int e) {
        const float4* p = (const float4*)(row + (size_t)e * 4);
        return Raw{p[0], p[1]};
    }
    DEV void expand(const Raw& r, float* v) {
        v[0] = r.a.x; v[1] = r.a.y; v[2] = r.a.z; v[3] = r.a.w;
        v[4] = r.b.x; v[5] = r.b.y; v[6] = r.b.z; v[7] = r.b.w;
    }
    DEV void load(const u8* row, int e, float* v) { expand(fetch(row, e), v); }
};
template <> struct Vec8<T_F16> {
    typedef uint4 Raw;
    DEV Raw fetch(const u8* row, int e) { return *(const uint4*)(row + (size_t)e * 2); }
    DEV void expand(const Raw& a, float* v) {
        u32 w[4] = {a.x, a.y, a.z, a.w};
#pragma unroll
        for (int j = 0; j < 4; j++) {
            v[2 * j] = h2f((u16)(w[j] & 0xffff));
            v[2 * j + 1] = h2f((u16)(w[j] >> 16));
        }
    }
    DEV void load(const u8* row, int e, float* v) { expand(fetch(row, e), v); }
};
template <> struct Vec8<T_BF16> {
    typedef uint4 Raw;
    DEV Raw fetch(const u8* row, int e) { return *(const uint4*)(row + (size_t)e * 2); }
    DEV void expand(const Raw& a, float* v) {
        u32 w[4] = {a.x, a.y, a.z, a.w};
#pragma unroll
        for (int j = 0; j < 4; j++) {
            v[2 * j] = __uint_as_float(w[j] << 16);
            v[2 * j + 1] = __uint_as_float(w[j] & 0xffff0000u);
        }
    }
    DEV void load(const u8* row, int e, float* v) { expand(fetch(row, e), v); }
};

// Float types: a unit is four 8-value loads.
template <int T> struct FloatUnit {
    DEV void unit(const u8* row, int u, float* v) {
#pragma unroll
        for (int i = 0; i < 4; i++) Vec8<T>::load(row, u * 32 + 8 * i, v + 8 * i);
    }
};
template <> struct Fmt<T_F32> : FloatUnit<T_F32> {};
template <> struct Fmt<T_F16> : FloatUnit<T_F16> {};
template <> struct Fmt<T_BF16> : FloatUnit<T_BF16> {};

template <> struct Fmt<T_Q4_0> {
    DEV void unit(const u8* row, int u, float* v) {
        const u8* b = row + (size_t)u * 18;
        float d = ldh(b);
#pragma unroll
        for (int j = 0; j < 16; j++) {
            u8 q = b[2 + j];
            v[j] = d * (float)((int)(q & 0xF) - 8);
            v[j + 16] = d * (float)((int)(q >> 4) - 8);
        }
    }
};
template <> struct Fmt<T_Q4_1> {
    DEV void unit(const u8* row, int u, float* v) {
        const u8* b = row + (size_t)u * 20;
        float d = ldh(b), m = ldh(b + 2);
        const u32* qw = (const u32*)(b + 4);  // 20-byte blocks keep 4-byte alignment
        u32 qq[4] = {qw[0], qw[1], qw[2], qw[3]};
        const u8* q = (const u8*)qq;
#pragma unroll
        for (int j = 0; j < 16; j++) {
            v[j] = d * (float)(q[j] & 0xF) + m;
            v[j + 16] = d * (float)(q[j] >> 4) + m;
        }
    }
};
template <> struct Fmt<T_Q5_0> {
    DEV void unit(const u8* row, int u, float* v) {
        const u8* b = row + (size_t)u * 22;
        float d = ldh(b);
        u32 qh = ld32(b + 2);
#pragma unroll
        for (int j = 0; j < 16; j++) {
            u8 q = b[6 + j];
            u32 h0 = ((qh >> j) & 1u) << 4, h1 = ((qh >> (j + 16)) & 1u) << 4;
            v[j] = d * (float)((int)((q & 0xF) | h0) - 16);
            v[j + 16] = d * (float)((int)((q >> 4) | h1) - 16);
        }
    }
};
template <> struct Fmt<T_Q5_1> {
    DEV void unit(const u8* row, int u, float* v) {
        const u8* b = row + (size_t)u * 24;
        float d = ldh(b), m = ldh(b + 2);
        u32 qh = ld32(b + 4);
#pragma unroll
        for (int j = 0; j < 16; j++) {
            u8 q = b[8 + j];
            u32 h0 = ((qh >> j) & 1u) << 4, h1 = ((qh >> (j + 16)) & 1u) << 4;
            v[j] = d * (float)((q & 0xF) | h0) + m;
            v[j + 16] = d * (float)((q >> 4) | h1) + m;
        }
    }
};
template <> struct Fmt<T_Q8_0> {
    DEV void unit(const u8* row, int u, float* v) {
        const u8* b = row + (size_t)u * 34;
        float d = ldh(b);
        const u16* q = (const u16*)(b + 2);  // 34-byte blocks: 2-byte alignment
#pragma unroll
        for (int j = 0; j < 16; j++) {
            u16 w = q[j];
            v[2 * j] = (float)(i8)(w & 0xff) * d;
            v[2 * j + 1] = (float)(i8)(w >> 8) * d;
        }
    }
};

// The 6-bit scale and min of sub-block j of a Q4_K/Q5_K block (scales: 12 bytes).
// (byte(i): the scales' byte i. The three bytes are loaded whatever j is — j - 4 is j & 3 when
// it is used — so that the loads need no branch and issue with the rest of a unit's.)
template <class B> DEV void scale_min_k4_of(int j, B byte, int* sc, int* m) {
    int a = byte(j), b = byte(j + 4), c = byte(j & 3);
    if (j < 4) {
        *sc = a & 63;
        *m = b & 63;
    } else {
        *sc = (b & 0xF) | ((c >> 6) << 4);
        *m = (b >> 4) | ((a >> 6) << 4);
    }
}
DEV void scale_min_k4(int j, const u8* q, int* sc, int* m) {
    scale_min_k4_of(j, [&](int i) { return (int)q[i]; }, sc, m);
}

template <> struct Fmt<T_Q4_K> {
    DEV void unit(const u8* row, int u, float* v) {
        const u8* b = row + (size_t)(u >> 3) * 144;
        int j = u & 7, sc, mn;
        float d = ldh(b), dmin = ldh(b + 2);
        scale_min_k4(j, b + 4, &sc, &mn);
        float d1 = d * (float)sc, m1 = dmin * (float)mn;
        const uint4* qp = (const uint4*)(b + 16 + (j >> 1) * 32);  // 144-byte blocks: 16-aligned
        int shift = (j & 1) * 4;
#pragma unroll
        for (int h = 0; h < 2; h++) {
            uint4 qq = qp[h];
            const u8* q = (const u8*)&qq;
#pragma unroll
            for (int l = 0; l < 16; l++) v[16 * h + l] = d1 * (float)((q[l] >> shift) & 0xF) - m1;
        }
    }
};
template <> struct Fmt<T_Q5_K> {
    DEV void unit(const u8* row, int u, float* v) {
        const u8* b = row + (size_t)(u >> 3) * 176;
        int j = u & 7, sc, mn;
        float d = ldh(b), dmin = ldh(b + 2);
        scale_min_k4(j, b + 4, &sc, &mn);
        float d1 = d * (float)sc, m1 = dmin * (float)mn;
        const u8* qh = b + 16;
        const u8* q = b + 48 + (j >> 1) * 32;
        int shift = (j & 1) * 4;
#pragma unroll
        for (int l = 0; l < 32; l++) {
            int hi = (qh[l] >> j) & 1;
            v[l] = d1 * (float)(((q[l] >> shift) & 0xF) + 16 * hi) - m1;
        }
    }
};
template <> struct Fmt<T_Q6_K> {
    DEV void unit(const u8* row, int u, float* v) {
        const u8* b = row + (size_t)(u >> 3) * 210;
        int s = u & 7, n = s >> 2, part = s & 3;
        const u8* ql = b + n * 64 + (part & 1) * 32;
        const u8* qh = b + 128 + n * 32;
        const i8* sc = (const i8*)(b + 192 + n * 8 + part * 2);
        float d = ldh(b + 208);
        int lshift = (part >> 1) * 4, hshift = part * 2;
        float d0 = d * (float)sc[0], d1 = d * (float)sc[1];
#pragma unroll
        for (int l = 0; l < 32; l++) {
            int q = (int)(((ql[l] >> lshift) & 0xF) | (((qh[l] >> hshift) & 3) << 4)) - 32;
            v[l] = (l < 16 ? d0 : d1) * (float)q;
        }
    }
};

// Every kernel that takes a weight type is instantiated for these.
#define FOR_EACH_TYPE(X) \
    X(f32, T_F32) X(f16, T_F16) X(bf16, T_BF16) X(q4_0, T_Q4_0) X(q4_1, T_Q4_1) X(q5_0, T_Q5_0) \
    X(q5_1, T_Q5_1) X(q8_0, T_Q8_0) X(q4_k, T_Q4_K) X(q5_k, T_Q5_K) X(q6_k, T_Q6_K)
