//! The backend contract. A backend owns weight layout and activation memory; the model code is
//! generic over it and never names a concrete device. Ops write into preallocated outputs.
#![forbid(unsafe_code)]

pub mod check;
pub mod conformance;
mod plan;
pub use plan::{AttnSeq, BatchPlan};

use suanli_core::DType;
use suanli_formats::Bytes;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("{backend} backend cannot run {dtype} weights (tensor {tensor})")]
    UnsupportedDType {
        backend: &'static str,
        dtype: DType,
        tensor: String,
    },
    #[error("shape mismatch in {op}: {detail}")]
    Shape { op: &'static str, detail: String },
    #[error("out of memory allocating {what}: {detail}")]
    OutOfMemory { what: &'static str, detail: String },
    /// A feature the backend does not have (its `Capabilities` say so).
    #[error("the {backend} backend does not support {feature}")]
    Unsupported {
        backend: &'static str,
        feature: &'static str,
    },
    /// A device or driver call failed (a GPU backend's runtime error), naming the op.
    #[error("{backend} backend: {op} failed: {detail}")]
    Device {
        backend: &'static str,
        op: &'static str,
        detail: String,
    },
}

pub type Result<T> = std::result::Result<T, BackendError>;

pub fn shape_err(op: &'static str, detail: impl Into<String>) -> BackendError {
    BackendError::Shape {
        op,
        detail: detail.into(),
    }
}

/// What a backend is and can do; negotiated once at load.
#[derive(Clone, Debug)]
pub struct Capabilities {
    pub name: &'static str,
    /// e.g. the CPU instruction-set level in use.
    pub detail: String,
    pub weight_dtypes: Vec<DType>,
    /// KV cache element types `alloc_kv` accepts.
    pub kv_dtypes: Vec<KvDType>,
    /// `attention` honours `AttnMeta::window` (sliding-window layers).
    pub sliding_window: bool,
    /// `gelu_mul` and `scale` are implemented (Gemma's GeGLU and embedding scale).
    pub gelu_and_scale: bool,
    /// Products honour `ActPrecision` (the CPU); otherwise a weight's precision is a hint.
    pub act_precision: bool,
    /// `gather_rows` and `add_rows_scaled` are implemented (mixture-of-experts layers).
    pub experts: bool,
}

/// A weight as it arrives from a file: a 1-D vector or a 2-D matrix `[rows, cols]` (HF order:
/// rows = output features), with rows stored contiguously.
pub struct HostTensor<'a> {
    pub name: &'a str,
    pub dtype: DType,
    pub rows: usize,
    pub cols: usize,
    pub bytes: &'a Bytes,
    pub role: WeightRole,
    /// How exactly products with this weight must treat their activations (the model asks for
    /// more than `Fast` where a family is sensitive to activation rounding).
    pub precision: ActPrecision,
}

/// For a backend that rounds activations (the CPU's 8-bit integer dots, as llama.cpp's): what
/// a weight's products must keep. A backend with float activations meets every level as is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActPrecision {
    /// The backend's fastest.
    Fast,
    /// For the output head: each logits row's largest candidates recomputed with f32
    /// activations (the answer and the normalizer, at a fraction of a pass).
    ExactTop,
    /// Every product as with f32 activations: the rounding error is multiplied in a second pass.
    Exact,
}

/// How the model uses a weight, so a backend can choose its layout (repacking matrices for its
/// kernels, keeping an embedding table in file layout for row lookups).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightRole {
    /// Norm weights, biases: read whole.
    Vector,
    /// The right-hand side of `linear`/`logits`.
    Matrix,
    /// Rows looked up by `embed`.
    Embedding,
    /// An embedding table that is also the output projection (tied embeddings).
    TiedEmbedding,
}

impl WeightRole {
    pub fn multiplies(self) -> bool {
        matches!(self, WeightRole::Matrix | WeightRole::TiedEmbedding)
    }
}

/// A weight in the backend's own layout.
pub struct Weight<W> {
    pub dtype: DType,
    pub rows: usize,
    pub cols: usize,
    pub store: W,
}

/// `Backend::top_logits`' answer for a step's selected rows.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TopLogits {
    /// Candidates per row.
    pub k: usize,
    /// `k` (token id, logit) pairs per row, largest first, the lower id first on ties.
    pub pairs: Vec<(u32, f32)>,
    /// When asked for: per row, Σ exp(l − max) over the whole vocabulary — the softmax's
    /// normalizer at temperature 1 relative to the row's largest logit. Top-p cuts the sorted
    /// candidates where their share of it reaches p, which is where a cut of the whole
    /// vocabulary falls when they reach it. Empty when not asked for.
    pub mass: Vec<f32>,
}

/// One row's draw for `Backend::sample_logits`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Draw {
    /// ≤ 0: greedy.
    pub temperature: f32,
    /// 0: off.
    pub min_p: f32,
    /// Uniform in [0, 1): where the draw lands in the cumulative weights.
    pub u: f64,
}

/// An activation matrix `[rows, cols]`, allocated for `capacity` rows; `rows` is the live count.
pub struct Act<B> {
    pub rows: usize,
    pub cols: usize,
    pub capacity: usize,
    pub buf: B,
}

impl<B> Act<B> {
    /// Set the live row count for this step (no allocation).
    pub fn set_rows(&mut self, rows: usize) -> Result<()> {
        if rows > self.capacity {
            return Err(shape_err(
                "set_rows",
                format!("{rows} rows exceed the capacity {}", self.capacity),
            ));
        }
        self.rows = rows;
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Rotate pairs (i, i + rotary_dim/2): HF `rotate_half` (Qwen2, Qwen3, HF Llama).
    Neox,
    /// Rotate adjacent pairs (2i, 2i+1): GGUF Llama (whose Q/K rows are permuted), GLM-4.
    Interleaved,
}

#[derive(Clone, Debug)]
pub struct RopeParams {
    pub n_heads: usize,
    pub head_dim: usize,
    /// Leading dimensions of each head that rotate (partial rotary: GLM-4 rotates half).
    pub rotary_dim: usize,
    pub style: RopeStyle,
    /// Inverse frequencies, `rotary_dim / 2` of them (scaling already applied).
    pub inv_freq: Vec<f32>,
}

impl RopeParams {
    pub fn new(
        n_heads: usize,
        head_dim: usize,
        rotary_dim: usize,
        theta: f32,
        style: RopeStyle,
    ) -> RopeParams {
        let inv_freq = (0..rotary_dim / 2)
            .map(|i| 1.0f32 / theta.powf((2 * i) as f32 / rotary_dim as f32))
            .collect();
        RopeParams {
            n_heads,
            head_dim,
            rotary_dim,
            style,
            inv_freq,
        }
    }
}

/// Element type of the KV cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvDType {
    F32,
    /// Half the memory and bandwidth; llama.cpp's default.
    F16,
    /// 8-bit quants with an f16 scale per 32 values of a head (8.5 bits): a bit over half of
    /// F16's memory, for long contexts.
    Q8_0,
}

impl KvDType {
    /// The name `parse` reads: `f32`, `f16` or `q8_0`.
    pub fn name(self) -> &'static str {
        match self {
            KvDType::F32 => "f32",
            KvDType::F16 => "f16",
            KvDType::Q8_0 => "q8_0",
        }
    }

    pub fn parse(s: &str) -> Option<KvDType> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Some(KvDType::F32),
            "f16" => Some(KvDType::F16),
            "q8_0" | "q8" => Some(KvDType::Q8_0),
            _ => None,
        }
    }
}

/// Shape of the paged KV cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvSpec {
    pub dtype: KvDType,
    pub n_layers: usize,
    pub num_blocks: usize,
    pub block_size: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

impl KvSpec {
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
    pub fn slots(&self) -> usize {
        self.num_blocks * self.block_size
    }
    /// Bytes one block takes across all layers, K and V (Q8_0: 34 bytes per 32 elements).
    pub fn bytes_per_block(&self) -> usize {
        let elems = self.n_layers * 2 * self.block_size * self.kv_dim();
        match self.dtype {
            KvDType::F32 => elems * 4,
            KvDType::F16 => elems * 2,
            KvDType::Q8_0 => elems.div_ceil(32) * 34,
        }
    }
}

/// Paged KV storage: per layer, K and V with one row of `kv_dim` per slot
/// (slot = block * block_size + offset).
pub struct KvPages<B> {
    pub spec: KvSpec,
    pub layers: Vec<(B, B)>,
}

/// Per-step attention description (derived from the batch plan).
#[derive(Clone, Debug)]
pub struct AttnMeta<'a> {
    pub seqs: &'a [AttnSeq],
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub scale: f32,
    /// Sliding-window layers: a query at position p attends to positions p - window + 1 ..= p
    /// only (`None`: every earlier position). Only where `Capabilities::sliding_window`.
    pub window: Option<usize>,
}

/// A matrix and its optional bias (`linear_many`).
pub type Product<'a, W> = (&'a Weight<W>, Option<&'a Weight<W>>);

/// Scratch for `Backend::mlp`: `[n, hidden]` for the normed input and the down product,
/// `[n, intermediate]` for the gate and up products and their product.
pub struct MlpScratch<'a, B> {
    pub normed: &'a mut Act<B>,
    pub g: &'a mut Act<B>,
    pub u: &'a mut Act<B>,
    pub act: &'a mut Act<B>,
    pub out: &'a mut Act<B>,
}

pub trait Backend: Send + Sync + 'static {
    /// Activation storage.
    type Buffer: Send + Sync;
    /// KV cache storage (per layer, K or V).
    type KvBuffer: Send + Sync;
    /// Weight storage in the backend's layout.
    type WeightStore: Send + Sync;

    fn caps(&self) -> &Capabilities;
    fn prepare_weight(&self, host: HostTensor<'_>) -> Result<Weight<Self::WeightStore>>;
    fn alloc_act(&self, capacity: usize, cols: usize) -> Result<Act<Self::Buffer>>;
    fn alloc_kv(&self, spec: KvSpec) -> Result<KvPages<Self::KvBuffer>>;
    /// Copy host rows into an activation (tests, inputs).
    fn upload(&self, data: &[f32], rows: usize, out: &mut Act<Self::Buffer>) -> Result<()>;
    /// Copy the live rows of an activation to the host.
    fn download(&self, x: &Act<Self::Buffer>) -> Result<Vec<f32>>;

    /// out[i] = table[ids[i]]
    fn embed(
        &self,
        table: &Weight<Self::WeightStore>,
        ids: &[u32],
        out: &mut Act<Self::Buffer>,
    ) -> Result<()>;
    /// Row-wise RMS norm with weight `w` (length cols).
    fn rms_norm(
        &self,
        x: &Act<Self::Buffer>,
        w: &Weight<Self::WeightStore>,
        eps: f32,
        out: &mut Act<Self::Buffer>,
    ) -> Result<()>;
    /// In-place RMS norm over each `w.cols`-wide group of every row (per-head Q/K norm).
    fn rms_norm_groups(
        &self,
        x: &mut Act<Self::Buffer>,
        w: &Weight<Self::WeightStore>,
        eps: f32,
    ) -> Result<()>;
    /// Which rows of the products to come are prompt tokens (`AttnSeq::generated_from`): the
    /// model says so for a step's `n` rows before its layers (`Some`) and takes it back
    /// (`None`) around products of other rows (an expert's gathered tokens) and after them. A
    /// backend may multiply prompt rows with other kernels than generated ones (the CPU's AMX
    /// BF16 tiles), never by the step's shape. Ignored by default.
    fn step_rows(&self, _rows: Option<(&[AttnSeq], usize)>) {}
    /// out = x · wᵀ (+ bias); x `[n, w.cols]`, out `[n, w.rows]`.
    fn linear(
        &self,
        x: &Act<Self::Buffer>,
        w: &Weight<Self::WeightStore>,
        bias: Option<&Weight<Self::WeightStore>>,
        out: &mut Act<Self::Buffer>,
    ) -> Result<()>;
    /// Several products of one input (Q/K/V, gate/up): `outs[i] = x · ws[i].0ᵀ (+ ws[i].1)`.
    /// A backend may run them as one pass (one activation conversion, one synchronisation).
    fn linear_many(
        &self,
        x: &Act<Self::Buffer>,
        ws: &[Product<'_, Self::WeightStore>],
        outs: &mut [&mut Act<Self::Buffer>],
    ) -> Result<()> {
        if ws.len() != outs.len() {
            return Err(shape_err(
                "linear_many",
                format!("{} weights for {} outputs", ws.len(), outs.len()),
            ));
        }
        for ((w, b), o) in ws.iter().zip(outs.iter_mut()) {
            self.linear(x, w, *b, o)?;
        }
        Ok(())
    }
    /// Rotary position embedding in place; one position per row.
    fn rope(&self, x: &mut Act<Self::Buffer>, positions: &[u32], rope: &RopeParams) -> Result<()>;
    /// Store each row of k and v into its slot of layer `layer`.
    fn write_kv(
        &self,
        k: &Act<Self::Buffer>,
        v: &Act<Self::Buffer>,
        slots: &[u32],
        kv: &mut KvPages<Self::KvBuffer>,
        layer: usize,
    ) -> Result<()>;
    /// Causal attention of q rows over the paged cache (which already holds this step's K/V).
    fn attention(
        &self,
        q: &Act<Self::Buffer>,
        kv: &KvPages<Self::KvBuffer>,
        meta: &AttnMeta<'_>,
        layer: usize,
        out: &mut Act<Self::Buffer>,
    ) -> Result<()>;
    /// out = silu(gate) * up
    fn silu_mul(
        &self,
        gate: &Act<Self::Buffer>,
        up: &Act<Self::Buffer>,
        out: &mut Act<Self::Buffer>,
    ) -> Result<()>;
    /// acc += x
    fn add(&self, acc: &mut Act<Self::Buffer>, x: &Act<Self::Buffer>) -> Result<()>;
    /// out = gelu(gate) * up, GELU's tanh approximation (Gemma's GeGLU). Only where
    /// `Capabilities::gelu_and_scale`.
    fn gelu_mul(
        &self,
        _gate: &Act<Self::Buffer>,
        _up: &Act<Self::Buffer>,
        _out: &mut Act<Self::Buffer>,
    ) -> Result<()> {
        Err(BackendError::Unsupported {
            backend: self.caps().name,
            feature: "GELU-gated MLPs",
        })
    }
    /// x *= s (Gemma's embedding scale). Only where `Capabilities::gelu_and_scale`.
    fn scale(&self, _x: &mut Act<Self::Buffer>, _s: f32) -> Result<()> {
        Err(BackendError::Unsupported {
            backend: self.caps().name,
            feature: "scaled embeddings",
        })
    }

    /// out[i] = x[rows[i]]: the tokens routed to one expert, gathered. Only where
    /// `Capabilities::experts`.
    fn gather_rows(
        &self,
        _x: &Act<Self::Buffer>,
        _rows: &[u32],
        _out: &mut Act<Self::Buffer>,
    ) -> Result<()> {
        Err(BackendError::Unsupported {
            backend: self.caps().name,
            feature: "mixture-of-experts layers",
        })
    }
    /// acc[rows[i]] += weights[i] · x[i]: an expert's outputs back to their tokens, weighted by
    /// the router. Rows are applied in order (a row may repeat). Only where
    /// `Capabilities::experts`.
    fn add_rows_scaled(
        &self,
        _acc: &mut Act<Self::Buffer>,
        _x: &Act<Self::Buffer>,
        _rows: &[u32],
        _weights: &[f32],
    ) -> Result<()> {
        Err(BackendError::Unsupported {
            backend: self.caps().name,
            feature: "mixture-of-experts layers",
        })
    }

    // Fused steps of the decoder block. Each is defined by the ops above (the default bodies);
    // a backend overrides them to save passes over memory and launches (a GPU decode step is
    // bound by the number of small kernels as much as by the weights it reads).

    /// acc += x · wᵀ: a product folded into the residual stream. `tmp` (`[n, w.rows]`) is
    /// scratch the backend may use.
    fn linear_add(
        &self,
        x: &Act<Self::Buffer>,
        w: &Weight<Self::WeightStore>,
        tmp: &mut Act<Self::Buffer>,
        acc: &mut Act<Self::Buffer>,
    ) -> Result<()> {
        self.linear(x, w, None, tmp)?;
        self.add(acc, tmp)
    }
    /// out = silu(x · gateᵀ) * (x · upᵀ), the gated MLP's first half. `g` and `u`
    /// (`[n, gate.rows]`) are scratch the backend may use.
    fn gated_linear(
        &self,
        x: &Act<Self::Buffer>,
        gate: &Weight<Self::WeightStore>,
        up: &Weight<Self::WeightStore>,
        g: &mut Act<Self::Buffer>,
        u: &mut Act<Self::Buffer>,
        out: &mut Act<Self::Buffer>,
    ) -> Result<()> {
        self.linear_many(x, &[(gate, None), (up, None)], &mut [&mut *g, &mut *u])?;
        self.silu_mul(g, u, out)
    }
    /// The MLP block: x += silu(n · gateᵀ) * (n · upᵀ) · downᵀ with n = rms_norm(x) by `norm`
    /// (weight, eps). `s` is scratch the backend may use.
    fn mlp(
        &self,
        x: &mut Act<Self::Buffer>,
        norm: (&Weight<Self::WeightStore>, f32),
        [gate, up, down]: [&Weight<Self::WeightStore>; 3],
        s: MlpScratch<'_, Self::Buffer>,
    ) -> Result<()> {
        self.rms_norm(x, norm.0, norm.1, s.normed)?;
        self.gated_linear(s.normed, gate, up, s.g, s.u, s.act)?;
        self.linear_add(s.act, down, s.out, x)
    }
    /// `linear_many` of rms_norm(x) by `norm` (weight, eps): the attention block's input norm and
    /// Q/K/V products. `h` (x's shape) is scratch the backend may use.
    fn norm_linear_many(
        &self,
        x: &Act<Self::Buffer>,
        norm: (&Weight<Self::WeightStore>, f32),
        ws: &[Product<'_, Self::WeightStore>],
        outs: &mut [&mut Act<Self::Buffer>],
        h: &mut Act<Self::Buffer>,
    ) -> Result<()> {
        self.rms_norm(x, norm.0, norm.1, h)?;
        self.linear_many(h, ws, outs)
    }
    /// Rotary embedding of q and k in place, then k and v into their slots of layer `layer`:
    /// everything between the Q/K/V products and attention.
    #[allow(clippy::too_many_arguments)]
    fn rope_write_kv(
        &self,
        q: &mut Act<Self::Buffer>,
        k: &mut Act<Self::Buffer>,
        v: &Act<Self::Buffer>,
        positions: &[u32],
        rope: (&RopeParams, &RopeParams),
        slots: &[u32],
        kv: &mut KvPages<Self::KvBuffer>,
        layer: usize,
    ) -> Result<()> {
        self.rope(q, positions, rope.0)?;
        self.rope(k, positions, rope.1)?;
        self.write_kv(k, v, slots, kv, layer)
    }
    /// The `k` largest logits of each selected row of x with their token ids, largest first and
    /// the lower id first on ties (`rows.len() * k` pairs; k = 1 is the greedy token), and with
    /// `mass` each row's whole-vocabulary normalizer (`TopLogits::mass`), computed where the
    /// logits are so that a GPU sends back candidates instead of whole vocabularies. A row
    /// whose logits are not all finite comes back as `(u32::MAX, NaN)` pairs (and a NaN mass).
    /// `None`: this backend does not do it (for this k); the caller takes `logits` instead.
    fn top_logits(
        &self,
        _x: &Act<Self::Buffer>,
        _rows: &[u32],
        _lm_head: &Weight<Self::WeightStore>,
        _k: usize,
        _mass: bool,
    ) -> Result<Option<TopLogits>> {
        Ok(None)
    }
    /// One token per selected row of x, drawn where the logits are (a GPU then sends back ids,
    /// not vocabularies), as the host sampler draws without top-k and top-p: temperature ≤ 0 is
    /// the first largest logit; otherwise weights exp((l − max) / temperature) over the tokens
    /// with exp(l − max) ≥ min_p, and the first token, in vocabulary order, whose cumulative
    /// weight exceeds u · total. `u32::MAX` for a row whose logits are not all finite. `None`:
    /// not offered; the caller takes `logits` instead.
    fn sample_logits(
        &self,
        _x: &Act<Self::Buffer>,
        _rows: &[u32],
        _lm_head: &Weight<Self::WeightStore>,
        _draws: &[Draw],
    ) -> Result<Option<Vec<u32>>> {
        Ok(None)
    }
    /// Logits (f32, on the host) for the selected rows of x: `out` is `[rows.len(), lm_head.rows]`.
    fn logits(
        &self,
        x: &Act<Self::Buffer>,
        rows: &[u32],
        lm_head: &Weight<Self::WeightStore>,
        out: &mut [f32],
    ) -> Result<()>;
}

#[cfg(test)]
mod tests {
    use super::KvDType;

    #[test]
    fn kv_type_names_read_back() {
        for t in [KvDType::F32, KvDType::F16, KvDType::Q8_0] {
            assert_eq!(KvDType::parse(t.name()), Some(t));
        }
    }
}
