//! AVX-512 VNNI kernels: one quantized weight row against up to `T` tokens at once, so that each
//! weight block is unpacked once and reused across the tokens of a prefill tile.
//!
//! Activations come pre-quantized (`QActs`): unsigned bytes `q + 128` so that `vpdpbusd` (u8 × i8)
//! takes them directly; the weight side is signed, and the `128 · Σw` excess is removed with a
//! correction computed once per weight chunk. Integer sums are exact; each 32-element block's
//! sum is scaled in f32, so results equal the scalar oracle up to f32 rounding.

use super::acts::QActs;
use std::arch::x86_64::*;
use suanli_core::quant::scale_min_k4;
use suanli_core::DType;

/// f16 → f32 with the F16C instruction (the `half` crate's call does not inline here).
#[inline(always)]
unsafe fn f16(b: &[u8], i: usize) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(u16::from_le_bytes([b[i], b[i + 1]]) as i32)))
}

#[inline(always)]
unsafe fn join(lo: __m256i, hi: __m256i) -> __m512i {
    _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1)
}

#[inline(always)]
unsafe fn join_ps(lo: f32, hi: f32) -> __m512 {
    _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_set1_ps(lo)), _mm256_set1_ps(hi), 1)
}

/// 16 packed bytes → 32 nibbles (low nibbles first).
#[inline(always)]
unsafe fn nibbles_16(p: *const u8) -> __m256i {
    let t = _mm_loadu_si128(p as *const __m128i);
    _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(t, 4), t), _mm256_set1_epi8(0x0F))
}

/// 32 bits → 32 bytes, 0x10 where the bit is set.
#[inline(always)]
unsafe fn bit4_from_bits(bits: u32) -> __m256i {
    let m = _mm256_movm_epi8(bits);
    _mm256_and_si256(m, _mm256_set1_epi8(0x10))
}

/// Signed weights of one 32-element legacy block.
#[inline(always)]
unsafe fn legacy_block(ty: DType, b: &[u8]) -> __m256i {
    match ty {
        DType::Q4_0 => _mm256_sub_epi8(nibbles_16(b.as_ptr().add(2)), _mm256_set1_epi8(8)),
        DType::Q4_1 => nibbles_16(b.as_ptr().add(4)),
        DType::Q5_0 => {
            let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
            _mm256_sub_epi8(_mm256_or_si256(nibbles_16(b.as_ptr().add(6)), bit4_from_bits(qh)), _mm256_set1_epi8(16))
        }
        DType::Q5_1 => {
            let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
            _mm256_or_si256(nibbles_16(b.as_ptr().add(8)), bit4_from_bits(qh))
        }
        _ => _mm256_loadu_si256(b.as_ptr().add(2) as *const __m256i), // Q8_0
    }
}

/// Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 row · Q8_0/Q8_1 activations of tokens t0..t0+T.
#[inline(always)]
unsafe fn legacy<const T: usize>(ty: DType, row: &[u8], a: &QActs, t0: usize, out: &mut [f32]) {
    let (k, bb) = (a.k, ty.block_bytes());
    let nb = k / 32;
    let has_min = matches!(ty, DType::Q4_1 | DType::Q5_1);
    let mut acc = [_mm512_setzero_ps(); T];
    let mut mins = [0f32; T];
    let x80 = _mm512_set1_epi8(-128);
    let zero = _mm512_setzero_si512();
    let mut b = 0;
    while b < nb {
        let two = b + 1 < nb;
        let (blk0, blk1) = (&row[b * bb..], if two { &row[(b + 1) * bb..] } else { &row[b * bb..] });
        let hi = if two { legacy_block(ty, blk1) } else { _mm256_setzero_si256() };
        let w = join(legacy_block(ty, blk0), hi);
        let corr = _mm512_dpbusd_epi32(zero, x80, w);
        let dw = join_ps(f16(blk0, 0), if two { f16(blk1, 0) } else { 0.0 });
        for (j, accj) in acc.iter_mut().enumerate() {
            let t = t0 + j;
            let off = t * k + b * 32;
            let y = if two {
                _mm512_loadu_si512(a.qu.as_ptr().add(off) as *const _)
            } else {
                _mm512_zextsi256_si512(_mm256_loadu_si256(a.qu.as_ptr().add(off) as *const __m256i))
            };
            let isum = _mm512_sub_epi32(_mm512_dpbusd_epi32(zero, y, w), corr);
            let dy = if two {
                _mm512_loadu_ps(a.dl.as_ptr().add(off / 4))
            } else {
                _mm512_zextps256_ps512(_mm256_loadu_ps(a.dl.as_ptr().add(off / 4)))
            };
            *accj = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_mul_ps(dw, dy), *accj);
            if has_min {
                let s = &a.s[t * nb + b..];
                mins[j] += f16(blk0, 2) * s[0] + if two { f16(blk1, 2) * s[1] } else { 0.0 };
            }
        }
        b += 2;
    }
    for j in 0..T {
        out[j] = _mm512_reduce_add_ps(acc[j]) + mins[j];
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
    let x80 = _mm512_set1_epi8(-128);
    let zero = _mm512_setzero_si512();
    let m4 = _mm256_set1_epi8(0x0F);
    for blk in 0..nb {
        let b = &row[blk * bb..(blk + 1) * bb];
        let (d, dmin) = (f16(b, 0), f16(b, 2));
        let scales = &b[4..16];
        let qs = if FIVE { &b[48..176] } else { &b[16..144] };
        let qh = if FIVE { _mm256_loadu_si256(b.as_ptr().add(16) as *const __m256i) } else { _mm256_setzero_si256() };
        let mut mk = [0i32; 8];
        for c in 0..4 {
            let (s1, m1) = scale_min_k4(2 * c, scales);
            let (s2, m2) = scale_min_k4(2 * c + 1, scales);
            mk[2 * c] = m1 as i32;
            mk[2 * c + 1] = m2 as i32;
            let q = _mm256_loadu_si256(qs.as_ptr().add(c * 32) as *const __m256i);
            let mut lo = _mm256_and_si256(q, m4);
            let mut hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
            if FIVE {
                let one = _mm256_set1_epi8(1);
                let h1 = _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * c as i32)), one);
                let h2 = _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * c as i32 + 1)), one);
                lo = _mm256_or_si256(lo, _mm256_slli_epi16(h1, 4));
                hi = _mm256_or_si256(hi, _mm256_slli_epi16(h2, 4));
            }
            let w = join(lo, hi);
            let corr = _mm512_dpbusd_epi32(zero, x80, w);
            let ws = join_ps(d * s1 as f32, d * s2 as f32);
            for (j, accj) in acc.iter_mut().enumerate() {
                let t = t0 + j;
                let y = _mm512_loadu_si512(a.qu.as_ptr().add(t * k + blk * 256 + c * 64) as *const _);
                let isum = _mm512_sub_epi32(_mm512_dpbusd_epi32(zero, y, w), corr);
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
    let x80 = _mm512_set1_epi8(-128);
    let zero = _mm512_setzero_si512();
    let (m4, m3, c32) = (_mm256_set1_epi8(0x0F), _mm256_set1_epi8(3), _mm256_set1_epi8(32));
    // Each of the 4 group scales of a 64-element chunk covers 4 dpbusd lanes.
    let spread = _mm_setr_epi8(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    for blk in 0..nb {
        let b = &row[blk * 210..(blk + 1) * 210];
        let d = _mm512_set1_ps(f16(b, 208));
        for n in 0..2 {
            let ql0 = _mm256_loadu_si256(b.as_ptr().add(n * 64) as *const __m256i);
            let ql1 = _mm256_loadu_si256(b.as_ptr().add(n * 64 + 32) as *const __m256i);
            let qh = _mm256_loadu_si256(b.as_ptr().add(128 + n * 32) as *const __m256i);
            let q = [
                _mm256_or_si256(_mm256_and_si256(ql0, m4), _mm256_slli_epi16(_mm256_and_si256(qh, m3), 4)),
                _mm256_or_si256(_mm256_and_si256(ql1, m4), _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), m3), 4)),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4), _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), m3), 4)),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4), _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), m3), 4)),
            ];
            for kk in 0..2 {
                let w = join(_mm256_sub_epi8(q[2 * kk], c32), _mm256_sub_epi8(q[2 * kk + 1], c32));
                let corr = _mm512_dpbusd_epi32(zero, x80, w);
                let g0 = 192 + n * 8 + kk * 4;
                let sc4 = _mm_cvtsi32_si128(i32::from_le_bytes([b[g0], b[g0 + 1], b[g0 + 2], b[g0 + 3]]));
                let ws = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_shuffle_epi8(sc4, spread))));
                for (j, accj) in acc.iter_mut().enumerate() {
                    let t = t0 + j;
                    let y = _mm512_loadu_si512(a.qu.as_ptr().add(t * k + blk * 256 + n * 128 + kk * 64) as *const _);
                    let isum = _mm512_sub_epi32(_mm512_dpbusd_epi32(zero, y, w), corr);
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
    matches!(ty, DType::Q4_0 | DType::Q4_1 | DType::Q5_0 | DType::Q5_1 | DType::Q8_0 | DType::Q4K | DType::Q5K | DType::Q6K)
}

/// One row against tokens `t0..t0 + T`, into `out[0..T]`.
#[inline(always)]
unsafe fn one_row<const T: usize>(ty: DType, row: &[u8], a: &QActs, t0: usize, out: &mut [f32]) {
    match ty {
        DType::Q4K => k4::<T, false>(row, a, t0, out),
        DType::Q5K => k4::<T, true>(row, a, t0, out),
        DType::Q6K => q6_k::<T>(row, a, t0, out),
        _ => legacy::<T>(ty, row, a, t0, out),
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,fma,f16c")]
unsafe fn rows_tokens_impl(ty: DType, rows: &[u8], rb: usize, a: &QActs, n: usize, out: &mut [f32]) {
    let mut tmp = [0f32; 8];
    for (r, row) in rows.chunks_exact(rb).enumerate() {
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
    assert!(supports(ty) && rows.len() % rb == 0 && out.len() == rows.len() / rb * n && a.qu.len() >= n * a.k);
    // SAFETY: installed only when the AVX-512 features were detected; `rows` holds whole rows
    // of `a.k` elements and `a` holds `n` tokens (checked above), which is all the kernels read.
    unsafe { rows_tokens_impl(ty, rows, rb, a, n, out) }
}
