//! `CudaBackend` with its kernels executed on the host by the emulator (`tests/emu`): the
//! conformance suite and the golden tiny models (transformers' logits). This runs the backend's
//! own code — argument lists, launch geometry, scratch, uploads — and the kernels' actual source —
//! indexing, reductions, shuffles, online softmax, block tables — without a GPU; only the driver
//! calls and cuBLAS are not exercised (scripts/gpu-check.sh does that on a GPU).

mod emu;

use suanli_backend::{conformance, Backend, KvDType};
use suanli_engine::sampler::argmax;

/// max |got − want| / max |want|: logits against a reference, relative to its largest.
fn rel_max_diff(got: &[f32], want: &[f32]) -> f32 {
    let scale = want.iter().map(|v| v.abs()).fold(0f32, f32::max);
    got.iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max)
        / scale
}

#[test]
fn emulated_kernels_pass_the_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let b = emu::backend(dir.path());
    let rep = conformance::run(&b);
    println!("{}", rep.table());
    let failures = rep.failures();
    // Device sampling is offered: greedy and top-k selections (and top-p's mass) were checked.
    let count = |op: &str| rep.checks.iter().filter(|c| c.op == op).count();
    assert_eq!(count("top_logits"), 4, "top_logits checks");
    assert_eq!(count("top_logits mass"), 2, "top_logits mass checks");
    assert!(rep.checks.len() > 80, "only {} checks", rep.checks.len());
    assert!(
        failures.is_empty(),
        "{} of {} checks failed:\n{}",
        failures.len(),
        rep.checks.len(),
        rep.table()
    );
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
            let backend = emu::backend(dir.path());
            let src = suanli_formats::open_model(&file).unwrap();
            let model = suanli_models::Model::load(&src, &backend).unwrap();
            // Chunks of 5: the prefill goes through the small-batch kernels and the paged cache.
            let mut s = suanli_engine::Session::with_kv(backend, model, 128, 5, kv).unwrap();
            let got = s.feed(&ids, 0).unwrap().to_vec();
            assert_eq!(got.len(), want.len());
            let err = rel_max_diff(&got, &want);
            // The CPU is within 3e-6 of transformers; f16 KV rounding allows more (see check-backend).
            let tol = if kv == KvDType::F16 { 2e-3 } else { 1e-4 };
            println!(
                "{arch} {} ({kv:?} KV): max |Δ| / max |logit| = {err:.2e} (tolerance {tol:.0e})",
                file.display()
            );
            assert!(err <= tol, "{arch} {}: {err} > {tol}", file.display());
            // Decode steps (one row each, replayed as graphs) against the CPU backend.
            let cpu = suanli_cpu::CpuBackend::new(Some(2)).unwrap();
            let cpu_model = suanli_models::Model::load(&src, &cpu).unwrap();
            let mut c = suanli_engine::Session::with_kv(cpu, cpu_model, 128, 5, kv).unwrap();
            c.feed(&ids, ids.len() - 1).unwrap();
            let vocab = g["vocab"].as_u64().unwrap() as usize;
            let mut next = argmax(&got[got.len() - vocab..]);
            for step in 0..6 {
                let a = s.feed(&[next], 0).unwrap().to_vec();
                let b = c.feed(&[next], 0).unwrap().to_vec();
                let e = rel_max_diff(&a, &b);
                assert!(e <= tol, "{arch}: decode step {step}: {e} > {tol}");
                assert_eq!(
                    argmax(&a),
                    argmax(&b),
                    "{arch}: decode step {step} picks another token"
                );
                next = argmax(&a);
            }
            let (graphs, plain) = s.backend.launch_counts();
            println!("  launches: {graphs} graph replays, {plain} plain kernel launches");
            assert!(
                graphs >= 4,
                "{arch}: repeated steps were not replayed as graphs ({graphs})"
            );
        }
    }
}

/// The batching engine on the emulated GPU backend — greedy tokens and top-k candidates selected
/// on the device, or greedy and temperature/min-p tokens drawn there — gives the tokens the CPU
/// backend gives (which samples from whole logits on the host), for several sequences decoding
/// together.
#[test]
fn emulated_batch_engine_matches_the_cpu() {
    use suanli_engine::batch::{BatchEngine, Event, Request};
    use suanli_engine::scheduler::SchedConfig;
    use suanli_engine::SamplingParams;
    let dir = tempfile::tempdir().unwrap();
    let path = std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/tiny/qwen2"
    ));
    fn run<B: Backend>(
        b: B,
        path: &std::path::Path,
        params: &dyn Fn(usize) -> SamplingParams,
    ) -> (Vec<Vec<u32>>, B) {
        let src = suanli_formats::open_model(path).unwrap();
        let model = suanli_models::Model::load(&src, &b).unwrap();
        let cfg = SchedConfig {
            max_batch: 10,
            max_step_tokens: 256,
            max_queue: 16,
            block_size: 16,
            num_blocks: 64,
            max_ctx: 96,
        };
        let mut e = BatchEngine::new(b, model, cfg, KvDType::F16, Vec::new()).unwrap();
        // Ten sequences: decode steps of ten rows take the GEMM path, and repeat (graph replay
        // with GEMMs recorded in it).
        let prompts: Vec<Vec<u32>> = (0..10u32)
            .map(|i| (0..3 + 2 * i).map(|j| (i * 31 + j * 7) % 200 + 1).collect())
            .collect();
        for (i, p) in prompts.iter().enumerate() {
            e.submit(
                i as u64,
                Request {
                    prompt: p.clone(),
                    params: params(i),
                    max_tokens: 8,
                    logprobs: None,
                    prompt_logprobs: None,
                    constraint: None,
                },
            )
            .unwrap();
        }
        let mut out = vec![Vec::new(); 10];
        while e.active() > 0 {
            for (id, ev) in e.step().unwrap() {
                match ev {
                    Event::Token { id: t, .. } => out[id as usize].push(t),
                    Event::Failed(m) => panic!("{m}"),
                    _ => {}
                }
            }
        }
        (out, e.into_parts().0)
    }
    // Half greedy, half seeded top-k: the device selects candidates (top_k_rows).
    let top_k = |i: usize| {
        if i.is_multiple_of(2) {
            SamplingParams::greedy()
        } else {
            SamplingParams {
                top_k: 20,
                seed: Some(i as u64),
                ..Default::default()
            }
        }
    };
    // Half greedy, half seeded draws from the whole distribution (OpenAI's defaults, some with
    // min-p): the device draws the tokens (sample_rows).
    let whole = |i: usize| {
        if i.is_multiple_of(2) {
            SamplingParams::greedy()
        } else {
            SamplingParams {
                temperature: 0.9,
                top_k: 0,
                top_p: 1.0,
                min_p: if i % 4 == 1 { 0.05 } else { 0.0 },
                seed: Some(i as u64),
                ..Default::default()
            }
        }
    };
    for (params, kernel) in [
        (&top_k as &dyn Fn(usize) -> SamplingParams, "top_k_rows"),
        (&whole, "sample_rows"),
    ] {
        let (cpu, _) = run(suanli_cpu::CpuBackend::new(Some(2)).unwrap(), path, params);
        let (b, ran) = emu::backend_counted(dir.path());
        let (gpu, b) = run(b, path, params);
        assert!(cpu.iter().all(|t| t.len() == 8));
        assert_eq!(gpu, cpu, "{kernel}");
        let ran = ran.lock().unwrap();
        assert!(
            ran.get(kernel).copied().unwrap_or(0) >= 7,
            "{kernel} ran {:?} times",
            ran.get(kernel)
        );
        let (graphs, _) = b.launch_counts();
        assert!(
            graphs >= 3,
            "decode steps were not replayed as graphs ({graphs})"
        );
    }
    // Half greedy, half top-p without top-k (p and p / 2): the device selects 256 candidates
    // and sums each row's mass (top_k_rows). This tiny model puts about 93 % of a row's mass
    // in its 256 largest logits, so at p = 0.9 the host draws from the candidates (the cut deep
    // in their tail), and at p = 0.99 the nucleus is wider and the step takes whole rows (the
    // head runs again: twice the row gathers). Either way the tokens are those of the host
    // sampler on the same device's whole rows — the top-p cut in a row's tail is sensitive to
    // the last bits of the logits, so the CPU's differ.
    let nucleus = |p: f32| {
        move |i: usize| {
            if i.is_multiple_of(2) {
                SamplingParams::greedy()
            } else {
                SamplingParams {
                    temperature: 0.8,
                    top_k: 0,
                    top_p: if i % 4 == 1 { p } else { p / 2.0 },
                    seed: Some(i as u64),
                    ..Default::default()
                }
            }
        }
    };
    // Greedy and top-k with repetition/presence/frequency penalties, which only lower logits:
    // the device selects k + (tokens penalized) candidates, the host penalizes and ranks them.
    let penalized = |i: usize| SamplingParams {
        temperature: if i.is_multiple_of(2) { 0.0 } else { 0.8 },
        top_k: 20,
        repeat_penalty: 1.3,
        presence_penalty: 0.5,
        frequency_penalty: 0.2,
        seed: Some(i as u64),
        ..Default::default()
    };
    let (narrow, wide) = (nucleus(0.9), nucleus(0.99));
    for (params, what, head_runs) in [
        (&narrow as &dyn Fn(usize) -> SamplingParams, "top-p 0.9", 1),
        (&wide, "top-p 0.99", 2),
        (&penalized, "penalties", 1),
    ] {
        let (b, ran) = emu::backend_counted(dir.path());
        let (gpu, _) = run(b, path, params);
        // The same draws from whole rows on the host: a zero bias changes no logit but rules
        // out the candidates.
        let host_params = |i: usize| SamplingParams {
            logit_bias: vec![(0, 0.0)],
            ..params(i)
        };
        let (b, _) = emu::backend_counted(dir.path());
        let (host, _) = run(b, path, &host_params);
        assert!(host.iter().all(|t| t.len() == 8));
        assert_eq!(gpu, host, "{what}");
        let ran = ran.lock().unwrap();
        let count = |k: &str| ran.get(k).copied().unwrap_or(0);
        assert_eq!(count("top_k_rows"), 8, "{what}: one selection a step");
        assert_eq!(
            count("gather_rows"),
            8 * head_runs,
            "{what}: the head ran {} times",
            count("gather_rows")
        );
    }
}

/// A decode step of one sequence is six kernels per layer — RMS norm + Q/K/V, rotary + cache
/// write, attention, output product added to the residual, RMS norm + gate/up + silu·mul, down
/// product added to the residual — and four around them (embedding, final norm, row gather,
/// head). Launches are what bounds a small model's decode on a GPU; this pins the count.
#[test]
fn emulated_decode_step_is_six_kernels_per_layer() {
    let dir = tempfile::tempdir().unwrap();
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/tiny/qwen2/model.gguf"
    );
    let (b, ran) = emu::backend_counted(dir.path());
    let src = suanli_formats::open_model(std::path::Path::new(path)).unwrap();
    let model = suanli_models::Model::load(&src, &b).unwrap();
    let layers = model.cfg.num_hidden_layers;
    let mut s = suanli_engine::Session::with_kv(b, model, 64, 8, KvDType::F16).unwrap();
    s.feed(&[5, 17, 3, 99], 0).unwrap();
    let before = ran.lock().unwrap().clone();
    s.feed(&[42], 0).unwrap();
    let after = ran.lock().unwrap().clone();
    let mut step: Vec<(String, usize)> = after
        .iter()
        .map(|(k, &n)| (k.clone(), n - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect();
    step.sort();
    let want: Vec<(String, usize)> = [
        ("attention_f16", layers),
        ("embed_f32", 1),
        ("gather_rows", 1),
        ("matvec3_t1_f32", layers),
        ("matvec_glu_t1_f32", layers),
        ("matvec_t1_f32", 2 * layers + 1),
        ("rms_norm", 1),
        ("rope_write_kv_f16", layers),
    ]
    .iter()
    .map(|&(k, n)| (k.to_string(), n))
    .collect();
    assert_eq!(step, want, "kernels of one decode step ({layers} layers)");
}

/// The real catalog models (quantized GGUF: SmolLM2-135M in Q4_1; Qwen2.5-Coder-0.5B in a
/// Q4_K/Q5_0/Q6_K/Q8_0 mix with Q/K/V biases) through the emulated GPU backend against the CPU
/// backend (which `crates/engine/tests/real_models.rs` holds to llama.cpp), teacher-forced: a
/// short prompt of real text as one chunk, then decode steps fed the CPU's greedy tokens —
/// the integer matrix-vector products of every type these files use, Qwen's biases and its
/// layers whose V is of another type than Q and K, GQA with 64-wide heads, graph replay.
/// Logits within `REAL_TOL` of the largest, and the same greedy token wherever the CPU's two
/// best are further apart than that. (The large-batch paths run in the golden tiny models
/// above; here they would take minutes in the emulator.)
#[test]
fn emulated_smollm2_matches_the_cpu() {
    real_model_matches_the_cpu("smollm2-135m", 2);
}

/// Qwen takes a minute a step here: its prompt covers the products; a test of its own so that
/// it runs beside the others.
#[test]
fn emulated_qwen_matches_the_cpu() {
    real_model_matches_the_cpu("qwen2.5-coder-0.5b", 0);
}

/// `steps` decode steps after the prompt.
fn real_model_matches_the_cpu(name: &str, steps: usize) {
    // The GPU quantizes activations per 32 values (q8_1) where the CPU's kernels use their own
    // blocking per ISA level; the CPU's AVX2, AVX-512 and VNNI levels differ among themselves by
    // up to 4.7e-2 of the largest logit on these models.
    const REAL_TOL: f32 = 8e-2;
    let dir = tempfile::tempdir().unwrap();
    {
        let e = suanli_formats::catalog::find(name).unwrap();
        let path = suanli_formats::catalog::pull(e).unwrap_or_else(|err| {
            panic!("model {name} is not in the cache and pulling it failed: {err}")
        });
        let src = suanli_formats::open_model(&path).unwrap();
        let suanli_formats::ModelSource::Gguf { file, .. } = &src else {
            panic!("{name}: not a GGUF file")
        };
        let tok = suanli_tokenizer::Tokenizer::from_gguf(file).unwrap();
        let ids = tok.encode("The capital of France is", false).unwrap();
        let t0 = std::time::Instant::now();
        let (gpu_b, ran) = emu::backend_counted(dir.path());
        let model = suanli_models::Model::load(&src, &gpu_b).unwrap();
        let mut g = suanli_engine::Session::with_kv(gpu_b, model, 64, 64, KvDType::F16).unwrap();
        let cpu = suanli_cpu::CpuBackend::new(Some(2)).unwrap();
        let model = suanli_models::Model::load(&src, &cpu).unwrap();
        let mut c = suanli_engine::Session::with_kv(cpu, model, 64, 64, KvDType::F16).unwrap();
        let mut feed = ids.clone();
        for step in 0..=steps {
            let a = g.feed(&feed, feed.len() - 1).unwrap().to_vec();
            let b = c.feed(&feed, feed.len() - 1).unwrap().to_vec();
            let err = rel_max_diff(&a, &b);
            let scale = b.iter().map(|v| v.abs()).fold(0f32, f32::max);
            let mut ranked: Vec<(usize, f32)> = b.iter().copied().enumerate().collect();
            ranked.sort_by(|x, y| y.1.total_cmp(&x.1));
            let best_gpu = argmax(&a) as usize;
            let gap = (ranked[0].1 - ranked[1].1) / scale;
            println!(
                "{name} step {step} ({} rows): max |Δ| / max |logit| = {err:.2e} (tolerance \
                 {REAL_TOL:.0e}); token {} on the CPU (gap {gap:.2e}), {best_gpu} here [{:.0?}]",
                feed.len(),
                ranked[0].0,
                t0.elapsed()
            );
            assert!(err <= REAL_TOL, "{name} step {step}: {err} > {REAL_TOL}");
            if gap > REAL_TOL {
                assert_eq!(best_gpu, ranked[0].0, "{name} step {step}: another token");
            }
            feed = vec![ranked[0].0 as u32];
        }
        // Every layer's norms went into its products, mixed-type Q/K/V included: the only
        // rms_norm launches are the final norm's, one a step.
        let norms = ran.lock().unwrap().get("rms_norm").copied().unwrap_or(0);
        assert_eq!(norms, steps + 1, "{name}: rms_norm launches");
    }
}
