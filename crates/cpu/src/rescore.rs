//! `ActPrecision::ExactTop` heads: the largest logits of each row recomputed with f32
//! activations.

use crate::kernels::Isa;
use crate::{pool, CpuWeight};
use suanli_backend::Weight;

/// Candidates per logits row recomputed with f32 activations (`ActPrecision::ExactTop`): they
/// carry nearly all of the softmax's mass, so the answer and the normalizer come out as from
/// f32 activations. On Gemma 3 270M: mean |Δ log p| from the f32 computation 0.107 → 0.094 with
/// 512 (two passes over the whole head: 0.094 at 1.5× the decode time); 64 give 0.098.
const RESCORED: usize = 256;

pub(crate) fn rescore_top(
    isa: Isa,
    pool: &pool::Pool,
    xs: &[f32],
    head: &Weight<CpuWeight>,
    out: &mut [f32],
) {
    let (v, k) = (head.rows, head.cols);
    if v <= RESCORED {
        return;
    }
    pool.split_mut(out, v, 1, &|t0, part| {
        let mut top = Vec::with_capacity(RESCORED);
        let mut scratch = vec![0f32; k];
        for (i, row) in part.chunks_exact_mut(v).enumerate() {
            let x = &xs[(t0 + i) * k..(t0 + i + 1) * k];
            largest(row, &mut top);
            for (j, &r) in top.iter().enumerate() {
                // The candidates lie anywhere in the head: ask for the next one's lines while
                // this one is computed (memory latency, not arithmetic, bounds this loop).
                if let Some(&next) = top.get(j + 1) {
                    prefetch_row(head, next as usize);
                }
                row[r as usize] = row_dot(isa, head, r as usize, x, &mut scratch) as f32;
            }
        }
    });
}

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

/// Head row `r` · `x` in f64 over the row's dequantized values (the oracle's). On x86 with
/// AVX2, FMA and F16C, Q8_0 rows are dequantized 8 at a time and every row's sum runs 8 lanes
/// wide: the same f32 values and the same 8 interleaved f64 sums as `dot_f64`, so the same
/// result (the scalar dequantization and sum were ~8 % of a 16-stream decode step).
fn row_dot(isa: Isa, head: &Weight<CpuWeight>, r: usize, x: &[f32], scratch: &mut [f32]) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if matches!(isa, Isa::Avx2 | Isa::Avx2Vnni | Isa::Avx512 | Isa::Amx) {
        let k = head.cols;
        let w: &[f32] = if head.dtype == suanli_core::DType::Q8_0 && head.store.f32.is_none() {
            // SAFETY: the level guarantees AVX2, FMA and F16C.
            unsafe { x86::dequantize_q8_0(raw_row(head, r), &mut scratch[..k]) };
            &scratch[..k]
        } else {
            head.store.row(head, r, scratch)
        };
        // SAFETY: as above.
        return unsafe { x86::dot_f64(w, x) };
    }
    let _ = isa;
    dot_f64(head.store.row(head, r, scratch), x)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
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
        let tail: f64 = a[i..n]
            .iter()
            .zip(&b[i..n])
            .map(|(x, y)| *x as f64 * *y as f64)
            .sum();
        acc.iter().sum::<f64>() + tail
    }
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
/// logits.)
fn largest(row: &[f32], top: &mut Vec<u32>) {
    top.clear();
    if row.len() <= RESCORED {
        top.extend(0..row.len() as u32);
        return;
    }
    // Float maxima (NaN ignored, as a skipped block's NaN always was): they vectorize with
    // the base instruction set, and `m < floor` in floats proves every value of the block
    // below the floor in `total_cmp`'s order too.
    let maxima: Vec<f32> = row.chunks(SPAN).map(suanli_core::scan::block_max).collect();
    let floor = if maxima.len() > RESCORED {
        let mut m = maxima.clone();
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
        for (j, &x) in block.iter().enumerate() {
            let k = key(x);
            if k >= floor_key {
                cand.push((k, (b * SPAN + j) as u32));
            }
        }
    }
    if cand.len() > RESCORED {
        cand.select_nth_unstable_by(RESCORED - 1, |a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        cand.truncate(RESCORED);
    }
    top.extend(cand.iter().map(|c| c.1));
}

#[cfg(test)]
mod tests {
    /// The vector rescoring path gives the scalar path's values bit for bit: Q8_0 rows
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
        ];
        for row in rows {
            let v = row.len();
            let mut got = Vec::new();
            super::largest(&row, &mut got);
            got.sort_unstable();
            let mut idx: Vec<u32> = (0..v as u32).collect();
            idx.sort_by(|&a, &b| row[b as usize].total_cmp(&row[a as usize]).then(a.cmp(&b)));
            let mut want = idx[..super::RESCORED.min(v)].to_vec();
            want.sort_unstable();
            assert_eq!(got, want, "{v} values");
        }
    }
}
