//! The plain data a forward step takes. The scheduler builds it; it names no tensors.

/// One sequence's part of a step: its new tokens are rows `q_start .. q_start + q_len` of the
/// batch, at positions `ctx_len - q_len .. ctx_len`, and its KV lives in `block_table`. In a
/// sliding-window layer, entries for blocks wholly before the first query's window are not read
/// (an engine may have given those blocks back).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttnSeq {
    pub q_start: usize,
    pub q_len: usize,
    pub ctx_len: usize,
    pub block_table: Vec<u32>,
    /// Positions from here on hold tokens the sequence generated; those before, its prompt. A
    /// backend may compute the two kinds of rows differently (prefill and decode kernels), but
    /// never by the step's shape, so that no row's result depends on how steps were cut or
    /// what shared them (`usize::MAX`: every row is prompt).
    pub generated_from: usize,
}

impl AttnSeq {
    /// How many of the step's rows (the first ones) are prompt tokens, by `generated_from`.
    pub fn prompt_rows(&self) -> usize {
        self.generated_from
            .saturating_sub(self.ctx_len.saturating_sub(self.q_len))
            .min(self.q_len)
    }
}

/// A batch: token ids with their positions and KV slots, grouped by sequence, plus which rows
/// need logits.
#[derive(Clone, Debug, Default)]
pub struct BatchPlan {
    pub tokens: Vec<u32>,
    pub positions: Vec<u32>,
    pub slots: Vec<u32>,
    pub seqs: Vec<AttnSeq>,
    pub logits_rows: Vec<u32>,
}

impl BatchPlan {
    /// Build the plan for one sequence's chunk of new tokens starting at position `start`.
    pub fn single(
        tokens: &[u32],
        start: usize,
        block_table: &[u32],
        block_size: usize,
        logits_rows: Vec<u32>,
        generated_from: usize,
    ) -> BatchPlan {
        let positions: Vec<u32> = (start..start + tokens.len()).map(|p| p as u32).collect();
        let slots = positions
            .iter()
            .map(|&p| {
                block_table[p as usize / block_size] * block_size as u32
                    + (p as usize % block_size) as u32
            })
            .collect();
        BatchPlan {
            tokens: tokens.to_vec(),
            positions,
            slots,
            seqs: vec![AttnSeq {
                q_start: 0,
                q_len: tokens.len(),
                ctx_len: start + tokens.len(),
                block_table: block_table.to_vec(),
                generated_from,
            }],
            logits_rows,
        }
    }
}
