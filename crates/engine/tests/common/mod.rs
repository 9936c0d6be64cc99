//! Helpers shared by the golden and real-model tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
pub use suanli_backend::KvDType;
use suanli_cpu::kernels::Isa;
use suanli_cpu::CpuBackend;
use suanli_engine::Session;
use suanli_formats::open_model;
use suanli_models::Model;
use suanli_tokenizer::Tokenizer;

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

pub fn read_json(p: &Path) -> serde_json::Value {
    let s = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&s).unwrap()
}

/// A JSON array of numbers.
pub fn floats(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("array of ids")
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// The tokenizer of an opened model (a GGUF file's vocabulary or a Hugging Face directory's).
pub fn tokenizer(src: &suanli_formats::ModelSource) -> Tokenizer {
    match src {
        suanli_formats::ModelSource::Gguf { file, .. } => Tokenizer::from_gguf(file).unwrap(),
        suanli_formats::ModelSource::Hf(d) => Tokenizer::from_hf_dir(&d.dir).unwrap(),
    }
}

pub fn load(
    path: &Path,
    isa: Isa,
    ctx: usize,
    chunk: usize,
    kv: KvDType,
) -> (Session<CpuBackend>, Tokenizer) {
    let src = open_model(path).unwrap();
    let tok = tokenizer(&src);
    let backend = CpuBackend::with_isa(Some(2), isa).unwrap();
    let model = Model::load(&src, &backend).unwrap();
    (
        Session::with_kv(backend, model, ctx, chunk, kv).unwrap(),
        tok,
    )
}

/// Greedy continuation of `prompt`, `n` tokens, ignoring end-of-generation tokens.
pub fn greedy(s: &mut Session<CpuBackend>, prompt: &[u32], n: usize) -> Vec<u32> {
    s.reset();
    let g = s
        .generate(
            prompt,
            &suanli_engine::SamplingParams::greedy(),
            n,
            &|_| false,
            &mut |_| suanli_engine::session::Control::Continue,
        )
        .unwrap();
    g.tokens
}

/// Perplexity with the llama-perplexity method.
pub fn perplexity(
    s: &mut Session<CpuBackend>,
    tokens: &[u32],
    ctx: usize,
    bos: Option<u32>,
) -> f64 {
    perplexity_full(s, tokens, ctx, bos).perplexity
}

/// Perplexity with each scored token's log-probability.
pub fn perplexity_full(
    s: &mut Session<CpuBackend>,
    tokens: &[u32],
    ctx: usize,
    bos: Option<u32>,
) -> suanli_engine::perplexity::Perplexity {
    suanli_engine::perplexity::perplexity(s, tokens, ctx, bos, &mut |_, _, _| {}).unwrap()
}

/// The tiny fixture `from`'s GGUF with `extra` padding entries appended to its vocabulary
/// (`[PADn]`, token type 5, as converters pad embedding rows past the real tokens): their rows
/// zero, or with `loud = Some(id)` four times token `id`'s, so the model likes them where it
/// likes `id`. Written into `dir`.
pub fn padded_gguf(dir: &Path, from: &str, extra: usize, loud: Option<u32>) -> PathBuf {
    let path = fixtures().join("tiny").join(from).join("model.gguf");
    let f = suanli_formats::gguf::GgufFile::open(&path).unwrap();
    let (like, scale) = loud.map_or((0, 0.0), |id| (id, 4.0));
    let bytes = suanli_formats::gguf::write::with_more_tokens(&f, extra, 5, like, scale).unwrap();
    let p = dir.join(format!("{from}-padded-{extra}-{like}.gguf"));
    std::fs::write(&p, bytes).unwrap();
    p
}
