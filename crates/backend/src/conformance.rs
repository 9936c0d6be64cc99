//! The backend conformance suite: every op of the contract, on random inputs, against a plain
//! f64 reference computed here from the scalar dequantization oracle (`suanli_core::quant`).
//! Any backend runs it (`run(&backend)`); the CPU's tests run it for every instruction-set level,
//! and `suanli conformance --device cuda` runs it on a GPU. Tolerances are stated per check, as a
//! bound on the error relative to the scale of the result, and reported beside the error found.

mod elementwise;
mod fused;
mod reference;
mod rng;
mod sampling;

use crate::{
    AttnMeta, AttnSeq, Backend, BackendError, HostTensor, KvDType, KvSpec, RopeParams, RopeStyle,
    WeightRole,
};
use reference as r;
pub use rng::Rng;
use suanli_core::DType;
use suanli_formats::Bytes;

/// One check's outcome: the largest error found, against the tolerance it must stay under.
#[derive(Clone, Debug)]
pub struct Check {
    pub op: &'static str,
    pub case: String,
    pub error: f64,
    pub tolerance: f64,
    /// Set when the backend returned an error instead of a result.
    pub failure: Option<String>,
}

impl Check {
    pub fn passed(&self) -> bool {
        self.failure.is_none() && self.error <= self.tolerance
    }
}

/// All checks of a run.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    pub fn failures(&self) -> Vec<&Check> {
        self.checks.iter().filter(|c| !c.passed()).collect()
    }
    /// One line per check: op, case, error, tolerance, verdict.
    pub fn table(&self) -> String {
        let mut s = format!(
            "{:<16} {:<44} {:>11} {:>11}  result\n",
            "op", "case", "error", "tolerance"
        );
        for c in &self.checks {
            let verdict = match &c.failure {
                Some(f) => format!("FAILED: {f}"),
                None if c.passed() => "ok".into(),
                None => "FAILED".into(),
            };
            s += &format!(
                "{:<16} {:<44} {:>11.3e} {:>11.3e}  {verdict}\n",
                c.op, c.case, c.error, c.tolerance
            );
        }
        s
    }
}

/// The weight types the real models use (issue 6); a backend's capabilities list what it runs.
pub const MODEL_WEIGHT_TYPES: [DType; 11] = [
    DType::F32,
    DType::F16,
    DType::BF16,
    DType::Q8_0,
    DType::Q4_0,
    DType::Q4_1,
    DType::Q5_0,
    DType::Q5_1,
    DType::Q4K,
    DType::Q5K,
    DType::Q6K,
];

/// Row counts that cover decode (1), small batches and the large-batch (prefill) paths.
const ROW_COUNTS: [usize; 5] = [1, 3, 8, 17, 70];

/// Run every check the backend's capabilities call for.
pub fn run<B: Backend>(b: &B) -> Report {
    let mut rep = Report::default();
    let mut rng = Rng::new(0x5eed);
    check_upload(b, &mut rng, &mut rep);
    for &ty in &b.caps().weight_dtypes {
        check_embed(b, ty, &mut rng, &mut rep);
        for &n in &ROW_COUNTS {
            check_linear(b, ty, n, &mut rng, &mut rep);
        }
        check_logits(b, ty, &mut rng, &mut rep);
        fused::check_linear_add(b, ty, &mut rng, &mut rep);
        fused::check_gated_linear(b, ty, &mut rng, &mut rep);
        fused::check_mlp(b, ty, &mut rng, &mut rep);
        fused::check_norm_linear_many(b, ty, &mut rng, &mut rep);
    }
    for (k, mass) in [(1, false), (1, true), (40, false), (256, true)] {
        sampling::check_top_logits(b, k, mass, &mut rng, &mut rep);
    }
    sampling::check_sample_logits(b, &mut rng, &mut rep);
    check_linear_many(b, &mut rng, &mut rep);
    if b.caps().act_precision {
        check_exact_activations(b, &mut rng, &mut rep);
    }
    fused::check_mixed_qkv(b, &mut rng, &mut rep);
    check_norms(b, &mut rng, &mut rep);
    check_rope(b, &mut rng, &mut rep);
    elementwise::check_elementwise(b, &mut rng, &mut rep);
    if b.caps().experts {
        elementwise::check_expert_rows(b, &mut rng, &mut rep);
    }
    for &kv in &b.caps().kv_dtypes {
        for hd in [64, 128] {
            check_attention(b, kv, hd, &MIXED_STEP, None, &mut rng, &mut rep);
        }
        if b.caps().sliding_window {
            // Windows shorter than a block, across block edges, and longer than some contexts.
            for w in [5, 40] {
                check_attention(b, kv, 64, &MIXED_STEP, Some(w), &mut rng, &mut rep);
            }
        }
        check_attention(b, kv, 128, &LONG_DECODE, None, &mut rng, &mut rep);
        fused::check_rope_write_kv(b, kv, &mut rng, &mut rep);
    }
    rep
}

fn record(
    rep: &mut Report,
    op: &'static str,
    case: String,
    tol: f64,
    got: Result<f64, BackendError>,
) {
    let (error, failure) = match got {
        Ok(e) => (e, None),
        Err(e) => (f64::INFINITY, Some(e.to_string())),
    };
    rep.checks.push(Check {
        op,
        case,
        error,
        tolerance: tol,
        failure,
    });
}

/// Random weight bytes of type `ty` for `[rows, cols]`, with finite, model-like values.
pub fn random_weight(ty: DType, rows: usize, cols: usize, rng: &mut Rng) -> Vec<u8> {
    let n = rows * cols;
    match ty {
        DType::F32 => (0..n)
            .flat_map(|_| (rng.normal() * 0.5).to_le_bytes())
            .collect(),
        DType::F16 => (0..n)
            .flat_map(|_| half::f16::from_f32(rng.normal() * 0.5).to_le_bytes())
            .collect(),
        DType::BF16 => (0..n)
            .flat_map(|_| half::bf16::from_f32(rng.normal() * 0.5).to_le_bytes())
            .collect(),
        _ => {
            let bytes = ty.row_bytes(cols).expect("block-aligned columns") * rows;
            let mut v: Vec<u8> = (0..bytes).map(|_| rng.next_u32() as u8).collect();
            let bb = ty.block_bytes();
            for blk in v.chunks_exact_mut(bb) {
                for &off in suanli_core::quant::f16_scale_offsets(ty) {
                    // Scales of either sign around 1/64 (mins too): values of order one.
                    let s = half::f16::from_f32((0.5 + rng.uniform()) / 64.0 * rng.sign());
                    blk[off..off + 2].copy_from_slice(&s.to_le_bytes());
                }
            }
            v
        }
    }
}

fn dequantized(ty: DType, bytes: &[u8], rows: usize, cols: usize) -> Vec<f32> {
    let mut v = vec![0f32; rows * cols];
    suanli_core::quant::dequantize(ty, bytes, &mut v).expect("sizes");
    v
}

fn weight<B: Backend>(
    b: &B,
    name: &'static str,
    ty: DType,
    rows: usize,
    cols: usize,
    role: WeightRole,
    bytes: Vec<u8>,
) -> Result<crate::Weight<B::WeightStore>, BackendError> {
    weight_at(
        b,
        name,
        ty,
        rows,
        cols,
        role,
        bytes,
        crate::ActPrecision::Fast,
    )
}

#[allow(clippy::too_many_arguments)]
fn weight_at<B: Backend>(
    b: &B,
    name: &'static str,
    ty: DType,
    rows: usize,
    cols: usize,
    role: WeightRole,
    bytes: Vec<u8>,
    precision: crate::ActPrecision,
) -> Result<crate::Weight<B::WeightStore>, BackendError> {
    let bytes = Bytes::from_vec(bytes);
    b.prepare_weight(HostTensor {
        precision,
        name,
        dtype: ty,
        rows,
        cols,
        bytes: &bytes,
        role,
    })
}

/// An f32 vector weight (a norm's weight, a bias) on the backend.
fn vector<B: Backend>(
    b: &B,
    name: &'static str,
    v: &[f32],
) -> Result<crate::Weight<B::WeightStore>, BackendError> {
    weight(
        b,
        name,
        DType::F32,
        1,
        v.len(),
        WeightRole::Vector,
        r::f32_bytes(v),
    )
}

fn act<B: Backend>(
    b: &B,
    data: &[f32],
    rows: usize,
    cols: usize,
) -> Result<crate::Act<B::Buffer>, BackendError> {
    let mut a = b.alloc_act(rows.max(1), cols)?;
    b.upload(data, rows, &mut a)?;
    Ok(a)
}

fn check_upload<B: Backend>(b: &B, rng: &mut Rng, rep: &mut Report) {
    let data = rng.normals(5 * 96, 1.0);
    let got = (|| {
        let a = act(b, &data, 5, 96)?;
        let back = b.download(&a)?;
        Ok(r::max_abs_diff(&back, &data))
    })();
    record(rep, "upload", "5x96 round trip".into(), 0.0, got);
}

fn check_embed<B: Backend>(b: &B, ty: DType, rng: &mut Rng, rep: &mut Report) {
    // 144 units per row: more than the 128 threads a GPU block gives each row. 50 rows: a
    // backend's groups of rows end in a partial one (ids 48 and 49 look it up).
    let (rows, cols) = (50, 4608);
    let bytes = random_weight(ty, rows, cols, rng);
    let table = dequantized(ty, &bytes, rows, cols);
    let mut ids: Vec<u32> = (0..5).map(|_| rng.below(rows) as u32).collect();
    ids.extend([49, 48]);
    let lookup = |role: WeightRole| -> Result<Vec<f32>, BackendError> {
        let w = weight(b, "embed", ty, rows, cols, role, bytes.clone())?;
        let mut out = b.alloc_act(ids.len(), cols)?;
        b.embed(&w, &ids, &mut out)?;
        b.download(&out)
    };
    let (plain, tied) = (
        lookup(WeightRole::Embedding),
        lookup(WeightRole::TiedEmbedding),
    );
    let same = match (&plain, &tied) {
        (Ok(p), Ok(t)) => r::max_abs_diff(t, p),
        _ => f64::INFINITY,
    };
    let got = plain.map(|got| {
        let want: Vec<f32> = ids
            .iter()
            .flat_map(|&i| table[i as usize * cols..][..cols].to_vec())
            .collect();
        r::max_abs_diff(&got, &want)
    });
    // Rows are dequantized exactly (the oracle's arithmetic is exact in f32).
    record(rep, "embed", format!("{ty} 7 ids of 50x{cols}"), 1e-6, got);
    // A table that is also the output projection may be held in the backend's own layout for
    // its products (the CPU's repacked copies): its rows must come back with the same bits.
    let tied = tied.map(|_| same);
    let case = format!("{ty} tied table: the untied lookup's bits");
    record(rep, "embed", case, 0.0, tied);
}

/// Tolerance for x · wᵀ relative to ‖w_r‖·‖x‖ (the Cauchy-Schwarz scale of each output), per
/// backend and weight kind, so that a regression of a fraction of a percent shows:
/// - the CPU multiplies float weights in f32 (measured ≤ 3.6e-8 here): 1e-6; quantized weights
///   meet 8-bit activations as llama.cpp's do (measured ≤ 8.6e-4 at 2560 columns, up to 2.8e-3
///   for rms-normed inputs at 512): 4e-3;
/// - other backends (the GPU): float weights may meet bf16 tensor-core inputs, 2e-3; quantized
///   ones its dp4a products (~6e-4) within 4e-3.
fn linear_tol<B: Backend>(b: &B, ty: DType) -> f64 {
    let float = matches!(ty, DType::F32 | DType::F16 | DType::BF16);
    match (b.caps().name, float) {
        ("cpu", true) => 1e-6,
        ("cpu", false) => 4e-3,
        (_, true) => 2e-3,
        (_, false) => 4e-3,
    }
}

fn check_linear<B: Backend>(b: &B, ty: DType, n: usize, rng: &mut Rng, rep: &mut Report) {
    // 2560 columns: 80 units of 32 per row, so each lane of a 32-wide GPU warp takes several.
    let (rows, cols) = (96, 2560);
    let bytes = random_weight(ty, rows, cols, rng);
    let wf = dequantized(ty, &bytes, rows, cols);
    let x = rng.normals(n * cols, 1.0);
    let bias = rng.normals(rows, 1.0);
    let with_bias = n % 2 == 1;
    let got = (|| {
        let w = weight(b, "linear", ty, rows, cols, WeightRole::Matrix, bytes)?;
        let bw = if with_bias {
            Some(vector(b, "bias", &bias)?)
        } else {
            None
        };
        let xa = act(b, &x, n, cols)?;
        let mut out = b.alloc_act(n, rows)?;
        b.linear(&xa, &w, bw.as_ref(), &mut out)?;
        let got = b.download(&out)?;
        Ok(r::linear_error(
            &x,
            &wf,
            with_bias.then_some(&bias[..]),
            rows,
            cols,
            &got,
        ))
    })();
    let case = format!(
        "{ty} {n}x{cols} · [{rows},{cols}]{}",
        if with_bias { " + bias" } else { "" }
    );
    record(rep, "linear", case, linear_tol(b, ty), got);
}

/// `ActPrecision::Exact`: products as with f32 activations. The fast path's error here (8-bit
/// activations) is 6e-4..1.1e-3 of |w|·|x|; two passes measured 1.0e-6..2.9e-6 on the CPU (the
/// second rounding, and the f16 rounding of Q8_1's block sums): 1e-5, a hundred times tighter.
const EXACT_TOL: f64 = 1e-5;

fn check_exact_activations<B: Backend>(b: &B, rng: &mut Rng, rep: &mut Report) {
    let (rows, cols) = (96, 2560);
    for ty in [
        DType::Q4K,
        DType::Q6K,
        DType::Q8_0,
        DType::Q4_1,
        DType::Q5_0,
    ] {
        for n in [1, 5] {
            let bytes = random_weight(ty, rows, cols, rng);
            let wf = dequantized(ty, &bytes, rows, cols);
            let x = rng.normals(n * cols, 1.0);
            let bias = rng.normals(rows, 1.0);
            let got = (|| {
                let w = weight_at(
                    b,
                    "exact",
                    ty,
                    rows,
                    cols,
                    WeightRole::Matrix,
                    bytes,
                    crate::ActPrecision::Exact,
                )?;
                let bw = vector(b, "bias", &bias)?;
                let xa = act(b, &x, n, cols)?;
                let mut out = b.alloc_act(n, rows)?;
                b.linear(&xa, &w, Some(&bw), &mut out)?;
                let got = b.download(&out)?;
                Ok(r::linear_error(&x, &wf, Some(&bias), rows, cols, &got))
            })();
            let case = format!("{ty} {n}x{cols} · [{rows},{cols}] + bias, exact activations");
            record(rep, "linear", case, EXACT_TOL, got);
        }
    }
    // `ExactTop` heads: each row's largest logits as with f32 activations, the rest as fast.
    let (vocab, cols, top) = (1000, 640, 256);
    let ty = DType::Q8_0;
    let bytes = random_weight(ty, vocab, cols, rng);
    let wf = dequantized(ty, &bytes, vocab, cols);
    let x = rng.normals(2 * cols, 1.0);
    let got = (|| {
        let w = weight_at(
            b,
            "lm_head",
            ty,
            vocab,
            cols,
            WeightRole::TiedEmbedding,
            bytes,
            crate::ActPrecision::ExactTop,
        )?;
        let xa = act(b, &x, 2, cols)?;
        let mut out = vec![0f32; 2 * vocab];
        b.logits(&xa, &[1, 0], &w, &mut out)?;
        // A row alone (decode) gets the bits it gets beside another (a batch's step).
        let mut alone = vec![0f32; vocab];
        b.logits(&xa, &[0], &w, &mut alone)?;
        if alone
            .iter()
            .zip(&out[vocab..])
            .any(|(a, o)| a.to_bits() != o.to_bits())
        {
            return Ok(f64::INFINITY);
        }
        let mut worst = 0f64;
        for (t, row) in [1usize, 0].iter().zip(out.chunks_exact(vocab)) {
            let xt = &x[t * cols..(t + 1) * cols];
            let mut want: Vec<(f64, usize)> = (0..vocab)
                .map(|r| {
                    let w = &wf[r * cols..(r + 1) * cols];
                    (
                        w.iter().zip(xt).map(|(a, b)| *a as f64 * *b as f64).sum(),
                        r,
                    )
                })
                .collect();
            want.sort_by(|a, b| b.0.total_cmp(&a.0));
            // Well inside the top: candidates near the cut may swap places with their neighbours.
            for &(v, r) in &want[..top / 2] {
                let norm = |s: &[f32]| s.iter().map(|a| (*a as f64).powi(2)).sum::<f64>().sqrt();
                let e =
                    (row[r] as f64 - v).abs() / (norm(&wf[r * cols..(r + 1) * cols]) * norm(xt));
                worst = worst.max(e);
            }
        }
        Ok(worst)
    })();
    let case = format!(
        "{ty} rows 1,0 · [{vocab},{cols}], the largest {} exact, row 0 alone the same bits",
        top / 2
    );
    record(rep, "logits", case, EXACT_TOL, got);
}

fn check_logits<B: Backend>(b: &B, ty: DType, rng: &mut Rng, rep: &mut Report) {
    let (vocab, cols, n) = (300, 1280, 6);
    let bytes = random_weight(ty, vocab, cols, rng);
    let wf = dequantized(ty, &bytes, vocab, cols);
    let x = rng.normals(n * cols, 1.0);
    let pick = [4u32, 0, 5];
    let got = (|| {
        let w = weight(
            b,
            "lm_head",
            ty,
            vocab,
            cols,
            WeightRole::TiedEmbedding,
            bytes,
        )?;
        let xa = act(b, &x, n, cols)?;
        let mut out = vec![0f32; pick.len() * vocab];
        b.logits(&xa, &pick, &w, &mut out)?;
        let xs: Vec<f32> = pick
            .iter()
            .flat_map(|&p| x[p as usize * cols..][..cols].to_vec())
            .collect();
        Ok(r::linear_error(&xs, &wf, None, vocab, cols, &out))
    })();
    record(
        rep,
        "logits",
        format!("{ty} rows 4,0,5 of 6 · [{vocab},{cols}]"),
        linear_tol(b, ty),
        got,
    );
}

fn check_linear_many<B: Backend>(b: &B, rng: &mut Rng, rep: &mut Report) {
    let ty = if b.caps().weight_dtypes.contains(&DType::Q8_0) {
        DType::Q8_0
    } else {
        b.caps().weight_dtypes[0]
    };
    let cols = 256;
    for n in [1usize, 20] {
        let x = rng.normals(n * cols, 1.0);
        let got = qkv_error(b, [ty; 3], &x, &x, cols, rng, |xa, ws, outs| {
            b.linear_many(xa, ws, outs)
        });
        record(
            rep,
            "linear_many",
            format!("{ty} {n}x{cols} · q/k/v 128,32,32 + bias"),
            linear_tol(b, ty),
            got,
        );
    }
}

/// Q/K/V-like products — 128, 32 and 32 rows of `types` (real files mix them: V of another
/// type than Q and K), with biases — of the rows `x` run by `run` (`linear_many` or a fused
/// variant), against the f64 products of `seen` (the rows the products should see: x itself,
/// or x normed), as `linear_error` measures them.
fn qkv_error<B: Backend>(
    b: &B,
    types: [DType; 3],
    x: &[f32],
    seen: &[f32],
    cols: usize,
    rng: &mut Rng,
    run: impl FnOnce(
        &crate::Act<B::Buffer>,
        &[crate::Product<'_, B::WeightStore>],
        &mut [&mut crate::Act<B::Buffer>],
    ) -> Result<(), BackendError>,
) -> Result<f64, BackendError> {
    let shapes = [128usize, 32, 32];
    let n = x.len() / cols;
    let parts: Vec<(Vec<u8>, Vec<f32>)> = shapes
        .iter()
        .zip(types)
        .map(|(&rows, ty)| (random_weight(ty, rows, cols, rng), rng.normals(rows, 0.5)))
        .collect();
    let mut ws = Vec::new();
    for ((&rows, (wb, bias)), ty) in shapes.iter().zip(&parts).zip(types) {
        ws.push((
            weight(b, "w", ty, rows, cols, WeightRole::Matrix, wb.clone())?,
            vector(b, "b", bias)?,
        ));
    }
    let xa = act(b, x, n, cols)?;
    let mut outs = Vec::new();
    for &rows in &shapes {
        outs.push(b.alloc_act(n, rows)?);
    }
    let refs: Vec<_> = ws.iter().map(|(w, bias)| (w, Some(bias))).collect();
    let mut out_refs: Vec<_> = outs.iter_mut().collect();
    run(&xa, &refs, &mut out_refs)?;
    let mut worst = 0f64;
    for (((&rows, (wb, bias)), o), ty) in shapes.iter().zip(&parts).zip(&outs).zip(types) {
        let wf = dequantized(ty, wb, rows, cols);
        let e = r::linear_error(seen, &wf, Some(bias), rows, cols, &b.download(o)?);
        worst = worst.max(e);
    }
    Ok(worst)
}

fn check_norms<B: Backend>(b: &B, rng: &mut Rng, rep: &mut Report) {
    let (n, cols, eps) = (9, 384, 1e-6f32);
    let x: Vec<f32> = rng.normals(n * cols, 3.0);
    let w = rng.normals(cols, 1.0);
    let got = (|| {
        let wt = vector(b, "norm", &w)?;
        let xa = act(b, &x, n, cols)?;
        let mut out = b.alloc_act(n, cols)?;
        b.rms_norm(&xa, &wt, eps, &mut out)?;
        Ok(r::rel_max_error(
            &b.download(&out)?,
            &r::rms_norm(&x, &w, cols, eps),
        ))
    })();
    record(rep, "rms_norm", format!("{n}x{cols} eps {eps}"), 1e-5, got);

    let g = 64;
    let wg = rng.normals(g, 1.0);
    let got = (|| {
        let wt = vector(b, "qnorm", &wg)?;
        let mut xa = act(b, &x, n, cols)?;
        b.rms_norm_groups(&mut xa, &wt, eps)?;
        Ok(r::rel_max_error(
            &b.download(&xa)?,
            &r::rms_norm(&x, &wg, g, eps),
        ))
    })();
    record(
        rep,
        "rms_norm_groups",
        format!("{n}x{cols} groups of {g}"),
        1e-5,
        got,
    );
}

fn check_rope<B: Backend>(b: &B, rng: &mut Rng, rep: &mut Report) {
    for (style, hd, rot) in [
        (RopeStyle::Neox, 64, 64),
        (RopeStyle::Interleaved, 64, 64),
        (RopeStyle::Interleaved, 128, 64),
    ] {
        let heads = 3;
        let p = RopeParams::new(heads, hd, rot, 1_000_000.0, style);
        let positions: Vec<u32> = vec![0, 1, 17, 4095, 32767];
        let x = rng.normals(positions.len() * heads * hd, 1.0);
        let got = (|| {
            let mut xa = act(b, &x, positions.len(), heads * hd)?;
            b.rope(&mut xa, &positions, &p)?;
            Ok(r::rel_max_error(
                &b.download(&xa)?,
                &r::rope(&x, &positions, &p),
            ))
        })();
        record(
            rep,
            "rope",
            format!("{style:?} head {hd} rotary {rot} pos ≤ 32767"),
            1e-5,
            got,
        );
    }
}

/// Several sequences over shuffled blocks: one decoding at depth, one prefilling a chunk after
/// earlier context, one starting from nothing; grouped-query heads; K/V written through
/// `write_kv` in two steps like a real prefill followed by a step.
/// Attention steps as (context before the step, new tokens) per sequence. A mixed step: decode,
/// chunks after context (70 rows: long enough for a GPU's prefill paths), a fresh prefill, a
/// 2-token context.
const MIXED_STEP: [(usize, usize); 5] = [(150, 1), (37, 21), (0, 19), (1, 1), (30, 70)];
/// Decode rows deep in their context: a GPU splits such contexts across blocks.
const LONG_DECODE: [(usize, usize); 2] = [(3000, 1), (700, 1)];

#[allow(clippy::too_many_arguments)]
fn check_attention<B: Backend>(
    b: &B,
    kvt: KvDType,
    hd: usize,
    shapes: &[(usize, usize)],
    window: Option<usize>,
    rng: &mut Rng,
    rep: &mut Report,
) {
    let what = match (shapes.len(), window) {
        (5, None) => "5 seqs".to_string(),
        (5, Some(w)) => format!("5 seqs, window {w}"),
        _ => "decode at 3000, 700".to_string(),
    };
    let (n_heads, n_kv, bs, layers, layer) = (8, 2, 16, 2, 1);
    let kv_dim = n_kv * hd;
    let spec = KvSpec {
        dtype: kvt,
        n_layers: layers,
        num_blocks: shapes
            .iter()
            .map(|(p, n)| (p + n).div_ceil(bs))
            .sum::<usize>()
            + 4,
        block_size: bs,
        n_kv_heads: n_kv,
        head_dim: hd,
    };
    let mut free: Vec<u32> = (0..spec.num_blocks as u32).collect();
    rng.shuffle(&mut free);
    let tables: Vec<Vec<u32>> = shapes
        .iter()
        .map(|&(pre, new)| {
            (0..(pre + new).div_ceil(bs))
                .map(|_| free.pop().expect("blocks"))
                .collect()
        })
        .collect();
    let slot = |t: &[u32], p: usize| t[p / bs] * bs as u32 + (p % bs) as u32;
    // All keys/values of every sequence (positions 0..pre+new), per head ~N(0,1).
    let keys: Vec<Vec<f32>> = shapes
        .iter()
        .map(|&(p, n)| rng.normals((p + n) * kv_dim, 1.0))
        .collect();
    let vals: Vec<Vec<f32>> = shapes
        .iter()
        .map(|&(p, n)| rng.normals((p + n) * kv_dim, 1.0))
        .collect();
    let total_new: usize = shapes.iter().map(|s| s.1).sum();
    let q = rng.normals(total_new * n_heads * hd, 1.0);
    let scale = 1.0 / (hd as f32).sqrt();
    let got = (|| {
        let mut kv = b.alloc_kv(spec)?;
        // Earlier context in one write, this step's K/V in another.
        for step in 0..2 {
            let (mut ks, mut vs, mut slots) = (Vec::new(), Vec::new(), Vec::new());
            for (i, &(pre, new)) in shapes.iter().enumerate() {
                let range = if step == 0 { 0..pre } else { pre..pre + new };
                for p in range {
                    ks.extend_from_slice(&keys[i][p * kv_dim..][..kv_dim]);
                    vs.extend_from_slice(&vals[i][p * kv_dim..][..kv_dim]);
                    slots.push(slot(&tables[i], p));
                }
            }
            if slots.is_empty() {
                continue;
            }
            let (ka, va) = (
                act(b, &ks, slots.len(), kv_dim)?,
                act(b, &vs, slots.len(), kv_dim)?,
            );
            b.write_kv(&ka, &va, &slots, &mut kv, layer)?;
        }
        let mut q_start = 0;
        let seqs: Vec<AttnSeq> = shapes
            .iter()
            .zip(&tables)
            .map(|(&(pre, new), t)| {
                let s = AttnSeq {
                    q_start,
                    q_len: new,
                    ctx_len: pre + new,
                    block_table: t.clone(),
                    generated_from: usize::MAX,
                };
                q_start += new;
                s
            })
            .collect();
        let meta = AttnMeta {
            seqs: &seqs,
            n_heads,
            n_kv_heads: n_kv,
            head_dim: hd,
            scale,
            window,
        };
        let qa = act(b, &q, total_new, n_heads * hd)?;
        let mut out = b.alloc_act(total_new, n_heads * hd)?;
        b.attention(&qa, &kv, &meta, layer, &mut out)?;
        let got = b.download(&out)?;
        let mut worst = 0f64;
        for (i, s) in seqs.iter().enumerate() {
            let (k, v) = (
                r::kv_round(&keys[i], kvt, hd),
                r::kv_round(&vals[i], kvt, hd),
            );
            let qs = &q[s.q_start * n_heads * hd..(s.q_start + s.q_len) * n_heads * hd];
            let want = r::attention(qs, &k, &v, s.ctx_len, n_heads, n_kv, hd, scale, window);
            let g = &got[s.q_start * n_heads * hd..(s.q_start + s.q_len) * n_heads * hd];
            worst = worst.max(r::max_abs_diff(g, &want));
        }
        Ok(worst)
    })();
    record(
        rep,
        "attention",
        format!("{kvt:?} cache, head {hd}, GQA 8/2, {what}"),
        attention_tol(kvt),
        got,
    );
}

/// Attention's error bound, absolute.
/// Outputs are convex combinations of values ~N(0,1); the reference uses the cache's rounding.
/// An f16 cache lets a backend round queries and probabilities to f16 too (tensor-core
/// attention, as FlashAttention and llama.cpp do): 2^-11 relative, so 2e-3 absolute. Indexing
/// errors give errors of order one.
/// A Q8_0 cache's values d·q are not f16 numbers: such a path rounds them to f16 once more
/// (2^-12 relative, values up to ~5 here: up to 1.2e-3 when a row's softmax sits on one
/// position), so 4e-3.
fn attention_tol(kvt: KvDType) -> f64 {
    match kvt {
        KvDType::F16 => 2e-3,
        KvDType::Q8_0 => 4e-3,
        KvDType::F32 => 1e-4,
    }
}
