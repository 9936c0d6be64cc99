//! The tiled attention against a plain two-pass softmax in f64, for every ISA level and both
//! cache types: grouped heads, non-contiguous blocks, partial last blocks, a batch mixing a long
//! decode row with a short prefill.

use super::BLOCK;
use crate::kernels::Isa;
use crate::testutil::bytes;
use crate::CpuBackend;
use crate::KvStore;
use suanli_backend::{AttnMeta, AttnSeq, Backend, KvDType, KvPages, KvSpec};

fn randn(n: usize, seed: u32) -> Vec<f32> {
    bytes(n, seed)
        .iter()
        .map(|&b| (b as f32 - 127.5) / 64.0)
        .collect()
}

#[test]
fn tiled_attention_matches_a_two_pass_softmax() {
    // Groups of 3 and 7 query heads per KV head: whole and partial row tiles on AMX; head sizes
    // 64, 128 and 256.
    // 36: a head size that is no multiple of 8 or 16 (the vector loops' tails).
    for (nh, nkv, hd) in [(6, 2, 64), (14, 2, 128), (4, 1, 256), (3, 1, 36)] {
        check(nh, nkv, hd);
    }
}

/// The worst difference from the f64 softmax over these cases, per level: 1.5e-6 with f32
/// products (every level but AMX), 1.2e-5 with AMX's bf16 hi/lo products (2^-17 per operand).
const TOLERANCE: f64 = 2e-5;

fn check(nh: usize, nkv: usize, hd: usize) {
    let kvd = nkv * hd;
    // Sequence 0 decodes one token at position 70 (5 blocks, the last partial); sequence 1
    // prefills 5 tokens at positions 16..21; sequence 2 prefills 37 at positions 20..57 (runs
    // of 16, 16 and 5 tokens, each crossing blocks), the last 7 of them generated tokens (the
    // f32 loops at every level). Without and with a sliding window.
    let seqs = vec![
        AttnSeq {
            q_start: 0,
            q_len: 1,
            ctx_len: 71,
            block_table: vec![7, 2, 9, 0, 4],
            generated_from: 70,
        },
        AttnSeq {
            q_start: 1,
            q_len: 5,
            ctx_len: 21,
            block_table: vec![3, 8],
            generated_from: usize::MAX,
        },
        AttnSeq {
            q_start: 6,
            q_len: 37,
            ctx_len: 57,
            block_table: vec![12, 10, 13, 11],
            generated_from: 50,
        },
    ];
    let slots_of = |s: &AttnSeq| -> Vec<u32> {
        (0..s.ctx_len)
            .map(|p| s.block_table[p / BLOCK] * BLOCK as u32 + (p % BLOCK) as u32)
            .collect()
    };
    for (dtype, window) in [
        (KvDType::F32, None),
        (KvDType::F16, None),
        (KvDType::Q8_0, None),
        (KvDType::F16, Some(19)),
    ] {
        if dtype == KvDType::Q8_0 && !hd.is_multiple_of(32) {
            // A Q8_0 cache scales 32 values of a position at a time.
            continue;
        }
        // One thread and two: AMX runs are as long as leave each thread four units, so row tiles
        // fall at different places.
        for (isa, threads) in Isa::available().into_iter().flat_map(|i| [(i, 1), (i, 2)]) {
            let b = CpuBackend::with_isa(Some(threads), isa).unwrap();
            let spec = KvSpec {
                dtype,
                n_layers: 1,
                num_blocks: 14,
                block_size: BLOCK,
                n_kv_heads: nkv,
                head_dim: hd,
            };
            let mut kv = b.alloc_kv(spec).unwrap();
            // Per sequence, K and V of every position (rounded as the cache stores them).
            let round = |v: Vec<f32>| -> Vec<f32> {
                match dtype {
                    KvDType::F16 => v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect(),
                    KvDType::F32 => v,
                    // Per 32 values of one position and head, as the cache quantizes them.
                    KvDType::Q8_0 => v
                        .chunks_exact(32)
                        .flat_map(|c| {
                            let (q, d) = crate::kv_q8(c);
                            q.map(|x| x as f32 * d.to_f32())
                        })
                        .collect(),
                }
            };
            let mut kvs = Vec::new();
            for (si, s) in seqs.iter().enumerate() {
                let slots = slots_of(s);
                let k = randn(s.ctx_len * kvd, 10 + si as u32);
                let v = randn(s.ctx_len * kvd, 20 + si as u32);
                write(&b, &mut kv, &k, &v, &slots);
                kvs.push((round(k), round(v)));
            }
            let rows = 43;
            let q = randn(rows * nh * hd, 99);
            let mut qa = b.alloc_act(rows, nh * hd).unwrap();
            b.upload(&q, rows, &mut qa).unwrap();
            let mut out = b.alloc_act(rows, nh * hd).unwrap();
            let scale = 1.0 / (hd as f32).sqrt();
            let meta = AttnMeta {
                window,
                seqs: &seqs,
                n_heads: nh,
                n_kv_heads: nkv,
                head_dim: hd,
                scale,
            };
            b.attention(&qa, &kv, &meta, 0, &mut out).unwrap();
            let got = b.download(&out).unwrap();
            for (si, s) in seqs.iter().enumerate() {
                let (k, v) = &kvs[si];
                for i in 0..s.q_len {
                    let row = s.q_start + i;
                    let len = s.ctx_len - s.q_len + i + 1;
                    let start = window.map_or(0, |w: usize| len.saturating_sub(w));
                    for h in 0..nh {
                        let kvh = h / (nh / nkv);
                        let qh = &q[row * nh * hd + h * hd..row * nh * hd + (h + 1) * hd];
                        let want = softmax_f64(qh, (k, v), kvd, kvh, start..len, scale);
                        for (d, want) in want.into_iter().enumerate() {
                            let g = got[row * nh * hd + h * hd + d] as f64;
                            assert!(
                                (g - want).abs() < TOLERANCE,
                                "{nh}/{nkv}×{hd} {isa:?} {threads} threads {dtype:?} window {window:?} seq {si} row {i} head {h} dim {d}: {g} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }
}

/// A row's result does not depend on what else the call computes: a prefill of 37 tokens in
/// one call (two threads) and cut into calls of 1, 16 and 20 rows (one thread) give the same
/// bits at every level (on AMX: other runs, other row tiles, chunks at the same positions).
#[test]
fn a_rows_bits_do_not_depend_on_the_call() {
    let (nh, nkv, hd, pre, n) = (14, 2, 64, 20, 37);
    let (k, v) = (
        randn((pre + n) * nkv * hd, 1),
        randn((pre + n) * nkv * hd, 2),
    );
    let q = randn(n * nh * hd, 3);
    let table = [5, 1, 4, 0];
    for isa in Isa::available() {
        for window in [None, Some(21)] {
            let run = |threads: usize, cuts: &[usize]| {
                let case = Calls {
                    isa,
                    threads,
                    heads: (nh, nkv, hd),
                    pre,
                    table: &table,
                };
                case.attend(cuts, (&k, &v, &q), window, 0.125)
            };
            let whole = run(2, &[0, n]);
            let cut = run(1, &[0, 1, 17, n]);
            let same = whole
                .iter()
                .zip(&cut)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{isa:?} window {window:?}: the cut calls differ");
        }
    }
}

/// Scores that jump by 0, 5 or 10 (by query head) at position 45, past the 8 of slack the
/// AMX kernel leaves a row's max before rescaling it: the rows of one row tile rescale there or
/// not, each as its own scores say. Against the f64 softmax, and the same bits however the
/// rows are cut into calls. (K's and Q's first dimension carries the jump, with values bf16
/// holds exactly; the other dimensions are small, so the scores stay as exact as elsewhere.)
#[test]
fn rows_rescale_where_their_own_scores_jump() {
    let (nh, nkv, hd, pre, n) = (14, 2, 64, 20, 40);
    let (kvd, ctx, group) = (nkv * hd, pre + n, nh / nkv);
    let small = |n: usize, seed: u32| -> Vec<f32> {
        // Multiples of 2^-8 up to 0.5: exact in f16 and in a bf16 hi/lo pair.
        randn(n, seed)
            .iter()
            .map(|x| (x * 64.0).round() / 256.0)
            .collect()
    };
    let mut k = small(ctx * kvd, 1);
    for p in 0..ctx {
        for h in 0..nkv {
            k[p * kvd + h * hd] = if p >= 45 { 80.0 } else { 0.0 };
        }
    }
    let v = randn(ctx * kvd, 2);
    let mut q = small(n * nh * hd, 3);
    for t in 0..n {
        for h in 0..nh {
            q[(t * nh + h) * hd] = (h % 3) as f32 * 0.5;
        }
    }
    let (scale, table) = (0.125, [5, 1, 4, 0]);
    for isa in Isa::available() {
        let run = |threads: usize, cuts: &[usize]| {
            let case = Calls {
                isa,
                threads,
                heads: (nh, nkv, hd),
                pre,
                table: &table,
            };
            case.attend(cuts, (&k, &v, &q), None, scale)
        };
        let whole = run(2, &[0, n]);
        for t in 0..n {
            for h in 0..nh {
                let qh = &q[(t * nh + h) * hd..][..hd];
                let want = softmax_f64(qh, (&k, &v), kvd, h / group, 0..pre + t + 1, scale);
                for (d, want) in want.into_iter().enumerate() {
                    let g = whole[(t * nh + h) * hd + d] as f64;
                    assert!(
                        (g - want).abs() < TOLERANCE,
                        "{isa:?} token {t} head {h} dim {d}: {g} vs {want}"
                    );
                }
            }
        }
        let cut = run(1, &[0, 1, 17, n]);
        let same = whole
            .iter()
            .zip(&cut)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "{isa:?}: the cut calls differ");
    }
}

/// One sequence's prefill of query rows after `pre` cached positions (an F16 cache, its blocks
/// at `table`), computed at one level with some threads.
struct Calls<'a> {
    isa: Isa,
    threads: usize,
    /// Query heads, KV heads, head size.
    heads: (usize, usize, usize),
    pre: usize,
    table: &'a [u32],
}

impl Calls<'_> {
    /// The rows' attention outputs, the rows cut into calls at `cuts` (each call attends the
    /// cache up to its last row); `k` and `v` hold every position, `q` every row.
    fn attend(
        &self,
        cuts: &[usize],
        (k, v, q): (&[f32], &[f32], &[f32]),
        window: Option<usize>,
        scale: f32,
    ) -> Vec<f32> {
        let (nh, nkv, hd) = self.heads;
        let b = CpuBackend::with_isa(Some(self.threads), self.isa).unwrap();
        let spec = KvSpec {
            dtype: KvDType::F16,
            n_layers: 1,
            num_blocks: 6,
            block_size: BLOCK,
            n_kv_heads: nkv,
            head_dim: hd,
        };
        let mut kv = b.alloc_kv(spec).unwrap();
        let slots: Vec<u32> = (0..k.len() / (nkv * hd))
            .map(|p| self.table[p / BLOCK] * BLOCK as u32 + (p % BLOCK) as u32)
            .collect();
        write(&b, &mut kv, k, v, &slots);
        let mut got = Vec::new();
        for w in cuts.windows(2) {
            let rows = w[1] - w[0];
            let mut qa = b.alloc_act(rows, nh * hd).unwrap();
            b.upload(&q[w[0] * nh * hd..w[1] * nh * hd], rows, &mut qa)
                .unwrap();
            let mut out = b.alloc_act(rows, nh * hd).unwrap();
            let seqs = [AttnSeq {
                q_start: 0,
                q_len: rows,
                ctx_len: self.pre + w[1],
                block_table: self.table.to_vec(),
                generated_from: usize::MAX,
            }];
            let meta = AttnMeta {
                window,
                seqs: &seqs,
                n_heads: nh,
                n_kv_heads: nkv,
                head_dim: hd,
                scale,
            };
            b.attention(&qa, &kv, &meta, 0, &mut out).unwrap();
            got.extend(b.download(&out).unwrap());
        }
        got
    }
}

/// The oracle: one query head's attention over `positions` in f64 (a two-pass softmax), for KV
/// head `kvh` of `k` and `v` (`kvd` values per position).
fn softmax_f64(
    qh: &[f32],
    (k, v): (&[f32], &[f32]),
    kvd: usize,
    kvh: usize,
    positions: std::ops::Range<usize>,
    scale: f32,
) -> Vec<f64> {
    let hd = qh.len();
    let scores: Vec<f64> = positions
        .clone()
        .map(|p| {
            let kp = &k[p * kvd + kvh * hd..][..hd];
            let dot: f64 = qh.iter().zip(kp).map(|(a, b)| *a as f64 * *b as f64).sum();
            dot * scale as f64
        })
        .collect();
    let max = scores.iter().cloned().fold(f64::MIN, f64::max);
    let w: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
    let sum: f64 = w.iter().sum();
    (0..hd)
        .map(|d| {
            let at = |p: usize| v[p * kvd + kvh * hd + d] as f64;
            positions
                .clone()
                .zip(&w)
                .map(|(p, w)| w * at(p))
                .sum::<f64>()
                / sum
        })
        .collect()
}

/// K and V rows (one per slot) into layer 0 of the cache.
fn write(b: &CpuBackend, kv: &mut KvPages<KvStore>, k: &[f32], v: &[f32], slots: &[u32]) {
    let (n, kvd) = (slots.len(), k.len() / slots.len());
    let (mut ka, mut va) = (b.alloc_act(n, kvd).unwrap(), b.alloc_act(n, kvd).unwrap());
    b.upload(k, n, &mut ka).unwrap();
    b.upload(v, n, &mut va).unwrap();
    b.write_kv(&ka, &va, slots, kv, 0).unwrap();
}

#[test]
fn exp_neg_is_close_to_exp() {
    let mut worst = 0f64;
    for i in 0..174_000 {
        let x = -(i as f32) * 0.0005;
        let (got, want) = (super::exp_neg(x) as f64, (x as f64).exp());
        worst = worst.max((got - want).abs() / want);
    }
    assert!(worst < 5e-7, "relative error {worst}");
    // Further out it flushes to about e^-87 (negligible next to any sum it enters).
    assert!(super::exp_neg(-1000.0) < 2e-38 && super::exp_neg(-1000.0) >= 0.0);
}
