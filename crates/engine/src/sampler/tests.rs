//! The sampler against whole-vocabulary references: candidates from a backend, top-p cuts,
//! draws, penalties, validation.

use super::*;

/// Every token with its logit, ranked as `Backend::top_logits` ranks them (largest first, the
/// lower id first on ties).
fn ranked(logits: &[f32]) -> Vec<(u32, f32)> {
    let mut all: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u32, l))
        .collect();
    all.sort_by(by_logit);
    all
}

#[test]
fn greedy_picks_argmax_and_seeded_draws_repeat() {
    let logits = vec![0.1, 2.0, 1.9, -1.0];
    let mut s = Sampler::new(SamplingParams::greedy());
    assert_eq!(s.sample(&mut logits.clone(), &[]), 1);
    let params = SamplingParams {
        temperature: 1.5,
        top_k: 0,
        top_p: 1.0,
        min_p: 0.0,
        seed: Some(7),
        ..Default::default()
    };
    let draw = |p: SamplingParams| {
        let mut s = Sampler::new(p);
        (0..50)
            .map(|_| s.sample(&mut logits.clone(), &[]))
            .collect::<Vec<_>>()
    };
    assert_eq!(draw(params.clone()), draw(params.clone()));
    let d = draw(params);
    assert!(
        d.iter().any(|&t| t != 1),
        "temperature 1.5 should sometimes leave the argmax"
    );
}

#[test]
fn top_k_one_is_greedy_and_penalty_changes_choice() {
    let logits = vec![0.1, 2.0, 1.9, -1.0];
    let mut s = Sampler::new(SamplingParams {
        top_k: 1,
        seed: Some(1),
        ..Default::default()
    });
    for _ in 0..20 {
        assert_eq!(s.sample(&mut logits.clone(), &[]), 1);
    }
    let mut s = Sampler::new(SamplingParams {
        temperature: 0.0,
        repeat_penalty: 2.0,
        ..Default::default()
    });
    assert_eq!(s.sample(&mut logits.clone(), &[1]), 2);
}

#[test]
fn logit_bias_bans_and_logprobs_normalise() {
    let logits = vec![0.1, 2.0, 1.9, -1.0];
    let mut s = Sampler::new(SamplingParams {
        logit_bias: vec![(1, -100.0)],
        ..SamplingParams::greedy()
    });
    let mut l = logits.clone();
    assert_eq!(s.sample(&mut l, &[]), 2);
    let (lp, top) = logprobs(&l, 2, 2);
    let total: f64 = l.iter().map(|&x| (x as f64).exp()).sum();
    assert!((lp as f64 - ((1.9f64).exp() / total).ln()).abs() < 1e-6);
    assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![2, 0]);
    assert_eq!(top[0].1, lp);
    assert!(SamplingParams {
        logit_bias: vec![(0, 101.0)],
        ..Default::default()
    }
    .validate()
    .unwrap_err()
    .contains("logit_bias"));
}

/// `logprobs` over a vocabulary-sized row (blocks of 64 and 1024 with tails, NaNs, a tie at
/// the top-k cut, a chosen token far down) against one plain pass in f64: the same top
/// tokens in the same order (ties by lower id) and log-probabilities within 1e-5.
#[test]
fn logprobs_equal_a_plain_f64_pass() {
    let mut rng = Rng(3);
    let mut l: Vec<f32> = (0..151_000)
        .map(|_| (rng.next_f64() * 24.0 - 12.0) as f32)
        .collect();
    l[70_001] = 14.0;
    l[9] = 13.5;
    l[150_999] = 13.5;
    l[64] = 13.5;
    l[5] = f32::NAN;
    l[100_000] = f32::NAN;
    let max = l
        .iter()
        .copied()
        .filter(|x| !x.is_nan())
        .fold(f32::MIN, f32::max) as f64;
    let lse = max
        + l.iter()
            .filter(|x| !x.is_nan())
            .map(|&x| (x as f64 - max).exp())
            .sum::<f64>()
            .ln();
    let (lp, top) = logprobs(&l, 123_456, 3);
    assert!((lp as f64 - (l[123_456] as f64 - lse)).abs() < 1e-5);
    assert_eq!(
        top.iter().map(|t| t.0).collect::<Vec<_>>(),
        vec![70_001, 9, 64]
    );
    for (id, p) in top {
        assert!(
            (p as f64 - (l[id as usize] as f64 - lse)).abs() < 1e-5,
            "{id}"
        );
    }
}

/// Drawing from the top `top_candidates(history)` logits (what a GPU sends back) gives the
/// token `sample` gives from the whole vocabulary, draw after draw, for greedy and top-k with
/// every other setting, without and with penalties and a bias that only lower logits (the
/// history and the bias hold some of the best tokens, so they reorder the top; the bias bans
/// some and lowers others a little); ties at the cut included. Settings that can raise a
/// logit, and lowering without top-k, need the vocabulary.
#[test]
fn drawing_from_the_top_candidates_equals_drawing_from_the_vocabulary() {
    let mut rng = Rng(7);
    let vocab = 5000;
    for case in 0..96 {
        let penalties = case % 48 >= 24;
        let biased = case >= 48;
        let params = SamplingParams {
            temperature: [0.0, 0.3, 0.8, 1.5][case % 4],
            top_k: [1, 5, 40, 100][case / 4 % 4],
            top_p: [1.0, 0.9][case / 16 % 2],
            min_p: [0.0, 0.05][case % 2],
            repeat_penalty: if penalties { 1.3 } else { 1.0 },
            presence_penalty: if penalties { 0.5 } else { 0.0 },
            frequency_penalty: if penalties { 0.2 } else { 0.0 },
            seed: Some(case as u64),
            // Bans and small cuts (one token twice, as a list allows), and a zero.
            logit_bias: if biased {
                let mut b: Vec<(u32, f32)> = (0..8)
                    .map(|i| {
                        let t = (rng.next_f64() * vocab as f64) as u32;
                        (t, [-100.0, -0.25, -1.5, 0.0][i % 4])
                    })
                    .collect();
                b.push(b[1]);
                b
            } else {
                Vec::new()
            },
            ..Default::default()
        };
        let (mut full, mut top) = (Sampler::new(params.clone()), Sampler::new(params.clone()));
        for _ in 0..50 {
            // Coarse values: many ties, some at the cut; negative ones too.
            let mut logits: Vec<f32> = (0..vocab)
                .map(|_| (rng.next_f64() * 40.0 - 8.0).floor() as f32 * 0.25)
                .collect();
            // Half the biased tokens among the best, so that the bias reorders the top.
            for &(t, _) in params.logit_bias.iter().step_by(2) {
                logits[t as usize] = 7.75 - (rng.next_f64() * 2.0).floor() as f32 * 0.25;
            }
            let mut cands = ranked(&logits);
            // 40 tokens, some twice: the 20 best and 20 anywhere.
            let history: Vec<u32> = (0..40)
                .map(|i| {
                    if i % 2 == 0 {
                        cands[(rng.next_f64() * 20.0) as usize].0
                    } else {
                        (rng.next_f64() * vocab as f64) as u32
                    }
                })
                .collect();
            let k = top.top_candidates(&history).unwrap().k;
            cands.truncate(k);
            let want = full.sample(&mut logits.clone(), &history);
            assert_eq!(top.sample_top(&cands, None, &history), want, "case {case}");
        }
    }
    let touched = [
        SamplingParams {
            top_k: 0,
            top_p: 1.0,
            ..Default::default()
        },
        SamplingParams {
            top_k: 0,
            repeat_penalty: 1.1,
            ..Default::default()
        },
        SamplingParams {
            repeat_penalty: 0.9,
            ..Default::default()
        },
        SamplingParams {
            presence_penalty: -0.5,
            ..SamplingParams::greedy()
        },
        SamplingParams {
            logit_bias: vec![(3, 1.0)],
            ..Default::default()
        },
        SamplingParams {
            logit_bias: vec![(3, 1.0)],
            ..SamplingParams::greedy()
        },
        SamplingParams {
            logit_bias: vec![(3, -1.0), (4, 0.5)],
            ..SamplingParams::greedy()
        },
        SamplingParams {
            logit_bias: vec![(3, -100.0)],
            top_k: 0,
            ..Default::default()
        },
    ];
    for p in touched {
        assert_eq!(Sampler::new(p).top_candidates(&[1, 2, 2]), None);
    }
}

/// Top-p without top-k from the largest logits and the row's mass (what a GPU sends back):
/// when `nucleus_fits` says the nucleus lies within the candidates, the token is the one
/// `sample` draws from the whole vocabulary, draw after draw; when it does not, the nucleus
/// really is wider. Rows of every sharpness, so that both happen many times.
#[test]
fn top_p_from_candidates_and_mass_equals_the_vocabulary() {
    let mut rng = Rng(5);
    let vocab = 5000;
    let (mut fitted, mut wider) = (0, 0);
    for case in 0..8 {
        let params = SamplingParams {
            temperature: [0.7, 1.2][case % 2],
            top_k: 0,
            top_p: [0.5, 0.9, 0.95, 0.99][case / 2],
            min_p: [0.0, 0.05][case / 4],
            seed: Some(case as u64),
            ..Default::default()
        };
        let need = Sampler::new(params.clone()).top_candidates(&[]).unwrap();
        assert_eq!(
            need,
            TopNeed {
                k: NUCLEUS_CANDIDATES,
                mass: true
            }
        );
        let (mut full, mut top) = (Sampler::new(params.clone()), Sampler::new(params));
        for draw in 0..60 {
            // Spread from sharp (a few tokens hold the mass) to flat (thousands do).
            let spread = [12.0, 6.0, 3.0, 1.0][draw % 4];
            let logits: Vec<f32> = (0..vocab)
                .map(|_| (rng.next_f64() * spread).powi(2) as f32)
                .collect();
            let mut cands = ranked(&logits);
            let max = cands[0].1;
            let mass: f32 = logits.iter().map(|&l| exp_neg(l - max)).sum();
            cands.truncate(need.k);
            let want = full.sample(&mut logits.clone(), &[]);
            if top.nucleus_fits(&cands, mass) {
                fitted += 1;
                assert_eq!(top.sample_top(&cands, Some(mass), &[]), want, "case {case}");
            } else {
                // The engine takes the whole row then; the nucleus is wider than k.
                wider += 1;
                let share: f32 = cands.iter().map(|c| exp_neg(c.1 - max)).sum::<f32>() / mass;
                assert!(share < top.params.top_p, "case {case}: {share}");
                top.sample(&mut logits.clone(), &[]);
            }
        }
    }
    assert!(fitted > 100 && wider > 50, "fitted {fitted}, wider {wider}");
}

/// Without top-k the vocabulary is sorted only as far as top-p needs: the token is the one a
/// full sort gives (the reference below: sort everything, cut, draw), over many draws with
/// coarse, tied logits.
#[test]
fn nucleus_without_top_k_equals_the_full_sort() {
    let mut rng = Rng(11);
    for (case, (top_p, min_p)) in [(0.5, 0.0), (0.9, 0.05), (0.99, 0.0), (0.999, 0.01)]
        .into_iter()
        .enumerate()
    {
        let params = SamplingParams {
            temperature: 0.7,
            top_k: 0,
            top_p,
            min_p,
            seed: Some(case as u64),
            ..Default::default()
        };
        let mut s = Sampler::new(params);
        let mut reference = Rng(case as u64);
        for _ in 0..40 {
            let logits: Vec<f32> = (0..20000)
                .map(|_| (rng.next_f64() * 60.0).floor() as f32 * 0.2)
                .collect();
            let max = logits.iter().fold(f32::NEG_INFINITY, |m, &l| m.max(l));
            let sum: f32 = logits.iter().map(|&l| exp_neg(l - max)).sum();
            let mut all = ranked(&logits);
            let mut acc = 0.0;
            let cut = all
                .iter()
                .position(|c| {
                    acc += exp_neg(c.1 - max) / sum;
                    acc >= top_p
                })
                .map_or(all.len(), |i| i + 1);
            all.truncate(cut);
            let keep = all
                .iter()
                .take_while(|c| exp_neg(c.1 - max) >= min_p)
                .count();
            all.truncate(keep.max(1));
            let w: Vec<f64> = all
                .iter()
                .map(|c| exp_neg((c.1 - max) / 0.7) as f64)
                .collect();
            let mut r = reference.next_f64() * w.iter().sum::<f64>();
            let want = all
                .iter()
                .zip(&w)
                .find(|(_, &w)| {
                    let hit = r < w;
                    r -= w;
                    hit
                })
                .map_or(all.last().unwrap().0, |(c, _)| c.0);
            assert_eq!(s.sample(&mut logits.clone(), &[]), want, "case {case}");
        }
    }
}

/// The whole distribution (no top-k, top-p or min-p: OpenAI's defaults) is drawn in the
/// vocabulary's order without sorting; the frequencies are the softmax.
#[test]
fn full_distribution_draws_follow_the_softmax() {
    let logits = [2.0f32, 1.0, 0.5, 0.0, -1.0, 3.0];
    let mut s = Sampler::new(SamplingParams {
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
        min_p: 0.0,
        seed: Some(5),
        ..Default::default()
    });
    let n = 200_000;
    let mut counts = [0usize; 6];
    for _ in 0..n {
        counts[s.sample(&mut logits.to_vec(), &[]) as usize] += 1;
    }
    let z: f64 = logits.iter().map(|&l| (l as f64).exp()).sum();
    for (i, &c) in counts.iter().enumerate() {
        let want = (logits[i] as f64).exp() / z;
        assert!(
            (c as f64 / n as f64 - want).abs() < 0.005,
            "token {i}: {c} of {n}"
        );
    }
    // A NaN weighs nothing; a vocabulary past one chunk (256) is walked chunk by chunk.
    let mut big = vec![-30.0f32; 1000];
    big[3] = f32::NAN;
    big[700] = 0.0;
    big[999] = 0.0;
    let mut seen = [0usize; 3];
    for _ in 0..2000 {
        match s.sample(&mut big.clone(), &[]) {
            700 => seen[0] += 1,
            999 => seen[1] += 1,
            _ => seen[2] += 1,
        }
    }
    assert!(seen[0] > 900 && seen[1] > 900 && seen[2] < 5, "{seen:?}");
}

#[test]
fn exp_neg_is_within_two_ulp_of_exp() {
    let mut worst = 0f64;
    for i in 0..=870_000 {
        let x = -(i as f32) * 1e-4;
        let (got, want) = (exp_neg(x) as f64, (x as f64).exp());
        worst = worst.max((got - want).abs() / want);
    }
    assert!(worst < 2.5e-7, "relative error {worst}");
    assert_eq!(exp_neg(0.0), 1.0);
    assert!(exp_neg(-1000.0) > 0.0 && exp_neg(-1000.0) < 1e-37);
}

#[test]
fn invalid_params_are_named() {
    let p = SamplingParams {
        top_p: 0.0,
        ..Default::default()
    };
    assert!(p.validate().unwrap_err().contains("top_p"));
    let p = SamplingParams {
        temperature: f32::NAN,
        ..Default::default()
    };
    assert!(p.validate().unwrap_err().contains("temperature"));
}

/// The blocked argmax finds what one scalar pass finds: the first index of the largest value,
/// NaN ignored, with ties inside and across blocks, a partial last block, all -inf.
#[test]
fn argmax_is_the_first_index_of_the_largest() {
    let scalar = |v: &[f32]| {
        let (mut best, mut bv) = (0usize, f32::NEG_INFINITY);
        for (i, &x) in v.iter().enumerate() {
            if x > bv {
                (best, bv) = (i, x);
            }
        }
        best as u32
    };
    let mut s = 7u64;
    let mut next = || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (s >> 33) as u32
    };
    for n in [1usize, 15, 64, 65, 1000, 151_936] {
        for round in 0..4 {
            let mut v: Vec<f32> = (0..n)
                .map(|_| (next() % 200) as f32 / 10.0 - 10.0)
                .collect();
            if round == 1 {
                v.iter_mut().for_each(|x| *x = x.round());
            }
            if round == 2 {
                for i in (0..n).step_by(3) {
                    v[i] = f32::NAN;
                }
            }
            if round == 3 {
                v.iter_mut().for_each(|x| *x = f32::NEG_INFINITY);
            }
            assert_eq!(super::argmax(&v), scalar(&v), "{n} values, round {round}");
        }
    }
}
