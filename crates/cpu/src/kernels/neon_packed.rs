//! NEON kernels over the packed layout (`crate::packed`): each 16-row group is taken as four
//! quarters of 4 rows (one row per 32-bit lane of a 128-bit register) against up to `MAX_TILE`
//! tokens at a time. A sub-block's weights are unpacked once per tile into 8 registers (4
//! columns × 4 rows each) and meet every token of the tile: with the dot-product instructions
//! (`Isa::NeonDot`: Apple M1 and later, Neoverse N1/V1 and later — AWS Graviton 2+, Ampere
//! Altra —, Cortex-A76/A55 and later) by `sdot` by element, the token's 4 quants a lane of a
//! register already holding 16 of them, so there is no broadcast; without them (`Isa::Neon`:
//! ARMv8.0 cores such as the Raspberry Pi 4's Cortex-A72) by widening multiplies and pairwise
//! adds. Row sums come out in lanes — no horizontal sums, one scale step per 4 rows — where the
//! file layout took one row and one token at a time, and the scalar oracle for most types.
//!
//! The products are of signed bytes: stored quants of up to 6 bits are non-negative and fit,
//! and their offset enters through the activation sums as on x86; 8-bit kinds (Q8_0's q + 128)
//! are flipped back to signed, and the IQ4 kinds look the signed levels up. Integer sums are
//! exact and each row's f32 steps are `avx512_packed`'s, in the same order: the results equal
//! the x86 kernels' bit for bit (tested against `Packed::reference_product`, which both equal).

use super::packed_kinds::{
    by_kind, even_tiles, kind, row_parts, unroll16, IQ4NL, IQ4XS, Q4K, Q4_0, Q4_1, Q5K, Q5_0, Q5_1,
    Q6K, Q8_0,
};
use super::pacts::{Meta, PActs};
use crate::packed::{Kind, Packed, ROWS};
use std::arch::aarch64::*;
use suanli_core::quant::IQ4_LEVELS;

/// Rows per quarter group: one per 32-bit lane.
const QUARTER: usize = ROWS / 4;

/// Most tokens per tile: their accumulators, a sub-block's 8 weight registers and a token's
/// quants and sums in flight stay within the 32 registers.
const MAX_TILE: usize = 8;

/// Bytes of quarter `r` of the 64-byte register at `p + o`.
#[inline(always)]
unsafe fn ld(p: *const u8, o: usize, r: usize) -> uint8x16_t {
    vld1q_u8(p.add(o + 16 * r))
}

/// Kinds whose quants are multiplied signed (no offset to take back through the sums).
const fn signed(k: u8) -> bool {
    kind(k).bits() == 8 || matches!(kind(k), Kind::IQ4NL | Kind::IQ4XS)
}

/// The 8 registers of one 32-column sub-block for rows `4r..4r + 4` (register g: columns
/// 4g..4g+4, one row per lane), as signed bytes: the stored quants (non-negative), or for the
/// signed kinds the values themselves.
#[inline(always)]
unsafe fn unpack<const K: u8>(p: *const u8, r: usize) -> [int8x16_t; 8] {
    let kd = kind(K);
    let mut w = [vdupq_n_u8(0); 8];
    if kd.bits() == 8 {
        let flip = vdupq_n_u8(0x80);
        for (g, v) in w.iter_mut().enumerate() {
            *v = veorq_u8(ld(p, 64 * g, r), flip);
        }
        return w.map(|v| vreinterpretq_s8_u8(v));
    }
    let m4 = vdupq_n_u8(0x0F);
    for j in 0..4 {
        let x = ld(p, 64 * j, r);
        w[j] = vandq_u8(x, m4);
        w[j + 4] = vshrq_n_u8::<4>(x);
    }
    match kd.bits() {
        5 => {
            let hb = ld(p, 256, r);
            let c10 = vdupq_n_u8(0x10);
            for (g, v) in w.iter_mut().enumerate() {
                let set = vtstq_u8(hb, vdupq_n_u8(1 << g));
                *v = vorrq_u8(*v, vandq_u8(set, c10));
            }
        }
        6 => {
            let c30 = vdupq_n_u8(0x30);
            for h in 0..2 {
                let x = ld(p, 256 + 64 * h, r);
                w[4 * h] = vorrq_u8(w[4 * h], vandq_u8(vshlq_n_u8::<4>(x), c30));
                w[4 * h + 1] = vorrq_u8(w[4 * h + 1], vandq_u8(vshlq_n_u8::<2>(x), c30));
                w[4 * h + 2] = vorrq_u8(w[4 * h + 2], vandq_u8(x, c30));
                w[4 * h + 3] = vorrq_u8(w[4 * h + 3], vandq_u8(vshrq_n_u8::<2>(x), c30));
            }
        }
        _ => {}
    }
    if matches!(kd, Kind::IQ4NL | Kind::IQ4XS) {
        let lut = vld1q_s8(IQ4_LEVELS.as_ptr());
        return w.map(|v| vqtbl1q_s8(lut, v));
    }
    w.map(|v| vreinterpretq_s8_u8(v))
}

/// `acc` + w · (the 4 quants in lane `L` of `q`), per 32-bit lane: `sdot` by element (its
/// intrinsic is not stable Rust yet).
#[inline]
#[target_feature(enable = "neon,dotprod")]
unsafe fn sdot<const L: usize>(mut acc: int32x4_t, w: int8x16_t, q: int8x16_t) -> int32x4_t {
    std::arch::asm!(
        "sdot {acc:v}.4s, {w:v}.16b, {q:v}.4b[{l}]",
        acc = inout(vreg) acc,
        w = in(vreg) w,
        q = in(vreg) q,
        l = const L,
        options(pure, nomem, nostack, preserves_flags)
    );
    acc
}

/// `acc` (2 × 2 i32: [w row 0 · q token 0, row 0 · token 1, row 1 · token 0, row 1 · token 1])
/// plus w (2 rows × 8 columns) times q (2 tokens × 8 columns): `smmla` (its intrinsic is not
/// stable Rust yet).
#[inline]
#[target_feature(enable = "neon,i8mm")]
unsafe fn smmla(mut acc: int32x4_t, w: int8x16_t, q: int8x16_t) -> int32x4_t {
    std::arch::asm!(
        "smmla {acc:v}.4s, {w:v}.16b, {q:v}.16b",
        acc = inout(vreg) acc,
        w = in(vreg) w,
        q = in(vreg) q,
        options(pure, nomem, nostack, preserves_flags)
    );
    acc
}

/// The 4 quants in lane `L` of `q` in every 32-bit lane.
#[inline(always)]
unsafe fn lane<const L: i32>(q: int8x16_t) -> int8x16_t {
    vreinterpretq_s8_s32(vdupq_laneq_s32::<L>(vreinterpretq_s32_s8(q)))
}

/// `sdot` without the instruction (ARMv8.0: Cortex-A72/A53, Raspberry Pi 4): the 16 byte
/// products widened in two `smull`, adjacent pairs added in i16 (|w·q| ≤ 128 · 127, so two fit),
/// then pairs of those added into each row's 32-bit lane — the same integer sums.
#[inline(always)]
unsafe fn smull_dot(acc: int32x4_t, w: int8x16_t, q4: int8x16_t) -> int32x4_t {
    let lo = vmull_s8(vget_low_s8(w), vget_low_s8(q4));
    let hi = vmull_high_s8(w, q4);
    vpadalq_s16(acc, vpaddq_s16(lo, hi))
}

/// Σ over registers `4h..4h + 4` (columns 16h..16h + 16) of w · the token's quants `q`
/// (its 16 quants of those columns), onto `acc`: `sdot` by element with `DOT`, else
/// `smull_dot`.
#[inline(always)]
unsafe fn dot16<const DOT: bool>(acc: int32x4_t, w: &[int8x16_t], q: int8x16_t) -> int32x4_t {
    if DOT {
        let acc = sdot::<0>(acc, w[0], q);
        let acc = sdot::<1>(acc, w[1], q);
        let acc = sdot::<2>(acc, w[2], q);
        return sdot::<3>(acc, w[3], q);
    }
    let acc = smull_dot(acc, w[0], lane::<0>(q));
    let acc = smull_dot(acc, w[1], lane::<1>(q));
    let acc = smull_dot(acc, w[2], lane::<2>(q));
    smull_dot(acc, w[3], lane::<3>(q))
}

/// 4 bytes → 4 f32, signed or unsigned.
#[inline(always)]
unsafe fn bytes_ps<const SIGNED: bool>(p: *const u8) -> float32x4_t {
    let b = vreinterpret_u8_u32(vdup_n_u32(std::ptr::read_unaligned(p as *const u32)));
    if SIGNED {
        vcvtq_f32_s32(vmovl_s16(vget_low_s16(vmovl_s8(vreinterpret_s8_u8(b)))))
    } else {
        vcvtq_f32_u32(vmovl_u16(vget_low_u16(vmovl_u8(b))))
    }
}

/// 4 f16 → 4 f32 (exact).
#[inline(always)]
unsafe fn f16x4(p: *const u8) -> float32x4_t {
    vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p as *const u16)))
}

/// `avx512_sub::sub_scales` for rows `4r..4r + 4`.
#[inline(always)]
unsafe fn sub_scales<const K: u8>(
    hd: *const u8,
    j: usize,
    (d, second): (float32x4_t, float32x4_t),
    r: usize,
) -> [float32x4_t; 3] {
    let kd = kind(K);
    let sc = hd.add(kd.sc_at() + QUARTER * r);
    match K {
        Q4K | Q5K => [
            vmulq_f32(d, bytes_ps::<false>(sc.add(ROWS * j))),
            d,
            vmulq_f32(
                second,
                bytes_ps::<false>(hd.add(kd.mn_at() + QUARTER * r + ROWS * j)),
            ),
        ],
        Q6K => [
            vmulq_f32(d, bytes_ps::<true>(sc.add(ROWS * 2 * j))),
            vmulq_f32(d, bytes_ps::<true>(sc.add(ROWS * (2 * j + 1)))),
            second,
        ],
        IQ4XS => [vmulq_f32(d, bytes_ps::<true>(sc.add(ROWS * j))), d, second],
        _ => [d, d, second],
    }
}

/// acc += the integer sums `i` × (the rows' scales `s` × the token's scale `d`), fused.
#[inline(always)]
unsafe fn scale_sums(acc: &mut float32x4_t, i: int32x4_t, s: float32x4_t, d: f32) {
    *acc = vfmaq_f32(*acc, vcvtq_f32_s32(i), vmulq_n_f32(s, d));
}

/// The offset terms of a token's block (`m`) for the two 16-column halves' integer sums
/// (quants stored with offset `off`): Q6_K's halves each their own, other kinds the whole
/// block's in the first.
#[inline(always)]
fn offsets<const K: u8>(m: &Meta, off: i32) -> (i32, i32) {
    if K == Q6K {
        (m.half_offset_sum(0, off), m.half_offset_sum(1, off))
    } else {
        (m.offset_sum(off), 0)
    }
}

/// A token's sub-block into its accumulator: the two halves' integer sums `i0`, `i1` (offsets
/// included) by the rows' scales (`sub_scales`) and the token's scale, then the min term — each
/// row's f32 steps as on x86.
#[inline(always)]
unsafe fn scale_token<const K: u8>(
    acc: &mut float32x4_t,
    (i0, i1): (int32x4_t, int32x4_t),
    m: &Meta,
    [s0, s1, mv]: [float32x4_t; 3],
) {
    if K == Q6K {
        // Each 16-column half has its own scale: both halves by their row scales, then the
        // token's (as x86's `scale_in`).
        let x = vfmaq_f32(vmulq_f32(vcvtq_f32_s32(i0), s0), vcvtq_f32_s32(i1), s1);
        *acc = vfmaq_n_f32(*acc, x, m.d);
        return;
    }
    scale_sums(acc, vaddq_s32(i0, i1), s0, m.d);
    match K {
        Q4_1 | Q5_1 => *acc = vfmaq_n_f32(*acc, mv, m.s),
        Q4K | Q5K => *acc = vfmsq_n_f32(*acc, mv, m.s),
        _ => {}
    }
}

/// Quarter `r`'s superblock scale and second value (min, dmin) of the superblock at `hd`.
#[inline(always)]
unsafe fn head_quarter<const K: u8>(hd: *const u8, r: usize) -> (float32x4_t, float32x4_t) {
    let d = f16x4(hd.add(2 * QUARTER * r));
    let second = if kind(K).has_second() {
        f16x4(hd.add(2 * ROWS + 2 * QUARTER * r))
    } else {
        vdupq_n_f32(0.0)
    };
    (d, second)
}

/// Sub-block `j` (block `blk` of the row) of the superblock at `hd`, rows `4r..4r + 4`, into
/// the sums `acc` of tokens `t0..t0 + T`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn sub_block<const K: u8, const T: usize, const DOT: bool>(
    acc: &mut [float32x4_t; T],
    hd: *const u8,
    j: usize,
    blk: usize,
    scales: (float32x4_t, float32x4_t),
    r: usize,
    a: &PActs,
    t0: usize,
) {
    let kd = kind(K);
    let off = if signed(K) { 0 } else { kd.offset() as i32 };
    let nblk = a.k / 32;
    let w = unpack::<K>(hd.add(kd.head_bytes() + j * kd.sub_bytes()), r);
    let scales = sub_scales::<K>(hd, j, scales, r);
    // Every token runs two chains (columns 0..16 and 16..32), written out so that the
    // compiler interleaves the tokens' independent `sdot`s.
    unroll16!(t < T, {
        let q = a.qs.as_ptr().add((t0 + t) * a.k + blk * 32);
        let m = a.meta.get_unchecked((t0 + t) * nblk + blk);
        let (q0, q1) = (vld1q_s8(q), vld1q_s8(q.add(16)));
        let (o0, o1) = offsets::<K>(m, off);
        let i0 = dot16::<DOT>(vdupq_n_s32(o0), &w[..4], q0);
        let i1 = dot16::<DOT>(vdupq_n_s32(o1), &w[4..], q1);
        scale_token::<K>(&mut acc[t], (i0, i1), m, scales);
    });
}

/// Each token's 4 row sums (plus the bias) into `out`, tokens `ostride` apart; only the first
/// `valid` rows are written.
#[inline(always)]
unsafe fn store(
    acc: &[float32x4_t],
    out: *mut f32,
    ostride: usize,
    valid: usize,
    bias: Option<&[f32]>,
) {
    let mut b = [0f32; QUARTER];
    if let Some(bias) = bias {
        let k = valid.min(QUARTER).min(bias.len());
        b[..k].copy_from_slice(&bias[..k]);
    }
    let b = vld1q_f32(b.as_ptr());
    for (t, v) in acc.iter().enumerate() {
        let v = vaddq_f32(*v, b);
        let o = out.add(t * ostride);
        if valid >= QUARTER {
            vst1q_f32(o, v);
        } else {
            let mut lanes = [0f32; QUARTER];
            vst1q_f32(lanes.as_mut_ptr(), v);
            std::ptr::copy_nonoverlapping(lanes.as_ptr(), o, valid);
        }
    }
}

/// One quarter group (rows `4r..4r + 4` of the group at `grp`) against tokens `t0..t0 + T`;
/// `out` points at the quarter's row 0 for token t0, tokens `ostride` apart; only `valid` rows
/// are written.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const K: u8, const T: usize, const DOT: bool>(
    grp: *const u8,
    r: usize,
    nsb: usize,
    a: &PActs,
    t0: usize,
    out: *mut f32,
    ostride: usize,
    valid: usize,
    bias: Option<&[f32]>,
) {
    let kd = kind(K);
    let (sbb, nsub) = (kd.sb_bytes(), kd.sb_cols() / 32);
    let mut acc = [vdupq_n_f32(0.0); T];
    for sb in 0..nsb {
        let hd = grp.add(sb * sbb);
        let scales = head_quarter::<K>(hd, r);
        for j in 0..nsub {
            sub_block::<K, T, DOT>(&mut acc, hd, j, sb * nsub + j, scales, r, a, t0);
        }
    }
    store(&acc, out, ostride, valid, bias);
}

/// `sub_block` for tokens `t0..t0 + 2P` taken in pairs, with `smmla` (`Isa::NeonMm`: twice
/// `sdot`'s multiply-adds per instruction): each pair of rows × 8 columns (two `zip`s of the
/// unpacked registers) meets each pair of tokens × the same 8 columns in one instruction. The
/// pairs' 2 × 2 sums are split back into each token's 4 rows (`uzp`), then scaled exactly as
/// `sub_block` does — the same integer sums and f32 steps, so the same bits. Only the first
/// `n` tokens are real: an odd tile's last pair repeats its token, and that copy is dropped.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn sub_block_mm<const K: u8, const P: usize>(
    acc: &mut [[float32x4_t; 2]; P],
    hd: *const u8,
    j: usize,
    blk: usize,
    scales: (float32x4_t, float32x4_t),
    r: usize,
    a: &PActs,
    (t0, n): (usize, usize),
) {
    let kd = kind(K);
    let off = if signed(K) { 0 } else { kd.offset() as i32 };
    let nblk = a.k / 32;
    let w = unpack::<K>(hd.add(kd.head_bytes() + j * kd.sub_bytes()), r);
    let scales = sub_scales::<K>(hd, j, scales, r);
    // Octet o (columns 8o..8o + 8) of rows 0, 1 and of rows 2, 3: the 32-bit lanes of registers
    // 2o and 2o + 1 interleaved.
    let pairs: [[int8x16_t; 2]; 4] = std::array::from_fn(|o| {
        let (a, b) = (
            vreinterpretq_s32_s8(w[2 * o]),
            vreinterpretq_s32_s8(w[2 * o + 1]),
        );
        [
            vreinterpretq_s8_s32(vzip1q_s32(a, b)),
            vreinterpretq_s8_s32(vzip2q_s32(a, b)),
        ]
    });
    unroll16!(p < P, {
        let ta = t0 + 2 * p;
        let tb = (ta + 1).min(t0 + n - 1);
        let (qa, qb) = (
            a.qs.as_ptr().add(ta * a.k + blk * 32),
            a.qs.as_ptr().add(tb * a.k + blk * 32),
        );
        // The two 16-column halves' sums (octets 0–1 and 2–3), each token's 4 rows.
        let h0 = octet_sums(&pairs, qa, qb, 0..2);
        let h1 = octet_sums(&pairs, qa, qb, 2..4);
        let ms = [
            a.meta.get_unchecked(ta * nblk + blk),
            a.meta.get_unchecked(tb * nblk + blk),
        ];
        let real = if ta + 1 < t0 + n { 2 } else { 1 };
        for (t, m) in ms.iter().enumerate().take(real) {
            let (o0, o1) = offsets::<K>(m, off);
            let i = (
                vaddq_s32(h0[t], vdupq_n_s32(o0)),
                vaddq_s32(h1[t], vdupq_n_s32(o1)),
            );
            scale_token::<K>(&mut acc[p][t], i, m, scales);
        }
    });
}

/// The sums of octets `os` of rows pairs `pairs` against the tokens at `qa` and `qb`, as each
/// token's 4 rows.
#[inline(always)]
unsafe fn octet_sums(
    pairs: &[[int8x16_t; 2]; 4],
    qa: *const i8,
    qb: *const i8,
    os: std::ops::Range<usize>,
) -> [int32x4_t; 2] {
    let (mut i01, mut i23) = (vdupq_n_s32(0), vdupq_n_s32(0));
    for o in os {
        let q = vcombine_s8(vld1_s8(qa.add(8 * o)), vld1_s8(qb.add(8 * o)));
        i01 = smmla(i01, pairs[o][0], q);
        i23 = smmla(i23, pairs[o][1], q);
    }
    [vuzp1q_s32(i01, i23), vuzp2q_s32(i01, i23)]
}

/// `tile` with `smmla`: `n` tokens (2 ≤ n ≤ 2P) from `t0`, in P pairs.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_mm<const K: u8, const P: usize>(
    grp: *const u8,
    r: usize,
    nsb: usize,
    a: &PActs,
    (t0, n): (usize, usize),
    out: *mut f32,
    ostride: usize,
    valid: usize,
    bias: Option<&[f32]>,
) {
    let kd = kind(K);
    let (sbb, nsub) = (kd.sb_bytes(), kd.sb_cols() / 32);
    let mut acc = [[vdupq_n_f32(0.0); 2]; P];
    for sb in 0..nsb {
        let hd = grp.add(sb * sbb);
        let scales = head_quarter::<K>(hd, r);
        for j in 0..nsub {
            sub_block_mm::<K, P>(&mut acc, hd, j, sb * nsub + j, scales, r, a, (t0, n));
        }
    }
    let mut flat = [vdupq_n_f32(0.0); MAX_TILE];
    for (f, v) in flat.iter_mut().zip(acc.iter().flatten()).take(n) {
        *f = *v;
    }
    store(&flat[..n], out, ostride, valid, bias);
}

/// All four quarters of a group against one token (decode): each sub-block's memory is
/// streamed once, not again from cache for every quarter; `out` points at the group's row 0,
/// `valid` rows.
#[inline(always)]
unsafe fn tile_group<const K: u8, const DOT: bool>(
    grp: *const u8,
    nsb: usize,
    a: &PActs,
    t0: usize,
    out: *mut f32,
    valid: usize,
    bias: Option<&[f32]>,
) {
    let kd = kind(K);
    let (sbb, nsub) = (kd.sb_bytes(), kd.sb_cols() / 32);
    let mut acc = [[vdupq_n_f32(0.0); 1]; 4];
    for sb in 0..nsb {
        let hd = grp.add(sb * sbb);
        let scales: [_; 4] = std::array::from_fn(|r| head_quarter::<K>(hd, r));
        for j in 0..nsub {
            let blk = sb * nsub + j;
            for (r, acc) in acc.iter_mut().enumerate() {
                sub_block::<K, 1, DOT>(acc, hd, j, blk, scales[r], r, a, t0);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        if valid <= QUARTER * r {
            break;
        }
        let bias = bias.map(|b| &b[QUARTER * r..]);
        store(acc, out.add(QUARTER * r), 0, valid - QUARTER * r, bias);
    }
}

/// Rows of groups `groups` against tokens `tokens`: `out` is the `[n, rows]` output. With `MM`
/// (`smmla`), tiles of two tokens or more go to `tile_mm`.
#[inline(always)]
unsafe fn products<const K: u8, const DOT: bool, const MM: bool>(
    p: &Packed,
    a: &PActs,
    groups: std::ops::Range<usize>,
    tokens: std::ops::Range<usize>,
    bias: Option<&[f32]>,
    out: *mut f32,
) {
    let nsb = p.cols / kind(K).sb_cols();
    if tokens.len() == 1 {
        for (grp, _, r0, valid) in row_parts(p, groups, 1) {
            let o = out.add(tokens.start * p.rows + r0);
            let bias = bias.map(|b| &b[r0..]);
            tile_group::<K, DOT>(grp, nsb, a, tokens.start, o, valid, bias);
        }
        return;
    }
    for (grp, r, r0, valid) in row_parts(p, groups, 4) {
        let bias = bias.map(|b| &b[r0..]);
        for (t, size) in even_tiles(tokens.clone(), MAX_TILE) {
            let o = out.add(t * p.rows + r0);
            if MM && size >= 2 {
                let nt = (t, size);
                match size.div_ceil(2) {
                    1 => tile_mm::<K, 1>(grp, r, nsb, a, nt, o, p.rows, valid, bias),
                    2 => tile_mm::<K, 2>(grp, r, nsb, a, nt, o, p.rows, valid, bias),
                    3 => tile_mm::<K, 3>(grp, r, nsb, a, nt, o, p.rows, valid, bias),
                    _ => tile_mm::<K, 4>(grp, r, nsb, a, nt, o, p.rows, valid, bias),
                }
                continue;
            }
            // Called in place (a function pointer would lose the caller's target features).
            macro_rules! call {
                ($($s:literal)*) => {
                    match size {
                        $($s => tile::<K, $s, DOT>(grp, r, nsb, a, t, o, p.rows, valid, bias),)*
                        _ => tile::<K, MAX_TILE, DOT>(grp, r, nsb, a, t, o, p.rows, valid, bias),
                    }
                };
            }
            call!(1 2 3 4 5 6 7);
        }
    }
}

type Products = unsafe fn(
    &Packed,
    &PActs,
    std::ops::Range<usize>,
    std::ops::Range<usize>,
    Option<&[f32]>,
    *mut f32,
);

/// `products` compiled with `$features`, multiplying with `sdot` or not (`$dot`), with `smmla`
/// or not (`$mm`).
macro_rules! entry {
    ($name:ident, $features:literal, $dot:literal, $mm:literal) => {
        #[target_feature(enable = $features)]
        unsafe fn $name<const K: u8>(
            p: &Packed,
            a: &PActs,
            groups: std::ops::Range<usize>,
            tokens: std::ops::Range<usize>,
            bias: Option<&[f32]>,
            out: *mut f32,
        ) {
            products::<K, $dot, $mm>(p, a, groups, tokens, bias, out)
        }
    };
}
entry!(with_smmla, "neon,dotprod,i8mm", true, true);
entry!(with_sdot, "neon,dotprod", true, false);
entry!(with_smull, "neon", false, false);

/// How the NEON tiles multiply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mul {
    /// Widening multiplies and pairwise adds (ARMv8.0, `Isa::Neon`).
    Smull,
    /// `sdot` by element (`Isa::NeonDot`).
    Sdot,
    /// `smmla` for two tokens or more, `sdot` for one (`Isa::NeonMm`).
    Smmla,
}

/// out[t, r] = Σ w[r]·x[t] (+ bias[r]) for groups `groups` and tokens `tokens`, multiplying as
/// `mul` says.
///
/// # Safety
/// The CPU must have the instructions `mul` uses; `out` must hold `a.n × p.rows` floats, and no
/// other thread may write the (token, row) cells this call covers.
pub unsafe fn run(
    p: &Packed,
    a: &PActs,
    groups: std::ops::Range<usize>,
    tokens: std::ops::Range<usize>,
    bias: Option<&[f32]>,
    out: *mut f32,
    mul: Mul,
) {
    debug_assert!(a.k == p.cols && tokens.end <= a.n && groups.end <= p.groups());
    let f: Products = match mul {
        Mul::Smmla => by_kind!(p.kind, with_smmla),
        Mul::Sdot => by_kind!(p.kind, with_sdot),
        Mul::Smull => by_kind!(p.kind, with_smull),
    };
    f(p, a, groups, tokens, bias, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::Isa;
    use crate::pool::Pool;
    use crate::testutil::{check_dequantized_dot, check_packed_bits, packed_case};

    /// Every product (`smmla` and `sdot` where the CPU has them, widening multiplies everywhere), every kind,
    /// groups with partial quarters (37 and 45 rows: 5 and 13 rows in the last group), with a
    /// bias, every tile size and one token: bit for bit the packed reference
    /// (which the x86 kernels equal too), and within f32 rounding of an f64 sum over the
    /// dequantized weights and activations.
    #[test]
    fn neon_packed_kernels_equal_the_reference_bit_for_bit() {
        let mut variants = vec![Mul::Smull];
        if Isa::available().contains(&Isa::NeonDot) {
            variants.push(Mul::Sdot);
        } else {
            eprintln!("no dot-product instructions on this CPU: the sdot tiles are not tested");
        }
        if Isa::available().contains(&Isa::NeonMm) {
            variants.push(Mul::Smmla);
        } else {
            eprintln!("no int8 matrix multiplies on this CPU: the smmla tiles are not tested");
        }
        let pool = Pool::new(2).unwrap();
        for dot in variants {
            for rows in [37, 45] {
                for n in (1..=9).chain([17]) {
                    for ty in suanli_core::DType::ALL {
                        let Some(kd) = Kind::of(ty) else { continue };
                        for cols in [512, 1056] {
                            if cols % kd.sb_cols() != 0 {
                                continue;
                            }
                            let (raw, p, a, bias) = packed_case(&pool, ty, (rows, cols, n), 7);
                            let mut out = vec![f32::NAN; n * rows];
                            let (all, o) = (0..p.groups(), out.as_mut_ptr());
                            unsafe { run(&p, &a, all, 0..n, Some(&bias), o, dot) };
                            let what = format!("{kd:?} {dot:?} rows {rows} cols {cols} n {n}");
                            check_packed_bits(&p, &a, &bias, &out, &what);
                            let shape = (rows, cols, n);
                            check_dequantized_dot(ty, &raw, &a, &bias, &out, shape, &what);
                        }
                    }
                }
            }
        }
    }
}
