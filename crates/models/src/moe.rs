//! Mixture-of-experts hyperparameters: how many experts a layer has, how many each token uses,
//! how the router's choice is weighted, and which layers are sparse. Read from GGUF metadata
//! (`{arch}.expert_*`) or config.json (`num_experts`, `norm_topk_prob`, …); anything about routing
//! that is not built here (sigmoid gating, grouped routing, …) is refused by name.

use crate::config::{gguf_usize, hf_usize};
use serde_json::Value as Json;
use suanli_formats::gguf::GgufFile;

/// The feed-forward block of one layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeedForward {
    /// One gated MLP of `intermediate_size`.
    Dense,
    /// The routed experts of `Moe` (plus its shared expert, if any).
    Experts,
}

/// A sparse layer's shape and routing: softmax over the router's logits, the `experts_per_token`
/// largest kept, each expert's output weighted by its share.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Moe {
    pub num_experts: usize,
    pub experts_per_token: usize,
    /// Each routed expert's MLP width.
    pub expert_intermediate_size: usize,
    /// The kept shares are renormalised to sum to one (Qwen3-MoE) rather than used as they
    /// are (Qwen2-MoE).
    pub norm_topk_prob: bool,
    /// Routed weights are multiplied by this (GGUF `expert_weights_scale`; 1 for Qwen).
    pub routed_scale: f32,
    /// An always-on expert of this width whose output is scaled by sigmoid(x · gate), added to
    /// the routed ones (Qwen2-MoE).
    pub shared_expert_intermediate_size: Option<usize>,
}

impl Moe {
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.num_experts == 0 || self.num_experts > 1 << 16 {
            return Err(format!(
                "expert count {} is out of range (1..=65536)",
                self.num_experts
            ));
        }
        if self.experts_per_token == 0 || self.experts_per_token > self.num_experts {
            return Err(format!(
                "experts used per token {} must be between 1 and the expert count {}",
                self.experts_per_token, self.num_experts
            ));
        }
        let widths = [
            Some(self.expert_intermediate_size),
            self.shared_expert_intermediate_size,
        ];
        if widths.into_iter().flatten().any(|w| w == 0 || w > 1 << 22) {
            return Err("expert feed-forward length out of range (1..=4194304)".into());
        }
        if !(self.routed_scale.is_finite() && self.routed_scale > 0.0) {
            return Err(format!(
                "expert weights scale {} is out of range",
                self.routed_scale
            ));
        }
        Ok(())
    }
}

/// The MoE keys a GGUF file may carry under its architecture (besides the dense ones).
pub(crate) const GGUF_KEYS: &[&str] = &[
    "expert_count",
    "expert_used_count",
    "expert_feed_forward_length",
    "expert_shared_feed_forward_length",
    "expert_weights_norm",
    "expert_weights_scale",
    "expert_gating_func",
];

/// llama.cpp's gating function ids (`LLAMA_EXPERT_GATING_FUNC_TYPE_*`): only softmax is built.
const GATING_SOFTMAX: u64 = 1;

/// From GGUF: every layer is sparse (as llama.cpp builds these architectures). `shared` says
/// whether the architecture has a shared expert; `norm_default` is llama.cpp's fixed choice for
/// the architecture when the file does not say.
pub(crate) fn from_gguf(
    f: &GgufFile,
    prefix: &str,
    shared: bool,
    norm_default: bool,
    dense_ff: usize,
) -> Result<Moe, String> {
    let get = |k: &str| f.get(&format!("{prefix}{k}"));
    let uint = |k: &str| gguf_usize(f, &format!("{prefix}{k}"));
    let req = |k: &str| uint(k)?.ok_or_else(|| format!("metadata {prefix}{k} is missing"));
    if let Some(g) = uint("expert_gating_func")? {
        if g as u64 != GATING_SOFTMAX {
            return Err(format!(
                "metadata {prefix}expert_gating_func = {g} is not supported (only softmax, 1)"
            ));
        }
    }
    let norm = match get("expert_weights_norm") {
        None => norm_default,
        Some(v) => v.as_bool().ok_or_else(|| {
            format!("metadata {prefix}expert_weights_norm = {v} is not a boolean")
        })?,
    };
    let scale = match get("expert_weights_scale") {
        None => 1.0,
        Some(v) => v
            .as_f64()
            .ok_or_else(|| format!("metadata {prefix}expert_weights_scale = {v} is not a number"))?
            as f32,
    };
    let used = req("expert_used_count")?;
    // llama.cpp's fallbacks when the widths are absent.
    let width = uint("expert_feed_forward_length")?.unwrap_or(dense_ff / used.max(1));
    let shared_width = shared
        .then(|| uint("expert_shared_feed_forward_length"))
        .transpose()?
        .map(|w| w.unwrap_or(dense_ff));
    Ok(Moe {
        num_experts: req("expert_count")?,
        experts_per_token: used,
        expert_intermediate_size: width,
        norm_topk_prob: norm,
        routed_scale: if scale == 0.0 { 1.0 } else { scale },
        shared_expert_intermediate_size: shared_width,
    })
}

/// From config.json: the MoE block and which layers use it (`mlp_only_layers` and
/// `decoder_sparse_step` as transformers reads them).
pub(crate) fn from_hf(
    c: &Json,
    layers: usize,
    shared: bool,
) -> Result<(Moe, Vec<FeedForward>), String> {
    let uint = |k: &str| hf_usize(c, k);
    let req = |k: &str| uint(k)?.ok_or_else(|| format!("config.json {k} is missing"));
    // transformers 5 writes Qwen3-MoE's count as num_local_experts; released configs say
    // num_experts.
    let num_experts = match (uint("num_experts")?, uint("num_local_experts")?) {
        (Some(a), Some(b)) if a != b => {
            return Err(format!(
                "config.json num_experts = {a} and num_local_experts = {b} disagree"
            ))
        }
        (Some(n), _) | (None, Some(n)) => n,
        (None, None) => return Err("config.json num_experts is missing".into()),
    };
    let norm = match c.get("norm_topk_prob") {
        None | Some(Json::Null) => false,
        Some(v) => v
            .as_bool()
            .ok_or_else(|| format!("config.json norm_topk_prob = {v} is not a boolean"))?,
    };
    let moe = Moe {
        num_experts,
        experts_per_token: req("num_experts_per_tok")?,
        expert_intermediate_size: req("moe_intermediate_size")?,
        norm_topk_prob: norm,
        routed_scale: 1.0,
        shared_expert_intermediate_size: shared
            .then(|| req("shared_expert_intermediate_size"))
            .transpose()?,
    };
    let step = uint("decoder_sparse_step")?.unwrap_or(1);
    if step == 0 {
        return Err("config.json decoder_sparse_step = 0 is out of range".into());
    }
    let dense_only: Vec<usize> = match c.get("mlp_only_layers") {
        None | Some(Json::Null) => Vec::new(),
        Some(Json::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_u64()
                    .and_then(|x| usize::try_from(x).ok())
                    .ok_or_else(|| format!("config.json mlp_only_layers holds {v}"))
            })
            .collect::<Result<_, _>>()?,
        Some(v) => return Err(format!("config.json mlp_only_layers = {v} is not a list")),
    };
    let kinds = (0..layers)
        .map(|i| {
            if !dense_only.contains(&i) && num_experts > 0 && (i + 1) % step == 0 {
                FeedForward::Experts
            } else {
                FeedForward::Dense
            }
        })
        .collect();
    Ok((moe, kinds))
}

/// One token's routing: the chosen experts and their weights, from the router's logits.
/// Softmax in f32 (as transformers and ggml compute it), the `k` largest shares (the lower
/// expert first on ties), renormalised where the model says, scaled by `routed_scale`.
pub(crate) fn route(logits: &[f32], moe: &Moe, out: &mut Vec<(u32, f32)>) {
    out.clear();
    let k = moe.experts_per_token.min(logits.len());
    if k == 0 {
        return;
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    // One pass, no allocation (it runs per token and layer): the softmax's numerators summed,
    // the k largest kept in `out`, largest first; an equal share goes after those already kept,
    // so the lower expert wins ties.
    let mut sum = 0f32;
    for (e, &l) in logits.iter().enumerate() {
        let p = (l - max).exp();
        sum += p;
        if out.len() == k && p <= out[k - 1].1 {
            continue;
        }
        let at = out.iter().position(|&(_, q)| p > q).unwrap_or(out.len());
        out.insert(at, (e as u32, p));
        out.truncate(k);
    }
    for p in out.iter_mut() {
        p.1 /= sum;
    }
    if moe.norm_topk_prob {
        let kept: f32 = out.iter().map(|p| p.1).sum();
        for p in out.iter_mut() {
            p.1 /= kept;
        }
    }
    if moe.routed_scale != 1.0 {
        for p in out.iter_mut() {
            p.1 *= moe.routed_scale;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn moe(k: usize, norm: bool) -> Moe {
        Moe {
            num_experts: 4,
            experts_per_token: k,
            expert_intermediate_size: 8,
            norm_topk_prob: norm,
            routed_scale: 1.0,
            shared_expert_intermediate_size: None,
        }
    }

    #[test]
    fn routes_to_the_largest_shares() {
        let logits = [0.0f32, 2.0, 1.0, 2.0];
        let mut out = Vec::new();
        route(&logits, &moe(2, false), &mut out);
        let z: f32 = logits.iter().map(|l| (l - 2.0f32).exp()).sum();
        // Ties go to the lower expert; shares are the softmax's, not renormalised.
        assert_eq!(out.iter().map(|p| p.0).collect::<Vec<_>>(), [1, 3]);
        assert!((out[0].1 - 1.0 / z).abs() < 1e-7);
        route(&logits, &moe(3, true), &mut out);
        assert_eq!(out.iter().map(|p| p.0).collect::<Vec<_>>(), [1, 3, 2]);
        let s: f32 = out.iter().map(|p| p.1).sum();
        assert!((s - 1.0).abs() < 1e-6);
        assert!((out[2].1 - (-1f32).exp() / (2.0 + (-1f32).exp())).abs() < 1e-6);
    }

    #[test]
    fn sparse_layers_follow_step_and_dense_list() {
        let c = serde_json::json!({
            "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 8,
            "decoder_sparse_step": 2, "mlp_only_layers": [3],
        });
        let (_, kinds) = from_hf(&c, 6, false).unwrap();
        use FeedForward::*;
        assert_eq!(kinds, [Dense, Experts, Dense, Dense, Dense, Experts]);
        let bad = serde_json::json!({"num_experts": 4, "num_experts_per_tok": 2});
        assert!(from_hf(&bad, 2, false)
            .unwrap_err()
            .contains("moe_intermediate_size"));
    }
}
