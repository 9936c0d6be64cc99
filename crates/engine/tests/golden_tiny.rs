//! Tiny random models of every architecture, in Hugging Face layout, against transformers
//! (fixtures from scripts/gen_golden.py): logits at every position, greedy continuations,
//! perplexity, tokenization and chat-template rendering — with every CPU ISA level.

mod common;
use common::*;
use suanli_cpu::kernels::Isa;
use suanli_tokenizer::ChatMessage;

/// The architectures, then position-handling variants: Llama 3.1 frequency scaling (in GGUF as
/// `rope_freqs.weight`), YaRN with its attention factor, and Mistral's sliding window (7
/// positions, shorter than the 24-token test sequence and the 32-token perplexity chunks); then
/// Gemma 3 (GeGLU, four norms, Q/K norms, scaled embeddings, windowed local layers with their own
/// rotary base and a linearly scaled global one); then the mixtures of experts: Qwen2-MoE (top 3
/// of 8 experts as softmax shares, a gated shared expert, a dense middle layer) and Qwen3-MoE
/// (top 2 of 8, renormalised), stacked 3-D expert tensors in GGUF.
const ARCHS: [&str; 10] = [
    "qwen2",
    "llama",
    "qwen3",
    "glm4",
    "llama3_rope",
    "qwen2_yarn",
    "mistral_swa",
    "gemma3",
    "qwen2_moe",
    "qwen3_moe",
];
/// The ISA levels worth running here: `amx` differs from `avx512` only in products of 16 tokens
/// or more over packed quantized weights, which these F32 models (and the quantized-experts
/// test's 5-token chunks) never reach.
fn levels() -> Vec<Isa> {
    Isa::available()
        .into_iter()
        .filter(|&i| i != Isa::Amx)
        .collect()
}

/// Logits are O(10); f32 summation order differs from PyTorch (observed max 3e-5).
const LOGIT_ABS_TOL: f32 = 2e-4;
/// At the `amx` level prompt rows of BF16/F16 models take the BF16 tiles (products and
/// attention), whose operands keep 16 significant bits (2^-17, 128× f32's rounding): measured
/// up to 4.5e-4 (gemma3 F16) against the generic level. Operands cut to bf16's 8
/// bits alone would move logits ~256× more than that.
const AMX_LOGIT_ABS_TOL: f32 = 1e-3;

/// `file`: the HF directory itself, or `model.gguf` inside it (converted by scripts/gen_tiny_gguf.py).
fn check_arch(arch: &str, file: &str, isa: Isa) {
    let dir = fixtures().join("tiny").join(arch);
    let g = read_json(&dir.join("golden.json"));
    let vocab = g["vocab"].as_u64().unwrap() as usize;
    // A small prefill chunk so that chunked prefill over the paged cache is exercised.
    // F32 KV cache: transformers keeps K/V in f32.
    let (mut s, tok) = load(&dir.join(file), isa, 128, 5, KvDType::F32);
    let arch = format!("{arch}/{}", if file.is_empty() { "hf" } else { file });
    let input = ids(&g["ids"]);
    let want: Vec<f32> = std::fs::read(dir.join("logits.f32"))
        .unwrap()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    s.reset();
    let got = s.feed(&input, 0).unwrap().to_vec();
    assert_eq!(got.len(), input.len() * vocab);
    let mut worst = 0f32;
    for (i, (a, b)) in got.iter().zip(&want).enumerate() {
        let d = (a - b).abs();
        worst = worst.max(d);
        assert!(
            d <= LOGIT_ABS_TOL,
            "{arch}/{isa:?}: logit {} of position {} is {a}, transformers says {b}",
            i % vocab,
            i / vocab
        );
    }
    eprintln!("{arch}/{isa:?}: max |logit difference| {worst:.2e}");

    let gp = ids(&g["greedy"]["prompt"]);
    let gt = ids(&g["greedy"]["tokens"]);
    assert_eq!(
        greedy(&mut s, &gp, gt.len()),
        gt,
        "{arch}/{isa:?}: greedy continuation differs"
    );

    let p = &g["perplexity"];
    let ppl = perplexity(
        &mut s,
        &ids(&p["ids"]),
        p["ctx"].as_u64().unwrap() as usize,
        None,
    );
    let want_ppl = p["value"].as_f64().unwrap();
    assert!(
        (ppl / want_ppl - 1.0).abs() < 0.005,
        "{arch}/{isa:?}: perplexity {ppl} vs transformers {want_ppl}"
    );

    for t in g["tokenize"].as_array().unwrap() {
        assert_eq!(
            tok.encode(t["text"].as_str().unwrap(), false).unwrap(),
            ids(&t["ids"]),
            "{arch}: tokenization of {}",
            t["text"]
        );
    }
    let tmpl = tok
        .template()
        .expect("fixture has a chat template")
        .unwrap();
    for c in g["chat"].as_array().unwrap() {
        let msgs: Vec<ChatMessage> = c["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| ChatMessage::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
            .collect();
        assert_eq!(
            tmpl.render(&msgs, true).unwrap(),
            c["rendered"].as_str().unwrap(),
            "{arch}: chat template rendering"
        );
    }
}

#[test]
fn tiny_models_match_transformers_with_every_isa() {
    for isa in levels() {
        for arch in ARCHS {
            check_arch(arch, "", isa);
        }
    }
}

#[test]
fn tiny_gguf_conversions_match_transformers_with_every_isa() {
    for isa in levels() {
        for arch in ARCHS {
            check_arch(arch, "model.gguf", isa);
        }
    }
}

/// Gemma 3 configs written before transformers 5 say the same things with other keys
/// (`rope_theta` + `rope_scaling` for the global layers, `rope_local_base_freq`,
/// `sliding_window_pattern`): the tiny model rewritten that way gives transformers' logits.
#[test]
fn gemma3_config_in_the_older_layout_gives_the_same_logits() {
    let src = fixtures().join("tiny/gemma3");
    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.path().join(e.file_name())).unwrap();
    }
    let mut cfg = read_json(&src.join("config.json"));
    let rope = cfg["rope_parameters"].clone();
    let c = cfg.as_object_mut().unwrap();
    c.remove("rope_parameters");
    c.remove("layer_types");
    c.insert(
        "rope_theta".into(),
        rope["full_attention"]["rope_theta"].clone(),
    );
    c.insert(
        "rope_scaling".into(),
        serde_json::json!({"rope_type": "linear", "factor": rope["full_attention"]["factor"]}),
    );
    c.insert(
        "rope_local_base_freq".into(),
        rope["sliding_attention"]["rope_theta"].clone(),
    );
    c.insert("sliding_window_pattern".into(), 6.into());
    std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
    let g = read_json(&src.join("golden.json"));
    let (mut s, _) = load(dir.path(), Isa::Generic, 128, 5, KvDType::F32);
    let got = s.feed(&ids(&g["ids"]), 0).unwrap().to_vec();
    let want: Vec<f32> = std::fs::read(src.join("logits.f32"))
        .unwrap()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let worst = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(worst <= LOGIT_ABS_TOL, "max |logit difference| {worst}");
}

/// Quantized experts read the same from GGUF's stacked `[experts, rows, cols]` tensors as from
/// one tensor per expert: the tiny Qwen3-MoE with random Q8_0 and Q4_0 experts, loaded both
/// ways, gives bit-identical logits over a prefill (tokens grouped by expert) and decode steps,
/// with every ISA level (the packed layout slices each expert out of the stacked bytes).
#[test]
fn stacked_quantized_experts_equal_separate_ones() {
    use suanli_backend::conformance::{random_weight, Rng};
    use suanli_core::DType;
    use suanli_formats::hf::{HfDir, StTensor};
    use suanli_formats::Bytes;
    let dir = fixtures().join("tiny/qwen3_moe");
    let input = ids(&read_json(&dir.join("golden.json"))["ids"]);
    for ty in [DType::Q8_0, DType::Q4_0] {
        let base = HfDir::open(&dir).unwrap();
        let (mut separate, mut stacked) = (base.tensors.clone(), base.tensors.clone());
        let mut rng = Rng::new(7);
        for l in 0..2 {
            for (proj, rows, cols) in [
                ("gate_proj", 32, 64),
                ("up_proj", 32, 64),
                ("down_proj", 64, 32),
            ] {
                let mut all = Vec::new();
                for e in 0..8 {
                    let name = format!("model.layers.{l}.mlp.experts.{e}.{proj}.weight");
                    let w = random_weight(ty, rows, cols, &mut rng);
                    all.extend_from_slice(&w);
                    stacked.remove(&name);
                    let t = StTensor {
                        dtype: ty,
                        shape: vec![rows, cols],
                        bytes: Bytes::from_vec(w),
                    };
                    separate.insert(name, t);
                }
                let t = StTensor {
                    dtype: ty,
                    shape: vec![8, rows, cols],
                    bytes: Bytes::from_vec(all),
                };
                stacked.insert(format!("model.layers.{l}.mlp.experts.{proj}.weight"), t);
            }
        }
        for isa in levels() {
            let logits = |tensors| hf_logits(&base, tensors, isa, &input);
            let (a, b) = (logits(separate.clone()), logits(stacked.clone()));
            assert!(a.iter().all(|v| v.is_finite()), "{ty}/{isa:?}");
            assert_eq!(
                a, b,
                "{ty}/{isa:?}: stacked experts differ from separate ones"
            );
        }
    }
}

/// BF16 and F16 weights (each architecture's F32 matrices rounded to them) through the float
/// tiles of every vector level against the generic level, whose one dot product per (row,
/// token) of the same widened values is the oracle: only the f32 summation order differs
/// (the same bound as against transformers). Prefill in chunks of 5, then one token at a time,
/// all as prompt: at `amx` every row takes the BF16 tiles, for the products (activations split
/// into two bf16, 2^-18 left over) and for attention.
#[test]
fn bf16_and_f16_weights_match_the_scalar_level() {
    use suanli_core::DType;
    use suanli_formats::hf::HfDir;
    for arch in ["qwen2", "gemma3", "qwen3_moe"] {
        let dir = fixtures().join("tiny").join(arch);
        let input = ids(&read_json(&dir.join("golden.json"))["ids"]);
        let base = HfDir::open(&dir).unwrap();
        for ty in [DType::BF16, DType::F16] {
            let tensors = converted(&base, ty);
            let converted = tensors.values().filter(|t| t.dtype == ty).count();
            assert!(converted > 5, "{arch}: {converted} matrices converted");
            let logits = |isa: Isa| hf_logits(&base, tensors.clone(), isa, &input);
            let want = logits(Isa::Generic);
            assert!(want.iter().all(|v| v.is_finite()), "{arch}/{ty}");
            for isa in Isa::available().into_iter().filter(|&i| i != Isa::Generic) {
                let got = logits(isa);
                let worst = got
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                let tol = if isa == Isa::Amx {
                    AMX_LOGIT_ABS_TOL
                } else {
                    LOGIT_ABS_TOL
                };
                assert!(
                    worst <= tol,
                    "{arch}/{ty}/{isa:?}: max |logit difference| from the generic level {worst}"
                );
                eprintln!("{arch}/{ty}/{isa:?}: max |logit difference| {worst:.2e}");
            }
        }
    }
}

/// The tiny models' F32 matrices rounded to `ty` (BF16 or F16), or to BF16 and widened back
/// to F32 (`DType::F32`: the same values, which never take the AMX tiles).
fn converted(
    base: &suanli_formats::hf::HfDir,
    ty: suanli_core::DType,
) -> std::collections::BTreeMap<String, suanli_formats::hf::StTensor> {
    use suanli_core::DType;
    let mut tensors = base.tensors.clone();
    for t in tensors.values_mut() {
        if t.dtype != DType::F32 || t.shape.len() < 2 {
            continue;
        }
        let f = t.bytes.as_slice().chunks_exact(4);
        let f = f.map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]));
        let bytes: Vec<u8> = match ty {
            DType::BF16 => f
                .flat_map(|v| half::bf16::from_f32(v).to_le_bytes())
                .collect(),
            DType::F16 => f
                .flat_map(|v| half::f16::from_f32(v).to_le_bytes())
                .collect(),
            _ => f
                .flat_map(|v| half::bf16::from_f32(v).to_f32().to_le_bytes())
                .collect(),
        };
        t.dtype = ty;
        t.bytes = suanli_formats::Bytes::from_vec(bytes);
    }
    tensors
}

/// At the `amx` level BF16 and F16 matrices multiply prompt rows on the BF16 tiles and
/// generated rows on the f32 tiles: the prompt's logits and the generated tokens' are the same
/// bits whether the prompt comes in steps of 5 or in one, and the generated tokens one at a
/// time or all in one step (as speculative verification feeds them); and the prompt's differ
/// from those of the same values as F32 matrices (which never take the tiles), so the tiles
/// did run.
#[test]
fn amx_tiles_take_prompt_rows_and_no_cut_changes_a_bit() {
    use suanli_core::DType;
    if !Isa::available().contains(&Isa::Amx) || !suanli_cpu::kernels::amx_float::available() {
        eprintln!("SKIPPED: no AMX BF16 tiles on this machine");
        return;
    }
    for arch in ["qwen2", "gemma3"] {
        let dir = fixtures().join("tiny").join(arch);
        let input = ids(&read_json(&dir.join("golden.json"))["ids"]);
        let base = suanli_formats::hf::HfDir::open(&dir).unwrap();
        let run = |ty: DType, chunk: usize, one_step: bool| {
            let src = suanli_formats::ModelSource::Hf(suanli_formats::hf::HfDir {
                dir: base.dir.clone(),
                config: base.config.clone(),
                tensors: converted(&base, ty),
            });
            let backend = suanli_cpu::CpuBackend::with_isa(Some(2), Isa::Amx).unwrap();
            let model = suanli_models::Model::load(&src, &backend).unwrap();
            let mut s =
                suanli_engine::Session::with_kv(backend, model, 64, chunk, KvDType::F32).unwrap();
            let prompt = s.feed(&input[..20], 0).unwrap().to_vec();
            let mut generated = Vec::new();
            if one_step {
                generated.extend_from_slice(s.feed_generated(&input[20..], 0).unwrap());
            } else {
                for t in &input[20..] {
                    let l = s.feed_generated(std::slice::from_ref(t), 0).unwrap();
                    generated.extend_from_slice(l);
                }
            }
            (prompt, generated)
        };
        for ty in [DType::BF16, DType::F16] {
            let (p5, g1) = run(ty, 5, false);
            let (p20, g_all) = run(ty, 20, true);
            assert!(p5.iter().chain(&g1).all(|v| v.is_finite()), "{arch}/{ty}");
            assert!(
                p5 == p20,
                "{arch}/{ty}: the prompt's logits depend on its steps"
            );
            assert!(
                g1 == g_all,
                "{arch}/{ty}: generated logits depend on their steps"
            );
        }
        let (bf16, _) = run(DType::BF16, 20, true);
        let (f32s, _) = run(DType::F32, 20, true);
        assert!(
            bf16 != f32s,
            "{arch}: the BF16 prompt rows did not take the tiles"
        );
        let worst = bf16
            .iter()
            .zip(&f32s)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            worst <= AMX_LOGIT_ABS_TOL,
            "{arch}: tiles against f32: {worst}"
        );
        eprintln!("{arch}: BF16 prompt on the tiles against f32 products: {worst:.2e}");
    }
}

/// Logits of `input` from `base`'s directory with `tensors` instead of its own: a prefill of 20
/// tokens in chunks of 5, then one token at a time (F32 KV cache).
fn hf_logits(
    base: &suanli_formats::hf::HfDir,
    tensors: std::collections::BTreeMap<String, suanli_formats::hf::StTensor>,
    isa: Isa,
    input: &[u32],
) -> Vec<f32> {
    let src = suanli_formats::ModelSource::Hf(suanli_formats::hf::HfDir {
        dir: base.dir.clone(),
        config: base.config.clone(),
        tensors,
    });
    let backend = suanli_cpu::CpuBackend::with_isa(Some(2), isa).unwrap();
    let model = suanli_models::Model::load(&src, &backend).unwrap();
    let mut s = suanli_engine::Session::with_kv(backend, model, 64, 5, KvDType::F32).unwrap();
    let mut out = s.feed(&input[..20], 0).unwrap().to_vec();
    for t in &input[20..] {
        out.extend_from_slice(s.feed(std::slice::from_ref(t), 0).unwrap());
    }
    out
}
