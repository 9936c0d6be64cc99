//! The attention block loops with NEON, for up to `HEADS` query heads at once (as `x86.rs`'s
//! AVX2 ones, 4 lanes a register): each K row and V row is loaded (and converted from F16) once
//! and meets every head, whose sums are independent chains of fused multiply-adds. The portable
//! loops did not vectorize here (the tile's type was matched per element): they ran one scalar
//! multiply-add at a time.

use super::{BlockOps, Portable, Q8Tile, Tile, BLOCK, HEADS};
use std::arch::aarch64::*;

pub struct Neon;

/// Loading 4 cache values as f32.
trait Elem: Copy {
    unsafe fn load4(p: *const Self) -> float32x4_t;
    fn f32(self) -> f32;
}

impl Elem for f32 {
    #[inline(always)]
    unsafe fn load4(p: *const f32) -> float32x4_t {
        vld1q_f32(p)
    }
    #[inline(always)]
    fn f32(self) -> f32 {
        self
    }
}

impl Elem for half::f16 {
    #[inline(always)]
    unsafe fn load4(p: *const half::f16) -> float32x4_t {
        vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p as *const u16)))
    }
    #[inline(always)]
    fn f32(self) -> f32 {
        self.to_f32()
    }
}

const _: () = assert!(HEADS == 8 && BLOCK == 16);

impl BlockOps for Neon {
    #[inline(always)]
    fn scores(q: &[f32], kt: Tile<'_>, s: &mut [[f32; BLOCK]]) {
        by_heads!(
            scores128,
            |_: Q8Tile<'_>| Portable::scores(q, kt, s),
            s.len(),
            kt,
            |t| (q, t, s)
        )
    }

    #[inline(always)]
    fn accumulate(acc: &mut [f32], w: &[[f32; BLOCK]], n: usize, vt: Tile<'_>) {
        by_heads!(
            accumulate128,
            |_: Q8Tile<'_>| Portable::accumulate(acc, w, n, vt),
            w.len(),
            vt,
            |t| (acc, w, n, t)
        )
    }
}

/// s[h][i] = q_h · K[:, i]: each half of the block (8 positions, two registers) on its own,
/// 2G chains.
#[inline(always)]
fn scores128<const G: usize, E: Elem>(q: &[f32], kt: &[E], s: &mut [[f32; BLOCK]]) {
    let hd = q.len() / G;
    assert!(s.len() == G && q.len() == G * hd && kt.len() >= hd * BLOCK);
    // SAFETY: NEON is part of aarch64; loads stay inside `kt` and `q`, stores inside `s`.
    unsafe {
        for half in 0..2 {
            let mut acc = [[vdupq_n_f32(0.0); 2]; G];
            for d in 0..hd {
                let p = kt.as_ptr().add(d * BLOCK + 8 * half);
                let k = [E::load4(p), E::load4(p.add(4))];
                for (h, a) in acc.iter_mut().enumerate() {
                    let qd = *q.get_unchecked(h * hd + d);
                    a[0] = vfmaq_n_f32(a[0], k[0], qd);
                    a[1] = vfmaq_n_f32(a[1], k[1], qd);
                }
            }
            for (a, o) in acc.iter().zip(s.iter_mut()) {
                vst1q_f32(o.as_mut_ptr().add(8 * half), a[0]);
                vst1q_f32(o.as_mut_ptr().add(8 * half + 4), a[1]);
            }
        }
    }
}

/// acc_h += Σ_{i < n} w[h][i] · V[i], 8 columns (two registers) at a time for every head.
#[inline(always)]
fn accumulate128<const G: usize, E: Elem>(acc: &mut [f32], w: &[[f32; BLOCK]], n: usize, vt: &[E]) {
    let hd = acc.len() / G;
    assert!(w.len() == G && acc.len() == G * hd && n <= BLOCK && vt.len() >= n * hd);
    // SAFETY: as above; column c + 8 ≤ hd.
    unsafe {
        let o = acc.as_mut_ptr();
        let mut c = 0;
        while c + 8 <= hd {
            let mut r = [[vdupq_n_f32(0.0); 2]; G];
            for (h, x) in r.iter_mut().enumerate() {
                *x = [
                    vld1q_f32(o.add(h * hd + c)),
                    vld1q_f32(o.add(h * hd + c + 4)),
                ];
            }
            for i in 0..n {
                let p = vt.as_ptr().add(i * hd + c);
                let v = [E::load4(p), E::load4(p.add(4))];
                for (h, x) in r.iter_mut().enumerate() {
                    let wi = w.get_unchecked(h)[i];
                    x[0] = vfmaq_n_f32(x[0], v[0], wi);
                    x[1] = vfmaq_n_f32(x[1], v[1], wi);
                }
            }
            for (h, x) in r.iter().enumerate() {
                vst1q_f32(o.add(h * hd + c), x[0]);
                vst1q_f32(o.add(h * hd + c + 4), x[1]);
            }
            c += 8;
        }
        // Columns past the last 8 (head dims not a multiple of 8).
        for (h, wh) in w.iter().enumerate() {
            for (i, wi) in wh.iter().enumerate().take(n) {
                for j in c..hd {
                    let x = &mut acc[h * hd + j];
                    *x = wi.mul_add(vt[i * hd + j].f32(), *x);
                }
            }
        }
    }
}
