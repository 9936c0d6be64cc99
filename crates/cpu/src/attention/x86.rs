//! The attention block loops with AVX2 and AVX-512, for up to `HEADS` query heads at once: each
//! K row and V row is loaded (and converted from F16) once and meets every head, whose sums are
//! independent chains (one accumulator alone would wait on each FMA's latency); with AVX-512 the
//! heads' softmax steps run side by side too. Inlined into callers built with the features.

use super::{BlockOps, Portable, Q8Tile, Softmax, Tile, BLOCK, HEADS};
use std::arch::x86_64::*;

pub struct Avx2;
pub struct Avx512;

/// Loading 16 (AVX-512) or 8 (AVX2) cache values as f32.
trait Elem: Copy {
    unsafe fn load16(p: *const Self) -> __m512;
    unsafe fn load8(p: *const Self) -> __m256;
}

impl Elem for f32 {
    #[inline(always)]
    unsafe fn load16(p: *const f32) -> __m512 {
        _mm512_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn load8(p: *const f32) -> __m256 {
        _mm256_loadu_ps(p)
    }
}

impl Elem for half::f16 {
    #[inline(always)]
    unsafe fn load16(p: *const half::f16) -> __m512 {
        _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
    }
    #[inline(always)]
    unsafe fn load8(p: *const half::f16) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }
}

const _: () = assert!(HEADS == 8 && BLOCK == 16);

impl BlockOps for Avx512 {
    #[inline(always)]
    fn scores(q: &[f32], kt: Tile<'_>, s: &mut [[f32; BLOCK]]) {
        let g = s.len();
        by_heads!(
            scores512,
            |t: Q8Tile<'_>| by_heads!(@q8 scores512_q8, g, (q, t, s)),
            g,
            kt,
            |t| (q, t, s)
        )
    }

    #[inline(always)]
    fn softmax(sm: Softmax<'_>, h0: usize, p: usize, s: &mut [[f32; BLOCK]]) {
        match s.len() {
            1 => softmax512::<1>(sm, h0, p, s),
            2 => softmax512::<2>(sm, h0, p, s),
            3 => softmax512::<3>(sm, h0, p, s),
            4 => softmax512::<4>(sm, h0, p, s),
            5 => softmax512::<5>(sm, h0, p, s),
            6 => softmax512::<6>(sm, h0, p, s),
            7 => softmax512::<7>(sm, h0, p, s),
            _ => softmax512::<8>(sm, h0, p, s),
        }
    }

    #[inline(always)]
    fn accumulate(acc: &mut [f32], w: &[[f32; BLOCK]], n: usize, vt: Tile<'_>) {
        let g = w.len();
        by_heads!(
            accumulate512,
            |t: Q8Tile<'_>| by_heads!(@q8 accumulate512_q8, g, (acc, w, n, t)),
            g,
            vt,
            |t| (acc, w, n, t)
        )
    }
}

/// `vmath::exp` on 16 lanes, the same operations in the same order (so the same bits): plain
/// loops compile it one row at a time, each row's chain of ~20 dependent operations waiting on
/// the last; here a group's rows run side by side.
#[inline(always)]
unsafe fn exp512(x: __m512) -> __m512 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const ROUND: f32 = 12_582_912.0;
    // Plain intrinsics, no closures: a closure is a function of its own, without the caller's
    // target features, and its intrinsics stay calls unless LLVM inlines it first.
    let c = _mm512_set1_ps;
    // `f32::clamp`: NaN passes through, as there.
    let x = _mm512_min_ps(_mm512_max_ps(x, c(-87.0)), c(88.0));
    let shifted = _mm512_add_ps(_mm512_mul_ps(x, c(LOG2E)), c(ROUND));
    let n = _mm512_sub_ps(shifted, c(ROUND));
    let ni = _mm512_sub_epi32(
        _mm512_castps_si512(shifted),
        _mm512_set1_epi32(ROUND.to_bits() as i32),
    );
    let r = _mm512_sub_ps(
        _mm512_sub_ps(x, _mm512_mul_ps(n, c(LN2_HI))),
        _mm512_mul_ps(n, c(LN2_LO)),
    );
    // 1 + r(1 + r(1/2 + r(1/6 + r(1/24 + r(1/120 + r/720))))), innermost first.
    let mut p = _mm512_add_ps(c(1.0 / 120.0), _mm512_mul_ps(r, c(1.0 / 720.0)));
    for k in [1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = _mm512_add_ps(c(k), _mm512_mul_ps(r, p));
    }
    let scale = _mm512_slli_epi32::<23>(_mm512_add_epi32(ni, _mm512_set1_epi32(127)));
    _mm512_mul_ps(p, _mm512_castsi512_ps(scale))
}

/// `softmax_rows` for a group of `G` rows, each row's operations as there (the same bits), the
/// rows interleaved: the scores' max as a vector reduction, the exps side by side.
#[inline(always)]
fn softmax512<const G: usize>(sm: Softmax<'_>, h0: usize, p: usize, s: &mut [[f32; BLOCK]]) {
    assert!(s.len() == G && h0 + G <= sm.span.len() && (h0 + G) * sm.hd <= sm.acc.len());
    // SAFETY: callers are built with AVX-512F; `s` holds G rows of 16 (asserted).
    unsafe {
        let mut keep = [0u16; G];
        let mut sv = [_mm512_setzero_ps(); G];
        let mut m_new = [0f32; G];
        for h in 0..G {
            let (start, len) = sm.span[h0 + h];
            let (skip, n) = (start.saturating_sub(p), BLOCK.min(len.saturating_sub(p)));
            // Lanes skip..n.
            keep[h] = ((1u32 << n) - 1) as u16 & !(((1u32 << skip.min(BLOCK)) - 1) as u16);
            let x = _mm512_mul_ps(_mm512_loadu_ps(s[h].as_ptr()), _mm512_set1_ps(sm.scale));
            sv[h] = _mm512_mask_mov_ps(_mm512_set1_ps(f32::NEG_INFINITY), keep[h], x);
            m_new[h] = sm.m[h0 + h].max(_mm512_reduce_max_ps(sv[h]));
        }
        let mut e = [_mm512_setzero_ps(); G];
        for h in 0..G {
            e[h] = _mm512_maskz_mov_ps(
                keep[h],
                exp512(_mm512_sub_ps(sv[h], _mm512_set1_ps(m_new[h]))),
            );
        }
        let hd = sm.hd;
        for h in 0..G {
            let r = h0 + h;
            let mut l = _mm512_loadu_ps(sm.l[r].as_ptr());
            if m_new[h] > sm.m[r] {
                let corr = if sm.m[r] == f32::NEG_INFINITY {
                    0.0
                } else {
                    super::exp_neg(sm.m[r] - m_new[h])
                };
                l = _mm512_mul_ps(l, _mm512_set1_ps(corr));
                sm.acc[r * hd..(r + 1) * hd]
                    .iter_mut()
                    .for_each(|x| *x *= corr);
                sm.m[r] = m_new[h];
            }
            _mm512_storeu_ps(sm.l[r].as_mut_ptr(), _mm512_add_ps(l, e[h]));
            _mm512_storeu_ps(s[h].as_mut_ptr(), e[h]);
        }
    }
}

/// 16 quants → f32.
#[inline(always)]
unsafe fn i8x16(p: *const i8) -> __m512 {
    _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p as *const __m128i)))
}

/// Scores from a Q8 K tile: per 32 dimensions, integer-valued partial sums then the 16
/// positions' scales.
#[inline(always)]
fn scores512_q8<const G: usize>(q: &[f32], t: Q8Tile<'_>, s: &mut [[f32; BLOCK]]) {
    let hd = t.hd;
    assert!(s.len() == G && q.len() == G * hd && t.q.len() >= hd * BLOCK);
    assert!(hd.is_multiple_of(32) && t.d.len() >= hd / 32 * BLOCK);
    // SAFETY: callers are built with AVX-512F/F16C; loads stay inside the tile (asserted).
    unsafe {
        let mut total = [_mm512_setzero_ps(); G];
        for c in 0..hd / 32 {
            let mut acc = [_mm512_setzero_ps(); G];
            for d in c * 32..c * 32 + 32 {
                let k = i8x16(t.q.as_ptr().add(d * BLOCK));
                for (h, a) in acc.iter_mut().enumerate() {
                    *a = _mm512_fmadd_ps(_mm512_set1_ps(*q.get_unchecked(h * hd + d)), k, *a);
                }
            }
            let sc = half::f16::load16(t.d.as_ptr().add(c * BLOCK));
            for (tt, a) in total.iter_mut().zip(acc) {
                *tt = _mm512_fmadd_ps(a, sc, *tt);
            }
        }
        for (a, o) in total.iter().zip(s.iter_mut()) {
            _mm512_storeu_ps(o.as_mut_ptr(), *a);
        }
    }
}

/// Weighted V rows from a Q8 V tile: each 16-value piece of a row is scaled once, then meets
/// every head.
#[inline(always)]
fn accumulate512_q8<const G: usize>(acc: &mut [f32], w: &[[f32; BLOCK]], n: usize, t: Q8Tile<'_>) {
    let hd = t.hd;
    assert!(w.len() == G && acc.len() == G * hd && n <= BLOCK && hd.is_multiple_of(32));
    assert!(t.q.len() >= n * hd && t.d.len() >= n * hd / 32);
    // SAFETY: as above.
    unsafe {
        let o = acc.as_mut_ptr();
        for c in (0..hd).step_by(16) {
            let mut r = [_mm512_setzero_ps(); G];
            for (h, x) in r.iter_mut().enumerate() {
                *x = _mm512_loadu_ps(o.add(h * hd + c));
            }
            for i in 0..n {
                let scale = t.d.get_unchecked(i * (hd / 32) + c / 32).to_f32();
                let v = _mm512_mul_ps(i8x16(t.q.as_ptr().add(i * hd + c)), _mm512_set1_ps(scale));
                for (h, x) in r.iter_mut().enumerate() {
                    *x = _mm512_fmadd_ps(_mm512_set1_ps(w.get_unchecked(h)[i]), v, *x);
                }
            }
            for (h, x) in r.iter().enumerate() {
                _mm512_storeu_ps(o.add(h * hd + c), *x);
            }
        }
    }
}

#[inline(always)]
fn scores512<const G: usize, E: Elem>(q: &[f32], kt: &[E], s: &mut [[f32; BLOCK]]) {
    let hd = q.len() / G;
    assert!(s.len() == G && q.len() == G * hd && kt.len() >= hd * BLOCK);
    // SAFETY: callers are built with AVX-512F/F16C; loads stay inside `kt` and `q` (asserted).
    unsafe {
        let mut acc = [_mm512_setzero_ps(); G];
        // One pointer per head, so that each broadcast is an addressing mode (no index
        // arithmetic per head and dimension).
        let qh: [*const f32; G] = std::array::from_fn(|h| q.as_ptr().add(h * hd));
        for d in 0..hd {
            let k = E::load16(kt.as_ptr().add(d * BLOCK));
            for (a, p) in acc.iter_mut().zip(&qh) {
                *a = _mm512_fmadd_ps(_mm512_set1_ps(*p.add(d)), k, *a);
            }
        }
        for (a, o) in acc.iter().zip(s.iter_mut()) {
            _mm512_storeu_ps(o.as_mut_ptr(), *a);
        }
    }
}

#[inline(always)]
fn accumulate512<const G: usize, E: Elem>(acc: &mut [f32], w: &[[f32; BLOCK]], n: usize, vt: &[E]) {
    let hd = acc.len() / G;
    assert!(w.len() == G && acc.len() == G * hd && n <= BLOCK && vt.len() >= n * hd);
    // SAFETY: as above; c + 16 ≤ hd and i < n keep every access in bounds.
    unsafe {
        let o = acc.as_mut_ptr();
        let mut c = 0;
        // Two 16-column pieces at once: 2G independent chains (G alone wait on the FMA's
        // latency); each sum still runs over the positions in order.
        let wp = w.as_ptr() as *const f32;
        while c + 32 <= hd {
            let mut r = [_mm512_setzero_ps(); G];
            let mut r2 = [_mm512_setzero_ps(); G];
            for h in 0..G {
                r[h] = _mm512_loadu_ps(o.add(h * hd + c));
                r2[h] = _mm512_loadu_ps(o.add(h * hd + c + 16));
            }
            for i in 0..n {
                let v = E::load16(vt.as_ptr().add(i * hd + c));
                let v2 = E::load16(vt.as_ptr().add(i * hd + c + 16));
                for h in 0..G {
                    let wi = _mm512_set1_ps(*wp.add(h * BLOCK + i));
                    r[h] = _mm512_fmadd_ps(wi, v, r[h]);
                    r2[h] = _mm512_fmadd_ps(wi, v2, r2[h]);
                }
            }
            for h in 0..G {
                _mm512_storeu_ps(o.add(h * hd + c), r[h]);
                _mm512_storeu_ps(o.add(h * hd + c + 16), r2[h]);
            }
            c += 32;
        }
        while c + 16 <= hd {
            let mut r = [_mm512_setzero_ps(); G];
            for (h, x) in r.iter_mut().enumerate() {
                *x = _mm512_loadu_ps(o.add(h * hd + c));
            }
            // Weight (h, i) at a constant offset from one pointer per i (no address
            // arithmetic per head).
            for i in 0..n {
                let v = E::load16(vt.as_ptr().add(i * hd + c));
                for (h, x) in r.iter_mut().enumerate() {
                    *x = _mm512_fmadd_ps(_mm512_set1_ps(*wp.add(h * BLOCK + i)), v, *x);
                }
            }
            for (h, x) in r.iter().enumerate() {
                _mm512_storeu_ps(o.add(h * hd + c), *x);
            }
            c += 16;
        }
        tail(acc, w, n, vt, hd, c);
    }
}

/// Columns past the last full vector (head sizes that are not a multiple of the width).
#[inline(always)]
fn tail<E: Elem>(acc: &mut [f32], w: &[[f32; BLOCK]], n: usize, vt: &[E], hd: usize, c: usize) {
    if c == hd {
        return;
    }
    let tile = |i: usize| -> f32 {
        // SAFETY: only reached for f32 or f16 tiles, both plain 4- or 2-byte values.
        unsafe {
            if std::mem::size_of::<E>() == 4 {
                *(vt.as_ptr().add(i) as *const f32)
            } else {
                (*(vt.as_ptr().add(i) as *const half::f16)).to_f32()
            }
        }
    };
    for (h, wh) in w.iter().enumerate() {
        for (i, wi) in wh.iter().enumerate().take(n) {
            for j in c..hd {
                acc[h * hd + j] += wi * tile(i * hd + j);
            }
        }
    }
}

impl BlockOps for Avx2 {
    #[inline(always)]
    fn scores(q: &[f32], kt: Tile<'_>, s: &mut [[f32; BLOCK]]) {
        // Q8 tiles: the portable loops (vectorized by the compiler in this build).
        by_heads!(
            scores256,
            |_: Q8Tile<'_>| Portable::scores(q, kt, s),
            s.len(),
            kt,
            |t| (q, t, s)
        )
    }

    #[inline(always)]
    fn accumulate(acc: &mut [f32], w: &[[f32; BLOCK]], n: usize, vt: Tile<'_>) {
        by_heads!(
            accumulate256,
            |_: Q8Tile<'_>| Portable::accumulate(acc, w, n, vt),
            w.len(),
            vt,
            |t| (acc, w, n, t)
        )
    }
}

#[inline(always)]
fn scores256<const G: usize, E: Elem>(q: &[f32], kt: &[E], s: &mut [[f32; BLOCK]]) {
    let hd = q.len() / G;
    assert!(s.len() == G && q.len() == G * hd && kt.len() >= hd * BLOCK);
    // SAFETY: callers are built with AVX2/FMA/F16C; loads stay inside `kt` and `q`.
    unsafe {
        // Each half of the block (8 positions) on its own: G chains of 8 lanes.
        for half in 0..2 {
            let mut acc = [_mm256_setzero_ps(); G];
            for d in 0..hd {
                let k = E::load8(kt.as_ptr().add(d * BLOCK + 8 * half));
                for (h, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(_mm256_set1_ps(*q.get_unchecked(h * hd + d)), k, *a);
                }
            }
            for (a, o) in acc.iter().zip(s.iter_mut()) {
                _mm256_storeu_ps(o.as_mut_ptr().add(8 * half), *a);
            }
        }
    }
}

#[inline(always)]
fn accumulate256<const G: usize, E: Elem>(acc: &mut [f32], w: &[[f32; BLOCK]], n: usize, vt: &[E]) {
    let hd = acc.len() / G;
    assert!(w.len() == G && acc.len() == G * hd && n <= BLOCK && vt.len() >= n * hd);
    // SAFETY: as above.
    unsafe {
        let o = acc.as_mut_ptr();
        let mut c = 0;
        while c + 8 <= hd {
            let mut r = [_mm256_setzero_ps(); G];
            for (h, x) in r.iter_mut().enumerate() {
                *x = _mm256_loadu_ps(o.add(h * hd + c));
            }
            for i in 0..n {
                let v = E::load8(vt.as_ptr().add(i * hd + c));
                for (h, x) in r.iter_mut().enumerate() {
                    *x = _mm256_fmadd_ps(_mm256_set1_ps(w.get_unchecked(h)[i]), v, *x);
                }
            }
            for (h, x) in r.iter().enumerate() {
                _mm256_storeu_ps(o.add(h * hd + c), *x);
            }
            c += 8;
        }
        tail(acc, w, n, vt, hd, c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[target_feature(enable = "avx512f")]
    unsafe fn exp16(x: &[f32; 16]) -> [f32; 16] {
        let mut out = [0f32; 16];
        _mm512_storeu_ps(out.as_mut_ptr(), exp512(_mm512_loadu_ps(x.as_ptr())));
        out
    }

    /// The vector exp of the softmax steps gives the scalar one's bits (so AVX-512 rows still
    /// equal what the row-by-row steps computed), clamped ends and -inf included.
    #[test]
    fn exp512_equals_the_scalar_exp() {
        if !crate::kernels::Isa::available().contains(&crate::kernels::Isa::Avx512) {
            eprintln!("no AVX-512 here: exp512 is not tested");
            return;
        }
        let mut xs: Vec<f32> = (0..200_000).map(|i| -(i as f32) * 0.000_61).collect();
        xs.extend([
            0.0,
            -0.0,
            -86.9,
            -87.0,
            -87.1,
            -1e30,
            f32::NEG_INFINITY,
            1.5,
            87.9,
            100.0,
        ]);
        xs.resize(xs.len().div_ceil(16) * 16, 0.0);
        for c in xs.chunks_exact(16) {
            let x: [f32; 16] = c.try_into().unwrap();
            // SAFETY: the CPU has AVX-512 F (checked above).
            let got = unsafe { exp16(&x) };
            for (g, v) in got.iter().zip(x) {
                assert_eq!(g.to_bits(), crate::vmath::exp(v).to_bits(), "exp({v})");
            }
        }
    }
}
