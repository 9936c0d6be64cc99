//! Model file formats. Everything read from a file is treated as hostile: every count, length,
//! offset and size is checked against the bytes present before anything is allocated.
//!
//! Unsafe code is limited to memory-mapping files (`bytes.rs`).

pub mod bytes;
pub mod catalog;
pub mod gguf;
pub mod hf;
pub mod hub;
pub mod names;
pub mod source;

pub use bytes::Bytes;
pub use source::{open_model, ModelSource, TensorInfo};
