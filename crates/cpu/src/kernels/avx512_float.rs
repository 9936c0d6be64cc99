//! AVX-512 products of float weights (BF16, F16, F32) in file layout with f32 activations:
//! tiles of R rows × T tokens, each (row, token) pair one vector of 16 column sums. Every
//! weight value is widened to f32 exactly (BF16 by a shift, F16 by `vcvtph2ps`) once per
//! tile and meets the tile's T tokens, so the products are f32 products of the file's values.
//!
//! A pair's sum runs over the columns in one order whatever the tile (16 lanes, then one
//! reduction), so a row's result never depends on how many tokens share the step — the
//! property speculative verification and continuous batching rely on.

use std::arch::x86_64::*;

/// The weight element types this kernel reads.
pub const BF16: u8 = 0;
pub const F16: u8 = 1;
pub const F32: u8 = 2;

/// Most tokens of a tile: 4 rows × 6 tokens of accumulators, the 4 widened weight vectors and
/// one activation vector fill 29 of the 32 registers.
const MAX_T: usize = 6;
/// Rows of a tile.
const R: usize = 4;
/// Weight bytes of a panel of rows (kept in L2 while the token tiles pass).
const PANEL_BYTES: usize = 256 * 1024;

/// 16 weights from `p` (element `K`) as f32; `mask` selects the columns present.
#[inline(always)]
unsafe fn widen<const K: u8>(p: *const u8, mask: __mmask16) -> __m512 {
    match K {
        BF16 => _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(
            _mm256_maskz_loadu_epi16(mask, p as *const i16),
        ))),
        F16 => _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, p as *const i16)),
        _ => _mm512_maskz_loadu_ps(mask, p as *const f32),
    }
}

const fn elem_bytes(k: u8) -> usize {
    match k {
        F32 => 4,
        _ => 2,
    }
}

/// Rows `r0..r0 + RT` (`rb` bytes apart from `w`) against tokens `t0..t0 + T` of `x` (`kd`
/// floats each): out[t, r] = Σ_c w[r, c] x[t, c] (+ bias[r]), tokens `m` floats apart in `out`.
#[inline(always)]
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
unsafe fn tile<const K: u8, const RT: usize, const T: usize>(
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
    let mut acc = [[_mm512_setzero_ps(); T]; RT];
    let mut c = 0;
    while c < kd {
        let mask: __mmask16 = if kd - c >= 16 {
            0xFFFF
        } else {
            (1u16 << (kd - c)) - 1
        };
        let mut wv = [_mm512_setzero_ps(); RT];
        for (r, v) in wv.iter_mut().enumerate() {
            *v = widen::<K>(w.add((r0 + r) * rb + c * eb), mask);
        }
        for t in 0..T {
            let xv = _mm512_maskz_loadu_ps(mask, x.add((t0 + t) * kd + c));
            for r in 0..RT {
                acc[r][t] = _mm512_fmadd_ps(wv[r], xv, acc[r][t]);
            }
        }
        c += 16;
    }
    for r in 0..RT {
        let b = bias.map_or(0.0, |b| b[r0 + r]);
        for t in 0..T {
            *out.add((t0 + t) * m + r0 + r) = _mm512_reduce_add_ps(acc[r][t]) + b;
        }
    }
}

/// Rows `rows` of the `[m, kd]` weight at `w` (element `K`, `rb` bytes a row) against tokens
/// `tokens` of `x`, into the `[n, m]` output `out`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn run_kind<const K: u8>(
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
    let n = tokens.len();
    let tiles = n.div_ceil(MAX_T);
    // Panels of rows that stay in L2 while the token tiles pass over them (a tile's tokens
    // stay in L1 meanwhile): the rows are half the bytes of the activations per column and
    // each is read once per token tile, not each token tile once per 4 rows.
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
                // Called in place (a function pointer would lose the target features).
                macro_rules! call {
                    ($rt:literal; $($s:literal)*) => {
                        match size {
                            $($s => tile::<K, $rt, $s>(w, rb, kd, x, t, out, m, r, bias),)*
                            _ => tile::<K, $rt, MAX_T>(w, rb, kd, x, t, out, m, r, bias),
                        }
                    };
                }
                if whole {
                    call!(4; 1 2 3 4 5);
                } else {
                    call!(1; 1 2 3 4 5);
                }
                r += if whole { R } else { 1 };
            }
            t += size;
        }
        p0 = p1;
    }
}

/// out[t, r] = Σ_c w[r, c] x[t, c] (+ bias[r]) for `rows` and `tokens`.
///
/// # Safety
/// The CPU must have the features of `Isa::Avx512`; `w` must hold `m` rows of `rb` bytes of
/// `kd` elements of kind `k`, `x` `tokens.end × kd` floats, `out` `tokens.end × m` floats, and
/// no other thread may write the (token, row) cells this call covers.
#[allow(clippy::too_many_arguments)]
pub unsafe fn run(
    k: u8,
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
    debug_assert!(rows.end <= m && rb >= kd * elem_bytes(k));
    let f = match k {
        BF16 => run_kind::<BF16>,
        F16 => run_kind::<F16>,
        _ => run_kind::<F32>,
    };
    f(w, rb, m, kd, x, rows, tokens, bias, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::Isa;

    fn weights(k: u8, rows: usize, kd: usize) -> (Vec<u8>, Vec<f64>) {
        let v = |i: usize| {
            (((i * 7919) % 2003) as f32 - 1001.0) / 997.0 * 2f32.powi((i % 9) as i32 - 4)
        };
        let (mut bytes, mut vals) = (Vec::new(), Vec::new());
        for i in 0..rows * kd {
            let x = v(i);
            let (b, back): (Vec<u8>, f32) = match k {
                BF16 => {
                    let h = half::bf16::from_f32(x);
                    (h.to_le_bytes().to_vec(), h.to_f32())
                }
                F16 => {
                    let h = half::f16::from_f32(x);
                    (h.to_le_bytes().to_vec(), h.to_f32())
                }
                _ => (x.to_le_bytes().to_vec(), x),
            };
            bytes.extend(b);
            vals.push(back as f64);
        }
        (bytes, vals)
    }

    /// Every kind, rows not a multiple of 4, columns not a multiple of 16, every tile size:
    /// against an f64 sum of the widened values, and each token's row bit for bit the same
    /// whether it is computed alone or among 13 tokens.
    #[test]
    fn float_tiles_match_the_f64_sum_and_ignore_the_batch() {
        if !Isa::available().contains(&Isa::Avx512) {
            eprintln!("no AVX-512 on this CPU: nothing to test");
            return;
        }
        let (rows, n) = (23, 13);
        for k in [BF16, F16, F32] {
            for kd in [16, 37, 96, 300] {
                let (w, wv) = weights(k, rows, kd);
                let rb = kd * elem_bytes(k);
                let x: Vec<f32> = (0..n * kd)
                    .map(|i| ((i * 31 % 97) as f32 - 48.0) / 17.0)
                    .collect();
                let bias: Vec<f32> = (0..rows).map(|r| r as f32 * 0.25 - 2.0).collect();
                let mut all = vec![f32::NAN; n * rows];
                unsafe {
                    run(
                        k,
                        w.as_ptr(),
                        rb,
                        rows,
                        kd,
                        x.as_ptr(),
                        0..rows,
                        0..n,
                        Some(&bias),
                        all.as_mut_ptr(),
                    )
                };
                for t in 0..n {
                    let mut one = vec![f32::NAN; n * rows];
                    // Rows in two ranges, as two threads' pieces would take them.
                    unsafe {
                        run(
                            k,
                            w.as_ptr(),
                            rb,
                            rows,
                            kd,
                            x.as_ptr(),
                            0..8,
                            t..t + 1,
                            Some(&bias),
                            one.as_mut_ptr(),
                        );
                        run(
                            k,
                            w.as_ptr(),
                            rb,
                            rows,
                            kd,
                            x.as_ptr(),
                            8..rows,
                            t..t + 1,
                            Some(&bias),
                            one.as_mut_ptr(),
                        );
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
                            "kind {k} kd {kd} row {r} token {t}: {got} vs {want}"
                        );
                        assert_eq!(
                            got.to_bits(),
                            one[t * rows + r].to_bits(),
                            "kind {k} kd {kd} row {r} token {t}: alone differs from batched"
                        );
                    }
                }
            }
        }
    }
}
