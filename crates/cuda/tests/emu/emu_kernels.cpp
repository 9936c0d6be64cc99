// The CUDA kernels (crates/cuda/kernels) built for the host under the emulator, behind a C ABI
// with the launch geometry of crates/cuda/src/lib.rs (keep the two in step). Loaded by the
// `EmuBackend` of the tests, which runs the conformance suite and the golden models through it.
#include "cuda_emu.h"
#include "common.cuh"
#include "quant.cuh"
#include "matvec.cu"
#include "ops.cu"
#include "attention.cu"

static Dim3 d1(unsigned long long n) { return Dim3{(unsigned)(n ? n : 1), 1, 1}; }
#define LAUNCH(grid, block, call) emu::launch(grid, block, [&] { call; })

extern "C" {
int emu_matvec(int ty, const u8* w, int rows, int cols, u64 rb, const float* x, int nt, const float* bias, float* out) {
    switch (ty) {
#define MV(name, T) case T: LAUNCH(d1((rows + 3) / 4), d1(128), matvec_##name(w, rows, cols, rb, x, nt, bias, out)); return 0;
        FOR_EACH_TYPE(MV)
    }
    return -1;
}
int emu_dequant_bf16(int ty, const u8* w, int rows, int cols, u64 rb, u16* out) {
    u64 units = (u64)rows * cols / 32;
    switch (ty) {
#define DQ(name, T) case T: LAUNCH(d1((units + 255) / 256), d1(256), dequant_bf16_##name(w, rows, cols, rb, out)); return 0;
        FOR_EACH_TYPE(DQ)
    }
    return -1;
}
int emu_embed(int ty, const u8* w, int rows, int cols, u64 rb, const u32* ids, int n, float* out) {
    switch (ty) {
#define EM(name, T) case T: LAUNCH(d1(n), d1(128), embed_##name(w, rows, cols, rb, ids, out)); return 0;
        FOR_EACH_TYPE(EM)
    }
    return -1;
}
void emu_rms_norm(const float* x, const float* w, int rows, int cols, float eps, float* out) {
    LAUNCH(d1(rows), d1(256), rms_norm(x, w, cols, eps, out));
}
void emu_rms_norm_groups(float* x, const float* w, int g, u64 groups, float eps) {
    LAUNCH(d1((groups + 3) / 4), d1(128), rms_norm_groups(x, w, g, groups, eps));
}
void emu_rope(float* x, const u32* pos, const float* freq, int rows, int heads, int hd, int rot, int neox) {
    u64 pairs = (u64)rows * heads * (rot / 2);
    LAUNCH(d1((pairs + 255) / 256), d1(256), rope(x, pos, freq, rows, heads, hd, rot, neox));
}
void emu_silu_mul(const float* g, const float* u, u64 n, float* out) { LAUNCH(d1((n + 255) / 256), d1(256), silu_mul(g, u, n, out)); }
void emu_add(float* acc, const float* x, u64 n) { LAUNCH(d1((n + 255) / 256), d1(256), add(acc, x, n)); }
void emu_add_bias(float* out, const float* bias, int cols, u64 n) { LAUNCH(d1((n + 255) / 256), d1(256), add_bias(out, bias, cols, n)); }
void emu_to_bf16(const float* x, u64 n, u16* out) { LAUNCH(d1((n + 255) / 256), d1(256), to_bf16(x, n, out)); }
void emu_gather_rows(const float* x, const u32* rows, int n, int cols, float* out) { LAUNCH(d1(n), d1(256), gather_rows(x, rows, cols, out)); }
void emu_argmax_rows(const float* x, int n, int cols, u32* out) { LAUNCH(d1(n), d1(1024), argmax_rows(x, cols, out)); }
void emu_write_kv(int f16, const float* k, const float* v, const u32* slots, int rows, int kv_dim, void* kc, void* vc) {
    Dim3 g = d1(((u64)rows * kv_dim + 255) / 256);
    if (f16) LAUNCH(g, d1(256), write_kv_f16(k, v, slots, rows, kv_dim, (u16*)kc, (u16*)vc));
    else LAUNCH(g, d1(256), write_kv_f32(k, v, slots, rows, kv_dim, (float*)kc, (float*)vc));
}
void emu_attention(int f16, const float* q, const void* kc, const void* vc, const u32* tables, const u32* row_meta, int rows,
                   int nh, int nkv, int hd, int bs, float scale, float* out) {
    Dim3 g{(unsigned)((nh + 3) / 4), (unsigned)rows, 1};
    if (f16) LAUNCH(g, d1(128), attention_f16(q, (const u16*)kc, (const u16*)vc, tables, row_meta, nh, nkv, hd, bs, scale, out));
    else LAUNCH(g, d1(128), attention_f32(q, (const float*)kc, (const float*)vc, tables, row_meta, nh, nkv, hd, bs, scale, out));
}
}
