//! Options a new user gets wrong are refused (or warned about) by name, before any model loads.

mod common;
use common::suanli;

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
    let (code, _, err) = suanli(&[
        "serve",
        "--model",
        "/nonexistent.gguf",
        "--port",
        "0",
        "--kv-events",
        "udp://*:5557",
    ]);
    assert_ne!(code, 0);
    assert!(
        err.contains("--kv-events: udp://*:5557: only tcp://"),
        "{err}"
    );
    assert!(!err.contains("nonexistent"), "{err}");
    let busy = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let ep = format!("tcp://*:{}", busy.local_addr().unwrap().port());
    let (code, _, err) = suanli(&[
        "serve",
        "--model",
        "/nonexistent.gguf",
        "--port",
        "0",
        "--kv-events",
        &ep,
    ]);
    assert_ne!(code, 0);
    assert!(
        err.contains(&format!("cannot bind the KV events endpoint {ep}")),
        "{err}"
    );
    assert!(!err.contains("nonexistent"), "{err}");
}
