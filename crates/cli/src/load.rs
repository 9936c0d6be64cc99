//! Resolve `--model` (catalog name, GGUF file or HF directory), then load tokenizer and model.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::time::Instant;
use suanli_cpu::CpuBackend;
use suanli_engine::Session;
use suanli_formats::{catalog, open_model, ModelSource};
use suanli_models::Model;
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
            "--model {name:?} is neither a file, a directory, a hub reference (hf:ORG/REPO[/FILE.gguf]), nor a catalog model (catalog: {})",
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

/// Options that apply to every command that runs a model.
pub struct Opts {
    pub threads: Option<usize>,
    pub kv: suanli_backend::KvDType,
}

pub struct Loaded {
    pub session: Session<CpuBackend>,
    pub tokenizer: Tokenizer,
}

/// A loaded model with its tokenizer, before any KV cache is allocated.
pub struct Parts {
    pub backend: CpuBackend,
    pub model: Model<CpuBackend>,
    pub tokenizer: Tokenizer,
    pub path: PathBuf,
}

/// Resolve, open and load a model; checks that tokenizer and model agree.
pub fn load_parts(model: Option<&str>, opts: &Opts) -> Result<Parts> {
    let path = resolve(model)?;
    let t0 = Instant::now();
    let src = open_model(&path)?;
    let tokenizer = tokenizer_for(&src)?;
    let backend = CpuBackend::new(opts.threads).map_err(anyhow::Error::msg)?;
    let detail = suanli_backend::Backend::caps(&backend).detail.clone();
    let model = Model::load(&src, &backend)?;
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
        "loaded {} ({} layers, hidden {}, vocab {}) from {} in {:.2}s — cpu: {}",
        c.arch.name(),
        c.num_hidden_layers,
        c.hidden_size,
        c.vocab_size,
        path.display(),
        t0.elapsed().as_secs_f64(),
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
pub fn load(model: Option<&str>, opts: &Opts, ctx: usize, chunk: usize) -> Result<Loaded> {
    let p = load_parts(model, opts)?;
    let session = Session::with_kv(p.backend, p.model, ctx, chunk, opts.kv)
        .context("allocating the KV cache")?;
    Ok(Loaded {
        session,
        tokenizer: p.tokenizer,
    })
}
