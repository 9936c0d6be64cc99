//! Resolve `--model` (catalog name, GGUF file or HF directory), then load tokenizer and model.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::time::Instant;
use suanli_backend::{Backend, Weight};
use suanli_cpu::CpuBackend;
use suanli_engine::Session;
use suanli_formats::{catalog, open_model, ModelSource};
use suanli_models::{Model, Requantize};
use suanli_tokenizer::Tokenizer;

/// A catalog name is pulled on first use; anything else must be an existing path.
pub fn resolve(model: Option<&str>) -> Result<PathBuf> {
    let name = model.unwrap_or(catalog::DEFAULT_MODEL);
    if name.starts_with("hf:") {
        return Ok(suanli_formats::hub::resolve(name)?);
    }
    let p = Path::new(name);
    if p.exists() {
        return Ok(p.to_owned());
    }
    match catalog::find(name) {
        Some(entry) => {
            if catalog::cached(entry).is_none() {
                eprintln!("pulling {} ({:.0} MB) into {} …", entry.name, entry.size as f64 / 1e6, catalog::home().display());
            }
            Ok(catalog::pull(entry)?)
        }
        None => bail!(
            "--model {name:?} is neither a file, a directory, a hub reference (hf:ORG/REPO[/FILE.gguf]), nor a catalog model{} (catalog: {})",
            catalog::suggestion(name),
            catalog::CATALOG.iter().map(|e| e.name).collect::<Vec<_>>().join(", ")
        ),
    }
}

pub fn tokenizer_for(src: &ModelSource) -> Result<Tokenizer> {
    Ok(match src {
        ModelSource::Gguf { file, .. } => Tokenizer::from_gguf(file)?,
        ModelSource::Hf(d) => Tokenizer::from_hf_dir(&d.dir)?,
    })
}

/// Where models run: `--device cpu` (default) or `--device cuda[:N]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda(usize),
}

pub fn parse_device(s: &str) -> std::result::Result<Device, String> {
    let s = s.trim().to_ascii_lowercase();
    match s.as_str() {
        "cpu" => Ok(Device::Cpu),
        "cuda" | "gpu" => Ok(Device::Cuda(0)),
        _ => s
            .strip_prefix("cuda:")
            .and_then(|n| n.parse().ok())
            .map(Device::Cuda)
            .ok_or_else(|| format!("{s:?} is not a device (cpu, cuda, cuda:N)")),
    }
}

/// Options that apply to every command that runs a model.
pub struct Opts {
    pub threads: Option<usize>,
    pub kv: suanli_backend::KvDType,
    pub device: Device,
}

/// What the commands need from a backend beyond the contract: opening it, and the figures
/// `bench` holds speed against.
pub trait Hardware: Backend + Sized {
    fn open(opts: &Opts) -> Result<Self>;
    /// Bytes a product with `w` streams from memory.
    fn weight_bytes(w: &Weight<Self::WeightStore>) -> usize;
    /// Memory bandwidth in GB/s (CPU: read bandwidth; GPU: device copy, read + write).
    fn bandwidth_gb_s(&self) -> Result<f64>;
    /// Backend facts for `bench --json`.
    fn bench_facts(&self) -> serde_json::Value;
    /// The int8 multiply-add peak (per second) that prefill is measured against, where the
    /// backend can probe it.
    fn int8_peak(&self) -> Option<f64> {
        None
    }
    /// The multiply-add peak that prefill of float weights is measured against, and its name
    /// (`sixteen_bit`: the weights are mostly BF16/F16 rather than F32).
    fn float_peak(&self, _sixteen_bit: bool) -> Option<(f64, &'static str)> {
        None
    }
    /// Seconds and multiply-adds of the matrix products run so far, where the backend counts
    /// them (`bench` holds the products alone against the peak).
    fn product_time(&self) -> Option<(f64, u64)> {
        None
    }
}

impl Hardware for CpuBackend {
    fn open(opts: &Opts) -> Result<Self> {
        CpuBackend::new(opts.threads).map_err(anyhow::Error::msg)
    }
    fn weight_bytes(w: &Weight<Self::WeightStore>) -> usize {
        CpuBackend::weight_bytes(w)
    }
    fn bandwidth_gb_s(&self) -> Result<f64> {
        Ok(self.read_bandwidth())
    }
    fn bench_facts(&self) -> serde_json::Value {
        serde_json::json!({"device": "cpu", "threads": self.threads(), "isa": self.isa().name()})
    }
    fn int8_peak(&self) -> Option<f64> {
        CpuBackend::int8_peak(self)
    }
    fn float_peak(&self, sixteen_bit: bool) -> Option<(f64, &'static str)> {
        CpuBackend::float_peak(self, sixteen_bit)
    }
    fn product_time(&self) -> Option<(f64, u64)> {
        Some(CpuBackend::product_time(self))
    }
}

#[cfg(feature = "cuda")]
impl Hardware for suanli_cuda::CudaBackend {
    fn open(opts: &Opts) -> Result<Self> {
        let Device::Cuda(n) = opts.device else {
            bail!("not a CUDA device")
        };
        suanli_cuda::CudaBackend::new(n).map_err(anyhow::Error::msg)
    }
    fn weight_bytes(w: &Weight<Self::WeightStore>) -> usize {
        suanli_cuda::CudaBackend::weight_bytes(w)
    }
    fn bandwidth_gb_s(&self) -> Result<f64> {
        Ok(self.copy_bandwidth()?)
    }
    fn bench_facts(&self) -> serde_json::Value {
        serde_json::json!({"device": Backend::caps(self).detail})
    }
}

/// The error for `--device cuda` in a build without the `cuda` feature.
#[cfg_attr(feature = "cuda", allow(dead_code))]
pub fn no_cuda() -> anyhow::Error {
    anyhow::anyhow!(
        "this suanli was built without CUDA support; build it with `cargo build --release --features cuda` \
         (no CUDA toolkit needed to build; the driver and CUDA libraries are loaded at run time)"
    )
}

/// Call the generic function `f::<B>(args)` with the backend type `--device` names.
#[macro_export]
macro_rules! on_device {
    ($opts:expr, $f:ident ( $($arg:expr),* )) => {
        match $opts.device {
            $crate::load::Device::Cpu => $f::<suanli_cpu::CpuBackend>($($arg),*),
            #[cfg(feature = "cuda")]
            $crate::load::Device::Cuda(_) => $f::<suanli_cuda::CudaBackend>($($arg),*),
            #[cfg(not(feature = "cuda"))]
            $crate::load::Device::Cuda(_) => Err($crate::load::no_cuda()),
        }
    };
}

pub struct Loaded<B: Backend> {
    pub session: Session<B>,
    pub tokenizer: std::sync::Arc<Tokenizer>,
}

/// A loaded model with its tokenizer, before any KV cache is allocated.
pub struct Parts<B: Backend> {
    pub backend: B,
    pub model: Model<B>,
    pub tokenizer: Tokenizer,
    pub path: PathBuf,
}

/// Resolve, open and load a model; checks that tokenizer and model agree.
pub fn load_parts<B: Hardware>(model: Option<&str>, opts: &Opts) -> Result<Parts<B>> {
    let path = resolve(model)?;
    let t0 = Instant::now();
    let src = open_model(&path)?;
    // The tokenizer is built on a thread of its own while the weights load (its vocabulary
    // maps are one thread's work; repacking the weights is the pool's).
    let (tokenizer, backend, model) = std::thread::scope(|scope| -> Result<_> {
        let tok = scope.spawn(|| tokenizer_for(&src));
        let loaded = B::open(opts).and_then(|backend| {
            let model = Model::load(&src, &backend)?;
            Ok((backend, model))
        });
        let tokenizer = tok
            .join()
            .map_err(|_| anyhow::anyhow!("building the tokenizer panicked"))??;
        let (backend, model) = loaded?;
        Ok((tokenizer, backend, model))
    })?;
    let detail = backend.caps().detail.clone();
    if tokenizer.vocab_size() > model.vocab_size() {
        bail!(
            "{}: the tokenizer has {} tokens but the model's embedding table only {}",
            path.display(),
            tokenizer.vocab_size(),
            model.vocab_size()
        );
    }
    let c = &model.cfg;
    eprintln!(
        "loaded {} ({} layers, hidden {}, vocab {}) from {} in {:.2}s — {}: {}",
        c.arch.name(),
        c.num_hidden_layers,
        c.hidden_size,
        c.vocab_size,
        path.display(),
        t0.elapsed().as_secs_f64(),
        backend.caps().name,
        detail
    );
    Ok(Parts {
        backend,
        model,
        tokenizer,
        path,
    })
}

/// Load everything needed to generate. `ctx`: context length; `chunk`: prefill step size.
pub fn load<B: Hardware>(
    model: Option<&str>,
    opts: &Opts,
    ctx: usize,
    chunk: usize,
) -> Result<Loaded<B>> {
    let p = load_parts::<B>(model, opts)?;
    let ctx = within_trained(ctx, p.model.cfg.max_position_embeddings);
    let session = Session::with_kv(p.backend, p.model, ctx, chunk, opts.kv)
        .context("allocating the KV cache")?;
    Ok(Loaded {
        session,
        tokenizer: std::sync::Arc::new(p.tokenizer),
    })
}

/// `--ctx` kept within the model's trained context, with a notice when lowered: beyond it
/// positions were never seen (and dynamic NTK scaling would change the rotary frequencies).
pub fn within_trained(ctx: usize, trained: usize) -> usize {
    if ctx > trained {
        eprintln!("--ctx {ctx} is beyond the model's trained context of {trained} tokens; using {trained}");
    }
    ctx.min(trained)
}

/// Load `name` as the draft model of `loaded`'s session (speculative decoding), on the same
/// backend. Its tokenizer must be the model's: the same vocabulary, token for token.
pub fn load_draft<B: Hardware>(
    name: &str,
    how: DraftOpts,
    loaded: &mut Loaded<B>,
    opts: &Opts,
) -> Result<()> {
    let s = &mut loaded.session;
    let path = resolve(Some(name))?;
    let model = load_draft_model(&path, how, &s.backend, &loaded.tokenizer)?;
    s.set_draft_model(model, opts.kv)
        .context("allocating the draft model's KV cache")?;
    Ok(())
}

/// How a draft model is loaded (`--draft-quant`, `--draft-head`).
#[derive(Clone, Copy, Debug)]
pub struct DraftOpts {
    /// Its matrices converted where the file spends more bits on them.
    pub requantize: Option<Requantize>,
    /// A short head beside the whole one (`short_head_tokens`).
    pub short_head: bool,
}

/// A draft model's short head: the vocabulary's first `SHORT_HEAD` tokens and its control
/// tokens (the chat template's, the end of a turn), where the vocabulary has at least twice as
/// many. Byte-level BPE vocabularies number their tokens in merge order, frequent ones first:
/// 91–98 % of the tokens of Qwen2.5-Coder-1.5B's English answers to `bench/spec-chat.jsonl`
/// lie there (the rest: words such as "terminology", names such as "Juliet", Markdown's
/// "**:"), against 23–41 % of its Chinese answers' (those draft with the whole head).
pub fn short_head_tokens(tok: &Tokenizer) -> Option<Vec<u32>> {
    let vocab = tok.vocab_size();
    (vocab >= 2 * SHORT_HEAD).then(|| {
        (0..vocab as u32)
            .filter(|&t| (t as usize) < SHORT_HEAD || tok.is_control(t))
            .collect()
    })
}

/// Tokens at the start of the vocabulary a draft model's short head holds.
const SHORT_HEAD: usize = 65536;

/// Load the model at `path` (resolved) on `backend` as a draft model for a model with tokenizer
/// `main`: refused unless its tokenizer is the same, token for token (padding entries past
/// the shorter vocabulary aside: `Tokenizer::drafting_mismatch`). With `how.requantize`, its
/// matrices are converted where the file spends more bits on them.
pub fn load_draft_model<B: Backend>(
    path: &Path,
    how: DraftOpts,
    backend: &B,
    main: &Tokenizer,
) -> Result<Model<B>> {
    let t0 = Instant::now();
    let src = open_model(path)?;
    let tok = tokenizer_for(&src)?;
    if let Some(why) = main.drafting_mismatch(&tok) {
        bail!(
            "--draft-model {}: its vocabulary differs from the model's ({} vs {} tokens: {why}); \
             a draft model must share the tokenizer",
            path.display(),
            tok.vocab_size(),
            main.vocab_size()
        );
    }
    let short_head = how.short_head.then(|| short_head_tokens(&tok)).flatten();
    let short = short_head.as_ref().map_or(String::new(), |ids| {
        format!(
            "; a head of {} of its {} tokens for text within them (--draft-head full: none)",
            ids.len(),
            tok.vocab_size()
        )
    });
    let load = suanli_models::DraftLoad {
        requantize: how.requantize,
        short_head,
        fast_head: true,
    };
    let model = Model::load_for_drafting(&src, backend, load)?;
    let c = &model.cfg;
    let r = model.requantized();
    let converted = match r.to {
        Some(to) if r.converted > 0 => format!(
            "; {} matrices re-quantized to {} for drafting ({:.0} → {:.0} MB; --draft-quant file keeps the file's)",
            r.converted,
            to.dtype(),
            r.bytes_before as f64 / 1e6,
            r.bytes_after as f64 / 1e6
        ),
        _ => String::new(),
    };
    eprintln!(
        "draft model {} ({} layers, hidden {}) from {} in {:.2}s{converted}{short}",
        c.arch.name(),
        c.num_hidden_layers,
        c.hidden_size,
        path.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(model)
}
