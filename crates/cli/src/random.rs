//! Models of random weights with the shapes of real ones (`bench --random qwen2.5-7b:q4_k`), to
//! measure speed where the real weights cannot travel. Every matrix of one type is a slice of a
//! shared pool of random blocks (so the host holds one tensor's worth, not the model), while the
//! backend still gets — and uploads — every tensor separately, as from a file.

use anyhow::{anyhow, bail, Result};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::PathBuf;
use suanli_backend::conformance::Rng;
use suanli_core::DType;
use suanli_formats::hf::{HfDir, StTensor};
use suanli_formats::{Bytes, ModelSource};

struct Shape {
    name: &'static str,
    arch: &'static str,
    hidden: usize,
    heads: usize,
    kv_heads: usize,
    inter: usize,
    layers: usize,
    vocab: usize,
    tied: bool,
    theta: f64,
    /// Where it is not hidden / heads.
    head_dim: Option<usize>,
    moe: Option<MoeShape>,
}

/// Every layer sparse: `experts` of width `inter`, `used` per token, renormalised.
struct MoeShape {
    experts: usize,
    used: usize,
    inter: usize,
}

const SHAPES: [Shape; 6] = [
    Shape {
        name: "qwen2.5-0.5b",
        arch: "qwen2",
        hidden: 896,
        heads: 14,
        kv_heads: 2,
        inter: 4864,
        layers: 24,
        vocab: 151_936,
        tied: true,
        theta: 1e6,
        head_dim: None,
        moe: None,
    },
    Shape {
        name: "qwen2.5-1.5b",
        arch: "qwen2",
        hidden: 1536,
        heads: 12,
        kv_heads: 2,
        inter: 8960,
        layers: 28,
        vocab: 151_936,
        tied: true,
        theta: 1e6,
        head_dim: None,
        moe: None,
    },
    Shape {
        name: "qwen2.5-7b",
        arch: "qwen2",
        hidden: 3584,
        heads: 28,
        kv_heads: 4,
        inter: 18_944,
        layers: 28,
        vocab: 152_064,
        tied: false,
        theta: 1e6,
        head_dim: None,
        moe: None,
    },
    Shape {
        name: "qwen2.5-72b",
        arch: "qwen2",
        hidden: 8192,
        heads: 64,
        kv_heads: 8,
        inter: 29_568,
        layers: 80,
        vocab: 152_064,
        tied: false,
        theta: 1e6,
        head_dim: None,
        moe: None,
    },
    Shape {
        name: "smollm2-135m",
        arch: "llama",
        hidden: 576,
        heads: 9,
        kv_heads: 3,
        inter: 1536,
        layers: 30,
        vocab: 49_152,
        tied: true,
        theta: 1e5,
        head_dim: None,
        moe: None,
    },
    // Qwen3-30B-A3B: 30.5B parameters, 3.3B active (8 of 128 experts per token).
    Shape {
        name: "qwen3-30b-a3b",
        arch: "qwen3moe",
        hidden: 2048,
        heads: 32,
        kv_heads: 4,
        inter: 6144,
        layers: 48,
        vocab: 151_936,
        tied: false,
        theta: 1e6,
        head_dim: Some(128),
        moe: Some(MoeShape {
            experts: 128,
            used: 8,
            inter: 768,
        }),
    },
];

/// Random blocks with scales chosen so values have a spread of about `sd` (activations stay
/// finite through any number of layers), tiled from a small random piece to `len` bytes.
fn pool(ty: DType, len: usize, sd: f32, rng: &mut Rng) -> Bytes {
    let piece_rows = 64;
    let cols = 256 * 16;
    let mut piece = suanli_backend::conformance::random_weight(ty, piece_rows, cols, rng);
    // random_weight gives values of order one; scale the f16 scale fields (or the floats) to sd.
    let typical = match ty {
        DType::F32 | DType::F16 | DType::BF16 => 0.5,
        DType::Q8_0 => 1.0, // 64 / 64
        DType::Q4K | DType::Q5K => 32.0 * 8.0 / 64.0,
        DType::Q6K => 64.0 * 32.0 / 64.0,
        _ => 8.0 / 64.0,
    };
    let f = sd / typical;
    match ty {
        DType::F32 => {
            for c in piece.chunks_exact_mut(4) {
                let v = f32::from_le_bytes(c.try_into().expect("4 bytes")) * f;
                c.copy_from_slice(&v.to_le_bytes());
            }
        }
        DType::F16 | DType::BF16 => {
            for c in piece.chunks_exact_mut(2) {
                let b = [c[0], c[1]];
                let v = if ty == DType::F16 {
                    half::f16::from_f32(half::f16::from_le_bytes(b).to_f32() * f).to_le_bytes()
                } else {
                    half::bf16::from_f32(half::bf16::from_le_bytes(b).to_f32() * f).to_le_bytes()
                };
                c.copy_from_slice(&v);
            }
        }
        _ => {
            for blk in piece.chunks_exact_mut(ty.block_bytes()) {
                for &off in suanli_core::quant::f16_scale_offsets(ty) {
                    let v = half::f16::from_le_bytes([blk[off], blk[off + 1]]).to_f32() * f;
                    blk[off..off + 2].copy_from_slice(&half::f16::from_f32(v).to_le_bytes());
                }
            }
        }
    }
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        let take = piece.len().min(len - v.len());
        v.extend_from_slice(&piece[..take]);
    }
    Bytes::from_vec(v)
}

/// Each sparse layer's router (F32, as llama.cpp keeps it) and its experts, stacked per
/// projection as in GGUF. Unlike the other matrices, every layer's experts get memory of their
/// own (filled from the pool): a decoded token reads a different few of them at each layer, and
/// shared memory would be served from the cache. The memory is `Bytes::scratch`, given back as
/// a repacking backend copies it.
fn experts(
    tensors: &mut BTreeMap<String, StTensor>,
    s: &Shape,
    m: &MoeShape,
    ty: DType,
    big: &Bytes,
    rng: &mut Rng,
) -> Result<()> {
    let router = pool(DType::F32, m.experts * s.hidden * 4, 0.02, rng);
    for l in 0..s.layers {
        let p = format!("model.layers.{l}.mlp");
        tensors.insert(
            format!("{p}.gate.weight"),
            StTensor {
                dtype: DType::F32,
                shape: vec![m.experts, s.hidden],
                bytes: router.clone(),
            },
        );
        for (proj, rows, cols) in [
            ("gate_proj", m.inter, s.hidden),
            ("up_proj", m.inter, s.hidden),
            ("down_proj", s.hidden, m.inter),
        ] {
            let len = m.experts * rows * ty.row_bytes(cols)?;
            let src = big.as_slice();
            let bytes = Bytes::scratch(len, |buf| {
                for chunk in buf.chunks_mut(src.len()) {
                    chunk.copy_from_slice(&src[..chunk.len()]);
                }
            })
            .map_err(|e| anyhow!("{len} bytes for random experts: {e}"))?;
            tensors.insert(
                format!("{p}.experts.{proj}.weight"),
                StTensor {
                    dtype: ty,
                    shape: vec![m.experts, rows, cols],
                    bytes,
                },
            );
        }
    }
    Ok(())
}

/// `SHAPE[:TYPE]` → a model source of random weights.
pub fn source(spec: &str) -> Result<ModelSource> {
    let (name, ty) = match spec.split_once(':') {
        Some((n, t)) => (
            n,
            DType::from_name(t)
                .ok_or_else(|| anyhow!("{t:?} is not a weight type (bf16, f16, q8_0, q4_k, …)"))?,
        ),
        None => (spec, DType::BF16),
    };
    let Some(s) = SHAPES.iter().find(|s| s.name.eq_ignore_ascii_case(name)) else {
        bail!(
            "--random {name:?}: not a known shape ({})",
            SHAPES.iter().map(|s| s.name).collect::<Vec<_>>().join(", ")
        );
    };
    let hd = s.head_dim.unwrap_or(s.hidden / s.heads);
    let (qd, kv) = (s.heads * hd, s.kv_heads * hd);
    let ff = s.moe.as_ref().map_or(s.inter, |m| m.inter);
    for cols in [s.hidden, ff, qd] {
        ty.row_bytes(cols)
            .map_err(|e| anyhow!("{} cannot be stored as {ty}: {e}", s.name))?;
    }
    let mut matrices: Vec<(String, usize, usize)> =
        vec![("model.embed_tokens.weight".into(), s.vocab, s.hidden)];
    if !s.tied {
        matrices.push(("lm_head.weight".into(), s.vocab, s.hidden));
    }
    let mut vectors: Vec<(String, usize)> = vec![("model.norm.weight".into(), s.hidden)];
    for l in 0..s.layers {
        let p = format!("model.layers.{l}");
        for (n, r, c) in [
            ("self_attn.q_proj", qd, s.hidden),
            ("self_attn.k_proj", kv, s.hidden),
            ("self_attn.v_proj", kv, s.hidden),
            ("self_attn.o_proj", s.hidden, qd),
        ] {
            matrices.push((format!("{p}.{n}.weight"), r, c));
        }
        if s.moe.is_none() {
            for (n, r, c) in [
                ("mlp.gate_proj", s.inter, s.hidden),
                ("mlp.up_proj", s.inter, s.hidden),
                ("mlp.down_proj", s.hidden, s.inter),
            ] {
                matrices.push((format!("{p}.{n}.weight"), r, c));
            }
        }
        if s.arch == "qwen3moe" {
            vectors.push((format!("{p}.self_attn.q_norm.weight"), hd));
            vectors.push((format!("{p}.self_attn.k_norm.weight"), hd));
        }
        vectors.push((format!("{p}.input_layernorm.weight"), s.hidden));
        vectors.push((format!("{p}.post_attention_layernorm.weight"), s.hidden));
        if s.arch == "qwen2" {
            for (n, len) in [("q_proj", s.hidden), ("k_proj", kv), ("v_proj", kv)] {
                vectors.push((format!("{p}.self_attn.{n}.bias"), len));
            }
        }
    }
    let mut rng = Rng::new(42);
    let largest = matrices
        .iter()
        .map(|(_, r, c)| r * ty.row_bytes(*c).expect("checked"))
        .max()
        .unwrap_or(0);
    let big = pool(ty, largest, 0.02, &mut rng);
    let mut tensors = BTreeMap::new();
    for (name, r, c) in matrices {
        let len = r * ty.row_bytes(c).expect("checked");
        let bytes = big
            .slice(0..len)
            .expect("the pool holds the largest tensor");
        tensors.insert(
            name,
            StTensor {
                dtype: ty,
                shape: vec![r, c],
                bytes,
            },
        );
    }
    // Norm weights near one, biases near zero, as trained models have them.
    let ones: Vec<u8> = (0..s.inter.max(s.hidden))
        .flat_map(|_| (1.0f32 + 0.1 * rng.normal()).to_le_bytes())
        .collect();
    let ones = Bytes::from_vec(ones);
    let small = pool(DType::F32, s.hidden.max(kv) * 4, 0.02, &mut rng);
    for (name, len) in vectors {
        let src = if name.ends_with(".bias") {
            &small
        } else {
            &ones
        };
        tensors.insert(
            name,
            StTensor {
                dtype: DType::F32,
                shape: vec![len],
                bytes: src.slice(0..len * 4).expect("sized above"),
            },
        );
    }
    if let Some(m) = &s.moe {
        experts(&mut tensors, s, m, ty, &big, &mut rng)?;
    }
    let (architecture, model_type) = match s.arch {
        "qwen2" => ("Qwen2ForCausalLM", "qwen2"),
        "qwen3moe" => ("Qwen3MoeForCausalLM", "qwen3_moe"),
        _ => ("LlamaForCausalLM", "llama"),
    };
    let mut config = json!({
        "architectures": [architecture],
        "model_type": model_type,
        "head_dim": hd,
        "hidden_size": s.hidden,
        "num_attention_heads": s.heads,
        "num_key_value_heads": s.kv_heads,
        "intermediate_size": s.inter,
        "num_hidden_layers": s.layers,
        "vocab_size": s.vocab,
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        "rope_theta": s.theta,
        "tie_word_embeddings": s.tied,
    });
    if let Some(m) = &s.moe {
        config["num_experts"] = json!(m.experts);
        config["num_experts_per_tok"] = json!(m.used);
        config["moe_intermediate_size"] = json!(m.inter);
        config["norm_topk_prob"] = json!(true);
    }
    Ok(ModelSource::Hf(HfDir {
        dir: PathBuf::from(format!("random:{spec}")),
        config,
        tensors,
    }))
}
