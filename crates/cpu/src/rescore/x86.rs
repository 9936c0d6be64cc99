//! `rescore.rs`'s loops with AVX2, FMA and F16C, and AVX-512: the candidates' rows dequantized
//! and dotted in f64, the blocks' maxima and the gathering above the floor.

use super::BATCH;
use std::arch::x86_64::*;

/// Q8_0 blocks (f16 scale, 32 int8) → f32: `q as f32 * d` per value, as the oracle.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dequantize_q8_0(raw: &[u8], out: &mut [f32]) {
    for (b, o) in raw.chunks_exact(34).zip(out.chunks_exact_mut(32)) {
        let h = u16::from_le_bytes([b[0], b[1]]);
        let d = _mm256_cvtph_ps(_mm_set1_epi16(h as i16));
        for j in 0..4 {
            let q = _mm_loadl_epi64(b.as_ptr().add(2 + 8 * j) as *const __m128i);
            let v = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q));
            _mm256_storeu_ps(o.as_mut_ptr().add(8 * j), _mm256_mul_ps(v, d));
        }
    }
}

/// Q6_K blocks (128 low nibbles, 64 bytes of high bit pairs, 16 signed scales, f16 d) →
/// f32: `(d · scale) · q` per value, as the oracle (`suanli_core::quant`), 8 values a step.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dequantize_q6_k(raw: &[u8], out: &mut [f32]) {
    let (m4, m3, c32) = (
        _mm256_set1_epi32(0xF),
        _mm256_set1_epi32(3),
        _mm256_set1_epi32(32),
    );
    let bytes = |p: *const u8| _mm256_cvtepu8_epi32(_mm_loadl_epi64(p as *const __m128i));
    for (b, y) in raw.chunks_exact(210).zip(out.chunks_exact_mut(256)) {
        let d = half::f16::from_le_bytes([b[208], b[209]]).to_f32();
        for n in 0..2 {
            let (ql, qh, sc) = (
                b.as_ptr().add(64 * n),
                b.as_ptr().add(128 + 32 * n),
                &b[192 + 8 * n..],
            );
            let y = y.as_mut_ptr().add(128 * n);
            for c in 0..4 {
                let (l, is) = (8 * c, c / 2);
                let (lo, hi, h) = (bytes(ql.add(l)), bytes(ql.add(l + 32)), bytes(qh.add(l)));
                let q = [
                    _mm256_or_si256(
                        _mm256_and_si256(lo, m4),
                        _mm256_slli_epi32::<4>(_mm256_and_si256(h, m3)),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(hi, m4),
                        _mm256_slli_epi32::<4>(_mm256_and_si256(_mm256_srli_epi32::<2>(h), m3)),
                    ),
                    _mm256_or_si256(
                        _mm256_srli_epi32::<4>(lo),
                        _mm256_slli_epi32::<4>(_mm256_and_si256(_mm256_srli_epi32::<4>(h), m3)),
                    ),
                    _mm256_or_si256(
                        _mm256_srli_epi32::<4>(hi),
                        _mm256_slli_epi32::<4>(_mm256_srli_epi32::<6>(h)),
                    ),
                ];
                for (j, q) in q.into_iter().enumerate() {
                    let s = _mm256_set1_ps(d * (sc[is + 2 * j] as i8) as f32);
                    let v = _mm256_cvtepi32_ps(_mm256_sub_epi32(q, c32));
                    _mm256_storeu_ps(y.add(l + 32 * j), _mm256_mul_ps(s, v));
                }
            }
        }
    }
}

/// `super::dot_f64`, its 8 interleaved sums as two vectors of 4 (f32 × f32 is exact in
/// f64, so the fused multiply-add rounds as the scalar add does).
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn dot_f64(a: &[f32], b: &[f32]) -> f64 {
    let n = a.len().min(b.len());
    let (mut lo, mut hi) = (_mm256_setzero_pd(), _mm256_setzero_pd());
    let mut i = 0;
    while i + 8 <= n {
        let (x, y) = (a.as_ptr().add(i), b.as_ptr().add(i));
        let xa = _mm256_cvtps_pd(_mm_loadu_ps(x));
        let ya = _mm256_cvtps_pd(_mm_loadu_ps(y));
        lo = _mm256_fmadd_pd(xa, ya, lo);
        let xb = _mm256_cvtps_pd(_mm_loadu_ps(x.add(4)));
        let yb = _mm256_cvtps_pd(_mm_loadu_ps(y.add(4)));
        hi = _mm256_fmadd_pd(xb, yb, hi);
        i += 8;
    }
    let mut acc = [0f64; 8];
    _mm256_storeu_pd(acc.as_mut_ptr(), lo);
    _mm256_storeu_pd(acc.as_mut_ptr().add(4), hi);
    super::finish(acc, a, b, i)
}

/// `dot_f64` of each of `ws` (`BATCH` rows of one length) with `b`, the rows' sums
/// advancing together.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn dot_f64_rows(ws: &[&[f32]], b: &[f32], out: &mut [f64; BATCH]) {
    let n = ws[0].len().min(b.len());
    let mut lo = [_mm256_setzero_pd(); BATCH];
    let mut hi = [_mm256_setzero_pd(); BATCH];
    let mut i = 0;
    while i + 8 <= n {
        let y = b.as_ptr().add(i);
        let (ya, yb) = (
            _mm256_cvtps_pd(_mm_loadu_ps(y)),
            _mm256_cvtps_pd(_mm_loadu_ps(y.add(4))),
        );
        for r in 0..BATCH {
            let x = ws[r].as_ptr().add(i);
            lo[r] = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm_loadu_ps(x)), ya, lo[r]);
            hi[r] = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm_loadu_ps(x.add(4))), yb, hi[r]);
        }
        i += 8;
    }
    for r in 0..BATCH {
        let mut acc = [0f64; 8];
        _mm256_storeu_pd(acc.as_mut_ptr(), lo[r]);
        _mm256_storeu_pd(acc.as_mut_ptr().add(4), hi[r]);
        out[r] = super::finish(acc, ws[r], b, i);
    }
}

/// `super::block_maxima`: each whole block's 16 lanes kept by `vmaxps` (which keeps its
/// second operand, the lane so far, when the value is NaN), then reduced; every value's
/// exponent tested on the way (all ones: NaN or infinite), which costs nothing in a loop
/// that waits on memory.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn block_maxima(row: &[f32]) -> (Vec<f32>, bool) {
    let blocks = row.chunks_exact(super::SPAN);
    let rest = blocks.remainder();
    let exp = _mm512_set1_epi32(0x7f80_0000);
    let mut bad: __mmask16 = 0;
    let mut m: Vec<f32> = blocks
        .map(|b| {
            let mut l = _mm512_set1_ps(f32::NEG_INFINITY);
            for part in b.chunks_exact(16) {
                let v = _mm512_loadu_ps(part.as_ptr());
                let e = _mm512_and_si512(_mm512_castps_si512(v), exp);
                bad |= _mm512_cmpeq_epi32_mask(e, exp);
                l = _mm512_max_ps(v, l);
            }
            _mm512_reduce_max_ps(l)
        })
        .collect();
    let mut finite = bad == 0;
    if !rest.is_empty() {
        m.push(suanli_core::scan::block_max(rest));
        finite &= suanli_core::scan::first_nonfinite(rest).is_none();
    }
    (m, finite)
}

/// The (key, index) of each of `block`'s `SPAN` values whose key (`super::key`) is at least
/// `floor`, in index order; `base` is the block's first index.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn gather(block: &[f32], base: u32, floor: u32, cand: &mut Vec<(u32, u32)>) {
    let f = _mm512_set1_epi32(floor as i32);
    let top = _mm512_set1_epi32(i32::MIN);
    for (p, part) in block.chunks_exact(16).enumerate() {
        let b = _mm512_castps_si512(_mm512_loadu_ps(part.as_ptr()));
        let k = _mm512_xor_si512(
            _mm512_xor_si512(b, _mm512_srli_epi32::<1>(_mm512_srai_epi32::<31>(b))),
            top,
        );
        let mut hits = _mm512_cmpge_epu32_mask(k, f);
        if hits == 0 {
            continue;
        }
        let mut keys = [0u32; 16];
        _mm512_storeu_si512(keys.as_mut_ptr() as *mut _, k);
        while hits != 0 {
            let j = hits.trailing_zeros() as usize;
            cand.push((keys[j], base + (16 * p + j) as u32));
            hits &= hits - 1;
        }
    }
}

/// `dot_f64_rows` with each row's 8 sums in one AVX-512 register.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn dot_f64_rows512(ws: &[&[f32]], b: &[f32], out: &mut [f64; BATCH]) {
    let n = ws[0].len().min(b.len());
    let mut acc = [_mm512_setzero_pd(); BATCH];
    let mut i = 0;
    while i + 8 <= n {
        let y = _mm512_cvtps_pd(_mm256_loadu_ps(b.as_ptr().add(i)));
        for r in 0..BATCH {
            let x = _mm512_cvtps_pd(_mm256_loadu_ps(ws[r].as_ptr().add(i)));
            acc[r] = _mm512_fmadd_pd(x, y, acc[r]);
        }
        i += 8;
    }
    for r in 0..BATCH {
        let mut a = [0f64; 8];
        _mm512_storeu_pd(a.as_mut_ptr(), acc[r]);
        out[r] = super::finish(a, ws[r], b, i);
    }
}
