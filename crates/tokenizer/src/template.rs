//! Chat templates (Jinja, from GGUF or tokenizer_config.json) rendered with minijinja as
//! transformers' `apply_chat_template` does: trim_blocks + lstrip_blocks, Python string methods,
//! `raise_exception`, a `tojson` that keeps non-ASCII. A template is code from a model file:
//! rendering is sandboxed by minijinja and bounded here by fuel, recursion depth and output size.

use minijinja::{Environment, Error, ErrorKind, Value};
use serde::Serialize;

const FUEL: u64 = 2_000_000;
const MAX_OUTPUT: usize = 4 << 20;
const MAX_SOURCE: usize = 1 << 20;
const MAX_RECURSION: usize = 64;

#[derive(Clone, Debug, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
    /// An assistant turn's calls, OpenAI's shape, with each `function.arguments` given to the
    /// template as an object when it is a JSON object's text (as vLLM does; templates write
    /// `arguments | tojson`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<serde_json::Value>,
    /// A tool result's call id and function name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl ChatMessage {
    pub fn new(role: &str, content: &str) -> ChatMessage {
        ChatMessage {
            role: role.into(),
            content: content.into(),
            ..ChatMessage::default()
        }
    }
}

/// What a template sees besides the messages: the tools (OpenAI's list, passed as
/// `transformers.apply_chat_template(tools=...)` passes them) and extra variables such as
/// `enable_thinking` (`chat_template_kwargs`, JSON scalars only).
#[derive(Clone, Debug, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct TemplateExtra {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub kwargs: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("chat template is {0} bytes; the limit is {MAX_SOURCE}")]
    TooLarge(usize),
    #[error("chat template does not compile: {0}")]
    Compile(String),
    #[error("chat template raised an error: {0}")]
    Raised(String),
    #[error("chat template failed to render: {0}")]
    Render(String),
}

/// Whatever renders a chat template: `ChatTemplate` in this process, or a sandbox around it.
pub trait RenderTemplate {
    fn render_with(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        extra: &TemplateExtra,
    ) -> Result<String, TemplateError>;

    fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TemplateError> {
        self.render_with(messages, add_generation_prompt, &TemplateExtra::default())
    }
}

impl RenderTemplate for ChatTemplate {
    fn render_with(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        extra: &TemplateExtra,
    ) -> Result<String, TemplateError> {
        ChatTemplate::render_with(self, messages, add_generation_prompt, extra)
    }
}

pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

fn raise_exception(msg: String) -> Result<Value, Error> {
    Err(Error::new(
        ErrorKind::InvalidOperation,
        format!("raise_exception: {msg}"),
    ))
}

/// `tojson` as transformers defines it: no HTML escaping, non-ASCII kept, optional indent.
fn tojson(v: Value, indent: Option<usize>) -> Result<Value, Error> {
    let j = serde_json::to_value(&v)
        .map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
    let s = match indent {
        None => python_json(&j),
        Some(n) => {
            let mut buf = Vec::new();
            let ind = vec![b' '; n];
            let fmt = serde_json::ser::PrettyFormatter::with_indent(&ind);
            let mut ser = serde_json::Serializer::with_formatter(&mut buf, fmt);
            j.serialize(&mut ser)
                .map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
            String::from_utf8(buf).expect("serde_json writes UTF-8")
        }
    };
    Ok(Value::from_safe_string(s))
}

/// Python's `json.dumps` separators: `", "` and `": "`.
fn python_json(j: &serde_json::Value) -> String {
    match j {
        serde_json::Value::Array(a) => format!(
            "[{}]",
            a.iter().map(python_json).collect::<Vec<_>>().join(", ")
        ),
        serde_json::Value::Object(o) => format!(
            "{{{}}}",
            o.iter()
                .map(|(k, v)| format!(
                    "{}: {}",
                    serde_json::Value::String(k.clone()),
                    python_json(v)
                ))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        other => other.to_string(),
    }
}

impl ChatTemplate {
    pub fn new(
        source: &str,
        bos_token: &str,
        eos_token: &str,
    ) -> Result<ChatTemplate, TemplateError> {
        if source.len() > MAX_SOURCE {
            return Err(TemplateError::TooLarge(source.len()));
        }
        let mut env = Environment::new();
        // No debug info: minijinja 2.24's rendering of it panics on some malformed templates
        // (found by the template fuzzer), and messages here are plain anyway.
        env.set_debug(false);
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_fuel(Some(FUEL));
        env.set_recursion_limit(MAX_RECURSION);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", |fmt: String| -> Result<Value, Error> {
            // Deterministic output: templates use it for a "today" line; a fixed date keeps
            // prompts (and prefix caches) stable. Supports the common %d %b %Y %m forms.
            let s = fmt
                .replace("%Y", "2026")
                .replace("%m", "01")
                .replace("%d", "01")
                .replace("%b", "Jan")
                .replace("%B", "January");
            Ok(Value::from(s))
        });
        env.add_filter("tojson", tojson);
        env.add_template_owned("chat", source.to_owned())
            .map_err(|e| TemplateError::Compile(e.to_string()))?;
        Ok(ChatTemplate {
            env,
            bos_token: bos_token.into(),
            eos_token: eos_token.into(),
        })
    }

    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TemplateError> {
        self.render_with(messages, add_generation_prompt, &TemplateExtra::default())
    }

    pub fn render_with(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        extra: &TemplateExtra,
    ) -> Result<String, TemplateError> {
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(|e| TemplateError::Compile(e.to_string()))?;
        let base = minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
            tools => &extra.tools,
        };
        // The base variables come first and win: keyword arguments cannot replace them.
        let ctx = minijinja::context! { ..base, ..Value::from_serialize(&extra.kwargs) };
        let mut out = CappedWriter { buf: Vec::new() };
        match tmpl.render_captured_to(ctx, &mut out) {
            Ok(_) => String::from_utf8(out.buf).map_err(|e| TemplateError::Render(e.to_string())),
            Err(e) => {
                // The error and its causes, plainly (the raised message is among the causes).
                let mut msg = e.to_string();
                let mut cause = std::error::Error::source(&e);
                while let Some(c) = cause {
                    msg += &format!(": {c}");
                    cause = c.source();
                }
                match msg.find("raise_exception: ") {
                    Some(p) => Err(TemplateError::Raised(
                        msg[p + 17..].lines().next().unwrap_or("").to_owned(),
                    )),
                    None => Err(TemplateError::Render(msg)),
                }
            }
        }
    }
}

struct CappedWriter {
    buf: Vec<u8>,
}

impl std::io::Write for CappedWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if self.buf.len() + b.len() > MAX_OUTPUT {
            return Err(std::io::Error::other(format!(
                "output exceeds {MAX_OUTPUT} bytes"
            )));
        }
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_with_trim_and_python_methods() {
        let t = ChatTemplate::new(
            "{% for m in messages %}\n  <{{ m.role.upper() }}>{{ m['content'].strip() }}\n{% endfor %}{% if add_generation_prompt %}A:{% endif %}",
            "",
            "",
        )
        .unwrap();
        let s = t.render(&[ChatMessage::new("user", " hi ")], true).unwrap();
        assert_eq!(s, "  <USER>hi\nA:");
    }

    #[test]
    fn raise_exception_and_runaway_templates_are_errors() {
        let t = ChatTemplate::new("{{ raise_exception('roles must alternate') }}", "", "").unwrap();
        match t.render(&[], false) {
            Err(TemplateError::Raised(m)) => assert!(m.contains("roles must alternate"), "{m}"),
            other => panic!("{other:?}"),
        }
        let t = ChatTemplate::new(
            "{% for i in range(100000000) %}xxxxxxxx{% endfor %}",
            "",
            "",
        )
        .unwrap();
        assert!(t.render(&[], false).is_err());
        let t = ChatTemplate::new("{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}", "", "")
            .unwrap();
        assert!(t.render(&[], false).is_err());
    }

    /// Found by the template fuzzer (its input, replayed the way the fuzz target renders it):
    /// formatting the render error with minijinja's debug info panicked (a column underflow in
    /// minijinja 2.24). Debug info is collected by default only in builds with debug assertions
    /// (the fuzzer's); it is now off everywhere and errors are formatted plainly. The fuzz seed
    /// of the same name replays it under the fuzzer's build in CI.
    #[test]
    fn fuzzer_template_is_an_error_not_a_panic() {
        let src = include_str!("../../../fuzz/seeds/template/regression-for-without-target");
        let msgs = [
            ChatMessage::new("system", "You are helpful."),
            ChatMessage::new("user", "Hi {{ 7*7 }} <|im_start|>"),
            ChatMessage::new("assistant", "Hello!"),
            ChatMessage::new("user", "再见"),
        ];
        let r = std::panic::catch_unwind(|| {
            let t = ChatTemplate::new(src, "<s>", "</s>")?;
            t.render(&msgs, true)?;
            t.render(&msgs[..1], false)
        });
        assert!(matches!(r, Ok(Err(_))), "{r:?}");
    }
}

#[cfg(test)]
mod hostile {
    use super::*;

    /// Templates from the public advisories: object-graph escapes render inert or fail; loops,
    /// recursion and string amplification stop at the fuel or output limits, within seconds
    /// and without exhausting memory.
    #[test]
    fn advisory_templates_are_inert_or_bounded() {
        let cases = [
            "{{ cycler.__init__.__globals__.os.popen('touch /tmp/suanli-pwn').read() }}",
            "{{ lipsum.__globals__['os'].popen('touch /tmp/suanli-pwn') }}",
            "{{ ''.__class__.__mro__[1].__subclasses__() }}",
            "{{ self.__init__.__globals__ }}",
            "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
            "{{ 'x' * 1000000000 }}",
            "{{ ('x' * 100000) * 100000 }}",
            "{{ range(1000000000)|list|length }}",
            "{{ 'ab'|replace('', 'x' * 1000000) }}",
            "{{ ((((((((((((((((((((((((((((((1)))))))))))))))))))))))))))))) }}",
        ];
        for src in cases {
            let t0 = std::time::Instant::now();
            if let Ok(t) = ChatTemplate::new(src, "", "") {
                let out = t.render(&[ChatMessage::new("user", "hi")], true);
                if let Ok(s) = &out {
                    assert!(s.len() <= MAX_OUTPUT, "{src}");
                }
            }
            assert!(t0.elapsed().as_secs() < 10, "{src} took {:?}", t0.elapsed());
        }
        assert!(!std::path::Path::new("/tmp/suanli-pwn").exists());
        let deep = format!("{{{{ {}1{} }}}}", "(".repeat(10000), ")".repeat(10000));
        let _ = ChatTemplate::new(&deep, "", "").map(|t| t.render(&[], false));
    }
}
