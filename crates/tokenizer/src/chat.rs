//! Turn chat messages into token ids. Template scaffolding is tokenized with special tokens
//! enabled; message content never is, so user text cannot forge control tokens.

use crate::template::{RenderTemplate, TemplateExtra};
use crate::{ChatMessage, Tokenizer};
use serde_json::Value;

fn sentinel(i: usize) -> String {
    format!("\u{E000}{i}\u{E001}")
}

/// Token ids for a conversation, ending with the assistant's turn opening.
pub fn chat_prompt(tok: &Tokenizer, messages: &[ChatMessage]) -> Result<Vec<u32>, String> {
    let template = match tok.template() {
        Some(t) => t.map_err(|e| e.to_string())?,
        None => return Err("this model has no chat template".into()),
    };
    chat_prompt_with(tok, &template, messages)
}

/// `chat_prompt` with the template rendered by `template` (for example in a sandbox process).
pub fn chat_prompt_with(
    tok: &Tokenizer,
    template: &dyn RenderTemplate,
    messages: &[ChatMessage],
) -> Result<Vec<u32>, String> {
    chat_prompt_full(tok, template, messages, &TemplateExtra::default()).map(|(ids, _)| ids)
}

fn has_control(tok: &Tokenizer, s: &str) -> Result<bool, String> {
    Ok(tok.encode(s, true)?.iter().any(|&t| tok.is_control(t)))
}

/// The first string in `v` (a key or a value, at any depth) that holds control-token text.
fn control_text<'a>(tok: &Tokenizer, v: &'a Value) -> Result<Option<&'a str>, String> {
    match v {
        Value::String(s) => Ok(has_control(tok, s)?.then_some(s.as_str())),
        Value::Array(a) => {
            for x in a {
                if let Some(s) = control_text(tok, x)? {
                    return Ok(Some(s));
                }
            }
            Ok(None)
        }
        Value::Object(o) => {
            for (k, x) in o {
                if has_control(tok, k)? {
                    return Ok(Some(k.as_str()));
                }
                if let Some(s) = control_text(tok, x)? {
                    return Ok(Some(s));
                }
            }
            Ok(None)
        }
        _ => Ok(None),
    }
}

/// `chat_prompt_with` for a conversation with tools, tool calls and template variables; also
/// returns the rendered text (with the messages' content in place). Tools, tool calls and
/// names are rendered as part of the scaffolding, so they may hold no control-token text.
pub fn chat_prompt_full(
    tok: &Tokenizer,
    template: &dyn RenderTemplate,
    messages: &[ChatMessage],
    extra: &TemplateExtra,
) -> Result<(Vec<u32>, String), String> {
    let check = |what: String, v: &Value| -> Result<(), String> {
        match control_text(tok, v)? {
            Some(s) => Err(format!(
                "{what} contains control-token text ({s:?}), which the chat template would turn into control tokens"
            )),
            None => Ok(()),
        }
    };
    if let Some(t) = &extra.tools {
        check("tools".into(), t)?;
    }
    for (i, m) in messages.iter().enumerate() {
        if let Some(c) = &m.tool_calls {
            check(format!("messages[{i}].tool_calls"), c)?;
        }
        for s in [&m.name, &m.tool_call_id].into_iter().flatten() {
            check(format!("messages[{i}]"), &Value::String(s.clone()))?;
        }
    }
    // Render with placeholders so that content can be tokenized separately.
    let marked: Vec<ChatMessage> = messages
        .iter()
        .enumerate()
        .map(|(i, m)| ChatMessage {
            content: sentinel(i),
            ..m.clone()
        })
        .collect();
    let rendered = template
        .render_with(&marked, true, extra)
        .map_err(|e| e.to_string())?;
    let mut ids = Vec::new();
    let bos_in_template = !tok.bos_token.is_empty() && rendered.starts_with(&tok.bos_token);
    if tok.add_bos && !bos_in_template {
        ids.extend(tok.bos_id);
    }
    let mut rest = rendered.as_str();
    // The rendered text with the content in place, built as the pieces are tokenized.
    let mut text = String::with_capacity(rendered.len());
    let mut next = 0;
    while next < messages.len() {
        let s = sentinel(next);
        match rest.find(&s) {
            Some(p) => {
                ids.extend(tok.encode(&rest[..p], true)?);
                ids.extend(tok.encode(&messages[next].content, false)?);
                text.push_str(&rest[..p]);
                text.push_str(&messages[next].content);
                rest = &rest[p + s.len()..];
                next += 1;
            }
            None => break,
        }
    }
    if next < messages.len() || rest.contains('\u{E000}') {
        // The template transformed the content (sliced it, changed its case…), so content and
        // scaffolding cannot be told apart: render for real and tokenize it all with special
        // tokens — which is safe only if no message holds control-token text.
        for (i, m) in messages.iter().enumerate() {
            if tok
                .encode(&m.content, true)?
                .iter()
                .any(|&t| tok.is_control(t))
            {
                return Err(format!(
                    "messages[{i}] contains control-token text, which this model's chat template \
                     would turn into control tokens"
                ));
            }
        }
        let full = template
            .render_with(messages, true, extra)
            .map_err(|e| e.to_string())?;
        let mut ids = Vec::new();
        if tok.add_bos && !(bos_in_template) {
            ids.extend(tok.bos_id);
        }
        ids.extend(tok.encode(&full, true)?);
        return Ok((ids, full));
    }
    ids.extend(tok.encode(rest, true)?);
    text.push_str(rest);
    Ok((ids, text))
}
