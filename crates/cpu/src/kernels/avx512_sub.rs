//! The register-level steps of the AVX-512 packed kernels, shared by the VNNI tiles
//! (`avx512_packed`) and the AMX tiles (`amx_packed`), which therefore give the same bits: a
//! 32-column sub-block of 16 rows unpacked into 8 registers, each token's 4 quants multiplied
//! in by `vpdpbusd`, the rows' scales and the f32 epilogue, the 16 rows' output.

use super::packed_kinds::*;
use crate::packed::{Kind, ROWS};
use std::arch::x86_64::*;
use suanli_core::quant::IQ4_LEVELS;

#[inline(always)]
unsafe fn ld(p: *const u8, o: usize) -> __m512i {
    _mm512_loadu_si512(p.add(o) as *const _)
}

/// v | (hi & mask)
#[inline(always)]
unsafe fn or_masked(v: __m512i, hi: __m512i, mask: __m512i) -> __m512i {
    _mm512_or_si512(v, _mm512_and_si512(hi, mask))
}

/// The 8 registers of one 32-column sub-block (register g: columns 4g..4g+4, one row per lane),
/// as unsigned bytes. `GF`: the caller enables GFNI (`gfni_unpacks`).
#[inline(always)]
pub(super) unsafe fn unpack<const K: u8, const GF: bool>(p: *const u8) -> [__m512i; 8] {
    let mut w = [_mm512_setzero_si512(); 8];
    let kd = kind(K);
    if kd.bits() == 8 {
        for (g, v) in w.iter_mut().enumerate() {
            *v = ld(p, 64 * g);
        }
        return w;
    }
    let m4 = _mm512_set1_epi8(0x0F);
    if GF && kd.bits() == 5 {
        // Register g's fifth bits are bit g of each byte at 256: one affine transform over
        // GF(2) moves it to bit 4 and clears the others (the matrix row of output bit 4 is
        // byte 3), and one ternary op takes the nibble under 0x0F and ors it in — two or three
        // operations a register where the masked add took three or four.
        let hb = ld(p, 256);
        for j in 0..4 {
            let x = ld(p, 64 * j);
            let fifth = |g: usize| {
                _mm512_gf2p8affine_epi64_epi8::<0>(hb, _mm512_set1_epi64((1i64 << g) << 24))
            };
            // (nibble source & 0x0F) | fifth bit
            w[j] = _mm512_ternarylogic_epi32::<0xEC>(x, fifth(j), m4);
            w[j + 4] =
                _mm512_ternarylogic_epi32::<0xEC>(_mm512_srli_epi16::<4>(x), fifth(j + 4), m4);
        }
        return w;
    }
    for j in 0..4 {
        let x = ld(p, 64 * j);
        w[j] = _mm512_and_si512(x, m4);
        w[j + 4] = _mm512_and_si512(_mm512_srli_epi16::<4>(x), m4);
    }
    match kd.bits() {
        5 => {
            let hb = ld(p, 256);
            let c10 = _mm512_set1_epi8(0x10);
            for (g, v) in w.iter_mut().enumerate() {
                let k = _mm512_test_epi8_mask(hb, _mm512_set1_epi8(1 << g));
                *v = _mm512_mask_add_epi8(*v, k, *v, c10);
            }
        }
        6 => {
            let c30 = _mm512_set1_epi8(0x30);
            for h in 0..2 {
                let x = ld(p, 256 + 64 * h);
                w[4 * h] = or_masked(w[4 * h], _mm512_slli_epi16::<4>(x), c30);
                w[4 * h + 1] = or_masked(w[4 * h + 1], _mm512_slli_epi16::<2>(x), c30);
                w[4 * h + 2] = or_masked(w[4 * h + 2], x, c30);
                w[4 * h + 3] = or_masked(w[4 * h + 3], _mm512_srli_epi16::<2>(x), c30);
            }
        }
        _ => {}
    }
    if matches!(kd, Kind::IQ4NL | Kind::IQ4XS) {
        let l = IQ4_LEVELS.map(|v| (v as i32 + 128) as u8 as i8);
        let lut = _mm512_broadcast_i32x4(_mm_setr_epi8(
            l[0], l[1], l[2], l[3], l[4], l[5], l[6], l[7], l[8], l[9], l[10], l[11], l[12], l[13],
            l[14], l[15],
        ));
        for v in w.iter_mut() {
            *v = _mm512_shuffle_epi8(lut, *v);
        }
    }
    w
}

/// 16 bytes → 16 f32, signed or unsigned.
#[inline(always)]
unsafe fn bytes_ps<const SIGNED: bool>(p: *const u8) -> __m512 {
    let b = _mm_loadu_si128(p as *const __m128i);
    _mm512_cvtepi32_ps(if SIGNED {
        _mm512_cvtepi8_epi32(b)
    } else {
        _mm512_cvtepu8_epi32(b)
    })
}

#[inline(always)]
unsafe fn f16x16(p: *const u8) -> __m512 {
    _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
}

/// As `dot4_at`, with the broadcast as an intrinsic (LLVM schedules it; Q6_K's two halves ran
/// ~10 % slower with `dot4_at`).
#[inline(always)]
pub(super) unsafe fn dot4_intrinsic<const G: usize>(
    acc: __m512i,
    w: __m512i,
    q: *const i8,
) -> __m512i {
    let y = _mm512_set1_epi32(std::ptr::read_unaligned(q.add(4 * G) as *const i32));
    _mm512_dpbusd_epi32(acc, w, y)
}

/// `acc` + w · (the 4 quants `O` bytes past `base`, broadcast) in each 32-bit lane. The offset
/// is a constant in the instruction: a token's quants 4G..4G+4 at `4 * G` from its row, or a
/// whole tile's tokens at `32 * t + 4 * G` from its `TileBlock` (one register for them all).
#[inline]
#[target_feature(enable = "avx512f,avx512vnni")]
pub(super) unsafe fn dot4_at<const O: usize>(
    mut acc: __m512i,
    w: __m512i,
    base: *const i8,
) -> __m512i {
    // LLVM does not fold the broadcast into `vpdpbusd` (a separate `vpbroadcastd` and a register
    // per product); the embedded broadcast with a constant offset needs neither.
    std::arch::asm!(
        "vpdpbusd {acc}, {w}, dword ptr [{q} + {o}]{{1to16}}",
        acc = inout(zmm_reg) acc,
        w = in(zmm_reg) w,
        q = in(reg) base,
        o = const O,
        options(pure, readonly, nostack, preserves_flags)
    );
    acc
}

/// Sub-block `j`'s scales for the 16 rows of the superblock at `h` (superblock scale `d`,
/// second value `second`): the integer sums' scale (Q6_K: of each 16-column half) and the
/// mins' scale, as (s0, s1, mins).
#[inline(always)]
pub(super) unsafe fn sub_scales<const K: u8>(
    h: *const u8,
    j: usize,
    d: __m512,
    second: __m512,
) -> [__m512; 3] {
    let kd = kind(K);
    let sc = h.add(kd.sc_at());
    match K {
        Q4K | Q5K => [
            _mm512_mul_ps(d, bytes_ps::<false>(sc.add(ROWS * j))),
            d,
            _mm512_mul_ps(second, bytes_ps::<false>(h.add(kd.mn_at() + ROWS * j))),
        ],
        Q6K => [
            _mm512_mul_ps(d, bytes_ps::<true>(sc.add(ROWS * 2 * j))),
            _mm512_mul_ps(d, bytes_ps::<true>(sc.add(ROWS * (2 * j + 1)))),
            second,
        ],
        IQ4XS => [
            _mm512_mul_ps(d, bytes_ps::<true>(sc.add(ROWS * j))),
            d,
            second,
        ],
        _ => [d, d, second],
    }
}

/// acc += the integer sums `i` × (the rows' scales `s` × the token's scale `d`).
#[inline(always)]
pub(super) unsafe fn scale_sums(acc: &mut __m512, i: __m512i, s: __m512, d: f32) {
    *acc = _mm512_fmadd_ps(
        _mm512_cvtepi32_ps(i),
        _mm512_mul_ps(s, _mm512_set1_ps(d)),
        *acc,
    );
}

/// A sub-block's integer sums for one token's 16 rows, scaled into its accumulator: `i0` (Q6_K:
/// the first 16 columns, `i1` the second) by the rows' scales `s0` (`s1`) times the token's
/// scale `d`, then the float min term `mv · s` (the token's scaled sum; Q4_1/Q5_1 add it,
/// Q4_K/Q5_K subtract it). The VNNI and AMX kernels share it, which keeps them bit-identical.
#[inline(always)]
pub(super) unsafe fn scale_in<const K: u8>(
    acc: &mut __m512,
    (i0, i1): (__m512i, __m512i),
    [s0, s1, mv]: [__m512; 3],
    (d, s): (f32, f32),
) {
    if K == Q6K {
        return scale_halves(acc, half_scaled(i0, s0), i1, s1, d);
    }
    scale_sums(acc, i0, s0, d);
    match K {
        Q4_1 | Q5_1 => *acc = _mm512_fmadd_ps(mv, _mm512_set1_ps(s), *acc),
        Q4K | Q5K => *acc = _mm512_fnmadd_ps(mv, _mm512_set1_ps(s), *acc),
        _ => {}
    }
}

/// Q6_K's first half: its integer sums `i0` times the rows' scales `s0` (`scale_halves` adds
/// the second half and the token's scale).
#[inline(always)]
pub(super) unsafe fn half_scaled(i0: __m512i, s0: __m512) -> __m512 {
    _mm512_mul_ps(_mm512_cvtepi32_ps(i0), s0)
}

/// acc += (`x0` + `i1` × `s1`) × the token's scale `d`: both halves of a Q6_K sub-block with
/// three multiplies, where scaling each half by the token's scale took four (the float
/// multiplies share `vpdpbusd`'s pipes on AMD Zen 4 and 5).
#[inline(always)]
pub(super) unsafe fn scale_halves(acc: &mut __m512, x0: __m512, i1: __m512i, s1: __m512, d: f32) {
    let x = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i1), s1, x0);
    *acc = _mm512_fmadd_ps(x, _mm512_set1_ps(d), *acc);
}

/// Each token's 16 row sums (plus the bias) into `out`, tokens `ostride` apart; only the first
/// `valid` rows are written.
#[inline(always)]
pub(super) unsafe fn store(
    acc: &[__m512],
    out: *mut f32,
    ostride: usize,
    valid: usize,
    bias: Option<&[f32]>,
) {
    let mask: __mmask16 = if valid >= ROWS {
        0xFFFF
    } else {
        (1u16 << valid) - 1
    };
    let b = match bias {
        Some(b) => _mm512_maskz_loadu_ps(mask, b.as_ptr()),
        None => _mm512_setzero_ps(),
    };
    for (t, v) in acc.iter().enumerate() {
        _mm512_mask_storeu_ps(out.add(t * ostride), mask, _mm512_add_ps(*v, b));
    }
}

/// A superblock's scale and second value (Q4_1/Q5_1 min, K-quant dmin) for its 16 rows.
#[inline(always)]
pub(super) unsafe fn head_values(h: *const u8, kd: Kind) -> (__m512, __m512) {
    let d = f16x16(h);
    let second = if kd.has_second() {
        f16x16(h.add(2 * ROWS))
    } else {
        _mm512_setzero_ps()
    };
    (d, second)
}
