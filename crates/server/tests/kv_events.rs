//! KV-cache events as a router sees them: a ZeroMQ subscriber on the server's PUB socket and a
//! replay client on its ROUTER socket, decoding the MessagePack batches. What they learn must be
//! exactly the prefix cache: each cached prompt block named by vLLM's hash chain over its
//! tokens, evicted blocks announced, sequence numbers without gaps, replay equal to the live
//! stream.

mod common;

use common::*;
use rmpv::Value;
use serde_json::json;
use std::time::Duration;
use suanli_engine::kv_events::{BlockHash, BlockHasher};
use suanli_server::kv_events::KvEventsConfig;
use zeromq::{Socket, SocketRecv, SocketSend, ZmqMessage};

/// A port free now, for the publisher to bind later. Taken outside Linux's ephemeral range
/// (32768–60999): a port the OS handed out for port 0 and that was released could go to the
/// listener or the connections of the test running beside this one before the publisher binds
/// it (a full test run failed so once, "Address already in use"). Each call starts at a different port.
fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering::Relaxed};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let start = (std::process::id() % 1000) as u16 * 12;
    loop {
        let port = 20000 + (start + NEXT.fetch_add(1, Relaxed) % 12000) % 12000;
        if std::net::TcpListener::bind(("0.0.0.0", port)).is_ok() {
            return port;
        }
    }
}

/// One decoded event: its type and fields.
#[derive(Debug)]
struct Ev {
    kind: String,
    hashes: Vec<BlockHash>,
    parent: Option<BlockHash>,
    tokens: Vec<u32>,
    fields: Vec<(String, Value)>,
}

fn hash_of(v: &Value) -> BlockHash {
    v.as_slice()
        .and_then(|b| b.try_into().ok())
        .unwrap_or_else(|| panic!("a block hash is 32 bytes: {v}"))
}

/// `[ts, [event…], rank]` → the events.
fn decode(payload: &[u8]) -> Vec<Ev> {
    let v = rmpv::decode::read_value(&mut &payload[..]).unwrap();
    let batch = v.as_array().expect("the batch is an array");
    assert_eq!(batch.len(), 3);
    assert!(batch[0].as_f64().unwrap() > 1.7e9, "a Unix timestamp");
    assert_eq!(batch[2].as_u64(), Some(0), "data-parallel rank 0");
    batch[1]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let fields: Vec<(String, Value)> = e
                .as_map()
                .expect("an event is a map")
                .iter()
                .map(|(k, v)| (k.as_str().unwrap().to_string(), v.clone()))
                .collect();
            let get = |k: &str| fields.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
            Ev {
                kind: get("type").unwrap().as_str().unwrap().to_string(),
                hashes: get("block_hashes")
                    .map(|h| h.as_array().unwrap().iter().map(hash_of).collect())
                    .unwrap_or_default(),
                parent: get("parent_block_hash")
                    .filter(|p| !p.is_nil())
                    .map(|p| hash_of(&p)),
                tokens: get("token_ids")
                    .map(|t| {
                        t.as_array()
                            .unwrap()
                            .iter()
                            .map(|x| x.as_u64().unwrap() as u32)
                            .collect()
                    })
                    .unwrap_or_default(),
                fields,
            }
        })
        .collect()
}

fn field<'a>(e: &'a Ev, k: &str) -> &'a Value {
    &e.fields.iter().find(|(n, _)| n == k).unwrap().1
}

fn prompt_tokens(addr: std::net::SocketAddr, prompt: &str) -> Vec<u32> {
    let r = post(
        addr,
        "/tokenize",
        &json!({"model": "smollm2-135m", "prompt": prompt}),
    );
    assert_eq!(r.status, 200);
    r.json()["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap() as u32)
        .collect()
}

fn complete(addr: std::net::SocketAddr, prompt: &str) -> serde_json::Value {
    let r = post(
        addr,
        "/v1/completions",
        &json!({"model": "smollm2-135m", "prompt": prompt, "max_tokens": 2, "temperature": 0}),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()
}

/// The live messages received within `wait`: (seq, payload).
async fn drain(sub: &mut zeromq::SubSocket, topic: &str, wait: Duration) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    while let Ok(Ok(m)) = tokio::time::timeout(wait, sub.recv()).await {
        let f = m.into_vec();
        assert_eq!(f.len(), 3, "[topic, seq, payload]");
        assert_eq!(f[0].as_ref(), topic.as_bytes());
        let seq = u64::from_be_bytes(f[1].as_ref().try_into().unwrap());
        out.push((seq, f[2].to_vec()));
    }
    out
}

#[test]
fn kv_events_name_cached_blocks_as_vllm_does_and_replay_matches() {
    let (port, replay_port) = (free_port(), free_port());
    // A wildcard host binds (vLLM's rule); the subscriber connects.
    let endpoint = format!("tcp://127.0.0.1:{port}");
    let replay = format!("tcp://127.0.0.1:{replay_port}");
    let hasher = BlockHasher::seeded("7");
    // 10 blocks of 16 tokens: two ~90-token prompts cannot both stay cached.
    let server = start_custom(
        2,
        8,
        1 << 20,
        Duration::from_secs(20),
        10,
        Some(KvEventsConfig {
            endpoint: format!("tcp://*:{port}"),
            replay_endpoint: Some(format!("tcp://*:{replay_port}")),
            topic: "kv".into(),
            buffer_steps: 100,
            hasher: hasher.clone(),
        }),
    );
    let addr = server.addr;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let mut sub = zeromq::SubSocket::new();
        sub.connect(&endpoint).await.unwrap();
        sub.subscribe("").await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await; // the subscription reaches PUB

        let a = "The river runs to the sea, and the sea runs to the sky. ".repeat(6);
        let b = "Owls hunt at night over the quiet fields of the valley. ".repeat(6);
        let ta = tokenize_checked(addr, &a);
        let got_a = tokio::task::spawn_blocking(move || complete(addr, &a))
            .await
            .unwrap();
        assert_eq!(
            got_a["usage"]["prompt_tokens"].as_u64().unwrap() as usize,
            ta.len()
        );
        let mut live = drain(&mut sub, "kv", Duration::from_millis(800)).await;
        let first: Vec<Ev> = live.iter().flat_map(|(_, p)| decode(p)).collect();
        assert_eq!(
            first[0].kind, "AllBlocksCleared",
            "a fresh cache says so first"
        );

        // Every full block of prompt A, stored once, in order, chained as vLLM chains them.
        let bs = 16;
        let stored: Vec<&Ev> = first.iter().filter(|e| e.kind == "BlockStored").collect();
        let tokens: Vec<u32> = stored.iter().flat_map(|e| e.tokens.clone()).collect();
        assert_eq!(tokens, ta[..ta.len() / bs * bs]);
        let mut chain = Vec::new();
        for blk in ta.chunks_exact(bs) {
            chain.push(hasher.hash(chain.last(), blk));
        }
        let hashes: Vec<BlockHash> = stored.iter().flat_map(|e| e.hashes.clone()).collect();
        assert_eq!(hashes, chain);
        assert_eq!(stored[0].parent, None);
        for e in &stored {
            assert_eq!(field(e, "block_size").as_u64(), Some(16));
            assert_eq!(field(e, "medium").as_str(), Some("GPU"));
            assert_eq!(
                field(e, "kv_cache_spec_kind").as_str(),
                Some("full_attention")
            );
            assert!(field(e, "lora_name").is_nil() && field(e, "lora_id").is_nil());
        }

        // Prompt B does not fit beside A's cached blocks: some of A's are evicted, and said so.
        let tb = tokenize_checked(addr, &b);
        tokio::task::spawn_blocking(move || complete(addr, &b))
            .await
            .unwrap();
        let more = drain(&mut sub, "kv", Duration::from_millis(800)).await;
        let second: Vec<Ev> = more.iter().flat_map(|(_, p)| decode(p)).collect();
        let removed: Vec<BlockHash> = second
            .iter()
            .filter(|e| e.kind == "BlockRemoved")
            .flat_map(|e| e.hashes.clone())
            .collect();
        assert!(!removed.is_empty(), "B's prompt needed A's cached blocks");
        assert!(
            removed.iter().all(|h| chain.contains(h)),
            "only A's blocks were cached"
        );
        let b_tokens: Vec<u32> = second
            .iter()
            .filter(|e| e.kind == "BlockStored")
            .flat_map(|e| e.tokens.clone())
            .collect();
        assert_eq!(b_tokens, tb[..tb.len() / bs * bs]);
        live.extend(more);

        // Sequence numbers from 0 without a gap, and the replay gives back the same batches.
        let seqs: Vec<u64> = live.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, (0..live.len() as u64).collect::<Vec<_>>());
        let mut dealer = zeromq::DealerSocket::new();
        dealer.connect(&replay).await.unwrap();
        // A malformed request first: ignored, and the next one is still answered.
        let mut bad = ZmqMessage::from(bytes::Bytes::new());
        bad.push_back(bytes::Bytes::from_static(b"xyz"));
        dealer.send(bad).await.unwrap();
        let mut req = ZmqMessage::from(bytes::Bytes::new());
        req.push_back(bytes::Bytes::copy_from_slice(&1u64.to_be_bytes()));
        dealer.send(req).await.unwrap();
        let mut replayed = Vec::new();
        loop {
            let m = tokio::time::timeout(Duration::from_secs(5), dealer.recv())
                .await
                .expect("the replay ends with seq -1")
                .unwrap()
                .into_vec();
            assert_eq!(m.len(), 4, "[empty, topic, seq, payload]");
            assert!(m[0].is_empty());
            let seq = i64::from_be_bytes(m[2].as_ref().try_into().unwrap());
            if seq == -1 {
                assert!(m[1].is_empty() && m[3].is_empty());
                break;
            }
            assert_eq!(m[1].as_ref(), b"kv");
            replayed.push((seq as u64, m[3].to_vec()));
        }
        assert_eq!(replayed, live[1..], "replay from seq 1");
    });
    server.shutdown();
}

/// The tokens `/tokenize` reports for a prompt (what a router hashes).
fn tokenize_checked(addr: std::net::SocketAddr, prompt: &str) -> Vec<u32> {
    let t = prompt_tokens(addr, prompt);
    assert!(t.len() > 64, "a prompt of several blocks");
    t
}

#[test]
fn kv_events_connect_to_a_subscriber_that_binds() {
    // llm-d's KV-cache indexer binds one SUB socket that every replica connects to, each
    // naming itself in the topic.
    let port = free_port();
    // A runtime of its own, running while the test waits: the bound socket must answer the
    // server's connection.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut sub = rt.block_on(async {
        let mut sub = zeromq::SubSocket::new();
        sub.bind(&format!("tcp://127.0.0.1:{port}")).await.unwrap();
        sub.subscribe("kv@").await.unwrap();
        sub
    });
    let server = start_custom(
        2,
        8,
        1 << 20,
        Duration::from_secs(20),
        64,
        Some(KvEventsConfig {
            endpoint: format!("tcp://127.0.0.1:{port}"),
            replay_endpoint: None,
            topic: "kv@10.0.0.7@smollm2-135m".into(),
            buffer_steps: 100,
            hasher: BlockHasher::unseeded(),
        }),
    );
    let addr = server.addr;
    std::thread::sleep(Duration::from_millis(500)); // connected
    let prompt = "Lanterns glow along the harbour wall at dusk. ".repeat(10);
    let tokens = tokenize_checked(addr, &prompt);
    complete(addr, &prompt);
    let got = rt.block_on(drain(
        &mut sub,
        "kv@10.0.0.7@smollm2-135m",
        Duration::from_millis(800),
    ));
    let events: Vec<Ev> = got.iter().flat_map(|(_, p)| decode(p)).collect();
    let stored: Vec<u32> = events
        .iter()
        .filter(|e| e.kind == "BlockStored")
        .flat_map(|e| e.tokens.clone())
        .collect();
    assert_eq!(stored, tokens[..tokens.len() / 16 * 16]);
    server.shutdown();
}
