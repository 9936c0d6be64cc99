//! Speculative decoding's options through the real binary: bad combinations are refused with
//! a message naming the option, before any model is loaded; a draft model of another
//! vocabulary is refused by name; n-gram speculation answers as plain decoding does.

mod common;
use common::suanli;

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
    let (plain, d0) = run(&[]);
    let (spec, _) = run(&["--spec", "ngram", "--draft-fixed", "--spec-ngram", "2"]);
    assert_eq!(spec, plain);
    assert_eq!(d0, 0);
}
