//! Malformed model files give a clear error naming the file and the problem, through the real
//! binary: non-zero exit, a message on stderr, never a panic.

mod common;

use std::path::{Path, PathBuf};
use suanli_core::DType;
use suanli_formats::gguf::write::{gguf_bytes, TensorSpec};
use suanli_formats::gguf::Value;

/// (exit code, stderr) of `suanli ARGS…`.
fn suanli(args: &[&str]) -> (i32, String) {
    let (code, _, err) = common::suanli(args);
    (code, err)
}

/// Both `inspect` and `run` must refuse the file with a message containing `needle`.
fn refused(path: &Path, needle: &str) {
    let p = path.to_str().unwrap();
    for args in [
        vec!["inspect", p],
        vec!["run", "--model", p, "--max-tokens", "1", "hi"],
    ] {
        let (code, err) = suanli(&args);
        assert_eq!(code, 1, "{args:?} should fail cleanly; stderr: {err}");
        assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
        assert!(
            err.contains(p),
            "{args:?}: the message should name the file: {err}"
        );
        assert!(
            err.to_lowercase().contains(&needle.to_lowercase()),
            "{args:?}: expected {needle:?} in: {err}"
        );
    }
}

fn tiny_gguf() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny/llama/model.gguf")
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn llama_meta(hidden: u32) -> Vec<(&'static str, Value)> {
    vec![
        ("general.architecture", Value::String("llama".into())),
        ("llama.embedding_length", Value::U32(hidden)),
        ("llama.feed_forward_length", Value::U32(64)),
        ("llama.block_count", Value::U32(1)),
        ("llama.attention.head_count", Value::U32(2)),
        ("llama.context_length", Value::U32(64)),
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        (
            "tokenizer.ggml.tokens",
            Value::Array(vec![Value::String("a".into()), Value::String("b".into())]),
        ),
        ("tokenizer.ggml.merges", Value::Array(vec![])),
    ]
}

#[test]
fn malformed_gguf_files_are_refused_with_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read(tiny_gguf()).unwrap();

    refused(
        &write(dir.path(), "truncated.gguf", &good[..good.len() / 3]),
        "truncated",
    );
    refused(
        &write(dir.path(), "header-only.gguf", &good[..40]),
        "impossible",
    );
    refused(
        &write(dir.path(), "not-gguf.gguf", b"PK\x03\x04 this is a zip"),
        "not a GGUF",
    );

    let mut huge = good.clone();
    huge[8..16].copy_from_slice(&u64::MAX.to_le_bytes()); // tensor count
    refused(&write(dir.path(), "huge-count.gguf", &huge), "tensor count");

    // A token embedding that contradicts embedding_length.
    let emb = vec![0u8; 2 * 32 * 4];
    let bytes = gguf_bytes(
        &llama_meta(64),
        &[TensorSpec {
            name: "token_embd.weight",
            dims: vec![32, 2],
            dtype: DType::F32,
            data: &emb,
        }],
    );
    refused(
        &write(dir.path(), "bad-shape.gguf", &bytes),
        "does not match hidden size",
    );

    // Hyperparameters out of range.
    let emb = vec![0u8; 2 * 64 * 4];
    let mut meta = llama_meta(64);
    meta[3] = ("llama.block_count", Value::U32(1_000_000));
    let bytes = gguf_bytes(
        &meta,
        &[TensorSpec {
            name: "token_embd.weight",
            dims: vec![64, 2],
            dtype: DType::F32,
            data: &emb,
        }],
    );
    let p = write(dir.path(), "many-layers.gguf", &bytes);
    let (code, err) = suanli(&["run", "--model", p.to_str().unwrap(), "hi"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("num_hidden_layers") && err.contains(p.to_str().unwrap()),
        "{err}"
    );

    // A missing layer tensor.
    let meta = llama_meta(64);
    let bytes = gguf_bytes(
        &meta,
        &[TensorSpec {
            name: "token_embd.weight",
            dims: vec![64, 2],
            dtype: DType::F32,
            data: &emb,
        }],
    );
    let p = write(dir.path(), "missing.gguf", &bytes);
    let (code, err) = suanli(&["run", "--model", p.to_str().unwrap(), "hi"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("missing") && !err.contains("panicked"),
        "{err}"
    );
}

#[test]
fn broken_hf_directories_and_missing_paths_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), "{ not json").unwrap();
    let (code, err) = suanli(&["inspect", dir.path().to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains("config.json") && err.contains("invalid JSON"),
        "{err}"
    );

    let (code, err) = suanli(&["run", "--model", "/no/such/model.gguf", "hi"]);
    assert_eq!(code, 1);
    assert!(err.contains("/no/such/model.gguf"), "{err}");
}
