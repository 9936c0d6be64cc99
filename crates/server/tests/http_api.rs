//! The HTTP server end to end on the real SmolLM2-135M: answer shapes, streaming equal to the
//! non-streamed answer, batched answers equal to answers alone, errors with the right status,
//! disconnects that free everything, a full queue, and a graceful shutdown.

mod common;
use common::*;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

fn shared() -> SocketAddr {
    static S: OnceLock<Server> = OnceLock::new();
    S.get_or_init(|| start(16, 64, 256 * 1024)).addr
}

fn chat_text(r: &Value, i: usize) -> String {
    r["choices"][i]["message"]["content"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Concatenate a stream's text deltas per choice; check the chunk shapes on the way.
fn stream_texts(events: &[String], object: &str) -> (Vec<String>, Vec<String>, Option<Value>) {
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let mut texts: Vec<String> = Vec::new();
    let mut finish: Vec<String> = Vec::new();
    let mut usage = None;
    for e in &events[..events.len() - 1] {
        let v: Value = serde_json::from_str(e).unwrap();
        assert_eq!(v["object"], object);
        if !v["usage"].is_null() {
            usage = Some(v["usage"].clone());
        }
        for c in v["choices"].as_array().unwrap() {
            let i = c["index"].as_u64().unwrap() as usize;
            if texts.len() <= i {
                texts.resize(i + 1, String::new());
                finish.resize(i + 1, String::new());
            }
            let piece = if object == "chat.completion.chunk" {
                c["delta"]["content"].as_str().unwrap_or("")
            } else {
                c["text"].as_str().unwrap()
            };
            texts[i].push_str(piece);
            if let Some(f) = c["finish_reason"].as_str() {
                finish[i] = f.to_owned();
            }
        }
    }
    // Deltas never split a character: a replacement character appears only where the answer
    // itself was cut inside one by max_tokens (at its very end), as in the whole answer.
    for (t, f) in texts.iter().zip(&finish) {
        let body = t.trim_end_matches('\u{FFFD}');
        assert!(!body.contains('\u{FFFD}'), "broken UTF-8 in a delta: {t:?}");
        assert!(
            body.len() == t.len() || f == "length",
            "{t:?} ends broken but finished {f}"
        );
    }
    (texts, finish, usage)
}

#[test]
fn chat_streamed_equals_non_streamed() {
    let addr = shared();
    for content in ["Name three colours.", "请用中文介绍一下北京。"] {
        let req = json!({"model": "smollm2-135m", "messages": [{"role": "user", "content": content}],
                         "max_tokens": 40, "temperature": 0});
        let whole = post(addr, "/v1/chat/completions", &req);
        assert_eq!(whole.status, 200);
        let w = whole.json();
        assert_eq!(w["object"], "chat.completion");
        assert!(w["id"].as_str().unwrap().starts_with("chatcmpl-"));
        assert_eq!(w["choices"][0]["message"]["role"], "assistant");
        let u = &w["usage"];
        assert_eq!(
            u["total_tokens"].as_u64(),
            Some(u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap())
        );
        let mut sreq = req.clone();
        sreq["stream"] = json!(true);
        sreq["stream_options"] = json!({"include_usage": true});
        let s = post(addr, "/v1/chat/completions", &sreq);
        assert_eq!(s.status, 200);
        assert!(s
            .header("content-type")
            .unwrap()
            .starts_with("text/event-stream"));
        let (texts, finish, usage) = stream_texts(&s.events(), "chat.completion.chunk");
        assert_eq!(texts[0], chat_text(&w, 0), "{content}");
        assert_eq!(
            finish[0],
            w["choices"][0]["finish_reason"].as_str().unwrap()
        );
        let usage = usage.expect("a usage chunk");
        assert_eq!(usage["completion_tokens"], u["completion_tokens"]);
        assert_eq!(usage["prompt_tokens"], u["prompt_tokens"]);
    }
}

#[test]
fn concurrent_greedy_answers_equal_answers_alone() {
    let addr = shared();
    let prompts: Vec<String> = (0..12)
        .map(|i| format!("Story number {i}: once upon a time, in a village by the sea,"))
        .collect();
    let req = |p: &str| json!({"prompt": p, "max_tokens": 24, "temperature": 0, "logit_bias": {"0": -100}});
    let alone: Vec<String> = prompts
        .iter()
        .map(|p| {
            post(addr, "/v1/completions", &req(p)).json()["choices"][0]["text"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let together: Vec<String> = std::thread::scope(|s| {
        let hs: Vec<_> = prompts
            .iter()
            .map(|p| s.spawn(move || post(addr, "/v1/completions", &req(p))))
            .collect();
        hs.into_iter()
            .map(|h| {
                h.join().unwrap().json()["choices"][0]["text"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    });
    assert_eq!(alone, together);
}

#[test]
fn completions_from_token_ids_with_logprobs_n_and_stop() {
    let addr = shared();
    let tok = post(
        addr,
        "/tokenize",
        &json!({"content": "The capital of France is"}),
    )
    .json();
    let ids: Vec<u64> = tok["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    let back = post(addr, "/detokenize", &json!({"tokens": ids})).json();
    assert_eq!(back["content"], "The capital of France is");
    // Echo with logprobs: the prompt's tokens come first, the first without a log-probability.
    let req =
        json!({"prompt": ids, "max_tokens": 6, "temperature": 0, "logprobs": 3, "echo": true});
    let r = post(addr, "/v1/completions", &req).json();
    let c = &r["choices"][0];
    let lp = &c["logprobs"];
    let n_lp = lp["tokens"].as_array().unwrap().len();
    assert_eq!(
        n_lp,
        ids.len() + r["usage"]["completion_tokens"].as_u64().unwrap() as usize
    );
    assert!(lp["token_logprobs"][0].is_null() && lp["top_logprobs"][0].is_null());
    assert!(lp["token_logprobs"][1].as_f64().unwrap() < 0.0);
    let text = c["text"].as_str().unwrap();
    assert!(text.starts_with("The capital of France is"));
    let joined: String = lp["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(joined, text);
    let mut sreq = req.clone();
    sreq["stream"] = json!(true);
    let s = post(addr, "/v1/completions", &sreq);
    let (texts, _, _) = stream_texts(&s.events(), "text_completion");
    assert_eq!(texts[0], text);
    let r = post(
        addr,
        "/v1/completions",
        &json!({"prompt": [ids.clone(), ids.clone()], "max_tokens": 6, "temperature": 0, "logprobs": 3}),
    )
    .json();
    assert_eq!(r["choices"].as_array().unwrap().len(), 2);
    let lp = &r["choices"][0]["logprobs"];
    let n = lp["tokens"].as_array().unwrap().len();
    assert_eq!(
        n,
        r["usage"]["completion_tokens"].as_u64().unwrap() as usize / 2
    );
    for (i, top) in lp["top_logprobs"].as_array().unwrap().iter().enumerate() {
        let top = top.as_object().unwrap();
        assert!(top.len() <= 3 && !top.is_empty());
        // Greedy: the chosen token is the most likely one.
        let best = top
            .values()
            .map(|v| v.as_f64().unwrap())
            .fold(f64::MIN, f64::max);
        let chosen = lp["token_logprobs"][i].as_f64().unwrap();
        assert!((best - chosen).abs() < 1e-6 && chosen <= 0.0);
    }
    assert_eq!(r["choices"][0]["text"], r["choices"][1]["text"]);

    // n sampled choices with a stop string: none contains it; a seed makes them reproducible.
    let req = json!({"prompt": "List of fruits: apple, banana,", "max_tokens": 30, "n": 3,
                     "temperature": 1.0, "seed": 42, "stop": [","]});
    let a = post(addr, "/v1/completions", &req).json();
    let b = post(addr, "/v1/completions", &req).json();
    assert_eq!(a["choices"], b["choices"]);
    for c in a["choices"].as_array().unwrap() {
        let text = c["text"].as_str().unwrap();
        assert!(!text.contains(','), "{text:?}");
    }
    let mut sreq = req.clone();
    sreq["stream"] = json!(true);
    let (texts, finish, _) = stream_texts(
        &post(addr, "/v1/completions", &sreq).events(),
        "text_completion",
    );
    for (i, c) in a["choices"].as_array().unwrap().iter().enumerate() {
        assert_eq!(texts[i], c["text"].as_str().unwrap());
        assert_eq!(finish[i], c["finish_reason"].as_str().unwrap());
    }
}

#[test]
fn logit_bias_and_prefix_cache() {
    let addr = shared();
    // Ban the greedy first token: the answer changes.
    let req = json!({"prompt": "The capital of France is", "max_tokens": 1, "temperature": 0, "logprobs": 1});
    let r = post(addr, "/v1/completions", &req).json();
    let first = r["choices"][0]["logprobs"]["tokens"][0]
        .as_str()
        .unwrap()
        .to_owned();
    let id = post(addr, "/tokenize", &json!({"content": first})).json()["tokens"][0].clone();
    let mut banned = req.clone();
    banned["logit_bias"] = json!({ id.to_string(): -100 });
    let r2 = post(addr, "/v1/completions", &banned).json();
    assert_ne!(r2["choices"][0]["text"], r["choices"][0]["text"]);
    // A long shared system prompt is served from the cache the second time.
    let sys = "You are a helpful assistant. ".repeat(12);
    let chat = |q: &str| {
        json!({"messages": [{"role": "system", "content": sys}, {"role": "user", "content": q}],
               "max_tokens": 2, "temperature": 0})
    };
    post(addr, "/v1/chat/completions", &chat("Hi"));
    let r = post(addr, "/v1/chat/completions", &chat("Hello")).json();
    assert!(
        r["usage"]["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap()
            >= 64
    );
}

#[test]
fn bad_requests_get_openai_errors() {
    let addr = shared();
    let check = |r: Reply, status: u16, param: Option<&str>| {
        assert_eq!(r.status, status, "{}", String::from_utf8_lossy(&r.body));
        let e = r.json();
        assert!(e["error"]["message"].as_str().unwrap().len() > 5);
        if let Some(p) = param {
            assert_eq!(e["error"]["param"], p);
        }
    };
    let chat = "/v1/chat/completions";
    check(
        post(addr, chat, &json!({"messages": []})),
        400,
        Some("messages"),
    );
    check(
        post(addr, chat, &json!({"messages": "hi"})),
        400,
        Some("messages"),
    );
    check(
        post(
            addr,
            chat,
            &json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}),
        ),
        400,
        Some("messages"),
    );
    check(
        post(
            addr,
            chat,
            &json!({"messages": [{"role": "user", "content": "x"}], "temperature": -1}),
        ),
        400,
        Some("temperature"),
    );
    check(
        post(
            addr,
            chat,
            &json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": -1}),
        ),
        400,
        Some("max_tokens"),
    );
    check(
        post(
            addr,
            chat,
            &json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": 5000}),
        ),
        400,
        Some("max_tokens"),
    );
    check(
        post(
            addr,
            chat,
            &json!({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 3}),
        ),
        400,
        Some("top_logprobs"),
    );
    check(
        post(
            addr,
            chat,
            &json!({"messages": [{"role": "user", "content": "x"}], "logit_bias": {"4000000000": 5}}),
        ),
        400,
        Some("logit_bias"),
    );
    check(
        post(
            addr,
            chat,
            &json!({"messages": [{"role": "user", "content": "x"}], "model": "gpt-4"}),
        ),
        404,
        Some("model"),
    );
    let comp = "/v1/completions";
    check(
        post(addr, comp, &json!({"prompt": [1, 2, 99999999]})),
        400,
        Some("prompt"),
    );
    check(
        post(addr, comp, &json!({"prompt": [1, -2]})),
        400,
        Some("prompt"),
    );
    check(
        post(addr, comp, &json!({"prompt": []})),
        400,
        Some("prompt"),
    );
    check(
        post(addr, comp, &json!({"prompt": [[]]})),
        400,
        Some("prompt"),
    );
    check(
        post(addr, comp, &json!({"prompt": "x ".repeat(1100)})),
        400,
        Some("prompt"),
    );
    check(
        post(addr, comp, &json!({"prompt": "x", "n": 0})),
        400,
        Some("n"),
    );
    check(
        post(addr, "/detokenize", &json!({"tokens": [1, 99999999]})),
        400,
        Some("tokens"),
    );
    // Not JSON, not an object, wrong key, no key, too large, unknown route.
    check(
        raw(
            addr,
            &request_bytes("POST", comp, Some(KEY), "{\"prompt\": "),
        ),
        400,
        None,
    );
    check(
        raw(addr, &request_bytes("POST", comp, Some(KEY), "[1,2]")),
        400,
        None,
    );
    check(
        raw(addr, &request_bytes("POST", comp, Some("wrong"), "{}")),
        401,
        None,
    );
    check(
        raw(addr, &request_bytes("GET", "/v1/models", None, "")),
        401,
        None,
    );
    let big = format!("{{\"prompt\": \"{}\"}}", "a".repeat(300 * 1024));
    check(
        raw(addr, &request_bytes("POST", comp, Some(KEY), &big)),
        413,
        None,
    );
    check(get(addr, "/v1/nothing"), 404, None);
    check(get(addr, "/v1/models/other"), 404, Some("model"));
    // Only /health, /ready and the chat page are open without the key (the page is static: its
    // requests carry the key entered in its settings); the models list has the served model.
    for path in ["/health", "/ready", "/"] {
        assert_eq!(raw(addr, &request_bytes("GET", path, None, "")).status, 200);
    }
    for path in ["/metrics", "/v1/nothing", "/v1/models/smollm2-135m"] {
        check(raw(addr, &request_bytes("GET", path, None, "")), 401, None);
    }
    for path in ["/tokenize", "/detokenize", chat, comp] {
        check(
            raw(addr, &request_bytes("POST", path, None, "{}")),
            401,
            None,
        );
    }
    let page = get(addr, "/");
    assert_eq!(page.status, 200);
    assert!(String::from_utf8(page.body)
        .unwrap()
        .contains("/v1/chat/completions"));
    // Hostile bodies: lone surrogates, deep nesting, out-of-range numbers, wrong id types,
    // request-supplied templates, greedy n > 1, huge stop strings.
    let user =
        |extra: &str| format!(r#"{{"messages": [{{"role": "user", "content": "x"}}]{extra}}}"#);
    for body in [
        r#"{"messages": [{"role": "user", "content": "\ud800"}]}"#.to_string(),
        format!("{{\"messages\": {}{}}}", "[".repeat(5000), "]".repeat(5000)),
        user(r#", "temperature": 1e400"#),
        user(r#", "chat_template": "{{ 7 * 7 }}""#),
        user(r#", "chat_template_kwargs": {"add_generation_prompt": false}"#),
        user(r#", "n": 2, "temperature": 0"#),
        user(&format!(r#", "stop": "{}""#, "s".repeat(2000))),
        user(r#", "stop": [""]"#),
        user(r#", "top_k": -2"#),
        user(r#", "logit_bias": {"abc": 1}"#),
        user(r#", "max_tokens": 1e20"#),
        format!(
            r#"{{"messages": [{}]}}"#,
            vec![r#"{"role": "user", "content": "x"}"#; 5000].join(",")
        ),
    ] {
        let r = raw(addr, &request_bytes("POST", chat, Some(KEY), &body));
        assert_eq!(
            r.status,
            400,
            "{}: {}",
            &body[..body.len().min(80)],
            String::from_utf8_lossy(&r.body)
        );
        assert!(r.body.len() < 4096, "error bodies stay small");
    }
    for prompt in [
        "[1, null]",
        "[1, true]",
        "[1, \"7\"]",
        "[1, 1.5]",
        "[1, -5]",
        "[[1], 5]",
    ] {
        let body = format!(r#"{{"prompt": {prompt}}}"#);
        let r = raw(addr, &request_bytes("POST", comp, Some(KEY), &body));
        assert_eq!(r.status, 400, "{prompt}");
        assert_eq!(r.json()["error"]["param"], "prompt");
    }
    assert_eq!(
        get(addr, "/v1/models").json()["data"][0]["id"],
        "smollm2-135m"
    );
}

#[test]
fn disconnect_burst_frees_every_sequence_and_block() {
    let addr = shared();
    let long = |stream: bool| {
        json!({"prompt": "Write a very long essay about the sea.", "max_tokens": 800,
               "temperature": 0.7, "stream": stream, "logit_bias": {"0": -100, "2": -100}})
    };
    // Streamed clients that hang up after the first bytes.
    let streams: Vec<_> = (0..8).map(|_| open_stream(addr, &long(true))).collect();
    // Clients that hang up while waiting for a non-streamed answer.
    let waiting: Vec<_> = (0..4)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            std::io::Write::write_all(
                &mut s,
                &request_bytes(
                    "POST",
                    "/v1/completions",
                    Some(KEY),
                    &long(false).to_string(),
                ),
            )
            .unwrap();
            s
        })
        .collect();
    let t = std::time::Instant::now();
    while metric(addr, "suanli_requests_running") == 0.0 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "nothing was admitted"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(streams);
    drop(waiting);
    wait_idle(addr);
    // The next request is served normally.
    let r = post(
        addr,
        "/v1/completions",
        &json!({"prompt": "Hello", "max_tokens": 4, "temperature": 0}),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["usage"]["completion_tokens"], 4);
    wait_idle(addr);
}

#[test]
fn full_queue_answers_503_with_retry_after() {
    let server = start(1, 1, 1 << 20);
    let addr = server.addr;
    let long = json!({"prompt": "Count: one, two,", "max_tokens": 600, "temperature": 0,
                      "stream": true, "logit_bias": {"0": -100, "2": -100}});
    let running = open_stream(addr, &long);
    // Its answer starts once it is queued; wait until a step has admitted it (the batch holds
    // 1), or the next request would find the queue full already.
    let t = std::time::Instant::now();
    while metric(addr, "suanli_requests_running") < 1.0 {
        assert!(t.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut queued = std::net::TcpStream::connect(addr).unwrap();
    std::io::Write::write_all(
        &mut queued,
        &request_bytes("POST", "/v1/completions", Some(KEY), &long.to_string()),
    )
    .unwrap();
    let t = std::time::Instant::now();
    while metric(addr, "suanli_requests_waiting") < 1.0 {
        assert!(t.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(20));
    }
    let r = post(
        addr,
        "/v1/completions",
        &json!({"prompt": "x", "max_tokens": 2}),
    );
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.json()["error"]["code"], "overloaded");
    drop(running);
    drop(queued);
    wait_idle(addr);
    server.shutdown();
}

#[test]
fn shutdown_finishes_requests_in_flight() {
    // The deadline is far beyond what 120 tokens take on any machine (a shared CI machine with
    // every test running at once took over 20 s), so the test checks that shutdown waits for the
    // answer, not how fast the answer comes.
    let deadline = Duration::from_secs(600);
    let server = start_with(4, 8, 1 << 20, deadline);
    let addr = server.addr;
    let req = json!({"prompt": "Once upon a time", "max_tokens": 120, "temperature": 0,
                     "logit_bias": {"0": -100, "2": -100}});
    let client = std::thread::spawn(move || post(addr, "/v1/completions", &req));
    let t = std::time::Instant::now();
    while metric(addr, "suanli_requests_running") < 1.0 {
        assert!(t.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(10));
    }
    let took = server.shutdown();
    let r = client.join().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["usage"]["completion_tokens"], 120);
    assert!(took < deadline, "the request was cut off, not finished");
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "no longer listening"
    );
}

#[test]
fn slow_and_garbage_connections_are_dropped_while_serving_continues() {
    use std::io::{Read, Write};
    let addr = shared();
    // Slowloris: half a request head, then nothing. The shared server's deadline is 2 s.
    let mut slow = std::net::TcpStream::connect(addr).unwrap();
    slow.write_all(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let t = std::time::Instant::now();
    let mut buf = Vec::new();
    let _ = slow.read_to_end(&mut buf);
    assert!(
        t.elapsed() < Duration::from_secs(8),
        "the slow client was not cut off"
    );
    assert!(
        buf.is_empty() || buf.starts_with(b"HTTP/1.1 408"),
        "{:?}",
        String::from_utf8_lossy(&buf)
    );
    // Scanner traffic: random bytes, a TLS ClientHello, an HTTP/2 preface, a huge header.
    let junk: [&[u8]; 4] = [
        b"\x00\xff\x13\x37garbage\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        &[b'a'; 1 << 20],
    ];
    for j in junk {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.write_all(j);
        let _ = s.write_all(b"\r\n\r\n");
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        assert!(
            out.is_empty() || out.starts_with(b"HTTP/1.1 4"),
            "{:?}",
            String::from_utf8_lossy(&out[..out.len().min(100)])
        );
    }
    assert_eq!(get(addr, "/v1/models").status, 200);
}

#[test]
fn an_immediate_end_and_wide_logprobs_are_well_formed() {
    let addr = shared();
    // SS-06: the first sampled token ends the generation (forced with logit_bias), logprobs on.
    for stream in [false, true] {
        let req = json!({"prompt": "Hello", "max_tokens": 8, "temperature": 0, "logprobs": 2,
                         "logit_bias": {"2": 100}, "stream": stream});
        let r = post(addr, "/v1/completions", &req);
        assert_eq!(r.status, 200);
        if stream {
            let (texts, finish, _) = stream_texts(&r.events(), "text_completion");
            assert_eq!((texts[0].as_str(), finish[0].as_str()), ("", "stop"));
        } else {
            let v = r.json();
            assert_eq!(v["choices"][0]["text"], "");
            assert_eq!(v["choices"][0]["finish_reason"], "stop");
            assert_eq!(v["usage"]["completion_tokens"], 0);
            assert_eq!(v["choices"][0]["logprobs"]["tokens"], json!([]));
        }
    }
    // SS-09: 20 alternatives per token, byte-level pieces of Chinese text: valid JSON with bytes.
    let req = json!({"messages": [{"role": "user", "content": "用中文说你好"}], "max_tokens": 6,
                     "temperature": 0, "logprobs": true, "top_logprobs": 20, "stream": true});
    let r = post(addr, "/v1/chat/completions", &req);
    let mut entries = 0;
    for e in r.events().iter().filter(|e| *e != "[DONE]") {
        let v: Value = serde_json::from_str(e).unwrap();
        for c in v["choices"].as_array().unwrap() {
            for t in c["logprobs"]["content"].as_array().into_iter().flatten() {
                entries += 1;
                assert_eq!(t["top_logprobs"].as_array().unwrap().len(), 20);
                let bytes: Vec<u8> = t["bytes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|b| b.as_u64().unwrap() as u8)
                    .collect();
                assert!(!bytes.is_empty() || t["token"].as_str().unwrap().starts_with('<'));
            }
        }
    }
    assert!(entries >= 1);
}

#[test]
fn a_token_id_prompt_ending_inside_a_character_is_completed_not_broken() {
    let addr = shared();
    // A rare character spread over several byte-level tokens; the prompt stops one token short.
    let t = post(addr, "/tokenize", &json!({"content": "龘"})).json();
    let ids: Vec<u64> = t["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert!(
        ids.len() >= 2,
        "needs a character split over tokens: {ids:?}"
    );
    let (head, last) = ids.split_at(ids.len() - 1);
    for stream in [false, true] {
        let req = json!({"prompt": head, "max_tokens": 1, "temperature": 0, "stream": stream,
                         "logit_bias": {last[0].to_string(): 100}});
        let r = post(addr, "/v1/completions", &req);
        let text = if stream {
            stream_texts(&r.events(), "text_completion").0.remove(0)
        } else {
            r.json()["choices"][0]["text"].as_str().unwrap().to_owned()
        };
        assert_eq!(text, "龘", "stream {stream}");
    }
}
