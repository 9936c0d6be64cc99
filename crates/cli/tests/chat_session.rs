//! `suanli chat` driven through a pipe as a person would type: commands are not sent to the
//! model, a `"""` block is one message, /save and /load keep a conversation, and Ctrl-C stops an
//! answer but not the session.

use serde_json::Value;
use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use suanli_formats::catalog;

fn chat() -> Child {
    let model = catalog::pull(catalog::find("smollm2-135m").unwrap()).unwrap();
    Command::new(env!("CARGO_BIN_EXE_suanli"))
        .args(["--threads", "2", "chat", "--temperature", "0", "--model"])
        .arg(&model)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn collect(mut r: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let buf = Arc::new(Mutex::new(String::new()));
    let b = buf.clone();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = r.read(&mut chunk) {
            if n == 0 {
                break;
            }
            b.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&chunk[..n]));
        }
    });
    buf
}

fn messages(path: &std::path::Path) -> Vec<(String, String)> {
    let v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    v["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["role"].as_str().unwrap().into(),
                m["content"].as_str().unwrap().into(),
            )
        })
        .collect()
}

#[test]
fn commands_blocks_save_and_load() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.json");
    let b = dir.path().join("b.json");
    let mut c = chat();
    let script = format!(
        "/help\n/set max_tokens 5\n/set temperature -1\n/nonsense\n/system Answer in one word.\n\
         \"\"\"Name a colour\nthat the sky has\"\"\"\n/save {}\n/load {}\nAnd grass?\n/save {}\n/exit\n",
        a.display(),
        a.display(),
        b.display()
    );
    c.stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = c.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("/save FILE"),
        "/help lists the commands: {err}"
    );
    assert!(err.contains("/set temperature must be >= 0"), "{err}");
    assert!(err.contains("unknown command /nonsense"), "{err}");
    // The commands reached no model: two answers, each of at most 5 tokens.
    assert_eq!(err.matches(" tok/s").count(), 2, "{err}");
    let saved = messages(&a);
    assert_eq!(saved.len(), 3, "{saved:?}");
    assert_eq!(saved[0], ("system".into(), "Answer in one word.".into()));
    assert_eq!(
        saved[1],
        ("user".into(), "Name a colour\nthat the sky has".into())
    );
    assert_eq!(saved[2].0, "assistant");
    // Loaded back, the conversation went on from it.
    let after = messages(&b);
    assert_eq!(after.len(), 5);
    assert_eq!(after[..3], saved[..]);
    assert_eq!(after[3], ("user".into(), "And grass?".into()));
}

#[cfg(unix)]
#[test]
fn ctrl_c_stops_the_answer_and_keeps_the_conversation() {
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("c.json");
    let mut c = chat();
    let mut stdin = c.stdin.take().unwrap();
    let out = collect(c.stdout.take().unwrap());
    let err = collect(c.stderr.take().unwrap());
    stdin
        .write_all(
            b"/set max_tokens 2000\nWrite a very long story about a dragon who bakes bread.\n",
        )
        .unwrap();
    // Once the answer is being written, Ctrl-C.
    let t = Instant::now();
    while out.lock().unwrap().len() < 200 {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "no answer: {}",
            err.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let kill = Command::new("kill")
        .args(["-INT", &c.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    writeln!(stdin, "/save {}\n/exit", saved.display()).unwrap();
    let status = c.wait().unwrap();
    let err = err.lock().unwrap().clone();
    assert!(status.success(), "{err}");
    assert!(err.contains(", stopped]"), "{err}");
    let m = messages(&saved);
    assert_eq!(m.len(), 2, "{m:?}");
    assert_eq!(m[1].0, "assistant");
    assert!(m[1].1.len() >= 200, "the partial answer is kept: {m:?}");
}
