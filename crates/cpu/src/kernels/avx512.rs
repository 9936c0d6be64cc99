//! AVX-512 VNNI kernels: one quantized weight row against up to `T` tokens at once, so that each
//! weight block is unpacked once and reused across the tokens of a prefill tile.
//!
//! `vpdpbusd` multiplies unsigned by signed bytes: weights go in unsigned (their quants before
//! any offset), activations signed (`QActs`). A weight offset (Q4_0's −8, Q5_0's −16, Q6_K's −32)
//! is applied by starting the accumulator at `offset · (−Σ activations of the lane)`. Q8_0's signed
//! weights move their sign onto the activations. Integer sums are exact; each block's sum is scaled
//! in f32, so results equal the scalar oracle up to f32 rounding.

use super::acts::QActs;
use super::x86::{k45_chunk, nibbles_16, q6k_half};
use std::arch::x86_64::*;
use suanli_core::quant::scale_min_k4;
use suanli_core::DType;

/// f16 → f32 with the F16C instruction (the `half` crate's call does not inline here).
#[inline(always)]
unsafe fn f16(b: &[u8], i: usize) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(
        u16::from_le_bytes([b[i], b[i + 1]]) as i32,
    )))
}

#[inline(always)]
unsafe fn join(lo: __m256i, hi: __m256i) -> __m512i {
    _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1)
}

#[inline(always)]
unsafe fn join_ps(lo: f32, hi: f32) -> __m512 {
    _mm512_insertf32x8(
        _mm512_castps256_ps512(_mm256_set1_ps(lo)),
        _mm256_set1_ps(hi),
        1,
    )
}

/// 32 bits → 32 bytes, 0x10 where the bit is set.
#[inline(always)]
unsafe fn bit4_from_bits(bits: u32) -> __m256i {
    let m = _mm256_movm_epi8(bits);
    _mm256_and_si256(m, _mm256_set1_epi8(0x10))
}

const Q4_0: u8 = 0;
const Q4_1: u8 = 1;
const Q5_0: u8 = 2;
const Q5_1: u8 = 3;
const Q8_0: u8 = 4;
const IQ4NL: u8 = 5;

const fn legacy_bytes(ty: u8) -> usize {
    match ty {
        Q4_0 => 18,
        Q4_1 => 20,
        Q5_0 => 22,
        Q5_1 => 24,
        IQ4NL => 18,
        _ => 34,
    }
}

/// Unsigned weight quants (before offset) of one 32-element legacy block at `b`; Q8_0's and
/// IQ4_NL's (its 16 levels, looked up) are signed.
#[inline(always)]
unsafe fn legacy_block<const TY: u8>(b: *const u8) -> __m256i {
    let u32_at =
        |o: usize| u32::from_le_bytes([*b.add(o), *b.add(o + 1), *b.add(o + 2), *b.add(o + 3)]);
    match TY {
        Q4_0 => nibbles_16(b.add(2)),
        Q4_1 => nibbles_16(b.add(4)),
        Q5_0 => _mm256_or_si256(nibbles_16(b.add(6)), bit4_from_bits(u32_at(2))),
        Q5_1 => _mm256_or_si256(nibbles_16(b.add(8)), bit4_from_bits(u32_at(4))),
        IQ4NL => {
            let l = suanli_core::quant::IQ4_LEVELS;
            let lut = _mm_setr_epi8(
                l[0], l[1], l[2], l[3], l[4], l[5], l[6], l[7], l[8], l[9], l[10], l[11], l[12],
                l[13], l[14], l[15],
            );
            _mm256_shuffle_epi8(_mm256_set_m128i(lut, lut), nibbles_16(b.add(2)))
        }
        _ => _mm256_loadu_si256(b.add(2) as *const __m256i),
    }
}

/// Σ w·y per lane, starting from `init`: `w` unsigned, `y` signed; for Q8_0 `w` is signed and its
/// sign moves onto `y`.
#[inline(always)]
unsafe fn dot_lanes<const SIGNED_W: bool>(init: __m512i, w: __m512i, y: __m512i) -> __m512i {
    if SIGNED_W {
        let neg = _mm512_movepi8_mask(w);
        let ys = _mm512_mask_sub_epi8(y, neg, _mm512_setzero_si512(), y);
        _mm512_dpbusd_epi32(init, _mm512_abs_epi8(w), ys)
    } else {
        _mm512_dpbusd_epi32(init, w, y)
    }
}

/// The accumulator start for a weight offset of `-(1 << SHIFT)`: `(1 << SHIFT) · (−Σy)` per lane.
#[inline(always)]
unsafe fn offset_init<const SHIFT: u32>(nls: *const i32, two: bool) -> __m512i {
    let v = if two {
        _mm512_loadu_si512(nls as *const _)
    } else {
        _mm512_zextsi256_si512(_mm256_loadu_si256(nls as *const __m256i))
    };
    _mm512_slli_epi32::<SHIFT>(v)
}

#[inline(always)]
unsafe fn f16_ptr(b: *const u8) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(
        u16::from_le_bytes([*b, *b.add(1)]) as i32,
    )))
}

/// Blocks `b` and `b + 1` (or `b` alone when `!TWO`) of a legacy row against T tokens.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn legacy_pair<const TY: u8, const T: usize, const TWO: bool>(
    row: *const u8,
    b: usize,
    a: &QActs,
    t0: usize,
    nb: usize,
    acc: &mut [__m512; T],
    mins: &mut [f32; T],
) {
    let bb = legacy_bytes(TY);
    let zero = _mm512_setzero_si512();
    let (p0, p1) = (row.add(b * bb), row.add((b + 1) * bb));
    let hi = if TWO {
        legacy_block::<TY>(p1)
    } else {
        _mm256_setzero_si256()
    };
    let w = join(legacy_block::<TY>(p0), hi);
    let dw = join_ps(f16_ptr(p0), if TWO { f16_ptr(p1) } else { 0.0 });
    let k = a.k;
    for j in 0..T {
        let off = (t0 + j) * k + b * 32;
        let (y, dy) = if TWO {
            (
                _mm512_loadu_si512(a.qs.as_ptr().add(off) as *const _),
                _mm512_loadu_ps(a.dl.as_ptr().add(off / 4)),
            )
        } else {
            (
                _mm512_zextsi256_si512(
                    _mm256_loadu_si256(a.qs.as_ptr().add(off) as *const __m256i),
                ),
                _mm512_zextps256_ps512(_mm256_loadu_ps(a.dl.as_ptr().add(off / 4))),
            )
        };
        let nls = a.nls.as_ptr().add(off / 4);
        let isum = match TY {
            Q4_0 => dot_lanes::<false>(offset_init::<3>(nls, TWO), w, y),
            Q5_0 => dot_lanes::<false>(offset_init::<4>(nls, TWO), w, y),
            Q8_0 | IQ4NL => dot_lanes::<true>(zero, w, y),
            _ => dot_lanes::<false>(zero, w, y),
        };
        acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_mul_ps(dw, dy), acc[j]);
        if TY == Q4_1 || TY == Q5_1 {
            let s = a.s.as_ptr().add((t0 + j) * nb + b);
            mins[j] += f16_ptr(p0.add(2)) * *s
                + if TWO {
                    f16_ptr(p1.add(2)) * *s.add(1)
                } else {
                    0.0
                };
        }
    }
}

/// A legacy-type row · Q8_0/Q8_1 activations of tokens t0..t0+T.
#[inline(always)]
unsafe fn legacy<const TY: u8, const T: usize>(row: &[u8], a: &QActs, t0: usize, out: &mut [f32]) {
    let nb = a.k / 32;
    // Two accumulator sets, alternating, so consecutive block pairs do not wait on each other.
    let mut acc = [_mm512_setzero_ps(); T];
    let mut acc2 = [_mm512_setzero_ps(); T];
    let mut mins = [0f32; T];
    let p = row.as_ptr();
    let bb = legacy_bytes(TY);
    let mut b = 0;
    while b + 3 < nb {
        _mm_prefetch::<_MM_HINT_T0>(p.add((b + 16) * bb) as *const i8);
        legacy_pair::<TY, T, true>(p, b, a, t0, nb, &mut acc, &mut mins);
        legacy_pair::<TY, T, true>(p, b + 2, a, t0, nb, &mut acc2, &mut mins);
        b += 4;
    }
    while b + 1 < nb {
        legacy_pair::<TY, T, true>(p, b, a, t0, nb, &mut acc, &mut mins);
        b += 2;
    }
    if b < nb {
        legacy_pair::<TY, T, false>(p, b, a, t0, nb, &mut acc2, &mut mins);
    }
    for j in 0..T {
        out[j] = _mm512_reduce_add_ps(_mm512_add_ps(acc[j], acc2[j])) + mins[j];
    }
}

/// Q4_K / Q5_K row · Q8_K activations.
#[inline(always)]
unsafe fn k4<const T: usize, const FIVE: bool>(row: &[u8], a: &QActs, t0: usize, out: &mut [f32]) {
    let k = a.k;
    let bb = if FIVE { 176 } else { 144 };
    let nb = k / 256;
    let mut acc = [_mm512_setzero_ps(); T];
    let mut mins = [0f32; T];
    let zero = _mm512_setzero_si512();
    for blk in 0..nb {
        let b = &row[blk * bb..(blk + 1) * bb];
        let (d, dmin) = (f16(b, 0), f16(b, 2));
        let scales = &b[4..16];
        let mut mk = [0i32; 8];
        for c in 0..4 {
            let (s1, m1) = scale_min_k4(2 * c, scales);
            let (s2, m2) = scale_min_k4(2 * c + 1, scales);
            mk[2 * c] = m1 as i32;
            mk[2 * c + 1] = m2 as i32;
            let (lo, hi) = k45_chunk::<FIVE>(b.as_ptr(), c);
            let w = join(lo, hi);
            let ws = join_ps(d * s1 as f32, d * s2 as f32);
            for (j, accj) in acc.iter_mut().enumerate() {
                let t = t0 + j;
                let y =
                    _mm512_loadu_si512(a.qs.as_ptr().add(t * k + blk * 256 + c * 64) as *const _);
                let isum = _mm512_dpbusd_epi32(zero, w, y);
                let dy = _mm512_set1_ps(a.dk[t * nb + blk]);
                *accj = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_mul_ps(ws, dy), *accj);
            }
        }
        for (j, m) in mins.iter_mut().enumerate() {
            let t = t0 + j;
            let bs = &a.bsums[(t * nb + blk) * 16..];
            let mut ms = 0i32;
            for s in 0..8 {
                ms += mk[s] * (bs[2 * s] as i32 + bs[2 * s + 1] as i32);
            }
            *m += dmin * a.dk[t * nb + blk] * ms as f32;
        }
    }
    for j in 0..T {
        out[j] = _mm512_reduce_add_ps(acc[j]) - mins[j];
    }
}

/// Q6_K row · Q8_K activations.
#[inline(always)]
unsafe fn q6_k<const T: usize>(row: &[u8], a: &QActs, t0: usize, out: &mut [f32]) {
    let k = a.k;
    let nb = k / 256;
    let mut acc = [_mm512_setzero_ps(); T];
    // Each of the 4 group scales of a 64-element chunk covers 4 dpbusd lanes.
    let spread = _mm_setr_epi8(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    for blk in 0..nb {
        let b = &row[blk * 210..(blk + 1) * 210];
        let d = _mm512_set1_ps(f16(b, 208));
        for n in 0..2 {
            let q = q6k_half(b.as_ptr(), n);
            for kk in 0..2 {
                let w = join(q[2 * kk], q[2 * kk + 1]);
                let g0 = 192 + n * 8 + kk * 4;
                let sc4 =
                    _mm_cvtsi32_si128(i32::from_le_bytes([b[g0], b[g0 + 1], b[g0 + 2], b[g0 + 3]]));
                let ws = _mm512_mul_ps(
                    d,
                    _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_shuffle_epi8(sc4, spread))),
                );
                for (j, accj) in acc.iter_mut().enumerate() {
                    let t = t0 + j;
                    let off = t * k + blk * 256 + n * 128 + kk * 64;
                    let y = _mm512_loadu_si512(a.qs.as_ptr().add(off) as *const _);
                    let isum = dot_lanes::<false>(
                        offset_init::<5>(a.nls.as_ptr().add(off / 4), true),
                        w,
                        y,
                    );
                    let dy = _mm512_set1_ps(a.dk[t * nb + blk]);
                    *accj = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_mul_ps(ws, dy), *accj);
                }
            }
        }
    }
    for j in 0..T {
        out[j] = _mm512_reduce_add_ps(acc[j]);
    }
}

/// Whether `row_tokens` handles this type (others use the per-dot kernels).
pub fn supports(ty: DType) -> bool {
    matches!(
        ty,
        DType::Q4_0
            | DType::Q4_1
            | DType::Q5_0
            | DType::Q5_1
            | DType::Q8_0
            | DType::IQ4NL
            | DType::Q4K
            | DType::Q5K
            | DType::Q6K
    )
}

/// Four rows of a legacy type against four tokens `t0..t0 + 4`: each weight chunk is unpacked
/// once for the four tokens and each activation chunk loaded once for the four rows.
/// `out[r * 4 + j]`. Needs an even number of blocks per row.
#[inline(always)]
unsafe fn legacy_4x4<const TY: u8>(
    rows: *const u8,
    rb: usize,
    a: &QActs,
    t0: usize,
    out: &mut [f32; 16],
) {
    let (k, bb) = (a.k, legacy_bytes(TY));
    let nb = k / 32;
    let zero = _mm512_setzero_si512();
    let mut acc = [_mm512_setzero_ps(); 16];
    let mut mins = [0f32; 16];
    let mut b = 0;
    while b + 1 < nb {
        let mut w = [zero; 4];
        let mut dw = [_mm512_setzero_ps(); 4];
        for r in 0..4 {
            let p0 = rows.add(r * rb + b * bb);
            let p1 = p0.add(bb);
            w[r] = join(legacy_block::<TY>(p0), legacy_block::<TY>(p1));
            dw[r] = join_ps(f16_ptr(p0), f16_ptr(p1));
        }
        for j in 0..4 {
            let off = (t0 + j) * k + b * 32;
            let y = _mm512_loadu_si512(a.qs.as_ptr().add(off) as *const _);
            let dy = _mm512_loadu_ps(a.dl.as_ptr().add(off / 4));
            let nls = a.nls.as_ptr().add(off / 4);
            let init = match TY {
                Q4_0 => offset_init::<3>(nls, true),
                Q5_0 => offset_init::<4>(nls, true),
                _ => zero,
            };
            for r in 0..4 {
                let isum = if TY == Q8_0 || TY == IQ4NL {
                    dot_lanes::<true>(init, w[r], y)
                } else {
                    dot_lanes::<false>(init, w[r], y)
                };
                acc[r * 4 + j] = _mm512_fmadd_ps(
                    _mm512_cvtepi32_ps(isum),
                    _mm512_mul_ps(dw[r], dy),
                    acc[r * 4 + j],
                );
                if TY == Q4_1 || TY == Q5_1 {
                    let sp = a.s.as_ptr().add((t0 + j) * nb + b);
                    let p0 = rows.add(r * rb + b * bb);
                    mins[r * 4 + j] +=
                        f16_ptr(p0.add(2)) * *sp + f16_ptr(p0.add(bb + 2)) * *sp.add(1);
                }
            }
        }
        b += 2;
    }
    for i in 0..16 {
        out[i] = _mm512_reduce_add_ps(acc[i]) + mins[i];
    }
}

#[inline(always)]
unsafe fn legacy_4x4_ty(
    ty: DType,
    rows: *const u8,
    rb: usize,
    a: &QActs,
    t0: usize,
    out: &mut [f32; 16],
) {
    match ty {
        DType::Q4_0 => legacy_4x4::<Q4_0>(rows, rb, a, t0, out),
        DType::Q4_1 => legacy_4x4::<Q4_1>(rows, rb, a, t0, out),
        DType::Q5_0 => legacy_4x4::<Q5_0>(rows, rb, a, t0, out),
        DType::Q5_1 => legacy_4x4::<Q5_1>(rows, rb, a, t0, out),
        DType::IQ4NL => legacy_4x4::<IQ4NL>(rows, rb, a, t0, out),
        _ => legacy_4x4::<Q8_0>(rows, rb, a, t0, out),
    }
}

const KQ4: u8 = 0;
const KQ5: u8 = 1;
const KQ6: u8 = 2;

const fn kq_bytes(kind: u8) -> usize {
    match kind {
        KQ4 => 144,
        KQ5 => 176,
        _ => 210,
    }
}

/// Chunk `c` (elements c·64 .. c·64+64) of the K-quant block at `b`: unsigned weight quants and
/// the per-lane weight scale.
#[inline(always)]
unsafe fn kq_chunk<const KIND: u8>(b: *const u8, c: usize) -> (__m512i, __m512) {
    if KIND == KQ6 {
        let (n, kk) = (c / 2, c % 2);
        let q = q6k_half(b, n);
        let w = join(q[2 * kk], q[2 * kk + 1]);
        let g0 = 192 + n * 8 + kk * 4;
        let sc4 = _mm_cvtsi32_si128(i32::from_le_bytes([
            *b.add(g0),
            *b.add(g0 + 1),
            *b.add(g0 + 2),
            *b.add(g0 + 3),
        ]));
        let spread = _mm_setr_epi8(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
        let ws = _mm512_mul_ps(
            _mm512_set1_ps(f16_ptr(b.add(208))),
            _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_shuffle_epi8(sc4, spread))),
        );
        return (w, ws);
    }
    let scales = std::slice::from_raw_parts(b.add(4), 12);
    let (lo, hi) = if KIND == KQ5 {
        k45_chunk::<true>(b, c)
    } else {
        k45_chunk::<false>(b, c)
    };
    let d = f16_ptr(b);
    let (s1, _) = scale_min_k4(2 * c, scales);
    let (s2, _) = scale_min_k4(2 * c + 1, scales);
    (join(lo, hi), join_ps(d * s1 as f32, d * s2 as f32))
}

/// Four K-quant rows against four tokens (see `legacy_4x4`).
#[inline(always)]
unsafe fn kq_4x4<const KIND: u8>(
    rows: *const u8,
    rb: usize,
    a: &QActs,
    t0: usize,
    out: &mut [f32; 16],
) {
    let k = a.k;
    let nb = k / 256;
    let bb = kq_bytes(KIND);
    let zero = _mm512_setzero_si512();
    let mut acc = [_mm512_setzero_ps(); 16];
    let mut mins = [0f32; 16];
    for blk in 0..nb {
        for c in 0..4 {
            let mut w = [zero; 4];
            let mut ws = [_mm512_setzero_ps(); 4];
            for r in 0..4 {
                (w[r], ws[r]) = kq_chunk::<KIND>(rows.add(r * rb + blk * bb), c);
            }
            for j in 0..4 {
                let t = t0 + j;
                let off = t * k + blk * 256 + c * 64;
                let y = _mm512_loadu_si512(a.qs.as_ptr().add(off) as *const _);
                let init = if KIND == KQ6 {
                    offset_init::<5>(a.nls.as_ptr().add(off / 4), true)
                } else {
                    zero
                };
                let dy = _mm512_set1_ps(*a.dk.get_unchecked(t * nb + blk));
                for r in 0..4 {
                    let isum = _mm512_dpbusd_epi32(init, w[r], y);
                    acc[r * 4 + j] = _mm512_fmadd_ps(
                        _mm512_cvtepi32_ps(isum),
                        _mm512_mul_ps(ws[r], dy),
                        acc[r * 4 + j],
                    );
                }
            }
        }
        if KIND != KQ6 {
            for r in 0..4 {
                let b = rows.add(r * rb + blk * bb);
                let scales = std::slice::from_raw_parts(b.add(4), 12);
                let dmin = f16_ptr(b.add(2));
                let mut mk = [0i32; 8];
                for (s, m) in mk.iter_mut().enumerate() {
                    *m = scale_min_k4(s, scales).1 as i32;
                }
                for j in 0..4 {
                    let t = t0 + j;
                    let bs = &a.bsums[(t * nb + blk) * 16..];
                    let ms: i32 = (0..8)
                        .map(|s| mk[s] * (bs[2 * s] as i32 + bs[2 * s + 1] as i32))
                        .sum();
                    mins[r * 4 + j] += dmin * a.dk[t * nb + blk] * ms as f32;
                }
            }
        }
    }
    for i in 0..16 {
        out[i] = _mm512_reduce_add_ps(acc[i]) - mins[i];
    }
}

#[inline(always)]
unsafe fn tile_4x4(
    ty: DType,
    rows: *const u8,
    rb: usize,
    a: &QActs,
    t0: usize,
    out: &mut [f32; 16],
) {
    match ty {
        DType::Q4K => kq_4x4::<KQ4>(rows, rb, a, t0, out),
        DType::Q5K => kq_4x4::<KQ5>(rows, rb, a, t0, out),
        DType::Q6K => kq_4x4::<KQ6>(rows, rb, a, t0, out),
        _ => legacy_4x4_ty(ty, rows, rb, a, t0, out),
    }
}

/// One row against tokens `t0..t0 + T`, into `out[0..T]`.
#[inline(always)]
unsafe fn one_row<const T: usize>(ty: DType, row: &[u8], a: &QActs, t0: usize, out: &mut [f32]) {
    match ty {
        DType::Q4K => k4::<T, false>(row, a, t0, out),
        DType::Q5K => k4::<T, true>(row, a, t0, out),
        DType::Q6K => q6_k::<T>(row, a, t0, out),
        DType::Q4_0 => legacy::<Q4_0, T>(row, a, t0, out),
        DType::Q4_1 => legacy::<Q4_1, T>(row, a, t0, out),
        DType::Q5_0 => legacy::<Q5_0, T>(row, a, t0, out),
        DType::Q5_1 => legacy::<Q5_1, T>(row, a, t0, out),
        DType::IQ4NL => legacy::<IQ4NL, T>(row, a, t0, out),
        _ => legacy::<Q8_0, T>(row, a, t0, out),
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,fma,f16c")]
unsafe fn rows_tokens_impl(
    ty: DType,
    rows: &[u8],
    rb: usize,
    a: &QActs,
    n: usize,
    out: &mut [f32],
) {
    let n_rows = rows.len() / rb;
    let mut r_done = 0;
    let legacy = matches!(
        ty,
        DType::Q4_0 | DType::Q4_1 | DType::Q5_0 | DType::Q5_1 | DType::Q8_0 | DType::IQ4NL
    );
    // Legacy tiles take blocks in pairs; K-quant tiles any number of 256-blocks.
    if (!legacy || (a.k / 32).is_multiple_of(2)) && n >= 4 {
        // Batches: 4 rows × 4 tokens at a time; leftover tokens of these rows below.
        let mut t16 = [0f32; 16];
        while r_done + 4 <= n_rows {
            let mut t0 = 0;
            while t0 + 4 <= n {
                tile_4x4(ty, rows.as_ptr().add(r_done * rb), rb, a, t0, &mut t16);
                for r in 0..4 {
                    out[(r_done + r) * n + t0..(r_done + r) * n + t0 + 4]
                        .copy_from_slice(&t16[r * 4..r * 4 + 4]);
                }
                t0 += 4;
            }
            for r in r_done..r_done + 4 {
                for t in t0..n {
                    one_row::<1>(
                        ty,
                        &rows[r * rb..(r + 1) * rb],
                        a,
                        t,
                        &mut out[r * n + t..r * n + t + 1],
                    );
                }
            }
            r_done += 4;
        }
    }
    let mut tmp = [0f32; 8];
    for (r, row) in rows.chunks_exact(rb).enumerate().skip(r_done) {
        let dst = &mut out[r * n..(r + 1) * n];
        let mut t0 = 0;
        while t0 + 8 <= n {
            one_row::<8>(ty, row, a, t0, &mut tmp);
            dst[t0..t0 + 8].copy_from_slice(&tmp);
            t0 += 8;
        }
        for t in t0..n {
            one_row::<1>(ty, row, a, t, &mut dst[t..t + 1]);
        }
    }
}

/// Rows (`rows.len() / rb` of them) against all `n` tokens of `a`: `out[r * n + t]`.
pub fn rows_tokens(ty: DType, rows: &[u8], rb: usize, a: &QActs, n: usize, out: &mut [f32]) {
    assert!(
        supports(ty)
            && rows.len().is_multiple_of(rb)
            && out.len() == rows.len() / rb * n
            && a.qs.len() >= n * a.k
    );
    // SAFETY: installed only when the AVX-512 features were detected; `rows` holds whole rows
    // of `a.k` elements and `a` holds `n` tokens (checked above), which is all the kernels read.
    unsafe { rows_tokens_impl(ty, rows, rb, a, n, out) }
}
