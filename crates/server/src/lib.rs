//! `suanli serve`: the OpenAI-compatible HTTP API over the batch engine.
//!
//! One engine thread owns the model and the KV cache and runs continuous-batching steps
//! (`worker`); HTTP handlers on a small tokio runtime parse and check requests (`api`), submit
//! their sequences and turn the engine's token events into answers (`generate`). Handlers and
//! the engine only share channels and the metrics.
#![forbid(unsafe_code)]

pub mod access_log;
pub mod api;
mod generate;
pub mod kv_events;
mod metrics;
pub mod sandbox;
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
    /// A client that has not sent a whole request head within this is disconnected (slowloris).
    pub header_read_timeout: Duration,
    /// Render chat templates in a memory-capped helper process started from this executable
    /// (`EXE __render-template`, answered by `sandbox::serve_helper`); `None` renders in process.
    pub template_sandbox: Option<std::path::PathBuf>,
    /// Split a reasoning model's `<think>…</think>` into `reasoning_content` (`separate`, the
    /// default) or leave it in `content` (`none`).
    pub reasoning_separate: bool,
    /// Publish the prefix cache's changes (`kv_events`), on sockets already bound.
    pub kv_events: Option<kv_events::KvPublisher>,
    /// A line per request on standard error (`access_log`).
    pub access_log: access_log::AccessLog,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The cause (address in use, permission) follows in the error's chain.
    #[error("cannot listen on {addr}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    KvEvents(#[from] kv_events::BindError),
}

/// Every route but `/health`, `/ready` and the chat page `/` needs the API key when one is set
/// (unknown paths too, so that they reveal nothing).
pub fn router(st: Arc<AppState>, max_body: usize, log: access_log::AccessLog) -> Router {
    let keyed = Router::new()
        .route("/v1/chat/completions", post(api::chat::handler))
        .route("/v1/completions", post(api::completions::handler))
        .route("/v1/models", get(api::models))
        .route("/v1/models/{id}", get(api::model))
        .route("/tokenize", post(api::tokenize))
        .route("/detokenize", post(api::detokenize))
        .route("/metrics", get(api::metrics))
        .fallback(api::fallback)
        .layer(axum::middleware::from_fn_with_state(st.clone(), api::auth));
    Router::new()
        .route("/health", get(api::health))
        .route("/ready", get(api::ready))
        // Static, nothing secret in it: its API requests carry the key entered in its settings.
        .route("/", get(api::page))
        .merge(keyed)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn(move |req, next| {
            access_log::layer(log, req, next)
        }))
        .with_state(st)
}

/// Serve on `listener` until `shutdown` resolves; then stop taking requests, let those in
/// flight finish for up to `cfg.shutdown_timeout`, and return.
pub async fn serve_listener<B>(
    listener: tokio::net::TcpListener,
    cfg: ServeConfig,
    mut engine: BatchEngine<B>,
    tokenizer: Tokenizer,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError>
where
    B: Backend + Send + 'static,
    BatchEngine<B>: Send,
{
    let kv_sink = cfg.kv_events.as_ref().map(|p| {
        engine.enable_kv_events(p.hasher.clone());
        let s = engine.scheduler();
        p.sink(s.config().block_size, s.window())
    });
    let sched = engine.scheduler().config();
    let metrics = Arc::new(Metrics::new(metrics::CacheInfo {
        model_name: cfg.model_name.clone(),
        block_size: sched.block_size,
        num_blocks: sched.num_blocks,
        cache_dtype: engine.kv_dtype().name(),
    }));
    let max_ctx = sched.max_ctx;
    let vocab = tokenizer.vocab_size().min(engine.model.vocab_size());
    let model_vocab = engine.model.vocab_size();
    let template = chat_renderer(&tokenizer, cfg.template_sandbox.as_ref());
    let (worker, engine_thread) = worker::spawn(engine, metrics.clone(), kv_sink)?;
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
        template,
        model_vocab,
        grammar_vocab: std::sync::OnceLock::new(),
        reasoning_separate: cfg.reasoning_separate,
    });
    // The grammar vocabulary (a trie of the model's tokens, ~1 s for 152k) is built now, off
    // the request path, so that the first constrained request does not wait for it.
    let prebuild = st.clone();
    let _ = std::thread::Builder::new()
        .name("grammar-vocab".into())
        .spawn(move || {
            if let Err(e) = prebuild.grammar_vocab() {
                tracing::warn!("constrained decoding is unavailable: {e}");
            }
        });
    let app = router(st.clone(), cfg.max_body_bytes, cfg.access_log);
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
    let header_timeout = cfg.header_read_timeout;
    let server = async move {
        let open = accept_loop(&listener, app, header_timeout, on_signal).await;
        // New connections are refused from here; those open finish their requests.
        drop(listener);
        open.shutdown().await;
    };
    let timeout = cfg.shutdown_timeout;
    tokio::select! {
        _ = server => {},
        _ = async { signalled.notified().await; tokio::time::sleep(timeout).await } => {
            eprintln!("shutdown: requests still running after {timeout:?} were cut off");
        }
    }
    drop(st);
    // The engine thread ends once no handler holds its channel and its work is done or gone.
    let _ = tokio::task::spawn_blocking(move || engine_thread.join()).await;
    Ok(())
}

/// Most connections at once; beyond that new ones are closed at once.
const MAX_CONNECTIONS: usize = 4096;

/// Accept HTTP/1.1 connections until `stop` resolves, with a deadline for each request head and
/// a cap on open connections; then return the open connections (`shutdown` waits for their
/// requests to finish).
async fn accept_loop(
    listener: &tokio::net::TcpListener,
    app: Router,
    header_timeout: Duration,
    stop: impl Future<Output = ()>,
) -> hyper_util::server::graceful::GracefulShutdown {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little, keep serving.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue; // dropping the socket closes it
        };
        let _ = stream.set_nodelay(true);
        // Each request learns its client's address (for the access log).
        let svc = tower::ServiceExt::map_request(
            app.clone(),
            move |mut r: hyper::Request<hyper::body::Incoming>| {
                r.extensions_mut().insert(access_log::Peer(peer));
                r
            },
        );
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc));
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
            drop(slot);
        });
    }
    graceful
}

/// The model's chat template, sandboxed when an executable is given, test-rendered now so that a
/// broken one is reported at start rather than at the first request. `Err`: why chat is off.
fn chat_renderer(
    tok: &Tokenizer,
    sandbox: Option<&std::path::PathBuf>,
) -> Result<state::Renderer, String> {
    let local = match tok.template() {
        None => return Err("this model has no chat template; use /v1/completions".into()),
        Some(Err(e)) => return Err(format!("the model's chat template is unusable: {e}")),
        Some(Ok(t)) => t,
    };
    let r: state::Renderer = match (sandbox, &tok.chat_template) {
        (Some(exe), Some(src)) if cfg!(unix) => Arc::new(sandbox::TemplateSandbox::new(
            exe.clone(),
            src,
            &tok.bos_token,
            &tok.eos_token,
        )),
        _ => Arc::new(local),
    };
    let probe = [
        suanli_tokenizer::ChatMessage::new("user", "Hello"),
        suanli_tokenizer::ChatMessage::new("assistant", "Hi"),
        suanli_tokenizer::ChatMessage::new("user", "How are you?"),
    ];
    if let Err(e) = suanli_tokenizer::chat_prompt_with(tok, r.as_ref(), &probe) {
        eprintln!("warning: the chat template fails on a plain exchange ({e}); requests it cannot render get 400");
    }
    Ok(r)
}

/// Bind `cfg.host:cfg.port` and serve until SIGTERM or Ctrl-C.
pub fn serve<B>(
    cfg: ServeConfig,
    engine: BatchEngine<B>,
    tokenizer: Tokenizer,
) -> Result<(), ServeError>
where
    B: Backend + Send + 'static,
    BatchEngine<B>: Send,
{
    bind(&cfg.host, cfg.port)?.serve(cfg, engine, tokenizer)
}

/// The server's socket, bound before the model loads, so that a busy port or a refused
/// address fails at once instead of after minutes of loading. Until `serve` it answers
/// `/health` with 200 `{"status": "loading"}` (alive), `/ready` with 503 `"loading"`, and
/// every other route with 503 and `Retry-After`; a SIGTERM or Ctrl-C meanwhile exits at once
/// (nothing is in flight).
pub struct Bound {
    rt: tokio::runtime::Runtime,
    stop: tokio::sync::oneshot::Sender<()>,
    /// The loading server; it hands the socket back when stopped.
    task: tokio::task::JoinHandle<tokio::net::TcpListener>,
    signals: tokio::task::JoinHandle<()>,
    pub addr: std::net::SocketAddr,
}

/// Bind `host:port` and answer as a server still loading its model (`Bound`).
pub fn bind(host: &str, port: u16) -> Result<Bound, ServeError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("suanli-http")
        .enable_all()
        .build()?;
    let addr = format!("{host}:{port}");
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(&addr))
        .map_err(|source| ServeError::Bind { addr, source })?;
    let local = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = rt.spawn(async move {
        let stopped = async {
            let _ = stopped.await;
        };
        let open = accept_loop(
            &listener,
            api::loading_router(),
            Duration::from_secs(30),
            stopped,
        )
        .await;
        open.shutdown().await;
        listener
    });
    let signals = rt.spawn(async {
        stop_signal().await;
        eprintln!("stopped while loading the model");
        std::process::exit(0);
    });
    Ok(Bound {
        rt,
        stop,
        task,
        signals,
        addr: local,
    })
}

impl Bound {
    /// Bind the KV-event sockets now (a busy port fails before the model loads).
    pub fn publish_kv_events(
        &self,
        cfg: kv_events::KvEventsConfig,
    ) -> Result<kv_events::KvPublisher, ServeError> {
        Ok(self.rt.block_on(kv_events::KvPublisher::bind(cfg))?)
    }

    /// Serve `engine` on the bound socket until SIGTERM or Ctrl-C.
    pub fn serve<B>(
        self,
        cfg: ServeConfig,
        engine: BatchEngine<B>,
        tokenizer: Tokenizer,
    ) -> Result<(), ServeError>
    where
        B: Backend + Send + 'static,
        BatchEngine<B>: Send,
    {
        let Bound {
            rt,
            stop,
            task,
            signals,
            addr,
        } = self;
        rt.block_on(async move {
            signals.abort();
            let _ = stop.send(());
            let listener = task.await.map_err(std::io::Error::other)?;
            eprintln!(
                "serving {} on http://{addr} (OpenAI API under /v1; Ctrl-C or SIGTERM stops)",
                cfg.model_name
            );
            serve_listener(listener, cfg, engine, tokenizer, stop_signal()).await
        })
    }
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
