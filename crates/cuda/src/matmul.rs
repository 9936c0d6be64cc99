//! Matrix products of `CudaBackend`: the matrix-vector kernels for decode-sized batches (one
//! launch for Q/K/V or gate/up), bf16 dequantization + GEMM above that, and the logits head.

use crate::device::{u32_bytes, Arg, DevBuf, Elem, Gemm};
use crate::scratch::{self, ensure};
use crate::{blocks, matvec_chunks, matvec_takes, CudaBackend, CudaWeight};
use suanli_backend::{check, shape_err, Act, Backend, Result, Weight};
use suanli_core::DType;

/// A matrix-vector launch over `rows` weight rows for `tokens` activation rows: grid, block and
/// warps per row (the kernels' last argument).
pub(crate) struct MatvecGeometry {
    pub grid: (u32, u32),
    pub block: u32,
    pub wpr: i32,
}

/// The integer kernels of quantized types quantize the activations once per block, so more tokens
/// take bigger blocks to share that work (`MV_MAX_WARPS` = 16), and a warp a row. Float rows go 4
/// warps a block, and a bf16/f16 matrix of fewer than 16384 rows splits rows between 2 or 4 warps: at a
/// warp a row, the output and down products of a 7B decode step (3584 rows) are 1.1 waves of
/// blocks, the second nearly empty; quantized kernels hold more blocks at once (about a wave).
pub(crate) fn matvec_geometry(ty: DType, rows: usize, tokens: usize) -> MatvecGeometry {
    let float = matches!(ty, DType::F32 | DType::F16 | DType::BF16);
    let warps = match tokens {
        _ if float => 4,
        0..=2 => 4,
        3..=4 => 8,
        _ => 16,
    };
    let wpr = match rows {
        // f32 matrices (tiny test models) gain nothing from it.
        _ if !float || ty == DType::F32 => 1,
        0..=8191 => 4,
        8192..=16383 => 2,
        _ => 1,
    };
    MatvecGeometry {
        grid: blocks(rows, warps / wpr),
        block: 32 * warps as u32,
        wpr: wpr as i32,
    }
}

/// The matrix-vector kernel family `kind` (`matvec`, `matvec3`, `matvec_glu`) for `tokens` rows of
/// x: the one-token kernels (`matvec_t1`, ...) for one — they keep one accumulator per row, not
/// eight, and the registers that frees go to more warps and loads in flight.
pub(crate) fn matvec_kind(kind: &'static str, tokens: usize) -> &'static str {
    match (kind, tokens) {
        ("matvec", 1) => "matvec_t1",
        ("matvec3", 1) => "matvec3_t1",
        ("matvec_glu", 1) => "matvec_glu_t1",
        _ => kind,
    }
}

/// A matrix's leading kernel arguments: its data, rows, columns and bytes per row.
pub(crate) fn matrix_args(w: &Weight<CudaWeight>, op: &'static str) -> Result<[Arg; 4]> {
    let CudaWeight::Raw { buf, row_bytes } = &w.store else {
        return Err(shape_err(op, "a vector weight used as a matrix"));
    };
    Ok([
        buf.arg(),
        Arg::I32(w.rows as i32),
        Arg::I32(w.cols as i32),
        Arg::U64(*row_bytes as u64),
    ])
}

/// The device address of `w`'s bias, which must be a vector of `w.rows`.
fn bias_ptr(w: &Weight<CudaWeight>, bias: Option<&Weight<CudaWeight>>) -> Result<Option<u64>> {
    match bias.map(|b| &b.store) {
        None => Ok(None),
        Some(CudaWeight::F32(v)) if v.bytes == w.rows * 4 => Ok(Some(v.ptr)),
        Some(_) => Err(shape_err(
            "linear",
            format!("bias is not a vector of {}", w.rows),
        )),
    }
}

impl CudaBackend {
    /// Logits of the selected rows into `sc.logits` (`[rows.len(), vocab]`, on the device).
    pub(crate) fn logits_on_device(
        &self,
        x: &Act<DevBuf>,
        rows: &[u32],
        lm_head: &Weight<CudaWeight>,
        sc: &mut scratch::Scratch,
    ) -> Result<()> {
        check::logits(x, rows, lm_head, None)?;
        if rows.is_empty() {
            return Err(shape_err("logits", "no rows selected"));
        }
        let k = x.cols;
        let n = rows.len();
        let sel = sc.rows.put(&self.dev, u32_bytes(rows))?.ptr;
        let gathered = ensure(&self.dev, &mut sc.gather, n * k * 4)?.ptr;
        self.launch(
            "gather_rows",
            (n as u32, 1),
            256,
            &[
                x.buf.arg(),
                Arg::Ptr(sel),
                Arg::I32(k as i32),
                Arg::Ptr(gathered),
            ],
        )?;
        let out = ensure(&self.dev, &mut sc.logits, n * lm_head.rows * 4)?.ptr;
        self.matmul(gathered, n, lm_head, None, out, false, sc)
    }

    /// out[n, w.rows] = x[n, w.cols] · wᵀ (+ bias), or out += that with `accumulate`, choosing
    /// the kernel by batch size.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn matmul(
        &self,
        x: u64,
        n: usize,
        w: &Weight<CudaWeight>,
        bias: Option<&Weight<CudaWeight>>,
        out: u64,
        accumulate: bool,
        sc: &mut scratch::Scratch,
    ) -> Result<()> {
        let geometry = matrix_args(w, "linear")?;
        let bias = bias_ptr(w, bias)?;
        if accumulate && bias.is_some() {
            // The GEMM path adds the bias after the product, which would add it to `out` too.
            return Err(shape_err("linear", "a bias with an accumulated product"));
        }
        let (m, k) = (w.rows, w.cols);
        if matvec_takes(w.dtype, n) {
            for (first, rows) in matvec_chunks(n) {
                let kernel = self.typed(matvec_kind("matvec", rows), w.dtype)?;
                let mut args = geometry.to_vec();
                args.extend([
                    Arg::Ptr(x + (first * k * 4) as u64),
                    Arg::I32(rows as i32),
                    Arg::Ptr(bias.unwrap_or(0)),
                    Arg::Ptr(out + (first * m * 4) as u64),
                    Arg::I32(accumulate as i32),
                ]);
                let g = matvec_geometry(w.dtype, m, rows);
                args.push(Arg::I32(g.wpr));
                self.launch(&kernel, g.grid, g.block, &args)?;
            }
            return Ok(());
        }
        // Tensor cores: bf16 activations (f32 for f32 weights, which take an f32 GEMM).
        let xg = if w.dtype == DType::F32 {
            x
        } else {
            self.bf16_rows(x, n * k, sc)?
        };
        self.gemm_product(xg, n, w, bias, out, accumulate, sc)
    }

    /// The GEMM of `matmul` on activations already in the GEMM's type (`xg`: bf16, or f32 for f32
    /// weights): bf16 weights (dequantized into scratch unless stored as bf16), f32 accumulation
    /// and output.
    #[allow(clippy::too_many_arguments)]
    fn gemm_product(
        &self,
        xg: u64,
        n: usize,
        w: &Weight<CudaWeight>,
        bias: Option<u64>,
        out: u64,
        accumulate: bool,
        sc: &mut scratch::Scratch,
    ) -> Result<()> {
        let (m, k) = (w.rows, w.cols);
        let (wptr, ab) = match (&w.store, w.dtype) {
            (CudaWeight::Raw { buf, .. }, DType::F32) => (buf.ptr, Elem::F32),
            _ => (self.weight_bf16(w, sc)?, Elem::BF16),
        };
        let gemm = Gemm {
            beta: if accumulate { 1.0 } else { 0.0 },
            ..Gemm::linear(m, n, k, ab, wptr, xg, out)
        };
        self.dev.gemm(&gemm)?;
        if let Some(b) = bias {
            self.launch(
                "add_bias",
                blocks(n * m, 256),
                256,
                &[
                    Arg::Ptr(out),
                    Arg::Ptr(b),
                    Arg::I32(m as i32),
                    Arg::U64((n * m) as u64),
                ],
            )?;
        }
        Ok(())
    }

    /// Matrix `w` as bf16 rows: its own memory when stored as bf16, else dequantized into
    /// `sc.bf16_w` (the previous contents of which the stream has finished with by then).
    pub(crate) fn weight_bf16(
        &self,
        w: &Weight<CudaWeight>,
        sc: &mut scratch::Scratch,
    ) -> Result<u64> {
        if let (DType::BF16, CudaWeight::Raw { buf, .. }) = (w.dtype, &w.store) {
            return Ok(buf.ptr);
        }
        let mut args = matrix_args(w, "linear")?.to_vec();
        let out = ensure(&self.dev, &mut sc.bf16_w, w.rows * w.cols * 2)?.ptr;
        args.push(Arg::Ptr(out));
        let kernel = self.typed("dequant_bf16", w.dtype)?;
        self.launch(&kernel, blocks(w.rows * w.cols / 32, 256), 256, &args)?;
        Ok(out)
    }

    /// `len` f32 activations at `x` as bf16 in `sc.bf16_x`.
    pub(crate) fn bf16_rows(&self, x: u64, len: usize, sc: &mut scratch::Scratch) -> Result<u64> {
        let xb = ensure(&self.dev, &mut sc.bf16_x, len * 2)?.ptr;
        self.launch(
            "to_bf16",
            blocks(len, 256),
            256,
            &[Arg::Ptr(x), Arg::U64(len as u64), Arg::Ptr(xb)],
        )?;
        Ok(xb)
    }

    /// Two or three decode-sized products of one input with matrices of one type and width (Q/K/V,
    /// gate/up) run as one launch; anything else as separate products.
    pub(crate) fn products(
        &self,
        x: &Act<DevBuf>,
        ws: &[(&Weight<CudaWeight>, Option<&Weight<CudaWeight>>)],
        outs: &mut [&mut Act<DevBuf>],
    ) -> Result<()> {
        if Self::matvec3_fits(x, ws, outs) {
            return self.matvec3(x, None, ws, outs);
        }
        // Large batches: the activations converted to bf16 once for all the products.
        if !Self::bf16_gemms(x, ws, outs) {
            for ((w, b), o) in ws.iter().zip(outs.iter_mut()) {
                self.linear(x, w, *b, o)?;
            }
            return Ok(());
        }
        self.check_products(x, ws, outs)?;
        let mut sc = self.scratch();
        let xb = self.bf16_rows(x.buf.ptr, x.rows * x.cols, &mut sc)?;
        self.gemm_products(x.rows, xb, ws, outs, &mut sc)
    }

    /// Whether every product of `ws` takes the GEMM path on bf16 activations (no f32 weights, a
    /// batch the matrix-vector kernels decline), so that x is converted once for all of them.
    pub(crate) fn bf16_gemms(
        x: &Act<DevBuf>,
        ws: &[(&Weight<CudaWeight>, Option<&Weight<CudaWeight>>)],
        outs: &[&mut Act<DevBuf>],
    ) -> bool {
        ws.len() == outs.len()
            && ws
                .iter()
                .all(|(w, _)| w.dtype != DType::F32 && !matvec_takes(w.dtype, x.rows))
    }

    /// The shape and bias checks of `products`, before anything is launched.
    pub(crate) fn check_products(
        &self,
        x: &Act<DevBuf>,
        ws: &[(&Weight<CudaWeight>, Option<&Weight<CudaWeight>>)],
        outs: &[&mut Act<DevBuf>],
    ) -> Result<()> {
        for ((w, b), o) in ws.iter().zip(outs.iter()) {
            check::product("linear_many", x, w, o)?;
            bias_ptr(w, *b)?;
        }
        Ok(())
    }

    /// The checked products of `n` rows of bf16 activations at `xb` (`bf16_gemms`).
    pub(crate) fn gemm_products(
        &self,
        n: usize,
        xb: u64,
        ws: &[(&Weight<CudaWeight>, Option<&Weight<CudaWeight>>)],
        outs: &mut [&mut Act<DevBuf>],
        sc: &mut scratch::Scratch,
    ) -> Result<()> {
        for ((w, b), o) in ws.iter().zip(outs.iter_mut()) {
            o.rows = n;
            self.gemm_product(xb, n, w, bias_ptr(w, *b)?, o.buf.ptr, false, sc)?;
        }
        Ok(())
    }

    /// rms_norm(x) by `norm` as bf16 rows in `sc.bf16_x`, in one pass.
    pub(crate) fn rms_norm_bf16(
        &self,
        x: &Act<DevBuf>,
        (w, eps): (&Weight<CudaWeight>, f32),
        sc: &mut scratch::Scratch,
    ) -> Result<u64> {
        let xb = ensure(&self.dev, &mut sc.bf16_x, x.rows * x.cols * 2)?.ptr;
        self.norm_rows("rms_norm_bf16", x, (w, eps), xb)?;
        Ok(xb)
    }

    /// `kernel` (`rms_norm`, `rms_norm_bf16`): x's rows normed by `w` into `out`, a block a row.
    pub(crate) fn norm_rows(
        &self,
        kernel: &str,
        x: &Act<DevBuf>,
        (w, eps): (&Weight<CudaWeight>, f32),
        out: u64,
    ) -> Result<()> {
        let wv = Self::vector(w, x.cols, "rms_norm")?;
        if x.rows == 0 {
            return Ok(());
        }
        let args = [
            x.buf.arg(),
            wv.arg(),
            Arg::I32(x.cols as i32),
            Arg::F32(eps),
            Arg::Ptr(out),
        ];
        self.launch(kernel, (x.rows as u32, 1), 256, &args)
    }

    /// Whether `matvec3` takes these: two or three decode-sized products of one input (Q/K/V,
    /// gate/up).
    pub(crate) fn matvec3_fits(
        x: &Act<DevBuf>,
        ws: &[(&Weight<CudaWeight>, Option<&Weight<CudaWeight>>)],
        outs: &[&mut Act<DevBuf>],
    ) -> bool {
        (2..=3).contains(&ws.len())
            && ws.len() == outs.len()
            && ws.iter().all(|(w, _)| {
                matvec_takes(w.dtype, x.rows)
                    && w.cols == x.cols
                    && matches!(w.store, CudaWeight::Raw { .. })
            })
            && ws
                .iter()
                .zip(outs.iter())
                .all(|((w, _), o)| o.cols == w.rows && o.capacity >= x.rows)
    }

    /// The products `matvec3_fits` accepts — of rms_norm(x) by `norm` when given — as one launch
    /// per weight type: real GGUF files mix types within a layer (half of Qwen2.5-Coder-0.5B's
    /// layers have V in Q8_0 and Q, K in Q5_0), which then takes two launches, not a norm and
    /// three products.
    pub(crate) fn matvec3(
        &self,
        x: &Act<DevBuf>,
        norm: Option<(&Weight<CudaWeight>, f32)>,
        ws: &[(&Weight<CudaWeight>, Option<&Weight<CudaWeight>>)],
        outs: &mut [&mut Act<DevBuf>],
    ) -> Result<()> {
        let mut done = [false; 3];
        for first in 0..ws.len() {
            if done[first] {
                continue;
            }
            let ty = ws[first].0.dtype;
            let group: Vec<usize> = (first..ws.len()).filter(|&j| ws[j].0.dtype == ty).collect();
            group.iter().for_each(|&j| done[j] = true);
            let gws: Vec<_> = group.iter().map(|&j| ws[j]).collect();
            let mut gouts: Vec<&mut Act<DevBuf>> = outs
                .iter_mut()
                .enumerate()
                .filter(|(j, _)| group.contains(j))
                .map(|(_, o)| &mut **o)
                .collect();
            self.matvec3_of_one_type(x, norm, &gws, &mut gouts)?;
        }
        Ok(())
    }

    /// One to three products with matrices of one type and width as one `matvec3_*` launch (per
    /// 8 rows of x).
    fn matvec3_of_one_type(
        &self,
        x: &Act<DevBuf>,
        norm: Option<(&Weight<CudaWeight>, f32)>,
        ws: &[(&Weight<CudaWeight>, Option<&Weight<CudaWeight>>)],
        outs: &mut [&mut Act<DevBuf>],
    ) -> Result<()> {
        let (norm_w, eps) = match norm {
            Some((w, eps)) => (Self::vector(w, x.cols, "rms_norm")?.ptr, eps),
            None => (0, 0.0),
        };
        let (mut ptrs, mut rows, mut biases, mut optrs) =
            ([0u64; 3], [0i32; 3], [0u64; 3], [0u64; 3]);
        let mut row_bytes = 0;
        for (i, ((w, b), o)) in ws.iter().zip(outs.iter_mut()).enumerate() {
            if let CudaWeight::Raw { buf, row_bytes: rb } = &w.store {
                ptrs[i] = buf.ptr;
                row_bytes = *rb;
            }
            rows[i] = w.rows as i32;
            biases[i] = bias_ptr(w, *b)?.unwrap_or(0);
            optrs[i] = o.buf.ptr;
            o.rows = x.rows;
        }
        let total: usize = ws.iter().map(|(w, _)| w.rows).sum();
        for (first, n) in matvec_chunks(x.rows) {
            let kernel = self.typed(matvec_kind("matvec3", n), ws[0].0.dtype)?;
            let mut args: Vec<Arg> = ptrs.iter().map(|&p| Arg::Ptr(p)).collect();
            args.extend(rows.iter().map(|&r| Arg::I32(r)));
            args.extend([
                Arg::I32(x.cols as i32),
                Arg::U64(row_bytes as u64),
                Arg::Ptr(x.buf.ptr + (first * x.cols * 4) as u64),
                Arg::I32(n as i32),
            ]);
            args.extend(biases.iter().map(|&p| Arg::Ptr(p)));
            args.extend(
                optrs
                    .iter()
                    .zip(rows)
                    .map(|(&p, r)| Arg::Ptr(p + (first * r as usize * 4) as u64)),
            );
            let g = matvec_geometry(ws[0].0.dtype, total, n);
            args.extend([Arg::Ptr(norm_w), Arg::F32(eps), Arg::I32(g.wpr)]);
            self.launch(&kernel, g.grid, g.block, &args)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{matvec_geometry, matvec_kind};
    use crate::kernels::WEIGHT_TYPES;
    use suanli_core::DType;

    /// The matrix-vector kernels are built for at most so many threads a block (`__launch_bounds__`
    /// in matvec.cu: 128 for the one-token kernels and float types, 512 for quantized types). A
    /// larger block fails to launch on a GPU; the emulator does not model the bound.
    #[test]
    fn matvec_blocks_fit_the_kernels_launch_bounds() {
        for (ty, _) in WEIGHT_TYPES {
            let float = matches!(ty, DType::F32 | DType::F16 | DType::BF16);
            for rows in [1, 96, 896, 3584, 8192, 18944, 151_936] {
                assert_eq!(
                    matvec_geometry(ty, rows, 1).block,
                    128,
                    "{ty:?}, {rows} rows, 1 token"
                );
                for tokens in 2..=8 {
                    let most = if float { 128 } else { 512 };
                    let g = matvec_geometry(ty, rows, tokens);
                    assert!(
                        g.block <= most,
                        "{ty:?}, {rows} rows, {tokens} tokens: {}",
                        g.block
                    );
                }
            }
        }
        for kind in ["matvec", "matvec3", "matvec_glu"] {
            assert_eq!(matvec_kind(kind, 1), format!("{kind}_t1"));
            assert_eq!(matvec_kind(kind, 2), kind);
        }
    }
}
