//! Sampling where the logits are: `top_logits` and `sample_logits` against the backend's own
//! `logits`, selected or drawn here.

use super::{act, record, weight, Report, Rng};
use crate::{Backend, BackendError, Draw, WeightRole};
use suanli_core::DType;

/// An f32 output head `[vocab, cols]` and `n` hidden rows, on the backend.
#[allow(clippy::type_complexity)]
fn head_and_hidden<B: Backend>(
    b: &B,
    wf: &[f32],
    vocab: usize,
    x: &[f32],
    n: usize,
    cols: usize,
) -> Result<(crate::Weight<B::WeightStore>, crate::Act<B::Buffer>), BackendError> {
    let bytes = wf.iter().flat_map(|v| v.to_le_bytes()).collect();
    let w = weight(
        b,
        "lm_head",
        DType::F32,
        vocab,
        cols,
        WeightRole::Matrix,
        bytes,
    )?;
    Ok((w, act(b, x, n, cols)?))
}

/// `top_logits` (where offered) against the backend's own `logits`, sorted here: the same ids
/// and values exactly, ties (duplicate head rows) lower id first, and rows holding a NaN or an
/// infinity flagged. The error is the number of wrong entries. With `mass`, each row's
/// Σ exp(l − max) as well, within `MASS_TOL` of the sum over the logits in f64 (NaN for the
/// non-finite rows).
pub(super) fn check_top_logits<B: Backend>(
    b: &B,
    k: usize,
    mass: bool,
    rng: &mut Rng,
    rep: &mut Report,
) {
    let (vocab, cols, n) = (5000, 64, 6);
    let mut wf = rng.normals(vocab * cols, 1.0);
    let mut x = rng.normals(n * cols, 1.0);
    // Ties: five head rows equal, giving hidden row 4 its largest logit (40); and 300 equal rows
    // whose logit for hidden row 0 ranks about 20th, so the k-th largest value is tied for k 40
    // and 256 (only some of the tied ids are taken, the lowest).
    let along = |x: &[f32], logit: f32| -> Vec<f32> {
        let n2: f32 = x.iter().map(|v| v * v).sum();
        x.iter().map(|v| v * logit / n2).collect()
    };
    let top4 = along(&x[4 * cols..5 * cols], 40.0);
    for dup in [3, 17, 900, 901, 4999] {
        wf[dup * cols..(dup + 1) * cols].copy_from_slice(&top4);
    }
    let mut l0: Vec<f32> = wf
        .chunks_exact(cols)
        .map(|w| w.iter().zip(&x[..cols]).map(|(a, b)| a * b).sum())
        .collect();
    l0.sort_by(|a, b| b.total_cmp(a));
    let tied = along(&x[..cols], 0.5 * (l0[19] + l0[20]));
    for dup in 1000..1300 {
        wf[dup * cols..(dup + 1) * cols].copy_from_slice(&tied);
    }
    // Row 1 sees a NaN and row 2 an infinity in the hidden state: their logits are not finite.
    x[cols + 3] = f32::NAN;
    x[2 * cols + 9] = f32::INFINITY;
    let pick = [4u32, 0, 5, 1, 2];
    let got: Result<Option<(f64, f64)>, BackendError> = (|| {
        let (w, xa) = head_and_hidden(b, &wf, vocab, &x, n, cols)?;
        let Some(top) = b.top_logits(&xa, &pick, &w, k, mass)? else {
            return Ok(None);
        };
        let mut logits = vec![0f32; pick.len() * vocab];
        b.logits(&xa, &pick, &w, &mut logits)?;
        let mut wrong = top.pairs.len().abs_diff(pick.len() * k) + usize::from(top.k != k);
        let mut mass_error = 0f64;
        if mass && top.mass.len() != pick.len() {
            mass_error = f64::INFINITY;
        }
        for (i, row) in logits.chunks_exact(vocab).enumerate() {
            if let Some(&got) = top.mass.get(i).filter(|_| mass) {
                mass_error = mass_error.max(if row.iter().all(|l| l.is_finite()) {
                    let max = row.iter().fold(f32::NEG_INFINITY, |m, &l| m.max(l));
                    let want: f64 = row.iter().map(|&l| ((l - max) as f64).exp()).sum();
                    (got as f64 - want).abs() / want
                } else if got.is_nan() {
                    0.0
                } else {
                    f64::INFINITY
                });
            }
            let want: Vec<(u32, f32)> = if row.iter().all(|l| l.is_finite()) {
                let mut all: Vec<(u32, f32)> = row
                    .iter()
                    .enumerate()
                    .map(|(j, &l)| (j as u32, l))
                    .collect();
                all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                all.truncate(k);
                all
            } else {
                vec![(u32::MAX, f32::NAN); k]
            };
            let got = top.pairs.get(i * k..(i + 1) * k).unwrap_or(&[]);
            wrong += want
                .iter()
                .zip(got)
                .filter(|(w, g)| {
                    let same_value = if w.1.is_nan() {
                        g.1.is_nan()
                    } else {
                        w.1.to_bits() == g.1.to_bits()
                    };
                    w.0 != g.0 || !same_value
                })
                .count();
        }
        Ok(Some((wrong as f64, mass_error)))
    })();
    let (pairs_error, mass_error) = match got {
        Ok(None) => return, // not offered: the engine takes whole logits from this backend
        Ok(Some((p, m))) => (Ok(p), Ok(m)),
        Err(e) => {
            let failed = crate::shape_err("top_logits", e.to_string());
            (Err(e), Err(failed))
        }
    };
    let with = if mass { ", with the mass" } else { "" };
    let case = format!("k {k} of {vocab}, ties, non-finite rows{with}");
    if mass {
        record(rep, "top_logits mass", case.clone(), MASS_TOL, mass_error);
    }
    record(rep, "top_logits", case, 0.0, pairs_error);
}

/// `TopLogits::mass` against an f64 sum: f32 sums of the row's 5000 terms, in any order.
const MASS_TOL: f64 = 1e-5;

/// `sample_logits` (where offered) against the draw computed here from the backend's own
/// `logits`: greedy rows, temperatures with and without min-p, draws at the ends of [0, 1), rows
/// with a NaN or an infinity flagged. The error is the number of wrong tokens; a draw that lands
/// within 1e-9 of a boundary between two tokens may pick either.
pub(super) fn check_sample_logits<B: Backend>(b: &B, rng: &mut Rng, rep: &mut Report) {
    let (vocab, cols, n) = (5000, 64, 6);
    let wf = rng.normals(vocab * cols, 0.4);
    let mut x = rng.normals(n * cols, 1.0);
    x[cols + 3] = f32::NAN;
    x[2 * cols + 9] = f32::INFINITY;
    let pick = [4u32, 0, 5, 1, 2];
    let settings = [
        (0.0, 0.0),
        (0.7, 0.0),
        (1.0, 0.05),
        (1.5, 0.0),
        (1.0, 0.0),
        (0.3, 0.2),
    ];
    let got = (|| {
        let (w, xa) = head_and_hidden(b, &wf, vocab, &x, n, cols)?;
        let mut logits = vec![0f32; pick.len() * vocab];
        b.logits(&xa, &pick, &w, &mut logits)?;
        let mut wrong = 0;
        for round in 0..12 {
            let draws: Vec<Draw> = (0..pick.len())
                .map(|i| {
                    let (temperature, min_p) = settings[(round + i) % settings.len()];
                    let u = match round {
                        0 => 0.0,
                        1 => 1.0 - 1e-12,
                        _ => rng.uniform() as f64,
                    };
                    Draw {
                        temperature,
                        min_p,
                        u,
                    }
                })
                .collect();
            let Some(ids) = b.sample_logits(&xa, &pick, &w, &draws)? else {
                return Ok(None);
            };
            for (i, (row, d)) in logits.chunks_exact(vocab).zip(&draws).enumerate() {
                if !reference_draw_accepts(row, d, ids.get(i).copied()) {
                    wrong += 1;
                }
            }
        }
        Ok(Some(wrong as f64))
    })();
    if let Ok(None) = got {
        return; // not offered: the engine samples from whole logits on the host
    }
    record(
        rep,
        "sample_logits",
        format!("12 draws × 5 rows of {vocab}, temperature/min-p"),
        0.0,
        got.map(|e| e.unwrap_or(0.0)),
    );
}

/// Whether `got` is the token `Backend::sample_logits` must give for this row and draw.
fn reference_draw_accepts(row: &[f32], d: &Draw, got: Option<u32>) -> bool {
    let Some(got) = got else { return false };
    if row.iter().any(|l| !l.is_finite()) {
        return got == u32::MAX;
    }
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &l| m.max(l));
    if d.temperature <= 0.0 {
        return row.iter().position(|&l| l == max) == Some(got as usize);
    }
    let w: Vec<f64> = row
        .iter()
        .map(|&l| {
            let kept = d.min_p <= 0.0 || (l - max).exp() >= d.min_p;
            if kept {
                (((l - max) / d.temperature) as f64).exp()
            } else {
                0.0
            }
        })
        .collect();
    let total: f64 = w.iter().sum();
    let r = d.u * total;
    // The token whose cumulative interval [before, before + w) holds r (within 1e-9 · total).
    let before: f64 = w[..got as usize].iter().sum();
    let slack = 1e-9 * total;
    let g = got as usize;
    g < row.len() && w[g] > 0.0 && before - slack <= r && r < before + w[g] + slack
}
