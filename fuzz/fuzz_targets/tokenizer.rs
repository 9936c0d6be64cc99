//! Tokenizers on any text: byte-level BPE (built from a GGUF vocabulary, as for Qwen2) and
//! SentencePiece. Encoding never panics; for byte-level BPE, decoding what was encoded gives
//! the text back exactly; decoding and streaming arbitrary ids never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;
use std::sync::OnceLock;
use suanli_formats::gguf::GgufFile;
use suanli_tokenizer::{StreamDecoder, Tokenizer};

fn fixture(rel: &str) -> Tokenizer {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures").join(rel);
    Tokenizer::from_gguf(&GgufFile::open(&p).expect("fixture")).expect("fixture vocabulary")
}

fn bpe() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| fixture("tiny/qwen2/model.gguf"))
}

fn spm() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| fixture("spm/vocab.gguf"))
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let b = bpe();
    let ids = b.encode(&text, false).expect("byte-level BPE encodes any text");
    assert_eq!(b.decode(&ids), text, "decode(encode(s)) == s");
    let _ = b.encode(&text, true);
    for t in [b, spm()] {
        let _ = t.encode(&text, false);
        let _ = t.encode_prompt(&text, true);
        // The bytes as token ids, in and beyond the vocabulary.
        let ids: Vec<u32> = data
            .chunks(2)
            .map(|c| u16::from_le_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32)
            .collect();
        let whole = t.decode(&ids);
        let mut s = StreamDecoder::new();
        let mut streamed = String::new();
        for &id in &ids {
            streamed.push_str(&s.push(t, id));
        }
        streamed.push_str(&s.finish());
        assert_eq!(streamed, whole, "streamed text equals decoded text");
    }
});
