//! The attention block loops with AVX2 and AVX-512, for up to `HEADS` query heads at once: each
//! K row and V row is loaded (and converted from F16) once and meets every head, whose sums are
//! independent chains (one accumulator alone would wait on each FMA's latency). Inlined into
//! callers built with the features.

use super::{BlockOps, Tile, BLOCK, HEADS};
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

/// Calls `$f::<G, E>(args)` with G = the number of heads (1..=HEADS) and E the tile's type.
macro_rules! by_heads {
    ($f:ident, $g:expr, $tile:expr, |$t:ident| ($($arg:expr),*)) => {
        match $tile {
            Tile::F32($t) => by_heads!(@g $f, f32, $g, ($($arg),*)),
            Tile::F16($t) => by_heads!(@g $f, half::f16, $g, ($($arg),*)),
        }
    };
    (@g $f:ident, $e:ty, $g:expr, ($($arg:expr),*)) => {
        match $g {
            1 => $f::<1, $e>($($arg),*),
            2 => $f::<2, $e>($($arg),*),
            3 => $f::<3, $e>($($arg),*),
            4 => $f::<4, $e>($($arg),*),
            5 => $f::<5, $e>($($arg),*),
            6 => $f::<6, $e>($($arg),*),
            7 => $f::<7, $e>($($arg),*),
            _ => $f::<8, $e>($($arg),*),
        }
    };
}

const _: () = assert!(HEADS == 8 && BLOCK == 16);

impl BlockOps for Avx512 {
    #[inline(always)]
    fn scores(q: &[f32], kt: Tile<'_>, s: &mut [[f32; BLOCK]]) {
        by_heads!(scores512, s.len(), kt, |t| (q, t, s))
    }

    #[inline(always)]
    fn accumulate(acc: &mut [f32], w: &[[f32; BLOCK]], n: usize, vt: Tile<'_>) {
        by_heads!(accumulate512, w.len(), vt, |t| (acc, w, n, t))
    }
}

#[inline(always)]
fn scores512<const G: usize, E: Elem>(q: &[f32], kt: &[E], s: &mut [[f32; BLOCK]]) {
    let hd = q.len() / G;
    assert!(s.len() == G && q.len() == G * hd && kt.len() >= hd * BLOCK);
    // SAFETY: callers are built with AVX-512F/F16C; loads stay inside `kt` and `q` (asserted).
    unsafe {
        let mut acc = [_mm512_setzero_ps(); G];
        for d in 0..hd {
            let k = E::load16(kt.as_ptr().add(d * BLOCK));
            for (h, a) in acc.iter_mut().enumerate() {
                *a = _mm512_fmadd_ps(_mm512_set1_ps(*q.get_unchecked(h * hd + d)), k, *a);
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
        while c + 16 <= hd {
            let mut r = [_mm512_setzero_ps(); G];
            for (h, x) in r.iter_mut().enumerate() {
                *x = _mm512_loadu_ps(o.add(h * hd + c));
            }
            for i in 0..n {
                let v = E::load16(vt.as_ptr().add(i * hd + c));
                for (h, x) in r.iter_mut().enumerate() {
                    *x = _mm512_fmadd_ps(_mm512_set1_ps(w.get_unchecked(h)[i]), v, *x);
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
        by_heads!(scores256, s.len(), kt, |t| (q, t, s))
    }

    #[inline(always)]
    fn accumulate(acc: &mut [f32], w: &[[f32; BLOCK]], n: usize, vt: Tile<'_>) {
        by_heads!(accumulate256, w.len(), vt, |t| (acc, w, n, t))
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
