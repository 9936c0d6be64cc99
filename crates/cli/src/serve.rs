//! `suanli serve`: load a model and serve the OpenAI API with continuous batching.

use crate::load::load_parts;
use anyhow::{bail, Context, Result};
use clap::Args;
use std::time::Duration;
use suanli_engine::batch::BatchEngine;
use suanli_engine::scheduler::SchedConfig;
use suanli_engine::session::BLOCK_SIZE as BLOCK;
use suanli_server::access_log::AccessLog;
use suanli_server::ServeConfig;

#[derive(Args)]
pub struct ServeArgs {
    /// Catalog name, GGUF file or Hugging Face directory (default: the catalog's default model).
    #[arg(long)]
    pub model: Option<String>,
    /// The model id clients send as `model` (default: the catalog name or the file's name).
    #[arg(long)]
    pub model_name: Option<String>,
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Require `Authorization: Bearer KEY` on the API routes.
    #[arg(long, env = "SUANLI_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Sequences decoded together in one step.
    #[arg(long, default_value_t = 16)]
    pub max_batch: usize,
    /// Requests that may wait for a place in the batch; beyond that, 503 with Retry-After.
    #[arg(long, default_value_t = 256)]
    pub max_queue: usize,
    /// Longest context (prompt + answer) of one request, in tokens.
    #[arg(long, default_value_t = 4096)]
    pub ctx: usize,
    /// Memory for the KV cache shared by all requests, e.g. 1GiB or 512MB (default: one full
    /// --ctx and 1024 tokens for each other sequence of a batch, at most a quarter of the
    /// available memory).
    #[arg(long, value_parser = parse_size)]
    pub kv_memory: Option<u64>,
    /// Tokens computed in one step (decode tokens plus prompt chunks).
    #[arg(long, default_value_t = 512)]
    pub max_step_tokens: usize,
    /// Largest request body, e.g. 16MiB; larger ones get 413.
    #[arg(long, default_value = "16MiB", value_parser = parse_size)]
    pub max_body: u64,
    /// After SIGTERM, seconds that requests in flight may take to finish.
    #[arg(long, default_value_t = 30)]
    pub shutdown_timeout: u64,
    /// A reasoning model's `<think>…</think>`: `separate` sends it to `reasoning_content`,
    /// `none` leaves it in `content`.
    #[arg(long, default_value = "separate", value_parser = ["separate", "none"])]
    pub reasoning_format: String,
    /// Speculative decoding for every request (`--spec ngram`, or `--spec draft` with
    /// `--draft-model`: the model drafts for a sequence decoding alone): each sequence
    /// drafts as far as its acceptance rate beats what a row costs the whole step, so a busy
    /// batch drafts little. Answers are the same either way.
    #[command(flatten)]
    pub spec: crate::run::SpecArgs,
    /// Publish KV-cache events (prefix-cache blocks stored and evicted) in vLLM's format, for
    /// KV-aware routers. As in vLLM, `tcp://*:PORT` binds (routers connect to it:
    /// `vllm-router --policy kv_aware --kv-event-source URL=tcp://HOST:PORT`) and any other
    /// host connects to a subscriber that binds (llm-d's KV-cache indexer).
    #[arg(long, value_name = "ENDPOINT")]
    pub kv_events: Option<String>,
    /// Answer replay requests for missed event batches on this ZeroMQ endpoint.
    #[arg(long, value_name = "ENDPOINT", requires = "kv_events")]
    pub kv_events_replay: Option<String>,
    /// First frame (topic) of every event message.
    #[arg(long, value_name = "TOPIC", default_value = "", requires = "kv_events")]
    pub kv_events_topic: String,
    /// Seed of the event block hashes (vLLM's PYTHONHASHSEED, read from there when unset):
    /// replicas sharing it name equal prompt blocks alike. Unset: this process's own hashes.
    #[arg(long, value_name = "SEED", requires = "kv_events")]
    pub kv_events_hash_seed: Option<String>,
    /// The line each request writes to standard error once answered (method, route, status,
    /// time, tokens): `text`, or `json` (one object per line) for log collectors.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    /// No line per request.
    #[arg(long, conflicts_with = "log_format")]
    pub no_access_log: bool,
}

/// "1GiB", "512MiB", "800MB", "2G", "4096" (bytes).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let x: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size such as 1GiB or 512MB"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "kib" => 1024.0,
        "m" | "mb" => 1e6,
        "mib" => 1024.0 * 1024.0,
        "g" | "gb" => 1e9,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        u => {
            return Err(format!(
                "{u:?} is not a size unit (B, KB, KiB, MB, MiB, GB, GiB)"
            ))
        }
    };
    let v = x * mult;
    if !(v.is_finite() && (1.0..1e15).contains(&v)) {
        return Err(format!("{s:?} is not a usable size"));
    }
    Ok(v as u64)
}

pub fn serve(a: ServeArgs, opts: &crate::load::Opts) -> Result<()> {
    crate::on_device!(opts, serve_on(a, opts))
}

fn serve_on<B: crate::load::Hardware>(a: ServeArgs, opts: &crate::load::Opts) -> Result<()> {
    if a.max_batch == 0 || a.max_step_tokens == 0 || a.ctx < 2 {
        bail!("--max-batch and --max-step-tokens must be at least 1, --ctx at least 2");
    }
    // Checked before the model loads.
    let spec = a.spec.config()?;
    let draft_path = match &a.spec.draft_model {
        Some(name) => Some(crate::load::resolve(Some(name)).context("--draft-model")?),
        None => None,
    };
    // The port first: a busy one fails now, not after loading; while the model loads the
    // socket answers `/health` (alive) and `/ready` (503) for probes and routers.
    let bound = suanli_server::bind(&a.host, a.port)?;
    eprintln!(
        "listening on http://{} while the model loads (/health answers now, /ready once it is loaded)",
        bound.addr
    );
    let kv_events = match &a.kv_events {
        Some(endpoint) => {
            for ep in [Some(endpoint), a.kv_events_replay.as_ref()]
                .into_iter()
                .flatten()
            {
                suanli_server::kv_events::check_endpoint(ep)
                    .map_err(|e| anyhow::anyhow!("--kv-events: {e}"))?;
            }
            Some(bound.publish_kv_events(kv_events_config(&a, endpoint))?)
        }
        None => None,
    };
    let p = load_parts::<B>(a.model.as_deref(), opts)?;
    let model_name = a.model_name.clone().unwrap_or_else(|| {
        let given = a
            .model
            .as_deref()
            .unwrap_or(suanli_formats::catalog::DEFAULT_MODEL);
        if suanli_formats::catalog::find(given).is_some() {
            given.to_owned()
        } else {
            p.path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| given.to_owned())
        }
    });
    let ctx = crate::load::within_trained(a.ctx, p.model.cfg.max_position_embeddings);
    let block_bytes = p.model.kv_spec(1, BLOCK, opts.kv).bytes_per_block() as u64;
    let ctx_blocks = ctx.div_ceil(BLOCK) as u64;
    let kv_bytes = match a.kv_memory {
        Some(b) => b,
        None => {
            let tokens = default_kv_tokens(ctx, a.max_batch);
            let want = tokens.div_ceil(BLOCK) as u64 * block_bytes;
            let cap = available_memory().map_or(u64::MAX, |m| m / 4);
            let bytes = want.min(cap).max(ctx_blocks * block_bytes);
            eprintln!(
                "KV cache sized for one {ctx}-token context and {} more of {} tokens{} \
                 (--kv-memory to choose)",
                a.max_batch - 1,
                ctx.min(DEFAULT_SHARE),
                if bytes < want {
                    ", capped at a quarter of the available memory"
                } else {
                    ""
                },
            );
            bytes
        }
    };
    let num_blocks = (kv_bytes / block_bytes) as usize;
    if (num_blocks as u64) < ctx_blocks {
        bail!(
            "--kv-memory {:.0} MiB holds {} tokens, less than one --ctx of {}; raise --kv-memory or lower --ctx",
            kv_bytes as f64 / 1048576.0,
            num_blocks * BLOCK,
            ctx
        );
    }
    let cfg = SchedConfig {
        max_batch: a.max_batch,
        max_step_tokens: a.max_step_tokens,
        max_queue: a.max_queue,
        block_size: BLOCK,
        num_blocks,
        max_ctx: ctx,
    };
    eprintln!(
        "KV cache: {} blocks of {BLOCK} tokens ({:.0} MiB, {} tokens of {:?}); batch {} sequences, {} tokens per step",
        num_blocks,
        (num_blocks as u64 * block_bytes) as f64 / 1048576.0,
        num_blocks * BLOCK,
        opts.kv,
        a.max_batch,
        a.max_step_tokens
    );
    let draft = match &draft_path {
        Some(path) => Some(crate::load::load_draft_model(
            path,
            a.spec.draft_load()?,
            &p.backend,
            &p.tokenizer,
        )?),
        None => None,
    };
    let eog: Vec<u32> = p.tokenizer.eog_ids.iter().copied().collect();
    let mut engine = BatchEngine::new(p.backend, p.model, cfg, opts.kv, eog)
        .context("allocating the KV cache")?;
    if let Some(model) = draft {
        engine
            .set_draft_model(model)
            .context("allocating the draft model's KV cache")?;
    }
    eprintln!("speculative decoding: {}", spec_line(spec.as_ref()));
    engine
        .set_speculation(spec)
        .map_err(|e| anyhow::anyhow!("--spec: {e}"))?;
    let scfg = ServeConfig {
        host: a.host,
        port: a.port,
        api_key: a.api_key.filter(|k| !k.is_empty()),
        model_name,
        max_body_bytes: a.max_body.min(usize::MAX as u64) as usize,
        shutdown_timeout: Duration::from_secs(a.shutdown_timeout),
        // Chat templates come from model files: render them in a memory-capped helper.
        template_sandbox: std::env::current_exe().ok(),
        header_read_timeout: Duration::from_secs(30),
        reasoning_separate: a.reasoning_format == "separate",
        kv_events,
        access_log: match (a.no_access_log, a.log_format.as_str()) {
            (true, _) => AccessLog::Off,
            (false, "json") => AccessLog::Json,
            _ => AccessLog::Text,
        },
    };
    bound.serve(scfg, engine, p.tokenizer)?;
    Ok(())
}

/// Context a request is assumed to use, beyond the first, when sizing the default KV cache.
const DEFAULT_SHARE: usize = 1024;

/// The default KV cache, in tokens: one request may use the whole context while the others of
/// a full batch use up to `DEFAULT_SHARE` each (more than that preempts and recomputes, never
/// fails). Sized to the model (its bytes per token) and `--ctx`, not to the machine.
fn default_kv_tokens(ctx: usize, max_batch: usize) -> usize {
    ctx + max_batch.saturating_sub(1) * ctx.min(DEFAULT_SHARE)
}

/// Memory the system could give now (Linux `MemAvailable`), if known.
fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb = info
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(kb * 1024)
}

fn kv_events_config(a: &ServeArgs, endpoint: &str) -> suanli_server::kv_events::KvEventsConfig {
    use suanli_engine::kv_events::BlockHasher;
    // The environment is read here, not by clap: a PYTHONHASHSEED set for other programs must
    // not make `serve` without --kv-events fail.
    let seed = a
        .kv_events_hash_seed
        .clone()
        .or_else(|| std::env::var("PYTHONHASHSEED").ok());
    let hasher = match seed.as_deref() {
        Some(seed) => {
            eprintln!("KV events on {endpoint}: block hashes seeded with {seed:?} (vLLM's sha256_cbor chain)");
            BlockHasher::seeded(seed)
        }
        None => {
            eprintln!(
                "KV events on {endpoint}: block hashes are this process's own; give \
                 --kv-events-hash-seed (or PYTHONHASHSEED) for hashes other replicas share"
            );
            BlockHasher::unseeded()
        }
    };
    suanli_server::kv_events::KvEventsConfig {
        endpoint: endpoint.to_string(),
        replay_endpoint: a.kv_events_replay.clone(),
        topic: a.kv_events_topic.clone(),
        buffer_steps: 10_000,
        hasher,
    }
}

/// What `--spec` does, for the start-up log.
fn spec_line(spec: Option<&suanli_engine::spec::SpecConfig>) -> &'static str {
    use suanli_engine::spec::SpecMode;
    match spec.map(|c| c.mode) {
        None => "off",
        Some(SpecMode::Auto) => {
            "auto (n-gram drafts while a batch is small enough for a row to cost under half a token; --spec off turns it off)"
        }
        Some(SpecMode::Ngram) => "ngram (n-gram drafts for every request, as far as they pay)",
        Some(SpecMode::Draft) => {
            "draft (the draft model for a request decoding alone, n-gram copies for every request)"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn the_default_kv_cache_holds_one_full_context_and_shares_for_the_rest() {
        use super::default_kv_tokens;
        assert_eq!(default_kv_tokens(4096, 16), 4096 + 15 * 1024);
        assert_eq!(default_kv_tokens(512, 8), 8 * 512);
        assert_eq!(default_kv_tokens(4096, 1), 4096);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("512MB"), Ok(512_000_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("1.5 GiB"), Ok(3 << 29));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("-1G").is_err());
        assert!(parse_size("1PB").is_err());
    }
}
