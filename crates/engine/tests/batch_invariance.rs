//! The batch engine on a real catalog model: answers given to many concurrent requests equal
//! the answers given one at a time — greedy and seeded sampling alike — whatever joins or leaves
//! the batch meanwhile, and equal the single-sequence `Session`'s greedy answers.

mod common;
use common::*;
use suanli_cpu::CpuBackend;
use suanli_engine::batch::{BatchEngine, Event, Request};
use suanli_engine::scheduler::SchedConfig;
use suanli_engine::SamplingParams;
use suanli_formats::{catalog, open_model};
use suanli_models::Model;

fn engine(path: &std::path::Path, max_batch: usize) -> BatchEngine<CpuBackend> {
    let src = open_model(path).unwrap();
    let backend = CpuBackend::new(Some(2)).unwrap();
    let model = Model::load(&src, &backend).unwrap();
    let cfg = SchedConfig {
        max_batch,
        max_step_tokens: 48,
        max_queue: 64,
        block_size: 16,
        num_blocks: 128,
        max_ctx: 512,
    };
    BatchEngine::new(backend, model, cfg, KvDType::F16, vec![]).unwrap()
}

/// The SmolLM2 catalog model (pulled if needed) and its tokenizer.
fn smollm2() -> (std::path::PathBuf, suanli_tokenizer::Tokenizer) {
    let path = catalog::pull(catalog::find("smollm2-135m").unwrap()).unwrap();
    let tok = match open_model(&path).unwrap() {
        suanli_formats::ModelSource::Gguf { file, .. } => {
            suanli_tokenizer::Tokenizer::from_gguf(&file).unwrap()
        }
        _ => unreachable!(),
    };
    (path, tok)
}

/// `texts` encoded as requests: seeded sampling at temperature 0.7 (seed `seed`) where
/// `seeded(i)`, greedy elsewhere.
fn requests(
    tok: &suanli_tokenizer::Tokenizer,
    texts: &[&str],
    seed: u64,
    seeded: impl Fn(usize) -> bool,
) -> Vec<(Vec<u32>, SamplingParams)> {
    let mut s = SamplingParams::greedy();
    s.temperature = 0.7;
    s.seed = Some(seed);
    texts
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let params = if seeded(i) {
                s.clone()
            } else {
                SamplingParams::greedy()
            };
            (tok.encode(t, false).unwrap(), params)
        })
        .collect()
}

/// Each request's `n` tokens when it runs alone, without speculation.
fn answers_alone(
    path: &std::path::Path,
    reqs: &[(Vec<u32>, SamplingParams)],
    n: usize,
) -> Vec<Vec<u32>> {
    let mut plain = engine(path, 4);
    reqs.iter()
        .map(|r| run(&mut plain, std::slice::from_ref(r), &[0], n)[0].clone())
        .collect()
}

/// Submit `reqs` (request i joins before step `join[i]`) and run to the end.
fn run(
    e: &mut BatchEngine<CpuBackend>,
    reqs: &[(Vec<u32>, SamplingParams)],
    join: &[usize],
    n: usize,
) -> Vec<Vec<u32>> {
    let mut out = vec![Vec::new(); reqs.len()];
    let mut finished = 0;
    let mut step = 0;
    while finished < reqs.len() {
        for (i, (p, params)) in reqs.iter().enumerate() {
            if join[i] == step {
                e.submit(
                    i as u64,
                    Request {
                        prompt: p.clone(),
                        params: params.clone(),
                        max_tokens: n,
                        logprobs: None,
                        prompt_logprobs: None,
                        constraint: None,
                    },
                )
                .unwrap();
            }
        }
        for (id, ev) in e.step().unwrap() {
            match ev {
                Event::Token { id: t, .. } => out[id as usize].push(t),
                Event::PromptLogprobs(_) => {}
                Event::Failed(why) => panic!("{why}"),
                Event::Done {
                    completion_tokens, ..
                } => {
                    assert_eq!(completion_tokens, out[id as usize].len());
                    finished += 1;
                }
            }
        }
        step += 1;
        assert!(step < 10_000);
    }
    assert_eq!(e.active(), 0);
    assert_eq!(
        e.scheduler().blocks_used(),
        e.scheduler().blocks_cached_idle(),
        "KV blocks leaked"
    );
    out
}

#[test]
fn concurrent_answers_equal_answers_alone() {
    let (path, tok) = smollm2();
    let texts = [
        "The capital of France is",
        "def fibonacci(n):\n",
        "中国的首都是",
        "Once upon a time, there was a little",
        "La recette de la crêpe :",
        "1, 2, 3, 4, 5,",
    ];
    let mut seeded = SamplingParams::greedy();
    seeded.temperature = 0.8;
    seeded.top_p = 0.95;
    seeded.seed = Some(42);
    let reqs: Vec<(Vec<u32>, SamplingParams)> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let p = tok.encode(t, false).unwrap();
            // Every other request samples with a seed.
            (
                p,
                if i % 2 == 0 {
                    SamplingParams::greedy()
                } else {
                    seeded.clone()
                },
            )
        })
        .collect();
    let n = 20;
    let mut e = engine(&path, 8);
    let alone: Vec<Vec<u32>> = reqs
        .iter()
        .map(|r| run(&mut e, std::slice::from_ref(r), &[0], n)[0].clone())
        .collect();
    // All at once, then staggered (requests join while others decode).
    let together = run(&mut e, &reqs, &[0; 6], n);
    let staggered = run(&mut engine(&path, 3), &reqs, &[0, 0, 2, 5, 9, 14], n);
    for i in 0..reqs.len() {
        assert_eq!(
            together[i], alone[i],
            "request {i} ({:?}) in a batch of 6",
            texts[i]
        );
        assert_eq!(
            staggered[i], alone[i],
            "request {i} ({:?}) joining later",
            texts[i]
        );
    }
    // The single-sequence path agrees on the greedy ones.
    let (mut s, _) = load(
        &path,
        suanli_cpu::kernels::Isa::detect().unwrap(),
        512,
        64,
        KvDType::F16,
    );
    for i in (0..reqs.len()).step_by(2) {
        assert_eq!(
            greedy(&mut s, &reqs[i].0, n),
            alone[i],
            "request {i} via Session"
        );
    }
}

/// Prompt log-probabilities equal the log-probabilities the same tokens had when they were
/// generated (greedy, so after no penalties), computed 32 positions per chunk next to others.
#[test]
fn prompt_logprobs_equal_generation_logprobs() {
    let path = catalog::pull(catalog::find("smollm2-135m").unwrap()).unwrap();
    let mut e = engine(&path, 4);
    let prompt: Vec<u32> = vec![504, 3575, 282, 4649, 314]; // "The capital of France is"
    let gen =
        |e: &mut BatchEngine<CpuBackend>, id: u64, prompt: Vec<u32>, plp: Option<usize>, n| {
            e.submit(
                id,
                Request {
                    prompt,
                    params: SamplingParams::greedy(),
                    max_tokens: n,
                    logprobs: Some(2),
                    prompt_logprobs: plp,
                    constraint: None,
                },
            )
            .unwrap();
        };
    gen(&mut e, 1, prompt.clone(), None, 60);
    let (mut toks, mut lps) = (Vec::new(), Vec::new());
    while e.active() > 0 {
        for (_, ev) in e.step().unwrap() {
            if let Event::Token { id, logprobs } = ev {
                toks.push(id);
                lps.push(logprobs.unwrap());
            }
        }
    }
    assert_eq!(toks.len(), 60);
    // Score prompt + answer as a prompt, next to an unrelated request (shares the steps).
    let mut full = prompt.clone();
    full.extend(&toks);
    gen(&mut e, 2, full.clone(), Some(2), 1);
    gen(&mut e, 3, vec![1, 2, 3, 4, 5, 6, 7], None, 30);
    let mut scored = None;
    while e.active() > 0 {
        for (id, ev) in e.step().unwrap() {
            if let (2, Event::PromptLogprobs(v)) = (id, ev) {
                assert!(scored.is_none(), "sent once");
                scored = Some(v);
            }
        }
    }
    let scored = scored.expect("prompt log-probabilities");
    assert_eq!(scored.len(), full.len() - 1);
    // Where prompt rows and generated rows run the same kernels, the same numbers (bit for
    // bit, in fact). On AMX, prompt rows take the BF16 tile attention (2^-17 per operand) and
    // generated rows the f32 loops; differences of 1e-5 there move log-probabilities as any
    // rounding does once the activations are quantized to int8 (a 1e-6 change of the f32
    // attention's scale moved them by up to 0.10), so the bound is llama.cpp's own noise on
    // this model (its flash-attention run against its default: mean 0.065, at most 0.48;
    // measured here: at most 0.11).
    let amx = suanli_cpu::kernels::Isa::detect().unwrap() == suanli_cpu::kernels::Isa::Amx;
    let (each, mean) = if amx {
        let refs = read_json(&fixtures().join("llamacpp").join("smollm2-135m.json"));
        let lp = &refs["logprobs"];
        let d: Vec<f64> = floats(&lp["flash_attn"])
            .iter()
            .zip(floats(&lp["default"]))
            .map(|(a, b)| (a - b).abs())
            .collect();
        (
            d.iter().cloned().fold(0.0, f64::max) as f32,
            (d.iter().sum::<f64>() / d.len() as f64) as f32,
        )
    } else {
        (1e-4, 1e-4)
    };
    let mut total = 0.0;
    for (i, lp) in lps.iter().enumerate() {
        let s = &scored[prompt.len() - 1 + i];
        let d = (s.logprob - lp.logprob).abs();
        total += d;
        assert!(d < each, "position {i}: {} vs {}", s.logprob, lp.logprob);
        // (On AMX the top alternative may change places with a near-tie.)
        if !amx {
            assert_eq!(s.top[0].0, toks[i], "greedy token is the top alternative");
        }
    }
    assert!(
        total / lps.len() as f32 <= mean,
        "mean difference {}",
        total / lps.len() as f32
    );
    assert!(scored.iter().all(|s| s.logprob <= 0.0 && s.top.len() == 2));
}

/// Determinism tiers: the same greedy request gives bit-identical tokens and log-probabilities
/// whether its prompt is computed in one step or in chunks, taken from the prefix cache or not,
/// and however often it is repeated.
#[test]
fn chunking_and_prefix_cache_do_not_change_a_single_bit() {
    let (path, tok) = smollm2();
    let prompt = tok
        .encode(
            &"The quick brown fox jumps over the lazy dog. ".repeat(12),
            false,
        )
        .unwrap();
    assert!(prompt.len() > 100);
    let answer = |e: &mut BatchEngine<CpuBackend>, id: u64| {
        e.submit(
            id,
            Request {
                prompt: prompt.clone(),
                params: SamplingParams::greedy(),
                max_tokens: 24,
                logprobs: Some(3),
                prompt_logprobs: None,
                constraint: None,
            },
        )
        .unwrap();
        let (mut out, mut cached) = (Vec::new(), 0);
        while e.active() > 0 {
            for (_, ev) in e.step().unwrap() {
                match ev {
                    Event::Token { id, logprobs } => {
                        let lp = logprobs.unwrap();
                        out.push((
                            id,
                            lp.logprob.to_bits(),
                            lp.top
                                .iter()
                                .map(|t| (t.0, t.1.to_bits()))
                                .collect::<Vec<_>>(),
                        ));
                    }
                    Event::Done { cached_tokens, .. } => cached = cached_tokens,
                    Event::PromptLogprobs(_) => {}
                    Event::Failed(why) => panic!("{why}"),
                }
            }
        }
        (out, cached)
    };
    let mut chunked = engine(&path, 4); // 48 tokens per step
    let (first, c0) = answer(&mut chunked, 1);
    let (again, c1) = answer(&mut chunked, 2);
    assert_eq!(c0, 0);
    assert!(
        c1 >= 96,
        "the second run reads its prompt from the prefix cache ({c1})"
    );
    let src = open_model(&path).unwrap();
    let backend = CpuBackend::new(Some(2)).unwrap();
    let model = Model::load(&src, &backend).unwrap();
    let cfg = SchedConfig {
        max_batch: 4,
        max_step_tokens: 512,
        max_queue: 8,
        block_size: 16,
        num_blocks: 64,
        max_ctx: 512,
    };
    let mut whole = BatchEngine::new(backend, model, cfg, KvDType::F16, vec![]).unwrap();
    let (one_step, _) = answer(&mut whole, 1);
    assert_eq!(first, again, "prefix-cache hit vs miss");
    assert_eq!(first, one_step, "chunks of 48 vs one step");
    for i in 0..3 {
        assert_eq!(answer(&mut whole, 10 + i).0, first, "repetition {i}");
    }
}

/// A sequence whose logits stop being numbers (here: its prompt holds a token whose embedding
/// row is NaN) fails alone; the request batched with it gets the answer it gets alone.
#[test]
fn a_poisoned_sequence_fails_alone() {
    use suanli_formats::gguf::write::{gguf_bytes, TensorSpec};
    use suanli_formats::gguf::GgufFile;
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/tiny/llama/model.gguf");
    let f = GgufFile::open(&fixture).unwrap();
    let poison = 7usize;
    let tensors: Vec<(String, Vec<u64>, _, Vec<u8>)> = f
        .tensors
        .iter()
        .map(|t| {
            let mut data = f.tensor_bytes(t).as_slice().to_vec();
            if t.name == "token_embd.weight" {
                let row = t.dims[0] as usize * 4;
                for v in data[poison * row..(poison + 1) * row].chunks_exact_mut(4) {
                    v.copy_from_slice(&f32::NAN.to_le_bytes());
                }
            }
            (t.name.clone(), t.dims.clone(), t.dtype, data)
        })
        .collect();
    let meta: Vec<(&str, suanli_formats::gguf::Value)> = f
        .metadata
        .iter()
        .filter(|(k, _)| k.as_str() != "general.alignment")
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    let specs: Vec<TensorSpec<'_>> = tensors
        .iter()
        .map(|(n, d, t, b)| TensorSpec {
            name: n,
            dims: d.clone(),
            dtype: *t,
            data: b,
        })
        .collect();
    let path = std::env::temp_dir().join(format!("suanli-poisoned-{}.gguf", std::process::id()));
    std::fs::write(&path, gguf_bytes(&meta, &specs)).unwrap();
    let mut e = engine(&path, 4);
    let healthy = vec![1u32, 2, 3, 4, 5];
    let alone = run(
        &mut e,
        &[(healthy.clone(), SamplingParams::greedy())],
        &[0],
        8,
    );
    let req = |prompt: Vec<u32>| Request {
        prompt,
        params: SamplingParams::greedy(),
        max_tokens: 8,
        logprobs: None,
        prompt_logprobs: None,
        constraint: None,
    };
    e.submit(1, req(healthy)).unwrap();
    e.submit(2, req(vec![1, 2, poison as u32, 4])).unwrap();
    let (mut tokens, mut failed) = (Vec::new(), None);
    while e.active() > 0 {
        for (id, ev) in e.step().unwrap() {
            match (id, ev) {
                (1, Event::Token { id, .. }) => tokens.push(id),
                (2, Event::Failed(why)) => failed = Some(why),
                (1, Event::Done { .. }) => {}
                (id, ev) => panic!("unexpected {id}: {ev:?}"),
            }
        }
    }
    std::fs::remove_file(&path).ok();
    assert!(failed
        .expect("the poisoned sequence fails")
        .contains("non-finite"));
    assert_eq!(tokens, alone[0], "the healthy request is unaffected");
    assert_eq!(
        e.scheduler().blocks_used(),
        e.scheduler().blocks_cached_idle()
    );
}

/// A constraint at a dead end (it refuses every token, as a grammar past its limits would) fails
/// its own sequence, with the constraint named; the request batched with it is unaffected and
/// every block is freed.
#[test]
fn a_dead_end_constraint_fails_alone() {
    struct DeadEnd(usize);
    impl suanli_engine::TokenConstraint for DeadEnd {
        fn allows(&mut self, _: u32) -> bool {
            self.0 > 0
        }
        fn mask(&mut self, logits: &mut [f32]) -> Result<(), String> {
            logits.fill(f32::NAN);
            Ok(())
        }
        fn accept(&mut self, _: u32) -> Result<(), String> {
            self.0 = self.0.saturating_sub(1);
            Ok(())
        }
    }
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/tiny/llama/model.gguf");
    let mut e = engine(&fixture, 4);
    let healthy = vec![1u32, 2, 3, 4, 5];
    let alone = run(
        &mut e,
        &[(healthy.clone(), SamplingParams::greedy())],
        &[0],
        8,
    );
    let req =
        |prompt: Vec<u32>, constraint: Option<Box<dyn suanli_engine::TokenConstraint>>| Request {
            prompt,
            params: SamplingParams::greedy(),
            max_tokens: 8,
            logprobs: None,
            prompt_logprobs: None,
            constraint,
        };
    e.submit(1, req(healthy, None)).unwrap();
    // Allows its first token, then nothing.
    e.submit(2, req(vec![1, 2, 9, 4], Some(Box::new(DeadEnd(1)))))
        .unwrap();
    let (mut tokens, mut failed, mut constrained) = (Vec::new(), None, 0);
    while e.active() > 0 {
        for (id, ev) in e.step().unwrap() {
            match (id, ev) {
                (1, Event::Token { id, .. }) => tokens.push(id),
                (2, Event::Token { .. }) => constrained += 1,
                (2, Event::Failed(why)) => failed = Some(why),
                (1, Event::Done { .. }) => {}
                (id, ev) => panic!("unexpected {id}: {ev:?}"),
            }
        }
    }
    let why = failed.expect("the dead-end sequence fails");
    assert!(why.starts_with(suanli_engine::constraint::FAILED), "{why}");
    assert_eq!(constrained, 1);
    assert_eq!(tokens, alone[0], "the healthy request is unaffected");
    assert_eq!(
        e.scheduler().blocks_used(),
        e.scheduler().blocks_cached_idle()
    );
    assert_eq!(e.constraint_stats().tokens, 2);
}

/// The tiny Mistral model (a 7-position window on every layer, from gen_golden.py): three
/// sequences of 150 tokens run together in a cache of 12 blocks of 16 — 192 positions for 450 —
/// because blocks that fall out of the window are given back, and each greedy answer equals the
/// single-sequence `Session`'s, which keeps every block.
#[test]
fn windowed_model_frees_blocks_and_answers_as_alone() {
    let dir = fixtures().join("tiny/mistral_swa");
    let src = open_model(&dir).unwrap();
    let backend = CpuBackend::new(Some(2)).unwrap();
    let model = Model::load(&src, &backend).unwrap();
    assert_eq!(model.cfg.window_everywhere(), Some(7));
    let cfg = SchedConfig {
        max_batch: 4,
        max_step_tokens: 16,
        max_queue: 8,
        block_size: 16,
        num_blocks: 12,
        max_ctx: 256,
    };
    let mut e = BatchEngine::new(backend, model, cfg, KvDType::F32, vec![]).unwrap();
    let n = 110;
    let reqs: Vec<(Vec<u32>, SamplingParams)> = (0..3u32)
        .map(|i| {
            let p = (0..40).map(|j| (j * 37 + i * 101) % 490 + 3).collect();
            (p, SamplingParams::greedy())
        })
        .collect();
    let got = run(&mut e, &reqs, &[0, 0, 1], n);
    assert!(e.scheduler().window_freed() > 0);
    assert_eq!(e.scheduler().preemptions(), 0);
    for (i, (p, _)) in reqs.iter().enumerate() {
        let (mut s, _) = load(
            &dir,
            suanli_cpu::kernels::Isa::detect().unwrap(),
            256,
            16,
            KvDType::F32,
        );
        assert_eq!(got[i], greedy(&mut s, p, n), "request {i}");
    }
}

/// Speculative decoding inside continuous batching (n-gram drafts verified whatever their
/// length, requests joining while others decode, greedy and seeded): every answer equals the
/// one given alone without speculation, drafts are taken and refused, and no block leaks.
#[test]
fn speculative_batches_answer_as_plain_decoding() {
    let (path, tok) = smollm2();
    let texts = [
        "def add(a, b):\n    return a + b\n\n# The same function again:\ndef add(a, b):\n",
        "The capital of France is",
        "1, 2, 3, 4, 5, 6, 7, 8, 9,",
        "Roses are red, violets are blue. Roses are red,",
    ];
    let reqs = requests(&tok, &texts, 3, |i| i % 2 == 1);
    let n = 40;
    let alone = answers_alone(&path, &reqs, n);
    let spec = suanli_engine::spec::SpecConfig {
        adaptive: false,
        ngram_min: 1,
        ..suanli_engine::spec::SpecConfig::new(suanli_engine::spec::SpecMode::Ngram)
    };
    for join in [[0, 0, 0, 0], [0, 3, 7, 12]] {
        let mut e = engine(&path, 4);
        e.set_speculation(Some(spec.clone())).unwrap();
        let together = run(&mut e, &reqs, &join, n);
        for i in 0..reqs.len() {
            assert_eq!(
                together[i], alone[i],
                "request {i} ({:?}), joins {join:?}",
                texts[i]
            );
        }
        let st = e.spec_stats();
        assert!(st.accepted > 10 && st.drafted > st.accepted, "{st:?}");
    }
}

/// A draft model inside continuous batching (SmolLM2 drafting for itself, every proposal
/// verified): a request alone gets the model's drafts, requests together get n-gram copies;
/// every answer — greedy and seeded — equals the one given without speculation.
#[test]
fn draft_model_batches_answer_as_plain_decoding() {
    let (path, tok) = smollm2();
    let texts = [
        "The capital of France is",
        "def add(a, b):\n    return a + b\n\n# The same function again:\ndef add(a, b):\n",
        "Once upon a time",
    ];
    let reqs = requests(&tok, &texts, 5, |i| i == 1);
    let n = 32;
    let alone = answers_alone(&path, &reqs, n);
    let spec = suanli_engine::spec::SpecConfig {
        adaptive: false,
        ..suanli_engine::spec::SpecConfig::new(suanli_engine::spec::SpecMode::Draft)
    };
    let mut e = engine(&path, 4);
    assert!(
        e.set_speculation(Some(spec.clone())).is_err(),
        "no draft model yet"
    );
    let draft = Model::load(&open_model(&path).unwrap(), &e.backend).unwrap();
    e.set_draft_model(draft).unwrap();
    e.set_speculation(Some(spec)).unwrap();
    for (i, r) in reqs.iter().enumerate() {
        let got = run(&mut e, std::slice::from_ref(r), &[0], n)[0].clone();
        assert_eq!(got, alone[i], "request {i} alone ({:?})", texts[i]);
    }
    let st = e.spec_stats();
    assert!(
        st.accepted > 20 && st.drafted > st.accepted,
        "alone: {st:?}"
    );
    let together = run(&mut e, &reqs, &[0, 2, 5], n);
    assert_eq!(together, alone, "together");
    assert!(e.take_draft_error().is_none());
}
