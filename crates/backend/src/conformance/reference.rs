//! Plain f64 references for the suite's checks.

use crate::{KvDType, RopeParams, RopeStyle};

pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    a.iter()
        .zip(b)
        .map(|(&x, &y)| {
            if x.is_finite() {
                (x as f64 - y as f64).abs()
            } else {
                f64::INFINITY
            }
        })
        .fold(0.0, f64::max)
}

/// Largest error relative to the largest reference magnitude.
pub fn rel_max_error(got: &[f32], want: &[f32]) -> f64 {
    let scale = want.iter().map(|v| v.abs() as f64).fold(1e-30, f64::max);
    max_abs_diff(got, want) / scale
}

/// Largest |got − x·wᵀ − bias| over outputs, each divided by ‖w_r‖·‖x_t‖ (the bound on its size).
pub fn linear_error(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    rows: usize,
    cols: usize,
    got: &[f32],
) -> f64 {
    let n = x.len() / cols;
    if got.len() != n * rows {
        return f64::INFINITY;
    }
    let norm = |v: &[f32]| v.iter().map(|&a| (a as f64).powi(2)).sum::<f64>().sqrt();
    let mut worst = 0f64;
    for t in 0..n {
        let xt = &x[t * cols..][..cols];
        let xn = norm(xt);
        for r in 0..rows {
            let wr = &w[r * cols..][..cols];
            let mut want: f64 = wr.iter().zip(xt).map(|(&a, &b)| a as f64 * b as f64).sum();
            want += bias.map_or(0.0, |b| b[r] as f64);
            let g = got[t * rows + r] as f64;
            let e = if g.is_finite() {
                (g - want).abs() / (norm(wr) * xn).max(1e-30)
            } else {
                f64::INFINITY
            };
            worst = worst.max(e);
        }
    }
    worst
}

/// Row-wise (or group-wise, `g` columns at a time) RMS norm.
pub fn rms_norm(x: &[f32], w: &[f32], g: usize, eps: f32) -> Vec<f32> {
    let mut out = Vec::with_capacity(x.len());
    for grp in x.chunks_exact(g) {
        let ms = grp.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / g as f64;
        let s = 1.0 / (ms + eps as f64).sqrt();
        out.extend(
            grp.iter()
                .zip(w)
                .map(|(&v, &wi)| (v as f64 * s * wi as f64) as f32),
        );
    }
    out
}

/// The angle is `position · inv_freq` rounded to f32, as the model defines it; sin/cos in f64.
pub fn rope(x: &[f32], positions: &[u32], p: &RopeParams) -> Vec<f32> {
    let mut out = x.to_vec();
    let (hd, half) = (p.head_dim, p.rotary_dim / 2);
    let cols = p.n_heads * hd;
    for (row, &pos) in out.chunks_exact_mut(cols).zip(positions) {
        for h in 0..p.n_heads {
            let head = &mut row[h * hd..(h + 1) * hd];
            for (i, &f) in p.inv_freq.iter().enumerate().take(half) {
                let angle = (pos as f32 * f) as f64;
                let (s, c) = angle.sin_cos();
                let (a, b) = match p.style {
                    RopeStyle::Neox => (i, i + half),
                    RopeStyle::Interleaved => (2 * i, 2 * i + 1),
                };
                let (x0, x1) = (head[a] as f64, head[b] as f64);
                head[a] = (x0 * c - x1 * s) as f32;
                head[b] = (x0 * s + x1 * c) as f32;
            }
        }
    }
    out
}

/// Values as the cache stores them: f16-rounded, or Q8_0 per 32 values (llama.cpp's rounding).
pub fn kv_round(v: &[f32], t: KvDType, hd: usize) -> Vec<f32> {
    match t {
        KvDType::F32 => v.to_vec(),
        KvDType::F16 => v
            .iter()
            .map(|&a| suanli_core::quant::q8::round_f16(a))
            .collect(),
        KvDType::Q8_0 => {
            assert_eq!(hd % 32, 0);
            let mut out = Vec::with_capacity(v.len());
            for c in v.chunks_exact(32) {
                let mut b = [suanli_core::quant::q8::BlockQ8::default()];
                suanli_core::quant::q8::quantize_q8(c, false, &mut b);
                let d = suanli_core::quant::q8::round_f16(b[0].d);
                out.extend(b[0].qs.iter().map(|&q| q as f32 * d));
            }
            out
        }
    }
}

/// Causal softmax attention of one sequence's query rows (the last `q.len()/(heads·hd)`
/// positions of its `ctx` positions) over its keys and values `[ctx, n_kv·hd]`.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    ctx: usize,
    heads: usize,
    n_kv: usize,
    hd: usize,
    scale: f32,
    window: Option<usize>,
) -> Vec<f32> {
    let q_len = q.len() / (heads * hd);
    let kv_dim = n_kv * hd;
    let mut out = vec![0f32; q.len()];
    for i in 0..q_len {
        let pos = ctx - q_len + i;
        for h in 0..heads {
            let kvh = h / (heads / n_kv);
            let qh = &q[(i * heads + h) * hd..][..hd];
            let first = window.map_or(0, |w| (pos + 1).saturating_sub(w));
            let scores: Vec<f64> = (first..=pos)
                .map(|p| {
                    let kp = &k[p * kv_dim + kvh * hd..][..hd];
                    qh.iter()
                        .zip(kp)
                        .map(|(&a, &b)| a as f64 * b as f64)
                        .sum::<f64>()
                        * scale as f64
                })
                .collect();
            let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
            let z: f64 = e.iter().sum();
            let o = &mut out[(i * heads + h) * hd..][..hd];
            for (d, od) in o.iter_mut().enumerate() {
                let acc: f64 = e
                    .iter()
                    .enumerate()
                    .map(|(p, &w)| w * v[(first + p) * kv_dim + kvh * hd + d] as f64)
                    .sum();
                *od = (acc / z) as f32;
            }
        }
    }
    out
}
