//! Prefill attention on AMX BF16 tiles (`tdpbf16ps`): for 16 query rows at a time, the scores
//! of 32 cached positions (two blocks) come from the tile unit, the online softmax of each row
//! from the vector units (one row is two vectors), and the 16 rows' weighted V sums from the
//! tile unit again, added by it into the rows' f32 accumulators (loaded as tiles, multiplied
//! into, stored back).
//!
//! The scores come out in log2 units (Q is scaled by log2 e with the attention scale), so a
//! weight e^(s − m) is one `vscalefps` times a polynomial of the fraction, with no reduction by
//! ln 2, and of degree 4 (fitted, where Taylor's needs 5); the hi/lo split of the weights, in
//! their bits (`split_by_bits`), takes three fewer operations: 120 → 132 G/s
//! (`attention_probe` 4096 512, one thread, medians of 8 alternating runs).
//! The softmax rescales lazily: a row's weights are e^(s − m) for the largest score m seen when
//! it was last rescaled, and only a chunk whose scores pass m by more than `SLACK` rescales the
//! tile's accumulators and sums (so weights stay below e^SLACK; the result, Σ e^(s−m)·v over
//! Σ e^(s−m), is the same for any m). Almost every chunk after a row's first leaves them alone,
//! and the tile unit can add its sums in: the vector pass that rescaled and added 16 rows' sums
//! per chunk took ~19 % of the kernel (`attention_probe` 4096 512, 1 thread: 40.5 ms with it,
//! 33 ms without), since 64 tokens' accumulators do not stay in L1.
//!
//! Exact to about 2^-16 rather than bf16's 2^-8: every operand is split into a high bf16 and
//! the bf16 of what it leaves (`x ≈ hi + lo`, 16 significant bits; an F16 cache value is exactly
//! hi + lo), and each product is taken as hi·hi + hi·lo + lo·hi, the dropped lo·lo being
//! 2^-18 of it. Three tile multiplies where one would do cost ~10 % of this loop (measured by
//! dropping two: 73 → 82 G/s). Where the time goes on an Intel Xeon with AMX (one layer at
//! depth 4096, 512 tokens, one thread, 33 ms): tile work ~15 ms (the multiplies ~9; a
//! `tdpbf16ps` takes ~6 ns, and tile loads hide behind them), the softmax on the vector units
//! ~11 ms, converting K/V to bf16 ~3 ms; the two units take turns rather than overlap, so the
//! parts add up. Tried and slower: chunks of 64 positions (−8 %: K/V, scores and weights no
//! longer fit L1 beside the streams); runs of 16 or 32 tokens (more conversions). Measured
//! later by skipping it (real data kept in the buffers: these units run faster on zeros), the
//! conversion was ~13 % of the kernel at depth 4096 with runs of 64 tokens.
//!
//! Tiles (all 16 rows × 64 bytes): tmm0/tmm1 the scores of positions 0..16 / 16..32, tmm2/tmm3
//! two 16-column blocks of P·V, tmm4/tmm5 the A operand's hi/lo (Q, then P), tmm6/tmm7 the B
//! operand's hi/lo (K, then V) in the pair order `tdpbf16ps` reads: row r holds, per output
//! column, the values at k = 2r and 2r + 1.

use super::{tile_start, Job, Tile, BLOCK};
use crate::amx::bf16::{split, split_by_bits};
use crate::amx::{TileConfig, FULL};
use std::arch::asm;
use std::arch::x86_64::*;
use std::cell::RefCell;

/// Positions per softmax step: two cache blocks, the 32 k values of one P tile row.
const CHUNK: usize = 2 * BLOCK;
/// Most query tokens per unit (`super::TOKENS` on the f32 loops): the more rows a chunk of K/V
/// converted to bf16 serves, the less the conversion costs per row (16 → 64 tokens: +20 %;
/// 64 → 128 at depth 4096: +4 % on two threads, +5 % on one, 256 on one +6 %). At 128 a unit's
/// queries and accumulators stay within L2 even at head size 128 (~0.8 MiB for 6 heads).
pub const TOKENS: usize = 128;
/// u16 values in one tile (16 rows × 32 bf16).
const TILE: usize = 512;

/// Whether this process can run it: AMX tiles with BF16 and the AVX-512 BF16 conversions.
pub fn available() -> bool {
    crate::amx::Amx::new().is_ok_and(|a| a.bf16()) && is_x86_feature_detected!("avx512bf16")
}

/// Whether heads of size `hd` can go to the tiles (whole tile rows of 32 bf16).
pub fn takes(hd: usize) -> bool {
    hd.is_multiple_of(32)
}

/// Scratch, per thread: Q and the chunk's K and V as bf16 tiles, and one row tile's scores,
/// weights and P·V block.
#[derive(Default)]
struct Bufs {
    /// Q (scaled) hi and lo, `[rows rounded up to 16][hd]` bf16.
    qh: Lines,
    ql: Lines,
    /// K tiles: per half (block) of the chunk, per 32 dimensions, hi then lo.
    kb: Lines,
    /// V tiles: per 16 dimensions, hi then lo.
    vb: Lines,
    /// P hi and lo (one row tile).
    p: Lines,
    /// Scores (two 16 × 16 f32 blocks).
    s: Lines,
    /// The rows' weighted V sums, `[rows rounded up to 16][hd]` f32.
    acc: Lines,
    /// Per row: running max and sum.
    m: Vec<f32>,
    l: Vec<f32>,
}

/// Scratch memory in whole cache lines: a tile row is 64 bytes, and one that straddles two
/// lines makes every tile load slower (runs measured 32 vs 55 G/s by where the heap put them).
#[derive(Default)]
struct Lines(Vec<Line>);

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

impl Lines {
    /// Room for `n` values of `T`.
    fn grow<T>(&mut self, n: usize) {
        let lines = (n * std::mem::size_of::<T>()).div_ceil(64);
        if self.0.len() < lines {
            self.0.resize(lines, Line([0; 64]));
        }
    }

    fn at<T>(&self) -> *mut T {
        self.0.as_ptr() as *mut T
    }
}

thread_local! {
    static BUFS: RefCell<Bufs> = RefCell::new(Bufs::default());
}

/// The unit's attention into `acc` (`[rows, hd]`), as `super::attend`.
///
/// # Safety
/// `available()` must hold, and `takes(hd)`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma,f16c")]
pub(super) unsafe fn attend_amx(job: &Job<'_>, acc: &mut [f32]) {
    BUFS.with(|b| attend(job, acc, &mut b.borrow_mut()))
}

/// The running max's start: finite, so that a row with nothing attended yet gives corrections
/// of e^0 rather than e^(−∞ + ∞).
const NO_MAX: f32 = -1e30;

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma,f16c")]
unsafe fn attend(job: &Job<'_>, acc: &mut [f32], b: &mut Bufs) {
    let hd = job.hd;
    let rows = job.q.len() / hd;
    debug_assert!(takes(hd) && acc.len() == rows * hd);
    let rp = rows.div_ceil(16) * 16;
    let steps = hd / 32;
    let (ks, vs) = &job.kv.layers[job.layer];
    let spec = &job.kv.spec;
    b.qh.grow::<u16>(rp * hd);
    b.ql.grow::<u16>(rp * hd);
    b.kb.grow::<u16>(2 * steps * 2 * TILE);
    b.vb.grow::<u16>(hd / 16 * 2 * TILE);
    b.p.grow::<u16>(2 * TILE);
    b.s.grow::<f32>(2 * 256);
    b.acc.grow::<f32>(rp * hd);
    // Q, scaled (the scores come out scaled), as hi/lo rows; padding rows zero.
    // Scaled by log2 e too: the scores come out in log2 units, and a weight is 2^(s − m).
    let scale = _mm512_set1_ps(job.scale * std::f32::consts::LOG2_E);
    for r in 0..rp {
        for j in 0..steps {
            let at = r * hd + 32 * j;
            let (x0, x1) = if r < rows {
                let q = job.q.as_ptr().add(at);
                (
                    _mm512_mul_ps(_mm512_loadu_ps(q), scale),
                    _mm512_mul_ps(_mm512_loadu_ps(q.add(16)), scale),
                )
            } else {
                (_mm512_setzero_ps(), _mm512_setzero_ps())
            };
            split(x0, x1, b.qh.at::<u16>().add(at), b.ql.at::<u16>().add(at));
        }
    }
    // Per row: the running max and sum (padding rows included, never read).
    b.m.clear();
    b.m.resize(rp, NO_MAX);
    b.l.clear();
    b.l.resize(rp, 0.0);
    std::ptr::write_bytes(b.acc.at::<f32>(), 0, rp * hd);
    asm!("ldtilecfg [{c}]", c = in(reg) &FULL as *const TileConfig, options(nostack, readonly));
    let (start, _) = job.span(0);
    let (_, end) = job.span(rows - 1);
    // Chunks start at even blocks, whatever the run's first row: a row's softmax steps (and so
    // its bits) must not depend on which run it fell in. Blocks before the first row's window
    // are not read (they may have been given back): masked for every row, taken as zeros.
    let first_block = start / BLOCK;
    let blocks_end = end.div_ceil(BLOCK).min(job.table.len());
    let mut live = Vec::with_capacity(rp / 16);
    for b0 in (first_block & !1..blocks_end).step_by(2) {
        let p = b0 * BLOCK;
        let read = |c: usize| (first_block..blocks_end).contains(&(b0 + c));
        // Positions of the chunk that some row attends (the rest of V is zeroed: weights of 0
        // must not meet stale values).
        let n = CHUNK.min(end - p);
        for c in 0..2 {
            if read(c) {
                let off = tile_start(job.table[b0 + c] as usize, job.kvh, spec);
                let kt = Tile::of(ks, off, BLOCK * hd, hd, true);
                convert_k(kt, hd, b.kb.at::<u16>().add(c * steps * 2 * TILE));
            }
        }
        let vt: [Option<Tile<'_>>; 2] = std::array::from_fn(|c| {
            read(c).then(|| {
                let off = tile_start(job.table[b0 + c] as usize, job.kvh, spec);
                Tile::of(vs, off, BLOCK * hd, hd, false)
            })
        });
        convert_v(&vt, n, hd, b.vb.at::<u16>());
        // Row tiles with something to attend here (rows later in the run attend more; earlier
        // ones start their window earlier).
        live.clear();
        live.extend((0..rows).step_by(16).filter(|&r0| {
            let r1 = (r0 + 16).min(rows);
            job.span(r1 - 1).1 > p && job.span(r0).0 < p + CHUNK
        }));
        // A software pipeline over the row tiles, so that no tile load reads vector stores
        // still in flight (it would wait for them): per step, P·V of tile i (its weights
        // written a step before), the softmax of tile i + 1, the scores of tile i + 2.
        let end_of = |r0: usize| (r0 + 16).min(rows);
        if let Some(&r0) = live.first() {
            scores(b, r0, hd, steps);
            softmax(job, b, r0, end_of(r0), p);
        }
        if let Some(&r0) = live.get(1) {
            scores(b, r0, hd, steps);
        }
        for (i, &r0) in live.iter().enumerate() {
            weigh(b, r0, hd);
            if let Some(&next) = live.get(i + 1) {
                softmax(job, b, next, end_of(next), p);
            }
            if let Some(&next) = live.get(i + 2) {
                scores(b, next, hd, steps);
            }
        }
    }
    asm!("tilerelease", options(nostack, nomem));
    let sums = std::slice::from_raw_parts(b.acc.at::<f32>(), rows * hd);
    for ((a, s), l) in acc
        .chunks_exact_mut(hd)
        .zip(sums.chunks_exact(hd))
        .zip(&b.l)
    {
        let inv = 1.0 / l;
        a.iter_mut().zip(s).for_each(|(a, s)| *a = s * inv);
    }
}

/// One B tile row: a and b (the values at k = 2r and 2r + 1 of 16 columns) interleaved.
#[inline(always)]
unsafe fn pair_row(a: __m512, b: __m512, hi: *mut u16, lo: *mut u16) {
    let first = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    let second = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    split_by_bits(
        _mm512_permutex2var_ps(a, first, b),
        _mm512_permutex2var_ps(a, second, b),
        hi,
        lo,
    );
}

/// 16 consecutive values of a cache tile from element `i` as f32 (a K tile row of 16 positions,
/// or 16 dimensions of a V row).
#[inline(always)]
unsafe fn load16(t: Tile<'_>, i: usize) -> __m512 {
    match t {
        Tile::F32(v) => _mm512_loadu_ps(v[i..i + 16].as_ptr()),
        Tile::F16(v) => {
            _mm512_cvtph_ps(_mm256_loadu_si256(v[i..i + 16].as_ptr() as *const __m256i))
        }
        Tile::Q8(t) => {
            let q = &t.q[i..i + 16];
            let x = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(
                q.as_ptr() as *const __m128i
            )));
            let s = if t.transposed {
                // K: the 16 positions' scales of this dimension's 32.
                let at = t.scale_of(i);
                _mm512_cvtph_ps(_mm256_loadu_si256(
                    t.d[at..at + 16].as_ptr() as *const __m256i
                ))
            } else {
                _mm512_set1_ps(t.d[t.scale_of(i)].to_f32())
            };
            _mm512_mul_ps(x, s)
        }
    }
}

/// A K tile (`[hd][BLOCK]`) as B tiles for the scores: per 32 dimensions j, hi at
/// `kb + 2j·TILE`, lo after it; row r pairs dimensions 32j + 2r and 32j + 2r + 1.
#[inline(always)]
unsafe fn convert_k(kt: Tile<'_>, hd: usize, kb: *mut u16) {
    for j in 0..hd / 32 {
        let (hi, lo) = (kb.add(2 * j * TILE), kb.add((2 * j + 1) * TILE));
        for r in 0..16 {
            let d = 32 * j + 2 * r;
            let (a, b) = (load16(kt, d * BLOCK), load16(kt, (d + 1) * BLOCK));
            pair_row(a, b, hi.add(32 * r), lo.add(32 * r));
        }
    }
}

/// The chunk's V rows (`[BLOCK][hd]` per block; positions from `n` on zero) as B tiles for
/// P·V: per 16 dimensions e, hi at `vb + 2e·TILE`, lo after it; row r pairs positions 2r and
/// 2r + 1.
#[inline(always)]
unsafe fn convert_v(vt: &[Option<Tile<'_>>; 2], n: usize, hd: usize, vb: *mut u16) {
    for e in 0..hd / 16 {
        let (hi, lo) = (vb.add(2 * e * TILE), vb.add((2 * e + 1) * TILE));
        for r in 0..16 {
            let (a, b) = (v_row(vt, n, hd, 2 * r, e), v_row(vt, n, hd, 2 * r + 1, e));
            pair_row(a, b, hi.add(32 * r), lo.add(32 * r));
        }
    }
}

/// Dimensions 16e.. of the V row at chunk position `pos` (zero from `n` on).
#[inline(always)]
unsafe fn v_row(vt: &[Option<Tile<'_>>; 2], n: usize, hd: usize, pos: usize, e: usize) -> __m512 {
    match vt[pos / BLOCK] {
        Some(t) if pos < n => load16(t, (pos % BLOCK) * hd + 16 * e),
        _ => _mm512_setzero_ps(),
    }
}

/// Scores of row tile `r0` against the chunk into `b.s` (two 16 × 16 f32 blocks).
#[inline(always)]
unsafe fn scores(b: &mut Bufs, r0: usize, hd: usize, steps: usize) {
    let lda = hd * 2;
    asm!("tilezero tmm0", "tilezero tmm1", options(nostack, nomem));
    for j in 0..steps {
        let (qh, ql) = (
            b.qh.at::<u16>().add(r0 * hd + 32 * j),
            b.ql.at::<u16>().add(r0 * hd + 32 * j),
        );
        let k0 = b.kb.at::<u16>().add(2 * j * TILE);
        let k1 = b.kb.at::<u16>().add((steps + j) * 2 * TILE);
        asm!(
            "tileloadd tmm4, [{qh} + {lda}*1]",
            "tileloadd tmm5, [{ql} + {lda}*1]",
            "tileloadd tmm6, [{k0} + {s64}*1]",
            "tileloadd tmm7, [{k0l} + {s64}*1]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tdpbf16ps tmm0, tmm5, tmm6",
            "tdpbf16ps tmm0, tmm4, tmm7",
            "tileloadd tmm6, [{k1} + {s64}*1]",
            "tileloadd tmm7, [{k1l} + {s64}*1]",
            "tdpbf16ps tmm1, tmm4, tmm6",
            "tdpbf16ps tmm1, tmm5, tmm6",
            "tdpbf16ps tmm1, tmm4, tmm7",
            qh = in(reg) qh,
            ql = in(reg) ql,
            lda = in(reg) lda,
            k0 = in(reg) k0,
            k0l = in(reg) k0.add(TILE),
            k1 = in(reg) k1,
            k1l = in(reg) k1.add(TILE),
            s64 = in(reg) 64usize,
            options(nostack, readonly),
        );
    }
    asm!(
        "tilestored [{s0} + {s64}*1], tmm0",
        "tilestored [{s1} + {s64}*1], tmm1",
        s0 = in(reg) b.s.at::<f32>(),
        s1 = in(reg) b.s.at::<f32>().add(256),
        s64 = in(reg) 64usize,
        options(nostack),
    );
}

/// How far a chunk's scores (log2 units) may pass a row's max before the row is rescaled (so
/// weights stay at most e^8 ≈ 3000: nothing near f32's or bf16's range, and the hi/lo split is
/// relative).
const SLACK: f32 = 8.0 * std::f32::consts::LOG2_E;

/// The online softmax of rows r0..r1 over the chunk at `p`, the 16 rows at once (each row's
/// 32 scores are two vectors; their maxima and sums are reduced across rows into one vector):
/// the rows rescaled where a score passes their max by more than `SLACK` (max, sum and
/// accumulators), the sums updated, and each row's weights as hi/lo P rows (zero where masked
/// and on padding rows).
#[inline(always)]
unsafe fn softmax(job: &Job<'_>, b: &mut Bufs, r0: usize, r1: usize, p: usize) {
    // Most tiles attend the whole chunk; the others mask per row (bit k: position p + k).
    let whole = r1 - r0 == 16 && job.span(r1 - 1).0 <= p && job.span(r0).1 >= p + CHUNK;
    let mut masks = [u32::MAX; 16];
    if !whole {
        for (i, m) in masks.iter_mut().enumerate() {
            *m = if r0 + i < r1 {
                let (start, len) = job.span(r0 + i);
                let (lo, hi) = (start.saturating_sub(p), CHUNK.min(len.saturating_sub(p)));
                if lo < hi {
                    (u32::MAX >> (CHUNK - hi)) & (u32::MAX << lo)
                } else {
                    0
                }
            } else {
                0
            };
        }
    }
    let s = b.s.at::<f32>();
    let mut v = [_mm512_setzero_ps(); 16];
    for (i, x) in v.iter_mut().enumerate() {
        let (x0, x1) = scores_of(s, i, whole, masks[i]);
        *x = _mm512_max_ps(x0, x1);
    }
    let maxima = reduce16::<true>(&v);
    let l = b.l.as_mut_ptr().add(r0);
    let mut m = _mm512_loadu_ps(b.m.as_ptr().add(r0));
    let far = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(maxima, _mm512_add_ps(m, _mm512_set1_ps(SLACK)));
    if far != 0 {
        // Only the rows past their slack: a row's bits must not depend on its tile's other
        // rows (which the run's cut decides). The others' factors are e^0 = 1 exactly.
        let m_new = _mm512_mask_max_ps(m, far, m, maxima);
        let c = exp2(_mm512_sub_ps(m, m_new));
        _mm512_storeu_ps(b.m.as_mut_ptr().add(r0), m_new);
        _mm512_storeu_ps(l, _mm512_mul_ps(_mm512_loadu_ps(l), c));
        rescale(b, r0, job.hd, c);
        m = m_new;
    }
    let mut mn = [0f32; 16];
    _mm512_storeu_ps(mn.as_mut_ptr(), m);
    let (ph, pl) = (b.p.at::<u16>(), b.p.at::<u16>().add(TILE));
    for (i, x) in v.iter_mut().enumerate() {
        let (x0, x1) = scores_of(s, i, whole, masks[i]);
        let m = _mm512_set1_ps(mn[i]);
        let (mut e0, mut e1) = (exp2n(_mm512_sub_ps(x0, m)), exp2n(_mm512_sub_ps(x1, m)));
        if !whole {
            e0 = _mm512_maskz_mov_ps(masks[i] as u16, e0);
            e1 = _mm512_maskz_mov_ps((masks[i] >> 16) as u16, e1);
        }
        split_by_bits(e0, e1, ph.add(32 * i), pl.add(32 * i));
        *x = _mm512_add_ps(e0, e1);
    }
    let sums = reduce16::<false>(&v);
    _mm512_storeu_ps(l, _mm512_add_ps(_mm512_loadu_ps(l), sums));
}

/// The accumulators of row tile `r0` times each row's factor in `c`.
#[inline(always)]
unsafe fn rescale(b: &mut Bufs, r0: usize, hd: usize, c: __m512) {
    let mut cs = [0f32; 16];
    _mm512_storeu_ps(cs.as_mut_ptr(), c);
    let acc = b.acc.at::<f32>().add(r0 * hd);
    for (i, c) in cs.iter().enumerate() {
        let c = _mm512_set1_ps(*c);
        for e in 0..hd / 16 {
            let a = acc.add(i * hd + 16 * e);
            _mm512_storeu_ps(a, _mm512_mul_ps(_mm512_loadu_ps(a), c));
        }
    }
}

/// Row i's 32 scores from the two score tiles, −∞ where its mask is clear.
#[inline(always)]
unsafe fn scores_of(s: *const f32, i: usize, whole: bool, mask: u32) -> (__m512, __m512) {
    let (x0, x1) = (
        _mm512_loadu_ps(s.add(16 * i)),
        _mm512_loadu_ps(s.add(256 + 16 * i)),
    );
    if whole {
        (x0, x1)
    } else {
        let ninf = _mm512_set1_ps(f32::NEG_INFINITY);
        (
            _mm512_mask_mov_ps(ninf, mask as u16, x0),
            _mm512_mask_mov_ps(ninf, (mask >> 16) as u16, x1),
        )
    }
}

/// Lane i = the max (`MAX`) or sum of v[i]'s 16 lanes: halves of pairs of vectors combined,
/// then quarters of pairs of those, … (15 combining ops rather than 16 × 4 dependent ones),
/// then the lanes put back in row order.
#[inline(always)]
unsafe fn reduce16<const MAX: bool>(v: &[__m512; 16]) -> __m512 {
    let mut c = [_mm512_setzero_ps(); 8];
    for (k, x) in c.iter_mut().enumerate() {
        let (a, b) = (v[2 * k], v[2 * k + 1]);
        let o = _mm512_mask_blend_ps(0x00FF, a, b);
        *x = comb::<MAX>(
            _mm512_mask_blend_ps(0xFF00, a, b),
            _mm512_shuffle_f32x4::<0b01_00_11_10>(o, o),
        );
    }
    let mut d = [_mm512_setzero_ps(); 4];
    for (k, x) in d.iter_mut().enumerate() {
        let (a, b) = (c[2 * k], c[2 * k + 1]);
        let o = _mm512_mask_blend_ps(0x0F0F, a, b);
        *x = comb::<MAX>(
            _mm512_mask_blend_ps(0xF0F0, a, b),
            _mm512_shuffle_f32x4::<0b10_11_00_01>(o, o),
        );
    }
    let mut e = [_mm512_setzero_ps(); 2];
    for (k, x) in e.iter_mut().enumerate() {
        let (a, b) = (d[2 * k], d[2 * k + 1]);
        let o = _mm512_mask_blend_ps(0x3333, a, b);
        *x = comb::<MAX>(
            _mm512_mask_blend_ps(0xCCCC, a, b),
            _mm512_permute_ps::<0b01_00_11_10>(o),
        );
    }
    let o = _mm512_mask_blend_ps(0x5555, e[0], e[1]);
    let f = comb::<MAX>(
        _mm512_mask_blend_ps(0xAAAA, e[0], e[1]),
        _mm512_permute_ps::<0b10_11_00_01>(o),
    );
    // Lane j now holds row bitreverse4(j).
    let order = _mm512_setr_epi32(0, 8, 4, 12, 2, 10, 6, 14, 1, 9, 5, 13, 3, 11, 7, 15);
    _mm512_permutexvar_ps(order, f)
}

#[inline(always)]
unsafe fn comb<const MAX: bool>(a: __m512, b: __m512) -> __m512 {
    if MAX {
        _mm512_max_ps(a, b)
    } else {
        _mm512_add_ps(a, b)
    }
}

/// 1 + Σ c[k−1]·r^k, k = 1 … N, by Horner's rule.
#[inline(always)]
unsafe fn pow2_poly<const N: usize>(r: __m512, c: [f32; N]) -> __m512 {
    let mut y = _mm512_set1_ps(c[N - 1]);
    for &ck in c[..N - 1].iter().rev() {
        y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(ck));
    }
    _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.0))
}

/// ln 2^k / k!, k = 1 … 6.
const POW2_TAYLOR: [f32; 6] = [
    std::f32::consts::LN_2,
    0.240_226_5,
    0.055_504_11,
    0.009_618_129,
    0.001_333_355_8,
    0.000_154_035_3,
];

/// 2^x for x ≤ 0 where a mask is applied after (no clamp: −∞ gives NaN), to 3e-6 (the
/// weights keep 2^-17 in their hi/lo split): 2^n by `vscalefps` times 2^(x − n), n the
/// nearest integer — no reduction by ln 2, the scores being in log2 units — by a degree-4
/// polynomial fitted for the least largest relative error on [−1/2, 1/2] (Taylor's needs
/// degree 5 for 2.4e-6).
#[inline(always)]
unsafe fn exp2n(x: __m512) -> __m512 {
    let n = _mm512_roundscale_ps::<0x08>(x);
    let c = [0.693_124_3, 0.240_240_41, 0.055_905_9, 0.009_585_634];
    _mm512_scalef_ps(pow2_poly(_mm512_sub_ps(x, n), c), n)
}

/// 2^x for x ≤ 0 to 3e-7 (degree 6); below −127 about 0.
#[inline(always)]
unsafe fn exp2(x: __m512) -> __m512 {
    let x = _mm512_max_ps(x, _mm512_set1_ps(-127.0));
    let n = _mm512_roundscale_ps::<0x08>(x);
    _mm512_scalef_ps(pow2_poly(_mm512_sub_ps(x, n), POW2_TAYLOR), n)
}

/// P·V of row tile `r0` (its weights in `b.p`) added into its accumulators, 16 columns a
/// block: each block loaded as a tile (rows `hd` floats apart), multiplied into, stored back.
#[inline(always)]
unsafe fn weigh(b: &mut Bufs, r0: usize, hd: usize) {
    asm!(
        "tileloadd tmm4, [{ph} + {s64}*1]",
        "tileloadd tmm5, [{pl} + {s64}*1]",
        ph = in(reg) b.p.at::<u16>(),
        pl = in(reg) b.p.at::<u16>().add(TILE),
        s64 = in(reg) 64usize,
        options(nostack, readonly),
    );
    let acc = b.acc.at::<f32>().add(r0 * hd);
    for e in (0..hd / 16).step_by(2) {
        let v0 = b.vb.at::<u16>().add(2 * e * TILE);
        let v1 = b.vb.at::<u16>().add(2 * (e + 1) * TILE);
        asm!(
            "tileloadd tmm2, [{o0} + {lda}*1]",
            "tileloadd tmm3, [{o1} + {lda}*1]",
            "tileloadd tmm6, [{v0} + {s64}*1]",
            "tileloadd tmm7, [{v0l} + {s64}*1]",
            "tdpbf16ps tmm2, tmm4, tmm6",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm2, tmm4, tmm7",
            "tileloadd tmm6, [{v1} + {s64}*1]",
            "tileloadd tmm7, [{v1l} + {s64}*1]",
            "tdpbf16ps tmm3, tmm4, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm4, tmm7",
            "tilestored [{o0} + {lda}*1], tmm2",
            "tilestored [{o1} + {lda}*1], tmm3",
            v0 = in(reg) v0,
            v0l = in(reg) v0.add(TILE),
            v1 = in(reg) v1,
            v1l = in(reg) v1.add(TILE),
            o0 = in(reg) acc.add(16 * e),
            o1 = in(reg) acc.add(16 * (e + 1)),
            lda = in(reg) hd * 4,
            s64 = in(reg) 64usize,
            options(nostack),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
    unsafe fn reduce(rows: &[[f32; 16]; 16]) -> ([f32; 16], [f32; 16]) {
        let mut v = [_mm512_setzero_ps(); 16];
        for (x, r) in v.iter_mut().zip(rows) {
            *x = _mm512_loadu_ps(r.as_ptr());
        }
        let (mut m, mut s) = ([0f32; 16], [0f32; 16]);
        _mm512_storeu_ps(m.as_mut_ptr(), reduce16::<true>(&v));
        _mm512_storeu_ps(s.as_mut_ptr(), reduce16::<false>(&v));
        (m, s)
    }

    /// `exp2n` (the weights) to 3e-6 and `exp2` (the rescaling factors) to 3e-7 of 2^x, over
    /// every fraction and the exponents a softmax meets; `exp2` of far below −127 about 0.
    #[test]
    fn powers_of_two_are_close_to_f64() {
        if !is_x86_feature_detected!("avx512f") {
            eprintln!("skipped: no AVX-512");
            return;
        }
        #[target_feature(enable = "avx512f")]
        unsafe fn both(x: &[f32; 16]) -> ([f32; 16], [f32; 16]) {
            let v = _mm512_loadu_ps(x.as_ptr());
            let (mut a, mut b) = ([0f32; 16], [0f32; 16]);
            _mm512_storeu_ps(a.as_mut_ptr(), exp2n(v));
            _mm512_storeu_ps(b.as_mut_ptr(), exp2(v));
            (a, b)
        }
        let (mut worst_n, mut worst) = (0f64, 0f64);
        for k in 0..40_000 {
            let x: [f32; 16] = std::array::from_fn(|i| -((k * 16 + i) as f32) / 10_000.0);
            // SAFETY: AVX-512 checked above.
            let (a, b) = unsafe { both(&x) };
            for i in 0..16 {
                let want = 2f64.powf(x[i] as f64);
                worst_n = worst_n.max((a[i] as f64 / want - 1.0).abs());
                worst = worst.max((b[i] as f64 / want - 1.0).abs());
            }
        }
        assert!(worst_n < 3e-6, "exp2n: relative error {worst_n:e}");
        assert!(worst < 3e-7, "exp2: relative error {worst:e}");
        // SAFETY: as above.
        let (_, b) = unsafe { both(&[-1e30; 16]) };
        assert!(b.iter().all(|&v| (0.0..1e-38).contains(&v)), "{b:?}");
    }

    /// Lane i of the reductions is row i's max and sum (rows far apart, so that a row given
    /// another's max shows: the online softmax would not notice, until exponentials underflow).
    #[test]
    fn reductions_keep_rows_in_order() {
        if !is_x86_feature_detected!("avx512f") {
            eprintln!("skipped: no AVX-512");
            return;
        }
        let rows: [[f32; 16]; 16] =
            std::array::from_fn(|i| std::array::from_fn(|j| (i * 100 + (j * 7) % 16) as f32));
        // SAFETY: AVX-512 checked above.
        let (m, s) = unsafe { reduce(&rows) };
        for i in 0..16 {
            assert_eq!(
                m[i],
                rows[i].iter().cloned().fold(f32::MIN, f32::max),
                "max of row {i}"
            );
            assert_eq!(s[i], rows[i].iter().sum::<f32>(), "sum of row {i}");
        }
    }
}
