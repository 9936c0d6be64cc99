//! Speculative decoding's options through the real binary: bad combinations are refused with
//! a message naming the option, before any model is loaded; a draft model of another
//! vocabulary is refused by name, one that differs by padding taken; a schema's forced text
//! is drafted; n-gram speculation answers as plain decoding does, and so
//! does `serve` with a draft model.

mod common;
use common::{address_in, http, spawn_serve, suanli};

#[test]
fn bad_speculation_options_are_refused_by_name() {
    let tiny = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/tiny/qwen2"
    );
    for (args, needle) in [
        (vec!["--spec", "magic"], "--spec"),
        (vec!["--spec", "draft"], "--draft-model"),
        (
            vec!["--spec", "ngram", "--draft-model", tiny],
            "--draft-model",
        ),
        (vec!["--draft-model", tiny], "--draft-model"),
        (vec!["--spec", "ngram", "--draft-max", "0"], "--draft-max"),
        (
            vec!["--spec", "ngram", "--spec-ngram", "40"],
            "--spec-ngram",
        ),
        (
            vec![
                "--spec",
                "draft",
                "--draft-model",
                tiny,
                "--draft-quant",
                "q2",
            ],
            "--draft-quant",
        ),
        (
            vec!["--spec", "ngram", "--draft-quant", "q4_0"],
            "--draft-quant",
        ),
        (vec!["--draft-quant", "file"], "--draft-quant"),
        (
            vec![
                "--spec",
                "draft",
                "--draft-model",
                tiny,
                "--draft-head",
                "half",
            ],
            "--draft-head",
        ),
        (vec!["--draft-head", "full"], "--draft-head"),
    ] {
        let mut all = vec!["run", "--model", tiny, "--raw", "--max-tokens", "2"];
        all.extend(&args);
        all.push("hi");
        let (code, _, err) = suanli(&all);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(
            err.contains(needle),
            "{args:?}: expected {needle:?} in {err}"
        );
    }
    // `bench --spec` times decoding after the first token: one token leaves nothing to time.
    let (code, _, err) = suanli(&[
        "bench",
        "--model",
        tiny,
        "--spec",
        "ngram",
        "--gen-tokens",
        "1",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("--gen-tokens") && !err.contains("panicked"),
        "{err}"
    );
    // Without --spec, bench would ignore the options that shape one.
    for shape in [
        &["--draft-max", "4"][..],
        &["--spec-ngram", "2"],
        &["--draft-fixed"],
    ] {
        let mut args = vec!["bench", "--model", tiny];
        args.extend(shape);
        let (code, _, err) = suanli(&args);
        assert_eq!(code, 1, "{shape:?}: {err}");
        assert!(
            err.contains("add --spec") && !err.contains("panicked"),
            "{err}"
        );
    }
}

#[test]
fn draft_model_of_another_vocabulary_is_refused() {
    let tiny = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/tiny/qwen2"
    );
    // SmolLM2 (a catalog model, pulled if needed) has 49,152 tokens, the tiny model 500.
    let (code, _, err) = suanli(&[
        "run",
        "--model",
        tiny,
        "--raw",
        "--max-tokens",
        "2",
        "--spec",
        "draft",
        "--draft-model",
        "smollm2-135m",
        "hi",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("vocabulary") && err.contains("smollm2"),
        "{err}"
    );
}

/// A draft model whose vocabulary has padding entries more or fewer than the model's (as
/// Qwen2.5-0.5B's 151,936 entries against the 7B's 152,064, 128 `[PADn]` more) is taken and
/// changes no token, either way round; one whose extra entries are real tokens is refused,
/// naming the first.
#[test]
fn draft_model_with_padded_vocabulary_is_taken() {
    use suanli_formats::gguf::{write::with_more_tokens, GgufFile};
    let dir = tempfile::tempdir().unwrap();
    let tiny = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/tiny/qwen2/model.gguf"
    );
    let f = GgufFile::open(std::path::Path::new(tiny)).unwrap();
    let write = |name: &str, token_type: i32| {
        let p = dir.path().join(name);
        std::fs::write(&p, with_more_tokens(&f, 64, token_type, 0, 0.0).unwrap()).unwrap();
        p.to_str().unwrap().to_owned()
    };
    let padded = write("padded.gguf", 5);
    let extra = write("extra.gguf", 1);
    // Tokens and drafts of a greedy or a seeded sampled answer.
    let run = |model: &str, draft: Option<&str>, temperature: &str| {
        let mut args = vec!["run", "--model", model, "--raw", "--max-tokens", "24"];
        args.extend(["--temperature", temperature, "--seed", "5", "--json"]);
        if let Some(d) = draft {
            args.extend(["--spec", "draft", "--draft-fixed", "--draft-model", d]);
        }
        args.push("the cat sat on the mat");
        let (code, out, err) = suanli(&args);
        assert_eq!(code, 0, "{model} drafted by {draft:?}: {err}");
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        (v["tokens"].clone(), v["drafted"].as_u64().unwrap())
    };
    for (model, draft) in [(padded.as_str(), tiny), (tiny, padded.as_str())] {
        for temperature in ["0", "0.9"] {
            let (want, _) = run(model, None, temperature);
            let (got, drafted) = run(model, Some(draft), temperature);
            assert_eq!(got, want, "{model} drafted by {draft} at {temperature}");
            assert!(drafted > 0, "{model} drafted by {draft} at {temperature}");
        }
    }
    let run = |model: &str, draft: &str| {
        let args = ["run", "--model", model, "--raw", "--max-tokens", "2"];
        suanli(
            &[
                &args[..],
                &["--spec", "draft", "--draft-model", draft, "hi"],
            ]
            .concat(),
        )
    };
    let (code, _, err) = run(tiny, &extra);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("vocabulary") && err.contains("[PAD500]") && !err.contains("panicked"),
        "{err}"
    );
}

/// Under a JSON schema, `--spec ngram` drafts the text the schema forces (its keys and
/// punctuation: a random tiny model repeats nothing the lookup could copy) and answers as
/// plain decoding does.
#[test]
fn a_schemas_forced_text_is_drafted_and_changes_no_token() {
    let tiny = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/tiny/qwen2"
    );
    let dir = tempfile::tempdir().unwrap();
    let schema = dir.path().join("schema.json");
    let digit = serde_json::json!({"type": "integer", "minimum": 0, "maximum": 9});
    let body = serde_json::json!({
        "type": "object",
        "properties": {"alpha": digit, "beta": {"type": "boolean"}, "gamma_delta": digit},
        "required": ["alpha", "beta", "gamma_delta"], "additionalProperties": false,
    });
    std::fs::write(&schema, body.to_string()).unwrap();
    // Whole proposals verified (`--draft-fixed`), so no count depends on time.
    let run = |spec: &[&str]| {
        let mut args = vec!["run", "--model", tiny, "--raw", "--temperature", "0"];
        args.extend(["--max-tokens", "60", "--json", "--json-schema"]);
        args.push(schema.to_str().unwrap());
        args.extend(spec);
        args.push("hi");
        let (code, out, err) = suanli(&args);
        assert_eq!(code, 0, "{err}");
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        let text = v["text"].as_str().unwrap().to_owned();
        (text, v["tokens"].clone(), v["accepted"].as_u64().unwrap())
    };
    let (text, plain, none) = run(&["--spec", "off"]);
    let answer: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(answer.as_object().unwrap().len(), 3, "{text}");
    assert_eq!(none, 0);
    // `{"alpha": `, `, "beta": `, `, "gamma_delta": ` and `}` are forced: drafted with n-gram
    // speculation, and without --spec (`auto`, the default).
    for spec in [
        &["--spec", "ngram", "--draft-fixed"][..],
        &["--draft-fixed"],
    ] {
        let (_, tokens, accepted) = run(spec);
        assert_eq!(tokens, plain, "{spec:?}");
        assert!(accepted >= 10, "{spec:?}: {accepted} drafts taken");
    }
    // The default as decided by the controller: the same answer.
    assert_eq!(run(&[]).1, plain);
}

#[test]
fn ngram_speculation_answers_as_plain_decoding() {
    let tiny = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/tiny/qwen2"
    );
    let run = |extra: &[&str]| {
        let mut all = vec![
            "run",
            "--model",
            tiny,
            "--raw",
            "--temperature",
            "0",
            "--max-tokens",
            "40",
            "--json",
        ];
        all.extend(extra);
        all.push("a b c a b c a b c a b");
        let (code, out, err) = suanli(&all);
        assert_eq!(code, 0, "{err}");
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        (v["tokens"].clone(), v["drafted"].as_u64().unwrap())
    };
    let (plain, d0) = run(&["--spec", "off"]);
    assert_eq!(d0, 0);
    let (spec, drafted) = run(&["--spec", "ngram", "--draft-fixed", "--spec-ngram", "2"]);
    assert_eq!(spec, plain);
    assert!(drafted > 0);
    // Without --spec (`auto`), `run`'s answer decodes alone: the same drafts as `ngram`.
    assert_eq!(
        run(&["--draft-fixed", "--spec-ngram", "2"]),
        (plain.clone(), drafted)
    );
    assert_eq!(run(&[]).0, plain);
}

/// A server started with `extra` answers `body` at `path` and is stopped: the answer's JSON,
/// `/metrics`, and what it logged before serving.
#[cfg(unix)]
fn serve_once(extra: &[&str], path: &str, body: &str) -> (serde_json::Value, String, String) {
    use std::io::BufRead;
    let (mut child, mut err) = spawn_serve(extra);
    let (mut line, mut log) = (String::new(), String::new());
    while !line.starts_with("serving ") {
        line.clear();
        assert!(err.read_line(&mut line).unwrap() > 0, "server exited early");
        log.push_str(&line);
    }
    let addr = address_in(&line).unwrap();
    let reply = http(&addr, "POST", path, body);
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let v = serde_json::from_str(reply.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    let metrics = http(&addr, "GET", "/metrics", "");
    let _ = child.kill();
    let _ = child.wait();
    (v, metrics, log)
}

/// The drafted tokens `/metrics` counts as accepted.
#[cfg(unix)]
fn accepted_drafts(metrics: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("suanli_spec_accepted_tokens_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .expect("the accepted-drafts counter")
}

/// `serve --spec draft --draft-model M`: a completion answered with the draft model's drafts
/// (SmolLM2 drafting for itself, re-quantized to Q4_0 by default, as the log says) equals the
/// one a plain server gives, and the drafts show in `/metrics`.
#[cfg(unix)]
#[test]
fn serve_with_a_draft_model_answers_as_plain_decoding() {
    let model =
        suanli_formats::catalog::pull(suanli_formats::catalog::find("smollm2-135m").unwrap())
            .unwrap();
    let draft = model.to_str().unwrap().to_owned();
    let answer = |extra: &[&str]| -> (String, String) {
        let body = r#"{"prompt": "The capital of France is", "max_tokens": 24, "temperature": 0}"#;
        let (v, metrics, log) = serve_once(extra, "/v1/completions", body);
        assert_eq!(
            log.contains("re-quantized to Q4_0 for drafting"),
            !extra.is_empty(),
            "{log}"
        );
        (
            v["choices"][0]["text"].as_str().unwrap().to_owned(),
            metrics,
        )
    };
    let (plain, _) = answer(&[]);
    let (spec, metrics) = answer(&["--spec", "draft", "--draft-model", &draft, "--draft-fixed"]);
    assert_eq!(spec, plain);
    assert!(accepted_drafts(&metrics) > 0.0, "{metrics}");
}

/// `serve` drafts the text a JSON schema forces without `--spec` (`auto`, the default), with
/// the answer of `--spec off`, whose counters stay at zero.
#[cfg(unix)]
#[test]
fn serve_drafts_a_schemas_forced_text_by_default() {
    let schema = serde_json::json!({
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 12},
                       "population_millions": {"type": "integer"},
                       "is_capital": {"type": "boolean"}},
        "required": ["city", "population_millions", "is_capital"],
        "additionalProperties": false,
    });
    let body = serde_json::json!({
        "messages": [{"role": "user", "content": "Describe Paris."}],
        "max_tokens": 48, "temperature": 0,
        "response_format": {"type": "json_schema",
                            "json_schema": {"name": "city", "schema": schema}},
    })
    .to_string();
    let answer = |extra: &[&str]| -> (String, f64) {
        let (v, metrics, _) = serve_once(extra, "/v1/chat/completions", &body);
        let text = v["choices"][0]["message"]["content"].as_str().unwrap();
        (text.to_owned(), accepted_drafts(&metrics))
    };
    let (plain, none) = answer(&["--spec", "off"]);
    let keys: serde_json::Value = serde_json::from_str(&plain).unwrap();
    assert_eq!(keys.as_object().unwrap().len(), 3, "{plain}");
    assert_eq!(none, 0.0);
    // Whole proposals verified (`--draft-fixed`), so the count does not depend on time.
    let (forced, accepted) = answer(&["--draft-fixed"]);
    assert_eq!(forced, plain);
    // `{"city": "`, `", "population_millions": `, `, "is_capital": ` are forced.
    assert!(accepted >= 6.0, "{accepted} drafts taken");
}
