//! The decoder block's fused steps (`Backend::linear_add`, `gated_linear`, `mlp`, `rope_write_kv`) on
//! the GPU. A decode step of a small model is a few hundred short kernels, so each launch saved
//! per layer is time saved per token: the residual add rides on the product's store, gate and up
//! are reduced by the same warp and only silu(g)·u is stored, and rotary + cache write are one
//! block per row. Anything outside a fused kernel's reach takes the separate ops. For large
//! batches the MLP keeps its middle in bf16: the gate and up products write bf16, silu·mul runs
//! in place on it and the down product reads it and adds into the residual stream (the f32 path
//! wrote, read and converted the `[n, intermediate]` products several times over).

use crate::device::{f32_bytes, u32_bytes, Arg, DevBuf, Elem, Gemm};
use crate::matmul::{matrix_args, matvec_geometry, matvec_kind};
use crate::{blocks, matvec_chunks, matvec_takes, CudaBackend, CudaWeight, KvBuf, MATVEC_MAX_ROWS};
use suanli_backend::{
    check, shape_err, Act, Backend, KvPages, MlpScratch, Result, RopeParams, RopeStyle, Weight,
};
use suanli_core::DType;

/// The largest rotary half `rope_write_kv_*` keeps its cos/sin for (`ROPE_MAX_HALF`).
const ROPE_MAX_HALF: usize = 128;

impl CudaBackend {
    pub(crate) fn fused_linear_add(
        &self,
        x: &Act<DevBuf>,
        w: &Weight<CudaWeight>,
        tmp: &mut Act<DevBuf>,
        acc: &mut Act<DevBuf>,
    ) -> Result<()> {
        if x.cols != w.cols || acc.cols != w.rows || acc.rows != x.rows {
            return Err(shape_err(
                "linear_add",
                format!(
                    "[{}, {}] · [{}, {}] added to [{}, {}]",
                    x.rows, x.cols, w.rows, w.cols, acc.rows, acc.cols
                ),
            ));
        }
        if x.rows == 0 {
            return Ok(());
        }
        if !self.fused {
            self.linear(x, w, None, tmp)?;
            return self.add(acc, tmp);
        }
        let mut sc = self.scratch();
        self.matmul(x.buf.ptr, x.rows, w, None, acc.buf.ptr, true, &mut sc)
    }

    pub(crate) fn fused_gated_linear(
        &self,
        x: &Act<DevBuf>,
        [gate, up]: [&Weight<CudaWeight>; 2],
        g: &mut Act<DevBuf>,
        u: &mut Act<DevBuf>,
        out: &mut Act<DevBuf>,
    ) -> Result<()> {
        if self.glu(x, None, [gate, up], out)? {
            return Ok(());
        }
        self.products(x, &[(gate, None), (up, None)], &mut [&mut *g, &mut *u])?;
        self.silu_mul(g, u, out)
    }

    /// `matvec_glu_*` into `out` — of rms_norm(x) by `norm` when given — if the batch and the
    /// matrices allow it; `false` (nothing done) otherwise.
    fn glu(
        &self,
        x: &Act<DevBuf>,
        norm: Option<(&Weight<CudaWeight>, f32)>,
        [gate, up]: [&Weight<CudaWeight>; 2],
        out: &mut Act<DevBuf>,
    ) -> Result<bool> {
        let [wg, rows, cols, row_bytes] = matrix_args(gate, "gated_linear")?;
        let [wu, ..] = matrix_args(up, "gated_linear")?;
        let fused = self.fused
            && matvec_takes(gate.dtype, x.rows)
            && gate.dtype == up.dtype
            && (gate.rows, gate.cols) == (up.rows, up.cols);
        if !fused {
            return Ok(false);
        }
        check::product("gated_linear", x, gate, out)?;
        let (norm_w, eps) = match norm {
            Some((w, eps)) => (Self::vector(w, x.cols, "rms_norm")?.ptr, eps),
            None => (0, 0.0),
        };
        out.rows = x.rows;
        for (first, n) in matvec_chunks(x.rows) {
            let kernel = self.typed(matvec_kind("matvec_glu", n), gate.dtype)?;
            let g = matvec_geometry(gate.dtype, gate.rows, n);
            let args = [
                wg,
                wu,
                rows,
                cols,
                row_bytes,
                Arg::Ptr(x.buf.ptr + (first * x.cols * 4) as u64),
                Arg::I32(n as i32),
                Arg::Ptr(out.buf.ptr + (first * gate.rows * 4) as u64),
                Arg::Ptr(norm_w),
                Arg::F32(eps),
                Arg::I32(g.wpr),
            ];
            self.launch(&kernel, g.grid, g.block, &args)?;
        }
        Ok(true)
    }

    /// Norm and Q/K/V products: one `matvec3_*` launch with the norm folded in for decode-sized
    /// batches, else the norm into `h` and the products.
    pub(crate) fn fused_norm_linear_many(
        &self,
        x: &Act<DevBuf>,
        norm: (&Weight<CudaWeight>, f32),
        ws: &[(&Weight<CudaWeight>, Option<&Weight<CudaWeight>>)],
        outs: &mut [&mut Act<DevBuf>],
        h: &mut Act<DevBuf>,
    ) -> Result<()> {
        if self.fused && Self::matvec3_fits(x, ws, outs) {
            return self.matvec3(x, Some(norm), ws, outs);
        }
        // Large batches: the norm writes the products' bf16 input directly.
        if self.fused && Self::bf16_gemms(x, ws, outs) {
            self.check_products(x, ws, outs)?;
            let mut sc = self.scratch();
            let xb = self.rms_norm_bf16(x, norm, &mut sc)?;
            return self.gemm_products(x.rows, xb, ws, outs, &mut sc);
        }
        self.rms_norm(x, norm.0, norm.1, h)?;
        self.products(h, ws, outs)
    }

    pub(crate) fn fused_mlp(
        &self,
        x: &mut Act<DevBuf>,
        norm: (&Weight<CudaWeight>, f32),
        [gate, up, down]: [&Weight<CudaWeight>; 3],
        s: MlpScratch<'_, DevBuf>,
    ) -> Result<()> {
        // Decode-sized: the norm folded into the gate/up kernel, the down product added into x.
        if self.glu(x, Some(norm), [gate, up], s.act)? {
            return self.fused_linear_add(s.act, down, s.out, x);
        }
        let n = x.rows;
        let float32 = [gate, up, down].iter().any(|w| w.dtype == DType::F32);
        // Batches the matrix-vector kernels take (gate and up of different types, which the
        // gate/up kernel does not) go product by product as those kernels decide; the bf16
        // middle below is for the GEMM path.
        if n <= MATVEC_MAX_ROWS || matvec_takes(gate.dtype, n) || !self.fused || float32 {
            self.rms_norm(x, norm.0, norm.1, s.normed)?;
            self.fused_gated_linear(s.normed, [gate, up], s.g, s.u, s.act)?;
            return self.fused_linear_add(s.act, down, s.out, x);
        }
        // The GEMM path: the norm writes the gate and up products' bf16 input directly.
        let acc = &*x; // the residual stream the down product adds into
        check::product("mlp", x, gate, s.g)?;
        check::product("mlp", x, up, s.u)?;
        if gate.rows != up.rows
            || down.cols != gate.rows
            || acc.cols != down.rows
            || acc.rows != n
            || s.u.capacity < n
        {
            return Err(shape_err(
                "mlp",
                format!(
                    "gate [{}, {}], up [{}, {}], down [{}, {}] for [{n}, {}] into [{}, {}]",
                    gate.rows,
                    gate.cols,
                    up.rows,
                    up.cols,
                    down.rows,
                    down.cols,
                    x.cols,
                    acc.rows,
                    acc.cols
                ),
            ));
        }
        let (ff, k) = (gate.rows, x.cols);
        // The gate and up products in bf16 in the f32 scratch's memory (half of it).
        let (g, u) = (s.g.buf.ptr, s.u.buf.ptr);
        let mut sc = self.scratch();
        let xb = self.rms_norm_bf16(x, norm, &mut sc)?;
        for (w, out) in [(gate, g), (up, u)] {
            let wb = self.weight_bf16(w, &mut sc)?;
            self.dev.gemm(&Gemm {
                c_elem: Elem::BF16,
                ..Gemm::linear(ff, n, k, Elem::BF16, wb, xb, out)
            })?;
        }
        let len = (n * ff) as u64;
        let args = [Arg::Ptr(g), Arg::Ptr(u), Arg::U64(len)];
        self.launch("silu_mul_bf16", blocks(n * ff, 256), 256, &args)?;
        let wd = self.weight_bf16(down, &mut sc)?;
        self.dev.gemm(&Gemm {
            beta: 1.0,
            ..Gemm::linear(down.rows, n, ff, Elem::BF16, wd, g, acc.buf.ptr)
        })
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn fused_rope_write_kv(
        &self,
        q: &mut Act<DevBuf>,
        k: &mut Act<DevBuf>,
        v: &Act<DevBuf>,
        positions: &[u32],
        (rq, rk): (&RopeParams, &RopeParams),
        slots: &[u32],
        kv: &mut KvPages<KvBuf>,
        layer: usize,
    ) -> Result<()> {
        check::rope(q, positions, rq)?;
        check::rope(k, positions, rk)?;
        check::write_kv(k, v, slots, kv, layer)?;
        let half = rq.rotary_dim / 2;
        let shared = rq.head_dim == rk.head_dim
            && rq.rotary_dim == rk.rotary_dim
            && rq.style == rk.style
            && rq.inv_freq[..half] == rk.inv_freq[..half]
            && half <= ROPE_MAX_HALF;
        if !shared || !self.fused {
            self.rope(q, positions, rq)?;
            self.rope(k, positions, rk)?;
            return self.write_kv(k, v, slots, kv, layer);
        }
        if positions.is_empty() {
            return Ok(());
        }
        let mut sc = self.scratch();
        let pos = sc.positions.put(&self.dev, u32_bytes(positions))?.ptr;
        let freq = sc.inv_freq.put(&self.dev, f32_bytes(&rq.inv_freq))?.ptr;
        let dev_slots = sc.slots.put(&self.dev, u32_bytes(slots))?.ptr;
        drop(sc);
        let (kc, vc) = &kv.layers[layer];
        let args = [
            q.buf.arg(),
            k.buf.arg(),
            v.buf.arg(),
            Arg::Ptr(pos),
            Arg::Ptr(freq),
            Arg::I32(rq.n_heads as i32),
            Arg::I32(rk.n_heads as i32),
            Arg::I32(rq.head_dim as i32),
            Arg::I32(rq.rotary_dim as i32),
            Arg::I32((rq.style == RopeStyle::Neox) as i32),
            Arg::Ptr(dev_slots),
            kc.buf.arg(),
            vc.buf.arg(),
        ];
        let kernel = format!("rope_write_kv_{}", kc.suffix());
        self.launch(&kernel, (positions.len() as u32, 1), 256, &args)
    }
}
