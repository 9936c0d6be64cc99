//! A mixture-of-experts feed-forward block: the router picks each token's experts on the host,
//! the step's tokens are grouped by expert, and each chosen expert runs once over its group
//! (gather, gated MLP, weighted scatter back), so only routed experts are read and a prefill
//! batch multiplies each expert's matrices once. Accumulation follows transformers: the experts
//! in index order into a zeroed sum, then the shared expert, then the residual add.

use crate::config::Moe;
use crate::loader::{LoadError, Loader};
use crate::moe::route;
use suanli_backend::{Act, Backend, BackendError, Weight};

/// A gated MLP's three matrices: gate, up, down.
pub(crate) type GatedMlp<W> = [Weight<W>; 3];

pub(crate) struct Experts<W> {
    /// `[num_experts, hidden]`: the router's logits are x · routerᵀ.
    router: Weight<W>,
    experts: Vec<GatedMlp<W>>,
    /// The always-on expert and its `[1, hidden]` gate (Qwen2-MoE).
    shared: Option<(GatedMlp<W>, Weight<W>)>,
    moe: Moe,
}

impl<W> Experts<W> {
    /// Every matrix, for memory accounting: (router and shared expert, routed experts).
    pub fn matrices(&self) -> (Vec<&Weight<W>>, Vec<&Weight<W>>) {
        let mut always = vec![&self.router];
        if let Some((mlp, gate)) = &self.shared {
            always.extend(mlp.iter());
            always.push(gate);
        }
        (always, self.experts.iter().flatten().collect())
    }

    /// How many of the routed experts one token reads.
    pub fn per_token(&self) -> usize {
        self.moe.experts_per_token
    }

    /// x += the block's output for the normed input `h` (both `[n, hidden]`).
    pub fn forward<B: Backend<WeightStore = W>>(
        &self,
        b: &B,
        h: &Act<B::Buffer>,
        x: &mut Act<B::Buffer>,
        s: &mut ExpertScratch<B>,
    ) -> Result<(), BackendError> {
        let n = h.rows;
        let ne = self.moe.num_experts;
        let rows = &s.all_rows[..n];
        b.logits(h, rows, &self.router, &mut s.logits[..n * ne])?;
        for g in s.groups.iter_mut() {
            g.0.clear();
            g.1.clear();
        }
        for (t, logits) in s.logits[..n * ne].chunks_exact(ne).enumerate() {
            route(logits, &self.moe, &mut s.route);
            for &(e, w) in &s.route {
                let g = &mut s.groups[e as usize];
                g.0.push(t as u32);
                g.1.push(w);
            }
        }
        b.upload(&s.zeros[..n * h.cols], n, &mut s.sum)?;
        for (e, (toks, weights)) in s.groups.iter().enumerate() {
            if toks.is_empty() {
                continue;
            }
            let [gate, up, down] = &self.experts[e];
            b.gather_rows(h, toks, &mut s.input)?;
            b.gated_linear(&s.input, gate, up, &mut s.g, &mut s.u, &mut s.act)?;
            b.linear(&s.act, down, None, &mut s.out)?;
            b.add_rows_scaled(&mut s.sum, &s.out, toks, weights)?;
        }
        if let (Some(([gate, up, down], gate_inp)), Some([g, u, act])) =
            (&self.shared, s.shared.as_mut())
        {
            b.gated_linear(h, gate, up, g, u, act)?;
            b.linear(act, down, None, &mut s.out)?;
            b.logits(h, rows, gate_inp, &mut s.gates[..n])?;
            for v in &mut s.gates[..n] {
                *v = 1.0 / (1.0 + (-*v).exp());
            }
            b.add_rows_scaled(&mut s.sum, &s.out, rows, &s.gates[..n])?;
        }
        b.add(x, &s.sum)
    }
}

/// Loads layer `prefix` (`model.layers.N`)'s experts.
pub(crate) fn load<B: Backend>(
    l: &Loader<'_, B>,
    prefix: &str,
    moe: &Moe,
    hidden: usize,
) -> Result<Experts<B::WeightStore>, LoadError> {
    let p = format!("{prefix}.mlp");
    let (n, ff) = (moe.num_experts, moe.expert_intermediate_size);
    let gates = l.experts(&p, "gate_proj", n, ff, hidden)?;
    let ups = l.experts(&p, "up_proj", n, ff, hidden)?;
    let downs = l.experts(&p, "down_proj", n, hidden, ff)?;
    let experts = gates
        .into_iter()
        .zip(ups)
        .zip(downs)
        .map(|((g, u), d)| [g, u, d])
        .collect();
    let shared = match moe.shared_expert_intermediate_size {
        Some(sff) => {
            let s = format!("{p}.shared_expert");
            let mlp = [
                l.matrix(&format!("{s}.gate_proj.weight"), sff, hidden)?,
                l.matrix(&format!("{s}.up_proj.weight"), sff, hidden)?,
                l.matrix(&format!("{s}.down_proj.weight"), hidden, sff)?,
            ];
            Some((
                mlp,
                l.row_matrix(&format!("{p}.shared_expert_gate.weight"), hidden)?,
            ))
        }
        None => None,
    };
    Ok(Experts {
        router: l.matrix(&format!("{p}.gate.weight"), n, hidden)?,
        experts,
        shared,
        moe: *moe,
    })
}

/// Buffers for one step's expert work, allocated once for `capacity` tokens.
pub(crate) struct ExpertScratch<B: Backend> {
    /// `[capacity, num_experts]` router logits.
    logits: Vec<f32>,
    /// Per token, the shared expert's gate.
    gates: Vec<f32>,
    all_rows: Vec<u32>,
    /// Per expert: (token rows, weights) routed to it this step.
    groups: Vec<(Vec<u32>, Vec<f32>)>,
    route: Vec<(u32, f32)>,
    zeros: Vec<f32>,
    /// One expert's tokens, gathered; its gate, up and activation; its output.
    input: Act<B::Buffer>,
    g: Act<B::Buffer>,
    u: Act<B::Buffer>,
    act: Act<B::Buffer>,
    out: Act<B::Buffer>,
    /// The shared expert's gate, up and activation (its width).
    shared: Option<[Act<B::Buffer>; 3]>,
    /// The block's output before the residual add.
    sum: Act<B::Buffer>,
}

pub(crate) fn alloc_scratch<B: Backend>(
    b: &B,
    moe: &Moe,
    hidden: usize,
    capacity: usize,
) -> Result<ExpertScratch<B>, BackendError> {
    let ff = moe.expert_intermediate_size;
    let shared = match moe.shared_expert_intermediate_size {
        Some(sff) => Some([
            b.alloc_act(capacity, sff)?,
            b.alloc_act(capacity, sff)?,
            b.alloc_act(capacity, sff)?,
        ]),
        None => None,
    };
    Ok(ExpertScratch {
        logits: vec![0.0; capacity * moe.num_experts],
        gates: vec![0.0; capacity],
        all_rows: (0..capacity as u32).collect(),
        groups: vec![Default::default(); moe.num_experts],
        // One more than kept: `route` inserts before it truncates.
        route: Vec::with_capacity(moe.experts_per_token + 1),
        zeros: vec![0.0; capacity * hidden],
        input: b.alloc_act(capacity, hidden)?,
        g: b.alloc_act(capacity, ff)?,
        u: b.alloc_act(capacity, ff)?,
        act: b.alloc_act(capacity, ff)?,
        out: b.alloc_act(capacity, hidden)?,
        shared,
        sum: b.alloc_act(capacity, hidden)?,
    })
}
