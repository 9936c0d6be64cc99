//! Any bytes as a GGUF file, through everything a load does before inference: the header and
//! tensor table, the model source, the hyperparameters, the vocabulary, and the weights (shapes
//! checked against the hyperparameters, data against the file's bytes). Errors are fine; a panic,
//! a hang or a huge allocation is a bug.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;
use std::sync::OnceLock;
use suanli_cpu::CpuBackend;
use suanli_formats::gguf::GgufFile;
use suanli_formats::{Bytes, ModelSource};
use suanli_models::ModelConfig;
use suanli_models::Model;
use suanli_tokenizer::Tokenizer;

fn backend() -> &'static CpuBackend {
    static B: OnceLock<CpuBackend> = OnceLock::new();
    B.get_or_init(|| CpuBackend::new(Some(1)).expect("a CPU backend"))
}

fuzz_target!(|data: &[u8]| {
    let Ok(file) = GgufFile::parse(Path::new("fuzz.gguf"), Bytes::from_vec(data.to_vec())) else {
        return;
    };
    if let Ok(tok) = Tokenizer::from_gguf(&file) {
        if let Ok(ids) = tok.encode("Hello, 世界! <|im_start|>", true) {
            let _ = tok.decode(&ids);
        }
        let _ = tok.template().map(|t| t.map(|t| t.render(&[], true)));
    }
    let src = ModelSource::from_gguf(file);
    if ModelConfig::from_source(&src).is_ok() {
        let _ = Model::load(&src, backend());
    }
});
