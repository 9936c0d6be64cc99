//! KV-cache events over ZeroMQ, in the wire format vLLM publishes (`--kv-events-config`), so
//! that `vllm-router --policy kv_aware --kv-event-source` and llm-d's KV-cache manager route by
//! each replica's exact prefix-cache contents. See docs/SCALING.md for the format.
//!
//! - PUB socket: one message per engine step that changed the cache, three frames: the topic,
//!   the sequence number (8 bytes, big-endian, from 0), and a MessagePack batch
//!   `[timestamp, [event…], data_parallel_rank]`. Each event is a map tagged by `"type"`:
//!   `BlockStored` (`block_hashes`, `parent_block_hash`, `token_ids`, `block_size`, `lora_id`,
//!   `medium`, `lora_name`, `group_idx`, `kv_cache_spec_kind`), `BlockRemoved`
//!   (`block_hashes`, `medium`, `group_idx`) or `AllBlocksCleared`.
//! - ROUTER socket (optional): a subscriber that saw a gap in the sequence sends
//!   `[empty, start_seq]` and gets back every kept batch from `start_seq` as
//!   `[empty, topic, seq, payload]`, then `[empty, empty, -1, empty]`.
//!
//! The engine thread encodes and hands batches over without waiting; if the publisher falls
//! behind, a batch is dropped and its sequence number skipped, which subscribers see as a gap.

use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::Arc;
use suanli_engine::kv_events::{BlockHash, BlockHasher, KvEvent};
use tokio::sync::mpsc;
use zeromq::{Socket, SocketRecv, SocketSend, ZmqMessage};

/// Where and how to publish.
#[derive(Clone, Debug)]
pub struct KvEventsConfig {
    /// PUB endpoint, as vLLM reads it: bound when it has a wildcard host (`tcp://*:PORT`,
    /// `tcp://[::]:PORT`) for subscribers to connect to (vllm-router); otherwise connected to
    /// a subscriber that binds (llm-d's KV-cache indexer, `tcp://indexer:5557`).
    pub endpoint: String,
    /// ROUTER endpoint for replaying missed batches, bound.
    pub replay_endpoint: Option<String>,
    /// First frame of every message (vLLM's default: empty).
    pub topic: String,
    /// Batches kept for replay.
    pub buffer_steps: usize,
    /// Names the blocks (vLLM's `PYTHONHASHSEED` chain).
    pub hasher: BlockHasher,
}

/// Batches kept for replay take at most this many bytes (the oldest go first).
const REPLAY_BYTES: usize = 64 << 20;
/// Batches waiting for the publisher task; beyond that the engine drops them.
const QUEUE: usize = 1024;

/// The bound sockets' task, fed by the engine thread through `KvSink`.
pub struct KvPublisher {
    tx: mpsc::Sender<(u64, Bytes)>,
    pub hasher: BlockHasher,
}

/// Why the sockets could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot bind the KV events endpoint {endpoint}: {cause}")]
pub struct BindError {
    endpoint: String,
    cause: zeromq::ZmqError,
}

impl KvPublisher {
    /// Bind the sockets and start publishing (on the current tokio runtime).
    pub async fn bind(cfg: KvEventsConfig) -> Result<KvPublisher, BindError> {
        let mut publisher = zeromq::PubSocket::new();
        let ep = zmq_endpoint(&cfg.endpoint);
        let fail = |cause| BindError {
            endpoint: cfg.endpoint.clone(),
            cause,
        };
        let connect = !binds(&cfg.endpoint);
        if !connect {
            publisher.bind(&ep).await.map_err(fail)?;
        }
        let publisher = Arc::new(tokio::sync::Mutex::new(publisher));
        if connect {
            // The subscriber may not be up yet: keep trying in the background (batches meanwhile
            // are kept for replay only), as libzmq would.
            let p = publisher.clone();
            tokio::spawn(async move {
                let mut sock = p.lock().await;
                match sock.connect(&ep).await {
                    Ok(()) => tracing::info!("KV events: connected to {ep}"),
                    Err(e) => {
                        tracing::warn!("KV events: cannot connect to {ep} ({e}); not publishing")
                    }
                }
            });
        }
        let mut replay = None;
        if let Some(r) = &cfg.replay_endpoint {
            let mut sock = zeromq::RouterSocket::new();
            sock.bind(&zmq_endpoint(r))
                .await
                .map_err(|cause| BindError {
                    endpoint: r.clone(),
                    cause,
                })?;
            replay = Some(sock);
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let topic = Bytes::from(cfg.topic.clone().into_bytes());
        tokio::spawn(run(publisher, replay, rx, topic, cfg.buffer_steps.max(1)));
        Ok(KvPublisher {
            tx,
            hasher: cfg.hasher,
        })
    }

    /// The engine thread's end: it encodes and numbers the batches.
    pub fn sink(&self, block_size: usize, window: Option<usize>) -> KvSink {
        KvSink {
            tx: self.tx.clone(),
            seq: 0,
            block_size,
            window,
            dropped: 0,
        }
    }
}

/// vLLM's rule: a wildcard host binds, any other connects.
fn binds(ep: &str) -> bool {
    ep.contains('*') || ep.contains("::")
}

/// `tcp://*:P` is ZeroMQ's every-interface form; the socket library wants an address.
fn zmq_endpoint(ep: &str) -> String {
    ep.replacen("tcp://*:", "tcp://0.0.0.0:", 1)
}

/// What `--kv-events` accepts: `tcp://HOST:PORT` (`*` for every interface).
pub fn check_endpoint(ep: &str) -> Result<(), String> {
    let Some(rest) = ep.strip_prefix("tcp://") else {
        return Err(format!(
            "{ep}: only tcp:// endpoints are supported, e.g. tcp://*:5557"
        ));
    };
    match rest.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(()),
        _ => Err(format!("{ep}: expected tcp://HOST:PORT, e.g. tcp://*:5557")),
    }
}

/// The engine thread's handle: publish what a step changed.
pub struct KvSink {
    tx: mpsc::Sender<(u64, Bytes)>,
    seq: u64,
    block_size: usize,
    window: Option<usize>,
    /// Batches dropped so far because the publisher fell behind.
    dropped: u64,
}

impl KvSink {
    /// Queue `events` as the next batch; never waits.
    pub fn publish(&mut self, events: &[KvEvent]) {
        if events.is_empty() {
            return;
        }
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let payload = encode_batch(ts, events, self.block_size, self.window);
        let seq = self.seq;
        self.seq += 1;
        if self.tx.try_send((seq, Bytes::from(payload))).is_err() {
            self.dropped += 1;
            let n = self.dropped;
            if n.is_power_of_two() {
                tracing::warn!(
                    "KV events: the publisher fell behind; batch {seq} dropped ({n} so far); \
                     subscribers see a gap and forget this replica's cache"
                );
            }
        }
    }
}

/// The batches kept for replay, oldest first, and their bytes.
#[derive(Default)]
struct Kept {
    batches: VecDeque<(u64, Bytes)>,
    bytes: usize,
}

/// Publishes what the engine hands over and keeps it for replay; replay requests are answered
/// by a task of their own, so a slow or hostile replay client never holds up live batches.
async fn run(
    publisher: Arc<tokio::sync::Mutex<zeromq::PubSocket>>,
    replay: Option<zeromq::RouterSocket>,
    mut rx: mpsc::Receiver<(u64, Bytes)>,
    topic: Bytes,
    keep: usize,
) {
    let kept = Arc::new(std::sync::Mutex::new(Kept::default()));
    if let Some(sock) = replay {
        tokio::spawn(serve_replay(sock, kept.clone(), topic.clone()));
    }
    while let Some((seq, payload)) = rx.recv().await {
        let mut m = ZmqMessage::from(topic.clone());
        m.push_back(Bytes::copy_from_slice(&seq.to_be_bytes()));
        m.push_back(payload.clone());
        // Locked only while connecting: nobody to send to yet.
        if let Ok(mut p) = publisher.try_lock() {
            if let Err(e) = p.send(m).await {
                tracing::warn!("KV events: publishing batch {seq} failed: {e}");
            }
        }
        let Ok(mut k) = kept.lock() else { continue };
        k.bytes += payload.len();
        k.batches.push_back((seq, payload));
        while k.batches.len() > keep || k.bytes > REPLAY_BYTES {
            let Some((_, p)) = k.batches.pop_front() else {
                break;
            };
            k.bytes -= p.len();
        }
    }
}

/// How long one replay answer may take before its client is given up on.
const REPLAY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

async fn serve_replay(
    mut sock: zeromq::RouterSocket,
    kept: Arc<std::sync::Mutex<Kept>>,
    topic: Bytes,
) {
    while let Ok(req) = sock.recv().await {
        let answer = answer_replay(&mut sock, req, &kept, &topic);
        if tokio::time::timeout(REPLAY_TIMEOUT, answer).await.is_err() {
            tracing::warn!(
                "KV events: a replay client took over {REPLAY_TIMEOUT:?}; its answer was cut"
            );
        }
    }
}

/// `[identity, empty, start_seq]` → every kept batch from `start_seq`, then the end marker.
async fn answer_replay(
    sock: &mut zeromq::RouterSocket,
    req: ZmqMessage,
    kept: &std::sync::Mutex<Kept>,
    topic: &Bytes,
) {
    let frames = req.into_vec();
    let [id, _, start] = frames.as_slice() else {
        tracing::warn!(
            "KV events: malformed replay request ({} frames)",
            frames.len()
        );
        return;
    };
    let Ok(start) = <[u8; 8]>::try_from(start.as_ref()).map(u64::from_be_bytes) else {
        tracing::warn!("KV events: malformed replay start ({} bytes)", start.len());
        return;
    };
    // A snapshot (the payloads are shared, not copied): publishing goes on meanwhile.
    let batches: Vec<(u64, Bytes)> = match kept.lock() {
        Ok(k) => k
            .batches
            .iter()
            .filter(|(s, _)| *s >= start)
            .cloned()
            .collect(),
        Err(_) => Vec::new(),
    };
    let reply = |topic: Bytes, seq: Bytes, payload: Bytes| {
        let mut m = ZmqMessage::from(id.clone());
        m.push_back(Bytes::new());
        m.push_back(topic);
        m.push_back(seq);
        m.push_back(payload);
        m
    };
    for (seq, payload) in batches {
        let seq = Bytes::copy_from_slice(&seq.to_be_bytes());
        if sock.send(reply(topic.clone(), seq, payload)).await.is_err() {
            return;
        }
    }
    let end = Bytes::copy_from_slice(&(-1i64).to_be_bytes());
    let _ = sock.send(reply(Bytes::new(), end, Bytes::new())).await;
}

/// vLLM's medium for the cache attention reads directly (routers discount the other tiers).
const MEDIUM: &str = "GPU";

/// A batch as MessagePack: `[ts, [event…], 0]`.
pub fn encode_batch(
    ts: f64,
    events: &[KvEvent],
    block_size: usize,
    window: Option<usize>,
) -> Vec<u8> {
    let mut w = Mp(Vec::with_capacity(256));
    w.array(3);
    w.f64(ts);
    w.array(events.len());
    for e in events {
        match e {
            KvEvent::Stored {
                hashes,
                parent,
                tokens,
            } => {
                w.map(10 + window.is_some() as usize);
                w.str("type");
                w.str("BlockStored");
                w.str("block_hashes");
                w.hashes(hashes);
                w.str("parent_block_hash");
                match parent {
                    Some(p) => w.bin(p),
                    None => w.nil(),
                }
                w.str("token_ids");
                w.array(tokens.len());
                for &t in tokens {
                    w.uint(t as u64);
                }
                w.str("block_size");
                w.uint(block_size as u64);
                w.str("lora_id");
                w.nil();
                w.str("medium");
                w.str(MEDIUM);
                w.str("lora_name");
                w.nil();
                w.str("group_idx");
                w.uint(0);
                w.str("kv_cache_spec_kind");
                match window {
                    None => w.str("full_attention"),
                    Some(n) => {
                        w.str("sliding_window");
                        w.str("kv_cache_spec_sliding_window");
                        w.uint(n as u64);
                    }
                }
            }
            KvEvent::Removed { hashes } => {
                w.map(4);
                w.str("type");
                w.str("BlockRemoved");
                w.str("block_hashes");
                w.hashes(hashes);
                w.str("medium");
                w.str(MEDIUM);
                w.str("group_idx");
                w.uint(0);
            }
            KvEvent::AllCleared => {
                w.map(1);
                w.str("type");
                w.str("AllBlocksCleared");
            }
        }
    }
    w.uint(0); // data-parallel rank
    w.0
}

/// The MessagePack forms the batches use, each in its shortest encoding.
struct Mp(Vec<u8>);

impl Mp {
    /// A container or string head: the fix form up to `fix_max`, then 8 (if the type has it),
    /// 16 and 32-bit lengths.
    fn len_head(&mut self, n: usize, fix: u8, fix_max: usize, one: Option<u8>, two: u8, four: u8) {
        if n <= fix_max {
            self.0.push(fix | n as u8);
        } else if let (Some(tag), true) = (one, n <= 0xff) {
            self.0.extend_from_slice(&[tag, n as u8]);
        } else if n <= 0xffff {
            self.0.push(two);
            self.0.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            self.0.push(four);
            self.0.extend_from_slice(&(n as u32).to_be_bytes());
        }
    }
    fn array(&mut self, n: usize) {
        self.len_head(n, 0x90, 15, None, 0xdc, 0xdd);
    }
    fn map(&mut self, n: usize) {
        self.len_head(n, 0x80, 15, None, 0xde, 0xdf);
    }
    fn str(&mut self, s: &str) {
        self.len_head(s.len(), 0xa0, 31, Some(0xd9), 0xda, 0xdb);
        self.0.extend_from_slice(s.as_bytes());
    }
    fn bin(&mut self, b: &[u8]) {
        match b.len() {
            n @ 0..=0xff => self.0.extend_from_slice(&[0xc4, n as u8]),
            n @ 0x100..=0xffff => {
                self.0.push(0xc5);
                self.0.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                self.0.push(0xc6);
                self.0.extend_from_slice(&(n as u32).to_be_bytes());
            }
        }
        self.0.extend_from_slice(b);
    }
    fn hashes(&mut self, hs: &[BlockHash]) {
        self.array(hs.len());
        for h in hs {
            self.bin(h);
        }
    }
    fn nil(&mut self) {
        self.0.push(0xc0);
    }
    fn f64(&mut self, x: f64) {
        self.0.push(0xcb);
        self.0.extend_from_slice(&x.to_be_bytes());
    }
    fn uint(&mut self, n: u64) {
        match n {
            0..=0x7f => self.0.push(n as u8),
            0x80..=0xff => self.0.extend_from_slice(&[0xcc, n as u8]),
            0x100..=0xffff => {
                self.0.push(0xcd);
                self.0.extend_from_slice(&(n as u16).to_be_bytes());
            }
            0x1_0000..=0xffff_ffff => {
                self.0.push(0xce);
                self.0.extend_from_slice(&(n as u32).to_be_bytes());
            }
            _ => {
                self.0.push(0xcf);
                self.0.extend_from_slice(&n.to_be_bytes());
            }
        }
    }
}
