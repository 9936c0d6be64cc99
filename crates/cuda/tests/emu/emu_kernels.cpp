// The CUDA kernels (crates/cuda/kernels) built for the host under the emulator, launched by name
// like cuLaunchKernel. Loaded by the tests' `EmuDevice`, under the real `CudaBackend`.
#include "cuda_emu.h"
#include "common.cuh"
#include "quant.cuh"
#include "qdot.cuh"
#include "matvec.cu"
#include "ops.cu"
#include "attention.cu"
#include "topk.cu"
#include "flash.cu"

#include <cstring>
#include <utility>

// Call a kernel with arguments given as the driver gets them: one pointer per parameter, to
// its value.
template <class... A, size_t... I>
static void invoke_impl(void (*f)(A...), void** a, std::index_sequence<I...>) { f(*static_cast<A*>(a[I])...); }
template <class... A>
static void invoke(void (*f)(A...), void** a) { invoke_impl(f, a, std::index_sequence_for<A...>{}); }

struct Entry { const char* name; void (*run)(void**); };
#define K(name) {#name, [](void** a) { invoke(name, a); }},
#define KT(name, T) K(matvec_##name) K(matvec3_##name) K(matvec_glu_##name) K(matvec_t1_##name) K(matvec3_t1_##name) \
    K(matvec_glu_t1_##name) K(dequant_bf16_##name) K(embed_##name)
static const Entry TABLE[] = {
    FOR_EACH_TYPE(KT)
    K(rms_norm) K(rms_norm_bf16) K(rms_norm_groups) K(rope) K(silu_mul) K(silu_mul_bf16) K(add) K(add_bias) K(to_bf16) K(gather_rows)
    K(argmax_rows) K(write_kv_f32) K(write_kv_f16) K(attention_f32) K(attention_f16) K(attention_merge) K(gather_kv_f32)
    K(gather_kv_f16) K(softmax_causal_f32) K(softmax_causal_f16) K(to_f16) K(top_k_rows) K(sample_rows)
    K(flash_prefill_f16_64) K(flash_prefill_f16_128)
    K(flash_prefill_q8_0_64) K(flash_prefill_q8_0_128) K(write_kv_q8_0) K(attention_q8_0) K(rope_write_kv_f32) K(rope_write_kv_f16) K(rope_write_kv_q8_0)
};

// cuLaunchKernel's shape: a kernel by name, grid, block, argument pointers. -1: no such kernel.
extern "C" int emu_launch(const char* name, unsigned gx, unsigned gy, unsigned bx, void** args) {
    for (const Entry& e : TABLE)
        if (!strcmp(e.name, name)) {
            emu::launch(Dim3{gx, gy, 1}, Dim3{bx, 1, 1}, [&] { e.run(args); });
            return 0;
        }
    return -1;
}
