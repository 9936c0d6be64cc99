//! The decoder block's fused steps (`Backend::linear_add`, `gated_linear`, `rope_write_kv`) on
//! the GPU. A decode step of a small model is a few hundred short kernels, so each launch saved
//! per layer is time saved per token: the residual add rides on the product's store, gate and up
//! are reduced by the same warp and only silu(g)·u is stored, and rotary + cache write are one
//! block per row. Anything outside a fused kernel's reach takes the separate ops.

use crate::device::{f32_bytes, u32_bytes, Arg, DevBuf};
use crate::matmul::matvec_geometry;
use crate::{CudaBackend, CudaWeight, KvBuf, MATVEC_MAX_ROWS};
use suanli_backend::{
    check, shape_err, Act, Backend, KvPages, Result, RopeParams, RopeStyle, Weight,
};

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
        let (CudaWeight::Raw { buf: wg, row_bytes }, CudaWeight::Raw { buf: wu, .. }) =
            (&gate.store, &up.store)
        else {
            return Err(shape_err(
                "gated_linear",
                "a vector weight used as a matrix",
            ));
        };
        let fused = self.fused
            && (1..=MATVEC_MAX_ROWS).contains(&x.rows)
            && gate.dtype == up.dtype
            && (gate.rows, gate.cols) == (up.rows, up.cols);
        if !fused {
            self.products(x, &[(gate, None), (up, None)], &mut [&mut *g, &mut *u])?;
            return self.silu_mul(g, u, out);
        }
        check::product("gated_linear", x, gate, out)?;
        out.rows = x.rows;
        let args = [
            wg.arg(),
            wu.arg(),
            Arg::I32(gate.rows as i32),
            Arg::I32(gate.cols as i32),
            Arg::U64(*row_bytes as u64),
            x.buf.arg(),
            Arg::I32(x.rows as i32),
            out.buf.arg(),
        ];
        let kernel = self.typed("matvec_glu", gate.dtype)?;
        let (grid, block) = matvec_geometry(gate.dtype, gate.rows, x.rows);
        self.launch(&kernel, grid, block, &args)
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
