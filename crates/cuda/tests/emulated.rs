//! The CUDA kernels executed on the host by the emulator (`tests/emu`): the conformance suite and
//! the golden tiny models (transformers' logits) through `EmuBackend`, which drives the kernels
//! as `CudaBackend` does. This runs the kernels' actual source — indexing, reductions, shuffles,
//! online softmax, block tables — on machines without a GPU; only cuBLAS and the driver are not
//! exercised (scripts/gpu-check.sh does that on a GPU).

mod emu;

use suanli_backend::{conformance, KvDType};

#[test]
fn emulated_kernels_pass_the_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let b = emu::build(dir.path());
    let rep = conformance::run(&b);
    println!("{}", rep.table());
    let failures = rep.failures();
    assert!(rep.checks.len() > 80, "only {} checks", rep.checks.len());
    assert!(
        failures.is_empty(),
        "{} of {} checks failed:\n{}",
        failures.len(),
        rep.checks.len(),
        rep.table()
    );
}

#[test]
fn emulated_argmax_picks_the_first_largest() {
    let dir = tempfile::tempdir().unwrap();
    let b = emu::build(dir.path());
    let cols = 5000;
    let mut x: Vec<f32> = (0..3 * cols)
        .map(|i| ((i * 7919) % 1000) as f32 * 0.001 - 0.5)
        .collect();
    x[17] = 9.0;
    x[cols + 4321] = 3.0;
    x[cols + 4999] = 3.0;
    x[2 * cols + 1] = f32::NEG_INFINITY;
    x[2 * cols + 2500] = 8.0;
    assert_eq!(b.argmax(&x, 3, cols), vec![17, 4321, 2500]);
}

/// Logits at every position of the golden input against transformers', through the real model
/// code (suanli_models + the engine's session) on the emulated kernels.
#[test]
fn emulated_kernels_run_the_golden_tiny_models() {
    let dir = tempfile::tempdir().unwrap();
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/tiny");
    for arch in ["qwen2", "llama", "qwen3", "glm4"] {
        let d = std::path::Path::new(fixtures).join(arch);
        let g: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(d.join("golden.json")).unwrap()).unwrap();
        let ids: Vec<u32> = g["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let want: Vec<f32> = std::fs::read(d.join("logits.f32"))
            .unwrap()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        for (file, kv) in [
            (d.clone(), KvDType::F32),
            (d.join("model.gguf"), KvDType::F16),
        ] {
            let backend = emu::build(dir.path());
            let src = suanli_formats::open_model(&file).unwrap();
            let model = suanli_models::Model::load(&src, &backend).unwrap();
            // Chunks of 5: the prefill goes through the small-batch kernels and the paged cache.
            let mut s = suanli_engine::Session::with_kv(backend, model, 128, 5, kv).unwrap();
            let got = s.feed(&ids, 0).unwrap().to_vec();
            assert_eq!(got.len(), want.len());
            let scale = want.iter().map(|v| v.abs()).fold(0f32, f32::max);
            let err = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max)
                / scale;
            // The CPU is within 3e-6 of transformers; f16 KV rounding allows more (see check-backend).
            let tol = if kv == KvDType::F16 { 2e-3 } else { 1e-4 };
            println!(
                "{arch} {} ({kv:?} KV): max |Δ| / max |logit| = {err:.2e} (tolerance {tol:.0e})",
                file.display()
            );
            assert!(err <= tol, "{arch} {}: {err} > {tol}", file.display());
        }
    }
}
