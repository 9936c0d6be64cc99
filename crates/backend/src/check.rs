//! The contract's shape and index checks, shared by every backend: an op whose operands do not
//! fit, or whose host-supplied indices (token ids, slots, selected rows) point outside their
//! tables, is a `BackendError::Shape` before any kernel runs — on any device.

use crate::{shape_err, Act, HostTensor, KvDType, KvPages, KvSpec, Result, RopeParams, Weight};

/// A weight's file bytes are exactly its `[rows, cols]` of its type (a row of a block type
/// whole blocks); the bytes of one row.
pub fn weight_bytes(host: &HostTensor<'_>) -> Result<usize> {
    let rb = host
        .dtype
        .row_bytes(host.cols)
        .map_err(|e| shape_err("prepare_weight", format!("{}: {e}", host.name)))?;
    if rb.checked_mul(host.rows) != Some(host.bytes.len()) {
        return Err(shape_err(
            "prepare_weight",
            format!(
                "{}: {} bytes for [{}, {}] {}",
                host.name,
                host.bytes.len(),
                host.rows,
                host.cols,
                host.dtype
            ),
        ));
    }
    Ok(rb)
}

/// A cache the element type can hold: Q8_0 stores each head in whole 32-value blocks.
pub fn kv_cache(spec: &KvSpec) -> Result<()> {
    if spec.dtype == KvDType::Q8_0 && !spec.head_dim.is_multiple_of(32) {
        return Err(shape_err(
            "alloc_kv",
            format!(
                "a Q8_0 cache needs a head size divisible by 32, not {}",
                spec.head_dim
            ),
        ));
    }
    Ok(())
}

/// x's rows fit `out`, with the same columns (element-wise ops, norms, rope outputs).
pub fn rows_into<B>(op: &'static str, x: &Act<B>, out: &Act<B>) -> Result<()> {
    if x.rows > out.capacity || x.cols != out.cols {
        return Err(shape_err(
            op,
            format!(
                "input [{}, {}] vs output [cap {}, {}]",
                x.rows, x.cols, out.capacity, out.cols
            ),
        ));
    }
    Ok(())
}

/// `len` host values are `rows` whole rows of `out`.
pub fn upload<B>(len: usize, rows: usize, out: &Act<B>) -> Result<()> {
    if rows > out.capacity || Some(len) != rows.checked_mul(out.cols) {
        return Err(shape_err(
            "upload",
            format!("{len} values as {rows} rows of {}", out.cols),
        ));
    }
    Ok(())
}

/// Every id is a row of the table, and the rows fit `out`.
pub fn embed<B, W>(table: &Weight<W>, ids: &[u32], out: &Act<B>) -> Result<()> {
    if out.cols != table.cols || ids.len() > out.capacity {
        return Err(shape_err(
            "embed",
            format!(
                "{} ids into [cap {}, {}]",
                ids.len(),
                out.capacity,
                out.cols
            ),
        ));
    }
    if let Some(&bad) = ids.iter().find(|&&id| id as usize >= table.rows) {
        return Err(shape_err(
            "embed",
            format!("token id {bad} is outside the vocabulary of {}", table.rows),
        ));
    }
    Ok(())
}

/// x · wᵀ fits: x has w's columns, out has w's rows as columns and room for x's rows.
pub fn product<B, W>(op: &'static str, x: &Act<B>, w: &Weight<W>, out: &Act<B>) -> Result<()> {
    if x.cols != w.cols || out.cols != w.rows || x.rows > out.capacity {
        return Err(shape_err(
            op,
            format!(
                "x [{}, {}] · w [{}, {}]ᵀ into [cap {}, {}]",
                x.rows, x.cols, w.rows, w.cols, out.capacity, out.cols
            ),
        ));
    }
    Ok(())
}

/// x's rows are whole groups of the norm weight's length.
pub fn norm_groups<B, W>(x: &Act<B>, w: &Weight<W>) -> Result<()> {
    let g = w.cols;
    if g == 0 || !x.cols.is_multiple_of(g) {
        return Err(shape_err(
            "rms_norm_groups",
            format!("row of {} is not made of groups of {g}", x.cols),
        ));
    }
    Ok(())
}

/// One position per row, rows of whole heads, the rotated part inside a head with its
/// frequencies all given.
pub fn rope<B>(x: &Act<B>, positions: &[u32], rope: &RopeParams) -> Result<()> {
    if positions.len() != x.rows
        || x.cols != rope.n_heads * rope.head_dim
        || rope.rotary_dim > rope.head_dim
        || rope.inv_freq.len() < rope.rotary_dim / 2
    {
        return Err(shape_err(
            "rope",
            format!(
                "{} positions for [{}, {}] with {rope:?}",
                positions.len(),
                x.rows,
                x.cols
            ),
        ));
    }
    Ok(())
}

/// One K row and one V row of `kv_dim` per slot, every slot inside the cache, an existing layer.
pub fn write_kv<B, K>(
    k: &Act<B>,
    v: &Act<B>,
    slots: &[u32],
    kv: &KvPages<K>,
    layer: usize,
) -> Result<()> {
    let d = kv.spec.kv_dim();
    if k.cols != d
        || v.cols != d
        || k.rows != slots.len()
        || v.rows != slots.len()
        || layer >= kv.layers.len()
    {
        return Err(shape_err(
            "write_kv",
            format!(
                "k [{}, {}], v [{}, {}], {} slots, kv_dim {d}, layer {layer}",
                k.rows,
                k.cols,
                v.rows,
                v.cols,
                slots.len()
            ),
        ));
    }
    if let Some(&bad) = slots.iter().find(|&&s| s as usize >= kv.spec.slots()) {
        return Err(shape_err(
            "write_kv",
            format!("slot {bad} outside the cache of {}", kv.spec.slots()),
        ));
    }
    Ok(())
}

/// gate and up alike, and their rows fit `out`.
pub fn silu_mul<B>(gate: &Act<B>, up: &Act<B>, out: &Act<B>) -> Result<()> {
    if gate.rows != up.rows || gate.cols != up.cols {
        return Err(shape_err(
            "silu_mul",
            format!(
                "gate [{}, {}] vs up [{}, {}]",
                gate.rows, gate.cols, up.rows, up.cols
            ),
        ));
    }
    rows_into("silu_mul", gate, out)
}

/// acc and x alike.
pub fn add<B>(acc: &Act<B>, x: &Act<B>) -> Result<()> {
    if acc.rows != x.rows || acc.cols != x.cols {
        return Err(shape_err(
            "add",
            format!("[{}, {}] += [{}, {}]", acc.rows, acc.cols, x.rows, x.cols),
        ));
    }
    Ok(())
}

/// Selected rows of x exist, x fits the head, and `out_len` (0 when the logits stay on the
/// device) is one vocabulary per selected row.
pub fn logits<B, W>(
    x: &Act<B>,
    rows: &[u32],
    lm_head: &Weight<W>,
    out_len: Option<usize>,
) -> Result<()> {
    if x.cols != lm_head.cols
        || rows.iter().any(|&r| r as usize >= x.rows)
        || out_len.is_some_and(|n| Some(n) != rows.len().checked_mul(lm_head.rows))
    {
        return Err(shape_err(
            "logits",
            format!(
                "rows {rows:?} of [{}, {}] · lm_head [{}, {}] into {out_len:?} values",
                x.rows, x.cols, lm_head.rows, lm_head.cols
            ),
        ));
    }
    Ok(())
}

/// `gather_rows`: every selected row is a live row of x, and they fit `out` (same columns).
pub fn gather_rows<B>(x: &Act<B>, rows: &[u32], out: &Act<B>) -> Result<()> {
    if x.cols != out.cols || rows.len() > out.capacity {
        return Err(shape_err(
            "gather_rows",
            format!(
                "{} rows of [{}, {}] into [cap {}, {}]",
                rows.len(),
                x.rows,
                x.cols,
                out.capacity,
                out.cols
            ),
        ));
    }
    live_rows("gather_rows", rows, x.rows)
}

/// `add_rows_scaled`: one weight and one destination per row of x, each a live row of `acc`.
pub fn add_rows_scaled<B>(acc: &Act<B>, x: &Act<B>, rows: &[u32], weights: &[f32]) -> Result<()> {
    if x.cols != acc.cols || rows.len() != x.rows || weights.len() != x.rows {
        return Err(shape_err(
            "add_rows_scaled",
            format!(
                "x [{}, {}] with {} rows and {} weights into [{}, {}]",
                x.rows,
                x.cols,
                rows.len(),
                weights.len(),
                acc.rows,
                acc.cols
            ),
        ));
    }
    live_rows("add_rows_scaled", rows, acc.rows)
}

fn live_rows(op: &'static str, rows: &[u32], live: usize) -> Result<()> {
    match rows.iter().find(|&&r| r as usize >= live) {
        Some(bad) => Err(shape_err(
            op,
            format!("row {bad} is outside the {live} live rows"),
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use suanli_core::DType;

    /// A tensor's bytes must be exactly its rows of its type: one byte short, one too many, or
    /// a row that is not whole blocks is an error naming the tensor, never a partial read.
    #[test]
    fn weight_bytes_are_the_shape_exactly() {
        let host = |dtype: DType, cols: usize, len: usize| {
            let bytes = suanli_formats::Bytes::from_vec(vec![0u8; len]);
            let t = HostTensor {
                name: "blk.0.w",
                dtype,
                rows: 3,
                cols,
                bytes: &bytes,
                role: crate::WeightRole::Matrix,
                precision: crate::ActPrecision::Fast,
            };
            weight_bytes(&t).map_err(|e| e.to_string())
        };
        // Q8_0: 34 bytes per block of 32.
        assert_eq!(host(DType::Q8_0, 64, 3 * 68), Ok(68));
        for len in [3 * 68 - 1, 3 * 68 + 1, 0] {
            let e = host(DType::Q8_0, 64, len).unwrap_err();
            assert!(e.contains("blk.0.w") && e.contains("[3, 64]"), "{e}");
        }
        assert!(host(DType::Q8_0, 40, 3 * 68)
            .unwrap_err()
            .contains("blk.0.w"));
        assert_eq!(host(DType::BF16, 5, 30), Ok(10));
    }

    fn act(rows: usize, cols: usize, capacity: usize) -> Act<()> {
        Act {
            rows,
            cols,
            capacity,
            buf: (),
        }
    }

    #[test]
    fn operands_that_do_not_fit_are_shape_errors() {
        let table = Weight {
            dtype: DType::F32,
            rows: 100,
            cols: 8,
            store: (),
        };
        assert!(embed(&table, &[0, 99], &act(0, 8, 2)).is_ok());
        assert!(embed(&table, &[100], &act(0, 8, 2)).is_err());
        assert!(embed(&table, &[1, 2, 3], &act(0, 8, 2)).is_err());
        assert!(upload(16, 2, &act(0, 8, 2)).is_ok());
        assert!(upload(16, 3, &act(0, 8, 2)).is_err());
        assert!(upload(usize::MAX, usize::MAX, &act(0, 8, 2)).is_err());
        let spec = KvSpec {
            dtype: KvDType::F16,
            n_layers: 1,
            num_blocks: 2,
            block_size: 16,
            n_kv_heads: 1,
            head_dim: 8,
        };
        let kv = KvPages {
            spec,
            layers: vec![((), ())],
        };
        let (k, v) = (act(2, 8, 2), act(2, 8, 2));
        assert!(write_kv(&k, &v, &[0, 31], &kv, 0).is_ok());
        assert!(kv_cache(&spec).is_ok());
        assert!(kv_cache(&KvSpec {
            dtype: KvDType::Q8_0,
            ..spec
        })
        .is_err());
        assert!(write_kv(&k, &v, &[0, 32], &kv, 0).is_err());
        assert!(write_kv(&k, &v, &[0, 1], &kv, 1).is_err());
        assert!(write_kv(&k, &act(1, 8, 2), &[0, 1], &kv, 0).is_err());
        assert!(logits(&act(3, 8, 3), &[2, 0], &table, Some(200)).is_ok());
        assert!(logits(&act(3, 8, 3), &[3], &table, None).is_err());
        assert!(logits(&act(3, 8, 3), &[0], &table, Some(99)).is_err());
        assert!(silu_mul(&act(2, 8, 2), &act(2, 4, 2), &act(0, 8, 2)).is_err());
        assert!(add(&act(2, 8, 2), &act(1, 8, 2)).is_err());
    }
}
