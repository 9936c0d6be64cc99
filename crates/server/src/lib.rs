//! `suanli serve`: the OpenAI-compatible HTTP API over the batch engine.
//!
//! One engine thread owns the model and the KV cache and runs continuous-batching steps
//! (`worker`); HTTP handlers on a small tokio runtime parse and check requests (`api`), submit
//! their sequences and turn the engine's token events into answers (`generate`). Handlers and
//! the engine only share channels and the metrics.
#![forbid(unsafe_code)]

pub mod api;
mod generate;
mod metrics;
mod state;
mod worker;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use metrics::Metrics;
use state::AppState;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use suanli_backend::Backend;
use suanli_engine::batch::BatchEngine;
use suanli_tokenizer::Tokenizer;

pub struct ServeConfig {
    pub host: String,
    pub port: u16,
    /// Clients must send `Authorization: Bearer KEY` on the API routes.
    pub api_key: Option<String>,
    /// The model id clients use.
    pub model_name: String,
    /// Largest request body accepted (413 beyond).
    pub max_body_bytes: usize,
    /// After SIGTERM, how long requests in flight may take to finish.
    pub shutdown_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Every route but `/health` needs the API key when one is set (unknown paths too, so that
/// they reveal nothing).
pub fn router(st: Arc<AppState>, max_body: usize) -> Router {
    let keyed = Router::new()
        .route("/v1/chat/completions", post(api::chat::handler))
        .route("/v1/completions", post(api::completions::handler))
        .route("/v1/models", get(api::models))
        .route("/v1/models/{id}", get(api::model))
        .route("/tokenize", post(api::tokenize))
        .route("/detokenize", post(api::detokenize))
        .route("/metrics", get(api::metrics))
        .route("/", get(api::page))
        .fallback(api::fallback)
        .layer(axum::middleware::from_fn_with_state(st.clone(), api::auth));
    Router::new()
        .route("/health", get(api::health))
        .merge(keyed)
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(st)
}

/// Serve on `listener` until `shutdown` resolves; then stop taking requests, let those in
/// flight finish for up to `cfg.shutdown_timeout`, and return.
pub async fn serve_listener<B>(
    listener: tokio::net::TcpListener,
    cfg: ServeConfig,
    engine: BatchEngine<B>,
    tokenizer: Tokenizer,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError>
where
    B: Backend + Send + 'static,
    BatchEngine<B>: Send,
{
    let metrics = Arc::new(Metrics::default());
    let max_ctx = engine.scheduler().config().max_ctx;
    let vocab = tokenizer.vocab_size().min(engine.model.vocab_size());
    // A template that cannot render a plain exchange is reported now, not at the first request.
    if let Err(e) = suanli_tokenizer::chat_prompt(
        &tokenizer,
        &[
            suanli_tokenizer::ChatMessage::new("user", "Hello"),
            suanli_tokenizer::ChatMessage::new("assistant", "Hi"),
            suanli_tokenizer::ChatMessage::new("user", "How are you?"),
        ],
    ) {
        eprintln!("warning: {e}; /v1/chat/completions will answer 400 (use /v1/completions)");
    }
    let (worker, engine_thread) = worker::spawn(engine, metrics.clone())?;
    let st = Arc::new(AppState {
        worker,
        tokenizer: Arc::new(tokenizer),
        metrics,
        model_name: cfg.model_name.clone(),
        api_key: cfg.api_key.clone(),
        max_ctx,
        vocab,
        created: state::unix_now(),
        draining: AtomicBool::new(false),
    });
    let app = router(st.clone(), cfg.max_body_bytes);
    let signalled = Arc::new(tokio::sync::Notify::new());
    let on_signal = {
        let st = st.clone();
        let signalled = signalled.clone();
        async move {
            shutdown.await;
            st.draining.store(true, Ordering::Relaxed);
            eprintln!("shutting down: finishing the requests in flight");
            signalled.notify_one();
        }
    };
    let server = axum::serve(listener, app).with_graceful_shutdown(on_signal);
    let timeout = cfg.shutdown_timeout;
    tokio::select! {
        r = server => r?,
        _ = async { signalled.notified().await; tokio::time::sleep(timeout).await } => {
            eprintln!("shutdown: requests still running after {timeout:?} were cut off");
        }
    }
    drop(st);
    // The engine thread ends once no handler holds its channel and its work is done or gone.
    let _ = tokio::task::spawn_blocking(move || engine_thread.join()).await;
    Ok(())
}

/// Bind `cfg.host:cfg.port` and serve until SIGTERM or Ctrl-C.
pub fn serve<B>(cfg: ServeConfig, engine: BatchEngine<B>, tokenizer: Tokenizer) -> Result<(), ServeError>
where
    B: Backend + Send + 'static,
    BatchEngine<B>: Send,
{
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("suanli-http")
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let addr = format!("{}:{}", cfg.host, cfg.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|source| ServeError::Bind {
                addr: addr.clone(),
                source,
            })?;
        let local = listener.local_addr()?;
        eprintln!(
            "serving {} on http://{local} (OpenAI API under /v1; Ctrl-C or SIGTERM stops)",
            cfg.model_name
        );
        serve_listener(listener, cfg, engine, tokenizer, stop_signal()).await
    })
}

/// Resolves at the first SIGTERM or Ctrl-C; a second one ends the process at once.
async fn stop_signal() {
    async fn one() {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            match signal(SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = term.recv() => {},
                        _ = tokio::signal::ctrl_c() => {},
                    }
                }
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    one().await;
    tokio::spawn(async {
        one().await;
        eprintln!("second signal: exiting without waiting for requests in flight");
        std::process::exit(1);
    });
}
