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

/// `suanli bench --random smollm2-135m:q8_0 --json --threads 2` with `args`, which must
/// succeed: its JSON and its stderr.
fn bench_json(args: &[&str]) -> (serde_json::Value, String) {
    let out = suanli()
        .args([
            "bench",
            "--random",
            "smollm2-135m:q8_0",
            "--json",
            "--threads",
            "2",
        ])
        .args(args)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}");
    (serde_json::from_slice(&out.stdout).unwrap(), err)
}

#[test]
fn random_models_of_real_shapes_run() {
    let (v, _) = bench_json(&[
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
    ]);
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

/// `bench --depth 0,40` measures both depths in each repetition: a row per depth, each later
/// depth's share of the first's speed, and the first depth's figures where a single depth's
/// would be (what `bench/compare-llama-tools.sh` reads).
#[test]
fn bench_measures_a_list_of_depths_in_turn() {
    let (v, err) = bench_json(&[
        "--depth",
        "0,40",
        "--prompt-tokens",
        "8",
        "--gen-tokens",
        "2",
        "--repetitions",
        "2",
    ]);
    assert_eq!(err.matches("depth 40:").count(), 2, "{err}");
    let d = v["depths"].as_array().unwrap();
    assert_eq!(d.len(), 2);
    assert_eq!(
        (d[0]["depth"].as_u64(), d[1]["depth"].as_u64()),
        (Some(0), Some(40))
    );
    assert_eq!(v["depth"], 0);
    assert_eq!(v["prefill_tok_s"], d[0]["prefill"]["median"]);
    assert_eq!(v["decode_tok_s"], d[0]["decode"]["median"]);
    assert_eq!(d[0]["prefill_vs_first"], 1.0);
    for what in ["prefill_vs_first", "decode_vs_first"] {
        let r = d[1][what].as_f64().unwrap();
        assert!(r > 0.0 && r.is_finite(), "{what} {r}");
    }
    // The matrix products on their own, timed inside the first depth's prefills: a rate, and
    // a share of the prefill's time that the rest (attention, norms) keeps below 1.
    let rate = v["prefill_products_macs_s"].as_f64().unwrap();
    let share = v["prefill_products_time_share"].as_f64().unwrap();
    assert!(rate > 1e6 && rate.is_finite(), "{rate}");
    assert!(share > 0.0 && share < 1.0, "{share}");
    // One depth: no list in the output.
    let (v, _) = bench_json(&[
        "--depth",
        "16",
        "--prompt-tokens",
        "4",
        "--gen-tokens",
        "0",
        "--repetitions",
        "1",
    ]);
    assert!(v["depths"].is_null() && v["depth"] == 16, "{v}");
}
