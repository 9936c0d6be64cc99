//! Any bytes as a safetensors file: header length, JSON header, dtypes, shapes and offsets are
//! all checked against the bytes present. Errors are fine; panics are bugs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;
use suanli_formats::hf::parse_safetensors;
use suanli_formats::Bytes;

fuzz_target!(|data: &[u8]| {
    let _ = parse_safetensors(Path::new("fuzz.safetensors"), &Bytes::from_vec(data.to_vec()));
});
