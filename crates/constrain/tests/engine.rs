//! Constraints in the engine on a real catalog model (SmolLM2): a constrained request's greedy
//! answer fits its constraint, is the same batched with others (constrained or not) as alone
//! through `Session`, and leaves the unconstrained requests beside it unchanged; with
//! speculation (the grammar's forced text drafted) every answer is the same again.

use std::sync::Arc;
use suanli_backend::KvDType;
use suanli_constrain::{Compiled, Grammar, Vocab};
use suanli_cpu::CpuBackend;
use suanli_engine::batch::{BatchEngine, Event, Request};
use suanli_engine::scheduler::SchedConfig;
use suanli_engine::session::Control;
use suanli_engine::spec::{SpecConfig, SpecMode, SpecStats};
use suanli_engine::{SamplingParams, Session, TokenConstraint};
use suanli_formats::{catalog, open_model, ModelSource};
use suanli_models::Model;
use suanli_tokenizer::{chat_prompt, ChatMessage, Tokenizer};

const MAX: usize = 48;

fn model() -> (std::path::PathBuf, Arc<Tokenizer>) {
    let path = catalog::pull(catalog::find("smollm2-135m").unwrap()).unwrap();
    let tok = match open_model(&path).unwrap() {
        ModelSource::Gguf { file, .. } => Tokenizer::from_gguf(&file).unwrap(),
        _ => unreachable!(),
    };
    (path, Arc::new(tok))
}

fn load(path: &std::path::Path) -> (CpuBackend, Model<CpuBackend>) {
    let src = open_model(path).unwrap();
    let backend = CpuBackend::new(Some(2)).unwrap();
    let model = Model::load(&src, &backend).unwrap();
    (backend, model)
}

type Case<'a> = (&'a str, Option<Compiled>);

/// Each case's greedy answer through `s`, one after the other, and its speculation figures.
fn one_at_a_time(
    s: &mut Session<CpuBackend>,
    cases: &[Case],
    prompts: &[Vec<u32>],
    eog: &[u32],
) -> (Vec<Vec<u32>>, Vec<SpecStats>) {
    cases
        .iter()
        .zip(prompts)
        .map(|((_, c), p)| {
            s.reset();
            let mut c = c.as_ref().map(|c| c.constraint());
            let g = s
                .generate_constrained(
                    p,
                    &SamplingParams::greedy(),
                    MAX,
                    &|t| eog.contains(&t),
                    &mut |_| Control::Continue,
                    c.as_mut().map(|c| c as &mut dyn TokenConstraint),
                )
                .unwrap();
            (g.tokens, g.spec)
        })
        .unzip()
}

/// Each case's greedy answer, all submitted to `e` at once.
fn all_at_once(
    e: &mut BatchEngine<CpuBackend>,
    cases: &[Case],
    prompts: &[Vec<u32>],
) -> Vec<Vec<u32>> {
    for (i, ((_, c), p)) in cases.iter().zip(prompts).enumerate() {
        let req = Request {
            prompt: p.clone(),
            params: SamplingParams::greedy(),
            max_tokens: MAX,
            logprobs: None,
            prompt_logprobs: None,
            constraint: c
                .as_ref()
                .map(|c| Box::new(c.constraint()) as Box<dyn TokenConstraint>),
        };
        e.submit(i as u64, req).unwrap();
    }
    let mut answers = vec![Vec::new(); cases.len()];
    let mut done = 0;
    while done < cases.len() {
        for (id, ev) in e.step().unwrap() {
            match ev {
                Event::Token { id: t, .. } => answers[id as usize].push(t),
                Event::Done { .. } => done += 1,
                Event::Failed(why) => panic!("sequence {id} failed: {why}"),
                Event::PromptLogprobs(_) => {}
            }
        }
    }
    answers
}

#[test]
fn constrained_answers_fit_and_are_the_same_batched_or_alone() {
    let (path, tok) = model();
    let (backend, m) = load(&path);
    let vocab = Arc::new(Vocab::new(tok.clone(), m.vocab_size()).unwrap());
    let schema = serde_json::json!({
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 12},
                       "age": {"type": "integer", "minimum": 0, "maximum": 120}},
        "required": ["name", "age"], "additionalProperties": false,
    });
    let cases: Vec<Case> = vec![
        (
            "Describe a person as JSON.",
            Some(Grammar::JsonSchema(schema.clone()).compile(&vocab).unwrap()),
        ),
        (
            "What is 6 times 7?",
            Some(Grammar::Regex("[0-9]+".into()).compile(&vocab).unwrap()),
        ),
        ("Tell me a story.", None),
        (
            "Is water wet?",
            Some(
                Grammar::Choice(vec!["yes".into(), "no".into()])
                    .compile(&vocab)
                    .unwrap(),
            ),
        ),
        (
            "Another person as JSON, please.",
            Some(Grammar::JsonObject.compile(&vocab).unwrap()),
        ),
    ];
    let prompts: Vec<Vec<u32>> = cases
        .iter()
        .map(|(q, _)| chat_prompt(&tok, &[ChatMessage::new("user", q)]).unwrap())
        .collect();
    let eog: Vec<u32> = tok.eog_ids.iter().copied().collect();

    // Alone, one at a time; then with speculation: the text the grammars force is drafted
    // (llguidance's fast-forward tokens, `TokenConstraint::forced`) and changes no token.
    let mut s = Session::new(backend, m, 512, 64).unwrap();
    let (alone, _) = one_at_a_time(&mut s, &cases, &prompts, &eog);
    // Every proposal verified whole (not adaptive), so the counts depend on no timing.
    let whole = |mode| SpecConfig {
        adaptive: false,
        ..SpecConfig::new(mode)
    };
    let spec = whole(SpecMode::Ngram);
    s.set_speculation(Some(spec.clone())).unwrap();
    let (speculative, stats) = one_at_a_time(&mut s, &cases, &prompts, &eog);
    assert_eq!(speculative, alone, "with speculation");
    // The person's JSON: its keys and punctuation are forced, none copied yet.
    assert!(stats[0].accepted >= 4, "{:?}", stats[0]);
    // `Auto` (the CLI's default): a session's sequence decodes alone, so it drafts as `Ngram`.
    let auto = whole(SpecMode::Auto);
    s.set_speculation(Some(auto.clone())).unwrap();
    let (speculative, auto_stats) = one_at_a_time(&mut s, &cases, &prompts, &eog);
    assert_eq!(speculative, alone, "with automatic speculation");
    assert_eq!(auto_stats, stats);
    assert!(stats[1].drafted > 0 && stats[2].drafted > 0, "{stats:?}");
    s.set_speculation(None).unwrap();

    // All at once, without and with speculation.
    let (backend, m) = s.into_parts();
    let cfg = SchedConfig {
        max_batch: 8,
        max_step_tokens: 64,
        max_queue: 8,
        block_size: 16,
        num_blocks: 64,
        max_ctx: 512,
    };
    let mut e = BatchEngine::new(backend, m, cfg, KvDType::F16, eog.clone()).unwrap();
    assert_eq!(all_at_once(&mut e, &cases, &prompts), alone);
    e.set_speculation(Some(spec.clone())).unwrap();
    let speculative = all_at_once(&mut e, &cases, &prompts);
    assert_eq!(speculative, alone, "batched with speculation");
    assert!(e.spec_stats().accepted > 0, "{:?}", e.spec_stats());
    // Whether `Auto` drafts here depends on measured step times; the answers do not.
    e.set_speculation(Some(auto.clone())).unwrap();
    let speculative = all_at_once(&mut e, &cases, &prompts);
    assert_eq!(speculative, alone, "batched with automatic speculation");
    // In a shared batch, `Auto` drafts only while a row costs less than `auto_row_cost` of a
    // token (measured: timing). Each answer twice, the pair decoding together to the end. With
    // no row cheap enough, neither the regex's answers (n-gram copies only: its grammar forces
    // nothing) nor the story's draft, and the story alone drafts as with `Ngram`; with every
    // row cheap enough, both pairs draft as with `Ngram`.
    let twice = |i: usize| -> (Vec<Case>, Vec<Vec<u32>>) {
        (vec![cases[i].clone(); 2], vec![prompts[i].clone(); 2])
    };
    let drafted = |e: &mut BatchEngine<CpuBackend>, i: usize, n: usize| {
        let before = e.spec_stats();
        let (c, p) = twice(i);
        let answers = all_at_once(e, &c[..n], &p[..n]);
        assert!(answers.iter().all(|a| *a == alone[i]), "case {i}");
        e.spec_stats().drafted - before.drafted
    };
    let with_row_cost = |auto_row_cost| SpecConfig {
        auto_row_cost,
        ..auto.clone()
    };
    e.set_speculation(Some(with_row_cost(0.0))).unwrap();
    assert_eq!(drafted(&mut e, 1, 2), 0, "the regex's answers");
    assert_eq!(drafted(&mut e, 2, 2), 0, "the story's answers");
    let story_alone = drafted(&mut e, 2, 1);
    e.set_speculation(Some(with_row_cost(f64::INFINITY)))
        .unwrap();
    let pairs = [drafted(&mut e, 1, 2), drafted(&mut e, 2, 2)];
    e.set_speculation(Some(spec)).unwrap();
    assert_eq!(story_alone, drafted(&mut e, 2, 1), "the story alone");
    assert_eq!(
        pairs,
        [drafted(&mut e, 1, 2), drafted(&mut e, 2, 2)],
        "rows cheap"
    );
    assert!(story_alone > 0 && pairs.iter().all(|&d| d > 0), "{pairs:?}");
    let stats = e.constraint_stats();
    let constrained: usize = cases
        .iter()
        .zip(&alone)
        .filter(|(c, _)| c.1.is_some())
        .map(|(_, a)| a.len())
        .sum();
    assert!(stats.tokens as usize >= constrained, "{stats:?}");

    let text = |i: usize| tok.decode(&alone[i]);
    let person: serde_json::Value =
        serde_json::from_str(&text(0)).unwrap_or_else(|e| panic!("{:?}: {e}", text(0)));
    assert!(person["name"].as_str().unwrap().chars().count() <= 12);
    assert!((0..=120).contains(&person["age"].as_i64().unwrap()));
    assert!(
        !text(1).is_empty() && text(1).bytes().all(|b| b.is_ascii_digit()),
        "{:?}",
        text(1)
    );
    assert!(["yes", "no"].contains(&text(3).as_str()), "{:?}", text(3));
    if alone[4].len() < MAX {
        assert!(
            serde_json::from_str::<serde_json::Map<_, _>>(&text(4)).is_ok(),
            "{:?}",
            text(4)
        );
    }
}
