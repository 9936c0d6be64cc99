//! `suanli bench`: prefill and decode throughput like llama-bench (pp / tg), excluding
//! tokenization and sampling, with min / median / max over repetitions.

use crate::load::Hardware;
use crate::run::{DEFAULT_DRAFT_MAX, DEFAULT_SPEC_NGRAM};
use anyhow::{bail, Result};
use clap::Args;
use std::time::Instant;

#[derive(Args)]
pub struct BenchArgs {
    #[arg(long)]
    pub model: Option<String>,
    /// Prompt tokens processed in one prefill (0 skips the prefill test).
    #[arg(long, default_value_t = 512)]
    pub prompt_tokens: usize,
    /// Tokens generated one at a time (0 skips the decode test).
    #[arg(long, default_value_t = 128)]
    pub gen_tokens: usize,
    /// Tokens already in the context before each test; a list (`0,4096`) measures every depth
    /// within each repetition, in turn (so a shared machine's drift meets them alike), and
    /// gives each later depth's speed as a share of the first's, the median of the
    /// repetitions' own ratios.
    #[arg(long, value_delimiter = ',', default_value = "0")]
    pub depth: Vec<usize>,
    #[arg(long, default_value_t = 3)]
    pub repetitions: usize,
    /// Tokens per prefill step.
    #[arg(long, default_value_t = 512)]
    pub batch: usize,
    #[arg(long)]
    pub json: bool,
    /// Measure a model of random weights instead of a file: SHAPE[:TYPE], with SHAPE one of
    /// qwen2.5-0.5b, qwen2.5-1.5b, qwen2.5-7b, qwen2.5-72b, smollm2-135m, qwen3-30b-a3b (mixture of experts) and TYPE the matrices'
    /// weight type (bf16 default; f16, q8_0, q4_k, q6_k, …).
    #[arg(long, conflicts_with = "model")]
    pub random: Option<String>,
    /// Also measure aggregate decode of this many sequences at once (continuous batching):
    /// each gets a prompt of --prompt-tokens... capped at 128 and generates --gen-tokens.
    #[arg(long, default_value_t = 0)]
    pub parallel: usize,
    /// The --parallel sequences sample (seeded) at this temperature instead of greedily; with
    /// --top-k 0 that is the whole distribution, OpenAI's default.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Top-k of the --parallel sequences' sampling (0: off).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Top-p of the --parallel sequences' sampling (1: off).
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// With --spec: measure decoding with and without speculation on chat tasks instead
    /// (greedy; answers of at most --gen-tokens; --repetitions each way).
    #[command(flatten)]
    pub spec: crate::run::SpecArgs,
    /// With --spec: the tasks, one JSON object per line, {"kind": ..., "prompt": ...}
    /// (default: built-in code edits and English and Chinese questions).
    #[arg(long)]
    pub spec_prompts: Option<std::path::PathBuf>,
}

struct Stats {
    min: f64,
    median: f64,
    max: f64,
}

/// One depth's speeds, and (from the second depth on) their share of the first depth's.
struct DepthRuns {
    depth: usize,
    prefill: Option<Stats>,
    decode: Option<Stats>,
    prefill_vs_first: Option<f64>,
    decode_vs_first: Option<f64>,
}

/// The largest CPU cache (Linux sysfs), usually the shared L3.
fn last_level_cache_bytes() -> Option<u64> {
    let dir = std::fs::read_dir("/sys/devices/system/cpu/cpu0/cache").ok()?;
    dir.flatten()
        .filter_map(|e| {
            let size = std::fs::read_to_string(e.path().join("size")).ok()?;
            let size = size.trim();
            let (n, unit) = size.split_at(size.find(|c: char| !c.is_ascii_digit())?);
            let mult = match unit {
                "K" => 1 << 10,
                "M" => 1 << 20,
                _ => return None,
            };
            Some(n.parse::<u64>().ok()? * mult)
        })
        .max()
}

fn stats(mut v: Vec<f64>) -> Stats {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Stats {
        min: v[0],
        median,
        max: v[n - 1],
    }
}

/// Deterministic token ids below `vocab` (content does not matter for speed).
fn tokens(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s % vocab as u64) as u32
        })
        .collect()
}

/// Tokens fed once before measuring (wakes the threads and the caches up).
const WARM_TOKENS: usize = 8;

/// Peak resident memory of this process, from /proc (Linux).
pub fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

pub fn bench(a: BenchArgs, opts: &crate::load::Opts) -> Result<()> {
    crate::on_device!(opts, bench_on(a, opts))
}

fn bench_on<B: Hardware>(a: BenchArgs, opts: &crate::load::Opts) -> Result<()> {
    if a.repetitions == 0 {
        bail!("--repetitions must be at least 1");
    }
    // Measured only where --spec names a mode (bench has no default one).
    let spec = a.spec.named()?;
    let shaped = a.spec.draft_max != DEFAULT_DRAFT_MAX
        || a.spec.spec_ngram != DEFAULT_SPEC_NGRAM
        || a.spec.draft_fixed;
    if spec.is_none() && shaped {
        bail!("--draft-max, --spec-ngram and --draft-fixed shape a --spec run: add --spec ngram, auto or draft");
    }
    if spec.is_some() {
        if a.random.is_some() || a.parallel > 0 || a.depth.iter().any(|&d| d > 0) {
            bail!("--spec measures chat tasks on a model file: not with --random, --parallel or --depth");
        }
        if a.gen_tokens < 2 {
            bail!(
                "--spec times decoding after each answer's first token (the prefill gives it): \
                 --gen-tokens must be at least 2"
            );
        }
        let tasks = match &a.spec_prompts {
            Some(p) => crate::bench_spec::from_file(p)?,
            None => crate::bench_spec::builtin(),
        };
        return crate::bench_spec::run::<B>(
            a.model.as_deref(),
            opts,
            &a.spec,
            &tasks,
            a.gen_tokens,
            a.repetitions,
            a.json,
        );
    } else if a.spec_prompts.is_some() {
        bail!("--spec-prompts needs --spec");
    }
    if a.depth.is_empty() {
        bail!("--depth needs at least one value");
    }
    let deepest = a.depth.iter().copied().max().unwrap_or(0);
    // Room for the warm-up too (a prompt of 4 tokens asked for a 5-token context).
    let ctx = deepest + a.prompt_tokens.max(a.gen_tokens).max(WARM_TOKENS) + 1;
    let (backend, model) = match &a.random {
        Some(spec) => {
            let backend = B::open(opts)?;
            let src = crate::random::source(spec)?;
            let t0 = Instant::now();
            let model = suanli_models::Model::load(&src, &backend)?;
            eprintln!(
                "built {spec} with random weights in {:.1}s — {}",
                t0.elapsed().as_secs_f64(),
                backend.caps().detail
            );
            (backend, model)
        }
        None => {
            let p = crate::load::load_parts::<B>(a.model.as_deref(), opts)?;
            (p.backend, p.model)
        }
    };
    let mut session = suanli_engine::Session::with_kv(backend, model, ctx, a.batch.max(1), opts.kv)
        .map_err(|e| anyhow::anyhow!("allocating the KV cache: {e}"))?;
    let s = &mut session;
    let vocab = s.model.vocab_size();
    let detail = suanli_backend::Backend::caps(&s.backend).detail.clone();
    let depth_toks = tokens(deepest, vocab, 1);
    let warm = tokens(WARM_TOKENS, vocab, 2);
    s.reset();
    s.feed(&warm, WARM_TOKENS - 1)?;
    // Per depth, each repetition's prefill and decode speed.
    let nd = a.depth.len();
    let (mut pps, mut tgs) = (vec![Vec::new(); nd], vec![Vec::new(); nd]);
    // The first depth's prefills: the matrix products' own rate and their share of the time,
    // where the backend counts them.
    let (mut prod_rates, mut prod_shares) = (Vec::new(), Vec::new());
    // An empty context, then `depth` tokens in it (not timed).
    let start_at = |s: &mut suanli_engine::Session<B>, depth: usize| -> Result<()> {
        s.reset();
        if depth > 0 {
            s.feed(&depth_toks[..depth], depth)?;
        }
        Ok(())
    };
    for rep in 0..a.repetitions {
        for (di, &depth) in a.depth.iter().enumerate() {
            let (pp, tg) = (&mut pps[di], &mut tgs[di]);
            if a.prompt_tokens > 0 {
                start_at(s, depth)?;
                let p = tokens(a.prompt_tokens, vocab, 10 + rep as u64);
                let before = s.backend.product_time();
                let t0 = Instant::now();
                s.feed(&p, a.prompt_tokens - 1)?;
                let took = t0.elapsed().as_secs_f64();
                pp.push(a.prompt_tokens as f64 / took);
                if let (0, Some((s0, m0)), Some((s1, m1))) = (di, before, s.backend.product_time())
                {
                    if s1 > s0 {
                        prod_rates.push(m1.wrapping_sub(m0) as f64 / (s1 - s0));
                        prod_shares.push((s1 - s0) / took);
                    }
                }
            }
            if a.gen_tokens > 0 {
                start_at(s, depth)?;
                let g = tokens(a.gen_tokens, vocab, 100 + rep as u64);
                let t0 = Instant::now();
                for t in &g {
                    s.feed_generated(std::slice::from_ref(t), 0)?;
                }
                tg.push(a.gen_tokens as f64 / t0.elapsed().as_secs_f64());
            }
            eprintln!(
                "repetition {}{}: prefill {} decode {}",
                rep + 1,
                if nd > 1 {
                    format!(", depth {depth}")
                } else {
                    String::new()
                },
                pp.last().map_or("-".into(), |v| format!("{v:.1} tok/s")),
                tg.last().map_or("-".into(), |v| format!("{v:.1} tok/s"))
            );
        }
    }
    // Each later depth against the first: the median of the repetitions' own ratios.
    let versus_first = |runs: &[Vec<f64>], di: usize| -> Option<f64> {
        let r: Vec<f64> = runs[di].iter().zip(&runs[0]).map(|(x, y)| x / y).collect();
        (!r.is_empty()).then(|| stats(r).median)
    };
    let by_depth: Vec<DepthRuns> = (0..nd)
        .map(|di| DepthRuns {
            depth: a.depth[di],
            prefill: (!pps[di].is_empty()).then(|| stats(pps[di].clone())),
            decode: (!tgs[di].is_empty()).then(|| stats(tgs[di].clone())),
            prefill_vs_first: versus_first(&pps, di),
            decode_vs_first: versus_first(&tgs, di),
        })
        .collect();
    let products =
        (!prod_rates.is_empty()).then(|| (stats(prod_rates).median, stats(prod_shares).median));
    // The first depth's figures stand where a single depth's would.
    let (ps, ts) = (&by_depth[0].prefill, &by_depth[0].decode);
    let peak = peak_rss_bytes();
    // Decode against the memory-bandwidth bound: every step streams these matrices once (for
    // a mixture of experts, the active ones: the router's picks and what every token reads).
    let step_bytes = s.model.decode_weight_bytes(B::weight_bytes);
    let expert_bytes = s.model.expert_weight_bytes(B::weight_bytes);
    let bw = if ts.is_none() {
        None
    } else {
        Some(s.backend.bandwidth_gb_s()?)
    };
    // Prefill against the compute peak: the matrix products' multiply-adds over the whole
    // prefill time (attention and the rest included), next to the int8 peak probed here.
    let pp_macs = s.model.prefill_macs_per_token();
    // Float weights multiply in f32 (measured against the FMA peak instead), or, BF16 and F16
    // ones at the CPU's `amx` level, on the BF16 tiles (against their peak).
    let float_macs = s.model.prefill_float_macs_per_token();
    let float = 2 * float_macs > pp_macs;
    let sixteen_bit = 2 * s.model.prefill_macs_per_token_of(|d| {
        matches!(d, suanli_core::DType::BF16 | suanli_core::DType::F16)
    }) > float_macs;
    let (peak_macs, kind) = match (ps.is_none(), float) {
        (true, true) => (None, "f32"),
        (true, false) => (None, "int8"),
        (false, true) => match s.backend.float_peak(sixteen_bit) {
            Some((p, k)) => (Some(p), k),
            None => (None, "f32"),
        },
        (false, false) => (s.backend.int8_peak(), "int8"),
    };
    let model_name = match (&a.random, &a.model) {
        (Some(r), _) => format!("random {r}"),
        (None, Some(m)) => m.clone(),
        (None, None) => suanli_formats::catalog::DEFAULT_MODEL.into(),
    };
    let facts = s.backend.bench_facts();
    let dev_name = s.backend.caps().name;
    let par = if a.parallel > 0 {
        let (backend, model) = session.into_parts();
        let prompt = a.prompt_tokens.clamp(1, 128);
        Some(crate::bench_batch::aggregate_decode(
            backend,
            model,
            a.parallel,
            prompt,
            a.gen_tokens.max(1),
            opts.kv,
            (a.temperature, a.top_k, a.top_p),
        )?)
    } else {
        None
    };
    if a.json {
        let st = |s: &Option<Stats>| {
            s.as_ref()
                .map(|s| serde_json::json!({"min": s.min, "median": s.median, "max": s.max}))
        };
        crate::outln!(
            "{}",
            serde_json::json!({
                "model": model_name, "backend": detail, "facts": facts, "parallel": a.parallel,
                "parallel_temperature": a.temperature, "parallel_top_k": a.top_k, "parallel_top_p": a.top_p,
                "parallel_decode_tok_s": par.as_ref().map(|p| p.tok_s), "parallel_prefill_s": par.as_ref().map(|p| p.prefill_s),
                "prompt_tokens": a.prompt_tokens, "gen_tokens": a.gen_tokens, "depth": a.depth[0], "repetitions": a.repetitions,
                "depths": (nd > 1).then(|| by_depth.iter().map(|d| serde_json::json!({
                    "depth": d.depth, "prefill": st(&d.prefill), "decode": st(&d.decode),
                    "prefill_vs_first": d.prefill_vs_first, "decode_vs_first": d.decode_vs_first,
                })).collect::<Vec<_>>()),
                "prefill_tok_s": ps.as_ref().map(|s| s.median), "decode_tok_s": ts.as_ref().map(|s| s.median),
                "prefill": st(ps), "decode": st(ts), "peak_rss_bytes": peak,
                "step_weight_bytes": step_bytes, "expert_weight_bytes": expert_bytes,
                "read_bandwidth_gb_s": bw,
                "decode_bound_tok_s": bw.map(|b| b * 1e9 / step_bytes as f64),
                "prefill_macs_per_token": pp_macs, "peak_kind": kind, "peak_macs_s": peak_macs,
                "int8_peak_macs_s": peak_macs.filter(|_| !float),
                "prefill_products_macs_s": products.map(|p| p.0),
                "prefill_products_time_share": products.map(|p| p.1),
            })
        );
    } else {
        let depths: Vec<String> = a.depth.iter().map(|d| d.to_string()).collect();
        crate::outln!(
            "model {model_name} — {dev_name} {detail}, depth {}",
            depths.join(", ")
        );
        crate::outln!(
            "{:<12} {:>10} {:>10} {:>10}",
            "test",
            "min",
            "median",
            "max"
        );
        // With several depths, a row per test and depth (as llama-bench: `pp512 @ d4096`).
        let at = |d: usize| {
            if nd > 1 {
                format!(" @ d{d}")
            } else {
                String::new()
            }
        };
        for (test, pick) in [
            (
                format!("pp{}", a.prompt_tokens),
                (|d: &DepthRuns| d.prefill.as_ref()) as fn(&DepthRuns) -> Option<&Stats>,
            ),
            (format!("tg{}", a.gen_tokens), |d: &DepthRuns| {
                d.decode.as_ref()
            }),
        ] {
            for d in &by_depth {
                if let Some(p) = pick(d) {
                    crate::outln!(
                        "{:<12} {:>10.1} {:>10.1} {:>10.1}  tok/s",
                        format!("{test}{}", at(d.depth)),
                        p.min,
                        p.median,
                        p.max
                    );
                }
            }
        }
        for d in by_depth.iter().skip(1) {
            for (what, share) in [
                ("prefill", d.prefill_vs_first),
                ("decode", d.decode_vs_first),
            ] {
                if let Some(r) = share {
                    crate::outln!(
                        "{what} at depth {} runs at {:.0}% of its speed at depth {} (median of the repetitions' ratios)",
                        d.depth,
                        100.0 * r,
                        a.depth[0]
                    );
                }
            }
        }
        if let Some(p) = ps {
            let rate = p.median * pp_macs as f64;
            match peak_macs {
                Some(peak) => crate::outln!(
                    "prefill multiplies {:.2} G multiply-adds per token: {:.0} G/s at the \
                     median; the {kind} peak probed here is {:.0} G/s ({detail}) → {:.0}% of it",
                    pp_macs as f64 / 1e9,
                    rate / 1e9,
                    peak / 1e9,
                    100.0 * rate / peak
                ),
                None => crate::outln!(
                    "prefill multiplies {:.2} G multiply-adds per token: {:.0} G/s at the \
                     median (no {kind} peak probe for {detail})",
                    pp_macs as f64 / 1e9,
                    rate / 1e9
                ),
            }
            if let Some((r, share)) = products {
                let of_peak = peak_macs
                    .map(|peak| format!(" → {:.0}% of the peak", 100.0 * r / peak))
                    .unwrap_or_default();
                crate::outln!(
                    "the matrix products alone (activations' quantization included): {:.0} G/s, \
                     {:.0}% of the prefill's time{of_peak} (medians)",
                    r / 1e9,
                    100.0 * share
                );
            }
        }
        if expert_bytes > 0 {
            crate::outln!(
                "experts hold {:.0} MB of weights; a decoded token reads {:.0} MB (the active parameters)",
                expert_bytes as f64 / 1e6,
                step_bytes as f64 / 1e6
            );
        }
        if let (Some(t), Some(b)) = (ts, bw) {
            let bound = b * 1e9 / step_bytes as f64;
            crate::outln!(
                "decode reads {:.0} MB of weights per token: {:.1} GB/s at the median; memory reads \
                 {b:.1} GB/s here → bound {bound:.1} tok/s, decode at {:.0}% of it",
                step_bytes as f64 / 1e6,
                t.median * step_bytes as f64 / 1e9,
                100.0 * t.median / bound
            );
            if t.median > bound {
                let why = match last_level_cache_bytes() {
                    Some(c) => format!(
                        "the CPU's last-level cache ({:.0} MB here) holds much of those {:.0} MB",
                        c as f64 / 1e6,
                        step_bytes as f64 / 1e6
                    ),
                    None => "the CPU's caches hold part of the weights".into(),
                };
                crate::outln!(
                    "above 100 %: {why}, so some of each token's reads never reach memory (the \
                     bound assumes they all do; a model larger than the cache cannot beat it)"
                );
            }
        }
        if let Some(p) = &par {
            let how = if a.temperature > 0.0 {
                format!(
                    "temperature {} top-k {} top-p {}",
                    a.temperature, a.top_k, a.top_p
                )
            } else {
                "greedy".into()
            };
            crate::outln!(
                "{:<12} {:>10.1} tok/s aggregate over {} sequences ({} prompt tokens each, prefilled in {:.2}s first; {how})",
                format!("tg{}x{}", a.gen_tokens, a.parallel),
                p.tok_s,
                a.parallel,
                p.prompt,
                p.prefill_s
            );
        }
        if let Some(b) = peak {
            crate::outln!("peak resident memory {:.0} MB", b as f64 / 1e6);
        }
    }
    Ok(())
}
