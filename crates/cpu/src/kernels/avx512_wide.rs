//! Groups unpacked once for many tokens (`widen`): from `wide_from` tokens the AVX-512 VNNI
//! kernels unpack a group of 16 rows into a thread's scratch and run register tiles of 8 over
//! it (`wide_tokens`), instead of unpacking it again for every tile; and the gated MLP's two
//! products on VNNI, group by group (`gated_body`), which meet in those tiles.

use super::avx512_packed::{
    in_whole_tile, prefetch_ahead, prefetch_far, tile, vnni_tokens, MAX_TILE,
};
use super::avx512_sub::unpack;
use super::packed_kinds::*;
use super::pacts::PActs;
use crate::packed::{Kind, Packed, ROWS};
use crate::vmath::silu_mul_plain;
use std::arch::x86_64::*;

/// Tokens from which a group of kind `k` is unpacked once (`widen`) for all of them, and
/// register tiles of 8 load the unpacked registers (a whole tile's tokens from `a.tiles`), where
/// L1-accumulator tiles of 16 unpacked it once per 16 tokens and paid a load and a store of
/// each token's accumulators per sub-block. Intel Xeon (Emerald Rapids, AVX-512 VNNI),
/// `matmul_probe` 4864 × 896, alternating, G MAC/s: 512 tokens 1 thread Q5_0 184–192 →
/// 229–232, Q4_1 165–170 → 190–204, Q5_1 155–159 → 194–207; 1 thread in cache Q5_0 32 tokens
/// 202 → 206, 48 tokens 202 → 220 (16 tokens 201 → 177); 2 threads streamed (`COPIES=40`) 32
/// tokens 374–379 → 379–381, 64 tokens 380 → 417–420, 128 tokens 380 → 444 (16 tokens
/// 380 → 317–335: the widening waits on memory before any product, where an L1 tile's
/// unpacking overlaps it). Not Q6_K (896 × 4864, 512 tokens: 134–136 either way, with tiles
/// of 7 or without `a.tiles` too) nor Q4_K (163–167 → 143–157).
pub(super) const fn wide_from(k: u8) -> usize {
    match k {
        Q5_0 | Q5_1 | Q4_1 => 32,
        _ => usize::MAX,
    }
}

/// Whether products of `kind` with `n` tokens widen their groups (`wide_from`).
pub fn widens(kind: Kind, n: usize) -> bool {
    wide_from(id(kind)) <= n
}

/// Bytes of one unpacked sub-block: `unpack`'s 8 registers.
pub(super) const WIDE_SUB: usize = 8 * 64;

/// A widened superblock's head: the packed head, padded to whole lines so that every
/// unpacked register lies on one.
pub(super) const fn wide_head(kd: Kind) -> usize {
    kd.head_bytes().div_ceil(64) * 64
}

pub(super) const fn wide_sb_bytes(kd: Kind) -> usize {
    wide_head(kd) + kd.sb_cols() / 32 * WIDE_SUB
}

#[inline(always)]
pub(super) unsafe fn load_wide(p: *const u8) -> [__m512i; 8] {
    std::array::from_fn(|g| _mm512_load_si512(p.add(64 * g) as *const _))
}

/// The groups at `grps` (`nsb` superblocks each) into `dsts`: each superblock's head as packed,
/// then its sub-blocks unpacked (`unpack`'s registers as they are). Several groups (the gated
/// products' gate and up) advance together, so that each stream's requests ahead stay as far
/// ahead as in one (one after the other, each group's first lines were never asked for early).
#[inline(always)]
unsafe fn widen<const K: u8, const GF: bool, const N: usize>(
    grps: [*const u8; N],
    nsb: usize,
    dsts: [*mut u8; N],
) {
    let kd = kind(K);
    let (sbb, head, nsub) = (kd.sb_bytes(), kd.head_bytes(), kd.sb_cols() / 32);
    for sb in 0..nsb {
        for (grp, dst) in grps.iter().zip(dsts) {
            let h = grp.add(sb * sbb);
            let o = dst.add(sb * wide_sb_bytes(kd));
            std::ptr::copy_nonoverlapping(h, o, head);
            for j in 0..nsub {
                let p = h.add(head + j * kd.sub_bytes());
                prefetch_ahead::<K>(p);
                prefetch_far::<K>(p);
                let w = unpack::<K, GF>(p);
                let wo = o.add(wide_head(kd) + j * WIDE_SUB);
                for (g, v) in w.iter().enumerate() {
                    _mm512_store_si512(wo.add(64 * g) as *mut _, *v);
                }
            }
        }
    }
}

/// A thread's widened groups (`wide_tokens`, `gated_body`), on whole lines.
#[derive(Default)]
struct WideScratch(Vec<__m512i>);

thread_local! {
    static WIDE_SCRATCH: std::cell::RefCell<WideScratch> = Default::default();
}

/// This thread's scratch, at least `bytes` long (valid until its next call on this thread).
fn wide_scratch(bytes: usize) -> *mut u8 {
    WIDE_SCRATCH.with(|s| {
        let v = &mut s.borrow_mut().0;
        if v.len() * 64 < bytes {
            // SAFETY: a zero vector is a valid __m512i on every CPU (no instruction runs).
            v.resize(bytes.div_ceil(64), unsafe { std::mem::zeroed() });
        }
        v.as_mut_ptr() as *mut u8
    })
}

/// `vnni_tokens` for `wide_from(K)` tokens or more: the group unpacked once into this thread's
/// scratch, then register tiles of up to 8 tokens load it.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn wide_tokens<const K: u8, const GF: bool>(
    grp: *const u8,
    nsb: usize,
    a: &PActs,
    tokens: std::ops::Range<usize>,
    out: *mut f32,
    m: usize,
    valid: usize,
    bias: Option<&[f32]>,
) {
    let w = wide_scratch(nsb * wide_sb_bytes(kind(K)));
    widen::<K, GF, 1>([grp], nsb, [w]);
    for (t, size) in even_tiles(tokens, MAX_TILE) {
        wide_tile::<K, GF>(w, nsb, a, t, size, out.add(t * m), m, valid, bias);
    }
}

/// One register tile of `size` ≤ 8 tokens from `t` over a widened group at `w` (a whole tile's
/// tokens read from `a.tiles`).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn wide_tile<const K: u8, const GF: bool>(
    w: *const u8,
    nsb: usize,
    a: &PActs,
    t: usize,
    size: usize,
    out: *mut f32,
    m: usize,
    valid: usize,
    bias: Option<&[f32]>,
) {
    if size == MAX_TILE && in_whole_tile(a, t, size) {
        return tile::<K, MAX_TILE, false, GF, true, true>(w, nsb, a, t, out, m, valid, bias);
    }
    match size {
        1 => tile::<K, 1, false, GF, false, true>(w, nsb, a, t, out, m, valid, bias),
        2 => tile::<K, 2, false, GF, false, true>(w, nsb, a, t, out, m, valid, bias),
        3 => tile::<K, 3, false, GF, false, true>(w, nsb, a, t, out, m, valid, bias),
        4 => tile::<K, 4, false, GF, false, true>(w, nsb, a, t, out, m, valid, bias),
        5 => tile::<K, 5, false, GF, false, true>(w, nsb, a, t, out, m, valid, bias),
        6 => tile::<K, 6, false, GF, false, true>(w, nsb, a, t, out, m, valid, bias),
        7 => tile::<K, 7, false, GF, false, true>(w, nsb, a, t, out, m, valid, bias),
        _ => tile::<K, MAX_TILE, false, GF, false, true>(w, nsb, a, t, out, m, valid, bias),
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn gated_vnni<const K: u8>(
    gate: &Packed,
    up: &Packed,
    a: &PActs,
    groups: std::ops::Range<usize>,
    tokens: std::ops::Range<usize>,
    out: *mut f32,
    up_rest: *mut f32,
) {
    gated_body::<K, false>(gate, up, a, groups, tokens, out, up_rest)
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c,gfni")]
pub(super) unsafe fn gated_vnni_gfni<const K: u8>(
    gate: &Packed,
    up: &Packed,
    a: &PActs,
    groups: std::ops::Range<usize>,
    tokens: std::ops::Range<usize>,
    out: *mut f32,
    up_rest: *mut f32,
) {
    gated_body::<K, true>(gate, up, a, groups, tokens, out, up_rest)
}

/// The gated products group by group on VNNI. Widened groups (`wide_from`): each register
/// tile of the gate and of the up product into the stack, combined there and written once.
/// Otherwise the group's gate sums go to `out` and its up sums to `up_rest`, and are combined
/// while the group's columns are still in cache.
#[inline(always)]
unsafe fn gated_body<const K: u8, const GF: bool>(
    gate: &Packed,
    up: &Packed,
    a: &PActs,
    groups: std::ops::Range<usize>,
    tokens: std::ops::Range<usize>,
    out: *mut f32,
    up_rest: *mut f32,
) {
    let nsb = gate.cols / kind(K).sb_cols();
    let m = gate.rows;
    let wide = wide_from(K) <= tokens.len();
    let wb = nsb * wide_sb_bytes(kind(K));
    let (wg, wu) = match wide {
        true => {
            let wg = wide_scratch(2 * wb);
            (wg, wg.add(wb))
        }
        false => (std::ptr::null_mut(), std::ptr::null_mut()),
    };
    for g in groups {
        let r0 = g * ROWS;
        let valid = (m - r0).min(ROWS);
        let (gg, ug) = (gate.group(g).as_ptr(), up.group(g).as_ptr());
        if wide {
            widen::<K, GF, 2>([gg, ug], nsb, [wg, wu]);
            let mut sums = GatedSums([[0.0; MAX_TILE * ROWS]; 2]);
            for (t, size) in even_tiles(tokens.clone(), MAX_TILE) {
                let [gs, us] = &mut sums.0;
                wide_tile::<K, GF>(wg, nsb, a, t, size, gs.as_mut_ptr(), ROWS, ROWS, None);
                wide_tile::<K, GF>(wu, nsb, a, t, size, us.as_mut_ptr(), ROWS, ROWS, None);
                for i in 0..size {
                    let o = std::slice::from_raw_parts_mut(out.add((t + i) * m + r0), valid);
                    silu_mul_plain(&gs[i * ROWS..][..valid], &us[i * ROWS..][..valid], o);
                }
            }
            continue;
        }
        vnni_tokens::<K, GF>(gg, nsb, a, tokens.clone(), out.add(r0), m, valid, None);
        vnni_tokens::<K, GF>(ug, nsb, a, tokens.clone(), up_rest.add(r0), m, valid, None);
        silu_mul_in_place(out, up_rest, tokens.clone(), m, r0, valid);
    }
}

/// Two register tiles' sums (gate, up), on whole lines.
#[repr(C, align(64))]
struct GatedSums([[f32; MAX_TILE * ROWS]; 2]);

/// out = silu(out) · up over rows `r0..r0 + valid` of tokens `tokens` (both `[n, m]`).
pub(super) unsafe fn silu_mul_in_place(
    out: *mut f32,
    up: *const f32,
    tokens: std::ops::Range<usize>,
    m: usize,
    r0: usize,
    valid: usize,
) {
    for t in tokens {
        let mut gs = [0.0f32; ROWS];
        let o = std::slice::from_raw_parts_mut(out.add(t * m + r0), valid);
        gs[..valid].copy_from_slice(o);
        let us = std::slice::from_raw_parts(up.add(t * m + r0), valid);
        silu_mul_plain(&gs[..valid], us, o);
    }
}

#[cfg(test)]
mod tests {
    use super::super::avx512_packed::{run, run_gated};
    use super::*;
    use crate::kernels::Isa;
    use crate::pool::Pool;
    use crate::testutil::packed_case;

    /// The gated products on VNNI (`run_gated` without AMX) are `silu_mul` of the two
    /// products bit for bit, for every packed kind: a partial group; token counts through the
    /// register tiles, the L1-accumulator tiles and the widened groups (2, 7, 16; 37, and the
    /// kinds of `wide_from` widened); chunks that start past token 0 at whole tiles of 16, as
    /// `matmul::packed_gated` cuts them (48 as 16 + 32, 80 as 32 + 48).
    #[test]
    fn vnni_gated_products_equal_silu_of_the_two_products() {
        if !Isa::available().contains(&Isa::Avx512) {
            eprintln!("no AVX-512 VNNI on this CPU: nothing to test");
            return;
        }
        let pool = Pool::new(2).unwrap();
        let rows = 37;
        // (tokens, where the second chunk starts)
        for (n, cut) in [(2, 2), (7, 7), (16, 16), (37, 37), (48, 16), (80, 32)] {
            for ty in suanli_core::DType::ALL {
                let Some(kd) = Kind::of(ty) else { continue };
                let cols = 1024;
                if cols % kd.sb_cols() != 0 {
                    continue;
                }
                let (_, gate, a, _) = packed_case(&pool, ty, (rows, cols, n), 5);
                let (_, up, _, _) = packed_case(&pool, ty, (rows, cols, n), 9);
                let mut g = vec![0f32; n * rows];
                let mut u = vec![0f32; n * rows];
                let mut want = vec![0f32; n * rows];
                let mut got = vec![f32::NAN; n * rows];
                let mut rest = vec![f32::NAN; n * rows];
                let all = 0..gate.groups();
                // SAFETY: AVX-512 VNNI (checked above); every output holds n × rows.
                unsafe {
                    run(&gate, &a, all.clone(), 0..n, None, g.as_mut_ptr(), false);
                    run(&up, &a, all.clone(), 0..n, None, u.as_mut_ptr(), false);
                    for ts in [0..cut, cut..n] {
                        let (o, r) = (got.as_mut_ptr(), rest.as_mut_ptr());
                        run_gated(&gate, &up, &a, all.clone(), ts, o, r, false);
                    }
                }
                silu_mul_plain(&g, &u, &mut want);
                for (i, (w, v)) in want.iter().zip(&got).enumerate() {
                    assert!(
                        w.to_bits() == v.to_bits(),
                        "{kd:?} {n} tokens, token {} row {}: silu_mul {w} gated {v}",
                        i / rows,
                        i % rows
                    );
                }
            }
        }
    }
}
