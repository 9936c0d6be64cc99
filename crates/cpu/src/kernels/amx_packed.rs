//! AMX int8 tiles over the packed layout (`crate::packed`), for products of 32 tokens or more
//! (`avx512_packed::AMX_FROM`; fewer go faster on VNNI).
//!
//! Per group of 16 weight rows, every 32-column sub-block is unpacked once into a B tile (8 rows
//! of 64 bytes: 4 columns × 16 rows, the VNNI order `tdpbssd` reads) with the kind's offset
//! taken off (signed quants), and its 16 rows' scales are computed once. Every tile of 16 tokens
//! then runs over those: `tdpbssd` (signed activations × signed quants, read in place as an A
//! tile of 16 rows × 32 bytes, laid out once per input by `PActs::fill`) gives the 16 × 16 integer sums of a sub-block, which are stored
//! to L1 and scaled in f32 by the vector units while the tile unit multiplies the next
//! sub-block. The unpacking, formerly once per 8 tokens, is paid once per group and chunk.
//!
//! The integer sums equal the VNNI kernels' (there the offset enters through the activation
//! sums) and the f32 epilogue is the same, so results are bit-identical to `avx512_packed`.

use super::at_least;
use super::avx512_packed::{prefetch_ahead, vnni_tokens};
use super::avx512_sub::{head_values, scale_in, store, sub_scales, unpack};
use super::avx512_wide::silu_mul_in_place;
use super::packed_kinds::{kind, unroll16, Q6K};
use super::pacts::{PActs, TileBlock, TILE_TOKENS};
use crate::amx::TileConfig;
use crate::packed::{Packed, ROWS};
use crate::vmath::silu_mul_plain;
use std::arch::asm;
use std::arch::x86_64::*;
use std::cell::RefCell;

/// Tokens per tile (rows of an A tile).
pub const TOKENS: usize = TILE_TOKENS;

/// Outputs of at least this many bytes are written with non-temporal stores: each token's 16
/// rows are one whole line, written without first reading it. Ordinary stores miss (the output
/// is larger than the L2 and the next step reads it long after) and each fetches its line
/// first; and since tile loads wait for older stores to complete, a group's outputs held up
/// the next group's tiles. Qwen2.5-Coder-0.5B pp512 (2 threads, amx, 6 alternating runs,
/// medians): 589 tok/s on average with ordinary stores, 637 streaming every output, 689 from
/// 1 MiB up (the smaller outputs, read back from the caches, were better kept there).
const STREAM_FROM: usize = 1 << 20;

/// One sub-block of a group, ready for the tile unit: the signed quants as a B tile and the 16
/// rows' scales (the integer sums' scale, Q6_K's second half's, the mins' scale).
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Sub {
    w: [u8; 512],
    s: [[f32; ROWS]; 3],
}

/// A thread's scratch: a group's prepared sub-blocks (and the up matrix's, for the gated
/// products) and its outputs for all whole tiles (`[tiles × 16 tokens][16 rows]`).
#[derive(Default)]
struct Scratch {
    prep: Vec<Sub>,
    prep_up: Vec<Sub>,
    staged: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Tiles for 32-column sub-blocks, two sets for alternate sub-blocks (tile registers are not
/// renamed, so the unit multiplies one set while the other's sums are stored): sums tmm0 / tmm1
/// (16 tokens × 16 rows of i32), activations tmm2 / tmm3 (16 tokens × 32 bytes), weights
/// tmm4 / tmm5 (8 rows of 64 bytes, k = 32).
static CONFIG_32: TileConfig = TileConfig::new([
    (16, 64),
    (16, 64),
    (16, 32),
    (16, 32),
    (8, 64),
    (8, 64),
    (16, 64),
    (16, 64),
]);

/// Q6_K's halves of 16 columns (each with its own scale): sums tmm0, tmm1 / tmm2, tmm3,
/// activations tmm4 / tmm5 (16 tokens × 16 bytes), weights tmm6 / tmm7 (4 rows of 64 bytes).
static CONFIG_16: TileConfig = TileConfig::new([
    (16, 64),
    (16, 64),
    (16, 64),
    (16, 64),
    (16, 16),
    (16, 16),
    (4, 64),
    (4, 64),
]);

/// Rows of groups `groups` against `tokens` (at least `TOKENS`): whole tiles of 16 tokens on
/// the tile unit, the rest on VNNI. `out` is the `[n, rows]` output.
///
/// # Safety
/// As `avx512_packed::run`, and the process must hold the AMX tile permission (`Isa::Amx`).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn run_kind<const K: u8>(
    p: &Packed,
    a: &PActs,
    groups: std::ops::Range<usize>,
    tokens: std::ops::Range<usize>,
    bias: Option<&[f32]>,
    out: *mut f32,
) {
    products::<K>(p, None, a, groups, tokens, bias, out)
}

/// The gated MLP's first half for groups `groups` and `tokens`: `out` = silu(x · gateᵀ) ·
/// (x · upᵀ), both products' tiles run one after the other on a group's tokens and combined
/// in cache, so the two `[n, rows]` products are never written out and read back (and the
/// output is half their bytes). `up_rest` (`[n, rows]`) receives the up product of the tokens
/// after the whole tiles, which VNNI computes. Bit for bit `silu_mul` of the two products.
///
/// # Safety
/// As `run_kind`, with `gate` and `up` of the same kind and shape.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn run_gated_kind<const K: u8>(
    gate: &Packed,
    up: &Packed,
    a: &PActs,
    groups: std::ops::Range<usize>,
    tokens: std::ops::Range<usize>,
    out: *mut f32,
    up_rest: *mut f32,
) {
    products::<K>(gate, Some((up, up_rest)), a, groups, tokens, None, out)
}

/// `run_kind`, or with `up` (and its `up_rest`) `run_gated_kind`. (Its own target features:
/// the closure inside would not inherit them through an inlined function.)
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
unsafe fn products<const K: u8>(
    p: &Packed,
    up: Option<(&Packed, *mut f32)>,
    a: &PActs,
    groups: std::ops::Range<usize>,
    tokens: std::ops::Range<usize>,
    bias: Option<&[f32]>,
    out: *mut f32,
) {
    let kd = kind(K);
    let nsb = p.cols / kd.sb_cols();
    let nblk = p.cols / 32;
    let m = p.rows;
    // Whole tiles of the input's tiled activations (`PActs::fill(…, true)`; chunks of tokens
    // start at whole tiles, see `matmul::packed_many`); anything else goes to VNNI.
    let laid_out = tokens.start.is_multiple_of(TOKENS) && a.tiles().len() >= a.n / TOKENS * nblk;
    debug_assert!(laid_out, "AMX product without tiled activations");
    let whole = match laid_out {
        true => tokens.start + (tokens.len() / TOKENS) * TOKENS,
        false => tokens.start,
    };
    let cfg: &TileConfig = if K == Q6K { &CONFIG_16 } else { &CONFIG_32 };
    asm!("ldtilecfg [{c}]", c = in(reg) cfg as *const TileConfig, options(nostack, readonly));
    let tiles = (whole - tokens.start) / TOKENS;
    // Whole lines (groups of 16 rows on line-aligned rows, `ActBuf`) of a large output.
    let stream =
        a.n * m * 4 >= STREAM_FROM && m.is_multiple_of(ROWS) && (out as usize).is_multiple_of(64);
    SCRATCH.with(|scratch| {
        let sc = &mut *scratch.borrow_mut();
        let zero = Sub {
            w: [0; 512],
            s: [[0.0; ROWS]; 3],
        };
        let prep = at_least(&mut sc.prep, nblk, zero);
        let prep_up = at_least(&mut sc.prep_up, if up.is_some() { nblk } else { 0 }, zero);
        let staged = at_least(&mut sc.staged, tiles * TOKENS * ROWS, 0.0);
        let tiled = &a.tiles()[tokens.start / TOKENS * nblk..whole / TOKENS * nblk];
        // The gated products' two tiles of sums (every value written before it is read).
        let mut pair = Pair([[0.0; TOKENS * ROWS]; 2]);
        for g in groups {
            let grp = p.group(g).as_ptr();
            let r0 = g * ROWS;
            let bias = bias.map(|b| &b[r0..]);
            prepare::<K>(grp, nsb, prep);
            if let Some((u, _)) = up {
                prepare::<K>(u.group(g).as_ptr(), nsb, prep_up);
            }
            // Each tile's sums go to the staging area (in cache) and reach `out` only after
            // the group's last tile: tile loads wait for older stores to complete, and a
            // tile's 16 stores into a large output missing the caches halved the throughput
            // (prefetching those lines for writing did not help; see `STREAM_FROM`).
            for (at, st) in tiled
                .chunks_exact(nblk)
                .zip(staged.chunks_exact_mut(TOKENS * ROWS))
            {
                match up {
                    None => tile::<K>(prep, at, st.as_mut_ptr()),
                    Some(_) => {
                        let [gs, us] = &mut pair.0;
                        tile::<K>(prep, at, gs.as_mut_ptr());
                        tile::<K>(prep_up, at, us.as_mut_ptr());
                        silu_mul_plain(gs, us, st);
                    }
                }
            }
            let dst = out.add(tokens.start * m + r0);
            if stream && m - r0 >= ROWS {
                let b = match bias {
                    Some(b) => _mm512_loadu_ps(b.as_ptr()),
                    None => _mm512_setzero_ps(),
                };
                for (i, acc) in staged.chunks_exact(ROWS).enumerate() {
                    let acc = _mm512_loadu_ps(acc.as_ptr());
                    _mm512_stream_ps(dst.add(i * m), _mm512_add_ps(acc, b));
                }
            } else {
                for (i, acc) in staged.chunks_exact(ROWS).enumerate() {
                    let acc = _mm512_loadu_ps(acc.as_ptr());
                    store(&[acc], dst.add(i * m), m, m - r0, bias);
                }
            }
            vnni_tokens::<K, false>(grp, nsb, a, whole..tokens.end, out.add(r0), m, m - r0, bias);
            if let Some((u, rest)) = up {
                // The tokens after the whole tiles: the gate product went to `out`, the up
                // product goes to `rest`; combined in place.
                let valid = (m - r0).min(ROWS);
                let ugrp = u.group(g).as_ptr();
                vnni_tokens::<K, false>(
                    ugrp,
                    nsb,
                    a,
                    whole..tokens.end,
                    rest.add(r0),
                    m,
                    valid,
                    None,
                );
                silu_mul_in_place(out, rest, whole..tokens.end, m, r0, valid);
            }
        }
    });
    asm!("tilerelease", options(nostack, nomem));
    if stream {
        _mm_sfence();
    }
}

/// A tile's gate and up sums side by side (line-aligned, in L1).
#[repr(C, align(64))]
struct Pair([[f32; TOKENS * ROWS]; 2]);

/// Unpack a group's sub-blocks into B tiles of signed quants and their scales.
#[inline(always)]
unsafe fn prepare<const K: u8>(grp: *const u8, nsb: usize, prep: &mut [Sub]) {
    let kd = kind(K);
    let (sbb, nsub, head) = (kd.sb_bytes(), kd.sb_cols() / 32, kd.head_bytes());
    // Subtracting the offset as bytes wraps exactly to the signed quant (128 included).
    let off = _mm512_set1_epi8(kd.offset() as u8 as i8);
    for sb in 0..nsb {
        let h = grp.add(sb * sbb);
        let (d, second) = head_values(h, kd);
        for j in 0..nsub {
            let sub = prep.get_unchecked_mut(sb * nsub + j);
            let p = h.add(head + j * kd.sub_bytes());
            prefetch_ahead::<K>(p);
            let w = unpack::<K, false>(p);
            for (g, v) in w.iter().enumerate() {
                let v = if kd.offset() != 0 {
                    _mm512_sub_epi8(*v, off)
                } else {
                    *v
                };
                _mm512_store_si512(sub.w.as_mut_ptr().add(64 * g) as *mut _, v);
            }
            for (s, v) in sub.s.iter_mut().zip(sub_scales::<K>(h, j, d, second)) {
                _mm512_store_ps(s.as_mut_ptr(), v);
            }
        }
    }
}

/// Integer sums of two sub-blocks (alternate ones) for 16 tokens: 16 i32 per token, Q6_K's
/// second half 256 further.
#[repr(C, align(64))]
struct Sums([i32; 2 * 512]);

/// A tile of 16 tokens (`at`, one per sub-block) against a prepared group: the 16 tokens'
/// sums for the group's 16 rows to `out` (`[16 tokens][16 rows]`).
#[inline(always)]
unsafe fn tile<const K: u8>(prep: &[Sub], at: &[TileBlock], out: *mut f32) {
    let mut acc = [_mm512_setzero_ps(); TOKENS];
    // Written by the tile stores before the vector loads read them.
    let mut sums = std::mem::MaybeUninit::<Sums>::uninit();
    let sp = sums.as_mut_ptr() as *mut i32;
    for (blk, (sub, a)) in prep.iter().zip(at).enumerate() {
        let par = blk & 1;
        multiply::<K>(par, a.q.as_ptr(), sub.w.as_ptr(), sp.add(512 * par));
        // Scale the previous sub-block's sums while this one is in the tile unit.
        if blk > 0 {
            epilogue::<K>(
                &mut acc,
                sp.add(512 * (par ^ 1)),
                &at[blk - 1],
                &prep[blk - 1],
            );
        }
    }
    let last = prep.len() - 1;
    epilogue::<K>(&mut acc, sp.add(512 * (last & 1)), &at[last], &prep[last]);
    for (t, v) in acc.iter().enumerate() {
        _mm512_storeu_ps(out.add(t * ROWS), *v);
    }
}

/// The tile unit's part of one sub-block: sums `c` (16 tokens × 16 rows; Q6_K's second half
/// 256 further) from activations `q` (16 rows of 32 bytes) and the B tile `w`, on the tile set
/// of parity `par`.
#[inline(always)]
unsafe fn multiply<const K: u8>(par: usize, q: *const i8, w: *const u8, c: *mut i32) {
    let lda = 32usize;
    macro_rules! k32 {
        ($c:literal, $a:literal, $b:literal) => {
            asm!(
                concat!("tilezero ", $c),
                concat!("tileloadd ", $a, ", [{q} + {lda}*1]"),
                concat!("tileloadd ", $b, ", [{w} + {s64}*1]"),
                concat!("tdpbssd ", $c, ", ", $a, ", ", $b),
                concat!("tilestored [{c} + {s64}*1], ", $c),
                q = in(reg) q,
                lda = in(reg) lda,
                w = in(reg) w,
                s64 = in(reg) 64usize,
                c = in(reg) c,
                options(nostack),
            )
        };
    }
    macro_rules! k16x2 {
        ($c0:literal, $c1:literal, $a:literal, $b:literal) => {
            asm!(
                concat!("tilezero ", $c0),
                concat!("tilezero ", $c1),
                concat!("tileloadd ", $a, ", [{q} + {lda}*1]"),
                concat!("tileloadd ", $b, ", [{w} + {s64}*1]"),
                concat!("tdpbssd ", $c0, ", ", $a, ", ", $b),
                concat!("tileloadd ", $a, ", [{q16} + {lda}*1]"),
                concat!("tileloadd ", $b, ", [{w256} + {s64}*1]"),
                concat!("tdpbssd ", $c1, ", ", $a, ", ", $b),
                concat!("tilestored [{c} + {s64}*1], ", $c0),
                concat!("tilestored [{c1} + {s64}*1], ", $c1),
                q = in(reg) q,
                q16 = in(reg) q.add(16),
                lda = in(reg) lda,
                w = in(reg) w,
                w256 = in(reg) w.add(256),
                s64 = in(reg) 64usize,
                c = in(reg) c,
                c1 = in(reg) c.add(256),
                options(nostack),
            )
        };
    }
    match (K == Q6K, par) {
        (false, 0) => k32!("tmm0", "tmm2", "tmm4"),
        (false, _) => k32!("tmm1", "tmm3", "tmm5"),
        (true, 0) => k16x2!("tmm0", "tmm1", "tmm4", "tmm6"),
        (true, _) => k16x2!("tmm2", "tmm3", "tmm5", "tmm7"),
    }
}

/// Scale sub-block `blk`'s integer sums (`sums`: 16 tokens × 16 rows, Q6_K's second half 256
/// further) into the accumulators (`scale_in`, as `avx512_packed::tile`).
#[inline(always)]
unsafe fn epilogue<const K: u8>(
    acc: &mut [__m512; TOKENS],
    sums: *const i32,
    a: &TileBlock,
    sub: &Sub,
) {
    let [s0, s1, mv] = sub.s.map(|s| _mm512_load_ps(s.as_ptr()));
    unroll16!(t < TOKENS, {
        let i0 = _mm512_load_si512(sums.add(16 * t) as *const _);
        let i1 = if K == Q6K {
            _mm512_load_si512(sums.add(256 + 16 * t) as *const _)
        } else {
            _mm512_setzero_si512()
        };
        scale_in::<K>(&mut acc[t], (i0, i1), [s0, s1, mv], (a.d[t], a.s[t]));
    });
}

#[cfg(test)]
mod tests {
    use super::super::avx512_packed::{run, run_gated};
    use super::STREAM_FROM;
    use crate::kernels::Isa;
    use crate::packed::Kind;
    use crate::pool::Pool;
    use crate::testutil::packed_case;
    use crate::vmath::silu_mul_plain;
    use crate::ActBuf;
    use suanli_core::DType;

    /// A weight type, its packed kind and a (rows, cols, tokens) shape.
    type Case = (DType, Kind, (usize, usize, usize));

    /// Every packed kind with its (rows, cols, tokens) shapes: a whole group, partial groups,
    /// tokens after the whole tiles, an output large enough to be streamed. None (said
    /// visibly) where this machine has no AMX.
    fn cases(what: &str) -> Option<Vec<Case>> {
        if !Isa::available().contains(&Isa::Amx) {
            eprintln!("SKIPPED: no AMX int8 tiles here; {what} not tested");
            return None;
        }
        let mut v = Vec::new();
        for ty in DType::ALL {
            let Some(kd) = Kind::of(ty) else { continue };
            let cols = if kd.sb_cols() == 256 { 768 } else { 160 };
            // 43 tokens: 11 left over, one L1-accumulator tile for the kinds that take it
            // (VNNI alone: three such tiles, 15 + 14 + 14).
            for (rows, n) in [(16, 32), (45, 35), (45, 43), (7, 64), (1040, 256)] {
                assert_eq!(n * rows * 4 >= STREAM_FROM, rows == 1040);
                v.push((ty, kd, (rows, cols, n)));
            }
        }
        Some(v)
    }

    /// The tile unit's results are the VNNI kernels' bit for bit (same integer sums, same f32
    /// epilogue), for every packed kind, at partial groups of rows, with tokens left over for
    /// VNNI after the whole tiles, and for an output large enough to be streamed
    /// (`STREAM_FROM`, 1040 rows × 256 tokens); the VNNI kernels are tested against the
    /// dequantized dot.
    #[test]
    fn tiles_equal_the_vnni_kernels_bit_for_bit() {
        let Some(cases) = cases("the AMX kernels are") else {
            return;
        };
        let pool = Pool::new(2).unwrap();
        for (ty, kd, (rows, cols, n)) in cases {
            let (_, p, a, bias) = packed_case(&pool, ty, (rows, cols, n), 5);
            // Line-aligned, as the backend's activations are (streaming needs whole lines).
            let mut outs = [0, 1].map(|_| ActBuf::zeroed(n * rows).unwrap());
            outs.iter_mut().for_each(|o| o.fill(f32::NAN));
            for (amx, out) in [false, true].into_iter().zip(outs.iter_mut()) {
                // SAFETY: AVX-512 VNNI and the tile permission (Isa::Amx available); `out`
                // holds n × rows.
                unsafe {
                    run(
                        &p,
                        &a,
                        0..p.groups(),
                        0..n,
                        Some(&bias),
                        out.as_mut_ptr(),
                        amx,
                    )
                };
            }
            for (i, (v, t)) in outs[0].iter().zip(outs[1].iter()).enumerate() {
                assert!(
                    v.to_bits() == t.to_bits(),
                    "{kd:?} {rows}x{cols}, {n} tokens, token {} row {}: VNNI {v} AMX {t}",
                    i / rows,
                    i % rows
                );
            }
        }
    }

    /// The gated products (`run_gated_kind`) are `silu_mul` of the two products bit for bit,
    /// for every packed kind: partial groups, tokens left over for VNNI, a streamed output.
    #[test]
    fn gated_tiles_equal_silu_of_the_two_products() {
        let Some(cases) = cases("the gated AMX kernels are") else {
            return;
        };
        let pool = Pool::new(2).unwrap();
        for (ty, kd, (rows, cols, n)) in cases {
            let (_, gate, a, _) = packed_case(&pool, ty, (rows, cols, n), 5);
            let (_, up, _, _) = packed_case(&pool, ty, (rows, cols, n), 9);
            let [mut g, mut u, mut want, mut got, mut rest] =
                [0; 5].map(|_| ActBuf::zeroed(n * rows).unwrap());
            for o in [&mut got, &mut rest] {
                o.fill(f32::NAN);
            }
            // SAFETY: AVX-512 VNNI and the tile permission (Isa::Amx available); every
            // output holds n × rows.
            unsafe {
                for (p, o) in [(&gate, &mut g), (&up, &mut u)] {
                    run(p, &a, 0..p.groups(), 0..n, None, o.as_mut_ptr(), true);
                }
                run_gated(
                    &gate,
                    &up,
                    &a,
                    0..gate.groups(),
                    0..n,
                    got.as_mut_ptr(),
                    rest.as_mut_ptr(),
                    true,
                );
            }
            silu_mul_plain(&g, &u, &mut want);
            for (i, (w, v)) in want.iter().zip(got.iter()).enumerate() {
                assert!(
                    w.to_bits() == v.to_bits(),
                    "{kd:?} {rows}x{cols}, {n} tokens, token {} row {}: silu_mul {w} gated {v}",
                    i / rows,
                    i % rows
                );
            }
        }
    }
}
