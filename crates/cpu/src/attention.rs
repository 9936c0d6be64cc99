//! Causal attention over the paged KV cache with an online softmax (no score matrix).

use crate::kernels::Kernels;
use crate::pool::Pool;
use suanli_backend::{shape_err, Act, AttnMeta, KvPages, Result};

pub fn paged_attention(
    k: &Kernels,
    pool: &Pool,
    q: &Act<Vec<f32>>,
    kv: &KvPages<Vec<f32>>,
    meta: &AttnMeta<'_>,
    layer: usize,
    out: &mut Act<Vec<f32>>,
) -> Result<()> {
    let (nh, nkv, hd) = (meta.n_heads, meta.n_kv_heads, meta.head_dim);
    if nkv == 0
        || nh % nkv != 0
        || q.cols != nh * hd
        || out.cols != nh * hd
        || kv.spec.kv_dim() != nkv * hd
        || layer >= kv.layers.len()
    {
        return Err(shape_err(
            "attention",
            format!(
                "q [{}, {}], heads {nh}/{nkv}×{hd}, kv {:?}",
                q.rows, q.cols, kv.spec
            ),
        ));
    }
    if q.rows > out.capacity {
        return Err(shape_err("attention", "output too small"));
    }
    // Per query row: (sequence index, absolute position).
    let mut rows = vec![(0usize, 0usize); q.rows];
    for (si, s) in meta.seqs.iter().enumerate() {
        if s.q_start + s.q_len > q.rows
            || s.q_len > s.ctx_len
            || s.ctx_len.div_ceil(kv.spec.block_size) > s.block_table.len()
        {
            return Err(shape_err(
                "attention",
                format!("sequence {si}: {s:?} does not fit the batch or its block table"),
            ));
        }
        if s.block_table
            .iter()
            .any(|&b| b as usize >= kv.spec.num_blocks)
        {
            return Err(shape_err(
                "attention",
                format!("sequence {si}: block table points outside the cache"),
            ));
        }
        for i in 0..s.q_len {
            rows[s.q_start + i] = (si, s.ctx_len - s.q_len + i);
        }
    }
    out.rows = q.rows;
    pool.split_mut(&mut out.buf[..q.rows * nh * hd], hd, 2, &|first, part| {
        for (i, acc) in part.chunks_exact_mut(hd).enumerate() {
            attend_one(k, q, kv, meta, layer, &rows, first + i, acc);
        }
    });
    Ok(())
}

/// One (query row, head) pair: `idx = row * n_heads + head`; the result goes into `acc`.
#[allow(clippy::too_many_arguments)]
fn attend_one(
    k: &Kernels,
    q: &Act<Vec<f32>>,
    kv: &KvPages<Vec<f32>>,
    meta: &AttnMeta<'_>,
    layer: usize,
    rows: &[(usize, usize)],
    idx: usize,
    acc: &mut [f32],
) {
    let (nh, nkv, hd) = (meta.n_heads, meta.n_kv_heads, meta.head_dim);
    let (ks, vs) = &kv.layers[layer];
    let bs = kv.spec.block_size;
    let kvd = nkv * hd;
    let group = nh / nkv;
    let (t, h) = (idx / nh, idx % nh);
    let (si, pos) = rows[t];
    let table = &meta.seqs[si].block_table;
    let qv = &q.buf[t * q.cols + h * hd..t * q.cols + (h + 1) * hd];
    let kvh = h / group;
    acc.fill(0.0);
    let (mut m, mut l) = (f32::NEG_INFINITY, 0f32);
    for p in 0..=pos {
        let slot = table[p / bs] as usize * bs + p % bs;
        let off = slot * kvd + kvh * hd;
        let s = (k.dot)(qv, &ks[off..off + hd]) * meta.scale;
        if s > m {
            let corr = (m - s).exp();
            acc.iter_mut().for_each(|a| *a *= corr);
            l *= corr;
            m = s;
        }
        let pw = (s - m).exp();
        l += pw;
        (k.axpy)(pw, &vs[off..off + hd], acc);
    }
    let inv = 1.0 / l;
    acc.iter_mut().for_each(|a| *a *= inv);
}
