//! Grammars against the tiny Qwen2 tokenizer of the golden fixtures (500 byte-level BPE
//! tokens): every answer a constraint lets through is one the grammar accepts.

use super::*;
use serde_json::{json, Value};
use std::path::Path;
use std::sync::Arc;
use suanli_engine::TokenConstraint;
use suanli_tokenizer::Tokenizer;

fn tiny() -> (Arc<Tokenizer>, Arc<Vocab>) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny/qwen2");
    let tok = Arc::new(Tokenizer::from_hf_dir(&dir).unwrap());
    // A model vocabulary wider than the tokenizer's, as Qwen2.5 pads it.
    let vocab = Arc::new(Vocab::new(tok.clone(), tok.vocab_size() + 12).unwrap());
    (tok, vocab)
}

/// SplitMix64, for reproducible walks.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// A random walk through what `c` allows: at each step random logits, then the engine's own
/// sample–check–mask–redraw (greedy). Ends at an end-of-generation token or after `max` tokens.
fn walk(
    tok: &Tokenizer,
    vocab: &Vocab,
    c: &mut Constraint,
    seed: u64,
    max: usize,
) -> (String, bool) {
    let mut rng = Rng(seed);
    let mut ids = Vec::new();
    for _ in 0..max {
        let mut logits: Vec<f32> = (0..vocab.size())
            .map(|_| (rng.next() % 1000) as f32 / 100.0)
            .collect();
        // Favour the end once allowed, so walks finish.
        for &e in tok.eog_ids.iter() {
            logits[e as usize] += 5.0;
        }
        let t = suanli_engine::constraint::constrained_pick(c, &mut logits, |l| {
            suanli_engine::sampler::argmax(l)
        })
        .unwrap()
        .0;
        if tok.is_eog(t) {
            return (tok.decode(&ids), true);
        }
        ids.push(t);
    }
    (tok.decode(&ids), false)
}

#[test]
fn json_schema_answers_parse_and_hold_to_the_schema() {
    let (tok, vocab) = tiny();
    let schema = json!({
        "type": "object",
        "properties": {
            "ok": {"type": "boolean"},
            "n": {"type": "integer", "minimum": 3, "maximum": 9},
            "kind": {"enum": ["a", "bb", "中文"]},
            "tags": {"type": "array", "items": {"type": "boolean"}, "minItems": 1, "maxItems": 2},
            "maybe": {"anyOf": [{"type": "null"}, {"$ref": "#/$defs/flag"}]}
        },
        "required": ["ok", "n", "kind", "tags", "maybe"],
        "additionalProperties": false,
        "$defs": {"flag": {"type": "boolean"}}
    });
    let compiled = Grammar::JsonSchema(schema).compile(&vocab).unwrap();
    for seed in 0..20 {
        let mut c = compiled.constraint();
        let (text, ended) = walk(&tok, &vocab, &mut c, seed, 200);
        assert!(ended, "seed {seed}: did not finish: {text}");
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
        let n = v["n"].as_i64().unwrap();
        assert!((3..=9).contains(&n), "{text}");
        assert!(
            ["a", "bb", "中文"].contains(&v["kind"].as_str().unwrap()),
            "{text}"
        );
        let tags = v["tags"].as_array().unwrap();
        assert!(
            (1..=2).contains(&tags.len()) && tags.iter().all(Value::is_boolean),
            "{text}"
        );
        assert!(v["maybe"].is_null() || v["maybe"].is_boolean(), "{text}");
        assert!(v["ok"].is_boolean(), "{text}");
        assert_eq!(v.as_object().unwrap().len(), 5, "{text}");
    }
}

#[test]
fn regex_choice_and_lark_hold() {
    let (tok, vocab) = tiny();
    // Each grammar with a check that a string fits it.
    type Holds = Box<dyn Fn(&str) -> bool>;
    let cases: Vec<(Grammar, Holds)> = vec![
        (
            Grammar::Regex("[0-9]{3}-[a-c]+".into()),
            Box::new(|s: &str| {
                s.len() >= 5
                    && s[..3].bytes().all(|b| b.is_ascii_digit())
                    && &s[3..4] == "-"
                    && s[4..].bytes().all(|b| (b'a'..=b'c').contains(&b))
            }),
        ),
        (
            Grammar::Choice(vec!["yes".into(), "no".into(), "maybe so".into()]),
            Box::new(|s: &str| ["yes", "no", "maybe so"].contains(&s)),
        ),
        (
            Grammar::Lark("start: \"(\" NUM (\"+\" NUM)* \")\"\nNUM: /[1-9]/\n".into()),
            Box::new(|s: &str| {
                s.starts_with('(')
                    && s.ends_with(')')
                    && s[1..s.len() - 1]
                        .split('+')
                        .all(|d| d.len() == 1 && d != "0")
            }),
        ),
        (
            Grammar::JsonObject,
            // JSON allows numbers past f64 (1E98420), which serde_json refuses to read.
            Box::new(|s: &str| match serde_json::from_str(s) {
                Ok(v) => matches!(v, Value::Object(_)),
                Err(e) => e.to_string().contains("number out of range") && s.starts_with('{'),
            }),
        ),
    ];
    for (g, ok) in cases {
        let compiled = g.compile(&vocab).unwrap();
        for seed in 0..10 {
            let (text, ended) = walk(&tok, &vocab, &mut compiled.constraint(), seed, 5000);
            assert!(ended && ok(&text), "{g:?} seed {seed}: {text:?}");
        }
    }
}

#[test]
fn bad_grammars_are_errors_that_say_why() {
    let (_, vocab) = tiny();
    let err = |g: Grammar| g.compile(&vocab).err().expect("an error");
    let e = err(Grammar::JsonSchema(
        json!({"type": "object", "not": {"type": "string"}}),
    ));
    assert!(e.contains("not"), "{e}");
    let e = err(Grammar::JsonSchema(json!({"type": "nonsense"})));
    assert!(e.contains("nonsense"), "{e}");
    let e = err(Grammar::JsonSchema(json!([1, 2])));
    assert!(e.contains("object"), "{e}");
    let e = err(Grammar::Regex("(unclosed".into()));
    assert!(!e.is_empty());
    let e = err(Grammar::Lark("start: undefined_rule".into()));
    assert!(e.contains("undefined_rule"), "{e}");
    let e = err(Grammar::Lark("   ".into()));
    assert!(e.contains("empty"), "{e}");
    assert!(err(Grammar::Choice(vec![])).contains("choice"));
    let huge = "a".repeat(MAX_SOURCE + 1);
    assert!(err(Grammar::Regex(huge)).contains("limit"));
}

#[test]
fn a_lazy_grammar_waits_for_its_trigger() {
    let (tok, vocab) = tiny();
    let compiled = Grammar::Regex("[0-9]+!".into())
        .compile(&vocab)
        .unwrap()
        .lazy("go:");
    let mut c = compiled.constraint();
    // Free text before the trigger: anything goes, the end included.
    for id in tok.encode("hello wor", false).unwrap() {
        assert!(c.allows(id));
        c.accept(id).unwrap();
    }
    assert!(c.allows(*tok.eog_ids.iter().next().unwrap()));
    for id in tok.encode("ld go:", false).unwrap() {
        c.accept(id).unwrap();
    }
    // Now only digits, then "!", then the end.
    let letter = tok.encode("x", false).unwrap()[0];
    assert!(!c.allows(letter));
    let (rest, ended) = walk(&tok, &vocab, &mut c, 7, 50);
    assert!(ended, "{rest}");
    assert!(
        rest.ends_with('!') && rest[..rest.len() - 1].bytes().all(|b| b.is_ascii_digit()),
        "{rest}"
    );
}

fn tool(name: &str, params: Value) -> tools::Tool {
    let raw = json!({"type": "function", "function": {"name": name, "parameters": params}});
    tools::parse_tools(&json!([raw])).unwrap().remove(0)
}

#[test]
fn forced_tool_calls_parse_and_fit_the_parameters() {
    let (tok, vocab) = tiny();
    let weather = tool(
        "get_weather",
        json!({"type": "object", "properties": {"city": {"enum": ["Paris", "北京"]},
               "days": {"type": "integer", "minimum": 1, "maximum": 3}},
               "required": ["city", "days"], "additionalProperties": false}),
    );
    let time = tool(
        "now",
        json!({"type": "object", "properties": {}, "additionalProperties": false}),
    );
    let ts = vec![weather, time];
    for (choice, parallel) in [
        (tools::ToolChoice::Required, false),
        (tools::ToolChoice::Required, true),
        (tools::ToolChoice::Named("get_weather".into()), false),
    ] {
        let compiled = tools::constraint_for(&vocab, &ts, &choice, parallel, tools::Format::Hermes)
            .unwrap()
            .unwrap();
        for seed in 0..8 {
            let (text, ended) = walk(&tok, &vocab, &mut compiled.constraint(), seed, 400);
            assert!(ended, "{text}");
            let mut p = tools::CallParser::new(&ts);
            let mut pieces = p.push(&text);
            pieces.extend(p.finish());
            assert!(!pieces.is_empty(), "{text}");
            for piece in &pieces {
                let tools::Piece::Call(call) = piece else {
                    panic!("text outside calls: {text:?}");
                };
                let args: Value = serde_json::from_str(&call.arguments).unwrap();
                if call.name == "get_weather" {
                    assert!(["Paris", "北京"].contains(&args["city"].as_str().unwrap()));
                    assert!((1..=3).contains(&args["days"].as_i64().unwrap()));
                } else {
                    assert_eq!(choice, tools::ToolChoice::Required, "{text}");
                    assert_eq!(args, json!({}));
                }
            }
            if !parallel {
                assert_eq!(pieces.len(), 1, "{text}");
            }
        }
    }
}

#[test]
fn auto_tool_calls_are_constrained_once_opened() {
    let (tok, vocab) = tiny();
    let ts = vec![tool(
        "add",
        json!({"type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 9}},
               "required": ["a"], "additionalProperties": false}),
    )];
    let compiled = tools::constraint_for(
        &vocab,
        &ts,
        &tools::ToolChoice::Auto,
        false,
        tools::Format::Hermes,
    )
    .unwrap()
    .unwrap();
    let mut c = compiled.constraint();
    let mut text = String::from("Let me add. <tool_call>");
    for id in tok.encode(&text, false).unwrap() {
        c.accept(id).unwrap();
    }
    let (rest, ended) = walk(&tok, &vocab, &mut c, 3, 300);
    assert!(ended, "{rest}");
    text += &rest;
    let mut p = tools::CallParser::new(&ts);
    let mut pieces = p.push(&text);
    pieces.extend(p.finish());
    assert_eq!(pieces.len(), 2, "{text}");
    assert_eq!(pieces[0], tools::Piece::Text("Let me add.".into()));
    let tools::Piece::Call(call) = &pieces[1] else {
        panic!("{pieces:?}")
    };
    assert_eq!(call.name, "add");
    let a = serde_json::from_str::<Value>(&call.arguments).unwrap()["a"]
        .as_i64()
        .unwrap();
    assert!((0..=9).contains(&a));
}

#[test]
fn tool_requests_are_checked_field_by_field() {
    let bad = [
        (json!({"type": "function"}), "must be a list"),
        (json!([{"type": "retrieval"}]), "tools[0].type"),
        (
            json!([{"type": "function", "function": {}}]),
            "tools[0].function.name",
        ),
        (
            json!([{"type": "function", "function": {"name": "a b"}}]),
            "tools[0].function.name",
        ),
        (
            json!([{"type": "function", "function": {"name": "f", "parameters": 3}}]),
            "parameters",
        ),
        (
            json!([{"type": "function", "function": {"name": "f"}}, {"type": "function", "function": {"name": "f"}}]),
            "twice",
        ),
    ];
    for (v, want) in bad {
        let e = tools::parse_tools(&v).expect_err("an error");
        assert!(e.contains(want), "{v}: {e}");
    }
    let ts = vec![tool("f", json!({"type": "object"}))];
    for (v, want) in [
        (json!("sometimes"), "sometimes"),
        (
            json!({"type": "function", "function": {"name": "g"}}),
            "\"g\"",
        ),
        (json!({"type": "function"}), "tool_choice"),
        (json!(3), "tool_choice"),
    ] {
        let e = tools::parse_tool_choice(Some(&v), &ts).expect_err("an error");
        assert!(e.contains(want), "{v}: {e}");
    }
    assert!(tools::parse_tool_choice(Some(&json!("required")), &[]).is_err());
    assert_eq!(
        tools::parse_tool_choice(None, &ts).unwrap(),
        tools::ToolChoice::Auto
    );
    assert_eq!(
        tools::parse_tool_choice(None, &[]).unwrap(),
        tools::ToolChoice::None
    );
    let (_, vocab) = tiny();
    let bad = vec![
        ts[0].clone(),
        tool("g", json!({"type": "object", "not": {}})),
    ];
    let e = tools::check_parameters(&vocab, &bad).unwrap_err();
    assert!(
        e.starts_with("tools[1].function.parameters") && e.contains("not"),
        "{e}"
    );
}

/// The parser on whole answers and on the same answers fed a few bytes at a time: the same
/// pieces (text joined), so a stream reassembles to the collected answer.
#[test]
fn call_parser_streams_what_it_collects() {
    let ts = vec![
        tool("get_weather", json!({"type": "object"})),
        tool("now", json!({})),
    ];
    let cases: Vec<(&str, Vec<tools::Piece>)> = vec![
        (
            "Sure.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"now\", \"arguments\": {}}\n</tool_call>",
            vec![
                tools::Piece::Text("Sure.".into()),
                call(0, "get_weather", "{\"city\": \"Paris\"}"),
                call(1, "now", "{}"),
            ],
        ),
        (
            "```json\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"北京\"}}\n```",
            vec![call(0, "get_weather", "{\"city\": \"北京\"}")],
        ),
        (
            "{\"name\": \"now\", \"parameters\": {}}; {\"name\": \"get_weather\", \"parameters\": {\"city\": \"x\"}}",
            vec![call(0, "now", "{}"), call(1, "get_weather", "{\"city\": \"x\"}")],
        ),
        (
            "{\"name\": \"now\", \"arguments\": \"{\\\"tz\\\": \\\"UTC\\\"}\"}",
            vec![call(0, "now", "{\"tz\": \"UTC\"}")],
        ),
        (
            "Use ```json\n{\"a\": 1}\n``` for config.",
            vec![tools::Piece::Text("Use ```json\n{\"a\": 1}\n``` for config.".into())],
        ),
        (
            "<tool_call>\n{\"name\": \"unknown\", \"arguments\": {}}\n</tool_call>",
            vec![tools::Piece::Text("<tool_call>\n{\"name\": \"unknown\", \"arguments\": {}}\n</tool_call>".into())],
        ),
        ("{\"json\": \"answer\"}", vec![tools::Piece::Text("{\"json\": \"answer\"}".into())]),
        ("  plain < text <tool", vec![tools::Piece::Text("plain < text <tool".into())]),
    ];
    for (text, want) in cases {
        for step in [1, 3, 7, 1000] {
            let mut p = tools::CallParser::new(&ts);
            let mut got: Vec<tools::Piece> = Vec::new();
            let chars: Vec<char> = text.chars().collect();
            for piece in chars.chunks(step).map(|c| c.iter().collect::<String>()) {
                got.extend(p.push(&piece));
            }
            got.extend(p.finish());
            assert_eq!(join_text(got), want, "{text:?} by {step}");
        }
    }
}

fn call(index: usize, name: &str, arguments: &str) -> tools::Piece {
    tools::Piece::Call(tools::ToolCall {
        index,
        name: name.into(),
        arguments: arguments.into(),
    })
}

fn join_text(pieces: Vec<tools::Piece>) -> Vec<tools::Piece> {
    let mut out: Vec<tools::Piece> = Vec::new();
    for p in pieces {
        match (out.last_mut(), p) {
            (Some(tools::Piece::Text(a)), tools::Piece::Text(b)) => a.push_str(&b),
            (_, p) => out.push(p),
        }
    }
    out
}

/// Llama 3.x and GLM-4 calls forced by their own grammars parse back as calls.
#[test]
fn llama3_and_glm4_calls_are_forced_in_their_formats() {
    let (tok, vocab) = tiny();
    let ts = vec![
        tool(
            "pick",
            json!({"type": "object", "properties": {"n": {"enum": [1, 2, 3]}},
                   "required": ["n"], "additionalProperties": false}),
        ),
        tool(
            "now",
            json!({"type": "object", "properties": {}, "additionalProperties": false}),
        ),
    ];
    for format in [tools::Format::Llama3Json, tools::Format::Glm4] {
        for parallel in [false, true] {
            let c =
                tools::constraint_for(&vocab, &ts, &tools::ToolChoice::Required, parallel, format)
                    .unwrap()
                    .unwrap();
            for seed in 0..6 {
                let (text, ended) = walk(&tok, &vocab, &mut c.constraint(), seed, 400);
                assert!(ended, "{format:?}: {text}");
                let mut p = tools::CallParser::with_format(&ts, format);
                let mut pieces = p.push(&text);
                pieces.extend(p.finish());
                assert!(!pieces.is_empty(), "{format:?}: {text:?}");
                for piece in &pieces {
                    let tools::Piece::Call(call) = piece else {
                        panic!("{format:?}: text outside calls: {text:?}");
                    };
                    let args: Value = serde_json::from_str(&call.arguments).unwrap();
                    match call.name.as_str() {
                        "pick" => assert!([1, 2, 3].contains(&args["n"].as_i64().unwrap())),
                        _ => assert_eq!(args, json!({})),
                    }
                }
                if !parallel {
                    assert_eq!(pieces.len(), 1, "{text:?}");
                }
                // Streamed a character at a time: the same calls.
                let mut p = tools::CallParser::with_format(&ts, format);
                let mut streamed: Vec<tools::Piece> =
                    text.chars().flat_map(|c| p.push(&c.to_string())).collect();
                streamed.extend(p.finish());
                assert_eq!(streamed, pieces, "{format:?}: {text:?}");
            }
        }
        // No tag to wait for: `auto` is parsed, not constrained.
        assert!(
            tools::constraint_for(&vocab, &ts, &tools::ToolChoice::Auto, true, format)
                .unwrap()
                .is_none()
        );
    }
    assert_eq!(
        tools::Format::detect("{{ '<tool_call>' }} {{ tools }}"),
        tools::Format::Hermes
    );
    assert_eq!(
        tools::Format::detect("{{ tools }} <|python_tag|>"),
        tools::Format::Llama3Json
    );
    assert_eq!(
        tools::Format::detect("{{ tools }} <|observation|>"),
        tools::Format::Glm4
    );
    assert_eq!(
        tools::Format::detect("no tool support"),
        tools::Format::Hermes
    );
}
