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
            let mut vals = Vec::with_capacity(top.len());
            write_back(row, top, &sums, &mut vals);
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
            write_back(row, &top, &sums, &mut vals);
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

/// The candidates' recomputed sums into their places in `row`, as f32 (and into `vals`, which
/// the selection of `top_of_candidates` reads).
fn write_back(row: &mut [f32], top: &[u32], sums: &[f64], vals: &mut Vec<f32>) {
    vals.clear();
    vals.extend(sums.iter().map(|&s| s as f32));
    for (&r, &s) in top.iter().zip(vals.iter()) {
        row[r as usize] = s;
    }
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
mod x86;

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
    // The candidates are wanted either way (the rows' values are rescored all the same).
    let bound = largest_of(isa, row, &maxima, top);
    (!check || finite).then_some(bound)
}

/// `largest` from the blocks' maxima: the candidates into `top`, and the bound.
fn largest_of(isa: Isa, row: &[f32], maxima: &[f32], top: &mut Vec<u32>) -> f32 {
    // Only x86 has a vector gathering.
    #[cfg(not(target_arch = "x86_64"))]
    let _ = isa;
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
