//! Token sampling in llama.cpp's order: penalties, top-k, top-p, min-p, temperature, draw.
//! Temperature 0 is greedy. A seed makes draws reproducible.

/// The candidates a top-p draw without top-k asks the backend for: enough for the nucleus of
/// a model that is fairly sure of the next token (the usual case); a wider nucleus takes the
/// whole vocabulary (`Sampler::nucleus_fits`).
pub const NUCLEUS_CANDIDATES: usize = 256;

/// What `Sampler::sample_top` needs from `Backend::top_logits`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TopNeed {
    /// The largest logits of each row.
    pub k: usize,
    /// The row's whole-vocabulary mass as well (top-p without top-k).
    pub mass: bool,
}

#[derive(Clone, Debug)]
pub struct SamplingParams {
    pub temperature: f32,
    /// 0 disables.
    pub top_k: usize,
    /// 1.0 disables.
    pub top_p: f32,
    /// 0.0 disables.
    pub min_p: f32,
    /// 1.0 disables; applied over the last `penalty_last_n` tokens.
    pub repeat_penalty: f32,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    pub penalty_last_n: usize,
    pub seed: Option<u64>,
    /// Added to a token's logit before anything else (OpenAI's `logit_bias`); -100 bans.
    pub logit_bias: Vec<(u32, f32)>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            penalty_last_n: 64,
            seed: None,
            logit_bias: Vec::new(),
        }
    }
}

impl SamplingParams {
    pub fn greedy() -> SamplingParams {
        SamplingParams {
            temperature: 0.0,
            ..Default::default()
        }
    }

    /// Greedy with nothing that changes the logits first (no bias, no penalties): the token is
    /// the argmax of the model's logits, which a backend may compute itself.
    pub fn plain_greedy(&self) -> bool {
        self.temperature <= 0.0 && self.logits_untouched()
    }

    /// Nothing changes the model's logits before the draw: no bias, no penalties.
    pub fn logits_untouched(&self) -> bool {
        self.logit_bias.is_empty() && !self.penalized()
    }

    /// Repetition, presence or frequency penalties are on.
    fn penalized(&self) -> bool {
        self.repeat_penalty != 1.0 || self.presence_penalty != 0.0 || self.frequency_penalty != 0.0
    }

    /// Check ranges; the message names the parameter.
    pub fn validate(&self) -> Result<(), String> {
        let finite = |name: &str, v: f32| {
            if v.is_finite() {
                Ok(())
            } else {
                Err(format!("{name} must be a finite number"))
            }
        };
        finite("temperature", self.temperature)?;
        finite("top_p", self.top_p)?;
        finite("min_p", self.min_p)?;
        finite("repeat_penalty", self.repeat_penalty)?;
        finite("presence_penalty", self.presence_penalty)?;
        finite("frequency_penalty", self.frequency_penalty)?;
        if self.temperature < 0.0 {
            return Err("temperature must be >= 0".into());
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err("top_p must be in (0, 1]".into());
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return Err("min_p must be in [0, 1]".into());
        }
        if self.repeat_penalty <= 0.0 {
            return Err("repeat_penalty must be > 0".into());
        }
        if !(-2.0..=2.0).contains(&self.presence_penalty)
            || !(-2.0..=2.0).contains(&self.frequency_penalty)
        {
            return Err("presence_penalty and frequency_penalty must be in [-2, 2]".into());
        }
        for &(_, b) in &self.logit_bias {
            if !(-100.0..=100.0).contains(&b) {
                return Err("logit_bias values must be in [-100, 100]".into());
            }
        }
        Ok(())
    }
}

/// SplitMix64: small, fast, and reproducible across platforms.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
    /// Candidates and their weights (f64; per chunk for `draw_whole`, with `wf` per token),
    /// reused: no allocation per token after the first.
    cand: Vec<(u32, f32)>,
    weights: Vec<f64>,
    wf: Vec<f32>,
    pub seed: u64,
}

impl Sampler {
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    pub fn new(params: SamplingParams) -> Sampler {
        let seed = params.seed.unwrap_or_else(|| {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            t ^ (std::process::id() as u64) << 32
        });
        Sampler {
            params,
            rng: Rng(seed),
            cand: Vec::new(),
            weights: Vec::new(),
            wf: Vec::new(),
            seed,
        }
    }

    /// Pick the next token from `logits` (modified in place by the logit bias and penalties,
    /// so that afterwards they are the distribution the draw used, at temperature 1).
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        self.prepare(logits, history);
        self.pick(logits)
    }

    /// The logit bias and penalties, in place: afterwards `logits` are what `pick` draws from.
    pub fn prepare(&self, logits: &mut [f32], history: &[u32]) {
        for &(t, b) in &self.params.logit_bias {
            if let Some(l) = logits.get_mut(t as usize) {
                *l += b;
            }
        }
        self.apply_penalties(logits, history);
    }

    /// The draw from prepared logits (top-k, top-p, min-p, temperature). NaN logits are not
    /// candidates: a constraint's mask sets the tokens it refuses to NaN.
    pub fn pick(&mut self, logits: &[f32]) -> u32 {
        if self.params.temperature <= 0.0 {
            return argmax(logits);
        }
        let p = &self.params;
        if p.top_k == 0 && p.top_p >= 1.0 && p.min_p <= 0.0 {
            return self.draw_whole(logits);
        }
        let k = self.params.top_k;
        self.cand.clear();
        let cut = k > 0 && k < logits.len();
        if cut {
            self.keep_top(logits, k);
            self.cand.sort_unstable_by(by_logit);
        } else {
            self.cand.extend(
                logits
                    .iter()
                    .enumerate()
                    .filter(|(_, l)| !l.is_nan())
                    .map(|(i, &l)| (i as u32, l)),
            );
        }
        if self.cand.is_empty() {
            return 0;
        }
        self.draw(cut, None)
    }

    /// `self.cand` = the k largest non-NaN logits (unsorted) in one pass: candidates gather
    /// until there are 2k, are cut to the best k, and from then on only a logit above the k-th
    /// best so far enters (ties do not: the kept one has the lower id). The order is total, so
    /// this is the full sort's prefix as a set.
    fn keep_top(&mut self, logits: &[f32], k: usize) {
        let mut floor: Option<f32> = None;
        for (i, &l) in logits.iter().enumerate() {
            if l.is_nan() || floor.is_some_and(|f| l.total_cmp(&f).is_le()) {
                continue;
            }
            self.cand.push((i as u32, l));
            if self.cand.len() == 2 * k {
                self.cand.select_nth_unstable_by(k - 1, by_logit);
                self.cand.truncate(k);
                floor = Some(self.cand[k - 1].1);
            }
        }
        if self.cand.len() > k {
            self.cand.select_nth_unstable_by(k - 1, by_logit);
            self.cand.truncate(k);
        }
    }

    /// What `sample_top` needs from `Backend::top_logits` to draw exactly as `sample` would with
    /// this `history`: greedy, the largest logit; top-k, the k largest; top-p without top-k, the
    /// `NUCLEUS_CANDIDATES` largest and the whole row's mass (`nucleus_fits` then says whether
    /// the nucleus lies within them). With a bias and penalties that can only lower logits
    /// (bias ≤ 0, as a ban; repetition ≥ 1, presence and frequency ≥ 0), greedy and top-k take
    /// L more, L the tokens lowered: the k best after the lowering are among the k + L best
    /// before. `None` otherwise: the draw needs the whole vocabulary.
    pub fn top_candidates(&self, history: &[u32]) -> Option<TopNeed> {
        let p = &self.params;
        let greedy = p.temperature <= 0.0;
        if !p.logits_untouched() {
            let lowering = p.logit_bias.iter().all(|&(_, b)| b <= 0.0)
                && p.repeat_penalty >= 1.0
                && p.presence_penalty >= 0.0
                && p.frequency_penalty >= 0.0;
            if !lowering || !(greedy || p.top_k > 0) {
                return None;
            }
            let k = if greedy { 1 } else { p.top_k };
            let biased = p.logit_bias.iter().filter(|&&(_, b)| b < 0.0).count();
            let penalized = self.penalty_counts(history).len();
            return Some(TopNeed {
                k: k + biased + penalized,
                mass: false,
            });
        }
        let (k, mass) = if greedy {
            (1, false)
        } else if p.top_k > 0 {
            (p.top_k, false)
        } else if p.top_p < 1.0 {
            (NUCLEUS_CANDIDATES, true)
        } else {
            return None;
        };
        Some(TopNeed { k, mass })
    }

    /// Whether the draw from these candidates (largest first) is the draw from the whole
    /// vocabulary: always, unless top-p without top-k cuts the vocabulary after them — their
    /// share of the row's `mass` stays below top_p. Computed as `draw` cuts, so the two agree.
    pub fn nucleus_fits(&self, top: &[(u32, f32)], mass: f32) -> bool {
        let p = &self.params;
        let Some(&(first, max)) = top.first() else {
            return true;
        };
        if p.temperature <= 0.0 || p.top_k > 0 || p.top_p >= 1.0 || first == u32::MAX {
            return true;
        }
        let mut acc = 0.0;
        top.iter().any(|c| {
            acc += exp_neg(c.1 - max) / mass;
            acc >= p.top_p
        })
    }

    /// This token's draw when a backend can make it where the logits are
    /// (`Backend::sample_logits`: greedy, or temperature and min-p without top-k, top-p, bias or
    /// penalties), with the uniform number the host draw would use next — not yet taken:
    /// `commit_device_draw` takes it once the backend has drawn.
    pub fn device_draw(&self) -> Option<suanli_backend::Draw> {
        let p = &self.params;
        if p.plain_greedy() {
            return Some(suanli_backend::Draw {
                temperature: 0.0,
                min_p: 0.0,
                u: 0.0,
            });
        }
        let whole = p.top_k == 0 && p.top_p >= 1.0;
        (p.logits_untouched() && whole).then(|| suanli_backend::Draw {
            temperature: p.temperature,
            min_p: p.min_p,
            u: Rng(self.rng.0).next_f64(),
        })
    }

    /// The backend drew with `device_draw`'s number: take it, as the host draw would have.
    pub fn commit_device_draw(&mut self) {
        if self.params.temperature > 0.0 {
            self.rng.next_f64();
        }
    }

    /// Draw from the largest logits — at least `top_candidates(history)` of them, largest first
    /// with the lower id first on ties, as `Backend::top_logits` gives them, with the row's mass
    /// when `top_candidates` asks for it and `nucleus_fits` — exactly as `sample` draws from
    /// the whole vocabulary with this `history`.
    pub fn sample_top(&mut self, top: &[(u32, f32)], mass: Option<f32>, history: &[u32]) -> u32 {
        if top.is_empty() {
            return 0;
        }
        if !self.params.logits_untouched() {
            // A bias and penalties that only lower logits: lower the candidates as `prepare`
            // lowers the vocabulary (the bias first, entry by entry, then the penalties), rank
            // them again and keep the k best, which are the k best of the lowered vocabulary.
            let counts = self.penalty_counts(history);
            let params = &self.params;
            self.cand.clear();
            self.cand.extend_from_slice(top);
            if !params.logit_bias.is_empty() {
                let at: std::collections::HashMap<u32, usize> =
                    top.iter().enumerate().map(|(i, c)| (c.0, i)).collect();
                for &(t, b) in &params.logit_bias {
                    if let Some(&i) = at.get(&t) {
                        self.cand[i].1 += b;
                    }
                }
            }
            for c in self.cand.iter_mut() {
                let n = counts.get(&c.0).copied().unwrap_or(0);
                if n > 0 {
                    c.1 = penalize(params, c.1, n);
                }
            }
            self.cand.sort_unstable_by(by_logit);
            if params.temperature <= 0.0 {
                return self.cand[0].0;
            }
            self.cand.truncate(params.top_k.max(1));
            return self.draw(true, None);
        }
        if self.params.temperature <= 0.0 {
            return top[0].0;
        }
        let k = self.params.top_k;
        let n = if k > 0 { k.min(top.len()) } else { top.len() };
        self.cand.clear();
        self.cand.extend_from_slice(&top[..n]);
        // After top-k, top-p weighs the k candidates; without it, the whole vocabulary.
        self.draw(true, mass.filter(|_| k == 0))
    }

    /// The draw over the whole vocabulary, in its order (no top-k, top-p or min-p: OpenAI's
    /// defaults), straight from the logits: weights vectorized, summed per chunk, the chunk
    /// holding u · total found first. NaN logits weigh nothing.
    fn draw_whole(&mut self, logits: &[f32]) -> u32 {
        const CHUNK: usize = 256;
        let t = self.params.temperature;
        let max = logits.iter().fold(f32::NEG_INFINITY, |m, &l| m.max(l));
        self.wf.clear();
        self.wf.extend(logits.iter().map(|&l| {
            if l.is_nan() {
                0.0
            } else {
                exp_neg((l - max) / t)
            }
        }));
        self.weights.clear();
        self.weights
            .extend(self.wf.chunks(CHUNK).map(|c| sum8(c) as f64));
        let total: f64 = self.weights.iter().sum();
        let mut r = self.rng.next_f64() * total;
        for (ci, &cw) in self.weights.iter().enumerate() {
            if r < cw {
                for (i, &w) in self.wf[ci * CHUNK..].iter().take(CHUNK).enumerate() {
                    if r < w as f64 {
                        return (ci * CHUNK + i) as u32;
                    }
                    r -= w as f64;
                }
                // Rounding left r past this chunk's last weight: its last weighed token.
                let chunk = &self.wf[ci * CHUNK..(ci * CHUNK + CHUNK).min(self.wf.len())];
                if let Some(i) = chunk.iter().rposition(|&w| w > 0.0) {
                    return (ci * CHUNK + i) as u32;
                }
            }
            r -= cw;
        }
        self.wf.iter().rposition(|&w| w > 0.0).unwrap_or(0) as u32
    }

    /// top-p, min-p, temperature and the draw over `self.cand`: sorted (largest first, cut to
    /// top-k) when `sorted`, else the whole vocabulary in its order — which is sorted only as far
    /// as top-p needs, so that a request without top-k costs O(vocabulary), not a full sort.
    /// `mass`: top-p's normalizer when the candidates are a sorted prefix of the vocabulary
    /// (`TopLogits::mass`), else their own sum.
    fn draw(&mut self, mut sorted: bool, mass: Option<f32>) -> u32 {
        let (top_p, min_p, t) = (
            self.params.top_p,
            self.params.min_p,
            self.params.temperature,
        );
        // Probabilities at temperature 1 for top-p / min-p, relative to the largest, as llama.cpp.
        let max = if sorted {
            self.cand[0].1
        } else {
            self.cand.iter().fold(f32::NEG_INFINITY, |m, c| m.max(c.1))
        };
        let prob = |l: f32| exp_neg(l - max);
        if top_p < 1.0 {
            let sum: f32 = mass.unwrap_or_else(|| self.cand.iter().map(|c| prob(c.1)).sum());
            // The smallest sorted prefix whose mass reaches top_p.
            let reach = |cand: &[(u32, f32)]| {
                let mut acc = 0.0;
                cand.iter().position(|c| {
                    acc += prob(c.1) / sum;
                    acc >= top_p
                })
            };
            if !sorted {
                // Sort a growing prefix (it is the full sort's prefix: the order is total)
                // until it holds the cut.
                let mut k = 64;
                while k < self.cand.len() {
                    self.cand.select_nth_unstable_by(k - 1, by_logit);
                    self.cand[..k].sort_unstable_by(by_logit);
                    if reach(&self.cand[..k]).is_some() {
                        break;
                    }
                    k *= 8;
                }
                if k >= self.cand.len() {
                    self.cand.sort_unstable_by(by_logit);
                }
                sorted = true;
            }
            let keep = reach(&self.cand).map_or(self.cand.len(), |i| i + 1);
            self.cand.truncate(keep.max(1));
        }
        if min_p > 0.0 {
            // The largest candidate's probability is 1 here.
            if sorted {
                let keep = self.cand.iter().take_while(|c| prob(c.1) >= min_p).count();
                self.cand.truncate(keep.max(1));
            } else {
                self.cand.retain(|c| prob(c.1) >= min_p); // keeps the largest (min_p ≤ 1)
            }
        }
        self.weights.clear();
        self.weights
            .extend(self.cand.iter().map(|c| exp_neg((c.1 - max) / t) as f64));
        let total: f64 = self.weights.iter().sum();
        let mut r = self.rng.next_f64() * total;
        for (c, w) in self.cand.iter().zip(&self.weights) {
            if r < *w {
                return c.0;
            }
            r -= w;
        }
        self.cand.last().map(|c| c.0).unwrap_or(0)
    }

    /// How often each token occurs in the penalty window of `history` (empty without penalties).
    fn penalty_counts(&self, history: &[u32]) -> std::collections::HashMap<u32, u32> {
        let p = &self.params;
        let mut counts = std::collections::HashMap::new();
        if p.penalized() {
            let start = history.len().saturating_sub(p.penalty_last_n);
            for &t in &history[start..] {
                *counts.entry(t).or_default() += 1;
            }
        }
        counts
    }

    fn apply_penalties(&self, logits: &mut [f32], history: &[u32]) {
        for (&t, &n) in &self.penalty_counts(history) {
            if let Some(l) = logits.get_mut(t as usize) {
                *l = penalize(&self.params, *l, n);
            }
        }
    }
}

/// Logit `l` of a token seen `n` times in the penalty window: the repetition penalty divides a
/// positive logit and multiplies a negative one, then frequency and presence are subtracted.
fn penalize(p: &SamplingParams, l: f32, n: u32) -> f32 {
    let l = if l > 0.0 {
        l / p.repeat_penalty
    } else {
        l * p.repeat_penalty
    };
    l - (n as f32 * p.frequency_penalty + p.presence_penalty)
}

/// e^x for x ≤ 0 (a weight relative to the largest logit) within 2 ulp, e^-87 below -87. Plain
/// arithmetic that vectorizes (libm's exp does not), since a draw without top-k weighs the whole
/// vocabulary: 2^k by the exponent bits times a degree-6 polynomial on |r| ≤ ln 2 / 2.
#[inline]
fn exp_neg(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so that k·LN2_HI is exact.
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // max/min rather than clamp: they vectorize plainly (clamp's NaN path does not matter here).
    #[allow(clippy::manual_clamp)]
    let x = x.max(-87.0).min(0.0);
    // k = round(x·log2 e) by the 1.5·2^23 trick: k sits in the low mantissa bits of `shifted`
    // (no libm call, no float-to-int conversion: both would keep this from vectorizing).
    let shifted = x * LOG2_E + 12_582_912.0;
    let k = shifted - 12_582_912.0;
    let r = x - k * LN2_HI - k * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let k_int = shifted.to_bits().wrapping_sub(0x4B40_0000);
    p * f32::from_bits(k_int.wrapping_add(127) << 23)
}

/// Σ e^(l − max) over the logits l of `x` above `floor` (NaN never counts; none above `max`),
/// in 16 lanes the compiler vectorizes (libm's `expf` one logit at a time does not).
pub(crate) fn sum_exp_above(x: &[f32], max: f32, floor: f32) -> f32 {
    let w = |l: f32| if l > floor { exp_neg(l - max) } else { 0.0 };
    let mut lanes = [0f32; 16];
    let mut it = x.chunks_exact(16);
    for c in &mut it {
        for (a, &l) in lanes.iter_mut().zip(c) {
            *a += w(l);
        }
    }
    lanes.iter().sum::<f32>() + it.remainder().iter().map(|&l| w(l)).sum::<f32>()
}

/// ln Σ e^l over `logits` (NaN ignored), as `logprobs` and the perplexity normalize: the
/// maximum from block maxima, each block of 1024 weights summed in `sum_exp_above`'s lanes and
/// the blocks in f64.
pub(crate) fn log_normalizer(logits: &[f32]) -> f64 {
    let max = logits
        .chunks(64)
        .map(suanli_core::scan::block_max)
        .fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits
        .chunks(1024)
        .map(|c| sum_exp_above(c, max, f32::NEG_INFINITY) as f64)
        .sum();
    max as f64 + sum.ln()
}

/// A sum in eight lanes (the compiler vectorizes it; one running f32 sum it may not reorder).
fn sum8(x: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let mut it = x.chunks_exact(8);
    for c in &mut it {
        for (l, v) in lanes.iter_mut().zip(c) {
            *l += v;
        }
    }
    lanes.iter().sum::<f32>() + it.remainder().iter().sum::<f32>()
}

/// Larger logit first, then lower id: the candidates' order (total, NaN excluded beforehand).
fn by_logit(a: &(u32, f32), b: &(u32, f32)) -> std::cmp::Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// Log-probabilities at temperature 1: the `chosen` token's, and the `top` most likely tokens
/// (most likely first; ties by lower id).
///
/// Vector code throughout (the whole vocabulary, for every token that asks, prompt tokens
/// with `echo` included): each weight by `exp_neg` in 16 lanes, each block of 1024 summed in
/// f64, and blocks of 64 whose largest cannot enter the top skipped. One pass of f64 `exp` and
/// one of compares took 1.06 ms a row of 151,936 logits; these take 0.19 ms (the log
/// probabilities move by ~1e-7).
pub fn logprobs(logits: &[f32], chosen: u32, top: usize) -> (f32, Vec<(u32, f32)>) {
    use suanli_core::scan::block_max;
    let lse = log_normalizer(logits);
    let lp = |l: f32| (l as f64 - lse) as f32;
    let chosen_lp = logits
        .get(chosen as usize)
        .map_or(f32::NEG_INFINITY, |&l| lp(l));
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(top + 1);
    if top > 0 {
        for (b, block) in logits.chunks(64).enumerate() {
            if best.len() == top && block_max(block) <= best[top - 1].1 {
                continue;
            }
            for (j, &l) in block.iter().enumerate() {
                if l.is_nan() || (best.len() == top && l <= best[top - 1].1) {
                    continue;
                }
                let at = best.partition_point(|b| b.1 >= l);
                best.insert(at, ((b * 64 + j) as u32, l));
                best.truncate(top);
            }
        }
    }
    (
        chosen_lp,
        best.into_iter().map(|(i, l)| (i, lp(l))).collect(),
    )
}

/// Index of the largest logit (the first one on ties); NaNs are ignored.
pub fn argmax(logits: &[f32]) -> u32 {
    // Per block of 64, its max (vector ops) first; only a block that beats the best so
    // far is searched for its first index of that max. The first index of the largest value,
    // NaN ignored, as one scalar pass would find it.
    let mut best = 0usize;
    let mut bv = f32::NEG_INFINITY;
    for (b, block) in logits.chunks(64).enumerate() {
        let m = suanli_core::scan::block_max(block);
        if m > bv {
            bv = m;
            best = b * 64 + block.iter().position(|&x| x == m).unwrap_or(0);
        }
    }
    best as u32
}

#[cfg(test)]
mod tests;
