//! `suanli serve` as a process: it prints where it listens, answers, and on SIGTERM finishes
//! the request in flight, stops listening and exits 0.

mod common;

use common::{address_in, http, spawn_serve};
use std::io::{BufRead, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

#[cfg(unix)]
#[test]
fn sigterm_drains_and_exits_zero() {
    let (mut child, mut err) = spawn_serve(&[]);
    // "listening on http://…" comes before the model loads, "serving … on http://…" after.
    let mut addr = None;
    let mut line = String::new();
    while !line.starts_with("serving ") {
        line.clear();
        assert!(err.read_line(&mut line).unwrap() > 0, "server exited early");
        if addr.is_none() && line.starts_with("listening on ") {
            addr = address_in(&line);
            let a = addr.clone().unwrap();
            // Bound before loading: alive, not ready.
            let health = get(&a, "/health");
            assert!(health.starts_with("HTTP/1.1 200"), "{health}");
            let ready = get(&a, "/ready");
            assert!(
                ready.starts_with("HTTP/1.1 503") && ready.contains("loading"),
                "{ready}"
            );
        }
    }
    let addr = addr.expect("a \"listening on\" line before \"serving\"");
    assert!(line.contains(&addr), "{line}");
    let ready = get(&addr, "/ready");
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    let body = r#"{"prompt": "Once upon a time", "max_tokens": 150, "temperature": 0, "logit_bias": {"0": -100, "2": -100}}"#;
    let mut s = TcpStream::connect(&addr).unwrap();
    write!(
        s,
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"completion_tokens\":150"), "{answer}");
    let t = Instant::now();
    let code = loop {
        if let Some(c) = child.try_wait().unwrap() {
            break c;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "still running after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut rest = String::new();
    err.read_to_string(&mut rest).unwrap();
    assert!(code.success(), "exit {code:?}; stderr: {rest}");
    assert!(rest.contains("shutting down"), "{rest}");
    assert!(TcpStream::connect(&addr).is_err());
}

/// One GET on its own connection; the whole answer.
fn get(addr: &str, path: &str) -> String {
    http(addr, "GET", path, "")
}

/// A busy port is refused at once, before any model is read, with its cause said once.
#[test]
fn a_busy_port_fails_before_loading() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let t = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_suanli"))
        // A model that does not exist: reaching the loader would fail differently.
        .args([
            "serve",
            "--port",
            &port,
            "--model",
            "/nonexistent/model.gguf",
        ])
        .env_remove("SUANLI_API_KEY")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("cannot listen on 127.0.0.1:"), "{err}");
    assert_eq!(err.matches("in use").count(), 1, "the cause once: {err}");
    assert!(
        !err.contains("nonexistent"),
        "the model was looked at: {err}"
    );
    assert!(t.elapsed() < Duration::from_secs(10));
}
