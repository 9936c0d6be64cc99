//! How far to draft: the acceptance rate, the measured cost of a forward pass by its rows
//! (`StepCost`) and a draft model's time per token, weighed by `Controller` for one sequence
//! and by `StepCost::row_cost` inside a batch.

use std::time::Duration;

/// Chooses how many tokens to draft: the length that maximizes expected tokens per second,
/// from the recent per-token acceptance rate (decayed counts), the measured seconds of a
/// forward pass per number of rows, and a draft model's seconds per drafted token. A draft
/// that is not verified (length 0 chosen) is still compared with the token sampled instead, so
/// the rate stays current and speculation comes back on by itself when drafts match again.
/// (A rate per state — after a draft taken whole, after a refusal — drafted less and measured
/// slower on code edits: 1.52–1.68× against 1.85–2.07× in interleaved runs.)
#[derive(Clone, Debug)]
pub struct Controller {
    max: usize,
    adaptive: bool,
    succ: f64,
    trials: f64,
    /// Seconds of a forward pass by its rows.
    cost: StepCost,
    /// Passes since the last of one row (the plain decode step every choice is held against).
    since_one_row: usize,
    /// Whether plain steps are taken on purpose (first, then every `REMEASURE_EVERY` passes):
    /// for a draft model, which always has a proposal. N-gram lookups often find none, and
    /// those steps are plain anyway; a forced first one would cost a code edit's opening
    /// copy (~10 % of a short answer).
    measures_plain_step: bool,
    /// Seconds per drafted token (a draft model's decode; n-gram drafts cost nothing).
    draft_secs: (f64, f64),
}

/// Weight of the past in the acceptance counts and step times (per observation).
const DECAY: f64 = 0.9;
/// Expected speed-up below which a single sequence does not draft.
const MARGIN: f64 = 0.05;
/// Assumed extra cost of each further row before one is measured: decode reads every weight
/// once whatever the rows, so a few more rows cost little; measurements replace it.
const PRIOR_ROW_COST: f64 = 0.04;
/// Passes after which a draft model's controller takes a plain one-row step again to
/// re-measure it: otherwise measured once while the machine's speed drifts (a shared
/// machine's by ±30 % within a minute).
const REMEASURE_EVERY: usize = 64;

impl Controller {
    pub fn new(max: usize, adaptive: bool) -> Controller {
        // A prior of one half, worth two observations.
        Controller {
            max,
            adaptive,
            succ: 1.0,
            trials: 2.0,
            cost: StepCost::new(max + 1),
            since_one_row: 0,
            measures_plain_step: false,
            draft_secs: (0.0, 0.0),
        }
    }

    /// Per-token acceptance estimate.
    pub fn acceptance(&self) -> f64 {
        self.succ / self.trials
    }

    fn estimate(&self, rows: usize) -> f64 {
        self.cost.estimate(rows)
    }

    /// Tokens to draft given `available` proposed ones.
    pub fn draft_len(&self, available: usize) -> usize {
        let cap = available.min(self.max);
        if !self.adaptive {
            return cap;
        }
        // Every rate below is held against a plain step's: measure it first, and now and then.
        let stale = self.cost.seconds(1).is_none() || self.since_one_row >= REMEASURE_EVERY;
        if self.measures_plain_step && stale {
            return 0;
        }
        let a = self.acceptance();
        // Drafting must promise a clear gain: one within the noise of the measured pass times
        // only costs (a Chinese chat on the 1.5B verified 44 single drafts, 2 taken: 0.89×).
        let (mut best, mut best_rate) = (0, (1.0 + MARGIN) / self.estimate(1));
        // Expected tokens of a pass verifying k drafts: 1 + a + … + a^k.
        let (mut expected, mut ak) = (1.0, 1.0);
        for k in 1..=cap {
            ak *= a;
            expected += ak;
            let rate = expected / (self.estimate(k + 1) + k as f64 * self.draft_cost());
            if rate > best_rate {
                (best, best_rate) = (k, rate);
            }
        }
        best
    }

    /// The longest draft allowed out of `available` proposed tokens (`--draft-max`).
    pub fn most(&self, available: usize) -> usize {
        available.min(self.max)
    }

    /// `accepted` of `drafted` tokens were taken (a shorter run than drafted ends with one
    /// refusal).
    pub fn observe_draft(&mut self, drafted: usize, accepted: usize) {
        if drafted == 0 {
            return;
        }
        let trials = accepted + usize::from(accepted < drafted);
        for _ in 0..trials {
            self.succ *= DECAY;
            self.trials *= DECAY;
        }
        self.succ += accepted as f64;
        self.trials += trials as f64;
    }

    fn draft_cost(&self) -> f64 {
        match self.draft_secs.1 > 0.0 {
            true => self.draft_secs.0 / self.draft_secs.1,
            false => 0.0,
        }
    }

    /// Drafting `tokens` took `took`.
    pub fn observe_draft_time(&mut self, tokens: usize, took: Duration) {
        if tokens > 0 {
            let d = &mut self.draft_secs;
            *d = (
                d.0 * DECAY + took.as_secs_f64() / tokens as f64,
                d.1 * DECAY + 1.0,
            );
        }
    }

    /// Tokens to draft given `available` proposed ones when each drafted row costs `row_cost`
    /// tokens' worth of time (a batch: see `StepCost::row_cost`): the i-th draft is worth
    /// its chance of being reached and taken, a^i.
    pub fn draft_len_against(&self, available: usize, row_cost: f64) -> usize {
        let cap = available.min(self.max);
        if !self.adaptive {
            return cap;
        }
        let a = self.acceptance();
        let (mut k, mut ak) = (0, 1.0);
        while k < cap {
            ak *= a;
            if ak < row_cost {
                break;
            }
            k += 1;
        }
        k
    }

    /// Take plain steps on purpose (`measures_plain_step`): a draft model's controller.
    pub(super) fn measure_plain_steps(&mut self) {
        self.measures_plain_step = true;
    }

    pub fn observe_time(&mut self, rows: usize, took: Duration) {
        self.cost.observe(rows, took);
        self.since_one_row = match rows {
            1 => 0,
            _ => self.since_one_row + 1,
        };
    }
}

/// What a forward pass costs by its number of rows (decayed mean seconds per row count): for a
/// single sequence's drafts (`Controller`), and inside continuous batching, where one
/// sequence's extra rows slow everyone's step: cheap while a step is bound by reading the
/// weights, dear once it is bound by compute.
#[derive(Clone, Debug)]
pub struct StepCost {
    secs: Vec<(f64, f64)>,
    /// Per row count above one, whether its first pass went by unrecorded.
    first_seen: Vec<bool>,
}

impl StepCost {
    pub fn new(max_rows: usize) -> StepCost {
        StepCost {
            secs: vec![(0.0, 0.0); max_rows.max(1)],
            first_seen: vec![false; max_rows.max(1)],
        }
    }

    /// A pass of `rows` took `took`. The first pass of each count above one is not recorded:
    /// the first time a process verifies that many rows it grows the buffers of their logits
    /// and faults in fresh pages (Qwen2.5-Coder-0.5B: 4 rows 31 ms then ~13, 11 rows 58 ms
    /// then ~21), which priced drafting that far out of use for the rest of the answer.
    pub fn observe(&mut self, rows: usize, took: Duration) {
        let Some(i) = rows.checked_sub(1).filter(|&i| i < self.secs.len()) else {
            return;
        };
        if i > 0 && !std::mem::replace(&mut self.first_seen[i], true) {
            return;
        }
        let s = &mut self.secs[i];
        *s = (s.0 * DECAY + took.as_secs_f64(), s.1 * DECAY + 1.0);
    }

    fn seconds(&self, rows: usize) -> Option<f64> {
        let s = self.secs.get(rows.checked_sub(1)?)?;
        (s.1 > 0.0).then(|| s.0 / s.1)
    }

    /// Seconds of a step of `rows`: measured; between two measured counts, on the line through
    /// them; beyond the measured ones, scaled from the nearest by `PRIOR_ROW_COST` per row (an
    /// optimistic guess above, which drafting longer then measures); relative (1.0 for one
    /// row) before any. Always in one unit: a relative guess held against measured seconds
    /// would make whichever count was measured first look faster than any other.
    fn estimate(&self, rows: usize) -> f64 {
        self.estimate_above(rows, false)
    }

    /// `estimate`, or with `measured_slope`, beyond the measured counts on from the nearest at
    /// the slope of the two largest measured counts where that is steeper than the prior.
    ///
    /// A batch prices its rows so (`row_cost`): no step has more rows than its sequences unless
    /// they draft, so at a full batch the prior alone priced a row of 16 at 0.64 of a token
    /// while it cost about one on 2 cores (Qwen2.5-Coder-0.5B, 16 streams under a JSON schema,
    /// drafting tokens 99 % taken, took 1 % more step time than not drafting; with the slope,
    /// 0.99). A single sequence keeps the optimistic prior: it measures a longer draft by
    /// drafting it (the slope there gave code edits 1.86× and 1.80× against 2.04× and 1.85×,
    /// alternating).
    fn estimate_above(&self, rows: usize, measured_slope: bool) -> f64 {
        if let Some(s) = self.seconds(rows) {
            return s;
        }
        let below = (1..rows)
            .rev()
            .find_map(|r| self.seconds(r).map(|s| (r, s)));
        let above = (rows + 1..=self.secs.len()).find_map(|r| self.seconds(r).map(|s| (r, s)));
        let per_row = |r: usize| 1.0 + PRIOR_ROW_COST * r as f64;
        match (below, above) {
            (Some((r0, s0)), Some((r1, s1))) => {
                s0 + (s1 - s0) * (rows - r0) as f64 / (r1 - r0) as f64
            }
            (Some((r0, s0)), None) => {
                let prior = s0 * PRIOR_ROW_COST;
                let slope = measured_slope
                    .then(|| {
                        (1..r0)
                            .rev()
                            .find_map(|r| self.seconds(r).map(|s| (s0 - s) / (r0 - r) as f64))
                    })
                    .flatten();
                s0 + slope.unwrap_or(prior).max(prior) * (rows - r0) as f64
            }
            (None, Some((r1, s1))) => s1 / per_row(r1 - rows),
            (None, None) => per_row(rows - 1),
        }
    }

    /// With `batch` sequences decoding (a step of about `batch` rows yielding `batch` tokens),
    /// one more row's seconds in tokens' worth: the slope over the next few rows times the
    /// tokens per second of a plain step.
    pub fn row_cost(&self, batch: usize) -> f64 {
        let b = batch.max(1);
        let m = 4;
        let at = |rows| self.estimate_above(rows, true);
        let slope = (at(b + m) - at(b)).max(0.0) / m as f64;
        slope * b as f64 / at(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draft_length_follows_acceptance_and_cost() {
        let mut c = Controller::new(8, true);
        // Cheap extra rows and drafts always taken: the whole draft.
        for r in 1..=9 {
            c.observe_time(r, Duration::from_millis(20 + r as u64));
            c.observe_time(r, Duration::from_millis(20 + r as u64));
        }
        for _ in 0..20 {
            c.observe_draft(8, 8);
        }
        assert_eq!(c.draft_len(8), 8);
        assert_eq!(c.draft_len(3), 3);
        // Drafts refused at once: speculation switches itself off.
        for _ in 0..40 {
            c.observe_draft(1, 0);
        }
        assert!(c.acceptance() < 0.05);
        assert_eq!(c.draft_len(8), 0);
        // Unverified drafts that would have matched bring it back.
        for _ in 0..40 {
            c.observe_draft(1, 1);
        }
        assert!(c.draft_len(8) > 0);
        // Expensive rows make long drafts not worth it at a middling rate.
        let mut c = Controller::new(8, true);
        for r in 1..=9 {
            c.observe_time(r, Duration::from_millis(20 * r as u64));
            c.observe_time(r, Duration::from_millis(20 * r as u64));
        }
        for _ in 0..30 {
            c.observe_draft(4, 2);
        }
        assert_eq!(c.draft_len(8), 0);
        // Not adaptive: what the proposal holds, up to the maximum.
        let c = Controller::new(8, false);
        assert_eq!(c.draft_len(20), 8);
    }

    /// Choices are held against a measured plain step, taken first and again every
    /// `REMEASURE_EVERY` passes; counts never measured are estimated in the same unit. (A
    /// draft model always has a proposal: with only 4-row passes measured, the unmeasured
    /// plain step was once a relative 1.0 against seconds, and drafting never stopped — 3
    /// drafts per pass on a Chinese chat answer taking 43 % of them, 0.73–0.84×.)
    #[test]
    fn drafting_is_held_against_a_measured_plain_step() {
        let mut c = Controller::new(10, true);
        c.measures_plain_step = true;
        for _ in 0..20 {
            c.observe_draft(3, 3);
        }
        assert_eq!(c.draft_len(10), 0, "a plain step comes first");
        c.observe_time(1, Duration::from_millis(20));
        for _ in 0..5 {
            c.observe_time(4, Duration::from_millis(26));
        }
        assert!(
            (c.estimate(2) - 0.022).abs() < 1e-9,
            "on the line: {}",
            c.estimate(2)
        );
        assert!(c.draft_len(10) > 0);
        // Half the drafts taken, 8 ms a draft against a 20 ms step: not worth it.
        for _ in 0..30 {
            c.observe_draft(3, 1);
        }
        c.observe_draft_time(3, Duration::from_millis(24));
        assert_eq!(c.draft_len(10), 0);
        // Taken every time, drafting pays, until the plain step is due again.
        for _ in 0..40 {
            c.observe_draft(3, 3);
        }
        assert!(c.draft_len(10) > 0);
        for _ in 0..REMEASURE_EVERY {
            c.observe_time(4, Duration::from_millis(26));
        }
        assert_eq!(c.draft_len(10), 0);
        c.observe_time(1, Duration::from_millis(20));
        assert!(c.draft_len(10) > 0);
        // N-gram drafts need no plain step first (lookups that find nothing take them); with
        // only more rows measured, a fewer-row step is the nearest scaled down, not 1.0.
        let mut c = Controller::new(10, true);
        c.observe_time(5, Duration::from_millis(90));
        assert!(
            c.cost.seconds(5).is_none(),
            "a count's first pass is not recorded"
        );
        c.observe_time(5, Duration::from_millis(30));
        assert!((c.estimate(1) - 0.030 / (1.0 + 4.0 * PRIOR_ROW_COST)).abs() < 1e-9);
        assert!(c.draft_len(10) > 0);
    }

    /// A draft model's time per drafted token counts against long drafts.
    #[test]
    fn drafting_cost_shortens_drafts() {
        let mut c = Controller::new(8, true);
        for r in 1..=9 {
            c.observe_time(r, Duration::from_millis(20 + 2 * r as u64));
            c.observe_time(r, Duration::from_millis(20 + 2 * r as u64));
        }
        for _ in 0..30 {
            c.observe_draft(8, 6);
        }
        let free = c.draft_len(8);
        c.observe_draft_time(4, Duration::from_millis(4 * 15));
        let costly = c.draft_len(8);
        assert!(free == 8 && costly < free, "{free} {costly}");
    }

    /// In a batch, drafts go on while a draft's chance of being taken beats its row's cost:
    /// long when a step is bound by reading weights, none when rows cost as much as tokens.
    #[test]
    fn batched_drafts_follow_the_cost_of_rows() {
        let mut cost = StepCost::new(64);
        // Reading weights: 20 ms whatever the rows, up to 8; then 2.5 ms per row.
        for r in 1..=40 {
            let ms = 20.0 + 2.5 * (r as f64 - 8.0).max(0.0);
            cost.observe(r, Duration::from_secs_f64(ms / 1e3));
            cost.observe(r, Duration::from_secs_f64(ms / 1e3));
        }
        assert!(cost.row_cost(1) < 0.01);
        // At 16 rows, a row costs 2.5 ms against 40 ms / 16 tokens: a token's worth.
        assert!((cost.row_cost(16) - 1.0).abs() < 1e-9);
        let mut c = Controller::new(8, true);
        for _ in 0..30 {
            c.observe_draft(8, 7);
        }
        assert_eq!(c.draft_len_against(8, cost.row_cost(1)), 8);
        assert_eq!(c.draft_len_against(8, cost.row_cost(16)), 0);
        assert_eq!(c.draft_len_against(3, 0.0), 3);
        // A full batch of 16 has never run more rows: the slope of the largest measured counts
        // prices its next rows, not the prior's 4 % per row.
        let mut full = StepCost::new(64);
        for r in 1..=16 {
            let ms = 20.0 + 2.5 * (r as f64 - 8.0).max(0.0);
            full.observe(r, Duration::from_secs_f64(ms / 1e3));
            full.observe(r, Duration::from_secs_f64(ms / 1e3));
        }
        assert!(
            (full.row_cost(16) - 1.0).abs() < 1e-9,
            "{}",
            full.row_cost(16)
        );
        // Where the measured counts are flat, the prior still holds above them.
        let mut flat = StepCost::new(64);
        for r in 1..=4 {
            flat.observe(r, Duration::from_millis(20));
            flat.observe(r, Duration::from_millis(20));
        }
        assert!((flat.estimate_above(6, true) - 0.020 * (1.0 + 2.0 * PRIOR_ROW_COST)).abs() < 1e-9);
        // A single sequence keeps the prior above its measured counts.
        assert!((full.estimate(20) - 0.040 * (1.0 + 4.0 * PRIOR_ROW_COST)).abs() < 1e-9);
    }
}
