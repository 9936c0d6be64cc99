//! Weights on the CPU: what a matrix, table or vector is held as after load (`CpuWeight`),
//! how `prepare_weight` chooses it, and row lookups from whichever copy is kept.

use crate::kernels::{self, Isa};
use crate::{packed, CpuBackend};
use suanli_backend::{
    check, shape_err, ActPrecision, BackendError, HostTensor, Result, Weight, WeightRole,
};
use suanli_core::{quant, DType};
use suanli_formats::Bytes;

/// CPU weight storage: the file bytes, plus an f32 copy for vectors and f32 matrices, or the
/// matrix repacked for the AVX2 and AVX-512 kernels (`packed`).
pub struct CpuWeight {
    pub(crate) raw: Bytes,
    pub(crate) f32: Option<Vec<f32>>,
    pub(crate) packed: Option<packed::Packed>,
    /// A BF16 or F16 matrix in the AMX BF16 tiles' pair order (`kernels/amx_float.rs`), at the
    /// `amx` level: its products' prompt rows take the tiles (`Backend::step_rows`), the
    /// others f32 multiply-adds from the same tiles.
    pub(crate) pair_tiles: Option<kernels::amx_float::PairTiles>,
    /// Quantized activations in two passes (`ActPrecision::Exact`); such a weight keeps its
    /// file layout, where the two-pass products are built.
    pub(crate) two_pass: bool,
    /// `ActPrecision::ExactTop`: `logits` recomputes each row's largest candidates in f32.
    pub(crate) rescore_top: bool,
}

impl CpuWeight {
    /// Row `r` as f32, written into `dst` (an embedding lookup): from the repacked copy where
    /// there is one (the same bits as the file's row), so that a tied table's file pages are
    /// not read again.
    pub(crate) fn row_into(&self, w: &Weight<CpuWeight>, r: usize, dst: &mut [f32]) {
        let k = w.cols;
        match (&self.f32, &self.packed, &self.pair_tiles) {
            (Some(v), _, _) => dst.copy_from_slice(&v[r * k..(r + 1) * k]),
            (None, Some(p), _) => p.row_into(r, dst),
            (None, None, Some(t)) => t.row_into(r, dst),
            (None, None, None) => self.file_row_into(w, r, dst),
        }
    }

    /// Row `r` as f32, dequantized into `scratch` when needed: a head's rescored candidates
    /// (`rescore.rs`) and the file layout's products. A matrix in pair tiles is read there (its
    /// file pages were given back); a packed one from the file (rescoring reads a few hundred
    /// rows a token, and the packed layout's lookup is per value: `Packed::row_into`).
    #[inline]
    pub(crate) fn row<'a>(
        &'a self,
        w: &Weight<CpuWeight>,
        r: usize,
        scratch: &'a mut [f32],
    ) -> &'a [f32] {
        let k = w.cols;
        if let Some(v) = &self.f32 {
            return &v[r * k..(r + 1) * k];
        }
        let s = &mut scratch[..k];
        match &self.pair_tiles {
            Some(t) => t.row_into(r, s),
            None => self.file_row_into(w, r, s),
        }
        s
    }

    /// Row `r` dequantized from the file's bytes into `dst`.
    fn file_row_into(&self, w: &Weight<CpuWeight>, r: usize, dst: &mut [f32]) {
        let rb = w
            .dtype
            .row_bytes(w.cols)
            .expect("validated in prepare_weight");
        quant::dequantize(w.dtype, &self.raw.as_slice()[r * rb..(r + 1) * rb], dst)
            .expect("validated in prepare_weight");
    }
}

impl CpuBackend {
    /// `Backend::prepare_weight`: the file's bytes checked against the shape, then the layout
    /// this backend multiplies (an f32 copy, the packed layout or pair tiles), and the file's
    /// pages given back where nothing reads them again.
    pub(crate) fn prepare(&self, host: HostTensor<'_>) -> Result<Weight<CpuWeight>> {
        check::weight_bytes(&host)?;
        let small = host.rows == 1 || host.dtype == DType::F32;
        let f32 = if small {
            let mut v = vec![0f32; host.rows * host.cols];
            quant::dequantize(host.dtype, host.bytes.as_slice(), &mut v)
                .map_err(|e| shape_err("prepare_weight", e.to_string()))?;
            Some(v)
        } else {
            None
        };
        let quantized = f32.is_none() && host.role.multiplies();
        let two_pass = quantized && host.precision == ActPrecision::Exact;
        let rescore_top = quantized && host.precision == ActPrecision::ExactTop;
        let packed = if f32.is_none() && self.repack && host.role.multiplies() && !two_pass {
            match packed::Packed::pack(
                host.dtype,
                host.bytes.as_slice(),
                host.rows,
                host.cols,
                &self.pool,
            ) {
                Ok(p) => {
                    // Only the packed copy is read from now on, by products and a tied table's
                    // row lookups (`row_into`) alike; but a rescored head reads its candidates'
                    // rows from the file (`CpuWeight::row`: a packed row is spread over 16
                    // times the cache lines, 4 bytes of each, and rescoring reads 256 rows a
                    // token), so a tied one keeps its pages (an untied head gives them back and
                    // faults them in again as it reads them).
                    if host.role == WeightRole::Matrix || !rescore_top {
                        host.bytes.release_pages();
                    }
                    Some(p)
                }
                Err(packed::PackError::Unsupported) => None,
                Err(packed::PackError::OutOfMemory(n)) => {
                    return Err(BackendError::OutOfMemory {
                        what: "repacked weight",
                        detail: format!("{}: {n} bytes", host.name),
                    })
                }
            }
        } else {
            None
        };
        let pair_tiles = match self.float_tile_kind(host.dtype) {
            Some(kind) if f32.is_none() && self.repack && host.role.multiplies() => {
                let t = kernels::amx_float::PairTiles::pack(
                    kind,
                    host.bytes.as_slice(),
                    host.rows,
                    host.cols,
                    &self.pool,
                )
                .map_err(|n| BackendError::OutOfMemory {
                    what: "weight in AMX tiles",
                    detail: format!("{}: {n} bytes", host.name),
                })?;
                // Only the tiles are read from now on, by products and row lookups alike.
                host.bytes.release_pages();
                Some(t)
            }
            _ => None,
        };
        Ok(Weight {
            dtype: host.dtype,
            rows: host.rows,
            cols: host.cols,
            store: CpuWeight {
                raw: host.bytes.clone(),
                f32,
                packed,
                pair_tiles,
                two_pass,
                rescore_top,
            },
        })
    }

    /// The AMX BF16 tiles' element kind for matrices of `dtype`, where this backend multiplies
    /// them there: BF16 and F16 at the `amx` level (F32 keeps the f32 tiles).
    pub(crate) fn float_tile_kind(&self, dtype: DType) -> Option<u8> {
        use kernels::amx_float as a;
        let kind = match dtype {
            DType::BF16 => a::BF16,
            DType::F16 => a::F16,
            _ => return None,
        };
        (self.k.isa == Isa::Amx && a::available()).then_some(kind)
    }

    /// Bytes a product with `w` reads from memory (its layout, packed or as in the file).
    pub fn weight_bytes(w: &Weight<CpuWeight>) -> usize {
        match (&w.store.packed, &w.store.pair_tiles, &w.store.f32) {
            (Some(p), _, _) => p.bytes().len(),
            (None, Some(t), _) => t.bytes(),
            (None, None, Some(v)) => v.len() * 4,
            (None, None, None) => w.store.raw.len(),
        }
    }
}
