//! Any bytes as a JSON schema, regular expression, Lark grammar or choice list (they come from
//! requests): compilation gives a constraint or an error, and a constraint's masks and checks
//! agree along a walk — never a panic, a hang or an answer it refuses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, OnceLock};
use suanli_constrain::{Grammar, Vocab};
use suanli_engine::TokenConstraint;
use suanli_tokenizer::Tokenizer;

fn vocab() -> &'static Arc<Vocab> {
    static V: OnceLock<Arc<Vocab>> = OnceLock::new();
    V.get_or_init(|| {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/tiny/qwen2");
        let tok = Arc::new(Tokenizer::from_hf_dir(std::path::Path::new(dir)).unwrap());
        let n = tok.vocab_size();
        Arc::new(Vocab::new(tok, n).unwrap())
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest).into_owned();
    let g = match kind % 4 {
        0 => match serde_json::from_str(&text) {
            Ok(v) => Grammar::JsonSchema(v),
            Err(_) => return,
        },
        1 => Grammar::Regex(text),
        2 => Grammar::Lark(text),
        _ => Grammar::Choice(text.split('\n').map(str::to_owned).collect()),
    };
    let Ok(compiled) = g.compile(vocab()) else {
        return;
    };
    // A short walk: each step takes the lowest allowed token; a masked row always keeps one.
    let mut c = compiled.constraint();
    let n = vocab().size();
    for _ in 0..16 {
        let mut logits = vec![0.0f32; n];
        if c.mask(&mut logits).is_err() {
            return;
        }
        let Some(t) = logits.iter().position(|l| !l.is_nan()) else {
            return;
        };
        assert!(c.allows(t as u32), "the mask allows token {t} but the check refuses it");
        if c.accept(t as u32).is_err() {
            return;
        }
    }
});
