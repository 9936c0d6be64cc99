//! `suanli chat`: a terminal conversation. The KV cache keeps the conversation so far, so each
//! turn only computes its new tokens.

use crate::load::load;
use crate::run::SamplingArgs;
use anyhow::Result;
use clap::Args;
use std::io::{BufRead, Write};
use suanli_engine::session::Control;
use suanli_tokenizer::chat_prompt;
use suanli_tokenizer::{ChatMessage, StreamDecoder};

#[derive(Args)]
pub struct ChatArgs {
    #[arg(long)]
    pub model: Option<String>,
    #[arg(long)]
    pub system: Option<String>,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Every answer must match (a JSON schema, a regular expression, a grammar).
    #[command(flatten)]
    pub constraint: crate::constrain::ConstraintArgs,
    #[command(flatten)]
    pub spec: crate::run::SpecArgs,
}

pub fn chat(a: ChatArgs, opts: &crate::load::Opts) -> Result<()> {
    crate::on_device!(opts, chat_on(a, opts))
}

fn chat_on<B: crate::load::Hardware>(a: ChatArgs, opts: &crate::load::Opts) -> Result<()> {
    let params = a.sampling.params()?;
    a.spec.config()?;
    let mut l = load::<B>(a.model.as_deref(), opts, a.sampling.ctx, 256)?;
    a.spec.apply(&mut l, opts)?;
    // A reasoning model thinks first each turn: the constraint starts after its thinking.
    let thinks = l
        .tokenizer
        .chat_template
        .as_deref()
        .is_some_and(suanli_constrain::reasoning::template_thinks);
    let compiled = a
        .constraint
        .compile(&l.tokenizer, l.session.model.vocab_size(), thinks)?;
    let base: Vec<ChatMessage> = a
        .system
        .iter()
        .map(|s| ChatMessage::new("system", s))
        .collect();
    let mut msgs = base.clone();
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    eprintln!("chat — /reset clears the history, /exit quits");
    loop {
        eprint!("> ");
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            break;
        }
        let line = line.trim_end_matches(['\n', '\r']);
        match line.trim() {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                msgs = base.clone();
                l.session.reset();
                eprintln!("(history cleared)");
                continue;
            }
            _ => {}
        }
        msgs.push(ChatMessage::new("user", line));
        let ids = chat_prompt(&l.tokenizer, &msgs).map_err(anyhow::Error::msg)?;
        let tok = &l.tokenizer;
        let mut dec = StreamDecoder::new();
        let mut answer = String::new();
        let mut on_token = |id: u32| {
            let s = dec.push(tok, id);
            answer.push_str(&s);
            let _ = out.write_all(s.as_bytes());
            let _ = out.flush();
            Control::Continue
        };
        let mut constraint = compiled.as_ref().map(|c| c.constraint());
        match l.session.generate_constrained(
            &ids,
            &params,
            a.sampling.max_tokens,
            &|t| tok.is_eog(t),
            &mut on_token,
            constraint
                .as_mut()
                .map(|c| c as &mut dyn suanli_engine::TokenConstraint),
        ) {
            Ok(g) => {
                let tail = dec.finish();
                answer.push_str(&tail);
                let _ = writeln!(out, "{tail}");
                let spec = match g.spec.drafted {
                    0 => String::new(),
                    d => format!(", {} of {d} drafted tokens accepted", g.spec.accepted),
                };
                eprintln!(
                    "[{} tokens, {:.1} tok/s{spec}]",
                    g.tokens.len(),
                    g.tokens_per_second()
                );
                msgs.push(ChatMessage::new("assistant", &answer));
            }
            Err(e) => {
                eprintln!("error: {e}; /reset to start over");
                msgs.pop();
            }
        }
    }
    Ok(())
}
