//! Element types as stored in model files (GGML type ids for GGUF, names for safetensors).

use std::fmt;

/// A tensor element type. Quantized types store elements in fixed-size blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    /// 4-bit non-linear (a fixed table of 16 levels), blocks of 32.
    IQ4NL,
    /// IQ4_NL levels with 6-bit sub-block scales, blocks of 256.
    IQ4XS,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DTypeError {
    #[error("unknown or unsupported GGML tensor type id {0}")]
    UnknownGgmlType(u32),
    #[error(
        "tensor type {ty} needs the row length ({cols}) to be a multiple of its block size {block}"
    )]
    RowNotBlockAligned {
        ty: DType,
        cols: usize,
        block: usize,
    },
    #[error("size of {elems} elements of type {ty} overflows")]
    SizeOverflow { ty: DType, elems: u64 },
}

/// Known GGML type ids that suanli does not (yet) run; named in errors so users know what they have.
pub fn ggml_type_name(id: u32) -> &'static str {
    match id {
        9 => "Q8_1",
        15 => "Q8_K",
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        21 => "IQ3_S",
        22 => "IQ2_S",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        _ => "unknown",
    }
}

impl DType {
    pub const ALL: [DType; 15] = [
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::Q4_0,
        DType::Q4_1,
        DType::Q5_0,
        DType::Q5_1,
        DType::Q8_0,
        DType::Q2K,
        DType::Q3K,
        DType::Q4K,
        DType::Q5K,
        DType::Q6K,
        DType::IQ4NL,
        DType::IQ4XS,
    ];

    pub fn from_ggml_id(id: u32) -> Result<DType, DTypeError> {
        Ok(match id {
            0 => DType::F32,
            1 => DType::F16,
            2 => DType::Q4_0,
            3 => DType::Q4_1,
            6 => DType::Q5_0,
            7 => DType::Q5_1,
            8 => DType::Q8_0,
            10 => DType::Q2K,
            11 => DType::Q3K,
            12 => DType::Q4K,
            13 => DType::Q5K,
            14 => DType::Q6K,
            20 => DType::IQ4NL,
            23 => DType::IQ4XS,
            30 => DType::BF16,
            other => return Err(DTypeError::UnknownGgmlType(other)),
        })
    }

    pub fn ggml_id(self) -> u32 {
        match self {
            DType::F32 => 0,
            DType::F16 => 1,
            DType::Q4_0 => 2,
            DType::Q4_1 => 3,
            DType::Q5_0 => 6,
            DType::Q5_1 => 7,
            DType::Q8_0 => 8,
            DType::Q2K => 10,
            DType::Q3K => 11,
            DType::Q4K => 12,
            DType::Q5K => 13,
            DType::Q6K => 14,
            DType::IQ4NL => 20,
            DType::IQ4XS => 23,
            DType::BF16 => 30,
        }
    }

    /// Elements per block (1 for plain floats).
    pub fn block_elems(self) -> usize {
        match self {
            DType::F32 | DType::F16 | DType::BF16 => 1,
            DType::Q4_0 | DType::Q4_1 | DType::Q5_0 | DType::Q5_1 | DType::Q8_0 | DType::IQ4NL => {
                32
            }
            DType::Q2K | DType::Q3K | DType::Q4K | DType::Q5K | DType::Q6K | DType::IQ4XS => 256,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::Q4_0 => 18,
            DType::Q4_1 => 20,
            DType::Q5_0 => 22,
            DType::Q5_1 => 24,
            DType::Q8_0 => 34,
            DType::Q2K => 84,
            DType::Q3K => 110,
            DType::Q4K => 144,
            DType::Q5K => 176,
            DType::Q6K => 210,
            DType::IQ4NL => 18,
            DType::IQ4XS => 136,
        }
    }

    pub fn is_quantized(self) -> bool {
        self.block_elems() > 1
    }

    /// Bytes taken by `elems` elements, with checked arithmetic. `elems` must be a multiple of the
    /// block size (rows of quantized tensors always are).
    pub fn bytes_for(self, elems: u64) -> Result<u64, DTypeError> {
        let be = self.block_elems() as u64;
        if !elems.is_multiple_of(be) {
            return Err(DTypeError::RowNotBlockAligned {
                ty: self,
                cols: elems as usize,
                block: be as usize,
            });
        }
        (elems / be)
            .checked_mul(self.block_bytes() as u64)
            .ok_or(DTypeError::SizeOverflow { ty: self, elems })
    }

    /// Bytes in one row of `cols` elements.
    pub fn row_bytes(self, cols: usize) -> Result<usize, DTypeError> {
        let be = self.block_elems();
        if !cols.is_multiple_of(be) {
            return Err(DTypeError::RowNotBlockAligned {
                ty: self,
                cols,
                block: be,
            });
        }
        (cols / be)
            .checked_mul(self.block_bytes())
            .ok_or(DTypeError::SizeOverflow {
                ty: self,
                elems: cols as u64,
            })
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::Q4_0 => "Q4_0",
            DType::Q4_1 => "Q4_1",
            DType::Q5_0 => "Q5_0",
            DType::Q5_1 => "Q5_1",
            DType::Q8_0 => "Q8_0",
            DType::Q2K => "Q2_K",
            DType::Q3K => "Q3_K",
            DType::Q4K => "Q4_K",
            DType::Q5K => "Q5_K",
            DType::Q6K => "Q6_K",
            DType::IQ4NL => "IQ4_NL",
            DType::IQ4XS => "IQ4_XS",
        }
    }

    pub fn from_name(name: &str) -> Option<DType> {
        DType::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(name))
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ggml_ids_round_trip() {
        for t in DType::ALL {
            assert_eq!(DType::from_ggml_id(t.ggml_id()).unwrap(), t);
            assert_eq!(DType::from_name(t.name()), Some(t));
        }
        assert!(DType::from_ggml_id(u32::MAX).is_err());
    }

    #[test]
    fn sizes_are_checked() {
        assert_eq!(DType::Q4K.bytes_for(512).unwrap(), 288);
        assert!(DType::Q4K.bytes_for(100).is_err());
        assert!(DType::F32.bytes_for(u64::MAX / 2).is_err());
    }
}
