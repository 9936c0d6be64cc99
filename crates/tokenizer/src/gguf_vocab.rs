//! Build a tokenizer from a GGUF's embedded vocabulary, or from a Hugging Face directory.

use crate::bytes::{decode_byte_level, inverse_table, parse_byte_token};
use crate::{spm, Engine, Tokenizer};
use serde_json::{json, Value as Json};
use std::collections::HashSet;
use std::path::Path;
use suanli_formats::gguf::{GgufFile, Value};

// GGUF token types.
const TT_NORMAL: i64 = 1;
const TT_UNKNOWN: i64 = 2;
const TT_CONTROL: i64 = 3;
const TT_USER_DEFINED: i64 = 4;
const TT_UNUSED: i64 = 5;
const TT_BYTE: i64 = 6;

/// Token texts that end a turn in common chat formats (llama.cpp treats these as end-of-generation too).
const EOG_TEXTS: &[&str] = &[
    "<|im_end|>",
    "<|endoftext|>",
    "<|eot_id|>",
    "<|end|>",
    "<end_of_turn>",
    "<|eom_id|>",
    "<|return|>",
    "<|user|>",
    "<|observation|>",
];

/// llama.cpp's pre-tokenizer regexes, applied in order, each splitting the pieces of the last.
fn pre_tokenizer_regexes(pre: &str) -> Result<Vec<&'static str>, String> {
    const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
    const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    Ok(match pre {
        "qwen2" | "stablelm2" | "deepseek-r1-qwen" => vec![QWEN2],
        "llama-bpe" | "llama3" | "dbrx" | "smaug-bpe" | "chatglm-bpe" | "glm4" => vec![LLAMA3],
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b" => vec![r"\p{N}", GPT2],
        "gpt-2" | "gpt2" | "mpt" | "olmo" | "jais" => vec![GPT2],
        "default" | "" => vec![r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", "[0-9][0-9][0-9]"],
        other => return Err(format!("pre-tokenizer {other:?} is not supported (qwen2, llama-bpe, smollm, gpt2, default are)")),
    })
}

fn str_array<'a>(f: &'a GgufFile, key: &str) -> Result<Vec<&'a str>, String> {
    let a = f
        .get(key)
        .and_then(|v| v.as_array())
        .ok_or_else(|| format!("metadata {key} is missing or not an array"))?;
    a.iter()
        .map(|v| {
            v.as_str()
                .ok_or_else(|| format!("metadata {key} holds a non-string element"))
        })
        .collect()
}

fn opt_id(f: &GgufFile, key: &str, n_vocab: usize) -> Result<Option<u32>, String> {
    match f.get(key) {
        None => Ok(None),
        Some(v) => match v.as_u64() {
            Some(id) if (id as usize) < n_vocab => Ok(Some(id as u32)),
            // Some converters write -1 for "none".
            _ if v.as_i64() == Some(-1) => Ok(None),
            _ => Err(format!(
                "metadata {key} = {v} is outside the vocabulary of {n_vocab} tokens"
            )),
        },
    }
}

pub(crate) fn build(f: &GgufFile) -> Result<Tokenizer, String> {
    let model = f
        .get("tokenizer.ggml.model")
        .and_then(|v| v.as_str())
        .ok_or("metadata tokenizer.ggml.model is missing")?;
    let tokens = str_array(f, "tokenizer.ggml.tokens")?;
    let n = tokens.len();
    if n == 0 {
        return Err("the vocabulary is empty".into());
    }
    let types: Vec<i64> = match f.get("tokenizer.ggml.token_type") {
        None => vec![TT_NORMAL; n],
        Some(Value::Array(a)) => {
            if a.len() != n {
                return Err(format!(
                    "tokenizer.ggml.token_type has {} entries for {n} tokens",
                    a.len()
                ));
            }
            a.iter()
                .map(|v| {
                    v.as_i64()
                        .ok_or("tokenizer.ggml.token_type holds a non-integer")
                })
                .collect::<Result<_, _>>()?
        }
        Some(v) => {
            return Err(format!(
                "tokenizer.ggml.token_type is a {}, not an array",
                v.type_name()
            ))
        }
    };
    // Checked whatever the vocabulary kind: a malformed array is a malformed file.
    let scores: Option<Vec<f32>> = match f.get("tokenizer.ggml.scores") {
        Some(Value::Array(a)) if a.len() == n => Some(
            a.iter()
                .map(|v| match v {
                    Value::F32(x) if x.is_finite() => Ok(*x),
                    _ => Err("tokenizer.ggml.scores must hold finite f32 values".to_string()),
                })
                .collect::<Result<_, _>>()?,
        ),
        Some(_) => {
            return Err(format!(
                "tokenizer.ggml.scores must be an f32 array of {n} entries"
            ))
        }
        None => None,
    };
    let bos_id = opt_id(f, "tokenizer.ggml.bos_token_id", n)?;
    let eos_id = opt_id(f, "tokenizer.ggml.eos_token_id", n)?;
    let mut eog_ids: HashSet<u32> = eos_id.into_iter().collect();
    for key in ["tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"] {
        eog_ids.extend(opt_id(f, key, n)?);
    }
    for (i, t) in tokens.iter().enumerate() {
        if EOG_TEXTS.contains(t) && (types[i] == TT_CONTROL || types[i] == TT_USER_DEFINED) {
            eog_ids.insert(i as u32);
        }
    }
    let add_bos_default = model == "llama";
    let add_bos = f
        .get("tokenizer.ggml.add_bos_token")
        .and_then(|v| v.as_bool())
        .unwrap_or(add_bos_default);
    if add_bos && bos_id.is_none() {
        return Err(
            "the model asks for a BOS token but tokenizer.ggml.bos_token_id is missing".into(),
        );
    }
    let control: HashSet<u32> = (0..n)
        .filter(|&i| types[i] == TT_CONTROL || types[i] == TT_UNKNOWN)
        .map(|i| i as u32)
        .collect();
    // Converters fill embedding rows past the real vocabulary with unused `[PADn]` entries
    // (Qwen2.5's 7B and larger have 128 more than the smaller sizes).
    let padding: HashSet<u32> = (0..n)
        .filter(|&i| types[i] == TT_UNUSED)
        .map(|i| i as u32)
        .collect();
    let text_of = |id: Option<u32>| {
        id.map(|i| tokens[i as usize].to_owned())
            .unwrap_or_default()
    };
    let chat_template = f
        .get("tokenizer.chat_template")
        .and_then(|v| v.as_str())
        .map(str::to_owned)
        .or_else(|| builtin_template(f, &tokens));

    let (engine, token_bytes) = match model {
        "gpt2" => {
            let pre = f
                .get("tokenizer.ggml.pre")
                .and_then(|v| v.as_str())
                .unwrap_or("default");
            let merges = str_array(f, "tokenizer.ggml.merges")?;
            let regexes = pre_tokenizer_regexes(pre)?;
            let ignore_merges = matches!(pre, "llama-bpe" | "llama3");
            let tok_json = bpe_json(&tokens, &types, &merges, &regexes, ignore_merges);
            let special: tokenizers::Tokenizer = tok_json
                .to_string()
                .parse()
                .map_err(|e| format!("cannot build the BPE tokenizer: {e}"))?;
            let mut plain = special.clone();
            plain.set_encode_special_tokens(true);
            let inv = inverse_table();
            let bytes = tokens
                .iter()
                .enumerate()
                .map(|(i, t)| match types[i] {
                    TT_CONTROL | TT_UNKNOWN => Vec::new(),
                    TT_USER_DEFINED => t.as_bytes().to_vec(),
                    _ => decode_byte_level(t, &inv).unwrap_or_else(|| t.as_bytes().to_vec()),
                })
                .collect();
            (
                Engine::Hf {
                    special: Box::new(special),
                    plain: Box::new(plain),
                },
                bytes,
            )
        }
        "llama" => {
            let scores = scores
                .ok_or("tokenizer.ggml.scores is missing (needed by SentencePiece vocabularies)")?;
            let add_space_prefix = f
                .get("tokenizer.ggml.add_space_prefix")
                .and_then(|v| v.as_bool())
                .unwrap_or(true);
            let mut bytes = Vec::with_capacity(n);
            for (i, t) in tokens.iter().enumerate() {
                bytes.push(match types[i] {
                    TT_CONTROL | TT_UNKNOWN => Vec::new(),
                    TT_BYTE => vec![parse_byte_token(t).ok_or_else(|| {
                        format!("byte token #{i} {t:?} is not of the form <0xXX>")
                    })?],
                    _ => t.replace('\u{2581}', " ").into_bytes(),
                });
            }
            let spm = spm::Spm::new(
                tokens.iter().map(|s| s.to_string()).collect(),
                scores,
                types.clone(),
                add_space_prefix,
            )?;
            (Engine::Spm(Box::new(spm)), bytes)
        }
        other => {
            return Err(format!(
                "tokenizer model {other:?} is not supported (gpt2 and llama are)"
            ))
        }
    };
    Ok(Tokenizer {
        engine,
        token_bytes,
        control,
        padding,
        bos_id,
        add_bos,
        eog_ids,
        eos_id,
        chat_template,
        bos_token: text_of(bos_id),
        eos_token: text_of(eos_id),
    })
}

/// A `tokenizer.json` document for a byte-level BPE vocabulary.
fn bpe_json(
    tokens: &[&str],
    types: &[i64],
    merges: &[&str],
    regexes: &[&str],
    ignore_merges: bool,
) -> Json {
    let vocab: serde_json::Map<String, Json> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), json!(i)))
        .collect();
    let added: Vec<Json> = tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| types[*i] == TT_CONTROL || types[*i] == TT_USER_DEFINED)
        .map(|(i, t)| {
            json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": false, "special": types[i] == TT_CONTROL})
        })
        .collect();
    let mut pre: Vec<Json> = regexes
        .iter()
        .map(|r| json!({"type": "Split", "pattern": {"Regex": r}, "behavior": "Isolated", "invert": false}))
        .collect();
    pre.push(json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}));
    json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": pre},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                  "ignore_merges": ignore_merges, "vocab": vocab, "merges": merges}
    })
}

fn read_json(path: &Path) -> Result<Option<Json>, String> {
    match std::fs::read_to_string(path) {
        Ok(s) => serde_json::from_str(&s)
            .map(Some)
            .map_err(|e| format!("{}: invalid JSON: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// `"<s>"` or `{"content": "<s>", ...}` as found in tokenizer_config.json.
fn token_string(v: Option<&Json>) -> Option<String> {
    match v? {
        Json::String(s) => Some(s.clone()),
        Json::Object(o) => o.get("content").and_then(|c| c.as_str()).map(str::to_owned),
        _ => None,
    }
}

pub(crate) fn build_hf(dir: &Path) -> Result<Tokenizer, String> {
    let tj_path = dir.join("tokenizer.json");
    let text =
        std::fs::read_to_string(&tj_path).map_err(|e| format!("{}: {e}", tj_path.display()))?;
    let tj: Json = serde_json::from_str(&text)
        .map_err(|e| format!("{}: invalid JSON: {e}", tj_path.display()))?;
    let special: tokenizers::Tokenizer = text
        .parse()
        .map_err(|e| format!("{}: {e}", tj_path.display()))?;
    let mut plain = special.clone();
    plain.set_encode_special_tokens(true);
    let cfg = read_json(&dir.join("tokenizer_config.json"))?.unwrap_or(Json::Null);
    let gen = read_json(&dir.join("generation_config.json"))?.unwrap_or(Json::Null);

    let n = special.get_vocab_size(true);
    let byte_level = tj
        .get("decoder")
        .map(|d| d.to_string().contains("ByteLevel"))
        .unwrap_or(false);
    let inv = inverse_table();
    let mut control = HashSet::new();
    let mut added_special = std::collections::HashMap::new();
    for t in tj
        .get("added_tokens")
        .and_then(|a| a.as_array())
        .into_iter()
        .flatten()
    {
        if let (Some(id), Some(content)) = (
            t.get("id").and_then(|i| i.as_u64()),
            t.get("content").and_then(|c| c.as_str()),
        ) {
            let is_special = t.get("special").and_then(|s| s.as_bool()).unwrap_or(false);
            added_special.insert(id as u32, (content.to_owned(), is_special));
            if is_special {
                control.insert(id as u32);
            }
        }
    }
    let mut token_bytes = Vec::with_capacity(n);
    for id in 0..n as u32 {
        let bytes = match (added_special.get(&id), special.id_to_token(id)) {
            (Some((_, true)), _) => Vec::new(),
            (Some((c, false)), _) => c.as_bytes().to_vec(),
            (None, Some(t)) if byte_level => {
                decode_byte_level(&t, &inv).unwrap_or_else(|| t.into_bytes())
            }
            (None, Some(t)) => match parse_byte_token(&t) {
                Some(b) => vec![b],
                None => t.replace('\u{2581}', " ").into_bytes(),
            },
            (None, None) => Vec::new(),
        };
        token_bytes.push(bytes);
    }
    let id_of = |s: &Option<String>| s.as_ref().and_then(|s| special.token_to_id(s));
    let bos_token = token_string(cfg.get("bos_token"));
    let eos_token = token_string(cfg.get("eos_token"));
    let bos_id = id_of(&bos_token).or_else(|| {
        gen.get("bos_token_id")
            .and_then(|v| v.as_u64())
            .map(|v| v as u32)
    });
    let eos_id = id_of(&eos_token);
    let mut eog_ids: HashSet<u32> = eos_id.into_iter().collect();
    match gen.get("eos_token_id") {
        Some(Json::Number(x)) => eog_ids.extend(x.as_u64().map(|v| v as u32)),
        Some(Json::Array(a)) => {
            eog_ids.extend(a.iter().filter_map(|v| v.as_u64()).map(|v| v as u32))
        }
        _ => {}
    }
    eog_ids.retain(|&id| (id as usize) < n);
    // Whether the post-processor adds BOS: compare encodings with and without special tokens.
    let add_bos = match (
        bos_id,
        special.encode("a", true),
        special.encode("a", false),
    ) {
        (Some(b), Ok(with), Ok(without)) => {
            with.get_ids().first() == Some(&b) && without.get_ids().first() != Some(&b)
        }
        _ => false,
    } || cfg
        .get("add_bos_token")
        .and_then(|v| v.as_bool())
        .unwrap_or(false)
        && bos_id.is_some();
    let chat_template = match cfg.get("chat_template") {
        Some(Json::String(s)) => Some(s.clone()),
        Some(Json::Array(a)) => a
            .iter()
            .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
            .and_then(|t| {
                t.get("template")
                    .and_then(|s| s.as_str())
                    .map(str::to_owned)
            }),
        _ => std::fs::read_to_string(dir.join("chat_template.jinja")).ok(),
    };
    Ok(Tokenizer {
        engine: Engine::Hf {
            special: Box::new(special),
            plain: Box::new(plain),
        },
        token_bytes,
        control,
        padding: HashSet::new(),
        bos_id,
        add_bos,
        eog_ids,
        eos_id,
        chat_template,
        bos_token: bos_token.unwrap_or_default(),
        eos_token: eos_token.unwrap_or_default(),
    })
}

/// Gemma 3's chat template (Google's, from its tokenizer_config.json), for GGUF files of it that
/// carry none: llama.cpp's own conversions of Gemma 3 270M ship without one.
const GEMMA3_TEMPLATE: &str = include_str!("../templates/gemma3.jinja");

/// The template of a known model family whose file lacks one: only where the architecture and
/// the vocabulary's turn tokens both say which family it is.
fn builtin_template(f: &GgufFile, tokens: &[&str]) -> Option<String> {
    let arch = f.get("general.architecture").and_then(|v| v.as_str())?;
    let has = |t: &str| tokens.contains(&t);
    (arch == "gemma3" && has("<start_of_turn>") && has("<end_of_turn>"))
        .then(|| GEMMA3_TEMPLATE.to_owned())
}
