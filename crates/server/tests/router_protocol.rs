//! What routers and schedulers read from a replica, on the real SmolLM2: the metrics under
//! vLLM's names following the engine, and vLLM's form of `/tokenize` giving the tokens the
//! generation endpoints use.

mod common;
use common::*;
use serde_json::json;
use std::net::SocketAddr;
use std::time::Duration;

/// `/metrics` as `name{labels}` → value.
fn scrape(addr: SocketAddr) -> std::collections::HashMap<String, f64> {
    let r = get(addr, "/metrics");
    assert_eq!(r.status, 200);
    String::from_utf8(r.body)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

/// The router-facing metrics (vLLM's names, which vllm-router and the Inference Extension's
/// endpoint picker read) follow the engine: running and waiting requests, KV-cache usage as a
/// fraction equal to the blocks held, the cache's shape, prompt, generated and prefix-cached
/// token counters equal to suanli's own.
#[test]
fn router_metrics_under_vllm_names_follow_the_engine() {
    let server = start(2, 8, 256 * 1024);
    let addr = server.addr;
    let l = "{model_name=\"smollm2-135m\"}";
    let m = scrape(addr);
    let at = |m: &std::collections::HashMap<String, f64>, name: &str| {
        *m.get(&format!("{name}{l}"))
            .unwrap_or_else(|| panic!("no {name}{l} in /metrics"))
    };
    assert_eq!(at(&m, "vllm:num_requests_running"), 0.0);
    assert_eq!(at(&m, "vllm:num_requests_waiting"), 0.0);
    assert_eq!(at(&m, "vllm:kv_cache_usage_perc"), 0.0);
    assert_eq!(
        m.get("vllm:cache_config_info{model_name=\"smollm2-135m\",block_size=\"16\",num_gpu_blocks=\"512\",cache_dtype=\"f16\",enable_prefix_caching=\"True\"}"),
        Some(&1.0),
        "{m:?}"
    );
    // While a long answer runs: one running, usage = blocks held / blocks.
    let body = json!({"prompt": "Once upon a time", "max_tokens": 200, "temperature": 0,
                      "logit_bias": {"0": -100, "2": -100}});
    let long = std::thread::spawn(move || post(addr, "/v1/completions", &body).json());
    let t = std::time::Instant::now();
    let busy = loop {
        let m = scrape(addr);
        if at(&m, "vllm:num_requests_running") == 1.0 {
            break m;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "never saw the request running"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let usage = at(&busy, "vllm:kv_cache_usage_perc");
    assert!(usage > 0.0 && usage < 1.0, "{usage}: {busy:?}");
    assert_eq!(usage, busy["suanli_kv_blocks_used"] / 512.0);
    assert_eq!(usage, busy["suanli_kv_cache_usage_ratio"]);
    let done = long.join().unwrap();
    assert_eq!(done["usage"]["completion_tokens"], 200);
    // The same prompt again finds it cached.
    let again = json!({"prompt": "Once upon a time, in a land far away, there lived a dragon who ".repeat(4), "max_tokens": 1});
    post(addr, "/v1/completions", &again);
    post(addr, "/v1/completions", &again);
    let m = scrape(addr);
    assert_eq!(at(&m, "vllm:num_requests_running"), 0.0);
    assert_eq!(at(&m, "vllm:kv_cache_usage_perc"), 0.0);
    assert_eq!(
        at(&m, "vllm:generation_tokens_total"),
        m["suanli_generation_tokens_total"]
    );
    assert_eq!(at(&m, "vllm:generation_tokens_total"), 202.0);
    assert_eq!(
        at(&m, "vllm:prompt_tokens_total"),
        m["suanli_prompt_tokens_total"]
    );
    assert_eq!(
        at(&m, "vllm:prefix_cache_queries_total"),
        m["suanli_prompt_tokens_total"]
    );
    let hits = at(&m, "vllm:prefix_cache_hits_total");
    assert!(hits >= 16.0, "{hits}");
    assert_eq!(hits, m["suanli_prompt_tokens_cached_total"]);
    server.shutdown();
}

/// vLLM's form of `/tokenize` (what vllm-router's kv_aware policy sends each replica) gives the
/// tokens the generation endpoints use: a `prompt` as `/v1/completions` tokenizes it (BOS
/// included where the model adds one), `messages` as `/v1/chat/completions` renders them;
/// llama.cpp's form is unchanged.
#[test]
fn tokenize_in_vllms_form_gives_the_endpoints_tokens() {
    let server = start(4, 16, 256 * 1024);
    let addr = server.addr;
    let prompt = "The capital of France is";
    let v = post(
        addr,
        "/tokenize",
        &json!({"model": "smollm2-135m", "prompt": prompt}),
    )
    .json();
    let c = post(
        addr,
        "/v1/completions",
        &json!({"prompt": prompt, "max_tokens": 1, "temperature": 0}),
    )
    .json();
    assert_eq!(v["count"], c["usage"]["prompt_tokens"], "{v}");
    assert_eq!(
        v["count"].as_u64().unwrap() as usize,
        v["tokens"].as_array().unwrap().len()
    );
    assert_eq!(v["max_model_len"], 1024);
    let l = post(
        addr,
        "/tokenize",
        &json!({"content": prompt, "add_special": true}),
    )
    .json();
    assert_eq!(l["tokens"], v["tokens"]);
    let msgs =
        json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]);
    let v = post(
        addr,
        "/tokenize",
        &json!({"model": "smollm2-135m", "messages": msgs, "continue_final_message": false}),
    )
    .json();
    let c = post(
        addr,
        "/v1/chat/completions",
        &json!({"messages": msgs, "max_tokens": 1, "temperature": 0}),
    )
    .json();
    assert_eq!(v["count"], c["usage"]["prompt_tokens"], "{v}");
    let r = post(
        addr,
        "/tokenize",
        &json!({"messages": msgs, "add_generation_prompt": false}),
    );
    assert_eq!(r.status, 400);
    assert!(String::from_utf8_lossy(&r.body).contains("add_generation_prompt"));
    // What it cannot honour is refused by name, and another model's name is not answered.
    for (field, value) in [
        ("add_special_tokens", json!(true)),
        ("chat_template", json!("{{ messages }}")),
    ] {
        let mut req = json!({"messages": msgs});
        req[field] = value;
        let r = post(addr, "/tokenize", &req);
        assert_eq!(r.status, 400, "{field}");
        assert!(String::from_utf8_lossy(&r.body).contains(field), "{field}");
    }
    let r = post(
        addr,
        "/tokenize",
        &json!({"model": "other", "prompt": prompt}),
    );
    assert_eq!(r.status, 404);
}
