//! Attention of `CudaBackend` over the paged KV cache: the per-row split-K kernel for decode and
//! short chunks; prefill chunks over an f16 or Q8_0 cache in the fused tensor-core kernel
//! (flash.cu); long chunks over an f32 cache as gathered K/V with two batched GEMMs per KV head.

use crate::device::{u32_bytes, Arg, DevBuf, Elem, Gemm};
use crate::scratch::{self, ensure};
use crate::{blocks, CudaBackend, KvBuf, ATTN_GEMM_MIN_ROWS};
use suanli_backend::{shape_err, Act, AttnMeta, AttnSeq, KvDType, KvPages, KvSpec, Result};

/// A sequence with at least this many new rows in a step takes the fused prefill kernel
/// (flash.cu; f16 or Q8_0 cache, head dim 64 or 128).
pub const FLASH_MIN_ROWS: usize = 16;
/// Query rows per block of the fused kernel (`FA_ROWS`).
const FLASH_ROWS: usize = 64;

impl CudaBackend {
    /// Paged attention: the per-row kernel (split across blocks for deep contexts) for decode and
    /// short chunks, the fused kernel for prefill chunks, cuBLAS for long chunks over f32 caches.
    pub(crate) fn attend(
        &self,
        q: &Act<DevBuf>,
        kv: &KvPages<KvBuf>,
        meta: &AttnMeta<'_>,
        layer: usize,
        out: &mut Act<DevBuf>,
    ) -> Result<()> {
        let (nh, nkv, hd) = (meta.n_heads, meta.n_kv_heads, meta.head_dim);
        if nkv == 0
            || nh % nkv != 0
            || hd > 256
            || nkv != kv.spec.n_kv_heads
            || hd != kv.spec.head_dim
            || q.cols != nh * hd
            || out.cols != q.cols
            || out.capacity < q.rows
            || layer >= kv.layers.len()
        {
            return Err(shape_err(
                "attention",
                format!("q [{}, {}] with {nh}/{nkv} heads of {hd}", q.rows, q.cols),
            ));
        }
        let (tables, mut row_meta) = attention_rows(meta, q.rows, &kv.spec)?;
        out.rows = q.rows;
        if q.rows == 0 {
            return Ok(());
        }
        // Chunks of a prefill take the fused kernel (f16 or Q8_0 cache, head dims 64 and 128)
        // or, long ones over an f32 or f16 cache, cuBLAS; their rows are skipped by the per-row
        // kernel (which takes everything else, a Q8_0 cache's long chunks at other head sizes
        // included).
        let dtype = kv.layers[layer].0.dtype;
        let fused = self.flash && dtype != KvDType::F32 && (hd == 64 || hd == 128);
        let (flash, long): (Vec<&AttnSeq>, Vec<&AttnSeq>) = if fused {
            let flash = meta.seqs.iter().filter(|s| s.q_len >= FLASH_MIN_ROWS);
            (flash.collect(), Vec::new())
        } else if dtype != KvDType::Q8_0 {
            let long = meta.seqs.iter().filter(|s| s.q_len >= ATTN_GEMM_MIN_ROWS);
            (Vec::new(), long.collect())
        } else {
            (Vec::new(), Vec::new())
        };
        let mut tiles = Vec::new();
        for s in &flash {
            // Later tiles see more positions: they go first.
            for t in (0..s.q_len.div_ceil(FLASH_ROWS)).rev() {
                let first = s.q_start + t * FLASH_ROWS;
                let rows = FLASH_ROWS.min(s.q_len - t * FLASH_ROWS);
                let pos0 = s.ctx_len - s.q_len + t * FLASH_ROWS;
                tiles.extend(
                    [first, rows, row_meta[2 * s.q_start] as usize, pos0].map(|v| v as u32),
                );
            }
        }
        for s in flash.iter().chain(&long) {
            for r in s.q_start..s.q_start + s.q_len {
                row_meta[2 * r + 1] = 0;
            }
        }
        let mut sc = self.scratch();
        let sc = &mut *sc;
        let dev_tables = sc.tables.put(&self.dev, u32_bytes(&tables))?.ptr;
        let dev_meta = sc.row_meta.put(&self.dev, u32_bytes(&row_meta))?.ptr;
        let (kc, vc) = &kv.layers[layer];
        if flash.len() + long.len() < meta.seqs.len() {
            let kernel = format!("attention_{}", kc.suffix());
            // Few (row, head) blocks over long contexts: split the contexts across blocks too.
            let max_ctx = (0..q.rows).map(|r| row_meta[2 * r + 1] as usize).max();
            let (span, n_split) = decode_split(max_ctx.unwrap_or(0), nh * q.rows);
            let part = if n_split > 1 {
                let bytes = q.rows * nh * n_split * (hd + 2) * 4;
                ensure(&self.dev, &mut sc.att_part, bytes)?.ptr
            } else {
                0
            };
            let args = [
                q.buf.arg(),
                kc.buf.arg(),
                vc.buf.arg(),
                Arg::Ptr(dev_tables),
                Arg::Ptr(dev_meta),
                Arg::I32(nh as i32),
                Arg::I32(nkv as i32),
                Arg::I32(hd as i32),
                Arg::I32(kv.spec.block_size as i32),
                Arg::F32(meta.scale),
                Arg::I32(span as i32),
                Arg::I32(n_split as i32),
                Arg::Ptr(part),
                out.buf.arg(),
            ];
            // One block of ATT_WARPS (8) warps per (head, split, row).
            let grid = ((nh * n_split) as u32, q.rows as u32);
            self.launch(&kernel, grid, 256, &args)?;
            if n_split > 1 {
                let args = [
                    Arg::Ptr(part),
                    Arg::Ptr(dev_meta),
                    Arg::I32(nh as i32),
                    Arg::I32(hd as i32),
                    Arg::I32(n_split as i32),
                    out.buf.arg(),
                ];
                self.launch("attention_merge", (nh as u32, q.rows as u32), 128, &args)?;
            }
        }
        if !tiles.is_empty() {
            let dev_tiles = sc.flash_tiles.put(&self.dev, u32_bytes(&tiles))?.ptr;
            let args = [
                q.buf.arg(),
                kc.buf.arg(),
                vc.buf.arg(),
                Arg::Ptr(dev_tables),
                Arg::Ptr(dev_tiles),
                Arg::I32(nh as i32),
                Arg::I32(nkv as i32),
                Arg::I32(kv.spec.block_size as i32),
                Arg::F32(meta.scale),
                out.buf.arg(),
            ];
            let grid = ((tiles.len() / 4) as u32, nh as u32);
            let kernel = format!("flash_prefill_{}_{hd}", kc.suffix());
            self.launch(&kernel, grid, 128, &args)?;
        }
        for s in long {
            let table = dev_tables + 4 * row_meta[2 * s.q_start] as u64;
            self.attention_gemm(q, (kc, vc), s, table, meta, &kv.spec, out, sc)?;
        }
        Ok(())
    }

    /// Attention of one sequence's long chunk through cuBLAS: gather its K/V pages into contiguous
    /// rows, then per KV head S = scale·Q·Kᵀ for the group's query heads (one batched GEMM),
    /// causal softmax, O = P·V (a second batched GEMM written straight into `out`'s rows).
    #[allow(clippy::too_many_arguments)]
    fn attention_gemm(
        &self,
        q: &Act<DevBuf>,
        (kc, vc): (&KvBuf, &KvBuf),
        s: &AttnSeq,
        table: u64,
        meta: &AttnMeta<'_>,
        spec: &KvSpec,
        out: &Act<DevBuf>,
        sc: &mut scratch::Scratch,
    ) -> Result<()> {
        let (nh, nkv, hd) = (meta.n_heads, meta.n_kv_heads, meta.head_dim);
        let (ctx, ql, kv_dim, group) = (s.ctx_len, s.q_len, spec.kv_dim(), nh / nkv);
        let f16 = kc.dtype == KvDType::F16;
        let (elem, suffix) = if f16 {
            (Elem::F16, "f16")
        } else {
            (Elem::F32, "f32")
        };
        let eb = elem.bytes();
        let kb = ensure(&self.dev, &mut sc.att_k, ctx * kv_dim * eb)?.ptr;
        let vb = ensure(&self.dev, &mut sc.att_v, ctx * kv_dim * eb)?.ptr;
        let args = [
            kc.buf.arg(),
            vc.buf.arg(),
            Arg::Ptr(table),
            Arg::I32(ctx as i32),
            Arg::I32(kv_dim as i32),
            Arg::I32(spec.block_size as i32),
            Arg::Ptr(kb),
            Arg::Ptr(vb),
        ];
        self.launch(
            &format!("gather_kv_{suffix}"),
            blocks(ctx * kv_dim, 256),
            256,
            &args,
        )?;
        // The chunk's queries in the cache's element type.
        let q_off = q.buf.ptr + (s.q_start * nh * hd * 4) as u64;
        let qb = if f16 {
            let qb = ensure(&self.dev, &mut sc.att_q, ql * nh * hd * 2)?.ptr;
            let n = (ql * nh * hd) as u64;
            self.launch(
                "to_f16",
                blocks(ql * nh * hd, 256),
                256,
                &[Arg::Ptr(q_off), Arg::U64(n), Arg::Ptr(qb)],
            )?;
            qb
        } else {
            q_off
        };
        let sb = ensure(&self.dev, &mut sc.att_s, group * ql * ctx * 4)?.ptr;
        let pb = ensure(&self.dev, &mut sc.att_p, group * ql * ctx * eb)?.ptr;
        let o_off = out.buf.ptr + (s.q_start * nh * hd * 4) as u64;
        for kvh in 0..nkv {
            let h0 = kvh * group;
            // S_g (row-major [ql][ctx]) = column-major ctx × ql = K_kvhᵀ (ctx × hd) · Q_h (hd × ql).
            self.dev.gemm(&Gemm {
                trans_a: true,
                trans_b: false,
                m: ctx,
                n: ql,
                k: hd,
                alpha: meta.scale,
                beta: 0.0,
                c_elem: Elem::F32,
                ab: elem,
                a: kb + (kvh * hd * eb) as u64,
                lda: kv_dim,
                stride_a: 0,
                b: qb + (h0 * hd * eb) as u64,
                ldb: nh * hd,
                stride_b: hd,
                c: sb,
                ldc: ctx,
                stride_c: ql * ctx,
                batch: group,
            })?;
            let args = [
                Arg::Ptr(sb),
                Arg::I32(ql as i32),
                Arg::I32(ctx as i32),
                Arg::Ptr(pb),
            ];
            self.launch(
                &format!("softmax_causal_{suffix}"),
                ((group * ql) as u32, 1),
                256,
                &args,
            )?;
            // O_h (column-major hd × ql, ld nh·hd: out's rows) = V_kvh (hd × ctx) · P_g (ctx × ql).
            self.dev.gemm(&Gemm {
                trans_a: false,
                trans_b: false,
                m: hd,
                n: ql,
                k: ctx,
                alpha: 1.0,
                beta: 0.0,
                c_elem: Elem::F32,
                ab: elem,
                a: vb + (kvh * hd * eb) as u64,
                lda: kv_dim,
                stride_a: 0,
                b: pb,
                ldb: ctx,
                stride_b: ql * ctx,
                c: o_off + (h0 * hd * 4) as u64,
                ldc: nh * hd,
                stride_c: hd,
                batch: group,
            })?;
        }
        Ok(())
    }
}

/// Positions per block and blocks per (row, head) for the per-row kernel: one block per (row,
/// head) while that gives the GPU enough blocks or the context is short; otherwise the longest
/// context is split into spans of at least SPLIT_MIN_SPAN positions, up to about
/// SPLIT_TARGET_BLOCKS blocks in all (flash-decoding). Spans are whole rounds of the kernel's
/// 8 warps × 8 positions.
pub fn decode_split(max_ctx: usize, row_heads: usize) -> (usize, usize) {
    const SPLIT_MIN_SPAN: usize = 256;
    const SPLIT_TARGET_BLOCKS: usize = 256;
    let n_split = (max_ctx / SPLIT_MIN_SPAN)
        .min(SPLIT_TARGET_BLOCKS / row_heads.max(1))
        .max(1);
    if n_split == 1 {
        return (i32::MAX as usize, 1);
    }
    let span = max_ctx.div_ceil(n_split).next_multiple_of(64);
    (span, max_ctx.div_ceil(span))
}

/// The attention kernels' per-step data: every sequence's reachable block-table entries, one
/// after another, and per query row (offset of its table in that list, positions it sees).
/// Checks that every block a row can reach exists and every row belongs to the batch, so the
/// kernel never reads outside the cache.
pub fn attention_rows(
    meta: &AttnMeta<'_>,
    q_rows: usize,
    spec: &KvSpec,
) -> Result<(Vec<u32>, Vec<u32>)> {
    let bs = spec.block_size;
    let (mut tables, mut row_meta) = (Vec::new(), vec![0u32; 2 * q_rows]);
    for s in meta.seqs {
        let reach = s.ctx_len.div_ceil(bs);
        if s.q_len > s.ctx_len
            || s.q_start + s.q_len > q_rows
            || reach > s.block_table.len()
            || s.block_table[..reach]
                .iter()
                .any(|&b| b as usize >= spec.num_blocks)
        {
            return Err(shape_err(
                "attention",
                format!("sequence {s:?} does not fit the cache or the batch"),
            ));
        }
        let off = tables.len() as u32;
        tables.extend_from_slice(&s.block_table[..reach]);
        for i in 0..s.q_len {
            let r = s.q_start + i;
            row_meta[2 * r] = off;
            row_meta[2 * r + 1] = (s.ctx_len - s.q_len + i + 1) as u32;
        }
    }
    if let Some(r) = (0..q_rows).find(|&r| row_meta[2 * r + 1] == 0) {
        return Err(shape_err(
            "attention",
            format!("query row {r} belongs to no sequence"),
        ));
    }
    if tables.is_empty() {
        tables.push(0);
    }
    Ok((tables, row_meta))
}

#[cfg(test)]
mod tests {
    use super::decode_split;

    #[test]
    fn decode_splits_long_contexts_of_few_rows_only() {
        // A batch-1 decode step of a 7B shape (28 heads) at the benchmark's depth: one block per head.
        assert_eq!(decode_split(256, 28).1, 1);
        // Deep: split into spans of whole rounds (64 positions) covering the context.
        for (ctx, row_heads) in [(4096, 28), (3001, 16), (32768, 28), (700, 8), (512, 1)] {
            let (span, n) = decode_split(ctx, row_heads);
            assert!(n > 1, "{ctx} × {row_heads}");
            assert_eq!(span % 64, 0);
            assert!(
                span * n >= ctx && span * (n - 1) < ctx,
                "{span} × {n} for {ctx}"
            );
            assert!(row_heads * n <= 256 && span >= 256);
        }
        assert_eq!(decode_split(511, 1).1, 1);
        // Many rows: enough blocks already.
        assert_eq!(decode_split(30000, 32 * 28).1, 1);
    }
}
