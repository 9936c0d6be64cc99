// A small CUDA execution-model emulator for testing suanli's kernels on a CPU: every thread of a
// block is a fiber on one OS thread, run round-robin; __syncthreads and warp shuffles
// are barriers over the block or the warp, so reductions, shuffles and shared memory behave as
// on a GPU (for kernels whose warps reach a barrier together, as CUDA requires). Blocks run one
// after another. Slow, exact, and enough to execute the real kernel source.
#pragma once
#define _GNU_SOURCE 1
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <ucontext.h>
#include <vector>

#define SUANLI_CUDA_EMU 1
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __restrict__ __restrict
#define __shared__ static  // blocks run one at a time
#define __align__(n) __attribute__((aligned(n)))

struct Dim3 { unsigned x = 1, y = 1, z = 1; };
static Dim3 threadIdx, blockIdx, blockDim, gridDim;
// Aligned as on the GPU, where a 16-byte load from an address not a multiple of 16 faults; the
// emulator is built with -fsanitize=alignment, so such a load stops the test here too.
struct alignas(16) uint4 { unsigned x, y, z, w; };
struct alignas(8) uint2 { unsigned x, y; };
struct alignas(16) float4 { float x, y, z, w; };

static inline float __uint_as_float(unsigned u) { float f; memcpy(&f, &u, 4); return f; }
static inline float __int_as_float(int u) { float f; memcpy(&f, &u, 4); return f; }
static inline unsigned __float_as_uint(float f) { unsigned u; memcpy(&u, &f, 4); return u; }
static inline int __float_as_int(float f) { int u; memcpy(&u, &f, 4); return u; }
template <class T> static inline T __ldg(const T* p) { return *p; }
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
static inline float h2f(unsigned short h) { _Float16 v; memcpy(&v, &h, 2); return (float)v; }
static inline unsigned short f2h(float f) { _Float16 v = (_Float16)f; unsigned short h; memcpy(&h, &v, 2); return h; }

// A prefetch is only a hint, but its address must be in a buffer: the byte is read (the
// emulated tests run under AddressSanitizer's bounds checks where built with it).
static inline void prefetch_l2(const void* p) { (void)*(const volatile unsigned char*)p; }
// Weight loads (L1::no_allocate on the GPU): plain loads, alignment checked by the sanitizer.
static inline unsigned lds8(const void* p) { return *(const unsigned char*)p; }
static inline unsigned short lds16(const void* p) { return *(const unsigned short*)p; }
static inline unsigned lds32(const void* p) { return *(const unsigned*)p; }
static inline uint4 lds128(const void* p) { return *(const uint4*)p; }
static inline int min(int a, int b) { return a < b ? a : b; }
static inline int dp4a(int a, int b, int c) {
    for (int i = 0; i < 4; i++) c += (int)(signed char)(a >> (8 * i)) * (int)(signed char)(b >> (8 * i));
    return c;
}

// Switching fibers. glibc's swapcontext makes a system call every time (it saves the signal
// mask), which was most of the emulator's time; on x86-64 saving the callee-saved registers and
// switching stacks is all a switch needs (the kernels change neither the signal mask nor the
// floating-point control state). Elsewhere, and under AddressSanitizer (which follows only
// swapcontext's stack switches), ucontext.
#if defined(__x86_64__) && !defined(__SANITIZE_ADDRESS__)
#define EMU_FAST_SWITCH 1
// Push rbp, rbx, r12–r15, save rsp to *save_sp, load to_sp, pop the same, return there.
extern "C" void emu_switch(void** save_sp, void* to_sp);
asm(".text\n.globl emu_switch\n.hidden emu_switch\n.type emu_switch,@function\nemu_switch:\n"
    "pushq %rbp\npushq %rbx\npushq %r12\npushq %r13\npushq %r14\npushq %r15\n"
    "movq %rsp, (%rdi)\nmovq %rsi, %rsp\n"
    "popq %r15\npopq %r14\npopq %r13\npopq %r12\npopq %rbx\npopq %rbp\nret\n"
    ".size emu_switch, .-emu_switch\n");
#endif

namespace emu {
struct Group { int arrived = 0, expected = 0; unsigned gen = 0; };
struct Fiber {
    bool done = false;
#ifdef EMU_FAST_SWITCH
    void* sp = nullptr;
#else
    ucontext_t ctx;
#endif
};
static ucontext_t sched;
static void* sched_sp;
static std::vector<Fiber> fibers;
static std::vector<std::unique_ptr<char[]>> stacks;  // untouched pages cost no memory
static const size_t STACK = 128 * 1024;
static int current = 0;
static std::vector<Group> warps;
static Group block;
static unsigned long long xchg[1024];
static unsigned mma_a[1024][4], mma_b[1024][2];
static std::function<void()> body;
// cp.async copies each thread has issued and not yet waited for, with their commit groups.
struct AsyncCopy { unsigned char* dst; const unsigned char* src; unsigned bytes; unsigned group; };
static std::vector<AsyncCopy> async_copies[1024];
static unsigned async_group[1024];
// Copies land at issue in every other pair of blocks (by launch, by turns) and at the wait
// otherwise: the earliest and the latest a GPU may land them, so both a read before the wait and a copy into memory
// other threads still read (no barrier before the issue) change the result.
static bool async_eager = false;

// This block's threads and their round-robin order.
static int nthreads = 0;
static bool reversed = false;

#ifdef EMU_FAST_SWITCH
// The thread after t in the round-robin order among those not done; -1 when all are.
static int next_after(int t) {
    for (int k = 1; k <= nthreads; k++) {
        int u = reversed ? (t - k + nthreads) % nthreads : (t + k) % nthreads;
        if (!fibers[u].done) return u;
    }
    return -1;
}
// Leave the current fiber for the next one straight away (half the switches of going through
// the scheduler), or for the scheduler once every fiber is done.
static void switch_on() {
    int from = current, to = next_after(from);
    if (to < 0) {
        emu_switch(&fibers[from].sp, sched_sp);
        return;
    }
    if (to == from) {
        fprintf(stderr, "emulated kernel deadlock: thread %d waits at a barrier no other thread reaches\n", from);
        abort();
    }
    current = to;
    threadIdx = Dim3{(unsigned)to, 0, 0};
    emu_switch(&fibers[from].sp, fibers[to].sp);
}
#endif

static void yield() {
#ifdef EMU_FAST_SWITCH
    switch_on();
#else
    swapcontext(&fibers[current].ctx, &sched);
#endif
}
static void complete(Group& g) { if (g.expected > 0 && g.arrived == g.expected) { g.arrived = 0; g.gen++; } }
static void wait(Group& g) {
    unsigned my = g.gen;
    g.arrived++;
    complete(g);
    while (g.gen == my) yield();
}
static void entry() {
    async_copies[threadIdx.x].clear();
    async_group[threadIdx.x] = 0;
    body();
    if (!async_copies[threadIdx.x].empty()) {
        fprintf(stderr, "emulated kernel: thread %u ended with cp.async copies never waited for\n", threadIdx.x);
        abort();
    }
    // A finished thread no longer takes part in barriers.
    Group& w = warps[threadIdx.x / 32];
    w.expected--;
    complete(w);
    block.expected--;
    complete(block);
    fibers[current].done = true;
}

#ifdef EMU_FAST_SWITCH
// A fiber's first switch returns here; a finished fiber is never switched to again.
static void fiber_main() {
    entry();
    switch_on();
    __builtin_unreachable();
}
#endif

// Make fiber t start `entry` on its stack at its first switch.
static void start(int t) {
#ifdef EMU_FAST_SWITCH
    // The frame emu_switch pops: six registers, then fiber_main as the return address, entered
    // with rsp ≡ 8 (mod 16) as after a call.
    uintptr_t top = (uintptr_t)(stacks[t].get() + STACK) & ~(uintptr_t)15;
    void** sp = (void**)top;
    *--sp = nullptr;  // fiber_main's own return address: never used
    *--sp = (void*)fiber_main;
    for (int i = 0; i < 6; i++) *--sp = nullptr;
    fibers[t].sp = sp;
#else
    getcontext(&fibers[t].ctx);
    fibers[t].ctx.uc_stack.ss_sp = stacks[t].get();
    fibers[t].ctx.uc_stack.ss_size = STACK;
    fibers[t].ctx.uc_link = &sched;
    makecontext(&fibers[t].ctx, entry, 0);
#endif
}

// Run the block's started fibers, round-robin from the first in `reversed` order, until all
// are done.
static void run_block() {
#ifdef EMU_FAST_SWITCH
    current = reversed ? nthreads - 1 : 0;
    threadIdx = Dim3{(unsigned)current, 0, 0};
    emu_switch(&sched_sp, fibers[current].sp);
#else
    for (bool alive = true; alive;) {
        alive = false;
        for (int k = 0; k < nthreads; k++) {
            const int t = reversed ? nthreads - 1 - k : k;
            if (fibers[t].done) continue;
            alive = true;
            current = t;
            threadIdx = Dim3{(unsigned)t, 0, 0};
            swapcontext(&sched, &fibers[t].ctx);
        }
    }
#endif
}

// Run `kernel` over grid × block (x and y of the grid, x of the block).
static void launch(Dim3 grid, Dim3 blk, std::function<void()> kernel) {
    const int nt = blk.x;
    gridDim = grid;
    blockDim = blk;
    body = kernel;
    while ((int)stacks.size() < nt) stacks.emplace_back(new char[STACK]);
    // Blocks in turn, every other launch in reverse; threads of every other block in reverse.
    // A GPU promises no order, and a kernel whose result depends on one (a block reading what
    // another block of the launch writes, a thread reading shared memory another thread writes
    // with no barrier between) gives a different answer one way round than the other.
    static unsigned launches = 0;
    const unsigned launch = launches++;
    const bool blocks_reversed = launch % 2 == 1;
    const unsigned nb = grid.x * grid.y;
    for (unsigned i = 0; i < nb; i++) {
        const unsigned b = blocks_reversed ? nb - 1 - i : i;
        nthreads = nt;
        reversed = i % 2 == 1;
        async_eager = (i / 2 + launch) % 2 == 1;
        blockIdx = Dim3{b % grid.x, b / grid.x, 0};
        fibers.assign(nt, Fiber{});
        warps.assign((nt + 31) / 32, Group{});
        for (int t = 0; t < nt; t++) warps[t / 32].expected++;
        block = Group{0, nt, 0};
        for (int t = 0; t < nt; t++) start(t);
        run_block();
    }
}
}  // namespace emu

static inline void __syncthreads() { emu::wait(emu::block); }
template <class T> static inline T __shfl_xor_sync(unsigned, T v, int o) {
    unsigned t = threadIdx.x, w = t / 32;
    memcpy(&emu::xchg[t], &v, sizeof(T));
    emu::wait(emu::warps[w]);
    T r;
    memcpy(&r, &emu::xchg[w * 32 + ((t % 32) ^ (unsigned)o)], sizeof(T));
    emu::wait(emu::warps[w]);
    return r;
}
static inline unsigned __ballot_sync(unsigned, bool pred) {
    unsigned t = threadIdx.x, w = t / 32;
    emu::xchg[t] = pred;
    emu::wait(emu::warps[w]);
    unsigned m = 0;
    for (unsigned l = 0; l < 32 && w * 32 + l < blockDim.x; l++) m |= (emu::xchg[w * 32 + l] ? 1u : 0u) << l;
    emu::wait(emu::warps[w]);
    return m;
}
static inline int __popc(unsigned v) { return __builtin_popcount(v); }
// Fibers switch only at barriers, so a plain read-modify-write is atomic here.
static inline unsigned atomicAdd(unsigned* p, unsigned v) { unsigned o = *p; *p += v; return o; }
// ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16 for one warp: lanes 8i .. 8i + 7 hand in the
// addresses of matrix i's 8 rows (8 16-bit values each, 16-byte aligned or the GPU faults); lane l
// receives in r[i] matrix i's row l / 4, columns 2(l % 4) and +1 — transposed, rows 2(l % 4) and
// +1 of column l / 4 — the first value in the low half.
typedef uintptr_t sptr;  // a shared-memory address: on the host, the pointer
static inline sptr smem_addr(const void* p) { return (uintptr_t)p; }
static inline void ldsm_x4_emu(unsigned* r, sptr row, bool trans) {
    unsigned th = threadIdx.x, w = th / 32, l = th % 32;
    if (row % 16 != 0) {
        fprintf(stderr, "ldmatrix: lane %u's row address %p is not 16-byte aligned\n", l, (const void*)row);
        abort();
    }
    emu::xchg[th] = row;
    emu::wait(emu::warps[w]);
    auto at = [&](int m, unsigned rw) { return (const unsigned short*)(uintptr_t)emu::xchg[w * 32 + 8 * m + rw]; };
    for (int m = 0; m < 4; m++) {
        unsigned lo, hi;
        if (trans) {
            lo = at(m, 2 * (l % 4))[l / 4];
            hi = at(m, 2 * (l % 4) + 1)[l / 4];
        } else {
            lo = at(m, l / 4)[2 * (l % 4)];
            hi = at(m, l / 4)[2 * (l % 4) + 1];
        }
        r[m] = lo | (hi << 16);
    }
    emu::wait(emu::warps[w]);
}
// cp.async.cg.shared.global (16 bytes, `src_bytes` of them read, the rest zero-filled),
// commit_group and wait_group N. The copy is made at issue or when a wait covers its group
// (`async_eager`): a kernel that reads shared memory before waiting (or, for another thread's
// copies, before the barrier after the wait) reads what was there before, one that copies into
// memory other threads have yet to read changes what they read.
static inline void cp_async16(sptr dst, const void* src, unsigned src_bytes) {
    unsigned th = threadIdx.x;
    if (dst % 16 != 0 || (src_bytes > 0 && (uintptr_t)src % 16 != 0) || src_bytes > 16) {
        fprintf(stderr, "cp.async: thread %u copies %u bytes %p -> %p: not 16-byte aligned\n", th, src_bytes, src,
                (void*)dst);
        abort();
    }
    emu::AsyncCopy c{(unsigned char*)dst, (const unsigned char*)src, src_bytes, emu::async_group[th]};
    if (emu::async_eager) {
        memcpy(c.dst, c.src, c.bytes);
        memset(c.dst + c.bytes, 0, 16 - c.bytes);
    } else {
        emu::async_copies[th].push_back(c);
    }
}
static inline void cp_async_commit() { emu::async_group[threadIdx.x]++; }
template <int N> static inline void cp_async_wait() {
    unsigned th = threadIdx.x, committed = emu::async_group[th];
    unsigned done = committed > (unsigned)N ? committed - N : 0;  // groups below this have landed
    std::vector<emu::AsyncCopy>& q = emu::async_copies[th];
    size_t kept = 0;
    for (size_t i = 0; i < q.size(); i++) {
        if (q[i].group < done) {
            memcpy(q[i].dst, q[i].src, q[i].bytes);
            memset(q[i].dst + q[i].bytes, 0, 16 - q[i].bytes);
        } else {
            q[kept++] = q[i];
        }
    }
    q.resize(kept);
}
static inline void ldsm_x4(unsigned* r, sptr row) { ldsm_x4_emu(r, row, false); }
static inline void ldsm_x4_trans(unsigned* r, sptr row) { ldsm_x4_emu(r, row, true); }
// mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 for one warp: each lane hands in its
// fragments, the warp's A (16×16) and B (16×8) are put together by the PTX ISA's layout
// (g = lane / 4, t = lane % 4; A: regs 0..3 at (g, 2t), (g+8, 2t), (g, 2t+8), (g+8, 2t+8), two
// columns each, low half first; B: regs 0, 1 at rows (2t, 2t+1) and (2t+8, 2t+9) of column g),
// and each lane adds its D elements: (g, 2t), (g, 2t+1), (g+8, 2t), (g+8, 2t+1).
static inline void mma16816(float* d, const unsigned* a, const unsigned* b) {
    unsigned th = threadIdx.x, w = th / 32;
    memcpy(emu::mma_a[th], a, 16);
    memcpy(emu::mma_b[th], b, 8);
    emu::wait(emu::warps[w]);
    float A[16][16], B[16][8];
    for (int L = 0; L < 32; L++) {
        int g = L / 4, t = L % 4;
        const unsigned* la = emu::mma_a[w * 32 + L];
        const unsigned* lb = emu::mma_b[w * 32 + L];
        for (int i = 0; i < 4; i++) {
            int r = g + 8 * (i & 1), c = 2 * t + 8 * (i >> 1);
            A[r][c] = h2f(la[i] & 0xffff);
            A[r][c + 1] = h2f(la[i] >> 16);
        }
        for (int i = 0; i < 2; i++) {
            B[2 * t + 8 * i][g] = h2f(lb[i] & 0xffff);
            B[2 * t + 8 * i + 1][g] = h2f(lb[i] >> 16);
        }
    }
    int g = (th % 32) / 4, t = th % 4;
    for (int i = 0; i < 4; i++) {
        int r = g + 8 * (i >> 1), c = 2 * t + (i & 1);
        float acc = 0.0f;
        for (int k = 0; k < 16; k++) acc += A[r][k] * B[k][c];
        d[i] += acc;
    }
    emu::wait(emu::warps[w]);
}
