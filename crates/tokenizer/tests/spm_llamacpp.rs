//! A SentencePiece GGUF vocabulary (scripts/gen_spm_vocab.py) tokenizes exactly as llama.cpp does,
//! with and without BOS and special-token parsing.

use std::path::PathBuf;
use suanli_formats::gguf::GgufFile;
use suanli_tokenizer::Tokenizer;

#[test]
fn spm_vocab_tokenizes_like_llama_cpp() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/spm");
    let tok = Tokenizer::from_gguf(&GgufFile::open(&dir.join("vocab.gguf")).unwrap()).unwrap();
    assert!(tok.add_bos, "SentencePiece vocabularies add BOS by default");
    let refs: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("llamacpp.json")).unwrap()).unwrap();
    let ids = |v: &serde_json::Value| {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect::<Vec<_>>()
    };
    for r in refs.as_array().unwrap() {
        let text = r["text"].as_str().unwrap();
        assert_eq!(
            tok.encode(text, false).unwrap(),
            ids(&r["ids"]),
            "plain tokenization of {text:?}"
        );
        assert_eq!(
            tok.encode_prompt(text, true).unwrap(),
            ids(&r["ids_bos_special"]),
            "BOS + special tokenization of {text:?}"
        );
        // Decoding the plain ids gives the text back (SentencePiece's leading space removed).
        let back = tok.decode(&ids(&r["ids"]));
        assert_eq!(back.strip_prefix(' ').unwrap_or(&back), text, "round trip");
    }
}
