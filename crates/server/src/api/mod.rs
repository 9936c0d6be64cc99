//! The HTTP API: OpenAI's routes, llama.cpp's tokenize/detokenize, health and metrics.

pub mod answer;
pub mod chat;
pub mod completions;
pub mod conversation;
pub mod error;
pub mod params;
pub mod stream;
pub mod structured;

use crate::state::AppState;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use error::ApiError;
use params::Body;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;

pub const FINGERPRINT: &str = concat!("suanli-", env!("CARGO_PKG_VERSION"));

/// The body as a JSON object; the HTTP layer's rejections (413 too large, unreadable) keep
/// their status but get OpenAI's error shape.
pub fn read_body(body: Result<Bytes, BytesRejection>) -> Result<Body, ApiError> {
    let bytes = body.map_err(|r| {
        let status = r.status();
        let msg = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "the request body is larger than this server accepts (--max-body)".to_string()
        } else {
            format!("cannot read the request body: {}", r.body_text())
        };
        ApiError::body(status, msg)
    })?;
    Body::parse(&bytes)
}

/// Run CPU-heavy request preparation (tokenizing megabytes, rendering a template) off the
/// async workers, so that one large request cannot stall everyone else's streams.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("preparing the request failed: {e}")))?
}

/// Checks before a generation: the server still takes work, the model is ours.
pub fn begin(st: &AppState, b: &Body) -> Result<(), ApiError> {
    if st.draining.load(Ordering::Relaxed) {
        return Err(ApiError::overloaded("the server is shutting down"));
    }
    check_model(st, b)
}

/// A request's `model`, when given, must be the served one.
fn check_model(st: &AppState, b: &Body) -> Result<(), ApiError> {
    match b.string("model")? {
        Some(m) if m != st.model_name => Err(ApiError::model_not_found(m, &st.model_name)),
        _ => Ok(()),
    }
}

/// `Authorization: Bearer KEY` on the API routes when a key is set.
pub async fn auth(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if let Some(key) = &st.api_key {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !constant_time_eq(given.as_bytes(), key.as_bytes()) {
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(req).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn model_json(st: &AppState) -> Value {
    json!({
        "id": st.model_name,
        "object": "model",
        "created": st.created,
        "owned_by": "suanli",
        "max_model_len": st.max_ctx,
    })
}

pub async fn models(State(st): State<Arc<AppState>>) -> Response {
    axum::Json(json!({"object": "list", "data": [model_json(&st)]})).into_response()
}

pub async fn model(State(st): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    if id == st.model_name {
        axum::Json(model_json(&st)).into_response()
    } else {
        ApiError::model_not_found(&id, &st.model_name).into_response()
    }
}

/// Liveness: 200 while the process can make progress — serving, or finishing its requests
/// after SIGTERM (`{"status": "draining"}`: restarting it then would cut them off); 503 only
/// when an engine step has run far too long.
pub async fn health(State(st): State<Arc<AppState>>) -> Response {
    if let Some(d) = st.worker.clock.stalled() {
        return stalled(d);
    }
    let status = match st.draining.load(Ordering::Relaxed) {
        true => "draining",
        false => "ok",
    };
    axum::Json(json!({ "status": status })).into_response()
}

/// Readiness: 200 only while new requests are welcome; 503 while draining after SIGTERM (so
/// that load balancers and routers send elsewhere before the process ends) or stalled.
pub async fn ready(State(st): State<Arc<AppState>>) -> Response {
    if let Some(d) = st.worker.clock.stalled() {
        return stalled(d);
    }
    if st.draining.load(Ordering::Relaxed) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"status": "draining"})),
        )
            .into_response();
    }
    axum::Json(json!({"status": "ready"})).into_response()
}

fn stalled(d: std::time::Duration) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(json!({"status": "engine stalled", "step_seconds": d.as_secs()})),
    )
        .into_response()
}

/// The routes while the model loads: alive, not ready, every other route 503 with
/// `Retry-After`.
pub fn loading_router() -> axum::Router {
    use axum::routing::get;
    async fn alive() -> Response {
        axum::Json(json!({"status": "loading"})).into_response()
    }
    async fn not_yet() -> Response {
        ApiError::overloaded("the model is still loading").into_response()
    }
    async fn loading() -> Response {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"status": "loading"})),
        )
            .into_response()
    }
    axum::Router::new()
        .route("/health", get(alive))
        .route("/ready", get(loading))
        .fallback(not_yet)
}

pub async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        st.metrics.render(),
    )
        .into_response()
}

/// `POST /tokenize`, in llama.cpp's form — `{"content", "add_special", "parse_special",
/// "with_pieces"}` — or vLLM's, which routers that route by tokens send (vllm-router's
/// `kv_aware` asks each replica): `{"prompt", "add_special_tokens"}` tokenized exactly as
/// `/v1/completions` does, or `{"messages", "tools", "chat_template_kwargs"}` rendered and
/// tokenized exactly as `/v1/chat/completions` does. Answer: `{"tokens", "count",
/// "max_model_len"}`.
pub async fn tokenize(
    State(st): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<axum::Json<Value>, ApiError> {
    let b = read_body(body)?;
    check_model(&st, &b)?;
    let answer = |ids: Vec<Value>, st: &AppState| {
        axum::Json(json!({"count": ids.len(), "max_model_len": st.max_ctx, "tokens": ids}))
    };
    if b.get("messages").is_some() {
        chat::own_template_only(&b)?;
        for (field, wanted) in [
            ("add_generation_prompt", true),
            ("continue_final_message", false),
            // The template places the special tokens; vLLM adds none by default either.
            ("add_special_tokens", false),
        ] {
            if b.bool(field)?.is_some_and(|v| v != wanted) {
                return Err(ApiError::param(
                    field,
                    format!("only `{field}: {wanted}` is supported (as chat completions render)"),
                ));
            }
        }
        let msgs = conversation::messages(&b)?;
        let tools = conversation::tools(&b)?;
        let kwargs = conversation::template_kwargs(&b)?;
        let (ids, _) = chat::render_prompt(&st, msgs, &tools, kwargs).await?;
        return Ok(answer(ids.into_iter().map(|id| json!(id)).collect(), &st));
    }
    blocking(move || {
        let t = &st.tokenizer;
        let ids = if let Some(prompt) = b.string("prompt")? {
            // As a text prompt of /v1/completions: control-token strings parsed, BOS added
            // where the model adds one (unless `add_special_tokens` is false).
            match b.bool("add_special_tokens")?.unwrap_or(true) {
                true => t.encode_prompt(prompt, true),
                false => t.encode(prompt, true),
            }
            .map_err(|e| ApiError::param("prompt", format!("cannot tokenize: {e}")))?
        } else {
            let content = b.string("content")?.ok_or_else(|| {
                ApiError::param(
                    "content",
                    "`content` (or vLLM's `prompt` or `messages`) is required",
                )
            })?;
            let add_special = b.bool("add_special")?.unwrap_or(false);
            let parse_special = b.bool("parse_special")?.unwrap_or(true);
            if add_special {
                t.encode_prompt(content, parse_special)
            } else {
                t.encode(content, parse_special)
            }
            .map_err(|e| ApiError::param("content", format!("cannot tokenize: {e}")))?
        };
        let tokens: Vec<Value> = if b.bool("with_pieces")?.unwrap_or(false) {
            ids.iter()
                .map(|&id| json!({"id": id, "piece": st.token_string(id).0}))
                .collect()
        } else {
            ids.iter().map(|&id| json!(id)).collect()
        };
        Ok(answer(tokens, &st))
    })
    .await
}

/// llama.cpp's `POST /detokenize`: `{"tokens"}` → `{"content"}`.
pub async fn detokenize(
    State(st): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<axum::Json<Value>, ApiError> {
    let b = read_body(body)?;
    blocking(move || {
        let bad = || {
            ApiError::param(
                "tokens",
                format!("`tokens` must be a list of token ids (0..{})", st.vocab),
            )
        };
        let ids = match b.get("tokens") {
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_u64()
                        .filter(|&t| (t as usize) < st.vocab)
                        .map(|t| t as u32)
                })
                .collect::<Option<Vec<u32>>>()
                .ok_or_else(bad)?,
            _ => return Err(bad()),
        };
        Ok(axum::Json(json!({"content": st.tokenizer.decode(&ids)})))
    })
    .await
}

/// `GET /`: a small chat page that streams from this server (the key, if any, is typed in).
pub async fn page() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        include_str!("../page.html"),
    )
        .into_response()
}

pub async fn fallback(req: Request) -> Response {
    // The path goes back bounded (and JSON-escaped), never as the raw bytes the client sent.
    let path: String = req.uri().path().chars().take(64).collect();
    ApiError::not_found(&path).into_response()
}
