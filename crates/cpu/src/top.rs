//! `Backend::top_logits` on the CPU: each row's largest logits selected by the thread pool.
//!
//! Without it the engine took every row's whole vocabulary and, on its own thread while the
//! workers waited, scanned each for a non-finite value and then for its largest (two passes
//! over 151,936 floats a row: ~3 % of a 16-stream decode step of Qwen2.5-Coder-0.5B). Here
//! the rows are shared by the threads.

use suanli_core::scan::{block_max, first_nonfinite};

/// Most candidates per row offered (more, and the caller takes the whole rows).
pub(crate) const TOP_MAX: usize = 256;

/// Most rows whose logits are computed at once (`CpuBackend::top_logits` takes more in chunks):
/// the scratch stays at most 64 × the vocabulary (39 MB for Qwen's 151,936).
pub(crate) const ROWS_AT_ONCE: usize = 64;

/// Values per block: each block's maximum (vector code) decides whether its values are looked
/// at one by one.
const BLOCK: usize = 64;

/// The `out.len()` largest values of `row` with their indices, largest first and the lower
/// index first on ties; all `(u32::MAX, NaN)` when a value of `row` is NaN or infinite.
/// `out.len()` is at most `row.len()`.
pub(crate) fn row_top(row: &[f32], out: &mut [(u32, f32)]) {
    let k = out.len();
    debug_assert!(k <= row.len());
    // A pass of its own: `first_nonfinite` is vector code, a test per block was not.
    if first_nonfinite(row).is_some() {
        out.fill((u32::MAX, f32::NAN));
        return;
    }
    // The candidates so far, sorted as the answer; `len` of them are set.
    let mut len = 0;
    for (b, block) in row.chunks(BLOCK).enumerate() {
        // Full, a block whose largest value does not pass the k-th cannot enter: on a tie the
        // earlier (lower) index stays.
        if len == k && block_max(block) <= out[k - 1].1 {
            continue;
        }
        for (i, &x) in block.iter().enumerate() {
            if len == k && x <= out[k - 1].1 {
                continue;
            }
            // After every value at least as large: ties keep index order.
            let at = out[..len].partition_point(|&(_, v)| v >= x);
            if len < k {
                len += 1;
            }
            out.copy_within(at..len - 1, at + 1);
            out[at] = ((b * BLOCK + i) as u32, x);
        }
    }
}

/// The logits rows of `vocab` values each in `logits`: each row's `k` candidates into its `k`
/// entries of `out`, selected by the pool's threads, except the rows `found` marks (their
/// entries already hold them: `rescore::RowTops`).
pub(crate) fn top_of_rows(
    pool: &crate::pool::Pool,
    logits: &[f32],
    vocab: usize,
    k: usize,
    out: &mut [(u32, f32)],
    found: &[bool],
) {
    debug_assert_eq!(out.len() / k, logits.len() / vocab);
    debug_assert_eq!(found.len(), logits.len() / vocab);
    if found.iter().all(|&f| f) {
        return;
    }
    pool.split_mut(out, k, 1, &|r0, part| {
        for (i, out) in part.chunks_exact_mut(k).enumerate() {
            let r = r0 + i;
            if !found[r] {
                row_top(&logits[r * vocab..(r + 1) * vocab], out);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every value ranked by a full sort (largest first, lower index first on ties).
    fn sorted(row: &[f32]) -> Vec<(u32, f32)> {
        let mut all: Vec<(u32, f32)> = row
            .iter()
            .enumerate()
            .map(|(i, &x)| (i as u32, x))
            .collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        all
    }

    fn lcg(seed: &mut u64) -> u64 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        *seed >> 33
    }

    /// Rows with many ties (values from a few levels), ties across blocks and inside one,
    /// the largest at the first and the last index, negative rows, lengths that leave a
    /// partial block: every k from 1 to 70 equals the full sort's first k. It fails when
    /// ties are broken by the later index or a skipped block's equal value enters.
    #[test]
    fn candidates_equal_the_first_of_a_full_sort() {
        let mut seed = 7u64;
        for case in 0..60 {
            let n = [1, 2, 63, 64, 65, 200, 1000, 4099][case % 8];
            let levels = [3u64, 17, 1 << 20][case % 3];
            let mut row: Vec<f32> = (0..n)
                .map(|_| (lcg(&mut seed) % levels) as f32 * 0.25 - 2.0)
                .collect();
            if case % 5 == 0 {
                row[0] = 1e9;
            }
            if case % 7 == 0 {
                row[n - 1] = 1e9;
            }
            if case % 4 == 1 {
                row.iter_mut().for_each(|x| *x = -x.abs() - 1.0);
            }
            let want = sorted(&row);
            for k in 1..=70.min(n) {
                let mut out = vec![(0, 0.0); k];
                row_top(&row, &mut out);
                assert_eq!(out, want[..k], "case {case}, n {n}, k {k}");
            }
        }
    }

    /// A NaN or an infinity anywhere (first block, a block its maximum would skip, the
    /// partial last block) marks the whole row.
    #[test]
    fn a_nonfinite_value_marks_the_row() {
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            for at in [0, 5, 130, 199] {
                let mut row: Vec<f32> = (0..200).map(|i| (i % 7) as f32).collect();
                row[3] = 100.0;
                row[at] = bad;
                let mut out = vec![(0, 0.0); 3];
                row_top(&row, &mut out);
                assert!(
                    out.iter().all(|&(i, v)| i == u32::MAX && v.is_nan()),
                    "{bad} at {at}: {out:?}"
                );
            }
        }
    }

    /// Through the backend, more rows than `ROWS_AT_ONCE` (three chunks, the last partial,
    /// rows picked out of order): the same candidates as the backend's own logits sorted.
    #[test]
    fn the_backend_selects_rows_beyond_one_chunk() {
        use suanli_backend::{ActPrecision, Backend, HostTensor, WeightRole};
        let b = crate::CpuBackend::new(Some(2)).unwrap();
        let (vocab, cols, n) = (200, 32, 2 * ROWS_AT_ONCE + 22);
        let mut seed = 11u64;
        let mut val = || (lcg(&mut seed) % 2001) as f32 / 1000.0 - 1.0;
        let w: Vec<f32> = (0..vocab * cols).map(|_| val()).collect();
        let x: Vec<f32> = (0..(n + 3) * cols).map(|_| val()).collect();
        let bytes =
            suanli_formats::Bytes::from_vec(w.iter().flat_map(|v| v.to_le_bytes()).collect());
        let head = b
            .prepare_weight(HostTensor {
                name: "head",
                dtype: suanli_core::DType::F32,
                rows: vocab,
                cols,
                bytes: &bytes,
                role: WeightRole::Matrix,
                precision: ActPrecision::Fast,
            })
            .unwrap();
        let mut act = b.alloc_act(n + 3, cols).unwrap();
        b.upload(&x, n + 3, &mut act).unwrap();
        let rows: Vec<u32> = (0..n as u32)
            .map(|r| (r * 7 + 2) % (n as u32 + 3))
            .collect();
        let top = b.top_logits(&act, &rows, &head, 5, false).unwrap().unwrap();
        let mut logits = vec![0f32; n * vocab];
        b.logits(&act, &rows, &head, &mut logits).unwrap();
        assert_eq!(top.pairs.len(), n * 5);
        for (r, row) in logits.chunks_exact(vocab).enumerate() {
            assert_eq!(top.pairs[r * 5..(r + 1) * 5], sorted(row)[..5], "row {r}");
        }
        // With the mass asked for, the whole rows go back.
        assert!(b.top_logits(&act, &rows, &head, 5, true).unwrap().is_none());
    }

    /// The pool's rows come back in row order, each its own row's candidates.
    #[test]
    fn rows_are_selected_in_order() {
        let pool = crate::pool::Pool::new(2).unwrap();
        let vocab = 300;
        let logits: Vec<f32> = (0..7 * vocab)
            .map(|i| ((i * 7919) % 1009) as f32 + (i / vocab) as f32 * 0.5)
            .collect();
        let mut pairs = vec![(0, 0.0); 7 * 4];
        top_of_rows(&pool, &logits, vocab, 4, &mut pairs, &[false; 7]);
        for r in 0..7 {
            let want = sorted(&logits[r * vocab..(r + 1) * vocab]);
            assert_eq!(pairs[r * 4..(r + 1) * 4], want[..4], "row {r}");
        }
    }
}
