//! AVX2 kernels over the packed layout (`crate::packed`), for machines without AVX-512: each
//! 16-row group is taken as two halves of 8 rows (one row per 32-bit lane of a 256-bit
//! register) against up to `MAX_TILE` tokens at a time. A sub-block's weights are unpacked once
//! per tile; each 4-column register meets a token's 4 quants, broadcast, with `vpmaddubsw` and
//! `vpmaddwd` (AVX2 has no `vpdpbusd`) or, at the `avx2vnni` level, AVX-VNNI's 256-bit
//! `vpdpbusd`: row sums come out in lanes, with no horizontal sums and one scale step per 8 rows
//! — against the file layout's one row and one token at a time. With AVX-VNNI (`matmul_probe`
//! on the Zen 5, 2 threads, G MAC/s against `vpmaddubsw`): 512 tokens Q5_0 208–215 → 253–285,
//! Q8_0 167–172 → 295–303, Q4_K 237–239 → 282–283, Q6_K 184–188 → 230–237; 16 tokens streamed
//! Q5_0 203–205 → 263–267, the Q8_0 head 151936 × 896 150–163 → 268–283.
//!
//! `vpmaddubsw` adds pairs of u8 × i8 products into i16 with saturation: quants of up to 6 bits
//! (≤ 63 · 127 · 2) never reach it, even with two registers' pairs added before widening; 8-bit
//! kinds (Q8_0, the IQ4 lookups, stored as q + 128) are multiplied as |w| × (q with w's sign),
//! as llama.cpp does; `vpdpbusd` sums in i32 without saturating and takes them as stored, with
//! the AVX-512 kernels' offset term. Integer sums are exact and the f32
//! steps per row are `avx512_packed`'s, in the same order: the results equal the AVX-512
//! kernels' bit for bit (tested).

use super::packed_kinds::{
    by_kind, even_tiles, kind, row_parts, IQ4NL, IQ4XS, Q4K, Q4_0, Q4_1, Q5K, Q5_0, Q5_1, Q6K, Q8_0,
};
use super::pacts::PActs;
use crate::packed::{Kind, Packed, ROWS};
use std::arch::x86_64::*;
use suanli_core::quant::IQ4_LEVELS;

/// Rows per half group: one per 32-bit lane.
const HALF: usize = ROWS / 2;

/// Most tokens per tile: their integer sums and a sub-block's weights about fill the 16
/// registers (`matmul_probe` at the AVX2 level, 1 thread, 12 and 64 tokens, 6 against 4: Q5_0
/// +5–8 %, Q4_K +3 %, Q8_0 even).
const MAX_TILE: usize = 6;

/// Bytes of half `h` of the 64-byte register at `p + o`.
#[inline(always)]
unsafe fn ld(p: *const u8, o: usize, h: usize) -> __m256i {
    _mm256_loadu_si256(p.add(o + 32 * h) as *const __m256i)
}

/// The 8 registers of one 32-column sub-block for rows `8h..8h + 8` (register g: columns
/// 4g..4g+4, one row per lane): unsigned quants, or for 8-bit kinds the signed ones (q + 128
/// flipped back) — with `VNNI`, as stored (q + 128, and the IQ4 levels + 128), as the AVX-512
/// kernels take them.
#[inline(always)]
unsafe fn unpack<const K: u8, const VNNI: bool>(p: *const u8, h: usize) -> [__m256i; 8] {
    let mut w = [_mm256_setzero_si256(); 8];
    let kd = kind(K);
    let flip = _mm256_set1_epi8(if VNNI { 0 } else { i8::MIN });
    if kd.bits() == 8 {
        for (g, v) in w.iter_mut().enumerate() {
            *v = _mm256_xor_si256(ld(p, 64 * g, h), flip);
        }
        return w;
    }
    let m4 = _mm256_set1_epi8(0x0F);
    for j in 0..4 {
        let x = ld(p, 64 * j, h);
        w[j] = _mm256_and_si256(x, m4);
        w[j + 4] = _mm256_and_si256(_mm256_srli_epi16::<4>(x), m4);
    }
    match kd.bits() {
        5 => {
            let hb = ld(p, 256, h);
            for (g, v) in w.iter_mut().enumerate() {
                let bit = _mm256_set1_epi8(1 << g);
                let set = _mm256_cmpeq_epi8(_mm256_and_si256(hb, bit), bit);
                *v = _mm256_or_si256(*v, _mm256_and_si256(set, _mm256_set1_epi8(0x10)));
            }
        }
        6 => {
            for k in 0..2 {
                let x = ld(p, 256 + 64 * k, h);
                w[4 * k] = or_masked(w[4 * k], _mm256_slli_epi16::<4>(x));
                w[4 * k + 1] = or_masked(w[4 * k + 1], _mm256_slli_epi16::<2>(x));
                w[4 * k + 2] = or_masked(w[4 * k + 2], x);
                w[4 * k + 3] = or_masked(w[4 * k + 3], _mm256_srli_epi16::<2>(x));
            }
        }
        _ => {}
    }
    if matches!(kd, Kind::IQ4NL | Kind::IQ4XS) {
        // The levels themselves, signed (the packed kernels' table is level + 128); with VNNI
        // that table.
        let l = IQ4_LEVELS.map(|v| {
            if VNNI {
                (v as i32 + 128) as u8 as i8
            } else {
                v
            }
        });
        let lut = _mm256_broadcastsi128_si256(_mm_setr_epi8(
            l[0], l[1], l[2], l[3], l[4], l[5], l[6], l[7], l[8], l[9], l[10], l[11], l[12], l[13],
            l[14], l[15],
        ));
        for v in w.iter_mut() {
            *v = _mm256_shuffle_epi8(lut, *v);
        }
    }
    w
}

/// v | (hi & 0x30): Q6_K's top two bits.
#[inline(always)]
unsafe fn or_masked(v: __m256i, hi: __m256i) -> __m256i {
    _mm256_or_si256(v, _mm256_and_si256(hi, _mm256_set1_epi8(0x30)))
}

/// Kinds whose quants are multiplied signed (|w| × q with w's sign) without VNNI.
const fn signed(k: u8) -> bool {
    kind(k).bits() == 8 || matches!(kind(k), Kind::IQ4NL | Kind::IQ4XS)
}

/// `acc` + w · (a token's 4 quants at `q`, broadcast), per 32-bit lane, with AVX-VNNI's
/// `vpdpbusd` (u8 × i8, summed exactly in i32: no pair saturates, whatever the bits).
#[inline]
#[target_feature(enable = "avx2,avxvnni")]
unsafe fn dp4(acc: __m256i, w: __m256i, q: *const i8) -> __m256i {
    let y = _mm256_set1_epi32(std::ptr::read_unaligned(q as *const i32));
    _mm256_dpbusd_avx_epi32(acc, w, y)
}

/// `acc` + w · (a token's 4 quants at `q`, broadcast), per 32-bit lane.
#[inline(always)]
unsafe fn dot4<const SIGNED: bool>(acc: __m256i, w: __m256i, q: *const i8) -> __m256i {
    let y = _mm256_set1_epi32(std::ptr::read_unaligned(q as *const i32));
    let pairs = if SIGNED {
        _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(y, w))
    } else {
        _mm256_maddubs_epi16(w, y)
    };
    _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
}

/// `acc` + w0 · (quants at `q`) + w1 · (quants at `q + 4`) for unsigned quants of at most 6
/// bits: both registers' pairs are added in i16 (|sum| ≤ 4 · 63 · 127 < 2^15) before one
/// widening, a `vpmaddwd` and an add fewer than two `dot4`.
#[inline(always)]
unsafe fn dot8(acc: __m256i, w0: __m256i, w1: __m256i, q: *const i8) -> __m256i {
    let y0 = _mm256_set1_epi32(std::ptr::read_unaligned(q as *const i32));
    let y1 = _mm256_set1_epi32(std::ptr::read_unaligned(q.add(4) as *const i32));
    let pairs = _mm256_add_epi16(_mm256_maddubs_epi16(w0, y0), _mm256_maddubs_epi16(w1, y1));
    _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
}

/// 8 bytes → 8 f32, signed or unsigned.
#[inline(always)]
unsafe fn bytes_ps<const SIGNED: bool>(p: *const u8) -> __m256 {
    let b = _mm_loadl_epi64(p as *const __m128i);
    _mm256_cvtepi32_ps(if SIGNED {
        _mm256_cvtepi8_epi32(b)
    } else {
        _mm256_cvtepu8_epi32(b)
    })
}

#[inline(always)]
unsafe fn f16x8(p: *const u8) -> __m256 {
    _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
}

/// `avx512_sub::sub_scales` for rows `8h..8h + 8`.
#[inline(always)]
unsafe fn sub_scales<const K: u8>(
    hd: *const u8,
    j: usize,
    d: __m256,
    second: __m256,
    h: usize,
) -> [__m256; 3] {
    let kd = kind(K);
    let sc = hd.add(kd.sc_at() + HALF * h);
    match K {
        Q4K | Q5K => [
            _mm256_mul_ps(d, bytes_ps::<false>(sc.add(ROWS * j))),
            d,
            _mm256_mul_ps(
                second,
                bytes_ps::<false>(hd.add(kd.mn_at() + HALF * h + ROWS * j)),
            ),
        ],
        Q6K => [
            _mm256_mul_ps(d, bytes_ps::<true>(sc.add(ROWS * 2 * j))),
            _mm256_mul_ps(d, bytes_ps::<true>(sc.add(ROWS * (2 * j + 1)))),
            second,
        ],
        IQ4XS => [
            _mm256_mul_ps(d, bytes_ps::<true>(sc.add(ROWS * j))),
            d,
            second,
        ],
        _ => [d, d, second],
    }
}

/// acc += the integer sums `i` × (the rows' scales `s` × the token's scale `d`).
#[inline(always)]
unsafe fn scale_sums(acc: &mut __m256, i: __m256i, s: __m256, d: f32) {
    *acc = _mm256_fmadd_ps(
        _mm256_cvtepi32_ps(i),
        _mm256_mul_ps(s, _mm256_set1_ps(d)),
        *acc,
    );
}

/// Half `h`'s superblock scale and second value (min, dmin) of the superblock at `hd`.
#[inline(always)]
unsafe fn head_half<const K: u8>(hd: *const u8, h: usize) -> (__m256, __m256) {
    let d = f16x8(hd.add(2 * HALF * h));
    let second = if kind(K).has_second() {
        f16x8(hd.add(2 * ROWS + 2 * HALF * h))
    } else {
        _mm256_setzero_ps()
    };
    (d, second)
}

/// Sub-block `j` (block `blk` of the row) of the superblock at `hd`, rows `8h..8h + 8`, into
/// the sums `acc` of tokens `t0..t0 + T`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn sub_block<const K: u8, const T: usize, const VNNI: bool>(
    acc: &mut [__m256; T],
    hd: *const u8,
    j: usize,
    blk: usize,
    (d, second): (__m256, __m256),
    h: usize,
    a: &PActs,
    t0: usize,
) {
    let kd = kind(K);
    // Without VNNI, 8-bit kinds are multiplied signed: no offset to take back.
    let off = if signed(K) && !VNNI {
        0
    } else {
        kd.offset() as i32
    };
    let nblk = a.k / 32;
    let p = hd.add(kd.head_bytes() + j * kd.sub_bytes());
    let w = unpack::<K, VNNI>(p, h);
    let [s0, s1, mv] = sub_scales::<K>(hd, j, d, second, h);
    let q = |t: usize| a.qs.as_ptr().add((t0 + t) * a.k + blk * 32);
    let m = |t: usize| a.meta.get_unchecked((t0 + t) * nblk + blk);
    if K == Q6K {
        // Each 16-column half has its own scale.
        for (t, acc) in acc.iter_mut().enumerate() {
            let mut i0 = _mm256_set1_epi32(m(t).half_offset_sum(0, off));
            let mut i1 = _mm256_set1_epi32(m(t).half_offset_sum(1, off));
            if VNNI {
                for g in 0..4 {
                    i0 = dp4(i0, w[g], q(t).add(4 * g));
                    i1 = dp4(i1, w[g + 4], q(t).add(4 * (g + 4)));
                }
            } else {
                for g in (0..4).step_by(2) {
                    i0 = dot8(i0, w[g], w[g + 1], q(t).add(4 * g));
                    i1 = dot8(i1, w[g + 4], w[g + 5], q(t).add(4 * (g + 4)));
                }
            }
            // As `avx512_sub::scale_in`: both halves by their row scales, then the token's.
            let x0 = _mm256_mul_ps(_mm256_cvtepi32_ps(i0), s0);
            let x = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i1), s1, x0);
            *acc = _mm256_fmadd_ps(x, _mm256_set1_ps(m(t).d), *acc);
        }
        return;
    }
    // Every token's chain advances one step per register pair, so that consecutive
    // multiply-adds never wait on each other.
    let mut sums: [__m256i; T] = std::array::from_fn(|t| _mm256_set1_epi32(m(t).offset_sum(off)));
    if VNNI || signed(K) {
        // One register at a time: `vpdpbusd` takes every kind so, and without it the signed
        // kinds cannot pair registers in i16.
        for (g, wg) in w.iter().enumerate() {
            for (t, i) in sums.iter_mut().enumerate() {
                *i = match VNNI {
                    true => dp4(*i, *wg, q(t).add(4 * g)),
                    false => dot4::<true>(*i, *wg, q(t).add(4 * g)),
                };
            }
        }
    } else {
        for g in (0..8).step_by(2) {
            for (t, i) in sums.iter_mut().enumerate() {
                *i = dot8(*i, w[g], w[g + 1], q(t).add(4 * g));
            }
        }
    }
    for (t, (acc, i)) in acc.iter_mut().zip(sums).enumerate() {
        scale_sums(acc, i, s0, m(t).d);
        let s = _mm256_set1_ps(m(t).s);
        match K {
            Q4_1 | Q5_1 => *acc = _mm256_fmadd_ps(mv, s, *acc),
            Q4K | Q5K => *acc = _mm256_fnmadd_ps(mv, s, *acc),
            _ => {}
        }
    }
}

/// Each token's 8 row sums (plus the bias) into `out`, tokens `ostride` apart; only the first
/// `valid` rows are written.
#[inline(always)]
unsafe fn store(acc: &[__m256], out: *mut f32, ostride: usize, valid: usize, bias: Option<&[f32]>) {
    let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(valid as i32), lanes);
    let b = match bias {
        Some(b) => _mm256_maskload_ps(b.as_ptr(), mask),
        None => _mm256_setzero_ps(),
    };
    for (t, v) in acc.iter().enumerate() {
        _mm256_maskstore_ps(out.add(t * ostride), mask, _mm256_add_ps(*v, b));
    }
}

/// One half group (rows `8h..8h + 8` of the group at `grp`) against tokens `t0..t0 + T`; `out`
/// points at the half's row 0 for token t0, tokens `ostride` apart; only `valid` rows are
/// written. A `lead` tile (the group's first) also asks for lines far ahead into L2: in AVX2
/// mode on the Zen 5 (`SUANLI_CPU_ISA=avx2`, `matmul_probe`, 2 threads, alternating) the
/// Q6_K head 151936 × 1536 went 135–140 → 194–198 G MAC/s at 6 tokens, 162–165 → 188–194 at
/// 11; Q8_0 and Q4_K at 4–512 tokens unchanged.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const K: u8, const T: usize, const VNNI: bool>(
    grp: *const u8,
    h: usize,
    nsb: usize,
    a: &PActs,
    t0: usize,
    out: *mut f32,
    ostride: usize,
    valid: usize,
    bias: Option<&[f32]>,
    lead: bool,
) {
    let kd = kind(K);
    let (sbb, nsub) = (kd.sb_bytes(), kd.sb_cols() / 32);
    let mut acc = [_mm256_setzero_ps(); T];
    for sb in 0..nsb {
        let hd = grp.add(sb * sbb);
        let scales = head_half::<K>(hd, h);
        for j in 0..nsub {
            if h == 0 {
                let p = hd.add(kd.head_bytes() + j * kd.sub_bytes());
                super::avx512_packed::prefetch_ahead::<K>(p);
                if lead {
                    super::avx512_packed::prefetch_far::<K>(p);
                }
            }
            sub_block::<K, T, VNNI>(&mut acc, hd, j, sb * nsub + j, scales, h, a, t0);
        }
    }
    store(&acc, out, ostride, valid, bias);
}

/// Both halves of a group against one token (decode): each sub-block's memory streamed once
/// (not again from cache for the second half) in one loop; `out` points at the group's row 0,
/// `valid` rows.
#[inline(always)]
unsafe fn tile_pair<const K: u8, const VNNI: bool>(
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
    let (mut lo, mut hi) = ([_mm256_setzero_ps(); 1], [_mm256_setzero_ps(); 1]);
    for sb in 0..nsb {
        let hd = grp.add(sb * sbb);
        let (s_lo, s_hi) = (head_half::<K>(hd, 0), head_half::<K>(hd, 1));
        for j in 0..nsub {
            super::avx512_packed::prefetch_ahead::<K>(hd.add(kd.head_bytes() + j * kd.sub_bytes()));
            let blk = sb * nsub + j;
            sub_block::<K, 1, VNNI>(&mut lo, hd, j, blk, s_lo, 0, a, t0);
            sub_block::<K, 1, VNNI>(&mut hi, hd, j, blk, s_hi, 1, a, t0);
        }
    }
    store(&lo, out, 0, valid.min(HALF), bias);
    if valid > HALF {
        store(
            &hi,
            out.add(HALF),
            0,
            valid - HALF,
            bias.map(|b| &b[HALF..]),
        );
    }
}

/// Rows of groups `groups` against tokens `tokens`: `out` is the `[n, rows]` output.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn run_kind<const K: u8>(
    p: &Packed,
    a: &PActs,
    groups: std::ops::Range<usize>,
    tokens: std::ops::Range<usize>,
    bias: Option<&[f32]>,
    out: *mut f32,
) {
    run_tiles::<K, false>(p, a, groups, tokens, bias, out)
}

/// `run_kind` with AVX-VNNI.
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
unsafe fn run_kind_vnni<const K: u8>(
    p: &Packed,
    a: &PActs,
    groups: std::ops::Range<usize>,
    tokens: std::ops::Range<usize>,
    bias: Option<&[f32]>,
    out: *mut f32,
) {
    run_tiles::<K, true>(p, a, groups, tokens, bias, out)
}

#[inline(always)]
unsafe fn run_tiles<const K: u8, const VNNI: bool>(
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
            tile_pair::<K, VNNI>(grp, nsb, a, tokens.start, o, valid, bias);
        }
        return;
    }
    // As on AVX-512 (`avx512_packed::far_prefetch`): the group's first tile streams it.
    let far = super::avx512_packed::far_prefetch(K);
    for (grp, h, r0, valid) in row_parts(p, groups, 2) {
        let bias = bias.map(|b| &b[r0..]);
        for (t, size) in even_tiles(tokens.clone(), MAX_TILE) {
            let o = out.add(t * p.rows + r0);
            let lead = t == tokens.start && far;
            match size {
                1 => tile::<K, 1, VNNI>(grp, h, nsb, a, t, o, p.rows, valid, bias, lead),
                2 => tile::<K, 2, VNNI>(grp, h, nsb, a, t, o, p.rows, valid, bias, lead),
                3 => tile::<K, 3, VNNI>(grp, h, nsb, a, t, o, p.rows, valid, bias, lead),
                4 => tile::<K, 4, VNNI>(grp, h, nsb, a, t, o, p.rows, valid, bias, lead),
                5 => tile::<K, 5, VNNI>(grp, h, nsb, a, t, o, p.rows, valid, bias, lead),
                _ => tile::<K, MAX_TILE, VNNI>(grp, h, nsb, a, t, o, p.rows, valid, bias, lead),
            }
        }
    }
}

/// out[t, r] = Σ w[r]·x[t] (+ bias[r]) for groups `groups` and tokens `tokens`.
///
/// With `vnni`, AVX-VNNI's `vpdpbusd` takes the products (the same sums, so the same bits).
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C (with `vnni`, AVX-VNNI); `out` must hold `a.n ×
/// p.rows` floats, and no other thread may write the (token, row) cells this call covers.
pub unsafe fn run(
    p: &Packed,
    a: &PActs,
    groups: std::ops::Range<usize>,
    tokens: std::ops::Range<usize>,
    bias: Option<&[f32]>,
    out: *mut f32,
    vnni: bool,
) {
    debug_assert!(a.k == p.cols && tokens.end <= a.n && groups.end <= p.groups());
    let f = match vnni {
        true => by_kind!(p.kind, run_kind_vnni),
        false => by_kind!(p.kind, run_kind),
    };
    f(p, a, groups, tokens, bias, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::Isa;
    use crate::pool::Pool;
    use crate::testutil::{check_dequantized_dot, check_packed_bits, packed_case};

    /// Every kind, 3 groups (the last partial, in each half), with a bias, every tile size,
    /// with `vpmaddubsw` and (where the CPU has AVX-VNNI) with `vpdpbusd`: against an f64 sum
    /// over the dequantized weights and activations, and where the CPU has AVX-512 VNNI, bit
    /// for bit against its packed kernels.
    #[test]
    fn avx2_packed_kernels_match_the_dequantized_dot_and_avx512() {
        if !Isa::available().contains(&Isa::Avx2) {
            eprintln!("no AVX2 on this CPU: nothing to test");
            return;
        }
        let vnni = Isa::available().contains(&Isa::Avx512);
        if !vnni {
            eprintln!("no AVX-512 VNNI here: the AVX2 kernels are checked against f64 only");
        }
        let with_vnni = Isa::available().contains(&Isa::Avx2Vnni);
        if !with_vnni {
            eprintln!("no AVX-VNNI here: the vpdpbusd variant is not checked");
        }
        let pool = Pool::new(2).unwrap();
        for variant in [false, true].into_iter().filter(|&v| !v || with_vnni) {
            for rows in [37, 45] {
                for n in (1..=9).chain([11]) {
                    for ty in suanli_core::DType::ALL {
                        let Some(kd) = Kind::of(ty) else { continue };
                        for cols in [512, 1056] {
                            if cols % kd.sb_cols() != 0 {
                                continue;
                            }
                            let (raw, p, a, bias) = packed_case(&pool, ty, (rows, cols, n), 5);
                            let mut out = vec![f32::NAN; n * rows];
                            let all = 0..p.groups();
                            unsafe {
                                run(
                                    &p,
                                    &a,
                                    all.clone(),
                                    0..n,
                                    Some(&bias),
                                    out.as_mut_ptr(),
                                    variant,
                                )
                            };
                            if vnni {
                                let mut want = vec![f32::NAN; n * rows];
                                unsafe {
                                    crate::kernels::avx512_packed::run(
                                        &p,
                                        &a,
                                        all,
                                        0..n,
                                        Some(&bias),
                                        want.as_mut_ptr(),
                                        false,
                                    )
                                };
                                let same = out
                                    .iter()
                                    .zip(&want)
                                    .all(|(x, y)| x.to_bits() == y.to_bits());
                                assert!(
                                same,
                                "{kd:?} rows {rows} cols {cols} n {n} vnni {variant}: not AVX-512's bits"
                            );
                            }
                            let what =
                                format!("{kd:?} rows {rows} cols {cols} n {n} vnni {variant}");
                            check_packed_bits(&p, &a, &bias, &out, &what);
                            check_dequantized_dot(
                                ty,
                                &raw,
                                &a,
                                &bias,
                                &out,
                                (rows, cols, n),
                                &what,
                            );
                        }
                    }
                }
            }
        }
    }
}
