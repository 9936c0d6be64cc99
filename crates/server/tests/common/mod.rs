//! An in-process server on a real catalog model, and a minimal HTTP/1.1 client over a plain
//! socket (so tests can also send broken requests and hang up mid-answer).
#![allow(dead_code)]

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use suanli_backend::KvDType;
use suanli_cpu::CpuBackend;
use suanli_engine::batch::BatchEngine;
use suanli_engine::scheduler::SchedConfig;
use suanli_formats::{catalog, open_model, ModelSource};
use suanli_models::Model;
use suanli_server::ServeConfig;
use suanli_tokenizer::Tokenizer;

pub const KEY: &str = "test-key";

pub struct Server {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Ask for a graceful shutdown and wait until `serve_listener` has returned.
    pub fn shutdown(mut self) -> Duration {
        let t = Instant::now();
        let _ = self.stop.take().unwrap().send(());
        self.thread.take().unwrap().join().unwrap();
        t.elapsed()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

pub fn model_path() -> std::path::PathBuf {
    catalog::pull(catalog::find("smollm2-135m").unwrap()).unwrap()
}

/// Start a server on SmolLM2-135M with the given batch/queue limits and `SUANLI` test key.
pub fn start(max_batch: usize, max_queue: usize, max_body: usize) -> Server {
    start_with(max_batch, max_queue, max_body, Duration::from_secs(20))
}

/// `start` with the time a graceful shutdown waits for requests in flight before cutting them off.
pub fn start_with(
    max_batch: usize,
    max_queue: usize,
    max_body: usize,
    shutdown_timeout: Duration,
) -> Server {
    start_custom(max_batch, max_queue, max_body, shutdown_timeout, 512, None)
}

/// `start_with` with a KV cache of `num_blocks` blocks of 16 tokens, publishing KV events
/// when `kv_events` is given.
pub fn start_custom(
    max_batch: usize,
    max_queue: usize,
    max_body: usize,
    shutdown_timeout: Duration,
    num_blocks: usize,
    kv_events: Option<suanli_server::kv_events::KvEventsConfig>,
) -> Server {
    let path = model_path();
    let src = open_model(&path).unwrap();
    let tok = match &src {
        ModelSource::Gguf { file, .. } => Tokenizer::from_gguf(file).unwrap(),
        ModelSource::Hf(d) => Tokenizer::from_hf_dir(&d.dir).unwrap(),
    };
    let backend = CpuBackend::new(Some(2)).unwrap();
    let model = Model::load(&src, &backend).unwrap();
    let cfg = SchedConfig {
        max_batch,
        max_step_tokens: 256,
        max_queue,
        block_size: 16,
        num_blocks,
        max_ctx: 1024,
    };
    let eog = tok.eog_ids.iter().copied().collect();
    let engine = BatchEngine::new(backend, model, cfg, KvDType::F16, eog).unwrap();
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    std_listener.set_nonblocking(true).unwrap();
    let addr = std_listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut scfg = ServeConfig {
        host: "127.0.0.1".into(),
        port: addr.port(),
        api_key: Some(KEY.into()),
        model_name: "smollm2-135m".into(),
        max_body_bytes: max_body,
        shutdown_timeout,
        template_sandbox: None,
        header_read_timeout: Duration::from_secs(2),
        reasoning_separate: true,
        kv_events: None,
        access_log: suanli_server::access_log::AccessLog::Text,
    };
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            if let Some(cfg) = kv_events {
                scfg.kv_events = Some(
                    suanli_server::kv_events::KvPublisher::bind(cfg)
                        .await
                        .unwrap(),
                );
            }
            let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
            suanli_server::serve_listener(listener, scfg, engine, tok, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
    });
    Server {
        addr,
        stop: Some(stop),
        thread: Some(thread),
    }
}

pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    /// The `data:` payloads of a server-sent event stream.
    pub fn events(&self) -> Vec<String> {
        String::from_utf8(self.body.clone())
            .unwrap()
            .lines()
            .filter_map(|l| l.strip_prefix("data: ").map(str::to_owned))
            .collect()
    }
}

/// Send raw request bytes; read the whole answer (the connection is closed after it).
pub fn raw(addr: SocketAddr, request: &[u8]) -> Reply {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    s.write_all(request).unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("bad status line {line:?}"))
        .parse()
        .unwrap();
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').unwrap();
        headers.push((k.trim().to_owned(), v.trim().to_owned()));
    }
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let mut body = Vec::new();
    if chunked {
        loop {
            line.clear();
            r.read_line(&mut line).unwrap();
            let n = usize::from_str_radix(line.trim(), 16).unwrap();
            if n == 0 {
                break;
            }
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk).unwrap();
            body.extend_from_slice(&chunk[..n]);
        }
    } else {
        r.read_to_end(&mut body).unwrap();
    }
    Reply {
        status,
        headers,
        body,
    }
}

pub fn request_bytes(method: &str, path: &str, key: Option<&str>, body: &str) -> Vec<u8> {
    let auth = key
        .map(|k| format!("Authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

pub fn post(addr: SocketAddr, path: &str, body: &Value) -> Reply {
    raw(
        addr,
        &request_bytes("POST", path, Some(KEY), &body.to_string()),
    )
}

pub fn get(addr: SocketAddr, path: &str) -> Reply {
    raw(addr, &request_bytes("GET", path, Some(KEY), ""))
}

/// Open a streamed request and return the socket once the first bytes of the answer arrived.
pub fn open_stream(addr: SocketAddr, body: &Value) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(&request_bytes(
        "POST",
        "/v1/completions",
        Some(KEY),
        &body.to_string(),
    ))
    .unwrap();
    let mut buf = [0u8; 64];
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let n = s.read(&mut buf).unwrap();
    assert!(n > 0);
    s
}

/// A metric's value from `/metrics`.
pub fn metric(addr: SocketAddr, name: &str) -> f64 {
    let r = get(addr, "/metrics");
    let text = String::from_utf8(r.body).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

/// Wait until the server holds no sequences and no KV blocks.
pub fn wait_idle(addr: SocketAddr) {
    let t = Instant::now();
    loop {
        let busy = metric(addr, "suanli_requests_running")
            + metric(addr, "suanli_requests_waiting")
            + metric(addr, "suanli_kv_blocks_used");
        if busy == 0.0 {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the server still holds sequences or KV blocks"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
