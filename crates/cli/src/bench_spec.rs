//! `suanli bench --spec MODE`: decode speed with speculative decoding against the same binary
//! without it, on chat tasks (built in, or `--spec-prompts FILE`), greedy, each task run both
//! ways in turn. Reports tokens per second, the ratio, the acceptance rate, the mean tokens
//! per verifying pass, and whether the answers are the same (they must be).

use crate::load::{load, Hardware};
use anyhow::{anyhow, bail, Context, Result};
use suanli_engine::session::{Control, DraftStats};
use suanli_engine::spec::{SpecConfig, SpecStats};
use suanli_engine::SamplingParams;
use suanli_tokenizer::{chat_prompt, ChatMessage};

/// One task: its kind (the rows are summarized per kind) and the user's message.
pub struct Task {
    pub kind: String,
    pub prompt: String,
}

const EDIT_PY: &str = "Here is a Python function:\n\n```python\ndef parse_config(path):\n    \"\"\"Read a key=value config file into a dict.\"\"\"\n    result = {}\n    with open(path) as f:\n        for line in f:\n            line = line.strip()\n            if not line or line.startswith(\"#\"):\n                continue\n            key, value = line.split(\"=\", 1)\n            result[key.strip()] = value.strip()\n    return result\n```\n\nRename the function to `load_config` and return the whole function, nothing else.";

const EDIT_RS: &str = "```rust\npub fn mean(values: &[f64]) -> f64 {\n    let mut total = 0.0;\n    for v in values {\n        total += v;\n    }\n    total / values.len() as f64\n}\n\npub fn variance(values: &[f64]) -> f64 {\n    let m = mean(values);\n    let mut total = 0.0;\n    for v in values {\n        total += (v - m) * (v - m);\n    }\n    total / values.len() as f64\n}\n```\n\nMake both functions return `None` for an empty slice (return type `Option<f64>`). Give the complete code.";

const EDIT_JS: &str = "Add a JSDoc comment to each function and change nothing else:\n\n```javascript\nfunction clamp(x, lo, hi) {\n  if (x < lo) return lo;\n  if (x > hi) return hi;\n  return x;\n}\n\nfunction lerp(a, b, t) {\n  return a + (b - a) * clamp(t, 0, 1);\n}\n\nfunction smoothstep(a, b, x) {\n  const t = clamp((x - a) / (b - a), 0, 1);\n  return t * t * (3 - 2 * t);\n}\n```";

/// The built-in tasks: code edits (the answer repeats most of the prompt) and free chat.
pub fn builtin() -> Vec<Task> {
    let t = |kind: &str, prompt: &str| Task {
        kind: kind.into(),
        prompt: prompt.into(),
    };
    vec![
        t("code-edit", EDIT_PY),
        t("code-edit", EDIT_RS),
        t("code-edit", EDIT_JS),
        t(
            "chat-en",
            "Explain in a few paragraphs why the sky is blue and why sunsets are red.",
        ),
        t(
            "chat-en",
            "What should I consider when choosing between a laptop and a desktop for programming?",
        ),
        t("chat-zh", "请用几段话介绍一下长城的历史。"),
        t("chat-zh", "如何学好一门外语？请给出具体的建议。"),
    ]
}

/// Tasks from a JSON-lines file: `{"kind": "...", "prompt": "..."}` per line.
pub fn from_file(path: &std::path::Path) -> Result<Vec<Task>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut tasks = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not JSON", path.display(), i + 1))?;
        let field = |k: &str| {
            v.get(k)
                .and_then(|x| x.as_str())
                .map(str::to_owned)
                .ok_or_else(|| anyhow!("{}:{}: no string \"{k}\"", path.display(), i + 1))
        };
        tasks.push(Task {
            kind: field("kind")?,
            prompt: field("prompt")?,
        });
    }
    if tasks.is_empty() {
        bail!("{}: no tasks", path.display());
    }
    Ok(tasks)
}

struct Row {
    kind: String,
    tokens: usize,
    off: f64,
    on: f64,
    stats: SpecStats,
    /// The draft model's, with one.
    draft: Option<DraftStats>,
    same: bool,
}

impl Row {
    /// Speculative over plain decoding speed; none for an answer of one token (decoding is
    /// timed after the first, which the prefill gives).
    fn ratio(&self) -> Option<f64> {
        (self.off > 0.0 && self.on > 0.0).then(|| self.on / self.off)
    }
}

/// Runs every task `reps` times each way (alternating, the faster run of each kept).
pub fn run<B: Hardware>(
    model: Option<&str>,
    opts: &crate::load::Opts,
    spec: &crate::run::SpecArgs,
    tasks: &[Task],
    max_tokens: usize,
    reps: usize,
    json: bool,
) -> Result<()> {
    let cfg = spec.config()?.ok_or_else(|| anyhow!("--spec is off"))?;
    let mut l = load::<B>(model, opts, 4096, 256)?;
    spec.apply(&mut l, opts)?;
    let tok = l.tokenizer.clone();
    let greedy = SamplingParams::greedy();
    let mut rows = Vec::new();
    for (i, task) in tasks.iter().enumerate() {
        let ids = chat_prompt(&tok, &[ChatMessage::new("user", &task.prompt)])
            .map_err(anyhow::Error::msg)?;
        let mut best = [0.0f64; 2];
        let mut answers: [Vec<u32>; 2] = [Vec::new(), Vec::new()];
        let mut stats = SpecStats::default();
        let mut draft = None;
        for _ in 0..reps.max(1) {
            for (side, spec) in [None, Some(cfg.clone())].into_iter().enumerate() {
                l.session.set_speculation(spec).map_err(|e| anyhow!(e))?;
                l.session.reset();
                let before = l.session.draft_stats();
                let g = l.session.generate(
                    &ids,
                    &greedy,
                    max_tokens,
                    &|t| tok.is_eog(t),
                    &mut |_| Control::Continue,
                )?;
                best[side] = best[side].max(g.tokens_per_second());
                if side == 1 {
                    stats = g.spec;
                    draft = l
                        .session
                        .draft_stats()
                        .zip(before)
                        .map(|(a, b)| a.since(&b));
                }
                answers[side] = g.tokens;
            }
        }
        let row = Row {
            kind: task.kind.clone(),
            tokens: answers[0].len(),
            off: best[0],
            on: best[1],
            stats,
            draft,
            same: answers[0] == answers[1],
        };
        eprintln!(
            "task {} ({}): {} tokens, {:.1} → {:.1} tok/s ({}), {}/{} drafts accepted{}{}",
            i + 1,
            row.kind,
            row.tokens,
            row.off,
            row.on,
            row.ratio()
                .map_or("one token: nothing decoded".into(), |r| format!("{r:.2}×")),
            row.stats.accepted,
            row.stats.drafted,
            row.draft.map_or(String::new(), |d| draft_line(&d)),
            if row.same { "" } else { ", ANSWER DIFFERS" }
        );
        rows.push(row);
    }
    report(&rows, &cfg, json);
    if rows.iter().any(|r| !r.same) {
        bail!("speculative decoding changed an answer: this is a bug, please report it");
    }
    Ok(())
}

/// The draft model's part of a task: its time per drafted token and how many of its
/// proposals its short head served.
fn draft_line(d: &DraftStats) -> String {
    let mut s = String::new();
    if let Some(t) = d.secs_per_token() {
        s += &format!("; draft model {:.2} ms a drafted token", 1e3 * t);
    }
    if let Some(f) = d.short_head_share() {
        s += &format!(
            ", {:.0} % of {} proposals through its short head",
            100.0 * f,
            d.proposals
        );
    }
    s
}

fn report(rows: &[Row], cfg: &SpecConfig, json: bool) {
    let mut kinds: Vec<&str> = rows.iter().map(|r| r.kind.as_str()).collect();
    kinds.dedup();
    let summary: Vec<(String, Option<f64>, SpecStats)> = kinds
        .iter()
        .map(|k| {
            let of: Vec<&Row> = rows.iter().filter(|r| r.kind == *k).collect();
            // Geometric mean of the ratios: each task counts the same (one-token answers,
            // with nothing decoded, are left out).
            let ratios: Vec<f64> = of.iter().filter_map(|r| r.ratio()).collect();
            let g = (!ratios.is_empty())
                .then(|| (ratios.iter().map(|r| r.ln()).sum::<f64>() / ratios.len() as f64).exp());
            let mut st = SpecStats::default();
            for r in &of {
                st.add(&r.stats);
            }
            (k.to_string(), g, st)
        })
        .collect();
    if json {
        let tasks: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "kind": r.kind, "tokens": r.tokens, "tok_s": r.off, "spec_tok_s": r.on,
                    "ratio": r.ratio(), "drafted": r.stats.drafted, "accepted": r.stats.accepted,
                    "acceptance": r.stats.acceptance(),
                    "mean_accepted_length": r.stats.mean_accepted_length(), "same_answer": r.same,
                    "draft_ms_per_token": r.draft.and_then(|d| d.secs_per_token()).map(|t| 1e3 * t),
                    "short_head_share": r.draft.and_then(|d| d.short_head_share()),
                })
            })
            .collect();
        let kinds: Vec<serde_json::Value> = summary
            .iter()
            .map(|(k, g, st)| {
                serde_json::json!({"kind": k, "ratio": g, "acceptance": st.acceptance(),
                    "mean_accepted_length": st.mean_accepted_length()})
            })
            .collect();
        crate::outln!(
            "{}",
            serde_json::json!({"spec": format!("{:?}", cfg.mode).to_lowercase(),
                "max_draft": cfg.max_draft, "adaptive": cfg.adaptive,
                "tasks": tasks, "kinds": kinds})
        );
        return;
    }
    crate::outln!(
        "{:<10} {:>6} {:>9} {:>9} {:>6} {:>11} {:>8} {:>6}",
        "task",
        "tokens",
        "tok/s",
        "spec",
        "ratio",
        "accepted",
        "per pass",
        "same"
    );
    for r in rows {
        crate::outln!(
            "{:<10} {:>6} {:>9.1} {:>9.1} {:>6} {:>5}/{:<5} {:>8.2} {:>6}",
            r.kind,
            r.tokens,
            r.off,
            r.on,
            r.ratio().map_or("-".into(), |x| format!("{x:.2}")),
            r.stats.accepted,
            r.stats.drafted,
            r.stats.mean_accepted_length(),
            if r.same { "yes" } else { "NO" }
        );
    }
    for (k, g, st) in &summary {
        crate::outln!(
            "{k}: {} (geometric mean), {:.0}% of drafts accepted, {:.2} tokens per verifying pass",
            g.map_or(
                "no answer of two tokens or more to time".into(),
                |g| format!("{g:.2}×")
            ),
            100.0 * st.acceptance(),
            st.mean_accepted_length()
        );
    }
}
