//! Unpacking helpers shared by the AVX2 and AVX-512 kernels (256-bit, inlined into callers that
//! enable AVX2).

use std::arch::x86_64::*;

/// 16 packed bytes → 32 nibbles: low nibbles in the low lane, high nibbles in the high lane.
#[inline(always)]
pub unsafe fn nibbles_16(p: *const u8) -> __m256i {
    let t = _mm_loadu_si128(p as *const __m128i);
    let v = _mm256_set_m128i(_mm_srli_epi16(t, 4), t);
    _mm256_and_si256(v, _mm256_set1_epi8(0x0F))
}

/// The unsigned 6-bit quants (0..63) of one half (128 elements) of a Q6_K block, as four runs of
/// 32: elements k·32 .. k·32+32 for k = 0..4. `p` points at the block.
#[inline(always)]
pub unsafe fn q6k_half(p: *const u8, half: usize) -> [__m256i; 4] {
    let (m4, m3) = (_mm256_set1_epi8(0x0F), _mm256_set1_epi8(3));
    let ql0 = _mm256_loadu_si256(p.add(half * 64) as *const __m256i);
    let ql1 = _mm256_loadu_si256(p.add(half * 64 + 32) as *const __m256i);
    let qh = _mm256_loadu_si256(p.add(128 + half * 32) as *const __m256i);
    let high = |shift: i32| {
        _mm256_slli_epi16(
            _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(shift)), m3),
            4,
        )
    };
    [
        _mm256_or_si256(_mm256_and_si256(ql0, m4), high(0)),
        _mm256_or_si256(_mm256_and_si256(ql1, m4), high(2)),
        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4), high(4)),
        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4), high(6)),
    ]
}

/// Chunk `c` (0..4) of a Q4_K/Q5_K block: the unsigned quants of sub-blocks 2c (`.0`) and
/// 2c + 1 (`.1`), 32 each. `block` points at the block; with `FIVE` (Q5_K) the fifth bit comes
/// from the block's `qh`.
#[inline(always)]
pub unsafe fn k45_chunk<const FIVE: bool>(block: *const u8, c: usize) -> (__m256i, __m256i) {
    let m4 = _mm256_set1_epi8(0x0F);
    let qs = if FIVE { block.add(48) } else { block.add(16) };
    let q = _mm256_loadu_si256(qs.add(c * 32) as *const __m256i);
    let mut lo = _mm256_and_si256(q, m4);
    let mut hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
    if FIVE {
        let qh = _mm256_loadu_si256(block.add(16) as *const __m256i);
        let one = _mm256_set1_epi8(1);
        let bit = |shift: i32| {
            _mm256_slli_epi16(
                _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(shift)), one),
                4,
            )
        };
        lo = _mm256_or_si256(lo, bit(2 * c as i32));
        hi = _mm256_or_si256(hi, bit(2 * c as i32 + 1));
    }
    (lo, hi)
}
