//! `ActPrecision::ExactTop` heads: the largest logits of each row recomputed with f32
//! activations.

use crate::kernels::Isa;
use crate::pool::SharedMut;
use crate::{pool, CpuWeight};
use suanli_backend::Weight;

/// Candidates per logits row recomputed with f32 activations (`ActPrecision::ExactTop`): they
/// carry nearly all of the softmax's mass, so the answer and the normalizer come out as from
/// f32 activations. On Gemma 3 270M: mean |Δ log p| from the f32 computation 0.107 → 0.094 with
/// 512 (two passes over the whole head: 0.094 at 1.5× the decode time); 64 give 0.098.
const RESCORED: usize = 256;

/// Each logits row's `k` largest values after rescoring, taken from its rescored candidates
/// where those decide them: every other value of the row lies at or below the smallest
/// candidate's first value, so when the k-th largest rescored value is above that, a scan of
/// the whole row (`top::row_top`, two passes over 151,936 floats a row) would find the same k.
pub(crate) struct RowTops<'a> {
    pub k: usize,
    /// `k` per row, as `top::row_top` orders them, for the rows `found` marks.
    pub pairs: &'a mut [(u32, f32)],
    pub found: &'a mut [bool],
}

pub(crate) fn rescore_top(
    isa: Isa,
    pool: &pool::Pool,
    xs: &[f32],
    head: &Weight<CpuWeight>,
    out: &mut [f32],
    mut tops: Option<RowTops<'_>>,
) {
    let (v, k) = (head.rows, head.cols);
    if v <= RESCORED {
        return;
    }
    let n = out.len() / v;
    let check = tops.is_some();
    if n < pool.threads() {
        // Fewer rows than threads (decode): each row's candidates are shared by the threads.
        let mut top = Vec::with_capacity(RESCORED);
        for (i, row) in out.chunks_exact_mut(v).enumerate() {
            let x = &xs[i * k..(i + 1) * k];
            let bound = largest(isa, row, &mut top, check);
            let mut sums = vec![0f64; top.len()];
            let top = &top;
            pool.split_mut(&mut sums, BATCH, 1, &|c0, part| {
                let mut scratch = vec![0f32; BATCH * k];
                let from = c0 * BATCH;
                recompute(
                    isa,
                    head,
                    &top[from..from + part.len()],
                    x,
                    part,
                    &mut scratch,
                );
            });
            let vals: Vec<f32> = sums.iter().map(|&s| s as f32).collect();
            for (&r, &s) in top.iter().zip(&vals) {
                row[r as usize] = s;
            }
            if let (Some(t), Some(bound)) = (tops.as_mut(), bound) {
                let kk = t.k;
                t.found[i] = top_of_candidates(top, &vals, bound, &mut t.pairs[i * kk..][..kk]);
            }
        }
        return;
    }
    let shared = tops.map(|t| {
        debug_assert!(t.pairs.len() == n * t.k && t.found.len() == n);
        (
            t.k,
            SharedMut(t.pairs.as_mut_ptr()),
            SharedMut(t.found.as_mut_ptr()),
        )
    });
    pool.split_mut(out, v, 1, &|t0, part| {
        let mut top = Vec::with_capacity(RESCORED);
        let mut sums = Vec::with_capacity(RESCORED);
        let mut vals = Vec::with_capacity(RESCORED);
        let mut scratch = vec![0f32; BATCH * k];
        for (i, row) in part.chunks_exact_mut(v).enumerate() {
            let x = &xs[(t0 + i) * k..(t0 + i + 1) * k];
            let bound = largest(isa, row, &mut top, check);
            sums.clear();
            sums.resize(top.len(), 0.0);
            recompute(isa, head, &top, x, &mut sums, &mut scratch);
            vals.clear();
            vals.extend(sums.iter().map(|&s| s as f32));
            for (&r, &s) in top.iter().zip(&vals) {
                row[r as usize] = s;
            }
            if let (Some((kk, pairs, found)), Some(bound)) = (&shared, bound) {
                let r = t0 + i;
                // SAFETY: `pairs` holds n × kk and `found` n entries; each piece writes only
                // its own rows' (split_mut hands out disjoint rows).
                unsafe {
                    let p = std::slice::from_raw_parts_mut(pairs.get().add(r * kk), *kk);
                    *found.get().add(r) = top_of_candidates(&top, &vals, bound, p);
                }
            }
        }
    });
}

/// The `out.len()` largest values of a rescored row, largest first and the lower index first
/// on ties (as `top::row_top`), from its candidates `top` with their final values `vals`,
/// where no other value of the row exceeds `bound`. False where the candidates do not decide
/// it: a candidate's value is not finite, or the k-th is not above `bound` (a value equal to it
/// elsewhere in the row could come first).
fn top_of_candidates(top: &[u32], vals: &[f32], bound: f32, out: &mut [(u32, f32)]) -> bool {
    let k = out.len();
    if k == 0 || k > top.len() || vals.iter().any(|v| !v.is_finite()) {
        return false;
    }
    let mut c: Vec<(u32, f32)> = top.iter().copied().zip(vals.iter().copied()).collect();
    // Finite values: `partial_cmp` is total here (±0 equal, as `row_top` compares them).
    let order = |a: &(u32, f32), b: &(u32, f32)| {
        b.1.partial_cmp(&a.1)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.0.cmp(&b.0))
    };
    if k < c.len() {
        c.select_nth_unstable_by(k - 1, order);
        c.truncate(k);
    }
    c.sort_unstable_by(order);
    if c[k - 1].1 > bound {
        out.copy_from_slice(&c);
        true
    } else {
        false
    }
}

/// Head rows `rows` · `x` in f64 into `sums`, `BATCH` rows at a time. The rows lie anywhere in
/// the head: their lines are asked for `AHEAD` rows before they are needed (memory latency,
/// not arithmetic, bounds this loop).
fn recompute(
    isa: Isa,
    head: &Weight<CpuWeight>,
    rows: &[u32],
    x: &[f32],
    sums: &mut [f64],
    scratch: &mut [f32],
) {
    for &r in rows.iter().take(AHEAD) {
        prefetch_row(head, r as usize);
    }
    for (j, (batch, out)) in rows.chunks(BATCH).zip(sums.chunks_mut(BATCH)).enumerate() {
        for &r in rows.iter().skip(j * BATCH + AHEAD).take(BATCH) {
            prefetch_row(head, r as usize);
        }
        let s = rows_dot(isa, head, batch, x, scratch);
        out.copy_from_slice(&s[..out.len()]);
    }
}

/// Candidate rows whose sums run interleaved: one row's 8 interleaved f64 sums wait on the
/// latency of each add; several rows' chains keep the adders busy.
const BATCH: usize = 4;

/// Candidates whose lines are asked for ahead of their turn (16-stream decode steps of
/// Qwen2.5-0.5B, µs per logits row for its 256 candidates: one ahead 92, 4 ahead 72, 8 ahead
/// 71, 16 ahead 75; the head's rows sit on 4 KiB pages of the file's mapping, and its TLB
/// misses and memory latency, not arithmetic, bound the loop — in cache it takes ~20).
const AHEAD: usize = 8;

/// Ask for the cache lines of head row `r` (as stored: its f32 copy, or the file's bytes).
fn prefetch_row(head: &Weight<CpuWeight>, r: usize) {
    match &head.store.f32 {
        Some(v) => crate::kernels::prefetch_lines(&v[r * head.cols..(r + 1) * head.cols]),
        None => crate::kernels::prefetch_lines(raw_row(head, r)),
    }
}

/// Head row `r` in the file's layout.
fn raw_row(head: &Weight<CpuWeight>, r: usize) -> &[u8] {
    let rb = head
        .dtype
        .row_bytes(head.cols)
        .expect("validated in prepare_weight");
    &head.store.raw.as_slice()[r * rb..(r + 1) * rb]
}

/// Head rows `rows` (at most `BATCH`) · `x` in f64 over the rows' dequantized values (the
/// oracle's), each as `dot_f64`. On x86 with AVX2, FMA and F16C, Q8_0 rows are dequantized 8
/// at a time and the rows' sums run 8 lanes wide, `BATCH` rows together: the same f32 values
/// and the same 8 interleaved f64 sums per row as `dot_f64`, so the same results (the scalar
/// dequantization and sum were ~8 % of a 16-stream decode step; one row at a time, each sum
/// waiting on the add before it, ~7 %).
fn rows_dot(
    isa: Isa,
    head: &Weight<CpuWeight>,
    rows: &[u32],
    x: &[f32],
    scratch: &mut [f32],
) -> [f64; BATCH] {
    let k = head.cols;
    let mut sums = [0f64; BATCH];
    #[cfg(target_arch = "x86_64")]
    if matches!(isa, Isa::Avx2 | Isa::Avx2Vnni | Isa::Avx512 | Isa::Amx) {
        let raw = head.store.f32.is_none();
        let mut ws: [&[f32]; BATCH] = [&[]; BATCH];
        for (i, (&r, s)) in rows.iter().zip(scratch.chunks_exact_mut(k)).enumerate() {
            // SAFETY (both): the level guarantees AVX2, FMA and F16C.
            ws[i] = match head.dtype {
                suanli_core::DType::Q8_0 if raw => {
                    unsafe { x86::dequantize_q8_0(raw_row(head, r as usize), s) };
                    s
                }
                suanli_core::DType::Q6K if raw => {
                    unsafe { x86::dequantize_q6_k(raw_row(head, r as usize), s) };
                    s
                }
                _ => head.store.row(head, r as usize, s),
            };
        }
        let ws = &ws[..rows.len()];
        // SAFETY: as above; AVX-512 F at the AVX-512 and AMX levels.
        unsafe {
            match (isa, ws.len()) {
                (Isa::Avx512 | Isa::Amx, BATCH) => x86::dot_f64_rows512(ws, x, &mut sums),
                (_, BATCH) => x86::dot_f64_rows(ws, x, &mut sums),
                _ => ws
                    .iter()
                    .zip(&mut sums)
                    .for_each(|(w, s)| *s = x86::dot_f64(w, x)),
            }
        }
        return sums;
    }
    let _ = isa;
    for (&r, s) in rows.iter().zip(&mut sums) {
        *s = dot_f64(head.store.row(head, r as usize, &mut scratch[..k]), x);
    }
    sums
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::BATCH;
    use std::arch::x86_64::*;

    /// Q8_0 blocks (f16 scale, 32 int8) → f32: `q as f32 * d` per value, as the oracle.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dequantize_q8_0(raw: &[u8], out: &mut [f32]) {
        for (b, o) in raw.chunks_exact(34).zip(out.chunks_exact_mut(32)) {
            let h = u16::from_le_bytes([b[0], b[1]]);
            let d = _mm256_cvtph_ps(_mm_set1_epi16(h as i16));
            for j in 0..4 {
                let q = _mm_loadl_epi64(b.as_ptr().add(2 + 8 * j) as *const __m128i);
                let v = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q));
                _mm256_storeu_ps(o.as_mut_ptr().add(8 * j), _mm256_mul_ps(v, d));
            }
        }
    }

    /// Q6_K blocks (128 low nibbles, 64 bytes of high bit pairs, 16 signed scales, f16 d) →
    /// f32: `(d · scale) · q` per value, as the oracle (`suanli_core::quant`), 8 values a step.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dequantize_q6_k(raw: &[u8], out: &mut [f32]) {
        let (m4, m3, c32) = (
            _mm256_set1_epi32(0xF),
            _mm256_set1_epi32(3),
            _mm256_set1_epi32(32),
        );
        let bytes = |p: *const u8| _mm256_cvtepu8_epi32(_mm_loadl_epi64(p as *const __m128i));
        for (b, y) in raw.chunks_exact(210).zip(out.chunks_exact_mut(256)) {
            let d = half::f16::from_le_bytes([b[208], b[209]]).to_f32();
            for n in 0..2 {
                let (ql, qh, sc) = (
                    b.as_ptr().add(64 * n),
                    b.as_ptr().add(128 + 32 * n),
                    &b[192 + 8 * n..],
                );
                let y = y.as_mut_ptr().add(128 * n);
                for c in 0..4 {
                    let (l, is) = (8 * c, c / 2);
                    let (lo, hi, h) = (bytes(ql.add(l)), bytes(ql.add(l + 32)), bytes(qh.add(l)));
                    let q = [
                        _mm256_or_si256(
                            _mm256_and_si256(lo, m4),
                            _mm256_slli_epi32::<4>(_mm256_and_si256(h, m3)),
                        ),
                        _mm256_or_si256(
                            _mm256_and_si256(hi, m4),
                            _mm256_slli_epi32::<4>(_mm256_and_si256(_mm256_srli_epi32::<2>(h), m3)),
                        ),
                        _mm256_or_si256(
                            _mm256_srli_epi32::<4>(lo),
                            _mm256_slli_epi32::<4>(_mm256_and_si256(_mm256_srli_epi32::<4>(h), m3)),
                        ),
                        _mm256_or_si256(
                            _mm256_srli_epi32::<4>(hi),
                            _mm256_slli_epi32::<4>(_mm256_srli_epi32::<6>(h)),
                        ),
                    ];
                    for (j, q) in q.into_iter().enumerate() {
                        let s = _mm256_set1_ps(d * (sc[is + 2 * j] as i8) as f32);
                        let v = _mm256_cvtepi32_ps(_mm256_sub_epi32(q, c32));
                        _mm256_storeu_ps(y.add(l + 32 * j), _mm256_mul_ps(s, v));
                    }
                }
            }
        }
    }

    /// `super::dot_f64`, its 8 interleaved sums as two vectors of 4 (f32 × f32 is exact in
    /// f64, so the fused multiply-add rounds as the scalar add does).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_f64(a: &[f32], b: &[f32]) -> f64 {
        let n = a.len().min(b.len());
        let (mut lo, mut hi) = (_mm256_setzero_pd(), _mm256_setzero_pd());
        let mut i = 0;
        while i + 8 <= n {
            let (x, y) = (a.as_ptr().add(i), b.as_ptr().add(i));
            let xa = _mm256_cvtps_pd(_mm_loadu_ps(x));
            let ya = _mm256_cvtps_pd(_mm_loadu_ps(y));
            lo = _mm256_fmadd_pd(xa, ya, lo);
            let xb = _mm256_cvtps_pd(_mm_loadu_ps(x.add(4)));
            let yb = _mm256_cvtps_pd(_mm_loadu_ps(y.add(4)));
            hi = _mm256_fmadd_pd(xb, yb, hi);
            i += 8;
        }
        let mut acc = [0f64; 8];
        _mm256_storeu_pd(acc.as_mut_ptr(), lo);
        _mm256_storeu_pd(acc.as_mut_ptr().add(4), hi);
        super::finish(acc, a, b, i)
    }

    /// `dot_f64` of each of `ws` (`BATCH` rows of one length) with `b`, the rows' sums
    /// advancing together.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_f64_rows(ws: &[&[f32]], b: &[f32], out: &mut [f64; BATCH]) {
        let n = ws[0].len().min(b.len());
        let mut lo = [_mm256_setzero_pd(); BATCH];
        let mut hi = [_mm256_setzero_pd(); BATCH];
        let mut i = 0;
        while i + 8 <= n {
            let y = b.as_ptr().add(i);
            let (ya, yb) = (
                _mm256_cvtps_pd(_mm_loadu_ps(y)),
                _mm256_cvtps_pd(_mm_loadu_ps(y.add(4))),
            );
            for r in 0..BATCH {
                let x = ws[r].as_ptr().add(i);
                lo[r] = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm_loadu_ps(x)), ya, lo[r]);
                hi[r] = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm_loadu_ps(x.add(4))), yb, hi[r]);
            }
            i += 8;
        }
        for r in 0..BATCH {
            let mut acc = [0f64; 8];
            _mm256_storeu_pd(acc.as_mut_ptr(), lo[r]);
            _mm256_storeu_pd(acc.as_mut_ptr().add(4), hi[r]);
            out[r] = super::finish(acc, ws[r], b, i);
        }
    }

    /// `super::block_maxima`: each whole block's 16 lanes kept by `vmaxps` (which keeps its
    /// second operand, the lane so far, when the value is NaN), then reduced; every value's
    /// exponent tested on the way (all ones: NaN or infinite), which costs nothing in a loop
    /// that waits on memory.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn block_maxima(row: &[f32]) -> (Vec<f32>, bool) {
        let blocks = row.chunks_exact(super::SPAN);
        let rest = blocks.remainder();
        let exp = _mm512_set1_epi32(0x7f80_0000);
        let mut bad: __mmask16 = 0;
        let mut m: Vec<f32> = blocks
            .map(|b| {
                let mut l = _mm512_set1_ps(f32::NEG_INFINITY);
                for part in b.chunks_exact(16) {
                    let v = _mm512_loadu_ps(part.as_ptr());
                    let e = _mm512_and_si512(_mm512_castps_si512(v), exp);
                    bad |= _mm512_cmpeq_epi32_mask(e, exp);
                    l = _mm512_max_ps(v, l);
                }
                _mm512_reduce_max_ps(l)
            })
            .collect();
        let mut finite = bad == 0;
        if !rest.is_empty() {
            m.push(suanli_core::scan::block_max(rest));
            finite &= suanli_core::scan::first_nonfinite(rest).is_none();
        }
        (m, finite)
    }

    /// The (key, index) of each of `block`'s `SPAN` values whose key (`super::key`) is at least
    /// `floor`, in index order; `base` is the block's first index.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn gather(block: &[f32], base: u32, floor: u32, cand: &mut Vec<(u32, u32)>) {
        let f = _mm512_set1_epi32(floor as i32);
        let top = _mm512_set1_epi32(i32::MIN);
        for (p, part) in block.chunks_exact(16).enumerate() {
            let b = _mm512_castps_si512(_mm512_loadu_ps(part.as_ptr()));
            let k = _mm512_xor_si512(
                _mm512_xor_si512(b, _mm512_srli_epi32::<1>(_mm512_srai_epi32::<31>(b))),
                top,
            );
            let mut hits = _mm512_cmpge_epu32_mask(k, f);
            if hits == 0 {
                continue;
            }
            let mut keys = [0u32; 16];
            _mm512_storeu_si512(keys.as_mut_ptr() as *mut _, k);
            while hits != 0 {
                let j = hits.trailing_zeros() as usize;
                cand.push((keys[j], base + (16 * p + j) as u32));
                hits &= hits - 1;
            }
        }
    }

    /// `dot_f64_rows` with each row's 8 sums in one AVX-512 register.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn dot_f64_rows512(ws: &[&[f32]], b: &[f32], out: &mut [f64; BATCH]) {
        let n = ws[0].len().min(b.len());
        let mut acc = [_mm512_setzero_pd(); BATCH];
        let mut i = 0;
        while i + 8 <= n {
            let y = _mm512_cvtps_pd(_mm256_loadu_ps(b.as_ptr().add(i)));
            for r in 0..BATCH {
                let x = _mm512_cvtps_pd(_mm256_loadu_ps(ws[r].as_ptr().add(i)));
                acc[r] = _mm512_fmadd_pd(x, y, acc[r]);
            }
            i += 8;
        }
        for r in 0..BATCH {
            let mut a = [0f64; 8];
            _mm512_storeu_pd(a.as_mut_ptr(), acc[r]);
            out[r] = super::finish(a, ws[r], b, i);
        }
    }
}

/// The 8 interleaved sums of `dot_f64` (from `a` and `b` up to `from`) added in its order,
/// with its tail.
#[cfg(target_arch = "x86_64")]
fn finish(acc: [f64; 8], a: &[f32], b: &[f32], from: usize) -> f64 {
    let n = a.len().min(b.len());
    let tail: f64 = a[from..n]
        .iter()
        .zip(&b[from..n])
        .map(|(x, y)| *x as f64 * *y as f64)
        .sum();
    acc.iter().sum::<f64>() + tail
}

/// Σ a·b in f64, in 8 interleaved sums (one chain of adds would wait on each add's latency).
fn dot_f64(a: &[f32], b: &[f32]) -> f64 {
    let mut acc = [0f64; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f64 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| *x as f64 * *y as f64)
        .sum();
    for (pa, pb) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += pa[i] as f64 * pb[i] as f64;
        }
    }
    acc.iter().sum::<f64>() + tail
}

/// f32 as an integer in the same order (`total_cmp`'s), so that comparisons are integer ones.
#[inline(always)]
fn key(x: f32) -> u32 {
    let b = x.to_bits();
    b ^ (((b as i32 >> 31) as u32) >> 1) ^ 0x8000_0000
}

/// Values per block whose largest key stands for the block.
const SPAN: usize = 64;

/// The indices of the `RESCORED` largest of `row` (by `total_cmp`, ties broken towards the
/// lower index), in no particular order. The `RESCORED`-th largest of the blocks' maxima is a
/// floor for the answer (those maxima are that many distinct values): only the values at or
/// above it are gathered — most blocks hold none — and the answer selected among them. (A
/// min-heap over the whole row, with its pops and pushes, cost ~8 % of a verifying pass's
/// logits.) On AVX-512 the maxima and the gathering run 16 values at a time: a row of 151,936
/// took ~24 µs for its maxima and ~21 for its gathering one value at a time: together about
/// twice what the 256 candidates' f64 sums take with their rows in cache.
///
/// Returns a bound no value left out exceeds (the smallest candidate's value; −∞ when every
/// value is a candidate), or None where `check` asked whether every value is finite and one is
/// not (NaN or infinite).
fn largest(isa: Isa, row: &[f32], top: &mut Vec<u32>, check: bool) -> Option<f32> {
    top.clear();
    if row.len() <= RESCORED {
        top.extend(0..row.len() as u32);
        let finite = !check || suanli_core::scan::first_nonfinite(row).is_none();
        return finite.then_some(f32::NEG_INFINITY);
    }
    // Float maxima (NaN ignored, as a skipped block's NaN always was), and `m < floor` in
    // floats proves every value of the block below the floor in `total_cmp`'s order too. A
    // maximum need only equal its block's largest value as a float (either zero for a block
    // whose largest are zeros): the floor is then at most the answer's smallest, and the
    // selection below decides.
    let (maxima, finite) = block_maxima(isa, row, check);
    if check && !finite {
        // The candidates are still wanted (the rows' values are rescored all the same).
        largest_of(isa, row, &maxima, top);
        return None;
    }
    Some(largest_of(isa, row, &maxima, top))
}

/// `largest` from the blocks' maxima: the candidates into `top`, and the bound.
fn largest_of(isa: Isa, row: &[f32], maxima: &[f32], top: &mut Vec<u32>) -> f32 {
    let floor = if maxima.len() > RESCORED {
        let mut m = maxima.to_vec();
        *m.select_nth_unstable_by(RESCORED - 1, |a, b| b.total_cmp(a))
            .1
    } else {
        // Fewer blocks than answers: every value is a candidate.
        f32::NEG_INFINITY
    };
    let floor_key = if floor == f32::NEG_INFINITY {
        0
    } else {
        key(floor)
    };
    let mut cand: Vec<(u32, u32)> = Vec::with_capacity(4 * RESCORED);
    for (b, block) in row.chunks(SPAN).enumerate() {
        if maxima[b] < floor {
            continue;
        }
        let base = b * SPAN;
        #[cfg(target_arch = "x86_64")]
        if matches!(isa, Isa::Avx512 | Isa::Amx) && block.len() == SPAN {
            // SAFETY: the level guarantees AVX-512 F; the block holds SPAN values.
            unsafe { x86::gather(block, base as u32, floor_key, &mut cand) };
            continue;
        }
        for (j, &x) in block.iter().enumerate() {
            let k = key(x);
            if k >= floor_key {
                cand.push((k, (base + j) as u32));
            }
        }
    }
    // Values left out are below the floor (not gathered) or at most the smallest kept.
    let bound = if cand.len() > RESCORED {
        cand.select_nth_unstable_by(RESCORED - 1, |a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        cand.truncate(RESCORED);
        row[cand[RESCORED - 1].1 as usize]
    } else {
        floor
    };
    top.extend(cand.iter().map(|c| c.1));
    bound
}

/// Each `SPAN` values' largest as a float (NaN ignored), and (where `check` asks; true
/// otherwise) whether every value is finite.
fn block_maxima(isa: Isa, row: &[f32], check: bool) -> (Vec<f32>, bool) {
    #[cfg(target_arch = "x86_64")]
    if matches!(isa, Isa::Avx512 | Isa::Amx) {
        // SAFETY: the level guarantees AVX-512 F.
        return unsafe { x86::block_maxima(row) };
    }
    let _ = isa;
    let finite = !check || suanli_core::scan::first_nonfinite(row).is_none();
    (
        row.chunks(SPAN).map(suanli_core::scan::block_max).collect(),
        finite,
    )
}

#[cfg(test)]
mod tests {
    /// The vector rescoring path gives the scalar path's values bit for bit: Q8_0 and Q6_K rows
    /// dequantized as the oracle does (scales of every magnitude, subnormal included), and the
    /// f64 sum of every length (tails of 0–7) with values of mixed signs and sizes.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vector_rescoring_equals_the_scalar_path() {
        if !(is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c"))
        {
            eprintln!("no AVX2/FMA/F16C: the vector rescoring is not tested");
            return;
        }
        let mut raw = crate::testutil::bytes(34 * 28, 7);
        for (i, b) in raw.chunks_exact_mut(34).enumerate() {
            let d = half::f16::from_f32([3.1e-5, 0.0123, -0.7, 6e-8, 1.5][i % 5]);
            b[..2].copy_from_slice(&d.to_le_bytes());
        }
        let mut want = vec![0f32; 32 * 28];
        suanli_core::quant::dequantize(suanli_core::DType::Q8_0, &raw, &mut want).unwrap();
        let mut got = vec![f32::NAN; 32 * 28];
        unsafe { super::x86::dequantize_q8_0(&raw, &mut got) };
        assert_eq!(
            got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            want.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
        // Q6_K: random quants and signed scales, d of every magnitude.
        let mut raw6 = crate::testutil::bytes(210 * 6, 5);
        for (i, b) in raw6.chunks_exact_mut(210).enumerate() {
            let d = half::f16::from_f32([2.5e-4, -0.031, 6e-8, 1.0, -3.0e-6, 0.5][i]);
            b[208..].copy_from_slice(&d.to_le_bytes());
        }
        let mut want6 = vec![0f32; 256 * 6];
        suanli_core::quant::dequantize(suanli_core::DType::Q6K, &raw6, &mut want6).unwrap();
        let mut got6 = vec![f32::NAN; 256 * 6];
        unsafe { super::x86::dequantize_q6_k(&raw6, &mut got6) };
        assert_eq!(
            got6.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            want6.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            "Q6_K"
        );
        let x: Vec<f32> = crate::testutil::bytes(901, 9)
            .iter()
            .enumerate()
            .map(|(i, &b)| (b as f32 - 127.5) * [1e-3, 1.0, 37.0][i % 3])
            .collect();
        for n in (0..40).chain([896, 901]) {
            let a = &want[..n.min(want.len())];
            let b = &x[..a.len()];
            let (v, s) = (unsafe { super::x86::dot_f64(a, b) }, super::dot_f64(a, b));
            assert_eq!(v.to_bits(), s.to_bits(), "{n} values: {v} vs {s}");
            // Rows interleaved (each a different stretch of the values), AVX2 and AVX-512.
            let rows: Vec<&[f32]> = (0..super::BATCH)
                .map(|r| &want[r * 7..r * 7 + a.len().min(want.len() - r * 7)])
                .collect();
            let n = rows.iter().map(|r| r.len()).min().unwrap();
            let rows: Vec<&[f32]> = rows.iter().map(|r| &r[..n]).collect();
            let mut got = [0f64; super::BATCH];
            unsafe { super::x86::dot_f64_rows(&rows, &x[..n], &mut got) };
            let mut got512 = [f64::NAN; super::BATCH];
            if is_x86_feature_detected!("avx512f") {
                unsafe { super::x86::dot_f64_rows512(&rows, &x[..n], &mut got512) };
            }
            for (r, w) in rows.iter().enumerate() {
                let s = super::dot_f64(w, &x[..n]);
                assert_eq!(got[r].to_bits(), s.to_bits(), "AVX2, row {r}, {n} values");
                if is_x86_feature_detected!("avx512f") {
                    assert_eq!(
                        got512[r].to_bits(),
                        s.to_bits(),
                        "AVX-512, row {r}, {n} values"
                    );
                }
            }
        }
    }

    /// A Q8_0 head rescored (`ExactTop`) through the backend: `top_logits` equals a full sort
    /// of the backend's own logits (largest first, lower index first on ties) for k 1, 3 and 40
    /// over 37 rows (split over two threads), and the rescored candidates decided every
    /// ordinary row (`RowTops::found`; without it only the scan would have been tested). Rows
    /// they cannot decide fall back to the scan and still agree: 300 head rows tied at the
    /// top (more than the 256 candidates), and an input holding an infinity.
    #[test]
    fn rescored_candidates_give_the_rows_top_logits() {
        use suanli_backend::{ActPrecision, Backend, HostTensor, WeightRole};
        let b = crate::CpuBackend::new(Some(2)).unwrap();
        let (vocab, cols, n) = (2000, 96, 37);
        let (tied, tie) = (1500..1800, 29);
        let mut raw = crate::testutil::bytes(vocab * cols / 32 * 34, 3);
        for (i, blk) in raw.chunks_exact_mut(34).enumerate() {
            let row = i / (cols / 32);
            let d = if tied.contains(&row) { 0.015625 } else { 0.01 };
            blk[..2].copy_from_slice(&half::f16::from_f32(d).to_le_bytes());
            if tied.contains(&row) {
                blk[2..].fill(127);
            }
        }
        let bytes = suanli_formats::Bytes::from_vec(raw);
        let head = b
            .prepare_weight(HostTensor {
                name: "head",
                dtype: suanli_core::DType::Q8_0,
                rows: vocab,
                cols,
                bytes: &bytes,
                role: WeightRole::Matrix,
                precision: ActPrecision::ExactTop,
            })
            .unwrap();
        assert!(head.store.rescore_top);
        // Inputs summing to zero (the tied rows stay in the middle), except row `tie` (the
        // tied rows come first) and row `inf` (an infinity). Row `tie` is 127 / 128 throughout
        // and the tied rows' scale 1 / 64: quantized exactly (scale 2⁻⁷), so the tied rows'
        // rescored values equal their first ones, and the 44 tied rows left out equal the
        // smallest candidate.
        let inf = 11;
        let mut x = Vec::new();
        for r in 0..n {
            let v: Vec<f32> = crate::testutil::bytes(cols, 100 + r as u32)
                .iter()
                .map(|&q| (q as f32 - 127.5) / 50.0)
                .collect();
            let mean = v.iter().sum::<f32>() / cols as f32;
            x.extend(v.iter().map(|q| match r {
                _ if r == tie => 0.9921875,
                _ => q - mean,
            }));
        }
        x[inf * cols + 5] = f32::INFINITY;
        let mut act = b.alloc_act(n, cols).unwrap();
        b.upload(&x, n, &mut act).unwrap();
        let rows: Vec<u32> = (0..n as u32).collect();
        let mut logits = vec![0f32; n * vocab];
        b.logits(&act, &rows, &head, &mut logits).unwrap();
        for k in [1, 3, 40] {
            let top = b.top_logits(&act, &rows, &head, k, false).unwrap().unwrap();
            let mut pairs = vec![(0, 0.0); n * k];
            let mut found = vec![false; n];
            let mut out = vec![0f32; n * vocab];
            let tops = super::RowTops {
                k,
                pairs: &mut pairs,
                found: &mut found,
            };
            b.head_logits(&act, &rows, &head, &mut out, Some(tops))
                .unwrap();
            for (r, row) in logits.chunks_exact(vocab).enumerate() {
                let got = &top.pairs[r * k..(r + 1) * k];
                if row.iter().all(|v| v.is_finite()) {
                    let mut want: Vec<(u32, f32)> = row
                        .iter()
                        .enumerate()
                        .map(|(i, &v)| (i as u32, v))
                        .collect();
                    want.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap().then(a.0.cmp(&b.0)));
                    assert_eq!(got, &want[..k], "k {k}, row {r}");
                } else {
                    assert!(
                        got.iter().all(|&(i, v)| i == u32::MAX && v.is_nan()),
                        "row {r}"
                    );
                }
                let decided = r != tie && r != inf;
                assert_eq!(
                    found[r], decided,
                    "k {k}, row {r}: decided by the candidates"
                );
                if decided {
                    assert_eq!(&pairs[r * k..(r + 1) * k], got, "k {k}, row {r}");
                }
            }
            // The tied row's answer: the tied head rows, lowest index first.
            assert_eq!(top.pairs[tie * k].0, tied.start as u32);
        }
    }

    /// `largest` keeps the same indices as sorting by value, ties to the lower index, with
    /// negative values, repeated values and the largest ones anywhere.
    #[test]
    fn largest_equals_a_sort() {
        let noisy = |v: usize, seed: u32| -> Vec<f32> {
            crate::testutil::bytes(v, seed)
                .iter()
                .enumerate()
                .map(|(i, &b)| (b as f32 - 128.0) / 8.0 + if i % 97 == 5 { 20.0 } else { 0.0 })
                .collect()
        };
        // Many ties (256 distinct values); rising and falling rows; one value throughout;
        // signed zeros and infinities; a row of 200 (fewer than the answer) and of 257.
        let rows: Vec<Vec<f32>> = vec![
            noisy(300, 1),
            noisy(5000, 2),
            noisy(151_936, 3),
            (0..20_000).map(|i| i as f32).collect(),
            (0..20_000).map(|i| -(i as f32)).collect(),
            vec![1.5; 3000],
            (0..4000)
                .map(|i| [0.0, -0.0, f32::INFINITY, f32::NEG_INFINITY, 1.0][i % 5])
                .collect(),
            noisy(200, 4),
            noisy(257, 5),
            // A NaN among the smallest values (its block is never gathered), and one NaN in a
            // row of fewer values than the answer.
            noisy(5000, 6)
                .into_iter()
                .enumerate()
                .map(|(i, v)| {
                    if i == 4321 {
                        f32::NAN
                    } else {
                        v - 40.0 * (i == 4320) as u8 as f32
                    }
                })
                .collect(),
            (0..100)
                .map(|i| if i == 7 { f32::NAN } else { i as f32 })
                .collect(),
        ];
        for (isa, row) in crate::kernels::Isa::available()
            .into_iter()
            .flat_map(|isa| rows.iter().map(move |r| (isa, r)))
        {
            let v = row.len();
            let mut got = Vec::new();
            let bound = super::largest(isa, row, &mut got, true);
            // The bound: given exactly for the rows of finite values, at least every value
            // left out and at most every candidate.
            let finite = row.iter().all(|x| x.is_finite());
            assert_eq!(bound.is_some(), finite, "{v} values, {}", isa.name());
            if let Some(b) = bound {
                let kept: std::collections::HashSet<u32> = got.iter().copied().collect();
                for (i, &x) in row.iter().enumerate() {
                    match kept.contains(&(i as u32)) {
                        true => assert!(x >= b, "{v} values: candidate {i} {x} below {b}"),
                        false => assert!(x <= b, "{v} values: {i} {x} left out above {b}"),
                    }
                }
            }
            let mut unchecked = Vec::new();
            assert!(super::largest(isa, row, &mut unchecked, false).is_some());
            assert_eq!(got, unchecked);
            if row.iter().any(|x| x.is_nan()) {
                // A sort by `total_cmp` puts NaN above everything, the block maxima skip it:
                // such rows are only `check`'s.
                continue;
            }
            got.sort_unstable();
            let mut idx: Vec<u32> = (0..v as u32).collect();
            idx.sort_by(|&a, &b| row[b as usize].total_cmp(&row[a as usize]).then(a.cmp(&b)));
            let mut want = idx[..super::RESCORED.min(v)].to_vec();
            want.sort_unstable();
            assert_eq!(got, want, "{v} values, {}", isa.name());
        }
    }
}
