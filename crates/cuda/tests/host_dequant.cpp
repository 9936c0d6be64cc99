// Host build of kernels/quant.cuh (the GPU dequantization) for tests: a stand-in for
// kernels/common.cuh, then the header itself, then a driver that dequantizes a file of rows.
// Usage: host_dequant TYPE ROWS COLS ROW_BYTES IN OUT
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

typedef unsigned char u8;
typedef signed char i8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
#define DEV static inline
struct uint4 { u32 x, y, z, w; };
struct float4 { float x, y, z, w; };
static inline float __uint_as_float(u32 u) { float f; memcpy(&f, &u, 4); return f; }
static inline float h2f(u16 h) {  // IEEE half to float, subnormals included
    u32 s = (u32)(h >> 15) << 31, e = (h >> 10) & 0x1f, m = h & 0x3ff;
    if (e == 0x1f) return __uint_as_float(s | 0x7f800000u | (m << 13));
    if (e == 0) {
        float f = (float)m * (1.0f / 16777216.0f);  // m · 2^-24
        return s ? -f : f;
    }
    return __uint_as_float(s | ((e + 112) << 23) | (m << 13));
}
static inline u16 ld16(const u8* p) { return (u16)(p[0] | (p[1] << 8)); }
static inline u32 ld32(const u8* p) { return (u32)p[0] | ((u32)p[1] << 8) | ((u32)p[2] << 16) | ((u32)p[3] << 24); }
static inline float ldh(const u8* p) { return h2f(ld16(p)); }

#include "quant.cuh"

template <int T>
static void rows(const u8* w, int n, int cols, u64 rb, float* out) {
    for (int r = 0; r < n; r++)
        for (int u = 0; u < cols / 32; u++) Fmt<T>::unit(w + r * rb, u, out + (u64)r * cols + u * 32);
}

int main(int argc, char** argv) {
    if (argc != 7) return 2;
    int ty = atoi(argv[1]), n = atoi(argv[2]), cols = atoi(argv[3]);
    u64 rb = strtoull(argv[4], 0, 10);
    FILE* f = fopen(argv[5], "rb");
    if (!f) return 3;
    // 16-byte aligned like device memory, so the vector loads see the alignment they will have there.
    std::vector<uint4> buf((rb * n + 15) / 16);
    if (fread(buf.data(), 1, rb * n, f) != rb * n) return 4;
    fclose(f);
    const u8* w = (const u8*)buf.data();
    std::vector<float> out((u64)n * cols);
    switch (ty) {
#define CASE(name, T) case T: rows<T>(w, n, cols, rb, out.data()); break;
        FOR_EACH_TYPE(CASE)
        default: return 5;
    }
    f = fopen(argv[6], "wb");
    if (!f) return 6;
    fwrite(out.data(), 4, out.size(), f);
    fclose(f);
    return 0;
}
