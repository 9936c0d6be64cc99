//! Options a new user gets wrong are refused (or warned about) by name, before any model loads.

mod common;
use common::{suanli, suanli_stdin};

#[test]
fn zero_threads_is_refused_and_too_many_are_warned_about() {
    let (code, _, err) = suanli(&[
        "--threads",
        "0",
        "run",
        "--model",
        "/nonexistent.gguf",
        "hi",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--threads") && err.contains("at least 1 thread"),
        "{err}"
    );
    let cpus = std::thread::available_parallelism().unwrap().get();
    let many = (cpus + 1).to_string();
    // The warning comes first; the missing model then ends the run.
    let (code, _, err) = suanli(&[
        "--threads",
        &many,
        "run",
        "--model",
        "/nonexistent.gguf",
        "hi",
    ]);
    assert_ne!(code, 0);
    assert!(
        err.contains(&format!("--threads {many} is more than the {cpus} CPUs")),
        "{err}"
    );
}

/// A negative value reaches the sampler's check, which names the option (clap's default would
/// have suggested `-- -1`, turning the value into the prompt).
#[test]
fn a_negative_temperature_is_named() {
    let model =
        suanli_formats::catalog::pull(suanli_formats::catalog::find("smollm2-135m").unwrap())
            .unwrap();
    let (code, _, err) = suanli(&[
        "run",
        "--model",
        model.to_str().unwrap(),
        "--temperature",
        "-1",
        "hi",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("--temperature must be >= 0"), "{err}");
    assert!(!err.contains("-- -1"), "{err}");
}

/// A mistyped or shortened catalog name gets the name it most likely meant.
#[test]
fn a_catalog_typo_gets_a_did_you_mean() {
    let (code, _, err) = suanli(&["pull", "smollm-135m"]);
    assert_ne!(code, 0);
    assert!(err.contains("did you mean smollm2-135m?"), "{err}");
    let (code, _, err) = suanli(&["run", "--model", "gemma3", "hi"]);
    assert_ne!(code, 0);
    assert!(err.contains("did you mean gemma3-270m?"), "{err}");
}

/// A KV-events endpoint that cannot work is refused by name before the model loads (the model
/// path here does not exist: reaching the loader would say so instead).
#[test]
fn a_bad_or_busy_kv_events_endpoint_fails_before_loading() {
    // Refused (non-zero exit) with `says` on stderr and the missing model never reached.
    let refused = |endpoint: &str, says: &str| {
        let (code, _, err) = suanli(&[
            "serve",
            "--model",
            "/nonexistent.gguf",
            "--port",
            "0",
            "--kv-events",
            endpoint,
        ]);
        assert_ne!(code, 0);
        assert!(err.contains(says), "{err}");
        assert!(!err.contains("nonexistent"), "{err}");
    };
    refused("udp://*:5557", "--kv-events: udp://*:5557: only tcp://");
    let busy = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let ep = format!("tcp://*:{}", busy.local_addr().unwrap().port());
    refused(&ep, &format!("cannot bind the KV events endpoint {ep}"));
}

fn smollm2() -> String {
    suanli_formats::catalog::pull(suanli_formats::catalog::find("smollm2-135m").unwrap())
        .unwrap()
        .to_str()
        .unwrap()
        .to_string()
}

/// A directory that is not a model says what a model is, or names the GGUF file it holds.
#[test]
fn a_directory_that_is_not_a_model_says_what_to_pass() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let (code, _, err) = suanli(&["run", "--model", d, "hi"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("not a model directory (no config.json)"),
        "{err}"
    );
    assert!(
        err.contains("a GGUF file, or a Hugging Face directory"),
        "{err}"
    );
    std::fs::write(dir.path().join("tiny.gguf"), b"").unwrap();
    let (_, _, err) = suanli(&["run", "--model", d, "hi"]);
    let file = dir.path().join("tiny.gguf");
    assert!(
        err.contains(&format!("--model {}", file.display())),
        "{err}"
    );
}

/// `run` takes its prompt from a pipe (`-` or none), and says so when there is none.
#[test]
fn run_reads_a_piped_prompt() {
    let model = smollm2();
    let args = [
        "run",
        "--model",
        &model,
        "--temperature",
        "0",
        "--max-tokens",
        "4",
        "--json",
    ];
    let (code, out, err) = suanli_stdin(&args, "Name a colour.\n");
    assert_eq!(code, 0, "{err}");
    let piped: serde_json::Value = serde_json::from_str(&out).unwrap();
    let mut given = args.to_vec();
    given.push("Name a colour.");
    let (_, out, _) = suanli(&given);
    let direct: serde_json::Value = serde_json::from_str(&out).unwrap();
    // The trailing newline is cut: the same prompt, the same greedy answer.
    assert_eq!(piped["text"], direct["text"]);
    assert_eq!(piped["prompt_tokens"], direct["prompt_tokens"]);
    let mut dash = args.to_vec();
    dash.push("-");
    let (code, _, err) = suanli_stdin(&dash, "");
    assert_ne!(code, 0);
    assert!(
        err.contains("the prompt read from standard input is empty"),
        "{err}"
    );
}

/// `--ctx` beyond the model's trained context is lowered to it, with a notice.
#[test]
fn run_keeps_ctx_within_the_trained_context() {
    let model = smollm2();
    let (code, _, err) = suanli(&[
        "run",
        "--model",
        &model,
        "--ctx",
        "100000",
        "--max-tokens",
        "1",
        "hi",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(
            "--ctx 100000 is beyond the model's trained context of 8192 tokens; using 8192"
        ),
        "{err}"
    );
}

/// Options that only mean something with another are refused without it, by name; a
/// PYTHONHASHSEED set for other programs does not count as one.
#[test]
fn serve_options_that_need_another_are_refused_alone() {
    let base = ["serve", "--model", "/nonexistent.gguf", "--port", "0"];
    for (extra, says) in [
        (&["--kv-events-topic", "kv"][..], "--kv-events <ENDPOINT>"),
        (
            &["--kv-events-hash-seed", "0"][..],
            "--kv-events <ENDPOINT>",
        ),
        (
            &["--no-access-log", "--log-format", "json"][..],
            "'--no-access-log' cannot be used with",
        ),
    ] {
        let args: Vec<&str> = base.iter().chain(extra).copied().collect();
        let (code, _, err) = suanli(&args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_suanli"))
        .args(base)
        .env("PYTHONHASHSEED", "0")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    // It got as far as the (missing) model.
    assert!(err.contains("nonexistent"), "{err}");
}
