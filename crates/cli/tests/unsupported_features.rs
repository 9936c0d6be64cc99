//! A file that asks for something suanli does not compute is refused by name, never run
//! without it: unknown hyperparameter keys, unknown rope scaling, tensors the model would not
//! use, config.json fields that change the computation. Each case is a working tiny fixture
//! with one thing added, run through the real binary.

use std::path::{Path, PathBuf};
use std::process::Command;
use suanli_formats::gguf::write::{gguf_bytes, TensorSpec};
use suanli_formats::gguf::{GgufFile, Value};

fn run(model: &Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_suanli"))
        .args([
            "run",
            "--model",
            model.to_str().unwrap(),
            "--max-tokens",
            "1",
        ])
        .args(["--raw", "hi"])
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn refused(model: &Path, needle: &str) {
    let (code, err) = run(model);
    assert_eq!(code, 1, "{model:?} should be refused; stderr: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
}

fn tiny(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/tiny")
        .join(name)
}

/// The tiny llama GGUF with metadata `extra` added (or replacing a key) and one more tensor.
fn gguf_with(dir: &Path, name: &str, extra: &[(&str, Value)], tensor: Option<&str>) -> PathBuf {
    gguf_from("llama", dir, name, extra, tensor)
}

/// `gguf_with` for the tiny GGUF of fixture `from`.
fn gguf_from(
    from: &str,
    dir: &Path,
    name: &str,
    extra: &[(&str, Value)],
    tensor: Option<&str>,
) -> PathBuf {
    let f = GgufFile::open(&tiny(from).join("model.gguf")).unwrap();
    let mut meta: Vec<(&str, Value)> = f
        .metadata
        .iter()
        .filter(|(k, _)| !extra.iter().any(|(e, _)| e == k))
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    meta.extend(extra.iter().cloned());
    let datas: Vec<_> = f.tensors.iter().map(|t| f.tensor_bytes(t)).collect();
    let mut tensors: Vec<TensorSpec> = f
        .tensors
        .iter()
        .zip(&datas)
        .map(|(t, d)| TensorSpec {
            name: &t.name,
            dims: t.dims.clone(),
            dtype: t.dtype,
            data: d.as_slice(),
        })
        .collect();
    let bias = vec![0u8; 64 * 4];
    if let Some(n) = tensor {
        tensors.push(TensorSpec {
            name: n,
            dims: vec![64],
            dtype: suanli_core::DType::F32,
            data: &bias,
        });
    }
    let p = dir.join(name);
    std::fs::write(&p, gguf_bytes(&meta, &tensors)).unwrap();
    p
}

#[test]
fn the_unmodified_fixtures_run() {
    for f in [
        "llama/model.gguf",
        "llama3_rope/model.gguf",
        "qwen2_yarn",
        "qwen2_moe/model.gguf",
        "qwen3_moe",
    ] {
        let (code, err) = run(&tiny(f));
        assert_eq!(code, 0, "{f}: {err}");
    }
}

#[test]
fn gguf_features_that_are_not_built_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cases: Vec<(PathBuf, &str)> = vec![
        (
            gguf_with(
                d,
                "softcap.gguf",
                &[("llama.attn_logit_softcapping", Value::F32(50.0))],
                None,
            ),
            "llama.attn_logit_softcapping",
        ),
        (
            gguf_with(
                d,
                "experts.gguf",
                &[("llama.expert_count", Value::U32(8))],
                None,
            ),
            "llama.expert_count",
        ),
        (
            gguf_with(
                d,
                "longrope.gguf",
                &[("llama.rope.scaling.type", Value::String("longrope".into()))],
                None,
            ),
            "longrope",
        ),
        (
            gguf_with(
                d,
                "yarn-no-ctx.gguf",
                &[
                    ("llama.rope.scaling.type", Value::String("yarn".into())),
                    ("llama.rope.scaling.factor", Value::F32(4.0)),
                ],
                None,
            ),
            "original_context_length",
        ),
        (
            gguf_with(d, "o-bias.gguf", &[], Some("blk.0.attn_output.bias")),
            "model.layers.0.self_attn.o_proj.bias",
        ),
        (
            gguf_with(d, "unknown.gguf", &[], Some("blk.0.attn_sinks.weight")),
            "blk.0.attn_sinks.weight",
        ),
        (
            // A shared expert's gate in a model without one.
            gguf_with(
                d,
                "shexp.gguf",
                &[],
                Some("blk.0.ffn_gate_inp_shexp.weight"),
            ),
            "model.layers.0.mlp.shared_expert_gate.weight",
        ),
        (
            // Sigmoid gating (DeepSeek-V3 style) is not built.
            gguf_from(
                "qwen3_moe",
                d,
                "sigmoid.gguf",
                &[("qwen3moe.expert_gating_func", Value::U32(2))],
                None,
            ),
            "qwen3moe.expert_gating_func",
        ),
        (
            gguf_from(
                "qwen3_moe",
                d,
                "group.gguf",
                &[("qwen3moe.expert_group_count", Value::U32(4))],
                None,
            ),
            "qwen3moe.expert_group_count",
        ),
    ];
    for (p, needle) in cases {
        refused(&p, needle);
    }
}

/// A copy of a tiny HF directory with config.json edited by `edit`.
fn hf_with(dir: &Path, name: &str, from: &str, edit: impl Fn(&mut serde_json::Value)) -> PathBuf {
    let out = dir.join(name);
    std::fs::create_dir(&out).unwrap();
    for e in std::fs::read_dir(tiny(from)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), out.join(e.file_name())).unwrap();
    }
    let cfg_path = out.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();
    edit(&mut cfg);
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    out
}

#[test]
fn config_json_fields_that_are_not_built_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cases: Vec<(PathBuf, &str)> = vec![
        (
            hf_with(d, "gelu", "llama", |c| c["hidden_act"] = "gelu".into()),
            "hidden_act",
        ),
        (
            hf_with(d, "longrope", "llama", |c| {
                c["rope_parameters"] =
                    serde_json::json!({"rope_type": "longrope", "rope_theta": 1e4})
            }),
            "longrope",
        ),
        (
            hf_with(d, "qwen-swa", "qwen2", |c| {
                c["use_sliding_window"] = true.into()
            }),
            "use_sliding_window",
        ),
        (
            hf_with(d, "mixed-layers", "llama", |c| {
                c["layer_types"] = serde_json::json!(["full_attention", "chunked_attention"])
            }),
            "chunked_attention",
        ),
        (
            hf_with(d, "dense-experts", "llama", |c| c["num_experts"] = 8.into()),
            "num_experts",
        ),
        (
            hf_with(d, "moe-counts", "qwen3_moe", |c| {
                c["num_experts"] = 4.into()
            }),
            "disagree",
        ),
        (
            hf_with(d, "softcap", "llama", |c| {
                c["final_logit_softcapping"] = 30.0.into()
            }),
            "final_logit_softcapping",
        ),
    ];
    for (p, needle) in cases {
        refused(&p, needle);
    }
}
