//! `suanli chat`: a terminal conversation. The KV cache keeps the conversation so far, so each
//! turn only computes its new tokens. Input (line editing, history, multi-line messages, slash
//! commands) is `chat_input`; Ctrl-C stops an answer and keeps the conversation.

use crate::chat_input::{Command, Input, Reader, HELP};
use crate::load::load;
use crate::run::SamplingArgs;
use anyhow::Result;
use clap::Args;
use std::io::Write;
use suanli_engine::session::Control;
use suanli_engine::SamplingParams;
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
    let mut system = a.system.clone();
    let mut msgs = with_system(&system);
    let mut params = params;
    let mut max_tokens = a.sampling.max_tokens;
    let mut input = Reader::new(Some(suanli_formats::catalog::home().join("chat_history")));
    let mut out = std::io::stdout();
    let style = Style::detect();
    interrupt::install();
    eprintln!(
        "{}",
        style.dim("chat — /help lists the commands, Ctrl-C stops an answer, /exit or Ctrl-D quits")
    );
    loop {
        let line = match input.next()? {
            Input::End => break,
            Input::Interrupted => {
                eprintln!("{}", style.dim("(nothing to stop; /exit or Ctrl-D quits)"));
                continue;
            }
            Input::Command(c) => {
                match c {
                    Command::Help => eprintln!("{HELP}"),
                    Command::Exit => break,
                    Command::Reset => {
                        msgs = with_system(&system);
                        l.session.reset();
                        eprintln!("{}", style.dim("(conversation cleared)"));
                    }
                    Command::System(None) => {
                        eprintln!("{}", system.as_deref().unwrap_or("(no system message)"))
                    }
                    Command::System(Some(text)) => {
                        system = Some(text);
                        msgs = with_system(&system);
                        l.session.reset();
                        eprintln!(
                            "{}",
                            style.dim("(system message set; conversation started over)")
                        );
                    }
                    Command::Set(None) => eprintln!("{}", settings(&params, max_tokens)),
                    Command::Set(Some((k, v))) => match set(&mut params, &mut max_tokens, &k, &v) {
                        Ok(()) => eprintln!("{}", style.dim(&format!("({k} = {v})"))),
                        Err(e) => eprintln!("{}", style.error(&e)),
                    },
                    Command::Save(path) => match save(&path, &msgs) {
                        Ok(()) => eprintln!(
                            "{}",
                            style.dim(&format!(
                                "(saved {} messages to {})",
                                msgs.len(),
                                path.display()
                            ))
                        ),
                        Err(e) => eprintln!(
                            "{}",
                            style.error(&format!("cannot save {}: {e}", path.display()))
                        ),
                    },
                    Command::Load(path) => match load_conversation(&path) {
                        Ok(m) => {
                            system = m
                                .iter()
                                .find(|m| m.role == "system")
                                .map(|m| m.content.clone());
                            eprintln!(
                                "{}",
                                style.dim(&format!(
                                    "(loaded {} messages from {})",
                                    m.len(),
                                    path.display()
                                ))
                            );
                            msgs = m;
                            l.session.reset();
                        }
                        Err(e) => eprintln!(
                            "{}",
                            style.error(&format!("cannot load {}: {e}", path.display()))
                        ),
                    },
                    Command::Unknown(m) => eprintln!("{}", style.error(&m)),
                }
                continue;
            }
            Input::Message(m) => m,
        };
        msgs.push(ChatMessage::new("user", &line));
        let ids = match chat_prompt(&l.tokenizer, &msgs) {
            Ok(ids) => ids,
            Err(e) => {
                eprintln!("{}", style.error(&format!("the chat template failed: {e}")));
                msgs.pop();
                continue;
            }
        };
        let tok = &l.tokenizer;
        let mut dec = StreamDecoder::new();
        let mut answer = String::new();
        let mut on_token = |id: u32| {
            if interrupt::requested() {
                return Control::Stop;
            }
            let s = dec.push(tok, id);
            answer.push_str(&s);
            let _ = out.write_all(s.as_bytes());
            let _ = out.flush();
            Control::Continue
        };
        let mut constraint = compiled.as_ref().map(|c| c.constraint());
        interrupt::answering(true);
        let result = l.session.generate_constrained(
            &ids,
            &params,
            max_tokens,
            &|t| tok.is_eog(t),
            &mut on_token,
            constraint
                .as_mut()
                .map(|c| c as &mut dyn suanli_engine::TokenConstraint),
        );
        interrupt::answering(false);
        let stopped = interrupt::take();
        match result {
            Ok(g) => {
                let tail = dec.finish();
                answer.push_str(&tail);
                let _ = writeln!(out, "{tail}");
                let spec = match g.spec.drafted {
                    0 => String::new(),
                    d => format!(", {} of {d} drafted tokens accepted", g.spec.accepted),
                };
                let how = match (g.finish_reason.as_str(), stopped) {
                    ("stop", false) => String::new(),
                    (_, true) => ", stopped".into(),
                    (r, _) => format!(", {r}"),
                };
                eprintln!(
                    "{}",
                    style.dim(&format!(
                        "[{} tokens, {:.1} tok/s{spec}{how}]",
                        g.tokens.len(),
                        g.tokens_per_second()
                    ))
                );
                msgs.push(ChatMessage::new("assistant", &answer));
            }
            Err(e) => {
                eprintln!(
                    "{}",
                    style.error(&format!("error: {e}; /reset to start over"))
                );
                msgs.pop();
            }
        }
    }
    input.save_history();
    Ok(())
}

/// The conversation's start: the system message, if any.
fn with_system(system: &Option<String>) -> Vec<ChatMessage> {
    system
        .iter()
        .map(|s| ChatMessage::new("system", s))
        .collect()
}

fn settings(p: &SamplingParams, max_tokens: usize) -> String {
    format!(
        "temperature {} top_k {} top_p {} min_p {} repeat_penalty {} seed {} max_tokens {max_tokens}",
        p.temperature,
        p.top_k,
        p.top_p,
        p.min_p,
        p.repeat_penalty,
        p.seed.map_or("random".into(), |s| s.to_string())
    )
}

/// `/set KEY VALUE`, checked as the command-line options are.
fn set(
    p: &mut SamplingParams,
    max_tokens: &mut usize,
    key: &str,
    value: &str,
) -> Result<(), String> {
    fn num<T: std::str::FromStr>(key: &str, value: &str) -> Result<T, String> {
        value
            .parse()
            .map_err(|_| format!("/set {key}: {value:?} is not a number"))
    }
    let mut q = p.clone();
    match key {
        "temperature" => q.temperature = num(key, value)?,
        "top_k" => q.top_k = num(key, value)?,
        "top_p" => q.top_p = num(key, value)?,
        "min_p" => q.min_p = num(key, value)?,
        "repeat_penalty" => q.repeat_penalty = num(key, value)?,
        "seed" => q.seed = if value == "random" { None } else { Some(num(key, value)?) },
        "max_tokens" => {
            let n: usize = num(key, value)?;
            if n == 0 {
                return Err("/set max_tokens: at least 1".into());
            }
            *max_tokens = n;
            return Ok(());
        }
        _ => {
            return Err(format!(
                "/set {key}: not a setting (temperature, top_k, top_p, min_p, repeat_penalty, seed, max_tokens)"
            ))
        }
    }
    q.validate().map_err(|e| format!("/set {e}"))?;
    *p = q;
    Ok(())
}

fn save(path: &std::path::Path, msgs: &[ChatMessage]) -> std::io::Result<()> {
    let v = serde_json::json!({ "messages": msgs });
    std::fs::write(path, serde_json::to_string_pretty(&v)? + "\n")
}

fn load_conversation(path: &std::path::Path) -> Result<Vec<ChatMessage>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("not a saved conversation: {e}"))?;
    let messages: Vec<ChatMessage> = serde_json::from_value(v["messages"].clone())
        .map_err(|e| format!("not a saved conversation (messages: {e})"))?;
    if let Some(m) = messages
        .iter()
        .find(|m| !matches!(m.role.as_str(), "system" | "user" | "assistant"))
    {
        return Err(format!(
            "a message has role {:?}; chat keeps system, user and assistant",
            m.role
        ));
    }
    Ok(messages)
}

/// Colours on a terminal only (and not under `NO_COLOR`).
struct Style(bool);

impl Style {
    fn detect() -> Style {
        use std::io::IsTerminal;
        Style(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
    }
    fn dim(&self, s: &str) -> String {
        match self.0 {
            true => format!("\x1b[2m{s}\x1b[0m"),
            false => s.to_string(),
        }
    }
    fn error(&self, s: &str) -> String {
        match self.0 {
            true => format!("\x1b[31m{s}\x1b[0m"),
            false => s.to_string(),
        }
    }
}

/// Ctrl-C: stops the answer being written; at other times it ends the program as usual.
mod interrupt {
    use std::sync::atomic::{AtomicBool, Ordering};

    static ANSWERING: AtomicBool = AtomicBool::new(false);
    static STOP: AtomicBool = AtomicBool::new(false);

    pub fn install() {
        let _ = ctrlc::set_handler(|| {
            if ANSWERING.load(Ordering::SeqCst) {
                STOP.store(true, Ordering::SeqCst);
            } else {
                // Not at a line editor's prompt (that reads Ctrl-C as a key): quit as usual.
                eprintln!();
                std::process::exit(130);
            }
        });
    }

    pub fn answering(on: bool) {
        ANSWERING.store(on, Ordering::SeqCst);
    }

    /// Whether Ctrl-C was pressed since the last `take`.
    pub fn requested() -> bool {
        STOP.load(Ordering::SeqCst)
    }

    /// Whether Ctrl-C was pressed since the last call, clearing it.
    pub fn take() -> bool {
        STOP.swap(false, Ordering::SeqCst)
    }
}
