//! Products of float weights (BF16, F16, F32) in file layout with f32 activations, for every
//! vector level: tiles of `RT` rows × up to `T` tokens, each (row, token) pair one vector of
//! column sums. Every weight vector is widened to f32 exactly (BF16 by a shift, F16 by the
//! hardware conversion) once per tile and meets the tile's tokens with f32 FMAs, so the
//! products are f32 products of the file's values.
//!
//! A pair's sum runs over the columns in one order whatever the tile (the lanes, then one
//! reduction), so a row's result never depends on how many tokens share the step — the
//! property speculative verification and continuous batching rely on.

/// The weight element types these kernels read.
pub const BF16: u8 = 0;
pub const F16: u8 = 1;
pub const F32: u8 = 2;

const fn elem_bytes(k: u8) -> usize {
    match k {
        F32 => 4,
        _ => 2,
    }
}

/// Weight bytes of a panel of rows, kept in L2 while the token tiles pass over it (a tile's
/// tokens stay in L1 meanwhile): the rows are half the bytes of the activations per column,
/// and each is read once per token tile rather than each token tile once per few rows.
const PANEL_BYTES: usize = 256 * 1024;

/// One vector level's f32 lanes.
pub(super) trait Lanes {
    type V: Copy;
    /// Lanes per vector.
    const W: usize;
    unsafe fn zero() -> Self::V;
    /// `W` weights of kind `K` at `p`, as f32.
    unsafe fn widen<const K: u8>(p: *const u8) -> Self::V;
    unsafe fn load(p: *const f32) -> Self::V;
    /// a · b + c
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    unsafe fn sum(v: Self::V) -> f32;
    /// Ask for the cache line at `p` ahead of its use.
    #[inline(always)]
    unsafe fn prefetch(_p: *const u8) {}
}

/// How many rows ahead of a tile decode asks for the weights: a tile of few tokens streams its
/// rows from memory with little work per byte, and the hardware prefetchers alone leave too
/// few misses in flight.
const PREFETCH_ROWS: usize = 4;

/// Rows `r0..r0 + RT` (`rb` bytes apart from `w`) against tokens `t0..t0 + T` of `x` (`kd`
/// floats each): out[t, r] = Σ_c w[r, c] x[t, c] (+ bias[r]), tokens `m` floats apart in `out`.
#[inline(always)]
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
unsafe fn tile<L: Lanes, const K: u8, const RT: usize, const T: usize>(
    w: *const u8,
    rb: usize,
    kd: usize,
    x: *const f32,
    t0: usize,
    out: *mut f32,
    m: usize,
    r0: usize,
    bias: Option<&[f32]>,
) {
    let eb = elem_bytes(K);
    let mut acc = [[L::zero(); T]; RT];
    let whole = kd / L::W * L::W;
    let mut c = 0;
    while c < whole {
        let mut wv = [L::zero(); RT];
        for (r, v) in wv.iter_mut().enumerate() {
            let p = w.add((r0 + r) * rb + c * eb);
            if T <= 2 && (c * eb).is_multiple_of(64) {
                L::prefetch(p.wrapping_add(PREFETCH_ROWS * rb));
            }
            *v = L::widen::<K>(p);
        }
        for t in 0..T {
            let xv = L::load(x.add((t0 + t) * kd + c));
            for r in 0..RT {
                acc[r][t] = L::fma(wv[r], xv, acc[r][t]);
            }
        }
        c += L::W;
    }
    if whole < kd {
        // The last columns, zero-padded to a whole vector.
        let left = kd - whole;
        let mut wb = [[0u8; 64]; RT];
        for (r, b) in wb.iter_mut().enumerate() {
            let src = w.add((r0 + r) * rb + whole * eb);
            std::ptr::copy_nonoverlapping(src, b.as_mut_ptr(), left * eb);
        }
        for t in 0..T {
            let mut xb = [0f32; 16];
            std::ptr::copy_nonoverlapping(x.add((t0 + t) * kd + whole), xb.as_mut_ptr(), left);
            let xv = L::load(xb.as_ptr());
            for r in 0..RT {
                acc[r][t] = L::fma(L::widen::<K>(wb[r].as_ptr()), xv, acc[r][t]);
            }
        }
    }
    for r in 0..RT {
        let b = bias.map_or(0.0, |b| b[r0 + r]);
        for t in 0..T {
            *out.add((t0 + t) * m + r0 + r) = L::sum(acc[r][t]) + b;
        }
    }
}

/// Rows `rows` of the `[m, kd]` weight at `w` (kind `K`, `rb` bytes a row) against tokens
/// `tokens` of `x`, into the `[n, m]` output `out`: panels of rows, token tiles of at most
/// `MAX_T` (as even as possible), `R` rows a tile (then single rows).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn drive<L: Lanes, const K: u8, const R: usize, const MAX_T: usize>(
    w: *const u8,
    rb: usize,
    m: usize,
    kd: usize,
    x: *const f32,
    rows: std::ops::Range<usize>,
    tokens: std::ops::Range<usize>,
    bias: Option<&[f32]>,
    out: *mut f32,
) {
    // The tile sizes `call!` lists: 1 to 5, and MAX_T.
    const { assert!(MAX_T >= 1 && MAX_T <= 6) };
    let n = tokens.len();
    let tiles = n.div_ceil(MAX_T);
    let panel = (PANEL_BYTES / rb).max(R) / R * R;
    let mut p0 = rows.start;
    while p0 < rows.end {
        let p1 = (p0 + panel).min(rows.end);
        let mut t = tokens.start;
        for i in 0..tiles {
            let size = n / tiles + usize::from(i < n % tiles);
            let mut r = p0;
            while r < p1 {
                let whole = p1 - r >= R;
                // Called in place (a function pointer would lose the caller's target features).
                macro_rules! call {
                    ($rt:expr) => {
                        match size {
                            1 => tile::<L, K, { $rt }, 1>(w, rb, kd, x, t, out, m, r, bias),
                            2 => tile::<L, K, { $rt }, 2>(w, rb, kd, x, t, out, m, r, bias),
                            3 => tile::<L, K, { $rt }, 3>(w, rb, kd, x, t, out, m, r, bias),
                            4 => tile::<L, K, { $rt }, 4>(w, rb, kd, x, t, out, m, r, bias),
                            5 => tile::<L, K, { $rt }, 5>(w, rb, kd, x, t, out, m, r, bias),
                            _ => tile::<L, K, { $rt }, MAX_T>(w, rb, kd, x, t, out, m, r, bias),
                        }
                    };
                }
                if whole {
                    call!(R);
                } else {
                    call!(1);
                }
                r += if whole { R } else { 1 };
            }
            t += size;
        }
        p0 = p1;
    }
}

/// Arguments of one product's piece, as `run` takes them.
pub struct Piece<'a> {
    /// Element kind (`BF16`, `F16`, `F32`), weight rows at `w`, `rb` bytes apart.
    pub kind: u8,
    pub w: *const u8,
    pub rb: usize,
    /// The weight's rows and columns.
    pub m: usize,
    pub kd: usize,
    /// `n × kd` activations.
    pub x: *const f32,
    pub bias: Option<&'a [f32]>,
    /// `n × m` output.
    pub out: *mut f32,
}

/// The levels with float tiles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    #[cfg(target_arch = "x86_64")]
    Avx512,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "aarch64")]
    Neon,
}

impl Level {
    /// The float tiles of an ISA level, if it has them.
    pub fn of(isa: super::Isa) -> Option<Level> {
        use super::Isa;
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 | Isa::Amx => Some(Level::Avx512),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 | Isa::Avx2Vnni => Some(Level::Avx2),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon | Isa::NeonDot | Isa::NeonMm => Some(Level::Neon),
            _ => None,
        }
    }
}

/// out[t, r] = Σ_c w[r, c] x[t, c] (+ bias[r]) for `rows` and `tokens` of `p`.
///
/// # Safety
/// The CPU must have `level`'s features; `p.w` must hold `p.m` rows of `p.rb` bytes of `p.kd`
/// elements of `p.kind`, `p.x` `tokens.end × kd` floats, `p.out` `tokens.end × m` floats, and
/// no other thread may write the (token, row) cells this call covers.
pub unsafe fn run(
    level: Level,
    p: &Piece<'_>,
    rows: std::ops::Range<usize>,
    tokens: std::ops::Range<usize>,
) {
    debug_assert!(rows.end <= p.m && p.rb >= p.kd * elem_bytes(p.kind));
    let f = match level {
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 => match p.kind {
            BF16 => x86::avx512::<BF16>,
            F16 => x86::avx512::<F16>,
            _ => x86::avx512::<F32>,
        },
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 => match p.kind {
            BF16 => x86::avx2::<BF16>,
            F16 => x86::avx2::<F16>,
            _ => x86::avx2::<F32>,
        },
        #[cfg(target_arch = "aarch64")]
        Level::Neon => match p.kind {
            BF16 => arm::neon::<BF16>,
            F16 => arm::neon::<F16>,
            _ => arm::neon::<F32>,
        },
    };
    f(p.w, p.rb, p.m, p.kd, p.x, rows, tokens, p.bias, p.out)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{drive, Lanes, BF16, F16};
    use std::arch::x86_64::*;
    use std::ops::Range;

    pub struct Avx512;

    impl Lanes for Avx512 {
        type V = __m512;
        const W: usize = 16;
        #[inline(always)]
        unsafe fn zero() -> __m512 {
            _mm512_setzero_ps()
        }
        #[inline(always)]
        unsafe fn widen<const K: u8>(p: *const u8) -> __m512 {
            match K {
                BF16 => _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(
                    _mm256_loadu_si256(p as *const __m256i),
                ))),
                F16 => _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i)),
                _ => _mm512_loadu_ps(p as *const f32),
            }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m512 {
            _mm512_loadu_ps(p)
        }
        #[inline(always)]
        unsafe fn fma(a: __m512, b: __m512, c: __m512) -> __m512 {
            _mm512_fmadd_ps(a, b, c)
        }
        #[inline(always)]
        unsafe fn prefetch(p: *const u8) {
            _mm_prefetch::<_MM_HINT_T0>(p as *const i8);
        }
        #[inline(always)]
        unsafe fn sum(v: __m512) -> f32 {
            _mm512_reduce_add_ps(v)
        }
    }

    pub struct Avx2;

    impl Lanes for Avx2 {
        type V = __m256;
        const W: usize = 8;
        #[inline(always)]
        unsafe fn zero() -> __m256 {
            _mm256_setzero_ps()
        }
        #[inline(always)]
        unsafe fn widen<const K: u8>(p: *const u8) -> __m256 {
            match K {
                BF16 => _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(
                    _mm_loadu_si128(p as *const __m128i),
                ))),
                F16 => _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)),
                _ => _mm256_loadu_ps(p as *const f32),
            }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m256 {
            _mm256_loadu_ps(p)
        }
        #[inline(always)]
        unsafe fn fma(a: __m256, b: __m256, c: __m256) -> __m256 {
            _mm256_fmadd_ps(a, b, c)
        }
        #[inline(always)]
        unsafe fn prefetch(p: *const u8) {
            _mm_prefetch::<_MM_HINT_T0>(p as *const i8);
        }
        #[inline(always)]
        unsafe fn sum(v: __m256) -> f32 {
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps::<1>(s, s)))
        }
    }

    /// 4 rows × 6 tokens of accumulators, 4 weight vectors and one activation: 29 of 32 registers.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn avx512<const K: u8>(
        w: *const u8,
        rb: usize,
        m: usize,
        kd: usize,
        x: *const f32,
        rows: Range<usize>,
        tokens: Range<usize>,
        bias: Option<&[f32]>,
        out: *mut f32,
    ) {
        drive::<Avx512, K, 4, 6>(w, rb, m, kd, x, rows, tokens, bias, out)
    }

    /// 2 rows × 6 tokens of accumulators, 2 weight vectors and one activation: 15 of 16.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn avx2<const K: u8>(
        w: *const u8,
        rb: usize,
        m: usize,
        kd: usize,
        x: *const f32,
        rows: Range<usize>,
        tokens: Range<usize>,
        bias: Option<&[f32]>,
        out: *mut f32,
    ) {
        drive::<Avx2, K, 2, 6>(w, rb, m, kd, x, rows, tokens, bias, out)
    }
}

#[cfg(target_arch = "aarch64")]
mod arm {
    use super::{drive, Lanes, BF16, F16};
    use std::arch::aarch64::*;
    use std::arch::asm;
    use std::ops::Range;

    pub struct Neon;

    impl Lanes for Neon {
        type V = float32x4_t;
        const W: usize = 4;
        #[inline(always)]
        unsafe fn zero() -> float32x4_t {
            vdupq_n_f32(0.0)
        }
        #[inline(always)]
        unsafe fn widen<const K: u8>(p: *const u8) -> float32x4_t {
            match K {
                BF16 => vreinterpretq_f32_u32(vshll_n_u16::<16>(vld1_u16(p as *const u16))),
                F16 => {
                    // `fcvtl` (the f16 intrinsics need the unstable f16 type).
                    let h = vld1_u16(p as *const u16);
                    let o: float32x4_t;
                    asm!("fcvtl {o:v}.4s, {h:v}.4h", o = out(vreg) o, h = in(vreg) h,
                        options(pure, nomem, nostack));
                    o
                }
                _ => vld1q_f32(p as *const f32),
            }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> float32x4_t {
            vld1q_f32(p)
        }
        #[inline(always)]
        unsafe fn fma(a: float32x4_t, b: float32x4_t, c: float32x4_t) -> float32x4_t {
            vfmaq_f32(c, a, b)
        }
        #[inline(always)]
        unsafe fn sum(v: float32x4_t) -> f32 {
            vaddvq_f32(v)
        }
    }

    /// 4 rows × 6 tokens of accumulators, 4 weight vectors and one activation: 29 of 32.
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn neon<const K: u8>(
        w: *const u8,
        rb: usize,
        m: usize,
        kd: usize,
        x: *const f32,
        rows: Range<usize>,
        tokens: Range<usize>,
        bias: Option<&[f32]>,
        out: *mut f32,
    ) {
        drive::<Neon, K, 4, 6>(w, rb, m, kd, x, rows, tokens, bias, out)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::kernels::Isa;

    /// `rows × kd` values of kind `k` over a wide range of magnitudes, as the file's bytes and
    /// as f64 (also the AMX tiles' oracle, `amx_float`).
    pub(crate) fn weights(k: u8, rows: usize, kd: usize) -> (Vec<u8>, Vec<f64>) {
        let v = |i: usize| {
            (((i * 7919) % 2003) as f32 - 1001.0) / 997.0 * 2f32.powi((i % 9) as i32 - 4)
        };
        let (mut bytes, mut vals) = (Vec::new(), Vec::new());
        for i in 0..rows * kd {
            let x = v(i);
            let back = match k {
                BF16 => {
                    let h = half::bf16::from_f32(x);
                    bytes.extend(h.to_le_bytes());
                    h.to_f32()
                }
                F16 => {
                    let h = half::f16::from_f32(x);
                    bytes.extend(h.to_le_bytes());
                    h.to_f32()
                }
                _ => {
                    bytes.extend(x.to_le_bytes());
                    x
                }
            };
            vals.push(back as f64);
        }
        (bytes, vals)
    }

    /// Every level this CPU has, every kind, rows not a multiple of the tile's, columns not a
    /// multiple of the lanes, every tile size: against an f64 sum of the widened values, and
    /// each token's row bit for bit the same alone as among 13 tokens.
    #[test]
    fn float_tiles_match_the_f64_sum_and_ignore_the_batch() {
        let levels: Vec<Level> = Isa::available().into_iter().filter_map(Level::of).collect();
        if levels.is_empty() {
            eprintln!("no vector level with float tiles on this CPU: nothing to test");
            return;
        }
        let (rows, n) = (23, 13);
        for &level in &levels {
            for k in [BF16, F16, F32] {
                for kd in [16, 37, 96, 300] {
                    let (w, wv) = weights(k, rows, kd);
                    let x: Vec<f32> = (0..n * kd)
                        .map(|i| ((i * 31 % 97) as f32 - 48.0) / 17.0)
                        .collect();
                    let bias: Vec<f32> = (0..rows).map(|r| r as f32 * 0.25 - 2.0).collect();
                    let mut all = vec![f32::NAN; n * rows];
                    let piece = |out: &mut Vec<f32>| Piece {
                        kind: k,
                        w: w.as_ptr(),
                        rb: kd * elem_bytes(k),
                        m: rows,
                        kd,
                        x: x.as_ptr(),
                        bias: Some(&bias),
                        out: out.as_mut_ptr(),
                    };
                    unsafe { run(level, &piece(&mut all), 0..rows, 0..n) };
                    for t in 0..n {
                        let mut one = vec![f32::NAN; n * rows];
                        // Rows in two ranges, as two threads' pieces would take them.
                        unsafe {
                            run(level, &piece(&mut one), 0..8, t..t + 1);
                            run(level, &piece(&mut one), 8..rows, t..t + 1);
                        }
                        for r in 0..rows {
                            let (mut want, mut mag) = (bias[r] as f64, bias[r].abs() as f64);
                            for c in 0..kd {
                                let p = wv[r * kd + c] * x[t * kd + c] as f64;
                                want += p;
                                mag += p.abs();
                            }
                            let got = all[t * rows + r];
                            assert!(
                                (got as f64 - want).abs() <= 1e-6 * mag + 1e-6,
                                "{level:?} kind {k} kd {kd} row {r} token {t}: {got} vs {want}"
                            );
                            assert_eq!(
                                got.to_bits(),
                                one[t * rows + r].to_bits(),
                                "{level:?} kind {k} kd {kd} row {r} token {t}: alone ≠ batched"
                            );
                        }
                    }
                }
            }
        }
    }
}
