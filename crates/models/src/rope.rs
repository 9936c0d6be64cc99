//! Rotary position embeddings and their context-extension schemes, as read from GGUF metadata
//! (llama.cpp's keys and `rope_freqs.weight`) or a config.json `rope_scaling` /
//! `rope_parameters` block. What a model's file asks for is either computed here or refused by
//! name: a scheme that is silently skipped gives plausible but wrong text.

use serde_json::Value as Json;

/// How the rotary frequencies are changed from `1 / theta^(2i/d)`.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    None,
    /// Position interpolation: every frequency divided by `factor`.
    Linear {
        factor: f32,
    },
    /// A divisor per frequency: Llama 3.1's scheme, from its `rope_scaling` block or from a
    /// GGUF file's `rope_freqs.weight`.
    Frequencies(Vec<f32>),
    /// YaRN (Qwen2.5's long-context setting): frequencies blended between interpolated and
    /// original along a ramp, and the rotated values scaled by `attention_factor`.
    Yarn(Yarn),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Yarn {
    pub factor: f32,
    pub original_ctx: usize,
    pub beta_fast: f32,
    pub beta_slow: f32,
    /// Multiplies cos and sin, so every rotated Q·K product by its square.
    pub attention_factor: f32,
}

impl RopeScaling {
    /// The inverse frequencies of `rotary_dim / 2` rotating pairs.
    pub fn inv_freq(&self, theta: f32, rotary_dim: usize) -> Vec<f32> {
        let half = rotary_dim / 2;
        let base = |i: usize| (theta as f64).powf((2 * i) as f64 / rotary_dim as f64);
        (0..half)
            .map(|i| {
                let extrapolated = 1.0 / base(i);
                let f = match self {
                    RopeScaling::None => extrapolated,
                    RopeScaling::Linear { factor } => extrapolated / *factor as f64,
                    RopeScaling::Frequencies(d) => extrapolated / d[i] as f64,
                    RopeScaling::Yarn(y) => {
                        // transformers' `_compute_yarn_parameters`, and ggml's `rope_yarn`.
                        let (low, high) = y.correction_range(theta, rotary_dim);
                        let ramp = ((i as f64 - low) / (high - low).max(0.001)).clamp(0.0, 1.0);
                        let keep = 1.0 - ramp;
                        let interpolated = extrapolated / y.factor as f64;
                        interpolated * (1.0 - keep) + extrapolated * keep
                    }
                };
                f as f32
            })
            .collect()
    }

    /// The factor on cos and sin (1 but for YaRN).
    pub fn attention_factor(&self) -> f32 {
        match self {
            RopeScaling::Yarn(y) => y.attention_factor,
            _ => 1.0,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            RopeScaling::None => "none".into(),
            RopeScaling::Linear { factor } => format!("linear ×{factor}"),
            RopeScaling::Frequencies(_) => "per-frequency factors (llama3)".into(),
            RopeScaling::Yarn(y) => format!(
                "yarn ×{} from {} positions, attention factor {:.4}",
                y.factor, y.original_ctx, y.attention_factor
            ),
        }
    }
}

impl Yarn {
    /// The pair indices between which frequencies go from kept to interpolated, floored and
    /// ceiled as both transformers (`truncate`, its default) and ggml do.
    fn correction_range(&self, theta: f32, dim: usize) -> (f64, f64) {
        let at = |rotations: f32| {
            dim as f64
                * (self.original_ctx as f64 / (rotations as f64 * 2.0 * std::f64::consts::PI)).ln()
                / (2.0 * (theta as f64).ln())
        };
        let low = at(self.beta_fast).floor().max(0.0);
        let high = at(self.beta_slow).ceil().min(dim as f64 - 1.0);
        (low, high)
    }
}

/// YaRN's default attention factor for a context `factor`: 0.1·ln(factor) + 1.
fn yarn_mscale(factor: f32) -> f32 {
    if factor <= 1.0 {
        1.0
    } else {
        0.1 * factor.ln() + 1.0
    }
}

/// What one GGUF key holds, as a number (`None` when absent).
pub(crate) type GgufNum<'a> = &'a dyn Fn(&str) -> Result<Option<f64>, String>;

/// The scaling a GGUF file's `{arch}.rope.scaling.*` keys (and `rope_freqs.weight`, passed in
/// as `freqs`) ask for. `key` reads `{arch}.<name>` as a number; `kind` is `rope.scaling.type`.
pub(crate) fn from_gguf(
    kind: Option<&str>,
    key: GgufNum<'_>,
    freqs: Option<Vec<f32>>,
    rotary_dim: usize,
) -> Result<RopeScaling, String> {
    let factor = key("rope.scaling.factor")?.or(key("rope.scale_linear")?);
    let scaling = match (kind, factor) {
        (None, None) | (Some("none"), _) => RopeScaling::None,
        (Some("linear"), None) => {
            return Err("rope.scaling.type is linear but rope.scaling.factor is missing".into())
        }
        // Older files give only rope.scale_linear (or the factor alone): linear.
        (None | Some("linear"), Some(f)) => {
            if !(f.is_finite() && f > 0.0) {
                return Err(format!("rope scaling factor {f} must be positive"));
            }
            if f == 1.0 {
                RopeScaling::None
            } else {
                RopeScaling::Linear { factor: f as f32 }
            }
        }
        (Some("yarn"), f) => {
            let factor = f.ok_or("rope.scaling.type is yarn but rope.scaling.factor is missing")?;
            let original = key("rope.scaling.original_context_length")?.ok_or(
                "rope.scaling.type is yarn but rope.scaling.original_context_length is missing",
            )?;
            let finite_beta = |k: &str| -> Result<Option<f64>, String> {
                match key(k)? {
                    Some(b) if !(b.is_finite() && b > 0.0) => {
                        Err(format!("{k} = {b} must be positive"))
                    }
                    b => Ok(b),
                }
            };
            if !(factor.is_finite() && factor > 0.0) {
                return Err(format!("rope.scaling.factor {factor} must be positive"));
            }
            if !(original.is_finite() && original >= 1.0) {
                return Err(format!(
                    "rope.scaling.original_context_length {original} must be at least 1"
                ));
            }
            let attn = key("rope.scaling.attn_factor")?.unwrap_or(1.0);
            if !(attn.is_finite() && attn > 0.0) {
                return Err(format!("rope.scaling.attn_factor {attn} must be positive"));
            }
            if let Some(m) = key("rope.scaling.yarn_log_multiplier")?.filter(|&m| m != 0.0) {
                return Err(format!(
                    "rope.scaling.yarn_log_multiplier = {m} (DeepSeek's mscale) is not supported"
                ));
            }
            if let Some(e) = key("rope.scaling.yarn_ext_factor")?.filter(|&e| e != 1.0 && e >= 0.0)
            {
                return Err(format!(
                    "rope.scaling.yarn_ext_factor = {e} is not supported (1.0 is)"
                ));
            }
            // llama.cpp multiplies the file's attn_factor (default 1) by YaRN's own mscale.
            RopeScaling::Yarn(Yarn {
                factor: factor as f32,
                original_ctx: original as usize,
                beta_fast: finite_beta("rope.scaling.yarn_beta_fast")?.unwrap_or(32.0) as f32,
                beta_slow: finite_beta("rope.scaling.yarn_beta_slow")?.unwrap_or(1.0) as f32,
                attention_factor: attn as f32 * yarn_mscale(factor as f32),
            })
        }
        (Some(other), _) => {
            return Err(format!(
                "rope.scaling.type {other:?} is not supported (none, linear, yarn are)"
            ))
        }
    };
    match freqs {
        None => Ok(scaling),
        Some(f) => {
            if scaling != RopeScaling::None {
                return Err(format!(
                    "the file has both rope_freqs.weight and rope scaling {}; refusing to guess how they combine",
                    scaling.describe()
                ));
            }
            check_factors(&f, rotary_dim, "rope_freqs.weight")?;
            Ok(RopeScaling::Frequencies(f))
        }
    }
}

fn check_factors(f: &[f32], rotary_dim: usize, what: &str) -> Result<(), String> {
    if f.len() != rotary_dim / 2 {
        return Err(format!(
            "{what} has {} factors, expected {} (rotary dimension / 2)",
            f.len(),
            rotary_dim / 2
        ));
    }
    if let Some(x) = f.iter().find(|x| !(x.is_finite() && **x > 0.0)) {
        return Err(format!("{what} holds {x}, not a positive factor"));
    }
    Ok(())
}

/// The scaling a config.json rope block (`rope_parameters` in transformers 5, `rope_scaling`
/// before) asks for. `max_ctx` is `max_position_embeddings`, YaRN's default original context.
/// Returns the scaling and, for `dynamic`, the context within which it equals plain RoPE.
pub(crate) fn from_hf(
    block: Option<&Json>,
    theta: f32,
    rotary_dim: usize,
    max_ctx: usize,
) -> Result<(RopeScaling, Option<usize>), String> {
    let Some(r) = block else {
        return Ok((RopeScaling::None, None));
    };
    let kind = r
        .get("rope_type")
        .or_else(|| r.get("type"))
        .and_then(|t| t.as_str())
        .unwrap_or("default");
    let num = |k: &str| -> Result<Option<f64>, String> {
        match r.get(k) {
            None | Some(Json::Null) => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| format!("rope {kind} parameter {k} = {v} is not a number")),
        }
    };
    let need = |k: &str| -> Result<f64, String> {
        num(k)?.ok_or_else(|| format!("rope {kind} scaling lacks {k}"))
    };
    let positive = |k: &str, v: f64| {
        if v.is_finite() && v > 0.0 {
            Ok(v)
        } else {
            Err(format!("rope {kind} parameter {k} = {v} must be positive"))
        }
    };
    Ok(match kind {
        "default" => (RopeScaling::None, None),
        "linear" => {
            let f = positive("factor", need("factor")?)?;
            (RopeScaling::Linear { factor: f as f32 }, None)
        }
        // Dynamic NTK changes the base only for sequences longer than max_position_embeddings;
        // within it (where suanli keeps contexts) it is plain RoPE.
        "dynamic" => {
            positive("factor", need("factor")?)?;
            (RopeScaling::None, Some(max_ctx))
        }
        "llama3" => {
            let f = llama3_factors(r, theta, rotary_dim)?;
            check_factors(&f, rotary_dim, "rope llama3 scaling")?;
            (RopeScaling::Frequencies(f), None)
        }
        "yarn" => {
            if num("mscale")?.is_some() || num("mscale_all_dim")?.is_some() {
                return Err(
                    "rope yarn parameters mscale/mscale_all_dim (DeepSeek) are not supported"
                        .into(),
                );
            }
            let original = num("original_max_position_embeddings")?.unwrap_or(max_ctx as f64);
            let factor = match num("factor")? {
                Some(f) => f,
                None => max_ctx as f64 / original,
            };
            let factor = positive("factor", factor)? as f32;
            if r.get("truncate").and_then(|t| t.as_bool()) == Some(false) {
                return Err("rope yarn parameter truncate = false is not supported".into());
            }
            let y = Yarn {
                factor,
                original_ctx: positive("original_max_position_embeddings", original)? as usize,
                beta_fast: positive("beta_fast", num("beta_fast")?.unwrap_or(32.0))? as f32,
                beta_slow: positive("beta_slow", num("beta_slow")?.unwrap_or(1.0))? as f32,
                attention_factor: match num("attention_factor")? {
                    Some(a) => positive("attention_factor", a)? as f32,
                    None => yarn_mscale(factor),
                },
            };
            (RopeScaling::Yarn(y), None)
        }
        other => {
            return Err(format!(
                "rope type {other:?} is not supported (default, linear, dynamic, llama3, yarn are)"
            ))
        }
    })
}

/// Llama 3.1 frequency scaling, expressed as divisors of the inverse frequencies.
fn llama3_factors(r: &Json, theta: f32, dim: usize) -> Result<Vec<f32>, String> {
    let get = |k: &str| {
        r.get(k)
            .and_then(|v| v.as_f64())
            .ok_or_else(|| format!("rope llama3 scaling lacks {k}"))
    };
    let factor = get("factor")?;
    let low = get("low_freq_factor")?;
    let high = get("high_freq_factor")?;
    let old_ctx = get("original_max_position_embeddings")?;
    if !(factor > 0.0 && low > 0.0 && high > low && old_ctx > 0.0) {
        return Err(format!(
            "rope llama3 scaling: factor {factor}, low_freq_factor {low}, high_freq_factor {high}, original context {old_ctx} are out of range"
        ));
    }
    let low_wavelen = old_ctx / low;
    let high_wavelen = old_ctx / high;
    Ok((0..dim / 2)
        .map(|i| {
            let inv = 1.0 / (theta as f64).powf((2 * i) as f64 / dim as f64);
            let wavelen = 2.0 * std::f64::consts::PI / inv;
            let f = if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                factor
            } else {
                let smooth = (old_ctx / wavelen - low) / (high - low);
                1.0 / ((1.0 - smooth) / factor + smooth)
            };
            f as f32
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn yarn_keeps_high_frequencies_and_interpolates_low_ones() {
        let (s, _) = from_hf(
            Some(&json!({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768})),
            1e6,
            64,
            131072,
        )
        .unwrap();
        let plain = RopeScaling::None.inv_freq(1e6, 64);
        let y = s.inv_freq(1e6, 64);
        assert_eq!(y[0], plain[0]);
        assert!((y[31] * 4.0 / plain[31] - 1.0).abs() < 1e-6);
        assert!((s.attention_factor() - (0.1 * 4f32.ln() + 1.0)).abs() < 1e-6);
    }

    #[test]
    fn unknown_and_unsupported_schemes_are_refused_by_name() {
        for (block, word) in [
            (json!({"rope_type": "longrope", "factor": 4.0}), "longrope"),
            (
                json!({"rope_type": "yarn", "factor": 4.0, "mscale": 1.0, "mscale_all_dim": 1.0}),
                "mscale",
            ),
            (json!({"rope_type": "linear"}), "factor"),
            (json!({"rope_type": "linear", "factor": -2.0}), "positive"),
        ] {
            let e = from_hf(Some(&block), 1e4, 64, 4096).unwrap_err();
            assert!(e.contains(word), "{e}");
        }
        let none = |_: &str| Ok(None);
        let e = from_gguf(Some("longrope"), &none, None, 64).unwrap_err();
        assert!(e.contains("longrope"), "{e}");
        let bad = |k: &str| {
            Ok(match k {
                "rope.scaling.factor" => Some(-4.0),
                "rope.scaling.original_context_length" => Some(4096.0),
                _ => None,
            })
        };
        let e = from_gguf(Some("yarn"), &bad, None, 64).unwrap_err();
        assert!(e.contains("must be positive"), "{e}");
    }

    #[test]
    fn gguf_linear_and_frequency_factors() {
        let factor = |k: &str| Ok((k == "rope.scaling.factor").then_some(8.0));
        let s = from_gguf(Some("linear"), &factor, None, 64).unwrap();
        assert_eq!(s, RopeScaling::Linear { factor: 8.0 });
        let none = |_: &str| Ok(None);
        let f = from_gguf(None, &none, Some(vec![2.0; 32]), 64).unwrap();
        assert_eq!(
            f.inv_freq(1e4, 64)[5],
            RopeScaling::None.inv_freq(1e4, 64)[5] / 2.0
        );
        assert!(from_gguf(None, &none, Some(vec![2.0; 31]), 64).is_err());
        assert!(from_gguf(None, &none, Some(vec![0.0; 32]), 64).is_err());
    }
}
