#!/usr/bin/env python3
"""A SentencePiece (BPE, byte fallback) vocabulary in a GGUF file (`tokenizer.ggml.model = llama`),
as Llama 2 / TinyLlama / Mistral GGUFs carry, plus llama.cpp's tokenization of test texts.

    /tmp/g/bin/pip install sentencepiece gguf numpy && /tmp/g/bin/python scripts/gen_spm_vocab.py vocab
    .venv-llama/bin/python scripts/gen_spm_vocab.py refs      # needs llama-cpp-python

Writes tests/fixtures/spm/vocab.gguf and tests/fixtures/spm/llamacpp.json.
"""
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "spm"
TEXTS = [
    "Hello world",
    " leading space and  double  spaces",
    "人工智能的发展离不开数据。",
    "Le café coûte 3,50 € — n'est-ce pas ?",
    "emoji 😀 and rare ß ǅ ꙮ characters",
    "line one\nline two\n\n\ttabbed",
    "<s> and </s> as plain text",
    "",
]


def vocab():
    import gguf
    import sentencepiece as spm
    OUT.mkdir(parents=True, exist_ok=True)
    text = (ROOT / "tests/fixtures/text/multilingual.txt").read_text()
    model_prefix = "/tmp/suanli_spm"
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(text.splitlines() * 3), model_prefix=model_prefix, model_type="bpe",
        vocab_size=900, byte_fallback=True, character_coverage=0.98, split_digits=True,
        bos_id=1, eos_id=2, unk_id=0, pad_id=-1, num_threads=1)
    sp = spm.SentencePieceProcessor(model_file=model_prefix + ".model")
    tokens, scores, types = [], [], []
    for i in range(sp.get_piece_size()):
        tokens.append(sp.id_to_piece(i))
        scores.append(sp.get_score(i))
        types.append(2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 6 if sp.is_byte(i) else 1)
    w = gguf.GGUFWriter(str(OUT / "vocab.gguf"), "llama")
    w.add_string("tokenizer.ggml.model", "llama")
    w.add_array("tokenizer.ggml.tokens", tokens)
    w.add_array("tokenizer.ggml.scores", scores)
    w.add_array("tokenizer.ggml.token_type", types)
    w.add_uint32("tokenizer.ggml.bos_token_id", 1)
    w.add_uint32("tokenizer.ggml.eos_token_id", 2)
    w.add_uint32("tokenizer.ggml.unknown_token_id", 0)
    # llama.cpp reads hyperparameters even for vocab-only loads.
    for k, v in [("context_length", 64), ("embedding_length", 8), ("feed_forward_length", 16), ("block_count", 1),
                 ("attention.head_count", 1)]:
        w.add_uint32(f"llama.{k}", v)
    w.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print("wrote", OUT / "vocab.gguf", len(tokens), "tokens")


def refs():
    from llama_cpp import Llama
    llm = Llama(model_path=str(OUT / "vocab.gguf"), vocab_only=True, verbose=False)
    out = [{"text": t,
            "ids": llm.tokenize(t.encode(), add_bos=False, special=False),
            "ids_bos_special": llm.tokenize(t.encode(), add_bos=True, special=True)} for t in TEXTS]
    (OUT / "llamacpp.json").write_text(json.dumps(out, ensure_ascii=False, indent=1))
    print("wrote", OUT / "llamacpp.json")


if __name__ == "__main__":
    {"vocab": vocab, "refs": refs}[sys.argv[1]]()
