//! Running the `suanli` binary in the CLI's integration tests.
#![allow(dead_code)]

use std::process::Command;

/// `suanli ARGS…` to completion: (exit code, stdout, stderr).
pub fn suanli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_suanli"))
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `suanli ARGS…` with `input` piped to its standard input.
pub fn suanli_stdin(args: &[&str], input: &str) -> (i32, String, String) {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_suanli"))
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `suanli --threads 2 serve --port 0 --ctx 1024 EXTRA… --model SmolLM2-135M` without an API
/// key, its standard error piped (where it says where it listens).
pub fn spawn_serve(
    extra: &[&str],
) -> (
    std::process::Child,
    std::io::BufReader<std::process::ChildStderr>,
) {
    let model =
        suanli_formats::catalog::pull(suanli_formats::catalog::find("smollm2-135m").unwrap())
            .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_suanli"))
        .args(["--threads", "2", "serve", "--port", "0", "--ctx", "1024"])
        .args(extra)
        .arg("--model")
        .arg(&model)
        .env_remove("SUANLI_API_KEY")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let err = std::io::BufReader::new(child.stderr.take().unwrap());
    (child, err)
}

/// The address in serve's "listening on http://…" or "serving … on http://…" line.
pub fn address_in(line: &str) -> Option<String> {
    line.split("http://")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .map(str::to_owned)
}

/// One request on its own connection (closed after it); the whole answer, head and body.
pub fn http(addr: &str, method: &str, path: &str, body: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    answer
}
