//! Answer shapes: a `Shape` says how chat or completions chunks look; `sse` streams a
//! generation as server-sent events ending with `data: [DONE]`, `collect` gathers it for a
//! single JSON answer. Both read the same deltas, so the streamed text equals the other.

use super::error::ApiError;
use crate::generate::{Delta, Generation, LogprobEntry, Usage};
use crate::state::{random_hex, unix_now, AppState};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;

/// What every answer and chunk of one request carries: id, object, created, model.
pub struct Envelope {
    pub id: String,
    /// The whole answer's object (`chat.completion`, `text_completion`).
    pub object: &'static str,
    /// A streamed chunk's object.
    pub chunk_object: &'static str,
    pub created: u64,
    pub st: Arc<AppState>,
    pub include_usage: bool,
}

impl Envelope {
    pub fn new(
        st: Arc<AppState>,
        id_prefix: &str,
        object: &'static str,
        chunk_object: &'static str,
        include_usage: bool,
    ) -> Envelope {
        Envelope {
            id: format!("{id_prefix}-{}", random_hex()),
            object,
            chunk_object,
            created: unix_now(),
            st,
            include_usage,
        }
    }

    fn wrap(&self, object: &str, choices: Vec<Value>) -> Value {
        json!({
            "id": self.id,
            "object": object,
            "created": self.created,
            "model": self.st.model_name,
            "system_fingerprint": super::FINGERPRINT,
            "choices": choices,
        })
    }

    /// A streamed chunk (with `"usage": null` when a usage chunk will close the stream).
    pub fn chunk(&self, choices: Vec<Value>) -> Value {
        let mut v = self.wrap(self.chunk_object, choices);
        if self.include_usage {
            v["usage"] = Value::Null;
        }
        v
    }

    /// The non-streamed answer.
    pub fn whole(&self, choices: Vec<Value>, usage: Usage) -> Value {
        let mut v = self.wrap(self.object, choices);
        v["usage"] = usage.json();
        v
    }
}

pub trait Shape: Send + 'static {
    fn envelope(&self) -> &Envelope;
    /// Chunks before any text (chat: each choice's role).
    fn head(&mut self, n_choices: usize) -> Vec<Value>;
    /// Chunks for one delta (text, then the finish reason on its own chunk).
    fn delta(&mut self, d: Delta) -> Vec<Value>;
    /// The closing chunk with the token counts (`stream_options.include_usage`).
    fn usage(&self, u: Usage) -> Value {
        let mut v = self.envelope().chunk(Vec::new());
        v["usage"] = u.json();
        v
    }
}

/// The usage chunk is sent when the shape's envelope says the client asked for it.
pub fn sse<S: Shape>(g: Generation, mut shape: S) -> Response {
    struct St<S> {
        g: Generation,
        shape: S,
        queue: VecDeque<String>,
        ended: bool,
    }
    let queue = shape
        .head(g.n_choices())
        .into_iter()
        .map(|v| v.to_string())
        .collect();
    let st = St {
        g,
        shape,
        queue,
        ended: false,
    };
    let stream = futures_util::stream::unfold(st, |mut st| async move {
        loop {
            if let Some(data) = st.queue.pop_front() {
                return Some((Ok::<_, Infallible>(Event::default().data(data)), st));
            }
            if st.ended {
                return None;
            }
            match st.g.next().await {
                Some(Ok(d)) => {
                    let chunks = st.shape.delta(d);
                    st.queue.extend(chunks.into_iter().map(|v| v.to_string()));
                }
                Some(Err(e)) => {
                    st.queue.push_back(e.json().to_string());
                    st.queue.push_back("[DONE]".into());
                    st.ended = true;
                }
                None => {
                    if st.shape.envelope().include_usage {
                        st.queue.push_back(st.shape.usage(st.g.usage()).to_string());
                    }
                    st.queue.push_back("[DONE]".into());
                    st.ended = true;
                }
            }
        }
    });
    // Comment lines while a request waits in the queue or a long prompt is computed keep
    // proxies from closing an idle connection; clients ignore them.
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(std::time::Duration::from_secs(10)))
        .into_response()
}

/// One choice's whole answer.
#[derive(Default)]
pub struct Collected {
    pub text: String,
    pub logprobs: Vec<LogprobEntry>,
    pub finish: &'static str,
    pub prompt_logprobs: Option<Vec<(u32, Option<LogprobEntry>)>>,
}

pub async fn collect(mut g: Generation) -> Result<(Vec<Collected>, Usage), ApiError> {
    let mut out: Vec<Collected> = (0..g.n_choices()).map(|_| Collected::default()).collect();
    while let Some(d) = g.next().await {
        let d = d?;
        let c = &mut out[d.index];
        c.text.push_str(&d.text);
        c.logprobs.extend(d.logprobs);
        if d.prompt_logprobs.is_some() {
            c.prompt_logprobs = d.prompt_logprobs;
        }
        if let Some(f) = d.finish {
            c.finish = f;
        }
    }
    Ok((out, g.usage()))
}
