//! Turn chat messages into token ids. Template scaffolding is tokenized with special tokens
//! enabled; message content never is, so user text cannot forge control tokens.

use crate::template::RenderTemplate;
use crate::{ChatMessage, Tokenizer};

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
    // Render with placeholders so that content can be tokenized separately.
    let marked: Vec<ChatMessage> = messages
        .iter()
        .enumerate()
        .map(|(i, m)| ChatMessage {
            role: m.role.clone(),
            content: sentinel(i),
        })
        .collect();
    let rendered = template.render(&marked, true).map_err(|e| e.to_string())?;
    let mut ids = Vec::new();
    let bos_in_template = !tok.bos_token.is_empty() && rendered.starts_with(&tok.bos_token);
    if tok.add_bos && !bos_in_template {
        ids.extend(tok.bos_id);
    }
    let mut rest = rendered.as_str();
    let mut next = 0;
    while next < messages.len() {
        let s = sentinel(next);
        match rest.find(&s) {
            Some(p) => {
                ids.extend(tok.encode(&rest[..p], true)?);
                ids.extend(tok.encode(&messages[next].content, false)?);
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
        let full = template.render(messages, true).map_err(|e| e.to_string())?;
        let mut ids = Vec::new();
        if tok.add_bos && !(bos_in_template) {
            ids.extend(tok.bos_id);
        }
        ids.extend(tok.encode(&full, true)?);
        return Ok(ids);
    }
    ids.extend(tok.encode(rest, true)?);
    Ok(ids)
}
