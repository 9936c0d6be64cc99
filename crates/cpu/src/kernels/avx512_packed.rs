//! AVX-512 VNNI kernels over the packed layout (`crate::packed`): 16 rows × T tokens at a time.
//! Each 32-column sub-block is unpacked once into 8 registers (4 columns × 16 rows each) and
//! meets every token of the tile: `vpdpbusd` with the token's 4 quants broadcast, then one
//! conversion and one multiply-add per sub-block with the 16 rows' scales.
//!
//! Integer sums are exact (the weight offset enters as `offset · (−Σq)` at the start of the
//! sum); scales are applied in f32, so results equal the scalar oracle up to f32 rounding.
//!
//! With AMX (`amx` set, `Isa::Amx`) and `AMX_FROM` tokens or more, `amx_packed` takes whole
//! tiles of 16 tokens; the tokens left over come here.

use super::avx512_sub::{
    dot4_at, dot4_intrinsic, half_scaled, head_values, scale_halves, scale_in, store, sub_scales,
    unpack,
};
pub use super::avx512_wide::widens;
use super::avx512_wide::{
    gated_vnni, gated_vnni_gfni, load_wide, wide_from, wide_head, wide_sb_bytes, wide_tokens,
    WIDE_SUB,
};
use super::packed_kinds::*;
use super::pacts::{Meta, PActs, TILE_TOKENS};
use crate::packed::{Kind, Packed, ROWS};
use std::arch::x86_64::*;

/// Tokens from which a product goes to the AMX tiles: below, two or three VNNI tiles of 8 are
/// faster (`matmul_probe`, 2 threads, weights streamed: 16 tokens 15–20 % faster on VNNI, 24
/// tokens 10–20 %, 32 about even, 64 tokens 10–35 % faster on AMX). On this project's machines
/// the tile loads and stores (~30 cycles per KiB) bound the tiles, not the multiplies.
pub(crate) const AMX_FROM: usize = 32;

/// Most tokens in one VNNI tile: with 8, the accumulators and a sub-block's unpacked weights
/// fill the 32 vector registers.
pub(super) const MAX_TILE: usize = 8;

/// Kinds whose unpacking keeps more values live (the fifth bits' masks, Q4_1's minimum, Q6_K's
/// two half-block sums) spill registers at 8 tokens; at 7 they run faster per token
/// (`matmul_probe`, 1 thread, weights in L2, 8 → 7 at 512 tokens: Q5_0 270 → 325 G MAC/s,
/// Q4_1 238 → 288, Q6_K 235 → 250; Q4_K and Q8_0 lose 0–3 % at 7 and keep 8).
const fn max_tile(k: u8) -> usize {
    match k {
        Q4_1 | Q5_0 | Q5_1 | Q6K => MAX_TILE - 1,
        _ => MAX_TILE,
    }
}

/// Most tokens in one tile of the `mem_tiles` kinds, whose accumulators are held in L1
/// (`AccTile`).
const MEM_TILE: usize = 16;

/// Whether `n` tokens of kind `k` take tiles of up to `MEM_TILE`, their accumulators in L1
/// (`AccTile`), instead of register tiles of at most `max_tile`: where unpacking costs most
/// per register and the register tiles are shortest, unpacking a group once for up to 16
/// tokens saves more than each token's load and store of its accumulators costs.
/// `matmul_probe`, medians of alternating runs, G MAC/s, 1 thread in cache / 2 threads
/// streamed: Q5_0 4864 × 896 16 tokens 177 → 197 / 331 → 372, 8 tokens 157 → 184, 10 tokens
/// 167 → 194; Q4_1 16 tokens 342 → 367 (2 threads). Q4_K only where its register tiles would
/// be two short ones (8960 × 1536, 2 threads: 9 tokens 285 → 339, 11 tokens 319 → 358, 12
/// tokens 316 → 358, 14 tokens 367 → 377; 16 tokens, two tiles of 8, 397 → 365). Q6_K with
/// its two halves' chains in rounds of 8 tokens (896 × 4864, 2 threads: 8 tokens 160 → 191, 13
/// tokens 172 → 187, 16 tokens 206 → 222; 1536 × 8960 16 tokens 204 → 242; one half after the
/// other over all the tokens had gained nothing). Not taken: Q8_0 (no unpacking; 197 → 165),
/// Q4_0 (423 → 381), Q5_K (within the noise).
const fn mem_tiles(k: u8, n: usize) -> bool {
    match k {
        Q4_1 | Q5_0 | Q5_1 | Q6K => n > max_tile(k),
        Q4K => n > MAX_TILE && n < 2 * MAX_TILE,
        _ => false,
    }
}

/// Whether products of `kind` read whole tiles of 16 tokens from `PActs::tiles` at the AVX-512
/// level (their L1-accumulator tiles of 16): inputs whose products all decline need not lay
/// the tiles out.
pub fn reads_tiles(kind: Kind) -> bool {
    let k = id(kind);
    mem_tiles(k, TILE_TOKENS) || tiled_register_tiles(k) || wide_from(k) < usize::MAX
}

/// Kinds whose register tiles of 8 tokens read them from a whole tile of `PActs::tiles`:
/// every token's operands at a constant distance from one pointer, where token-major rows
/// took a general register per token — 8 of them, reloaded from the stack every sub-block
/// (as `mem_tile_body`'s whole tiles). Intel Xeon (AVX-512 VNNI, no AMX), `matmul_probe`,
/// best G MAC/s of alternating runs, before → after: Q8_0 4864 × 896 512 tokens 1 thread
/// 204–205 → 218–222, 896 × 4864 190–192 → 193–202; Q4_0 4864 × 896 195–213 → 215–219,
/// 16 tokens 2 threads streamed 368–419 → 432–451; Qwen2.5-0.5B's Q8_0 head at 16 tokens
/// 304–311 → 307–313. Not the K-quants: Q4_K lost (896 × 4864 512 tokens 172–176 → 165–167,
/// 16 tokens 337–358 → 324–326; 8960 × 1536 gained 3 %).
const fn tiled_register_tiles(k: u8) -> bool {
    matches!(k, Q8_0 | Q4_0)
}

/// Tiles of up to this many tokens run two multiply-add chains per token.
const TWO_CHAINS_UP_TO: usize = 5;

/// How far ahead of the sub-block being multiplied decode prefetches (bytes). With the faster
/// tiles a sub-block of 8 tokens takes ~12 ns, so 2 KiB ahead was less than the memory's
/// latency (AMD EPYC Zen 5, `matmul_probe` with `COPIES=64`, 2 threads, 8 tokens, G MAC/s:
/// Q6_K 220 → 280, Q8_0 245 → 290, Q5_0 ~330 → 480 at 8 KiB; 16 KiB is slower again).
const PREFETCH_AHEAD: usize = 8192;

/// Ask for the lines of the sub-block `PREFETCH_AHEAD` bytes past `p` (a sub-block of kind `K`
/// at `p`): small batches stream the weights from memory with little work per byte, and the
/// hardware prefetchers alone leave too few misses in flight (+20 % at 4–16 tokens, as at 1:
/// `matmul_probe` with `COPIES`).
#[inline(always)]
pub(super) unsafe fn prefetch_ahead<const K: u8>(p: *const u8) {
    let ahead = p.wrapping_add(PREFETCH_AHEAD);
    for line in (0..kind(K).sub_bytes()).step_by(64) {
        _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(line) as *const i8);
    }
}

/// Whether one token's tiles (decode) leave the weights' stream to the hardware prefetchers,
/// without `prefetch_ahead`: on AMD Zen 4 the software requests slowed it. Decode alternating
/// token by token between the two within one process (2 threads, 128 tokens, three runs):
/// Qwen2.5-Coder-1.5B 32.8 / 34.2 / 33.4 → 26.5 / 31.2 / 30.3 ms a token, Qwen2.5-Coder-0.5B
/// 15.0 / 13.7 / 12.2 → 13.7 / 12.6 / 9.6, SmolLM2-135M 4.04 / 3.59 / 3.68 → 3.42 / 3.16 / 3.26;
/// 2 KiB ahead instead of 8 gained half as much, 16 and 32 KiB nothing. `matmul_probe`, the
/// two alternating product by product over streamed copies, G MAC/s: Q4_K 8960 × 1536 50 → 59,
/// 1536 × 1536 44 → 54, Q8_0 4864 × 896 29 → 32, Q5_0 4864 × 896 53 → 58, Q6_K 1536 × 8960 34
/// → 35, 896 × 4864 35 → 37. From two tokens on the requests pay there too (Q4_K 8960 × 1536
/// 2 tokens −11 % without them, 4 tokens −42 %, 8 tokens −22 %). On Zen 5, where
/// `PREFETCH_AHEAD` was measured, they had paid at one token as well; Intel cores keep them
/// until measured.
fn decode_hw_prefetch_only() -> bool {
    zen4()
}

/// How far ahead the first token tile of a group asks for lines into L2 (bytes), on top of
/// `prefetch_ahead`'s into L1: a batch of 2–16 tokens (the server's steps, verifying passes)
/// streams each weight from memory once, in its first tile, and 8 KiB of L1 prefetches alone
/// left too few misses in flight there (below).
const FAR_AHEAD: usize = 16384;

/// Kinds whose first tiles wait on memory at a few tokens, and so take `prefetch_far`:
/// `matmul_probe`, 2 threads, weights streamed (`COPIES`), alternating, G MAC/s: Q8_0
/// 151936 × 896 (Qwen2.5-0.5B's head) 16 tokens 430–465 → 474–566; Q4_K 896 × 4864 16 tokens
/// 454–484 → 551–598, 8960 × 1536 4 tokens 363–400 → 454–478, 8 tokens 367–431 → 478–571;
/// Q6_K 151936 × 1536 (the 1.5B's head) 6 tokens 210–303 → 299–336, 896 × 4864 16 tokens
/// 413–430 → 436–469. The 32-column kinds are bound by their unpacking, not by memory, and
/// only paid for the extra instructions (Q5_0 7 and 16 tokens −3 to −10 %, Q4_0 and Q4_1
/// −3 %); one token (decode) lost too (Q4_K −14 %: its stream is the L1 prefetches' alone).
pub(super) const fn far_prefetch(k: u8) -> bool {
    matches!(k, Q8_0 | Q4K | Q5K | Q6K)
}

/// Tiles of at most this many tokens after a group's first ask for its far lines again: a
/// short first tile walks the group faster than the core takes its requests, and they are
/// dropped (AMD EPYC Zen 4, `matmul_probe` q8_0 151936 896 — Qwen2.5-0.5B's head, streamed —
/// 2 threads, medians of 5 alternating runs, G MAC/s: 9 tokens 224 → 293, 10 tokens 205 → 240,
/// 11 tokens 216 → 235 and 235 → 283, 13 tokens 272 → 303; re-asking in tiles of 7 and 8 gained
/// nothing: 14 tokens 248 → 258 and 302 → 281, 16 tokens 290 → 283; in Q6_K's and Q4_K's L1
/// tiles it lost 1–10 %).
const REASK_UP_TO: usize = 6;

/// On AMD Zen 4 (`zen4`) more tiles pay for far lines (2 threads, `matmul_probe` with
/// `COPIES=48`, the weights streamed, means of two alternating runs, G MAC/s):
/// Q5_0's register tiles of 5 to 7 tokens (4864 × 896 5 tokens 183 → 234, 6 tokens 201 → 262,
/// 7 tokens 183 → 227; 896 × 896 5 tokens 104 → 121, 7 tokens 124 → 133; 2 to 4 tokens
/// unchanged), and a group's first L1 tile (`mem_tile`) of up to `MEM_LEAD_UP_TO` tokens for
/// Q5_0 and Q6_K: Q5_0 4864 × 896 8 tokens 241 → 278, 9 tokens 249 → 260; Q6_K 896 × 4864 8
/// tokens 195 → 234, 9 tokens 205 → 244; 1536 × 8960 8 tokens 208 → 248, 9 tokens 219 → 262;
/// 151936 × 1536 (Qwen2.5-Coder-1.5B's head) 8 tokens 196 → 254, 9 tokens 214 → 274. Longer
/// L1 tiles walk a group slowly enough for the L1 prefetches alone, and the far ones lost there
/// (Q6_K 10 tokens 215 → 183, 14 tokens 234 → 205). Qwen2.5-Coder-0.5B, `suanli bench
/// --prompt-tokens N --batch N --depth 128`, medians of 40, two alternating runs: pp6 357 →
/// 389 tok/s, pp8 421 → 481, pp11 unchanged (verifying passes of drafts have these sizes). On
/// AMD Zen 5, where `far_prefetch` was measured, Q5_0 had lost 3–10 % with them at 7 and 16
/// tokens, and these were not measured there or on Intel cores: elsewhere tiles keep
/// `far_prefetch` alone.
const MEM_LEAD_UP_TO: usize = 9;

/// The `mem_tiles` kinds whose first L1 tile asks for far lines on Zen 4 (`MEM_LEAD_UP_TO`);
/// Q4_K's L1 tiles (9 to 15 tokens) gained nothing.
const fn mem_lead(k: u8) -> bool {
    matches!(k, Q5_0 | Q6K)
}

/// Whether more tiles ask for far lines (`MEM_LEAD_UP_TO`): AMD Zen 4.
fn far_on_zen4() -> bool {
    zen4()
}

/// Whether this is an AMD Zen 4 core (family 19h; its AVX-512 is the only one of that family),
/// found once per process.
fn zen4() -> bool {
    static ZEN4: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ZEN4.get_or_init(|| {
        use std::arch::x86_64::__cpuid;
        let v = __cpuid(0);
        // "AuthenticAMD" in EBX, EDX, ECX.
        let amd = (v.ebx, v.edx, v.ecx) == (0x6874_7541, 0x6974_6e65, 0x444d_4163);
        let eax = __cpuid(1).eax;
        let base = (eax >> 8) & 0xf;
        let family = base + if base == 0xf { (eax >> 20) & 0xff } else { 0 };
        amd && family == 0x19
    })
}

/// Ask for the lines of the sub-block `FAR_AHEAD` bytes past `p` into L2.
#[inline(always)]
pub(super) unsafe fn prefetch_far<const K: u8>(p: *const u8) {
    let far = p.wrapping_add(FAR_AHEAD);
    for line in (0..kind(K).sub_bytes()).step_by(64) {
        _mm_prefetch::<_MM_HINT_T2>(far.wrapping_add(line) as *const i8);
    }
}

/// The 8 registers of an unpacked sub-block, all computed here: an empty asm block that
/// takes and gives them back, so that LLVM cannot sink each register's unpacking to just
/// before its first product. Sunk, Q5_0's two-chain tiles waited on it: `matmul_probe`
/// 4864 × 896, 1 thread, best of 4 interleaved runs, G MAC/s: 4 tokens 301 → 322, 5 tokens
/// 295 → 334, 10 tokens 307 → 346, 11 tokens 326 → 349, 16 tokens 318 → 345 (3 tokens equal;
/// one-chain tiles of 7 lost 2 %, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K and Q8_0 gained nothing). Q6_K's
/// L1 tiles also pass their weights through it between rounds, as a barrier to LLVM's
/// scheduling (see there).
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn materialize(w: &mut [__m512i; 8]) {
    std::arch::asm!(
        "/* {0} {1} {2} {3} {4} {5} {6} {7} */",
        inout(zmm_reg) w[0],
        inout(zmm_reg) w[1],
        inout(zmm_reg) w[2],
        inout(zmm_reg) w[3],
        inout(zmm_reg) w[4],
        inout(zmm_reg) w[5],
        inout(zmm_reg) w[6],
        inout(zmm_reg) w[7],
        options(pure, nomem, nostack, preserves_flags)
    );
}

/// One group of 16 rows against tokens `t0..t0 + T`; `out` points at row 0 of the group for
/// token t0, tokens `ostride` apart; only the first `valid` rows are written. The `LEAD` tile
/// (a group's first, in products of two tokens or more of `far_prefetch` kinds, and on Zen 4 of
/// a few more: `MEM_LEAD_UP_TO`) also asks for lines far ahead. `TB`: the tokens lie in one whole
/// tile of `a.tiles` (`TileBlock`), read from there.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn tile<
    const K: u8,
    const T: usize,
    const LEAD: bool,
    const GF: bool,
    const TB: bool,
    const WIDE: bool,
>(
    grp: *const u8,
    nsb: usize,
    a: &PActs,
    t0: usize,
    out: *mut f32,
    ostride: usize,
    valid: usize,
    bias: Option<&[f32]>,
) {
    let kd = kind(K);
    let (sbb, nsub, head, subb) = match WIDE {
        true => (
            wide_sb_bytes(kd),
            kd.sb_cols() / 32,
            wide_head(kd),
            WIDE_SUB,
        ),
        false => (
            kd.sb_bytes(),
            kd.sb_cols() / 32,
            kd.head_bytes(),
            kd.sub_bytes(),
        ),
    };
    let off = kd.offset() as i32;
    let nblk = a.k / 32;
    // A widened group lies in cache (`widen`): no requests ahead.
    let near = !WIDE && (T > 1 || !decode_hw_prefetch_only());
    // The tile's first token within its whole tile of `a.tiles` (`TB`).
    let sub = t0 % TILE_TOKENS;
    debug_assert!(!TB || sub + T <= TILE_TOKENS);
    let mut acc = AccTile::<T>::new();
    for sb in 0..nsb {
        let h = grp.add(sb * sbb);
        let (d, second) = head_values(h, kd);
        for j in 0..nsub {
            let blk = sb * nsub + j;
            let p = h.add(head + j * subb);
            if near {
                prefetch_ahead::<K>(p);
            }
            if LEAD && !WIDE {
                prefetch_far::<K>(p);
            }
            let mut w = match WIDE {
                true => load_wide(p),
                false => unpack::<K, GF>(p),
            };
            if K == Q5_0 && (2..=TWO_CHAINS_UP_TO).contains(&T) {
                materialize(&mut w);
            }
            let [s0, s1, mv] = sub_scales::<K>(h, j, d, second);
            // A whole tile's block: every token's operands at a constant distance from `tq`
            // (the tile's token `sub` on, `sub` + T ≤ 16).
            let tb = match TB {
                true => a.tiles().as_ptr().add(t0 / TILE_TOKENS * nblk + blk),
                false => std::ptr::null(),
            };
            let tq = match TB {
                true => (*tb).q.as_ptr().add(32 * sub),
                false => std::ptr::null(),
            };
            let q = |t: usize| match TB {
                true => tq.add(32 * t),
                false => a.qs.as_ptr().add((t0 + t) * a.k + blk * 32),
            };
            let m = |t: usize| -> &Meta {
                match TB {
                    true => (*tb).meta.get_unchecked(sub + t),
                    false => a.meta.get_unchecked((t0 + t) * nblk + blk),
                }
            };
            // `dot4_at` of token t's quants, from `tq` at a constant offset where there is one.
            macro_rules! dot {
                ($g:ident, $acc:expr, $t:ident) => {
                    match TB {
                        true => dot4_at::<{ 32 * $t + 4 * $g }>($acc, w[$g], tq),
                        false => dot4_at::<{ 4 * $g }>($acc, w[$g], q($t)),
                    }
                };
            }
            // Every token's multiply-add chain advances one step per register `g`, so that
            // consecutive `vpdpbusd` never wait on each other: written token after token, the
            // chains' 5-cycle latency filled the scheduler and ran the unit at a third of its
            // rate (`matmul_probe`, 8 tokens in L2). Integer sums do not depend on the order.
            if K == Q6K {
                // Each 16-column half has its own scale (`scale_in`).
                let mut i0 = [_mm512_setzero_si512(); T];
                let mut i1 = [_mm512_setzero_si512(); T];
                unroll16!(t < T, {
                    i0[t] = _mm512_set1_epi32(m(t).half_offset_sum(0, off));
                    i1[t] = _mm512_set1_epi32(m(t).half_offset_sum(1, off));
                });
                if T <= TWO_CHAINS_UP_TO {
                    unroll16!(const g in [0 1 2 3], {
                        unroll16!(t < T, {
                            i0[t] = dot4_intrinsic::<g>(i0[t], w[g], q(t));
                            i1[t] = dot4_intrinsic::<{ g + 4 }>(i1[t], w[g + 4], q(t));
                        });
                    });
                    unroll16!(t < T, {
                        acc.with(t, |v| {
                            scale_in::<K>(v, (i0[t], i1[t]), [s0, s1, mv], (m(t).d, m(t).s))
                        });
                    });
                } else if T > MAX_TILE {
                    // An L1-accumulator tile: rounds of 2 tokens, both halves' chains at once
                    // (4 chains; the rounds are independent, so the core overlaps them). Rounds
                    // of 8 (16 chains beside the 8 weight registers) spilled: AMD EPYC Zen 4,
                    // `matmul_probe`, medians of alternating runs, G MAC/s, 8 → 2 tokens a
                    // round: 896 × 4864 1 thread 512 tokens 108 → 126, 9 tokens 118 → 121, 12
                    // tokens 118 → 121; 1536 × 8960 2 threads 512 tokens 216 → 256; 896 ×
                    // 4864 16 tokens 2 threads streamed 143 → 149 (4 a round: 123, 114, 107,
                    // 243, 148; 1 a round as 2).
                    unroll16!(const r in [0 2 4 6 8 10 12 14], {
                        let round = |t: usize| (r..r + 2).contains(&t);
                        unroll16!(const g in [0 1 2 3], {
                            unroll16!(t < T, {
                                if round(t) {
                                    i0[t] = dot4_intrinsic::<g>(i0[t], w[g], q(t));
                                    i1[t] = dot4_intrinsic::<{ g + 4 }>(i1[t], w[g + 4], q(t));
                                }
                            });
                        });
                        unroll16!(t < T, {
                            if round(t) {
                                acc.with(t, |v| {
                                    scale_in::<K>(v, (i0[t], i1[t]), [s0, s1, mv], (m(t).d, m(t).s))
                                });
                            }
                        });
                        // Every second round the weights pass through an empty asm block, so
                        // that LLVM cannot hoist later rounds' chains above it: with 11 tokens
                        // its interleaving of all the rounds spilled chains (2 threads
                        // streamed, alternating, G MAC/s: 169 → 188; 16 tokens 154 → 158, 512
                        // tokens equal; after every round, 12–512 tokens lost 5–10 %).
                        if r % 4 == 2 {
                            materialize(&mut w);
                        }
                    });
                } else {
                    // Both halves' chains at once would not fit the 32 registers: as
                    // `scale_in`, the first half scaled while the second's chains run.
                    unroll16!(const g in [0 1 2 3], {
                        unroll16!(t < T, { i0[t] = dot4_intrinsic::<g>(i0[t], w[g], q(t)) });
                    });
                    let mut x0 = [_mm512_setzero_ps(); T];
                    unroll16!(t < T, { x0[t] = half_scaled(i0[t], s0) });
                    unroll16!(const g in [0 1 2 3], {
                        unroll16!(t < T, { i1[t] = dot4_intrinsic::<{ g + 4 }>(i1[t], w[g + 4], q(t)) });
                    });
                    unroll16!(t < T, {
                        acc.with(t, |v| scale_halves(v, x0[t], i1[t], s1, m(t).d))
                    });
                }
            } else {
                let mut i0 = [_mm512_setzero_si512(); T];
                let offset = |t: usize| _mm512_set1_epi32(m(t).offset_sum(off));
                if T <= TWO_CHAINS_UP_TO {
                    // Two chains per token: fewer than ~10 chains leave the unit idle.
                    unroll16!(t < T, { i0[t] = offset(t) });
                    let mut i1 = [_mm512_setzero_si512(); T];
                    unroll16!(const g in [0 1 2 3], {
                        unroll16!(t < T, {
                            i0[t] = dot4_at::<{ 4 * g }>(i0[t], w[g], q(t));
                            i1[t] = dot4_at::<{ 4 * (g + 4) }>(i1[t], w[g + 4], q(t));
                        });
                    });
                    unroll16!(t < T, { i0[t] = _mm512_add_epi32(i0[t], i1[t]) });
                } else {
                    // One chain per token, started from the offset's term: a broadcast load,
                    // which takes no vector port. (Added after the chain when it was a
                    // multiply and a broadcast from a general register: 2 of the ~15 vector
                    // operations per token, `matmul_probe` 4864 × 896, 1 thread, medians of 5
                    // alternating runs, G MAC/s: Q5_0 16 tokens 160 → 169, 7 tokens 127 → 138,
                    // Q8_0 16 tokens 188 → 204.)
                    unroll16!(t < T, { i0[t] = offset(t) });
                    unroll16!(const g in [0 1 2 3 4 5 6 7], {
                        unroll16!(t < T, { i0[t] = dot!(g, i0[t], t) });
                    });
                }
                unroll16!(t < T, {
                    let z = _mm512_setzero_si512();
                    acc.with(t, |v| {
                        scale_in::<K>(v, (i0[t], z), [s0, s1, mv], (m(t).d, m(t).s))
                    });
                });
            }
        }
    }
    store(acc.all(), out, ostride, valid, bias);
}

/// A tile's f32 accumulators: in registers up to `MAX_TILE` tokens, in L1 above (where the
/// integer chains and the unpacked weights take every register). Held in memory, each token's
/// sub-block costs a load and a store, which take no vector port, while the group's weights
/// are unpacked once for all the tokens instead of once per register tile.
#[repr(C, align(64))]
struct AccTile<const T: usize>([__m512; T]);

impl<const T: usize> AccTile<T> {
    #[inline(always)]
    unsafe fn new() -> Self {
        AccTile([_mm512_setzero_ps(); T])
    }

    /// Update token `t`'s accumulator. Above `MAX_TILE` through volatile accesses, so that
    /// LLVM cannot promote the array back into (spilled) registers.
    #[inline(always)]
    unsafe fn with(&mut self, t: usize, f: impl FnOnce(&mut __m512)) {
        if T <= MAX_TILE {
            f(&mut self.0[t]);
        } else {
            let p = self.0.as_mut_ptr().add(t);
            let mut v = std::ptr::read_volatile(p);
            f(&mut v);
            std::ptr::write_volatile(p, v);
        }
    }

    #[inline(always)]
    fn all(&self) -> &[__m512] {
        &self.0
    }
}

/// Rows of groups `groups` against tokens `tokens`: `out` is the `[n, rows]` output. With
/// `amx` and `AMX_FROM` tokens or more, the tile unit takes whole tiles of 16 tokens (`amx_packed`).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
unsafe fn run_kind<const K: u8>(
    p: &Packed,
    a: &PActs,
    groups: std::ops::Range<usize>,
    tokens: std::ops::Range<usize>,
    bias: Option<&[f32]>,
    out: *mut f32,
    amx: bool,
) {
    run_body::<K, false>(p, a, groups, tokens, bias, out, amx)
}

/// As `run_kind`, the fifth bits unpacked by GFNI (`gfni_unpacks`).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c,gfni")]
unsafe fn run_kind_gfni<const K: u8>(
    p: &Packed,
    a: &PActs,
    groups: std::ops::Range<usize>,
    tokens: std::ops::Range<usize>,
    bias: Option<&[f32]>,
    out: *mut f32,
    amx: bool,
) {
    run_body::<K, true>(p, a, groups, tokens, bias, out, amx)
}

/// Whether `kind`'s products take `run_kind_gfni`: a kind with fifth bits, on a CPU with GFNI
/// (Intel since Ice Lake, AMD since Zen 4). Eight operations fewer per sub-block and tile
/// (`matmul_probe` q5_0 4864 896, Intel Xeon, alternating runs, best G MAC/s: 1 thread in cache
/// 7 tokens 161 → 173, 16 tokens 150 → 155; 2 threads streamed (`COPIES=40`) 11 tokens
/// 274 → 301, 16 tokens 278 → 299, one token unchanged; serving Qwen2.5-Coder-0.5B, 16 × 64
/// tokens: 359 / 383 → 373 / 414 tok/s).
fn gfni_unpacks(kind: Kind) -> bool {
    kind.bits() == 5 && std::arch::is_x86_feature_detected!("gfni")
}

#[inline(always)]
unsafe fn run_body<const K: u8, const GF: bool>(
    p: &Packed,
    a: &PActs,
    groups: std::ops::Range<usize>,
    tokens: std::ops::Range<usize>,
    bias: Option<&[f32]>,
    out: *mut f32,
    amx: bool,
) {
    if amx && tokens.len() >= AMX_FROM {
        return super::amx_packed::run_kind::<K>(p, a, groups, tokens, bias, out);
    }
    let nsb = p.cols / kind(K).sb_cols();
    for g in groups {
        let r0 = g * ROWS;
        let bias = bias.map(|b| &b[r0..]);
        vnni_tokens::<K, GF>(
            p.group(g).as_ptr(),
            nsb,
            a,
            tokens.clone(),
            out.add(r0),
            p.rows,
            p.rows - r0,
            bias,
        );
    }
}

/// One group of 16 rows (at `grp`) against `tokens`, in tiles of at most `max_tile(K)` tokens
/// (`MEM_TILE` for the `mem_tiles` kinds) as even as possible (`even_tiles`); `out` points at
/// the group's row 0 of token 0, tokens `m` apart.
///
/// Every tile unpacks the group again, but from `wide_from(K)` tokens on (`wide_tokens`).
/// Tried at 16 tokens: unpacking it once into a scratch of sub-blocks that every register tile
/// (of 7) loads from: no faster (Intel Xeon, `matmul_probe` 4864 × 1024, 1 thread, in cache,
/// alternating: Q5_0 145–147 against 144–150 G MAC/s, Q6_K 115–119 against 80–119, Q4_0
/// 149–152 against 180–185, Q4_K 143–150 against 135–182).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn vnni_tokens<const K: u8, const GF: bool>(
    grp: *const u8,
    nsb: usize,
    a: &PActs,
    tokens: std::ops::Range<usize>,
    out: *mut f32,
    m: usize,
    valid: usize,
    bias: Option<&[f32]>,
) {
    if wide_from(K) <= tokens.len() {
        return wide_tokens::<K, GF>(grp, nsb, a, tokens, out, m, valid, bias);
    }
    let first = tokens.start;
    let most = match mem_tiles(K, tokens.len()) {
        true => MEM_TILE,
        false => max_tile(K),
    };
    for (t, size) in even_tiles(tokens, most) {
        let out = out.add(t * m);
        if size > max_tile(K) {
            // Named kind by kind (and out of line), so that only these kinds' long tiles are
            // compiled, once each.
            let lead = t == first && size <= MEM_LEAD_UP_TO && mem_lead(K) && far_on_zen4();
            let args = (size, grp, nsb, a, t, out, m, valid, bias, lead);
            match (K, GF) {
                (Q4_1, _) => mem_tile::<Q4_1>(args),
                (Q5_0, false) => mem_tile::<Q5_0>(args),
                (Q5_1, false) => mem_tile::<Q5_1>(args),
                (Q5_0, true) => mem_tile_gfni::<Q5_0>(args),
                (Q5_1, true) => mem_tile_gfni::<Q5_1>(args),
                (Q4K, _) => mem_tile::<Q4K>(args),
                (Q6K, _) => mem_tile::<Q6K>(args),
                _ => unreachable!("a long tile of a kind without mem_tiles"),
            }
            continue;
        }
        // Called in place (a function pointer would lose the caller's target features).
        macro_rules! call {
            ($l:literal, $($s:literal)*) => {
                match size {
                    $($s => tile::<K, $s, $l, GF, false, false>(grp, nsb, a, t, out, m, valid, bias),)*
                    _ => tile::<K, MAX_TILE, $l, GF, false, false>(grp, nsb, a, t, out, m, valid, bias),
                }
            };
        }
        // The group's first tile reads its weights from memory; the others find them in cache.
        // Short tiles run through a group faster than its far requests can all be taken, so
        // the later ones ask again (`REASK_UP_TO`).
        let far = far_prefetch(K) || (K == Q5_0 && size >= 5 && far_on_zen4());
        let lead = size > 1 && far && (t == first || size <= REASK_UP_TO);
        if size == MAX_TILE && tiled_register_tiles(K) && in_whole_tile(a, t, size) {
            match lead {
                true => {
                    tile::<K, MAX_TILE, true, GF, true, false>(grp, nsb, a, t, out, m, valid, bias)
                }
                false => {
                    tile::<K, MAX_TILE, false, GF, true, false>(grp, nsb, a, t, out, m, valid, bias)
                }
            }
            continue;
        }
        if lead {
            call!(true, 2 3 4 5 6 7);
        } else {
            call!(false, 1 2 3 4 5 6 7);
        }
    }
}

/// Whether tokens `t..t + size` lie inside one whole tile of 16 that `a.tiles` laid out (so
/// `tile` may read them there, `TB`).
pub(super) fn in_whole_tile(a: &PActs, t: usize, size: usize) -> bool {
    t % TILE_TOKENS + size <= TILE_TOKENS && (t / TILE_TOKENS + 1) * a.k / 32 <= a.tiles().len()
}

/// `mem_tile`'s arguments: the tile's size, then `tile`'s, then whether it leads.
type MemTileArgs<'a> = (
    usize,
    *const u8,
    usize,
    &'a PActs,
    usize,
    *mut f32,
    usize,
    usize,
    Option<&'a [f32]>,
    bool,
);

/// A tile of more than `max_tile(K)` tokens (at most `MEM_TILE`) of a `mem_tiles` kind.
#[inline(never)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
unsafe fn mem_tile<const K: u8>(args: MemTileArgs) {
    mem_tile_body::<K, false>(args)
}

/// As `mem_tile`, the fifth bits unpacked by GFNI.
#[inline(never)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c,gfni")]
unsafe fn mem_tile_gfni<const K: u8>(args: MemTileArgs) {
    mem_tile_body::<K, true>(args)
}

#[inline(always)]
unsafe fn mem_tile_body<const K: u8, const GF: bool>(
    (size, grp, nsb, a, t, out, m, valid, bias, lead): MemTileArgs,
) {
    macro_rules! call {
        ($($s:literal)*) => {
            match (size, lead) {
                $(($s, false) => tile::<K, $s, false, GF, false, false>(grp, nsb, a, t, out, m, valid, bias),)*
                $(($s, true) => tile::<K, $s, true, GF, false, false>(grp, nsb, a, t, out, m, valid, bias),)*
                (_, false) => tile::<K, MEM_TILE, false, GF, false, false>(grp, nsb, a, t, out, m, valid, bias),
                (_, true) => tile::<K, MEM_TILE, true, GF, false, false>(grp, nsb, a, t, out, m, valid, bias),
            }
        };
    }
    // A whole tile of `a.tiles`: every token's operands at a constant distance from one
    // pointer, where token-major rows cost a general register per token, computed or reloaded
    // (AMD EPYC Zen 4, `matmul_probe` 4864 × 896, medians of 5 alternating runs, G MAC/s:
    // Q5_0 512 tokens 1 thread 135 → 142, 16 tokens 2 threads streamed 232 → 245; Q4_1 124 →
    // 131; Q6_K, whose quants are loaded by intrinsics, unchanged).
    if size == TILE_TOKENS && in_whole_tile(a, t, size) {
        return match lead {
            false => {
                tile::<K, TILE_TOKENS, false, GF, true, false>(grp, nsb, a, t, out, m, valid, bias)
            }
            true => {
                tile::<K, TILE_TOKENS, true, GF, true, false>(grp, nsb, a, t, out, m, valid, bias)
            }
        };
    }
    call!(8 9 10 11 12 13 14 15)
}

/// out[t, r] = Σ w[r]·x[t] (+ bias[r]) for groups `groups` and tokens `tokens`.
///
/// # Safety
/// The CPU must have the features of `Isa::Avx512` (and with `amx`, the process the AMX tile
/// permission of `Isa::Amx`); `out` must hold `a.n × p.rows` floats, and no other thread may
/// write the (token, row) cells this call covers.
pub unsafe fn run(
    p: &Packed,
    a: &PActs,
    groups: std::ops::Range<usize>,
    tokens: std::ops::Range<usize>,
    bias: Option<&[f32]>,
    out: *mut f32,
    amx: bool,
) {
    debug_assert!(a.k == p.cols && tokens.end <= a.n && groups.end <= p.groups());
    run_as(p, a, groups, tokens, bias, out, amx, gfni_unpacks(p.kind))
}

/// `run`, the fifth bits unpacked by GFNI or not (`gf`: only where `gfni_unpacks` could hold).
#[allow(clippy::too_many_arguments)]
unsafe fn run_as(
    p: &Packed,
    a: &PActs,
    groups: std::ops::Range<usize>,
    tokens: std::ops::Range<usize>,
    bias: Option<&[f32]>,
    out: *mut f32,
    amx: bool,
    gf: bool,
) {
    let f = match (gf, p.kind) {
        (true, Kind::Q5_0) => run_kind_gfni::<Q5_0>,
        (true, Kind::Q5_1) => run_kind_gfni::<Q5_1>,
        (true, Kind::Q5K) => run_kind_gfni::<Q5K>,
        _ => by_kind!(p.kind, run_kind),
    };
    f(p, a, groups, tokens, bias, out, amx)
}

/// out = silu(x · gateᵀ) · (x · upᵀ) for groups `groups` and tokens `tokens`, without writing
/// the two products out: with `amx`, on the AMX tiles (`amx_packed::run_gated_kind`; `up_rest`
/// receives the up product of the tokens after the whole tiles), else on VNNI (`gated_body`;
/// `up_rest` receives the up product where the tiles do not meet). The same bits as the two
/// products and `silu_mul`.
///
/// # Safety
/// As `run` with `amx`, for `out` and `up_rest` alike; `gate` and `up` of one kind and shape.
#[allow(clippy::too_many_arguments)]
pub unsafe fn run_gated(
    gate: &Packed,
    up: &Packed,
    a: &PActs,
    groups: std::ops::Range<usize>,
    tokens: std::ops::Range<usize>,
    out: *mut f32,
    up_rest: *mut f32,
    amx: bool,
) {
    debug_assert!(a.k == gate.cols && tokens.end <= a.n && groups.end <= gate.groups());
    assert!(gate.kind == up.kind && gate.rows == up.rows && gate.cols == up.cols);
    let f = match (amx, gfni_unpacks(gate.kind), gate.kind) {
        (true, _, _) => by_kind!(gate.kind, gated_kind),
        (false, true, Kind::Q5_0) => gated_vnni_gfni::<Q5_0>,
        (false, true, Kind::Q5_1) => gated_vnni_gfni::<Q5_1>,
        (false, true, Kind::Q5K) => gated_vnni_gfni::<Q5K>,
        (false, _, _) => by_kind!(gate.kind, gated_vnni),
    };
    f(gate, up, a, groups, tokens, out, up_rest)
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
unsafe fn gated_kind<const K: u8>(
    gate: &Packed,
    up: &Packed,
    a: &PActs,
    groups: std::ops::Range<usize>,
    tokens: std::ops::Range<usize>,
    out: *mut f32,
    up_rest: *mut f32,
) {
    super::amx_packed::run_gated_kind::<K>(gate, up, a, groups, tokens, out, up_rest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::Isa;
    use crate::pool::Pool;
    use crate::testutil::{check_dequantized_dot, check_packed_bits, packed_case};

    /// Every kind, 3 groups (the last partial), with a bias, against an f64 sum over the
    /// dequantized weights and activations: on VNNI every token count from 1 to 9 (each
    /// register tile size; 8, 9 and 11 are one L1-accumulator tile for the kinds of
    /// `mem_tiles`, 9 = 5 + 4 and 11 = 6 + 5 register tiles for the others), 37 (13 + 12 +
    /// 12 for the L1-accumulator kinds), 16 and 48 (whole tiles of 16, read from `a.tiles`:
    /// `TileBlock`, as Q8_0's and Q4_0's register tiles of 8 inside them read their halves,
    /// `tiled_register_tiles`; 37 and 48 are widened groups for the kinds of `wide_from`, in
    /// tiles of 8 + 8 + 7 + 7 + 7 and 6 × 8); with AMX, 37 tokens (two tiles of 16, then 5 on VNNI)
    /// and 43 (then 11 in one L1-accumulator tile where the kind takes it).
    #[test]
    fn packed_kernels_match_the_dequantized_dot() {
        if !Isa::available().contains(&Isa::Avx512) {
            eprintln!("no AVX-512 VNNI on this CPU: nothing to test");
            return;
        }
        let pool = Pool::new(2).unwrap();
        let rows = 37;
        let mut cases: Vec<(bool, usize)> = (1..=9)
            .chain([11, 16, 37, 48])
            .map(|n| (false, n))
            .collect();
        if Isa::available().contains(&Isa::Amx) {
            // 43: two AMX tiles, then 11 tokens in one L1-accumulator tile where a kind takes it.
            cases.push((true, 37));
            cases.push((true, 43));
        } else {
            eprintln!("no AMX int8 tiles here: the AMX tiles are not tested");
        }
        for (amx, n) in cases {
            for ty in suanli_core::DType::ALL {
                let Some(kd) = Kind::of(ty) else { continue };
                for cols in [512, 1056] {
                    if cols % kd.sb_cols() != 0 {
                        continue;
                    }
                    let (raw, p, a, bias) = packed_case(&pool, ty, (rows, cols, n), 3);
                    // Kinds with fifth bits: unpacked with GFNI (where there is) and without.
                    let gfs = if gfni_unpacks(kd) {
                        vec![true, false]
                    } else {
                        vec![false]
                    };
                    for gf in gfs {
                        let mut out = vec![f32::NAN; n * rows];
                        let (all, b) = (0..p.groups(), Some(&bias[..]));
                        unsafe { run_as(&p, &a, all, 0..n, b, out.as_mut_ptr(), amx, gf) };
                        let what = format!("{kd:?} amx {amx} gfni {gf} cols {cols} n {n}");
                        check_packed_bits(&p, &a, &bias, &out, &what);
                        check_dequantized_dot(ty, &raw, &a, &bias, &out, (rows, cols, n), &what);
                    }
                }
            }
        }
    }
}
