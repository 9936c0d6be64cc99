//! `suanli check-backend` (the command scripts/gpu-check.sh runs on a GPU) passes on the CPU:
//! conformance suite plus the golden tiny models through the binary, and `--device cuda` in a
//! build without CUDA fails with a clear message.

use std::process::Command;

fn suanli() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_suanli"));
    c.current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."));
    c
}

#[test]
fn check_backend_passes_on_the_cpu() {
    let out = suanli()
        .args(["check-backend", "--device", "cpu", "--threads", "2"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every fixture model, in HF layout and as GGUF.
    let fixtures = std::fs::read_dir(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/tiny"
    ))
    .unwrap()
    .filter(|e| e.as_ref().unwrap().path().join("golden.json").exists())
    .count();
    assert!(fixtures >= 7);
    assert_eq!(stdout.matches("golden ").count(), 2 * fixtures, "{stdout}");
    assert!(stdout.contains(", 0 failed"), "{stdout}");
}

#[test]
fn unknown_or_missing_devices_are_clear_errors() {
    let out = suanli()
        .args(["check-backend", "--device", "tpu"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a device (cpu, cuda, cuda:N)"));
    let out = suanli()
        .args(["bench", "--device", "cuda:1", "--random", "smollm2-135m"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    // Without the feature: built without CUDA; with it on a machine without a GPU: no libraries.
    assert!(
        err.contains("without CUDA support")
            || err.contains("CUDA libraries could not be loaded")
            || err.contains("does not exist"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn random_models_of_real_shapes_run() {
    let out = suanli()
        .args([
            "bench",
            "--random",
            "smollm2-135m:q8_0",
            // Fewer than the 8 warm-up tokens: the context still holds them.
            "--prompt-tokens",
            "4",
            "--gen-tokens",
            "4",
            "--repetitions",
            "1",
            "--parallel",
            "3",
            "--temperature",
            "1",
            "--json",
            "--threads",
            "2",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["decode_tok_s"].as_f64().unwrap() > 0.0);
    assert!(v["parallel_decode_tok_s"].as_f64().unwrap() > 0.0);
    assert_eq!(v["parallel_temperature"], 1.0);
    assert_eq!(v["model"], "random smollm2-135m:q8_0");
    let out = suanli()
        .args(["bench", "--random", "qwen2.5-9b"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a known shape"));
}
