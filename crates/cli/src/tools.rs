//! `pull`, `list`, `tokenize` and `perplexity`.

use crate::load::{load, resolve, tokenizer_for};
use anyhow::{anyhow, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use suanli_formats::{catalog, open_model};

pub fn pull(name: &str) -> Result<()> {
    let entry = catalog::find(name).ok_or_else(|| catalog::PullError::Unknown(name.to_owned()))?;
    match catalog::cached(entry) {
        Some(p) => eprintln!("{} is already cached at {}", entry.name, p.display()),
        None => {
            catalog::pull(entry)?;
        }
    }
    crate::outln!("{}", catalog::model_path(entry).display());
    Ok(())
}

pub fn list() -> Result<()> {
    crate::outln!("{:<22} {:>9}  {:<8} description", "name", "size", "cached");
    for e in catalog::CATALOG {
        let cached = if catalog::cached(e).is_some() {
            "yes"
        } else {
            "no"
        };
        let default = if e.name == catalog::DEFAULT_MODEL {
            " (default)"
        } else {
            ""
        };
        crate::outln!(
            "{:<22} {:>6} MB  {:<8} {}{}",
            e.name,
            e.size / 1_000_000,
            cached,
            e.description,
            default
        );
    }
    crate::outln!("cache: {}", catalog::home().join("models").display());
    Ok(())
}

#[derive(Args)]
pub struct TokenizeArgs {
    #[arg(long)]
    pub model: Option<String>,
    /// Parse control-token strings such as <|im_start|> as their tokens.
    #[arg(long)]
    pub special: bool,
    #[arg(long)]
    pub json: bool,
    pub text: String,
}

pub fn tokenize(a: TokenizeArgs) -> Result<()> {
    let path = resolve(a.model.as_deref())?;
    let src = open_model(&path)?;
    let tok = tokenizer_for(&src)?;
    let ids = tok
        .encode_prompt(&a.text, a.special)
        .map_err(|e| anyhow!(e))?;
    if a.json {
        crate::outln!("{}", serde_json::json!({ "ids": ids }));
    } else {
        for id in ids {
            crate::outln!("{id:>8} {:?}", tok.token_text(id));
        }
    }
    Ok(())
}

#[derive(Args)]
pub struct PerplexityArgs {
    #[arg(long)]
    pub model: Option<String>,
    /// Text file to score.
    #[arg(long)]
    pub file: std::path::PathBuf,
    /// Tokens per chunk.
    #[arg(long, default_value_t = 512)]
    pub ctx: usize,
    /// Score at most this many chunks (0: all).
    #[arg(long, default_value_t = 0)]
    pub chunks: usize,
    #[arg(long)]
    pub json: bool,
}

pub fn perplexity(a: PerplexityArgs, opts: &crate::load::Opts) -> Result<()> {
    crate::on_device!(opts, perplexity_on(a, opts))
}

fn perplexity_on<B: crate::load::Hardware>(
    a: PerplexityArgs,
    opts: &crate::load::Opts,
) -> Result<()> {
    let text = std::fs::read_to_string(&a.file)
        .with_context(|| format!("reading {}", a.file.display()))?;
    let mut l = load::<B>(a.model.as_deref(), opts, a.ctx, a.ctx.min(512))?;
    if l.session.ctx() < a.ctx {
        anyhow::bail!(
            "--ctx {} exceeds the model's context length {}",
            a.ctx,
            l.session.ctx()
        );
    }
    let mut tokens = l.tokenizer.encode(&text, false).map_err(|e| anyhow!(e))?;
    if a.chunks > 0 {
        tokens.truncate(a.chunks * a.ctx);
    }
    let bos = if l.tokenizer.add_bos {
        l.tokenizer.bos_id
    } else {
        None
    };
    let n_chunks = tokens.len() / a.ctx.max(1);
    let bar = ProgressBar::new(n_chunks as u64);
    bar.set_style(
        ProgressStyle::with_template("perplexity [{bar:30}] {pos}/{len} chunks {msg} {elapsed}")
            .expect("static template"),
    );
    let r = suanli_engine::perplexity::perplexity(
        &mut l.session,
        &tokens,
        a.ctx,
        bos,
        &mut |c, _, ppl| {
            bar.set_position(c as u64);
            bar.set_message(format!("ppl {ppl:.4}"));
        },
    )?;
    bar.finish_and_clear();
    if a.json {
        crate::outln!(
            "{}",
            serde_json::json!({"perplexity": r.perplexity, "n_chunks": r.n_chunks, "n_scored": r.n_scored})
        );
    } else {
        crate::outln!(
            "perplexity: {:.4} over {} chunks of {} tokens ({} scored)",
            r.perplexity,
            r.n_chunks,
            a.ctx,
            r.n_scored
        );
    }
    Ok(())
}
