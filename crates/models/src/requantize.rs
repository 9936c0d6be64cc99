//! Matrices re-quantized at load into a smaller format: a draft model's copy. A draft's
//! products only propose tokens — the model verifying them computes every output from its own
//! weights — so the bytes a drafted token reads matter more than the precision they carry
//! (Qwen2.5-Coder-0.5B at Q4_0 reads 278 MB per token instead of 392 and proposes the
//! 1.5B's next token about as often: 76.0 % against 76.8 % of the 1,928 tokens of the 1.5B's
//! answers to `bench/spec-chat.jsonl`).

use suanli_core::quant::q4::{quantize_q4_0, Q4_0_BLOCK_BYTES};
use suanli_core::quant::{dequantize, SizeMismatch};
use suanli_core::DType;

/// A smaller format for a model's matrices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Requantize {
    /// ggml's Q4_0: 32 weights in 18 bytes (4.5 bits each), one f16 scale per block.
    Q4_0,
}

/// What re-quantizing did: how many matrices were converted, and the bytes of every matrix
/// (converted or not) before and after.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Requantized {
    pub to: Option<Requantize>,
    pub converted: usize,
    pub bytes_before: usize,
    pub bytes_after: usize,
}

/// Rows converted at a time by one thread (its f32 buffer: 16 rows × the columns).
const ROWS_AT_ONCE: usize = 16;

impl Requantize {
    pub fn dtype(self) -> DType {
        match self {
            Requantize::Q4_0 => DType::Q4_0,
        }
    }

    /// Whether a matrix of `dtype` with rows of `cols` values is converted: its format spends
    /// more bits per weight, and its rows are whole blocks of the new one.
    pub fn converts(self, dtype: DType, cols: usize) -> bool {
        let to = self.dtype();
        let wider = dtype.block_bytes() * to.block_elems() > to.block_bytes() * dtype.block_elems();
        wider && cols.is_multiple_of(to.block_elems())
    }

    /// `rows` rows of `cols` values stored as `dtype` in `src`, in the new format; the rows
    /// are split over the machine's threads, a few at a time (whole f32 copies of a large
    /// matrix would spend most of the time faulting in fresh pages).
    pub fn convert(
        self,
        dtype: DType,
        src: &[u8],
        rows: usize,
        cols: usize,
    ) -> Result<Vec<u8>, SizeMismatch> {
        let Requantize::Q4_0 = self;
        let in_row = dtype.row_bytes(cols).map_err(|_| SizeMismatch {
            ty: dtype,
            bytes: src.len(),
            elems: rows * cols,
            need: usize::MAX,
        })?;
        if src.len() != rows * in_row {
            return Err(SizeMismatch {
                ty: dtype,
                bytes: src.len(),
                elems: rows * cols,
                need: rows * in_row,
            });
        }
        let out_row = cols / 32 * Q4_0_BLOCK_BYTES;
        let mut out = vec![0u8; rows * out_row];
        if out.is_empty() {
            return Ok(out);
        }
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(16));
        let per_thread = rows.div_ceil(threads).max(1);
        std::thread::scope(|s| {
            let parts = src
                .chunks(per_thread * in_row)
                .zip(out.chunks_mut(per_thread * out_row));
            let jobs: Vec<_> = parts
                .map(|(src, out)| {
                    s.spawn(move || -> Result<(), SizeMismatch> {
                        let mut f = vec![0f32; ROWS_AT_ONCE * cols];
                        let src = src.chunks(ROWS_AT_ONCE * in_row);
                        for (src, out) in src.zip(out.chunks_mut(ROWS_AT_ONCE * out_row)) {
                            let f = &mut f[..src.len() / in_row * cols];
                            dequantize(dtype, src, f)?;
                            quantize_q4_0(f, out);
                        }
                        Ok(())
                    })
                })
                .collect();
            jobs.into_iter()
                .try_for_each(|j| j.join().expect("re-quantizing thread panicked"))
        })?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_wider_formats_with_whole_blocks_are_converted() {
        let q = Requantize::Q4_0;
        for (dtype, cols, want) in [
            (DType::Q8_0, 64, true),
            (DType::Q5_0, 896, true),
            (DType::Q6K, 256, true),
            (DType::Q4_1, 64, true),
            (DType::BF16, 64, true),
            (DType::F32, 32, true),
            (DType::F16, 48, false),
            (DType::Q4_0, 64, false),
            (DType::Q4K, 256, false),
            (DType::IQ4XS, 256, false),
            (DType::IQ4NL, 64, false),
        ] {
            assert_eq!(q.converts(dtype, cols), want, "{dtype} with {cols} columns");
        }
    }

    /// Split over threads and a few rows at a time, the bytes are those of one pass over the
    /// whole matrix.
    #[test]
    fn converting_in_parts_matches_one_pass() {
        let (rows, cols) = (37, 96);
        let x: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 7919 % 1013) as f32 - 506.0) * 0.013)
            .collect();
        let src: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
        let got = Requantize::Q4_0
            .convert(DType::F32, &src, rows, cols)
            .unwrap();
        let mut want = vec![0u8; rows * cols / 32 * Q4_0_BLOCK_BYTES];
        quantize_q4_0(&x, &mut want);
        assert_eq!(got, want);
        assert!(Requantize::Q4_0
            .convert(DType::F32, &src, rows + 1, cols)
            .is_err());
        assert!(Requantize::Q4_0
            .convert(DType::F32, &[], 0, cols)
            .unwrap()
            .is_empty());
    }
}
