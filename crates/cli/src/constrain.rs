//! `--json-schema FILE`, `--json-object`, `--regex RE`, `--grammar FILE`: what `run` and `chat`
//! answers must match, compiled by llguidance for the loaded model's vocabulary.

use anyhow::{anyhow, Context, Result};
use clap::Args;
use std::path::PathBuf;
use std::sync::Arc;
use suanli_constrain::{reasoning, Compiled, Grammar, Vocab};
use suanli_tokenizer::Tokenizer;

#[derive(Args, Clone, Default)]
#[group(multiple = false)]
pub struct ConstraintArgs {
    /// The answer is JSON that fits this JSON Schema file.
    #[arg(long, value_name = "FILE")]
    pub json_schema: Option<PathBuf>,
    /// The answer is a JSON object.
    #[arg(long)]
    pub json_object: bool,
    /// The answer matches this regular expression.
    #[arg(long, value_name = "RE")]
    pub regex: Option<String>,
    /// The answer matches this Lark grammar file (llguidance's dialect: `start: ...`).
    #[arg(long, value_name = "FILE")]
    pub grammar: Option<PathBuf>,
}

impl ConstraintArgs {
    fn grammar(&self) -> Result<Option<(&'static str, Grammar)>> {
        let read = |p: &PathBuf| {
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
        };
        Ok(if let Some(p) = &self.json_schema {
            let v = serde_json::from_str(&read(p)?)
                .with_context(|| format!("{}: not JSON", p.display()))?;
            Some(("--json-schema", Grammar::JsonSchema(v)))
        } else if self.json_object {
            Some(("--json-object", Grammar::JsonObject))
        } else if let Some(r) = &self.regex {
            Some(("--regex", Grammar::Regex(r.clone())))
        } else if let Some(p) = &self.grammar {
            Some(("--grammar", Grammar::Lark(read(p)?)))
        } else {
            None
        })
    }

    /// The compiled constraint, if one was asked for. `thinks_first`: a reasoning model will
    /// think before it answers, so the constraint starts after `</think>`.
    pub fn compile(
        &self,
        tok: &Arc<Tokenizer>,
        model_vocab: usize,
        thinks_first: bool,
    ) -> Result<Option<Compiled>> {
        let Some((flag, g)) = self.grammar()? else {
            return Ok(None);
        };
        let t0 = std::time::Instant::now();
        let vocab = Arc::new(Vocab::new(tok.clone(), model_vocab).map_err(|e| anyhow!(e))?);
        let t1 = std::time::Instant::now();
        let c = g.compile(&vocab).map_err(|e| anyhow!("{flag}: {e}"))?;
        eprintln!(
            "[token trie built in {:.0} ms; {flag} compiled in {:.1} ms]",
            (t1 - t0).as_secs_f64() * 1e3,
            t1.elapsed().as_secs_f64() * 1e3
        );
        Ok(Some(if thinks_first {
            c.lazy(reasoning::CLOSE)
        } else {
            c
        }))
    }
}

/// Whether a reasoning model thinks before answering this rendered prompt.
pub fn thinks_first(tok: &Tokenizer, rendered: &str) -> bool {
    tok.chat_template
        .as_deref()
        .is_some_and(reasoning::template_thinks)
        && !reasoning::prompt_closes_thinking(rendered)
}
