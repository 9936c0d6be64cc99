//! Speculative decoding: tokens proposed cheaply (an n-gram lookup over the sequence, or a small
//! draft model), then verified by one forward pass of the model over all of them, which costs
//! about as much memory traffic as one token.
//!
//! Verification samples each row exactly as decoding without speculation would — the same
//! sampler, penalties, bias, constraint and random draws, on logits that are bit for bit the
//! same (a row's kernels never depend on the step's shape) — and keeps drafted tokens while
//! they equal what was sampled. Drafts are point proposals, for which "sample, accept if equal"
//! is the standard rejection rule (accepted with probability p(draft), otherwise a draw from p
//! without the draft); and since every emitted token is exactly one draw, the output is the
//! same token for token as without speculation, seeded sampling included.

mod controller;

pub use controller::{Controller, StepCost};
use std::time::Duration;

/// Where drafts come from. Under a constraint, every mode drafts the text its grammar forces
/// first (`SeqSpec::forced_first`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpecMode {
    /// N-gram drafts (a constraint's forced text first) where rows are cheap: for a sequence
    /// decoding alone (a session; a server's only stream) and in a small batch, whose steps
    /// are bound by reading the weights (`SpecConfig::auto_row_cost`); each sequence's
    /// controller turns drafting off where it does not pay. A busy batch drafts nothing.
    Auto,
    /// The continuation of the sequence's last few tokens where they occurred before (prompt
    /// lookup): pays where the answer repeats its input (code edits, quoting, forms).
    Ngram,
    /// A small model with the same vocabulary, decoding greedily ahead.
    Draft,
}

impl SpecMode {
    pub fn parse(s: &str) -> Result<Option<SpecMode>, String> {
        match s {
            "off" | "none" => Ok(None),
            "auto" => Ok(Some(SpecMode::Auto)),
            "ngram" => Ok(Some(SpecMode::Ngram)),
            "draft" => Ok(Some(SpecMode::Draft)),
            _ => Err(format!(
                "unknown speculation mode {s:?}: off, auto, ngram or draft"
            )),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct SpecConfig {
    pub mode: SpecMode,
    /// Most tokens drafted per step.
    pub max_draft: usize,
    /// Lookup: the longest suffix tried first, down to the shortest.
    pub ngram_max: usize,
    pub ngram_min: usize,
    /// Draft length from the recent acceptance rate and the measured cost of verifying; off,
    /// always `max_draft` (what a proposal holds).
    pub adaptive: bool,
    /// `Auto` in a batch: the most a drafted row may cost, in tokens' worth of the step
    /// (`StepCost::row_cost`), for its sequences to draft. Small batches' steps are bound by
    /// reading the weights; in a busy one a row costs nearly a token, and an estimate a little
    /// low turns drafts into a loss (16 streams under a JSON schema drafting their forced text,
    /// 99 % of it taken: 385–451 tok/s against 453–454 without). Qwen2.5-Coder-0.5B on 2 cores,
    /// measured means: 0.10 at 1 sequence, 0.17 at 2, 0.24 at 3, 0.47 at 4, 0.99 at 16.
    pub auto_row_cost: f64,
}

impl SpecConfig {
    pub fn new(mode: SpecMode) -> SpecConfig {
        SpecConfig {
            mode,
            max_draft: 10,
            ngram_max: 4,
            ngram_min: 2,
            adaptive: true,
            auto_row_cost: 0.5,
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.max_draft == 0 || self.max_draft > MAX_DRAFT {
            return Err(format!(
                "the draft length must be 1 to {MAX_DRAFT}, not {}",
                self.max_draft
            ));
        }
        if self.ngram_min == 0 || self.ngram_min > self.ngram_max || self.ngram_max > 16 {
            return Err(format!(
                "the n-gram sizes must satisfy 1 ≤ min ≤ max ≤ 16, not {}..{}",
                self.ngram_min, self.ngram_max
            ));
        }
        if self.auto_row_cost.is_nan() || self.auto_row_cost < 0.0 {
            return Err(format!(
                "the automatic drafts' row cost must be at least 0, not {}",
                self.auto_row_cost
            ));
        }
        Ok(())
    }
}

/// Upper bound of `max_draft` (a verification's rows stay one step's worth).
pub const MAX_DRAFT: usize = 32;

/// What speculation did over a generation.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SpecStats {
    /// Forward passes that verified at least one drafted token.
    pub verify_steps: u64,
    pub drafted: u64,
    pub accepted: u64,
}

impl SpecStats {
    pub fn acceptance(&self) -> f64 {
        if self.drafted == 0 {
            0.0
        } else {
            self.accepted as f64 / self.drafted as f64
        }
    }

    /// Tokens per verifying pass (the accepted drafts and the one sampled after them).
    pub fn mean_accepted_length(&self) -> f64 {
        if self.verify_steps == 0 {
            0.0
        } else {
            (self.accepted + self.verify_steps) as f64 / self.verify_steps as f64
        }
    }

    pub fn add(&mut self, o: &SpecStats) {
        self.verify_steps += o.verify_steps;
        self.drafted += o.drafted;
        self.accepted += o.accepted;
    }
}

/// N-gram drafts that stay with the passage they copy: once a lookup has found where the text
/// is being copied from, the next draft continues from there as long as the copy holds (the
/// last token equals the source's), instead of searching again — in code, short suffixes such
/// as `)` + newline + indentation recur everywhere, and the most recent one is often not the
/// passage being copied.
#[derive(Clone, Debug, Default)]
pub struct Lookup {
    /// Where in the history the token after the last one is expected to come from.
    source: Option<usize>,
}

impl Lookup {
    /// At most `limit` tokens to follow `history` (see `ngram_source` for the search).
    pub fn draft<'h>(&mut self, history: &'h [u32], cfg: &SpecConfig, limit: usize) -> &'h [u32] {
        let len = history.len();
        if let Some(p) = self.source {
            // Still copying when the source's token before `p` is the last one emitted.
            if p < len && p >= 1 && history[p - 1] == history[len - 1] {
                let d = &history[p..(p + limit).min(len)];
                if !d.is_empty() {
                    return d;
                }
            }
        }
        let (from, d) = ngram_source(history, cfg.ngram_min, cfg.ngram_max, limit);
        self.source = from;
        d
    }

    /// `emitted` tokens followed the last one (accepted drafts and the token after them): the
    /// copy goes on from there.
    pub fn advance(&mut self, emitted: usize) {
        if let Some(p) = &mut self.source {
            *p += emitted;
        }
    }
}

/// The tokens that followed the most recent earlier occurrence of `history`'s longest suffix
/// of `min..=max_n` tokens (longer suffixes first), at most `limit` of them, and where they
/// start in `history`; empty when no suffix recurs.
fn ngram_source(
    history: &[u32],
    min: usize,
    max_n: usize,
    limit: usize,
) -> (Option<usize>, &[u32]) {
    let len = history.len();
    if limit == 0 {
        return (None, &[]);
    }
    for n in (min.max(1)..=max_n).rev() {
        if n >= len {
            continue;
        }
        let suffix = &history[len - n..];
        // An occurrence at j is followed by history[j + n], which must exist before the suffix.
        for j in (0..len - n).rev() {
            if history[j..j + n] == *suffix {
                let from = j + n;
                return (Some(from), &history[from..(from + limit).min(len)]);
            }
        }
    }
    (None, &[])
}

/// A draft model's draft goes on while its model gives the whole run drafted so far at least
/// this probability (the product of its tokens' probabilities; the token that takes the run
/// below it is the draft's last). Each further draft costs a drafting step and a verified row
/// (Qwen2.5-Coder-0.5B drafting for the 1.5B on a 2-core Zen 4: ~0.27 and ~0.13 of one of the
/// 1.5B's decode steps) and yields a token only if the whole run before it is taken; the
/// draft's probabilities are about calibrated (on the 1.5B's English answers, tokens drafted
/// at 0.4–0.5 were taken 57 % of the time, at 0.6–0.7 70 %, at 0.8–0.9 94 %). Replayed on
/// the 0.5B's teacher-forced drafts of the 1.5B's answers to `bench/spec-chat.jsonl`, with
/// those costs: English 1.25× when each token alone had to reach 0.5 and the controller's
/// expected length capped the draft (before), 1.28× with the run at 0.5, 1.30× at 0.6 and
/// 0.7; Chinese 1.38×, 1.44×, 1.45×, 1.45× (`bench/spec_draft_replay.py`; verified rows at
/// 0.08 of a step instead: English 1.34× before, 1.39× at 0.5–0.7).
const DRAFT_MIN_RUN_PROBABILITY: f32 = 0.6;

/// The probability of a draft model's run of proposals (`DRAFT_MIN_RUN_PROBABILITY`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct DraftRun(f32);

impl DraftRun {
    pub(crate) fn new() -> DraftRun {
        DraftRun(1.0)
    }

    /// The run takes `top` of `row` (its largest logit): whether drafting goes on after it.
    pub(crate) fn goes_on(&mut self, row: &[f32], top: u32) -> bool {
        match top_probability(row, top, DRAFT_MIN_RUN_PROBABILITY / self.0) {
            Some(p) => {
                self.0 *= p;
                true
            }
            None => false,
        }
    }
}

/// The probability of `top` (the row's largest logit) under the softmax, 1 / Σ exp(l − l_top),
/// when it is at least `at_least`; `None` below. Logits more than 20 below the top add under
/// 2e-9 each (under 4e-4 over a 152k vocabulary), so only the others count, and the sum stops
/// once it is past 1 / `at_least` (checked after each block of `TOP_P_BLOCK` logits).
pub(crate) fn top_probability(row: &[f32], top: u32, at_least: f32) -> Option<f32> {
    let &t = row.get(top as usize)?;
    let bound = 1.0 / at_least;
    let mut sum = 0f32;
    for block in row.chunks(TOP_P_BLOCK) {
        // libm's `expf` one logit at a time and one running f32 sum took 90–107 µs per row of
        // a draft model's 65,556-logit short head (~1.3 % of each drafted token of
        // Qwen2.5-Coder-0.5B) and erred by 3e-4; the sampler's lanes: 101 µs on 4-float
        // vectors (this crate, free of `unsafe`, dispatches to no wider ones), 1e-7.
        sum += crate::sampler::sum_exp_above(block, t, t - 20.0);
        if sum > bound {
            return None;
        }
    }
    Some(1.0 / sum)
}

/// Logits summed between `top_probability`'s checks of its bound.
const TOP_P_BLOCK: usize = 2048;

/// One sequence's speculation state, the same for a session and for each sequence of a batch:
/// its acceptance rate and pass costs (`Controller`), its n-gram `Lookup`, and the first token
/// of a proposal left unverified, compared with the token sampled instead.
#[derive(Clone, Debug)]
pub struct SeqSpec {
    pub ctl: Controller,
    shadow: Option<u32>,
    lookup: Lookup,
    /// With a draft model: the n-gram lookup's proposals come first while they pay (they cost
    /// no drafting, and where the answer repeats text — code edits, a chat's repeated phrases —
    /// they are taken more often than the model's), with their own acceptance rate.
    copy: Option<CopyDrafts>,
    /// Under a constraint, the tokens its grammar forces (`TokenConstraint::forced`) come
    /// before any other drafts, with their own acceptance rate: the model nearly always writes
    /// forced text as its usual tokens, which no other source may propose (a JSON schema's
    /// keys the first time they appear).
    forced: CopyDrafts,
}

/// A source of drafts beside the sequence's main one (the n-gram side of draft-model
/// speculation, a constraint's forced tokens): its controller, its unverified proposal, and
/// whether the pass being verified holds its drafts.
#[derive(Clone, Debug)]
struct CopyDrafts {
    ctl: Controller,
    shadow: Option<u32>,
    used: bool,
}

impl CopyDrafts {
    fn new(ctl: Controller) -> CopyDrafts {
        CopyDrafts {
            ctl,
            shadow: None,
            used: false,
        }
    }
}

impl SeqSpec {
    pub fn new(cfg: &SpecConfig) -> SeqSpec {
        let ctl = || Controller::new(cfg.max_draft, cfg.adaptive);
        let mut model = ctl();
        // A draft model always proposes: its controller takes plain steps to price them.
        if cfg.mode == SpecMode::Draft {
            model.measure_plain_steps();
        }
        SeqSpec {
            ctl: model,
            shadow: None,
            lookup: Lookup::default(),
            copy: (cfg.mode == SpecMode::Draft).then(|| CopyDrafts::new(ctl())),
            forced: CopyDrafts::new(ctl()),
        }
    }

    /// Under a constraint, each step first: of the tokens its grammar forces next (`forced`,
    /// cut to `room`), as many as `choose` says at their own acceptance rate. Empty when there
    /// are none or they do not pay; then the other sources draft as usual.
    pub fn forced_first(
        &mut self,
        forced: &[u32],
        room: usize,
        choose: impl FnOnce(&Controller, usize) -> usize,
    ) -> Vec<u32> {
        let f = &mut self.forced;
        f.used = false;
        let proposal = &forced[..forced.len().min(room)];
        if proposal.is_empty() {
            return Vec::new();
        }
        let k = choose(&f.ctl, proposal.len());
        let chosen = chosen_part(proposal, k, &mut f.shadow).to_vec();
        if k > 0 {
            // The other sources propose nothing this step.
            f.used = true;
            self.shadow = None;
            if let Some(c) = &mut self.copy {
                c.shadow = None;
                c.used = false;
            }
        }
        chosen
    }

    /// N-gram drafts to verify after `history`: of a proposal of at most `room` tokens, as many
    /// as `choose` says (given the controller and the proposal's length); a proposal left
    /// unverified is kept to learn from.
    pub fn ngram<'h>(
        &mut self,
        history: &'h [u32],
        cfg: &SpecConfig,
        room: usize,
        choose: impl FnOnce(&Controller, usize) -> usize,
    ) -> &'h [u32] {
        let proposal = self.lookup.draft(history, cfg, room);
        let k = choose(&self.ctl, proposal.len());
        chosen_part(proposal, k, &mut self.shadow)
    }

    /// With a draft model, each step first: the n-gram drafts worth verifying instead of asking
    /// the model (empty when there are none, or they do not pay at their own acceptance rate;
    /// then the model drafts, and the unverified proposal is compared with what is sampled).
    pub fn copy_first<'h>(
        &mut self,
        history: &'h [u32],
        cfg: &SpecConfig,
        room: usize,
        choose: impl FnOnce(&Controller, usize) -> usize,
    ) -> &'h [u32] {
        // The model's unverified proposal, if any, is made after this.
        self.shadow = None;
        let Some(c) = &mut self.copy else {
            return &[];
        };
        let proposal = self.lookup.draft(history, cfg, room);
        let k = choose(&c.ctl, proposal.len());
        c.used = k > 0;
        chosen_part(proposal, k, &mut c.shadow)
    }

    /// A proposal not verified (drafted anyway, to keep the rate measured), or none.
    pub fn set_shadow(&mut self, first: Option<u32>) {
        self.shadow = first;
    }

    /// A forward pass of `rows` rows took `took` (every controller prices rows alike).
    pub fn observe_time(&mut self, rows: usize, took: Duration) {
        self.ctl.observe_time(rows, took);
        self.forced.ctl.observe_time(rows, took);
        if let Some(c) = &mut self.copy {
            c.ctl.observe_time(rows, took);
        }
    }

    /// A pass verified `drafted` tokens and took `accepted`; `first` is the first token it
    /// sampled (compared with an unverified proposal's).
    pub fn account(
        &mut self,
        drafted: usize,
        accepted: usize,
        first: Option<u32>,
        stats: &mut SpecStats,
    ) {
        self.lookup.advance(accepted + 1);
        let f = &mut self.forced;
        learn_from_shadow(&mut f.ctl, &mut f.shadow, first);
        let forced = std::mem::take(&mut f.used);
        if forced {
            f.ctl.observe_draft(drafted, accepted);
        }
        let mut copied = false;
        if let Some(c) = &mut self.copy {
            learn_from_shadow(&mut c.ctl, &mut c.shadow, first);
            copied = std::mem::take(&mut c.used);
            if copied {
                c.ctl.observe_draft(drafted, accepted);
            }
        }
        learn_from_shadow(&mut self.ctl, &mut self.shadow, first);
        if drafted > 0 {
            if !copied && !forced {
                self.ctl.observe_draft(drafted, accepted);
            }
            stats.verify_steps += 1;
            stats.drafted += drafted as u64;
            stats.accepted += accepted as u64;
        }
    }
}

/// The first `k` tokens of `proposal` to verify; with none chosen, its first token is kept in
/// `shadow` to be compared with the token sampled instead.
fn chosen_part<'h>(proposal: &'h [u32], k: usize, shadow: &mut Option<u32>) -> &'h [u32] {
    *shadow = match k {
        0 => proposal.first().copied(),
        _ => None,
    };
    &proposal[..k]
}

/// An unverified proposal's first token against the one sampled (`first`): one trial for `ctl`.
fn learn_from_shadow(ctl: &mut Controller, shadow: &mut Option<u32>, first: Option<u32>) {
    if let (Some(d), Some(t)) = (shadow.take(), first) {
        ctl.observe_draft(1, usize::from(d == t));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_out_of_range_are_refused() {
        let ok = SpecConfig::new(SpecMode::Auto);
        assert!(ok.validate().is_ok());
        for bad in [
            SpecConfig {
                max_draft: 0,
                ..ok.clone()
            },
            SpecConfig {
                ngram_min: 5,
                ..ok.clone()
            },
            SpecConfig {
                auto_row_cost: -0.1,
                ..ok.clone()
            },
            SpecConfig {
                auto_row_cost: f64::NAN,
                ..ok.clone()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        assert_eq!(SpecMode::parse("auto"), Ok(Some(SpecMode::Auto)));
        assert_eq!(SpecMode::parse("off"), Ok(None));
        assert!(SpecMode::parse("forced").is_err());
    }

    #[test]
    fn lookup_takes_the_longest_most_recent_suffix() {
        // "1 2 3 9 | 1 2 3 7 8 | 5 2 3": the suffix [2, 3] last occurred before 7 8.
        let h = [1, 2, 3, 9, 1, 2, 3, 7, 8, 5, 2, 3];
        assert_eq!(ngram_source(&h, 1, 4, 5).1, &[7, 8, 5, 2, 3]);
        assert_eq!(ngram_source(&h, 1, 4, 2).1, &[7, 8]);
        // A longer suffix wins over a more recent shorter one: [9, 1, 2] … only once; [1, 2]
        // twice.
        let h = [4, 1, 2, 6, 0, 1, 2, 5, 4, 1, 2];
        assert_eq!(ngram_source(&h, 1, 3, 3).1, &[6, 0, 1]);
        assert_eq!(ngram_source(&h, 1, 2, 3).1, &[5, 4, 1]);
        // Nothing recurs; too short; a zero limit.
        assert!(ngram_source(&[1, 2, 3, 4], 1, 3, 4).1.is_empty());
        assert!(ngram_source(&[1], 1, 3, 4).1.is_empty());
        assert!(ngram_source(&h, 1, 3, 0).1.is_empty());
        // The match may overlap the suffix (a repeated token): 7 7 7 → 7.
        assert_eq!(ngram_source(&[7, 7, 7], 2, 2, 4).1, &[7]);
    }

    /// With a draft model, n-gram copies are proposed first; refused, they stop (the model's
    /// own rate untouched) and come back once their unverified proposals match the samples.
    #[test]
    fn draft_mode_takes_copies_first_while_they_pay() {
        let cfg = SpecConfig {
            ngram_min: 1,
            ngram_max: 2,
            ..SpecConfig::new(SpecMode::Draft)
        };
        let mut s = SeqSpec::new(&cfg);
        let mut stats = SpecStats::default();
        s.observe_time(1, Duration::from_millis(20));
        // "1 2 3 4 5 9 | 1 2": the passage after "1 2" is proposed.
        let h = [1, 2, 3, 4, 5, 9, 1, 2];
        let first = s.copy_first(&h, &cfg, 4, |c, n| c.draft_len(n)).to_vec();
        assert!(
            !first.is_empty() && [3, 4, 5, 9].starts_with(&first),
            "{first:?}"
        );
        s.account(first.len(), 0, Some(7), &mut stats);
        for _ in 0..30 {
            let k = s.copy_first(&h, &cfg, 4, |c, n| c.draft_len(n)).len();
            s.account(k, 0, Some(7), &mut stats);
        }
        assert!(s.copy_first(&h, &cfg, 4, |c, n| c.draft_len(n)).is_empty());
        assert_eq!(
            s.ctl.acceptance(),
            0.5,
            "copies do not teach the model's rate"
        );
        // Unverified, the proposal (3 …) now matches what is sampled: copies resume.
        s.account(0, 0, Some(3), &mut stats);
        let mut resumed = false;
        for _ in 0..60 {
            if !s.copy_first(&h, &cfg, 4, |c, n| c.draft_len(n)).is_empty() {
                resumed = true;
                break;
            }
            s.account(0, 0, Some(3), &mut stats);
        }
        assert!(resumed);
        // Plain n-gram speculation has no separate copy side.
        let ng = SpecConfig::new(SpecMode::Ngram);
        assert!(SeqSpec::new(&ng)
            .copy_first(&h, &ng, 4, |c, n| c.draft_len(n))
            .is_empty());
    }

    /// Once copying, drafts continue from the source even where a more recent occurrence of
    /// the suffix would point elsewhere; a token that breaks the copy sends it searching.
    #[test]
    fn lookup_stays_with_the_copied_passage() {
        let cfg = SpecConfig {
            ngram_min: 1,
            ngram_max: 2,
            ..SpecConfig::new(SpecMode::Ngram)
        };
        let mut l = Lookup::default();
        // Source "5 6 | 1 2 3 4", then "9 6 | 7 7", then the copy begins: "5 6".
        let mut h = vec![5, 6, 1, 2, 3, 4, 9, 6, 7, 7, 5, 6];
        assert_eq!(l.draft(&h, &cfg, 2), &[1, 2]);
        // Both taken and then 3 sampled: "… 5 6 1 2 3".
        h.extend([1, 2, 3]);
        l.advance(3);
        assert_eq!(l.draft(&h, &cfg, 3), &[4, 9, 6]);
        // Then 4 taken and 8 sampled instead of 9: the copy is broken, search again.
        h.extend([4, 8]);
        l.advance(2);
        assert!(l.draft(&h, &cfg, 3).is_empty());
        // A suffix "6" alone would point at "7 7" (most recent), but the copy of "5 6" wants
        // "1 2": continuing from the source after "… 5 6" again.
        let mut l = Lookup::default();
        let h = vec![5, 6, 1, 2, 3, 9, 6, 7, 7, 5, 6];
        assert_eq!(l.draft(&h, &cfg, 2), &[1, 2]);
        let h1 = [h.clone(), vec![1, 2, 3, 9, 6]].concat();
        l.advance(5);
        assert_eq!(l.draft(&h1, &cfg, 2), &[7, 7]);
    }

    /// The top's probability comes back when it reaches the bound, not below it; logits far
    /// below the top do not count, and a top outside the row has none.
    #[test]
    fn top_probability_reaches_the_bound_or_is_none() {
        assert!((top_probability(&[-0.5, 0.0], 1, 0.5).unwrap() - 0.6225).abs() < 1e-4);
        assert_eq!(top_probability(&[0.0, 0.0, -30.0], 1, 0.5), Some(0.5));
        assert_eq!(
            top_probability(&[0.0, -0.1, -0.1], 0, 0.5),
            None,
            "p = 0.36"
        );
        assert!(top_probability(&[0.0, -0.1, -0.1], 0, 0.3).is_some());
        assert_eq!(top_probability(&[1.0; 8], 3, 0.5), None);
        let mut wide = vec![-25.0f32; 150_000];
        wide[7] = 0.0;
        assert!(
            top_probability(&wide, 7, 0.99).unwrap() > 0.999,
            "150k logits 25 below"
        );
        assert_eq!(top_probability(&[0.0, 1.0], 5, 0.1), None);
        // Past the first block's bound check, and a NaN ignored as a logit far below.
        let mut long = vec![-3.0f32; 5000];
        long[4321] = 2.0;
        long[17] = f32::NAN;
        let want = 1.0 / (1.0 + 4998.0 * (-5.0f64).exp());
        let got = top_probability(&long, 4321, 0.01).unwrap() as f64;
        assert!((got / want - 1.0).abs() < 1e-5, "{got} vs {want}");
        assert_eq!(top_probability(&long, 4321, 0.5), None);
    }

    /// A draft goes on while its run's probability stays at least 0.6: after tokens of 0.9
    /// and 0.8 (0.72), not after a third of 0.8 (0.58); a first token under 0.6 ends it.
    #[test]
    fn drafts_go_on_while_the_run_is_likely() {
        // Two logits: p(top) = 1 / (1 + e^−d).
        let row = |p: f32| [0.0, (p / (1.0 - p)).ln()];
        let mut run = DraftRun::new();
        assert!(run.goes_on(&row(0.9), 1));
        assert!(run.goes_on(&row(0.8), 1));
        assert!(!run.goes_on(&row(0.8), 1));
        assert!(!DraftRun::new().goes_on(&row(0.55), 1));
        assert!(DraftRun::new().goes_on(&row(0.65), 1));
    }

    #[test]
    fn stats_report_rates() {
        let s = SpecStats {
            verify_steps: 4,
            drafted: 20,
            accepted: 12,
        };
        assert_eq!(s.acceptance(), 0.6);
        assert_eq!(s.mean_accepted_length(), 4.0);
        assert_eq!(SpecStats::default().mean_accepted_length(), 0.0);
    }
}
