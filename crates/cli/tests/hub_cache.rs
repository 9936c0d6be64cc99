//! `hf:` references reuse the standard Hugging Face cache: a model already there loads with no
//! network at all (this machine has none).

use std::process::Command;

#[test]
fn hf_reference_loads_from_the_local_hub_cache() {
    let home = tempfile::tempdir().unwrap();
    let snap = home
        .path()
        .join("hub/models--tiny-org--tiny-qwen2/snapshots/0123abcd");
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(home.path().join("hub/models--tiny-org--tiny-qwen2/refs")).unwrap();
    std::fs::write(
        home.path()
            .join("hub/models--tiny-org--tiny-qwen2/refs/main"),
        "0123abcd",
    )
    .unwrap();
    let src = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/tiny/qwen2");
    for f in [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
        "model.safetensors",
        "chat_template.jinja",
    ] {
        std::fs::copy(src.join(f), snap.join(f)).unwrap();
    }
    let run = |model: &str| {
        Command::new(env!("CARGO_BIN_EXE_suanli"))
            .args([
                "run",
                "--model",
                model,
                "--raw",
                "--temperature",
                "0",
                "--max-tokens",
                "4",
                "--json",
                "Hello",
            ])
            .env("HF_HOME", home.path())
            .env("RUST_BACKTRACE", "0")
            .output()
            .unwrap()
    };
    let out = run("hf:tiny-org/tiny-qwen2");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["completion_tokens"], 4);

    let out = run("hf:tiny-org/not-cached");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("tiny-org/not-cached") && err.contains("local cache"),
        "{err}"
    );
}
