//! What the architectures share: the decoder block, its weights, scratch buffers and the forward
//! pass. Architecture files describe their differences with an `ArchSpec`.

use crate::config::{Arch, ExactActivations, FeedForward, LayerAttention, Mlp, ModelConfig};
use crate::experts::{ExpertScratch, Experts, GatedMlp};
use crate::loader::{LoadError, Loader};
use crate::requantize::{Requantize, Requantized};
use suanli_backend::{
    Act, AttnMeta, Backend, BackendError, BatchPlan, KvDType, KvPages, KvSpec, MlpScratch,
    RopeParams, Weight,
};
use suanli_formats::ModelSource;

/// How an architecture's decoder block differs from the plain Llama block.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ArchSpec {
    /// Q/K/V projections carry biases (required).
    pub qkv_bias: bool,
    /// Per-head RMSNorm on Q and K before rotary (Qwen3, Gemma 3).
    pub qk_norm: bool,
    /// One `gate_up_proj` holding gate then up (GLM-4).
    pub fused_gate_up: bool,
    pub norms: Norms,
    /// HF checkpoints store norm weights w of a (1 + w) scale (Gemma).
    pub hf_norm_offset: bool,
}

/// The HF names (under `model.layers.N.`) of a layer's norms besides `input_layernorm`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Norms {
    /// Before the MLP.
    pub mlp_input: &'static str,
    /// On the attention output, before its residual add (GLM-4, Gemma).
    pub attn_output: Option<&'static str>,
    /// On the MLP output, before its residual add (GLM-4, Gemma).
    pub mlp_output: Option<&'static str>,
}

impl Norms {
    /// The Llama block's: one norm before attention, one before the MLP.
    pub const PLAIN: Norms = Norms {
        mlp_input: "post_attention_layernorm",
        attn_output: None,
        mlp_output: None,
    };
}

fn spec(arch: Arch) -> ArchSpec {
    match arch {
        Arch::Qwen2 => crate::qwen2::SPEC,
        Arch::Llama => crate::llama::SPEC,
        Arch::Qwen3 => crate::qwen3::SPEC,
        Arch::Glm4 => crate::glm4::SPEC,
        Arch::Gemma3 => crate::gemma3::SPEC,
        Arch::Qwen2Moe => crate::qwen2_moe::SPEC,
        Arch::Qwen3Moe => crate::qwen3_moe::SPEC,
    }
}

struct Layer<W> {
    input_norm: Weight<W>,
    q: Weight<W>,
    k: Weight<W>,
    v: Weight<W>,
    q_bias: Option<Weight<W>>,
    k_bias: Option<Weight<W>>,
    v_bias: Option<Weight<W>>,
    o: Weight<W>,
    q_norm: Option<Weight<W>>,
    k_norm: Option<Weight<W>>,
    post_attn_out_norm: Option<Weight<W>>,
    mlp_norm: Weight<W>,
    post_mlp_out_norm: Option<Weight<W>>,
    ffn: Ffn<W>,
}

/// A layer's feed-forward weights.
enum Ffn<W> {
    /// One gated MLP: gate, up, down.
    Dense(GatedMlp<W>),
    Experts(Box<Experts<W>>),
}

pub struct Model<B: Backend> {
    pub cfg: ModelConfig,
    embed: Weight<B::WeightStore>,
    layers: Vec<Layer<B::WeightStore>>,
    norm: Weight<B::WeightStore>,
    /// `None` when tied to the embeddings.
    lm_head: Option<Weight<B::WeightStore>>,
    /// (Q, K) rotary parameters: `[0]` for full layers, `[1]` for sliding-window layers when
    /// their base differs (Gemma 3).
    ropes: Vec<(RopeParams, RopeParams)>,
    /// Per layer, which of `ropes`.
    layer_rope: Vec<usize>,
    /// Matrices converted at load (`load_for_drafting`).
    requantized: Requantized,
    /// A draft model's head cut to some of the vocabulary's tokens (`HeadRows::Short`), and
    /// those tokens in the order of its rows.
    short_head: Option<(Weight<B::WeightStore>, Vec<u32>)>,
}

/// How a draft model is loaded (`Model::load_for_drafting`): only its proposals matter, so
/// it may read fewer bytes per token than the file holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DraftLoad {
    /// Its matrices converted where the file spends more bits on them.
    pub requantize: Option<Requantize>,
    /// A second head of these tokens only (`HeadRows::Short`), for text whose tokens lie
    /// among them.
    pub short_head: Option<Vec<u32>>,
    /// The head's logits as its product gives them, without recomputing each row's top
    /// candidates with f32 activations (`ActPrecision::ExactTop`, the default of families
    /// such as Qwen2): a draft's proposals need only its argmax and that token's probability,
    /// and the model's own pass decides every token. The recomputing took ~0.1–0.4 ms of a
    /// drafted token's ~7 (Qwen2.5-Coder-0.5B's short head, `examples/logits_probe`).
    pub fast_head: bool,
}

/// Which of a model's heads a step's logits come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadRows {
    /// The whole vocabulary.
    All,
    /// The short head of a draft model (`DraftLoad::short_head`): logits of its tokens, in
    /// the order `Model::short_head_tokens` gives.
    Short,
}

/// Activation buffers for up to `capacity` tokens per step, allocated once.
pub struct Scratch<B: Backend> {
    capacity: usize,
    x: Act<B::Buffer>,    // [n, hidden] residual stream
    h: Act<B::Buffer>,    // [n, hidden] normed input
    o: Act<B::Buffer>,    // [n, hidden] block output
    q: Act<B::Buffer>,    // [n, n_heads * head_dim]
    k: Act<B::Buffer>,    // [n, n_kv_heads * head_dim]
    v: Act<B::Buffer>,    // [n, n_kv_heads * head_dim]
    attn: Act<B::Buffer>, // [n, n_heads * head_dim]
    gate: Act<B::Buffer>, // [n, intermediate]
    up: Act<B::Buffer>,   // [n, intermediate]
    act: Act<B::Buffer>,  // [n, intermediate]
    /// Mixture-of-experts layers' buffers.
    experts: Option<ExpertScratch<B>>,
}

impl<B: Backend> Scratch<B> {
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

impl<B: Backend> Model<B> {
    pub fn load(src: &ModelSource, backend: &B) -> Result<Model<B>, LoadError> {
        Self::load_for_drafting(src, backend, DraftLoad::default())
    }

    /// What `load_for_drafting` converted (nothing after `load`).
    pub fn requantized(&self) -> Requantized {
        self.requantized
    }

    /// `load`, as a draft model: the matrices converted to a smaller format where it has
    /// fewer bits per weight (see `Requantize`), a short head beside the whole one (with
    /// `DraftLoad::default()`, neither: `load`).
    pub fn load_for_drafting(
        src: &ModelSource,
        backend: &B,
        how: DraftLoad,
    ) -> Result<Model<B>, LoadError> {
        let requantize = how.requantize;
        let cfg = ModelConfig::from_source(src)?;
        let windowed = cfg
            .layer_attention
            .iter()
            .any(|a| matches!(a, LayerAttention::Sliding { .. }));
        let unsupported = |feature| LoadError::Backend {
            path: src.path().display().to_string(),
            source: BackendError::Unsupported {
                backend: backend.caps().name,
                feature,
            },
        };
        if windowed && !backend.caps().sliding_window {
            return Err(unsupported(
                "sliding-window attention, which this model's layers use",
            ));
        }
        // Asked for by name, exact activations must be honoured; the default (the head's top
        // candidates) is a hint to backends that round activations their own way.
        let asked = std::env::var("SUANLI_EXACT_ACTIVATIONS").is_ok_and(|v| v != "off");
        if asked && !backend.caps().act_precision {
            return Err(unsupported(
                "SUANLI_EXACT_ACTIVATIONS (exact activations): its products round activations their own way",
            ));
        }
        let gelu_or_scale = cfg.mlp == Mlp::GeluTanhGated || cfg.embed_scale.is_some();
        if gelu_or_scale && !backend.caps().gelu_and_scale {
            return Err(unsupported(
                "GELU-gated MLPs and scaled embeddings, which this model uses",
            ));
        }
        if cfg.moe.is_some() && !backend.caps().experts {
            return Err(unsupported(
                "mixture-of-experts layers, which this model uses",
            ));
        }
        let exact = match (how.fast_head, cfg.exact_activations) {
            (true, ExactActivations::Head) => ExactActivations::Off,
            (_, e) => e,
        };
        let l = Loader::new(src, backend, exact, requantize);
        let s = spec(cfg.arch);
        let (hd, qd, kvd, ff) = (
            cfg.hidden_size,
            cfg.q_dim(),
            cfg.kv_dim(),
            cfg.intermediate_size,
        );
        let own_lm_head = l.has("lm_head.weight") && !(cfg.tie_word_embeddings && src.is_gguf());
        let embed = l.embedding(
            "model.embed_tokens.weight",
            cfg.vocab_size,
            hd,
            !own_lm_head,
        )?;
        // Gemma's HF norms hold w of a (1 + w) scale; GGUF files store 1 + w already.
        let offset = if s.hf_norm_offset && !src.is_gguf() {
            1.0
        } else {
            0.0
        };
        let norm = |name: &str, len: usize| l.norm(name, len, offset);
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let bias =
                |name: &str, len: usize| -> Result<Option<Weight<B::WeightStore>>, LoadError> {
                    let n = format!("{p}.self_attn.{name}.bias");
                    if s.qkv_bias {
                        l.vector(&n, len).map(Some)
                    } else {
                        l.opt_vector(&n, len)
                    }
                };
            let ffn = match (cfg.layer_ffn[i], &cfg.moe) {
                (FeedForward::Experts, Some(moe)) => {
                    Ffn::Experts(Box::new(crate::experts::load(&l, &p, moe, hd)?))
                }
                _ => {
                    let (gate, up) = if s.fused_gate_up {
                        let n = format!("{p}.mlp.gate_up_proj.weight");
                        (
                            l.matrix_rows(&n, 2 * ff, hd, 0..ff)?,
                            l.matrix_rows(&n, 2 * ff, hd, ff..2 * ff)?,
                        )
                    } else {
                        (
                            l.matrix(&format!("{p}.mlp.gate_proj.weight"), ff, hd)?,
                            l.matrix(&format!("{p}.mlp.up_proj.weight"), ff, hd)?,
                        )
                    };
                    let down = l.matrix(&format!("{p}.mlp.down_proj.weight"), hd, ff)?;
                    Ffn::Dense([gate, up, down])
                }
            };
            let head_norm = |name: &str| -> Result<Option<Weight<B::WeightStore>>, LoadError> {
                s.qk_norm
                    .then(|| norm(&format!("{p}.self_attn.{name}.weight"), cfg.head_dim))
                    .transpose()
            };
            let sandwich =
                |name: Option<&str>| -> Result<Option<Weight<B::WeightStore>>, LoadError> {
                    name.map(|n| norm(&format!("{p}.{n}.weight"), hd))
                        .transpose()
                };
            layers.push(Layer {
                input_norm: norm(&format!("{p}.input_layernorm.weight"), hd)?,
                q: l.matrix(&format!("{p}.self_attn.q_proj.weight"), qd, hd)?,
                k: l.matrix(&format!("{p}.self_attn.k_proj.weight"), kvd, hd)?,
                v: l.matrix(&format!("{p}.self_attn.v_proj.weight"), kvd, hd)?,
                q_bias: bias("q_proj", qd)?,
                k_bias: bias("k_proj", kvd)?,
                v_bias: bias("v_proj", kvd)?,
                o: l.matrix(&format!("{p}.self_attn.o_proj.weight"), hd, qd)?,
                q_norm: head_norm("q_norm")?,
                k_norm: head_norm("k_norm")?,
                post_attn_out_norm: sandwich(s.norms.attn_output)?,
                mlp_norm: norm(&format!("{p}.{}.weight", s.norms.mlp_input), hd)?,
                post_mlp_out_norm: sandwich(s.norms.mlp_output)?,
                ffn,
            });
        }
        let final_norm = norm("model.norm.weight", hd)?;
        let lm_head = if own_lm_head {
            Some(l.head("lm_head.weight", cfg.vocab_size, hd)?)
        } else {
            // Tied: a stored copy of the embeddings is ignored, as transformers ignores it.
            l.mark_used("lm_head.weight");
            None
        };
        // Read by the configuration (its frequency factors).
        l.mark_used("rope_freqs.weight");
        l.check_all_used(cfg.arch.name())?;
        let requantized = l.requantized();
        let short_head = match how.short_head {
            Some(ids) => {
                let name = match own_lm_head {
                    true => "lm_head.weight",
                    false => "model.embed_tokens.weight",
                };
                // Out-of-range ids are refused by the gathering.
                Some((l.matrix_gathered(name, cfg.vocab_size, hd, &ids)?, ids))
            }
            None => None,
        };
        let rope = |inv_freq: Vec<f32>| {
            let q = RopeParams {
                n_heads: cfg.num_attention_heads,
                head_dim: cfg.head_dim,
                rotary_dim: cfg.rotary_dim,
                style: cfg.rope_style,
                inv_freq,
            };
            let k = RopeParams {
                n_heads: cfg.num_key_value_heads,
                ..q.clone()
            };
            (q, k)
        };
        let mut ropes = vec![rope(
            cfg.rope_scaling.inv_freq(cfg.rope_theta, cfg.rotary_dim),
        )];
        if let Some(theta) = cfg.sliding_rope_theta {
            ropes.push(rope(
                crate::RopeScaling::None.inv_freq(theta, cfg.rotary_dim),
            ));
        }
        let layer_rope = cfg
            .layer_attention
            .iter()
            .map(|a| match a {
                LayerAttention::Sliding { .. } if ropes.len() > 1 => 1,
                _ => 0,
            })
            .collect();
        Ok(Model {
            cfg,
            embed,
            layers,
            norm: final_norm,
            lm_head,
            ropes,
            layer_rope,
            requantized,
            short_head,
        })
    }

    /// Bytes of the matrices one decoded token multiplies (each read once per step), by the
    /// backend's `size` of a weight: what decode speed is bound by on a machine short of
    /// memory bandwidth. Sparse layers count their router, their shared expert and
    /// `experts_per_token` of their experts (at the experts' mean size): the active parameters.
    pub fn decode_weight_bytes(&self, size: impl Fn(&Weight<B::WeightStore>) -> usize) -> usize {
        let mut total = size(self.head());
        for l in &self.layers {
            total += [&l.q, &l.k, &l.v, &l.o]
                .into_iter()
                .map(&size)
                .sum::<usize>();
            total += match &l.ffn {
                Ffn::Dense(m) => m.iter().map(&size).sum::<usize>(),
                Ffn::Experts(e) => {
                    let (always, routed) = e.matrices();
                    let all: usize = routed.iter().map(|w| size(w)).sum();
                    always.into_iter().map(&size).sum::<usize>()
                        + all * e.per_token() / (routed.len() / 3).max(1)
                }
            };
        }
        total
    }

    /// Multiply-adds of the matrix products per prompt token, the output head left out (a
    /// prefill computes logits for its last token only); active parameters for experts.
    pub fn prefill_macs_per_token(&self) -> usize {
        let head = self.head();
        self.decode_weight_bytes(|w| w.rows * w.cols) - head.rows * head.cols
    }

    /// Of `prefill_macs_per_token`, those with float weights (BF16, F16, F32: f32 products,
    /// not int8 ones).
    pub fn prefill_float_macs_per_token(&self) -> usize {
        self.prefill_macs_per_token_of(|d| !d.is_quantized())
    }

    /// Of `prefill_macs_per_token`, those whose weights are of a type `pick` takes.
    pub fn prefill_macs_per_token_of(&self, pick: impl Fn(suanli_core::DType) -> bool) -> usize {
        let of = |w: &Weight<B::WeightStore>| match pick(w.dtype) {
            true => w.rows * w.cols,
            false => 0,
        };
        self.decode_weight_bytes(of) - of(self.head())
    }

    /// Bytes of the routed experts' matrices (all of them), by the backend's `size`.
    pub fn expert_weight_bytes(&self, size: impl Fn(&Weight<B::WeightStore>) -> usize) -> usize {
        self.layers
            .iter()
            .map(|l| match &l.ffn {
                Ffn::Dense(_) => 0,
                Ffn::Experts(e) => e.matrices().1.into_iter().map(&size).sum(),
            })
            .sum()
    }

    pub fn vocab_size(&self) -> usize {
        self.cfg.vocab_size
    }

    pub fn kv_spec(&self, num_blocks: usize, block_size: usize, dtype: KvDType) -> KvSpec {
        KvSpec {
            dtype,
            n_layers: self.cfg.num_hidden_layers,
            num_blocks,
            block_size,
            n_kv_heads: self.cfg.num_key_value_heads,
            head_dim: self.cfg.head_dim,
        }
    }

    pub fn alloc_scratch(&self, backend: &B, capacity: usize) -> Result<Scratch<B>, BackendError> {
        let c = &self.cfg;
        Ok(Scratch {
            capacity,
            x: backend.alloc_act(capacity, c.hidden_size)?,
            h: backend.alloc_act(capacity, c.hidden_size)?,
            o: backend.alloc_act(capacity, c.hidden_size)?,
            q: backend.alloc_act(capacity, c.q_dim())?,
            k: backend.alloc_act(capacity, c.kv_dim())?,
            v: backend.alloc_act(capacity, c.kv_dim())?,
            attn: backend.alloc_act(capacity, c.q_dim())?,
            gate: backend.alloc_act(capacity, c.intermediate_size)?,
            up: backend.alloc_act(capacity, c.intermediate_size)?,
            act: backend.alloc_act(capacity, c.intermediate_size)?,
            experts: match &c.moe {
                Some(moe) => Some(crate::experts::alloc_scratch(
                    backend,
                    moe,
                    c.hidden_size,
                    capacity,
                )?),
                None => None,
            },
        })
    }

    /// Run one step: every token of `plan` goes through the model and its K/V lands in `kv`;
    /// `logits` receives `[plan.logits_rows.len(), vocab]`.
    pub fn forward(
        &self,
        b: &B,
        plan: &BatchPlan,
        kv: &mut KvPages<B::KvBuffer>,
        s: &mut Scratch<B>,
        logits: &mut [f32],
    ) -> Result<(), BackendError> {
        self.forward_head(b, plan, kv, s, logits, HeadRows::All)
    }

    /// `forward` with the logits of `head`: `[plan.logits_rows.len(), self.head_rows(head)]`.
    pub fn forward_head(
        &self,
        b: &B,
        plan: &BatchPlan,
        kv: &mut KvPages<B::KvBuffer>,
        s: &mut Scratch<B>,
        logits: &mut [f32],
        head: HeadRows,
    ) -> Result<(), BackendError> {
        let w = match (head, &self.short_head) {
            (HeadRows::All, _) => self.head(),
            (HeadRows::Short, Some((w, _))) => w,
            (HeadRows::Short, None) => {
                return Err(suanli_backend::shape_err(
                    "forward",
                    "the short head of a model loaded without one",
                ))
            }
        };
        self.forward_hidden(b, plan, kv, s)?;
        if plan.logits_rows.is_empty() {
            return Ok(());
        }
        b.rms_norm(&s.x, &self.norm, self.cfg.rms_norm_eps, &mut s.h)?;
        b.logits(&s.h, &plan.logits_rows, w, logits)
    }

    /// Tokens whose logits `head` gives (`None`: the model has no short head).
    pub fn head_rows(&self, head: HeadRows) -> Option<usize> {
        match head {
            HeadRows::All => Some(self.cfg.vocab_size),
            HeadRows::Short => self.short_head.as_ref().map(|(_, ids)| ids.len()),
        }
    }

    /// The tokens of the short head's logits, in order (`DraftLoad::short_head`).
    pub fn short_head_tokens(&self) -> Option<&[u32]> {
        self.short_head.as_ref().map(|(_, ids)| ids.as_slice())
    }

    /// Like `forward`, but the picking of the tokens is offered to the backend first: `pick`
    /// gets the normed hidden rows, the logits rows and the head (e.g. `Backend::top_logits`,
    /// `Backend::sample_logits`); when it declines (`None`), `logits` is filled as by `forward`.
    pub fn forward_pick<P: Default>(
        &self,
        b: &B,
        plan: &BatchPlan,
        kv: &mut KvPages<B::KvBuffer>,
        s: &mut Scratch<B>,
        logits: &mut [f32],
        pick: impl FnOnce(
            &B,
            &Act<B::Buffer>,
            &[u32],
            &Weight<B::WeightStore>,
        ) -> Result<Option<P>, BackendError>,
    ) -> Result<Option<P>, BackendError> {
        self.forward_hidden(b, plan, kv, s)?;
        if plan.logits_rows.is_empty() {
            return Ok(Some(P::default()));
        }
        b.rms_norm(&s.x, &self.norm, self.cfg.rms_norm_eps, &mut s.h)?;
        let picked = pick(b, &s.h, &plan.logits_rows, self.head())?;
        if picked.is_none() {
            b.logits(&s.h, &plan.logits_rows, self.head(), logits)?;
        }
        Ok(picked)
    }

    /// The output projection (the embedding table when tied).
    fn head(&self) -> &Weight<B::WeightStore> {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    /// The transformer layers of one step (no head): K/V into `kv`, hidden state in `s.x`.
    fn forward_hidden(
        &self,
        b: &B,
        plan: &BatchPlan,
        kv: &mut KvPages<B::KvBuffer>,
        s: &mut Scratch<B>,
    ) -> Result<(), BackendError> {
        let n = plan.tokens.len();
        if n > s.capacity || plan.positions.len() != n || plan.slots.len() != n {
            return Err(suanli_backend::shape_err(
                "forward",
                format!("{n} tokens for a scratch of {}", s.capacity),
            ));
        }
        let _rows = StepRows::new(b, &plan.seqs, n);
        let c = &self.cfg;
        // YaRN scales cos and sin, so every Q·K by the factor's square: with every dimension
        // rotating (checked at load) that is the attention scale's to carry.
        let m = c.rope_scaling.attention_factor();
        let mut meta = AttnMeta {
            seqs: &plan.seqs,
            n_heads: c.num_attention_heads,
            n_kv_heads: c.num_key_value_heads,
            head_dim: c.head_dim,
            scale: m * m * c.attention_scale,
            window: None,
        };
        b.embed(&self.embed, &plan.tokens, &mut s.x)?;
        if let Some(f) = c.embed_scale {
            b.scale(&mut s.x, f)?;
        }
        for (i, layer) in self.layers.iter().enumerate() {
            // Attention block.
            b.norm_linear_many(
                &s.x,
                (&layer.input_norm, c.rms_norm_eps),
                &[
                    (&layer.q, layer.q_bias.as_ref()),
                    (&layer.k, layer.k_bias.as_ref()),
                    (&layer.v, layer.v_bias.as_ref()),
                ],
                &mut [&mut s.q, &mut s.k, &mut s.v],
                &mut s.h,
            )?;
            if let (Some(qn), Some(kn)) = (&layer.q_norm, &layer.k_norm) {
                b.rms_norm_groups(&mut s.q, qn, c.rms_norm_eps)?;
                b.rms_norm_groups(&mut s.k, kn, c.rms_norm_eps)?;
            }
            b.rope_write_kv(
                &mut s.q,
                &mut s.k,
                &s.v,
                &plan.positions,
                {
                    let (q, k) = &self.ropes[self.layer_rope[i]];
                    (q, k)
                },
                &plan.slots,
                kv,
                i,
            )?;
            meta.window = match c.layer_attention[i] {
                LayerAttention::Full => None,
                LayerAttention::Sliding { window } => Some(window),
            };
            b.attention(&s.q, kv, &meta, i, &mut s.attn)?;
            residual_product(
                b,
                &s.attn,
                &layer.o,
                [&mut s.x, &mut s.o, &mut s.h],
                layer.post_attn_out_norm.as_ref(),
                c.rms_norm_eps,
            )?;
            let [gate, up, down] = match &layer.ffn {
                Ffn::Dense(m) => m,
                Ffn::Experts(e) => {
                    let es = s.experts.as_mut().ok_or_else(|| {
                        suanli_backend::shape_err("forward", "no expert scratch for a sparse layer")
                    })?;
                    b.rms_norm(&s.x, &layer.mlp_norm, c.rms_norm_eps, &mut s.h)?;
                    // An expert's products take gathered rows, not the step's.
                    b.step_rows(None);
                    let done = e.forward(b, &s.h, &mut s.x, es);
                    b.step_rows(Some((&plan.seqs, n)));
                    done?;
                    continue;
                }
            };
            // MLP block: one fused step for SwiGLU straight into the residual; separate steps
            // where the output is normed before the add (GLM-4, Gemma) or the gate is GELU.
            let fused = layer.post_mlp_out_norm.is_none() && c.mlp == Mlp::SiluGated;
            if fused {
                let scratch = MlpScratch {
                    normed: &mut s.h,
                    g: &mut s.gate,
                    u: &mut s.up,
                    act: &mut s.act,
                    out: &mut s.o,
                };
                let norm = (&layer.mlp_norm, c.rms_norm_eps);
                b.mlp(&mut s.x, norm, [gate, up, down], scratch)?;
                continue;
            }
            b.rms_norm(&s.x, &layer.mlp_norm, c.rms_norm_eps, &mut s.h)?;
            match c.mlp {
                Mlp::SiluGated => {
                    b.gated_linear(&s.h, gate, up, &mut s.gate, &mut s.up, &mut s.act)?
                }
                Mlp::GeluTanhGated => {
                    b.linear_many(
                        &s.h,
                        &[(gate, None), (up, None)],
                        &mut [&mut s.gate, &mut s.up],
                    )?;
                    b.gelu_mul(&s.gate, &s.up, &mut s.act)?;
                }
            }
            residual_product(
                b,
                &s.act,
                down,
                [&mut s.x, &mut s.o, &mut s.h],
                layer.post_mlp_out_norm.as_ref(),
                c.rms_norm_eps,
            )?;
        }
        Ok(())
    }
}

/// Tells the backend which of the step's rows are prompt tokens while it lives
/// (`Backend::step_rows`), and takes it back when dropped.
struct StepRows<'a, B: Backend>(&'a B);

impl<'a, B: Backend> StepRows<'a, B> {
    fn new(b: &'a B, seqs: &[suanli_backend::AttnSeq], n: usize) -> Self {
        b.step_rows(Some((seqs, n)));
        StepRows(b)
    }
}

impl<B: Backend> Drop for StepRows<'_, B> {
    fn drop(&mut self) {
        self.0.step_rows(None);
    }
}

/// x += input · wᵀ, or x += norm(input · wᵀ) where the architecture norms block outputs
/// (GLM-4); `o` and `h` are scratch.
fn residual_product<B: Backend>(
    b: &B,
    input: &Act<B::Buffer>,
    w: &Weight<B::WeightStore>,
    [x, o, h]: [&mut Act<B::Buffer>; 3],
    norm: Option<&Weight<B::WeightStore>>,
    eps: f32,
) -> Result<(), BackendError> {
    match norm {
        Some(nw) => {
            b.linear(input, w, None, o)?;
            b.rms_norm(o, nw, eps, h)?;
            b.add(x, h)
        }
        None => b.linear_add(input, w, o, x),
    }
}
