//! `suanli serve` writes one line per request to standard error once the answer is sent: the
//! client, method, route, status, time and tokens; `--log-format json` as one object per line.
//! Probes are left out.

mod common;

use common::{address_in, http, spawn_serve};
use serde_json::Value;
use std::io::BufRead;
use std::process::Command;

#[cfg(unix)]
#[test]
fn each_request_gets_one_json_line_with_status_time_and_tokens() {
    let (mut child, mut err) = spawn_serve(&["--log-format", "json"]);
    let mut line = String::new();
    while !line.starts_with("serving ") {
        line.clear();
        assert!(err.read_line(&mut line).unwrap() > 0, "server exited early");
    }
    let addr = address_in(&line).unwrap();
    let mut next_log = || -> Value {
        let mut l = String::new();
        assert!(err.read_line(&mut l).unwrap() > 0);
        serde_json::from_str(&l).unwrap_or_else(|e| panic!("{e}: {l}"))
    };

    assert!(http(&addr, "GET", "/health", "").starts_with("HTTP/1.1 200"));
    let chat =
        r#"{"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3, "temperature": 0}"#;
    let answer = http(&addr, "POST", "/v1/chat/completions", chat);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let body: Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    // The probe wrote nothing: the first line is the chat's.
    let l = next_log();
    assert_eq!(l["method"], "POST");
    assert_eq!(l["path"], "/v1/chat/completions");
    assert_eq!(l["status"], 200);
    assert!(
        l["client"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{l}"
    );
    assert!(l["seconds"].as_f64().unwrap() > 0.0);
    assert!(l["ts"].as_f64().unwrap() > 1.7e9);
    assert_eq!(l["prompt_tokens"], body["usage"]["prompt_tokens"]);
    assert_eq!(l["completion_tokens"], 3);

    // A stream is logged once its last event is sent, with its tokens.
    let stream = r#"{"prompt": "Once", "max_tokens": 4, "temperature": 0, "stream": true}"#;
    let answer = http(&addr, "POST", "/v1/completions", stream);
    assert!(answer.contains("data: [DONE]"), "{answer}");
    let l = next_log();
    assert_eq!(
        (l["path"].as_str(), l["status"].as_u64()),
        (Some("/v1/completions"), Some(200))
    );
    assert_eq!(l["completion_tokens"], 4);

    // Refusals are logged with their status and no tokens.
    let bad = http(
        &addr,
        "POST",
        "/v1/completions",
        r#"{"prompt": "x", "max_tokens": -1}"#,
    );
    assert!(bad.starts_with("HTTP/1.1 400"), "{bad}");
    let l = next_log();
    assert_eq!(l["status"], 400);
    assert!(l.get("prompt_tokens").is_none(), "{l}");
    assert!(http(&addr, "GET", "/nowhere", "").starts_with("HTTP/1.1 404"));
    assert_eq!(next_log()["status"], 404);

    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    assert!(child.wait().unwrap().success());
}
