//! Chat templates rendered in a helper process with a memory limit.
//!
//! A template is code from a model file. minijinja gives it no object graph to escape into, and
//! fuel, recursion and output caps bound its work — but a loop that doubles a string
//! (`{% set ns.s = ns.s ~ ns.s %}`) grows memory without writing output or burning much fuel,
//! and in-process that ends the server. So the server renders in a child process (the same
//! executable, `__render-template`) whose address space is capped with `ulimit -v`: a template
//! that blows up kills only the helper, the request gets a 400, and the next render starts a
//! fresh helper. Renders also have a deadline; a helper that misses it is killed.
//!
//! Protocol, one JSON object per line: the first line to the helper is `{"source", "bos",
//! "eos"}`; then each request `{"messages", "add_generation_prompt", "extra"}` is answered with
//! `{"ok": text}`, `{"raised": message}` or `{"error": message}`.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Mutex;
use std::time::Duration;
use suanli_tokenizer::{ChatMessage, ChatTemplate, RenderTemplate, TemplateError, TemplateExtra};

/// Address space of the helper, in KiB (1 GiB).
const LIMIT_KIB: u64 = 1 << 20;
const DEADLINE: Duration = Duration::from_secs(10);

pub struct TemplateSandbox {
    exe: PathBuf,
    init: String,
    helper: Mutex<Option<Helper>>,
}

struct Helper {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl TemplateSandbox {
    /// `exe` must answer `exe __render-template` with `serve_helper`.
    pub fn new(exe: PathBuf, source: &str, bos: &str, eos: &str) -> TemplateSandbox {
        TemplateSandbox {
            exe,
            init: json!({"source": source, "bos": bos, "eos": eos}).to_string(),
            helper: Mutex::new(None),
        }
    }

    fn spawn(&self) -> std::io::Result<Helper> {
        let mut child = Command::new("/bin/sh")
            .arg("-c")
            .arg(format!(
                "ulimit -v {LIMIT_KIB} && exec \"$0\" __render-template"
            ))
            .arg(&self.exe)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let mut stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        writeln!(stdin, "{}", self.init)?;
        let (tx, lines) = mpsc::channel();
        std::thread::Builder::new()
            .name("template-sandbox".into())
            .spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            })?;
        Ok(Helper {
            child,
            stdin,
            lines,
        })
    }
}

impl RenderTemplate for TemplateSandbox {
    fn render_with(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        extra: &TemplateExtra,
    ) -> Result<String, TemplateError> {
        let mut g = self.helper.lock().unwrap_or_else(|p| p.into_inner());
        if g.is_none() {
            *g = Some(self.spawn().map_err(|e| {
                TemplateError::Render(format!("cannot start the template sandbox: {e}"))
            })?);
        }
        let h = g.as_mut().expect("just set");
        let req = json!({
            "messages": messages,
            "add_generation_prompt": add_generation_prompt,
            "extra": extra,
        });
        let sent = writeln!(h.stdin, "{req}").and_then(|_| h.stdin.flush());
        let answer = match sent {
            Ok(()) => h.lines.recv_timeout(DEADLINE),
            Err(_) => Err(RecvTimeoutError::Disconnected),
        };
        match answer {
            Ok(line) => {
                let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
                if let Some(s) = v.get("ok").and_then(Value::as_str) {
                    Ok(s.to_owned())
                } else if let Some(m) = v.get("raised").and_then(Value::as_str) {
                    Err(TemplateError::Raised(m.to_owned()))
                } else {
                    let m = v
                        .get("error")
                        .and_then(Value::as_str)
                        .unwrap_or("a garbled answer");
                    Err(TemplateError::Render(m.to_owned()))
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                *g = None; // killed on drop
                Err(TemplateError::Render(format!(
                    "the chat template took longer than {DEADLINE:?}"
                )))
            }
            Err(RecvTimeoutError::Disconnected) => {
                *g = None;
                Err(TemplateError::Render(format!(
                    "the chat template exceeded its sandbox ({} MiB of memory) and was stopped",
                    LIMIT_KIB / 1024
                )))
            }
        }
    }
}

/// The helper's side: read the template, then answer render requests until stdin closes.
pub fn serve_helper() -> std::io::Result<()> {
    let stdin = std::io::stdin();
    let mut out = std::io::stdout().lock();
    let mut lines = stdin.lock().lines();
    let Some(first) = lines.next() else {
        return Ok(());
    };
    let init: Value = serde_json::from_str(&first?).unwrap_or(Value::Null);
    let s = |k: &str| init.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    let template = ChatTemplate::new(&s("source"), &s("bos"), &s("eos"));
    for line in lines {
        let line = line?;
        let answer = match (&template, serde_json::from_str::<Value>(&line)) {
            (Err(e), _) => json!({"error": e.to_string()}),
            (_, Err(e)) => json!({"error": format!("bad request to the sandbox: {e}")}),
            (Ok(t), Ok(req)) => {
                let messages: Vec<ChatMessage> = req
                    .get("messages")
                    .cloned()
                    .and_then(|m| serde_json::from_value(m).ok())
                    .unwrap_or_default();
                let agp = req
                    .get("add_generation_prompt")
                    .and_then(Value::as_bool)
                    .unwrap_or(true);
                let extra: TemplateExtra = req
                    .get("extra")
                    .cloned()
                    .and_then(|m| serde_json::from_value(m).ok())
                    .unwrap_or_default();
                match t.render_with(&messages, agp, &extra) {
                    Ok(text) => json!({"ok": text}),
                    Err(TemplateError::Raised(m)) => json!({"raised": m}),
                    Err(e) => json!({"error": e.to_string()}),
                }
            }
        };
        writeln!(out, "{answer}")?;
        out.flush()?;
    }
    Ok(())
}
