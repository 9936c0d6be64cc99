//! Speculative decoding changes no token: with n-gram drafts (verified whatever their length,
//! or adaptively) the answers equal those decoded one token at a time — greedy, seeded sampling
//! with penalties and a logit bias, under a constraint, with stop and length limits — and the
//! sampled distribution is the same (chi-square test on a tiny model).

mod common;
use common::*;
use std::collections::HashMap;
use suanli_cpu::kernels::Isa;
use suanli_cpu::CpuBackend;
use suanli_engine::session::Control;
use suanli_engine::spec::{SpecConfig, SpecMode, SpecStats};
use suanli_engine::{FinishReason, SamplingParams, Session, TokenConstraint};
use suanli_formats::catalog;

fn ngram(adaptive: bool, max_draft: usize) -> Option<SpecConfig> {
    Some(SpecConfig {
        max_draft,
        adaptive,
        ..SpecConfig::new(SpecMode::Ngram)
    })
}

/// Drafts from single-token suffixes too (many proposals, many refused).
fn ngram1(max_draft: usize) -> Option<SpecConfig> {
    Some(SpecConfig {
        ngram_min: 1,
        ..ngram(false, max_draft).unwrap()
    })
}

/// Tokens, finish reason and speculation figures of one generation from a fresh cache.
fn generate(
    s: &mut Session<CpuBackend>,
    spec: Option<SpecConfig>,
    prompt: &[u32],
    params: &SamplingParams,
    n: usize,
    stop_after: Option<u32>,
    constraint: Option<&mut dyn TokenConstraint>,
) -> (Vec<u32>, FinishReason, SpecStats) {
    s.reset();
    s.set_speculation(spec).unwrap();
    let g = s
        .generate_constrained(
            prompt,
            params,
            n,
            &|_| false,
            &mut |t| match Some(t) == stop_after {
                true => Control::Stop,
                false => Control::Continue,
            },
            constraint,
        )
        .unwrap();
    (g.tokens, g.finish_reason, g.spec)
}

fn smollm2() -> (Session<CpuBackend>, suanli_tokenizer::Tokenizer) {
    let path = catalog::pull(catalog::find("smollm2-135m").unwrap()).unwrap();
    load(&path, Isa::detect().unwrap(), 1024, 64, KvDType::F16)
}

/// Text that invites copying: a function, then the start of the same function again.
const CODE: &str = "def parse(path):\n    result = {}\n    with open(path) as f:\n        for line in f:\n            key, value = line.split('=', 1)\n            result[key.strip()] = value.strip()\n    return result\n\n# The same function, renamed:\ndef load(path):\n";

#[test]
fn greedy_answers_are_the_same_with_speculation() {
    let (mut s, tok) = smollm2();
    let greedy = SamplingParams::greedy();
    let mut verified = SpecStats::default();
    for text in [CODE, "The capital of France is", "1, 2, 3, 4, 5, 6, 7, 8,"] {
        let p = tok.encode(text, false).unwrap();
        let (want, why, _) = generate(&mut s, None, &p, &greedy, 80, None, None);
        assert_eq!(why, FinishReason::Length);
        for spec in [ngram(false, 10), ngram(false, 3), ngram(true, 10)] {
            let fixed = !spec.as_ref().unwrap().adaptive;
            let (got, why, st) = generate(&mut s, spec, &p, &greedy, 80, None, None);
            assert_eq!(got, want, "{text:?}: speculative answer differs");
            assert_eq!(why, FinishReason::Length);
            if fixed {
                verified.add(&st);
            }
        }
    }
    // Both outcomes were exercised: drafts taken and drafts refused (rolled back).
    assert!(verified.accepted > 20, "{verified:?}");
    assert!(verified.drafted > verified.accepted, "{verified:?}");
    // The copied function speeds up: more than one token per verifying pass on average.
    let p = tok.encode(CODE, false).unwrap();
    let (_, _, st) = generate(&mut s, ngram(false, 10), &p, &greedy, 60, None, None);
    assert!(st.mean_accepted_length() > 1.5, "{st:?}");
}

#[test]
fn seeded_sampling_is_the_same_with_speculation() {
    let (mut s, tok) = smollm2();
    let p = tok.encode(CODE, false).unwrap();
    let mut params = SamplingParams::greedy();
    params.temperature = 0.7;
    params.top_k = 40;
    params.top_p = 0.95;
    params.min_p = 0.02;
    params.logit_bias = vec![(p[3], -2.0), (p[5], 1.5)];
    let mut stats = SpecStats::default();
    for seed in 0..6 {
        params.seed = Some(seed);
        // Penalties make copying less likely: half the runs have them.
        params.repeat_penalty = if seed % 2 == 0 { 1.0 } else { 1.1 };
        let (want, _, _) = generate(&mut s, None, &p, &params, 48, None, None);
        let (got, _, st) = generate(&mut s, ngram(false, 8), &p, &params, 48, None, None);
        assert_eq!(got, want, "seed {seed}");
        stats.add(&st);
    }
    assert!(
        stats.accepted > 0 && stats.drafted > stats.accepted,
        "{stats:?}"
    );
}

/// Allows only tokens whose id is not a multiple of 3 (end of generation always); counts what
/// it was told was taken.
struct NoThirds {
    accepted: Vec<u32>,
}

impl TokenConstraint for NoThirds {
    fn allows(&mut self, token: u32) -> bool {
        !token.is_multiple_of(3)
    }
    fn mask(&mut self, logits: &mut [f32]) -> Result<(), String> {
        for (i, l) in logits.iter_mut().enumerate() {
            if i.is_multiple_of(3) {
                *l = f32::NAN;
            }
        }
        Ok(())
    }
    fn accept(&mut self, token: u32) -> Result<(), String> {
        assert!(!token.is_multiple_of(3), "took a refused token");
        self.accepted.push(token);
        Ok(())
    }
}

#[test]
fn constraints_limits_and_stops_are_the_same_with_speculation() {
    let (mut s, tok) = smollm2();
    let p = tok.encode(CODE, false).unwrap();
    let greedy = SamplingParams::greedy();
    // A constraint sees exactly the emitted tokens, in order, never a refused draft.
    let mut c0 = NoThirds { accepted: vec![] };
    let (want, _, _) = generate(&mut s, None, &p, &greedy, 50, None, Some(&mut c0));
    let mut c1 = NoThirds { accepted: vec![] };
    let (got, _, st) = generate(
        &mut s,
        ngram(false, 10),
        &p,
        &greedy,
        50,
        None,
        Some(&mut c1),
    );
    assert_eq!(got, want);
    assert_eq!(c1.accepted, got);
    assert!(st.drafted > 0);
    // Stopping on a token inside an accepted run, and short length limits.
    let (full, _, _) = generate(&mut s, None, &p, &greedy, 40, None, None);
    let stop = full[17];
    let (want, why0, _) = generate(&mut s, None, &p, &greedy, 40, Some(stop), None);
    let (got, why1, _) = generate(&mut s, ngram(false, 10), &p, &greedy, 40, Some(stop), None);
    assert_eq!((got, why1), (want, why0));
    for n in [1, 2, 7] {
        let (got, why, _) = generate(&mut s, ngram(false, 10), &p, &greedy, n, None, None);
        assert_eq!((got.as_slice(), why), (&full[..n], FinishReason::Length));
    }
    // After a speculative answer the cache holds exactly the conversation (refused drafts
    // rolled back): a follow-up turn reusing it answers as it does without speculation.
    let two_turns = |s: &mut Session<CpuBackend>, spec| {
        s.set_speculation(spec).unwrap();
        s.reset();
        let first = s
            .generate(&p, &greedy, 30, &|_| false, &mut |_| Control::Continue)
            .unwrap();
        let mut turn2 = p.clone();
        turn2.extend(&first.tokens);
        turn2.extend(tok.encode("\n# Again:\n", false).unwrap());
        let second = s
            .generate(&turn2, &greedy, 30, &|_| false, &mut |_| Control::Continue)
            .unwrap();
        assert!(second.cached_tokens > p.len());
        (first.tokens, second.tokens)
    };
    assert_eq!(two_turns(&mut s, ngram1(10)), two_turns(&mut s, None));
}

/// Fixed runs of tokens between free stretches, as a JSON schema fixes keys and punctuation
/// between values: a slot `Some(t)` allows only `t`, `None` anything. `forced` proposes the
/// fixed run from the next slot on — or, `lying`, three tokens the model is unlikely to write
/// wherever the next slot is free (a proposal is only a proposal).
struct Template {
    slots: Vec<Option<u32>>,
    at: usize,
    lying: bool,
    taken: Vec<u32>,
}

impl Template {
    fn slot(&self) -> Option<u32> {
        self.slots.get(self.at).copied().flatten()
    }
}

impl TokenConstraint for Template {
    fn allows(&mut self, token: u32) -> bool {
        self.slot().is_none_or(|t| t == token)
    }
    fn mask(&mut self, logits: &mut [f32]) -> Result<(), String> {
        if let Some(t) = self.slot() {
            for (i, l) in logits.iter_mut().enumerate() {
                if i as u32 != t {
                    *l = f32::NAN;
                }
            }
        }
        Ok(())
    }
    fn accept(&mut self, token: u32) -> Result<(), String> {
        assert!(self.allows(token), "took a refused token");
        self.taken.push(token);
        self.at += 1;
        Ok(())
    }
    fn forced(&mut self) -> Vec<u32> {
        let run: Vec<u32> = self.slots[self.at.min(self.slots.len())..]
            .iter()
            .map_while(|s| *s)
            .collect();
        match (run.is_empty(), self.lying) {
            (true, true) => vec![7, 7, 7],
            _ => run,
        }
    }
}

/// The text a constraint forces is drafted first (`TokenConstraint::forced`) and changes no
/// token: greedy and seeded answers under a template of fixed runs equal those decoded one
/// token at a time, every forced token after the first is drafted and taken, and forced
/// drafts the model refuses (a lying constraint) are rolled back like any other.
#[test]
fn tokens_a_constraint_forces_are_drafted_and_change_no_token() {
    let (mut s, tok) = smollm2();
    let p = tok.encode("Fill in the form:", false).unwrap();
    let fixed = |text: &str| tok.encode(text, false).unwrap().into_iter().map(Some);
    let free = |n: usize| std::iter::repeat_n(None, n);
    let slots: Vec<Option<u32>> = fixed("{\"name\": \"")
        .chain(free(4))
        .chain(fixed("\", \"occupation_or_profession\": \""))
        .chain(free(5))
        .chain(fixed("\", \"city_of_residence\": \""))
        .chain(free(30))
        .collect();
    let n_fixed = slots.iter().filter(|s| s.is_some()).count();
    let mut sampled = SamplingParams::greedy();
    sampled.temperature = 0.8;
    sampled.seed = Some(11);
    for params in [SamplingParams::greedy(), sampled] {
        for lying in [false, true] {
            let template = || Template {
                slots: slots.clone(),
                at: 0,
                lying,
                taken: Vec::new(),
            };
            let mut c0 = template();
            let (want, _, _) = generate(&mut s, None, &p, &params, 40, None, Some(&mut c0));
            let mut c1 = template();
            // Lookup from 4-token suffixes only: here, nearly every draft is a forced one.
            // Every proposal verified whole (not adaptive), so the counts depend on no timing.
            let spec = Some(SpecConfig {
                ngram_min: 4,
                ..ngram(false, 10).unwrap()
            });
            let (got, _, st) = generate(&mut s, spec, &p, &params, 40, None, Some(&mut c1));
            assert_eq!(got, want, "{params:?}, lying {lying}");
            assert_eq!(c1.taken, got);
            if lying {
                assert!(st.drafted > st.accepted, "{st:?}");
            } else {
                // Every forced token but the first (sampled from the prompt's pass) is
                // drafted and taken.
                assert!(st.accepted as usize >= n_fixed - 1, "{st:?} of {n_fixed}");
            }
        }
    }
}

/// Wilson–Hilferty: the chi-square quantile with `df` degrees of freedom at upper tail `z`
/// standard deviations (3.09 for a significance of 0.001).
fn chi2_quantile(df: f64, z: f64) -> f64 {
    let v = 2.0 / (9.0 * df);
    df * (1.0 - v + z * v.sqrt()).powi(3)
}

/// Two independent samples of 3-token continuations (different seeds), with and without
/// speculation, on a tiny random model where drafts are proposed and often refused: a
/// chi-square test of homogeneity at significance 0.001 does not tell them apart. (With equal
/// seeds they are identical, as the other tests show; this checks the distribution itself.)
#[test]
fn sampled_distribution_is_unchanged_by_speculation() {
    let dir = fixtures().join("tiny/qwen2");
    let (mut s, _) = load(&dir, Isa::detect().unwrap(), 64, 16, KvDType::F32);
    // Three tokens made likely by a logit bias and a prompt cycling through them: the n-gram
    // drafts continue the cycle, and the sampled tokens follow it often but not always, so
    // drafts are both taken and refused.
    let (x, y, z) = (101u32, 202u32, 303u32);
    let mut params = SamplingParams::greedy();
    params.temperature = 1.0;
    params.top_k = 8;
    params.logit_bias = vec![(x, 6.0), (y, 6.0), (z, 5.0)];
    let prompt: Vec<u32> = [x, y, z].repeat(4);
    let n = 1500u64;
    let mut counts: [HashMap<Vec<u32>, u64>; 2] = [HashMap::new(), HashMap::new()];
    let mut stats = SpecStats::default();
    for (side, spec) in [None, ngram1(4)].into_iter().enumerate() {
        for i in 0..n {
            params.seed = Some(side as u64 * 1_000_000 + i);
            let (got, _, st) = generate(&mut s, spec.clone(), &prompt, &params, 3, None, None);
            *counts[side].entry(got).or_default() += 1;
            stats.add(&st);
        }
    }
    assert!(
        stats.accepted > 50 && stats.drafted > stats.accepted + 50,
        "{stats:?}"
    );
    // Outcomes seen fewer than 10 times in all are pooled into one bin.
    let mut bins: HashMap<Option<Vec<u32>>, [u64; 2]> = HashMap::new();
    let keys: std::collections::HashSet<&Vec<u32>> = counts.iter().flat_map(|c| c.keys()).collect();
    for k in keys {
        let c = [0, 1].map(|side| counts[side].get(k).copied().unwrap_or(0));
        let key = (c[0] + c[1] >= 10).then(|| k.clone());
        let b = bins.entry(key).or_default();
        b[0] += c[0];
        b[1] += c[1];
    }
    let chi2: f64 = bins
        .values()
        .map(|c| {
            let total = (c[0] + c[1]) as f64;
            // Equal sample sizes: each side's expected count is half the bin's total.
            c.iter()
                .map(|&o| (o as f64 - total / 2.0).powi(2) / (total / 2.0))
                .sum::<f64>()
        })
        .sum();
    let df = (bins.len() - 1) as f64;
    assert!(df >= 5.0, "too few outcomes to test: {}", bins.len());
    let crit = chi2_quantile(df, 3.09);
    eprintln!("chi-square {chi2:.1} with {df} degrees of freedom (critical {crit:.1} at 0.001); {stats:?}");
    assert!(
        chi2 < crit,
        "the distributions differ: chi-square {chi2:.1} > {crit:.1}"
    );
}

/// SmolLM2 drafting for itself, the draft loaded by `draft`, 6 drafts a pass: the answers
/// with and without speculation, greedy then seeded sampling, are the same. The session and
/// the speculation figures of both.
fn drafted_by_smollm2(
    draft: impl FnOnce(&suanli_formats::ModelSource, &CpuBackend) -> suanli_models::Model<CpuBackend>,
) -> (Session<CpuBackend>, [SpecStats; 2]) {
    let path = catalog::pull(catalog::find("smollm2-135m").unwrap()).unwrap();
    let (mut s, tok) = load(&path, Isa::detect().unwrap(), 1024, 64, KvDType::F16);
    let src = suanli_formats::open_model(&path).unwrap();
    let model = draft(&src, &s.backend);
    s.set_draft_model(model, KvDType::F16).unwrap();
    let spec = Some(SpecConfig {
        max_draft: 6,
        adaptive: false,
        ..SpecConfig::new(SpecMode::Draft)
    });
    let p = tok
        .encode("The three laws of thermodynamics are", false)
        .unwrap();
    let mut sampled = SamplingParams::greedy();
    sampled.temperature = 0.9;
    sampled.seed = Some(7);
    let stats = [SamplingParams::greedy(), sampled].map(|params| {
        let (want, _, _) = generate(&mut s, None, &p, &params, 60, None, None);
        let (got, _, st) = generate(&mut s, spec.clone(), &p, &params, 60, None, None);
        assert_eq!(got, want, "{params:?}");
        st
    });
    (s, stats)
}

/// A draft model re-quantized to Q4_0 at load (SmolLM2's Q4_1 and Q8_0 matrices: 4.5 bits
/// per weight instead of 5 and 8.5) reads fewer bytes per drafted token, still drafts, and
/// changes no token, greedy or sampled.
#[test]
fn requantized_draft_model_answers_are_the_same() {
    let mut done = None;
    let (_, [greedy, _]) = drafted_by_smollm2(|src, backend| {
        let m = suanli_models::Model::load_for_drafting(
            src,
            backend,
            suanli_models::DraftLoad {
                requantize: Some(suanli_models::Requantize::Q4_0),
                short_head: None,
                fast_head: true,
            },
        )
        .unwrap();
        done = Some(m.requantized());
        m
    });
    let r = done.unwrap();
    assert!(r.converted > 0 && r.bytes_after < r.bytes_before, "{r:?}");
    // The same model at 4.5 bits still drafts more than a token per pass: 2.0 tokens per
    // verifying pass of at most 6 drafts, 48 % of them taken (its own weights: 2.8 and 79 %,
    // by the test below; its runs end where their probability falls under 0.6, `DraftRun`).
    assert!(
        greedy.mean_accepted_length() > 1.6 && greedy.acceptance() > 0.35,
        "{r:?}; {greedy:?}"
    );
}

/// A draft model (here the model itself, loaded again on the same backend: 79 % of its greedy
/// drafts are taken, 2.8 tokens a pass, its runs ending where their probability falls under
/// 0.6, `DraftRun`) changes no token, greedy or sampled.
#[test]
fn draft_model_answers_are_the_same() {
    let (_, [greedy, sampled]) =
        drafted_by_smollm2(|src, backend| suanli_models::Model::load(src, backend).unwrap());
    assert!(
        greedy.acceptance() > 0.7 && greedy.mean_accepted_length() > 2.4,
        "{greedy:?}"
    );
    assert!(
        sampled.accepted > 0 && sampled.drafted > sampled.accepted,
        "{sampled:?}"
    );
}

/// A draft model's short head (`DraftLoad::short_head`) only changes what is proposed. SmolLM2
/// drafting for itself through a head of its whole vocabulary in reverse order (which every
/// text lies within, so it serves every draft; were a row's logit taken for the wrong token,
/// nearly every draft would be refused) takes nearly every draft; through a head of only the
/// vocabulary's last 9,152 tokens (the prompt and answers lie outside it, so drafts take the
/// whole head: drafted from those tokens, nearly every draft would be refused) too; and the
/// answers are the same, greedy and sampled.
#[test]
fn draft_model_short_head_changes_no_token() {
    let vocab = 49152u32;
    for ids in [
        (0..vocab).rev().collect::<Vec<u32>>(),
        (40000..vocab).collect(),
    ] {
        let whole = ids.len() == vocab as usize;
        let (s, [greedy, sampled]) = drafted_by_smollm2(|src, backend| {
            let how = suanli_models::DraftLoad {
                requantize: None,
                short_head: Some(ids.clone()),
                fast_head: true,
            };
            let m = suanli_models::Model::load_for_drafting(src, backend, how).unwrap();
            assert_eq!(m.vocab_size(), vocab as usize);
            m
        });
        assert!(
            greedy.acceptance() > 0.7 && greedy.mean_accepted_length() > 2.4,
            "{greedy:?}"
        );
        assert!(sampled.accepted > 0, "{sampled:?}");
        // Every proposal went through the short head, or none did.
        let d = s.draft_stats().unwrap();
        let served = if whole { d.proposals } else { 0 };
        assert!(d.proposals > 0 && d.short_head == served, "{d:?}");
    }
}

/// A draft model whose vocabulary differs from the model's by padding rows (Qwen2.5-0.5B's
/// 151,936 entries against the 7B's 152,064) drafts where it can and changes no token. The
/// tiny qwen2 drafts for itself with 64 padding rows more (zero: the same logits for every
/// real token), so nearly every draft is taken; a prompt holding a padding id the draft
/// cannot embed gets no drafts from it, and no error; and drafting for the model, the padded
/// copy with rows that outscore a frequent token proposes ids the model lacks, which end its
/// drafts (verified, they would fail the model's embedding).
#[test]
fn draft_model_with_padded_vocabulary_changes_no_token() {
    let dir = tempfile::tempdir().unwrap();
    let isa = Isa::detect().unwrap();
    let tiny = fixtures().join("tiny/qwen2/model.gguf");
    let model = |path: &std::path::Path, s: &Session<CpuBackend>| {
        let src = suanli_formats::open_model(path).unwrap();
        suanli_models::Model::load(&src, &s.backend).unwrap()
    };
    let spec = Some(SpecConfig {
        max_draft: 6,
        adaptive: false,
        ..SpecConfig::new(SpecMode::Draft)
    });
    let mut sampled = SamplingParams::greedy();
    sampled.temperature = 0.9;
    sampled.seed = Some(3);
    let (mut plain, tok) = load(&tiny, isa, 256, 64, KvDType::F16);
    let p = tok.encode("the cat sat on the mat", false).unwrap();
    let same = |s: &mut Session<CpuBackend>, p: &[u32]| {
        [SamplingParams::greedy(), sampled.clone()].map(|params| {
            let (want, _, _) = generate(s, None, p, &params, 40, None, None);
            let (got, _, st) = generate(s, spec.clone(), p, &params, 40, None, None);
            assert_eq!(got, want, "{params:?}");
            st
        })
    };

    // The model padded, the draft not.
    let padded = padded_gguf(dir.path(), "qwen2", 64, None);
    let (mut s, _) = load(&padded, isa, 256, 64, KvDType::F16);
    let draft = model(&tiny, &s);
    s.set_draft_model(draft, KvDType::F16).unwrap();
    let [greedy_st, _] = same(&mut s, &p);
    assert!(greedy_st.acceptance() > 0.9, "{greedy_st:?}");
    let mut with_pad = p.clone();
    with_pad.insert(2, 530);
    // Its only drafts are n-gram copies (proposed first in this mode too): as many as drafting
    // by lookup alone makes.
    let lookup = Some(SpecConfig {
        mode: SpecMode::Ngram,
        ..spec.clone().unwrap()
    });
    for (st, params) in same(&mut s, &with_pad)
        .iter()
        .zip([SamplingParams::greedy(), sampled.clone()])
    {
        let (_, _, alone) = generate(&mut s, lookup.clone(), &with_pad, &params, 40, None, None);
        assert_eq!(st.drafted, alone.drafted, "{st:?} {alone:?}");
    }

    // The draft padded, its padding louder than the model's most frequent token.
    let answer = greedy(&mut plain, &p, 40);
    let frequent = *answer
        .iter()
        .max_by_key(|&&t| answer.iter().filter(|&&u| u == t).count())
        .unwrap();
    let loud = padded_gguf(dir.path(), "qwen2", 64, Some(frequent));
    let (mut own, _) = load(&loud, isa, 256, 64, KvDType::F16);
    let proposes = greedy(&mut own, &p, 40);
    assert!(proposes.iter().any(|&t| t >= 500), "{proposes:?}");
    let draft = model(&loud, &plain);
    plain.set_draft_model(draft, KvDType::F16).unwrap();
    let [greedy_st, _] = same(&mut plain, &p);
    assert!(greedy_st.drafted > 0, "{greedy_st:?}");
}

/// A draft loaded with `fast_head` takes its logits straight from the head's product: on
/// Qwen2.5-Coder-0.5B (whose family recomputes each row's top candidates with f32 activations,
/// `ActPrecision::ExactTop`) its logits differ from the same model's only among each row's
/// largest (the recomputed candidates), and are the product's own everywhere else.
#[test]
fn fast_head_drafts_skip_only_the_top_candidates_recomputing() {
    let path = catalog::pull(catalog::find("qwen2.5-coder-0.5b").unwrap()).unwrap();
    let src = suanli_formats::open_model(&path).unwrap();
    let isa = Isa::detect().unwrap();
    let prompt = tokenizer(&src)
        .encode("def quicksort(items):\n", false)
        .unwrap();
    let rows = |fast_head: bool| {
        let backend = CpuBackend::with_isa(Some(2), isa).unwrap();
        let how = suanli_models::DraftLoad {
            fast_head,
            ..Default::default()
        };
        let model = suanli_models::Model::load_for_drafting(&src, &backend, how).unwrap();
        let mut s = Session::new(backend, model, 256, 64).unwrap();
        s.feed(&prompt, 0).unwrap().to_vec()
    };
    let (exact, fast) = (rows(false), rows(true));
    let vocab = exact.len() / prompt.len();
    let mut recomputed = 0;
    for (r, (e, f)) in exact.chunks(vocab).zip(fast.chunks(vocab)).enumerate() {
        // The 300th largest of the fast row: every logit the exact head recomputed is among
        // its 256 largest, within rounding of the fast value.
        let mut sorted = f.to_vec();
        sorted.sort_by(|a, b| b.total_cmp(a));
        let floor = sorted[300];
        for (i, (a, b)) in e.iter().zip(f).enumerate() {
            if a != b {
                assert!(
                    *b >= floor,
                    "row {r}: logit {i} changed outside the top ({b} < {floor})"
                );
                assert!((a - b).abs() < 0.5, "row {r}: logit {i} {a} vs {b}");
                recomputed += 1;
            }
        }
    }
    assert!(
        recomputed > prompt.len(),
        "only {recomputed} logits recomputed"
    );
}
