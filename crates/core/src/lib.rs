//! Core data types of suanli: element types, GGML quantization block formats and their
//! scalar dequantization, which is the oracle every faster kernel is tested against.
#![forbid(unsafe_code)]

pub mod dtype;
pub mod quant;
pub mod scan;

pub use dtype::{DType, DTypeError};
