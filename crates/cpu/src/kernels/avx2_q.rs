//! AVX2 integer dot products of quantized weight rows with Q8 activations. Each must equal the
//! scalar oracle in `suanli_core::quant::dot` (integer sums are exact; only the order of the
//! f32 accumulation of block results differs).

#[cfg(target_arch = "x86_64")]
use super::x86::{k45_chunk, nibbles_16, q6k_half};
use std::arch::x86_64::*;
use suanli_core::quant::q8::{BlockQ8, BlockQ8K};
use suanli_core::quant::scale_min_k4;

#[inline(always)]
unsafe fn hsum_ps(v: __m256) -> f32 {
    let lo = _mm256_castps256_ps128(v);
    let hi = _mm256_extractf128_ps(v, 1);
    let s = _mm_add_ps(lo, hi);
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

#[inline(always)]
unsafe fn hsum_epi32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
    _mm_cvtsi128_si32(s)
}

/// Σ x·y of signed bytes, as 8 i32 lanes (|x|, |y| ≤ 127).
#[inline(always)]
unsafe fn dot_i8(x: __m256i, y: __m256i) -> __m256i {
    let ax = _mm256_sign_epi8(x, x);
    let sy = _mm256_sign_epi8(y, x);
    _mm256_madd_epi16(_mm256_maddubs_epi16(ax, sy), _mm256_set1_epi16(1))
}

/// Σ x·y with unsigned x ≤ 63 and signed y, as 8 i32 lanes.
#[inline(always)]
unsafe fn dot_u8(x: __m256i, y: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(x, y), _mm256_set1_epi16(1))
}

/// 32 bits → 32 bytes, 0xFF where the bit is set (byte i = bit i).
#[inline(always)]
unsafe fn bytes_from_bits(bits: u32) -> __m256i {
    let shuf = _mm256_set_epi64x(
        0x0303030303030303,
        0x0202020202020202,
        0x0101010101010101,
        0,
    );
    let v = _mm256_shuffle_epi8(_mm256_set1_epi32(bits as i32), shuf);
    let mask = _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe_u64 as i64);
    _mm256_cmpeq_epi8(_mm256_or_si256(v, mask), _mm256_set1_epi64x(-1))
}

#[inline(always)]
unsafe fn load_q(y: &[i8]) -> __m256i {
    _mm256_loadu_si256(y.as_ptr() as *const __m256i)
}

#[inline(always)]
fn f16(b: &[u8], i: usize) -> f32 {
    half::f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

#[target_feature(enable = "avx2,fma")]
pub unsafe fn q4_0(row: &[u8], x: &[BlockQ8]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (b, y) in row.chunks_exact(18).zip(x) {
        let q = _mm256_sub_epi8(nibbles_16(b.as_ptr().add(2)), _mm256_set1_epi8(8));
        let s = _mm256_cvtepi32_ps(dot_i8(q, load_q(&y.qs)));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(f16(b, 0) * y.d), s, acc);
    }
    hsum_ps(acc)
}

#[target_feature(enable = "avx2,fma")]
pub unsafe fn q4_1(row: &[u8], x: &[BlockQ8]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let mut mins = 0f32;
    for (b, y) in row.chunks_exact(20).zip(x) {
        let q = nibbles_16(b.as_ptr().add(4));
        let s = _mm256_cvtepi32_ps(dot_u8(q, load_q(&y.qs)));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(f16(b, 0) * y.d), s, acc);
        mins += f16(b, 2) * y.s;
    }
    hsum_ps(acc) + mins
}

#[target_feature(enable = "avx2,fma")]
pub unsafe fn q5_0(row: &[u8], x: &[BlockQ8]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (b, y) in row.chunks_exact(22).zip(x) {
        let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
        let hi = _mm256_and_si256(bytes_from_bits(qh), _mm256_set1_epi8(0x10));
        let q = _mm256_sub_epi8(
            _mm256_or_si256(nibbles_16(b.as_ptr().add(6)), hi),
            _mm256_set1_epi8(16),
        );
        let s = _mm256_cvtepi32_ps(dot_i8(q, load_q(&y.qs)));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(f16(b, 0) * y.d), s, acc);
    }
    hsum_ps(acc)
}

#[target_feature(enable = "avx2,fma")]
pub unsafe fn q5_1(row: &[u8], x: &[BlockQ8]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let mut mins = 0f32;
    for (b, y) in row.chunks_exact(24).zip(x) {
        let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        let hi = _mm256_and_si256(bytes_from_bits(qh), _mm256_set1_epi8(0x10));
        let q = _mm256_or_si256(nibbles_16(b.as_ptr().add(8)), hi);
        let s = _mm256_cvtepi32_ps(dot_u8(q, load_q(&y.qs)));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(f16(b, 0) * y.d), s, acc);
        mins += f16(b, 2) * y.s;
    }
    hsum_ps(acc) + mins
}

#[target_feature(enable = "avx2,fma")]
pub unsafe fn q8_0(row: &[u8], x: &[BlockQ8]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (b, y) in row.chunks_exact(34).zip(x) {
        let q = _mm256_loadu_si256(b.as_ptr().add(2) as *const __m256i);
        let s = _mm256_cvtepi32_ps(dot_i8(q, load_q(&y.qs)));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(f16(b, 0) * y.d), s, acc);
    }
    hsum_ps(acc)
}

/// Q4_K and Q5_K: 8 sub-blocks of 32 with 6-bit scales and mins.
#[target_feature(enable = "avx2,fma")]
unsafe fn k4_like<const FIVE: bool>(row: &[u8], x: &[BlockQ8K]) -> f32 {
    let bb = if FIVE { 176 } else { 144 };
    let mut sum = 0f32;
    for (b, y) in row.chunks_exact(bb).zip(x) {
        let scales = &b[4..16];
        let mut acc = _mm256_setzero_si256();
        let mut msum = 0i32;
        for c in 0..4 {
            let (s1, m1) = scale_min_k4(2 * c, scales);
            let (s2, m2) = scale_min_k4(2 * c + 1, scales);
            msum += m1 as i32 * (y.bsums[4 * c] as i32 + y.bsums[4 * c + 1] as i32);
            msum += m2 as i32 * (y.bsums[4 * c + 2] as i32 + y.bsums[4 * c + 3] as i32);
            let (lo, hi) = k45_chunk::<FIVE>(b.as_ptr(), c);
            let p1 = _mm256_maddubs_epi16(lo, load_q(&y.qs[c * 64..]));
            let p2 = _mm256_maddubs_epi16(hi, load_q(&y.qs[c * 64 + 32..]));
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p1, _mm256_set1_epi16(s1 as i16)));
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p2, _mm256_set1_epi16(s2 as i16)));
        }
        let isum = hsum_epi32(acc);
        sum += f16(b, 0) * y.d * isum as f32 - f16(b, 2) * y.d * msum as f32;
    }
    sum
}

#[target_feature(enable = "avx2,fma")]
pub unsafe fn q4_k(row: &[u8], x: &[BlockQ8K]) -> f32 {
    k4_like::<false>(row, x)
}

#[target_feature(enable = "avx2,fma")]
pub unsafe fn q5_k(row: &[u8], x: &[BlockQ8K]) -> f32 {
    k4_like::<true>(row, x)
}

#[target_feature(enable = "avx2,fma")]
pub unsafe fn q6_k(row: &[u8], x: &[BlockQ8K]) -> f32 {
    let mut sum = 0f32;
    for (b, y) in row.chunks_exact(210).zip(x) {
        let sc = &b[192..208];
        let mut acc = _mm256_setzero_si256();
        let mut msum = 0i32;
        for (&s, &b) in sc.iter().zip(&y.bsums) {
            msum += (s as i8) as i32 * b as i32;
        }
        for n in 0..2 {
            let q = q6k_half(b.as_ptr(), n);
            for (k, qk) in q.iter().enumerate() {
                let p = _mm256_maddubs_epi16(*qk, load_q(&y.qs[n * 128 + k * 32..]));
                let g = n * 8 + 2 * k;
                let s = _mm256_set_m128i(
                    _mm_set1_epi16((sc[g + 1] as i8) as i16),
                    _mm_set1_epi16((sc[g] as i8) as i16),
                );
                acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p, s));
            }
        }
        let isum = hsum_epi32(acc) - 32 * msum;
        sum += f16(b, 208) * y.d * isum as f32;
    }
    sum
}
