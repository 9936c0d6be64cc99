//! Prometheus metrics, in the text exposition format: gauges of the scheduler's state (set by
//! the engine thread after every step), token and request counters, and latency histograms.
//!
//! The state routers schedule on is also published under vLLM's names (`vllm:…`, labelled with
//! `model_name`), which `vllm-router`, SGLang's router and the Gateway API Inference Extension's
//! endpoint picker read by default: queue and batch sizes, KV-cache usage as a 0–1 fraction,
//! the cache's configuration (block size and count, for prefix-aware routing), prefix-cache
//! queries and hits in tokens.

use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;
use suanli_backend::Backend;
use suanli_engine::batch::BatchEngine;

const TTFT_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
const ITL_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12,
];

struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, v: f64) {
        for (b, c) in self.bounds.iter().zip(&mut self.counts) {
            if v <= *b {
                *c += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {c}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}", self.sum);
        let _ = writeln!(out, "{name}_count {}", self.count);
    }
}

#[derive(Default, Clone, Copy)]
struct Gauges {
    running: usize,
    waiting: usize,
    blocks_in_use: usize,
    blocks_cached: usize,
    blocks_total: usize,
    prefix_hits: u64,
    preemptions: u64,
    constraint: suanli_engine::constraint::ConstraintStats,
    spec: suanli_engine::spec::SpecStats,
}

struct Inner {
    gauges: Gauges,
    prompt_tokens: u64,
    cached_tokens: u64,
    generated_tokens: u64,
    /// Seconds the engine thread spent in steps.
    step_secs: f64,
    /// Finished sequences by how they ended (stop, length, cancelled, error).
    finished: Vec<(&'static str, u64)>,
    ttft: Histogram,
    itl: Histogram,
}

/// What does not change while serving: the served model's name and the KV cache's shape.
#[derive(Clone, Debug)]
pub struct CacheInfo {
    pub model_name: String,
    pub block_size: usize,
    pub num_blocks: usize,
    /// `f16`, `f32` or `q8_0`.
    pub cache_dtype: &'static str,
}

pub struct Metrics {
    info: CacheInfo,
    inner: Mutex<Inner>,
}

/// One metric with its help and type lines; `labels` (`a="x",b="y"`) may be empty.
fn metric(out: &mut String, name: &str, kind: &str, help: &str, labels: &str, v: String) {
    let labels = match labels {
        "" => String::new(),
        l => format!("{{{l}}}"),
    };
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{labels} {v}"
    );
}

/// A Prometheus label value: backslash, double quote and newline escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    pub fn new(info: CacheInfo) -> Self {
        Metrics {
            info,
            inner: Mutex::new(Inner {
                gauges: Gauges::default(),
                prompt_tokens: 0,
                cached_tokens: 0,
                generated_tokens: 0,
                step_secs: 0.0,
                finished: Vec::new(),
                ttft: Histogram::new(TTFT_BUCKETS),
                itl: Histogram::new(ITL_BUCKETS),
            }),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        // A panic elsewhere while holding the lock must not take the metrics down with it.
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }

    pub fn set_gauges<B: Backend>(&self, e: &BatchEngine<B>) {
        let s = e.scheduler();
        let cached = s.blocks_cached_idle();
        let g = Gauges {
            running: s.running(),
            waiting: s.waiting(),
            blocks_in_use: s.blocks_used() - cached,
            blocks_cached: cached,
            blocks_total: s.config().num_blocks,
            prefix_hits: s.prefix_hits(),
            preemptions: s.preemptions(),
            constraint: e.constraint_stats(),
            spec: e.spec_stats(),
        };
        self.with(|m| m.gauges = g);
    }

    pub fn step(&self, d: Duration) {
        self.with(|m| m.step_secs += d.as_secs_f64());
    }

    pub fn ttft(&self, d: Duration) {
        self.with(|m| m.ttft.observe(d.as_secs_f64()));
    }

    pub fn itl(&self, d: Duration) {
        self.with(|m| m.itl.observe(d.as_secs_f64()));
    }

    pub fn generated(&self, n: usize) {
        self.with(|m| m.generated_tokens += n as u64);
    }

    pub fn prompt(&self, n: usize) {
        self.with(|m| m.prompt_tokens += n as u64);
    }

    pub fn cached(&self, n: usize) {
        self.with(|m| m.cached_tokens += n as u64);
    }

    pub fn finished(&self, how: &'static str) {
        self.with(|m| match m.finished.iter_mut().find(|(k, _)| *k == how) {
            Some((_, n)) => *n += 1,
            None => m.finished.push((how, 1)),
        });
    }

    pub fn render(&self) -> String {
        self.with(|m| {
            let mut out = String::new();
            let g = m.gauges;
            let mut one =
                |name: &str, kind: &str, help: &str, v: String| metric(&mut out, name, kind, help, "", v);
            one(
                "suanli_requests_running",
                "gauge",
                "Sequences in the running batch.",
                g.running.to_string(),
            );
            one(
                "suanli_requests_waiting",
                "gauge",
                "Sequences queued for admission.",
                g.waiting.to_string(),
            );
            one(
                "suanli_kv_blocks_used",
                "gauge",
                "KV cache blocks held by sequences.",
                g.blocks_in_use.to_string(),
            );
            one(
                "suanli_kv_blocks_cached",
                "gauge",
                "KV cache blocks held only by the prefix cache (reusable, evictable).",
                g.blocks_cached.to_string(),
            );
            one(
                "suanli_kv_blocks_total",
                "gauge",
                "KV cache blocks.",
                g.blocks_total.to_string(),
            );
            one(
                "suanli_prefix_cache_hits_total",
                "counter",
                "Sequences that found part of their prompt in the prefix cache.",
                g.prefix_hits.to_string(),
            );
            one(
                "suanli_preemptions_total",
                "counter",
                "Sequences sent back to the queue for lack of KV blocks.",
                g.preemptions.to_string(),
            );
            one(
                "suanli_engine_step_seconds_total",
                "counter",
                "Seconds the engine spent running steps (forward passes and sampling).",
                m.step_secs.to_string(),
            );
            one(
                "suanli_constrained_tokens_total",
                "counter",
                "Tokens drawn under a constraint (JSON schema, grammar, tool call).",
                g.constraint.tokens.to_string(),
            );
            one(
                "suanli_constraint_masks_total",
                "counter",
                "Constrained tokens whose first draw was refused, so the whole vocabulary was masked.",
                g.constraint.masks.to_string(),
            );
            one(
                "suanli_constraint_seconds_total",
                "counter",
                "Seconds spent checking and masking constrained tokens (their draws included).",
                g.constraint.secs.to_string(),
            );
            one(
                "suanli_spec_drafted_tokens_total",
                "counter",
                "Tokens drafted by speculative decoding and verified (serve --spec).",
                g.spec.drafted.to_string(),
            );
            one(
                "suanli_spec_accepted_tokens_total",
                "counter",
                "Drafted tokens that were accepted (each is a token decoded without its own step).",
                g.spec.accepted.to_string(),
            );
            one(
                "suanli_prompt_tokens_total",
                "counter",
                "Prompt tokens submitted.",
                m.prompt_tokens.to_string(),
            );
            one(
                "suanli_prompt_tokens_cached_total",
                "counter",
                "Prompt tokens served from the prefix cache.",
                m.cached_tokens.to_string(),
            );
            one(
                "suanli_generation_tokens_total",
                "counter",
                "Tokens generated.",
                m.generated_tokens.to_string(),
            );
            let _ = writeln!(
                out,
                "# HELP suanli_sequences_finished_total Sequences ended, by reason.\n# TYPE suanli_sequences_finished_total counter"
            );
            for (how, n) in &m.finished {
                let _ = writeln!(out, "suanli_sequences_finished_total{{reason=\"{how}\"}} {n}");
            }
            m.ttft.render(
                &mut out,
                "suanli_time_to_first_token_seconds",
                "Time from admission request to the first generated token.",
            );
            m.itl.render(
                &mut out,
                "suanli_inter_token_latency_seconds",
                "Time between consecutive tokens of a sequence.",
            );
            self.render_shared(&mut out, m);
            out
        })
    }

    /// KV-cache usage (0–1), the cache's configuration, and the router-facing state under
    /// vLLM's names.
    fn render_shared(&self, out: &mut String, m: &Inner) {
        let g = m.gauges;
        let i = &self.info;
        // Blocks held by sequences; blocks held only by the prefix cache are free to reuse
        // (vLLM counts its evictable cached blocks as free the same way).
        let usage = match g.blocks_total {
            0 => 0.0,
            t => g.blocks_in_use as f64 / t as f64,
        };
        let config = format!(
            "block_size=\"{}\",num_blocks=\"{}\",cache_dtype=\"{}\",enable_prefix_caching=\"true\"",
            i.block_size, i.num_blocks, i.cache_dtype
        );
        let mut one = |name: &str, kind: &str, help: &str, labels: &str, v: String| {
            metric(out, name, kind, help, labels, v)
        };
        one(
            "suanli_kv_cache_usage_ratio",
            "gauge",
            "Fraction of the KV cache's blocks held by sequences (0-1).",
            "",
            usage.to_string(),
        );
        one(
            "suanli_cache_config_info",
            "gauge",
            "The KV cache's configuration, in labels (value 1).",
            &config,
            "1".into(),
        );
        let model = format!("model_name=\"{}\"", label(&i.model_name));
        let vllm: [(&str, &str, &str, String); 8] = [
            (
                "vllm:num_requests_running",
                "gauge",
                "Requests in the running batch.",
                g.running.to_string(),
            ),
            (
                "vllm:num_requests_waiting",
                "gauge",
                "Requests waiting to be admitted.",
                g.waiting.to_string(),
            ),
            (
                "vllm:kv_cache_usage_perc",
                "gauge",
                "KV-cache usage: 1 means 100 percent.",
                usage.to_string(),
            ),
            (
                "vllm:gpu_cache_usage_perc",
                "gauge",
                "KV-cache usage: 1 means 100 percent (the name before vLLM V1).",
                usage.to_string(),
            ),
            (
                "vllm:num_preemptions_total",
                "counter",
                "Requests preempted for lack of KV blocks.",
                g.preemptions.to_string(),
            ),
            (
                "vllm:prompt_tokens_total",
                "counter",
                "Prompt tokens.",
                m.prompt_tokens.to_string(),
            ),
            (
                "vllm:generation_tokens_total",
                "counter",
                "Generated tokens.",
                m.generated_tokens.to_string(),
            ),
            (
                "vllm:prefix_cache_hits_total",
                "counter",
                "Prompt tokens found in the prefix cache.",
                m.cached_tokens.to_string(),
            ),
        ];
        for (name, kind, help, v) in vllm {
            one(name, kind, help, &model, v);
        }
        one(
            "vllm:prefix_cache_queries_total",
            "counter",
            "Prompt tokens looked up in the prefix cache.",
            &model,
            m.prompt_tokens.to_string(),
        );
        one(
            "vllm:cache_config_info",
            "gauge",
            "The KV cache's configuration, in labels (value 1).",
            &format!(
                "{model},block_size=\"{}\",num_gpu_blocks=\"{}\",cache_dtype=\"{}\",enable_prefix_caching=\"True\"",
                i.block_size, i.num_blocks, i.cache_dtype
            ),
            "1".into(),
        );
        // No LoRA adapters: the endpoint picker's LoRA affinity reads this and finds none.
        one(
            "vllm:lora_requests_info",
            "gauge",
            "LoRA adapters (none are served); the value is the time of the last update.",
            &format!(
                "{model},max_lora=\"0\",running_lora_adapters=\"\",waiting_lora_adapters=\"\""
            ),
            crate::state::unix_now().to_string(),
        );
    }
}
