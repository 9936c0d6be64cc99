//! `suanli run`: one prompt, streamed.

use crate::load::load;
use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use std::io::Write;
use suanli_engine::session::Control;
use suanli_engine::stop::{StopMatcher, StopStep};
use suanli_engine::SamplingParams;
use suanli_tokenizer::{chat_prompt_full, ChatMessage, StreamDecoder, TemplateExtra};

#[derive(Args, Clone)]
pub struct SamplingArgs {
    /// 0 = greedy.
    // A negative value reaches the sampler's check (which names it) instead of clap's tip
    // to write `-- -1`, which would make it the prompt.
    #[arg(long, default_value_t = 0.8, allow_negative_numbers = true)]
    pub temperature: f32,
    /// 0 disables.
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    #[arg(long, default_value_t = 0.95, allow_negative_numbers = true)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0.05, allow_negative_numbers = true)]
    pub min_p: f32,
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub repeat_penalty: f32,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Maximum new tokens.
    #[arg(long, default_value_t = 512)]
    pub max_tokens: usize,
    /// Context length (tokens of prompt + answer).
    #[arg(long, default_value_t = 4096)]
    pub ctx: usize,
}

impl SamplingArgs {
    pub fn params(&self) -> Result<SamplingParams> {
        let p = SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            seed: self.seed,
            ..SamplingParams::default()
        };
        p.validate()
            .map_err(|e| anyhow!("--{}", e.replace('_', "-")))?;
        Ok(p)
    }
}

/// The speculation of `run`, `chat` and `serve` without `--spec`.
pub const DEFAULT_SPEC: &str = "auto";
/// `--draft-max` and `--spec-ngram` unless given.
pub const DEFAULT_DRAFT_MAX: usize = 10;
pub const DEFAULT_SPEC_NGRAM: usize = 4;

/// Speculative decoding (`run`, `chat`, `serve`, `bench`).
#[derive(Args, Clone)]
pub struct SpecArgs {
    /// Speculative decoding: off; auto (the default of run, chat and serve: ngram's drafts
    /// where a drafted row is cheap, as for an answer decoding alone or a small batch, none in
    /// a busy batch); ngram (drafts from earlier text, under a constraint its forced text
    /// first: pays when the answer repeats the prompt, as code edits do); or draft (a small
    /// model with the same tokenizer drafts: --draft-model). The output is the same either
    /// way.
    #[arg(long)]
    pub spec: Option<String>,
    /// The draft model of --spec draft (catalog name or file), e.g. qwen2.5-coder-0.5b for
    /// qwen2.5-coder-1.5b.
    #[arg(long)]
    pub draft_model: Option<String>,
    /// Most tokens drafted per step.
    #[arg(long, default_value_t = DEFAULT_DRAFT_MAX)]
    pub draft_max: usize,
    /// The longest suffix of the text looked up for n-gram drafts (down to 2 tokens).
    #[arg(long, default_value_t = DEFAULT_SPEC_NGRAM)]
    pub spec_ngram: usize,
    /// Always verify the whole proposal, instead of following the acceptance rate and the
    /// measured cost of verifying (which turns speculation off where it does not pay).
    #[arg(long)]
    pub draft_fixed: bool,
    /// What the draft model's matrices are stored as: q4_0 (default: re-quantized at load
    /// where the file spends more bits, so each drafted token reads fewer bytes; drafts are
    /// only proposals, every output is the model's own) or file (as the file stores them).
    #[arg(long)]
    pub draft_quant: Option<String>,
    /// The draft model's output rows: short (default: a second head of the vocabulary's
    /// first 65,536 tokens and its control tokens, which drafts take while the text's tokens
    /// lie among them, as English prose and code do: a quarter of the whole head's bytes per
    /// drafted token) or full (the whole head only).
    #[arg(long)]
    pub draft_head: Option<String>,
}

impl SpecArgs {
    /// The speculation settings, `auto` where `--spec` is not given: drafts are verified, so
    /// no answer changes, and they are made only where a step is bound by reading the weights.
    pub fn config(&self) -> Result<Option<suanli_engine::spec::SpecConfig>> {
        use suanli_engine::spec::SpecMode;
        let spec = self.spec.as_deref().unwrap_or(DEFAULT_SPEC);
        let mode = SpecMode::parse(spec).map_err(|e| anyhow!("--spec: {e}"))?;
        if mode != Some(SpecMode::Draft) {
            if self.draft_model.is_some() {
                bail!("--draft-model is for --spec draft");
            }
            if self.draft_quant.is_some() {
                bail!("--draft-quant is for --spec draft");
            }
            if self.draft_head.is_some() {
                bail!("--draft-head is for --spec draft");
            }
        }
        let Some(mode) = mode else {
            return Ok(None);
        };
        self.draft_load()?;
        let cfg = suanli_engine::spec::SpecConfig {
            max_draft: self.draft_max,
            ngram_max: self.spec_ngram,
            ngram_min: self.spec_ngram.min(2),
            adaptive: !self.draft_fixed,
            ..suanli_engine::spec::SpecConfig::new(mode)
        };
        cfg.validate()
            .map_err(|e| anyhow!("--draft-max/--spec-ngram: {e}"))?;
        if mode == SpecMode::Draft && self.draft_model.is_none() {
            bail!("--spec draft needs --draft-model (a small model with the same tokenizer)")
        }
        Ok(Some(cfg))
    }

    /// The settings of a mode `--spec` names (`None` without `--spec`, or with `off`): what
    /// `bench` measures, and when `run` reports drafting that never happened.
    pub fn named(&self) -> Result<Option<suanli_engine::spec::SpecConfig>> {
        Ok(self.config()?.filter(|_| self.spec.is_some()))
    }

    /// How the draft model is loaded: the format its matrices are converted to
    /// (`--draft-quant`), if any, and whether it gets a short head (`--draft-head`).
    pub fn draft_load(&self) -> Result<crate::load::DraftOpts> {
        let requantize = match self.draft_quant.as_deref() {
            None | Some("q4_0") => Some(suanli_models::Requantize::Q4_0),
            Some("file") => None,
            Some(other) => bail!("--draft-quant {other:?}: one of q4_0, file"),
        };
        let short_head = match self.draft_head.as_deref() {
            None | Some("short") => true,
            Some("full") => false,
            Some(other) => bail!("--draft-head {other:?}: one of short, full"),
        };
        Ok(crate::load::DraftOpts {
            requantize,
            short_head,
        })
    }

    /// Set up `loaded`'s session: the draft model if any, then the speculation settings.
    pub fn apply<B: crate::load::Hardware>(
        &self,
        loaded: &mut crate::load::Loaded<B>,
        opts: &crate::load::Opts,
    ) -> Result<()> {
        let cfg = self.config()?;
        if let (Some(_), Some(name)) = (&cfg, &self.draft_model) {
            crate::load::load_draft(name, self.draft_load()?, loaded, opts)?;
        }
        loaded.session.set_speculation(cfg).map_err(|e| anyhow!(e))
    }
}

#[derive(Args)]
pub struct RunArgs {
    /// Catalog name, GGUF file or Hugging Face directory (default: the catalog's default model).
    #[arg(long)]
    pub model: Option<String>,
    /// Feed the prompt as is (plain completion), without the chat template.
    #[arg(long)]
    pub raw: bool,
    /// System message.
    #[arg(long)]
    pub system: Option<String>,
    /// Stop when this text appears (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    /// Print one JSON object when done instead of streaming.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    #[command(flatten)]
    pub constraint: crate::constrain::ConstraintArgs,
    #[command(flatten)]
    pub spec: SpecArgs,
    /// The prompt; `-`, or none when input is piped, reads it from standard input.
    pub prompt: Option<String>,
}

/// The prompt given, or standard input's (`-`, or none with input piped), trailing newlines cut.
fn prompt_text(given: Option<&str>) -> Result<String> {
    use std::io::{IsTerminal, Read};
    match given {
        Some(p) if p != "-" => return Ok(p.to_string()),
        None if std::io::stdin().is_terminal() => {
            bail!("give a prompt: suanli run \"…\" (or pipe one: echo hi | suanli run)")
        }
        _ => {}
    }
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .context("reading the prompt from standard input")?;
    let text = text.trim_end_matches(['\n', '\r']).to_string();
    if text.trim().is_empty() {
        bail!("the prompt read from standard input is empty");
    }
    Ok(text)
}

pub fn run(a: RunArgs, opts: &crate::load::Opts) -> Result<()> {
    crate::on_device!(opts, run_on(a, opts))
}

fn run_on<B: crate::load::Hardware>(a: RunArgs, opts: &crate::load::Opts) -> Result<()> {
    let params = a.sampling.params()?;
    a.spec.config()?;
    let prompt = prompt_text(a.prompt.as_deref())?;
    let mut l = load::<B>(a.model.as_deref(), opts, a.sampling.ctx, 256)?;
    a.spec.apply(&mut l, opts)?;
    let tok = &l.tokenizer;
    let (ids, rendered) = if a.raw {
        let ids = tok.encode_prompt(&prompt, false).map_err(|e| anyhow!(e))?;
        (ids, prompt.clone())
    } else {
        let mut msgs = Vec::new();
        if let Some(s) = &a.system {
            msgs.push(ChatMessage::new("system", s));
        }
        msgs.push(ChatMessage::new("user", &prompt));
        let template = match tok.template() {
            Some(t) => t?,
            None => bail!("this model has no chat template; use --raw for plain completion"),
        };
        chat_prompt_full(tok, &template, &msgs, &TemplateExtra::default())
            .map_err(|e| anyhow::anyhow!("{e}; use --raw for plain completion"))?
    };
    let thinks = !a.raw && crate::constrain::thinks_first(tok, &rendered);
    let mut constraint = a
        .constraint
        .compile(tok, l.session.model.vocab_size(), thinks)?
        .map(|c| c.constraint());
    let mut dec = StreamDecoder::new();
    let mut stops = StopMatcher::new(a.stop.clone());
    let mut text = String::new();
    let stdout = std::io::stdout();
    let json = a.json;
    let mut on_token = |id: u32| {
        let piece = dec.push(tok, id);
        match stops.push(&piece) {
            StopStep::Emit(s) => {
                emit(&stdout, &s, json);
                text.push_str(&s);
                Control::Continue
            }
            StopStep::Stop(s) => {
                emit(&stdout, &s, json);
                text.push_str(&s);
                Control::Stop
            }
        }
    };
    let g = l.session.generate_constrained(
        &ids,
        &params,
        a.sampling.max_tokens,
        &|t| tok.is_eog(t),
        &mut on_token,
        constraint
            .as_mut()
            .map(|c| c as &mut dyn suanli_engine::TokenConstraint),
    )?;
    let tail = dec.finish();
    let tail = match stops.push(&tail) {
        StopStep::Emit(s) | StopStep::Stop(s) => s,
    } + &stops.finish();
    emit(&stdout, &tail, json);
    text.push_str(&tail);
    eprintln!(
        "\n[{} prompt tokens in {:.2}s ({:.1} tok/s), {} generated at {:.1} tok/s, finish: {}]",
        g.prompt_tokens,
        g.prefill_secs,
        (g.prompt_tokens - g.cached_tokens) as f64 / g.prefill_secs.max(1e-9),
        g.tokens.len(),
        g.tokens_per_second(),
        g.finish_reason.as_str()
    );
    if g.spec.verify_steps > 0 || a.spec.named()?.is_some() {
        eprintln!(
            "[speculation: {} of {} drafted tokens accepted ({:.0}%), {:.2} tokens per verifying pass]",
            g.spec.accepted,
            g.spec.drafted,
            100.0 * g.spec.acceptance(),
            g.spec.mean_accepted_length()
        );
    }
    if json {
        let v = serde_json::json!({
            "text": text,
            "tokens": g.tokens,
            "prompt_tokens": g.prompt_tokens,
            "completion_tokens": g.tokens.len(),
            "finish_reason": g.finish_reason.as_str(),
            "tokens_per_second": g.tokens_per_second(),
            "drafted": g.spec.drafted,
            "accepted": g.spec.accepted,
        });
        crate::outln!("{v}");
    } else {
        crate::outln!();
    }
    Ok(())
}

fn emit(stdout: &std::io::Stdout, s: &str, json: bool) {
    if json || s.is_empty() {
        return;
    }
    let mut o = stdout.lock();
    // A closed stdout (e.g. piped into `head`) ends output quietly.
    let _ = o.write_all(s.as_bytes());
    let _ = o.flush();
}
