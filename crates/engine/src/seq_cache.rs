//! One sequence's place in a model: its paged KV cache, the tokens in it, the scratch of a
//! forward pass and the last logits. The backend and model are passed in, so a session and its
//! draft model share one backend (one thread pool).

use crate::kv::{BlockAllocator, BlockTable};
use crate::session::{SessionError, BLOCK_SIZE};
use suanli_backend::{Backend, BatchPlan, KvDType, KvPages};
use suanli_models::{HeadRows, Model, Scratch};

pub(crate) struct SeqCache<B: Backend> {
    kv: KvPages<B::KvBuffer>,
    alloc: BlockAllocator,
    table: BlockTable,
    scratch: Scratch<B>,
    /// Tokens whose K/V are in the cache, in order.
    pub cached: Vec<u32>,
    pub ctx: usize,
    pub logits: Vec<f32>,
}

impl<B: Backend> SeqCache<B> {
    /// `ctx`: the most tokens the sequence may hold (capped by the model's); `chunk`: tokens
    /// per forward pass.
    pub fn new(
        backend: &B,
        model: &Model<B>,
        ctx: usize,
        chunk: usize,
        kv_dtype: KvDType,
    ) -> Result<SeqCache<B>, SessionError> {
        let ctx = ctx.min(model.cfg.max_position_embeddings).max(1);
        let num_blocks = ctx.div_ceil(BLOCK_SIZE);
        let kv = backend.alloc_kv(model.kv_spec(num_blocks, BLOCK_SIZE, kv_dtype))?;
        let scratch = model.alloc_scratch(backend, chunk.max(1))?;
        Ok(SeqCache {
            kv,
            alloc: BlockAllocator::new(num_blocks),
            table: BlockTable::default(),
            scratch,
            cached: Vec::new(),
            ctx,
            logits: Vec::new(),
        })
    }

    /// Forget the cached tokens and free their blocks.
    pub fn reset(&mut self) {
        self.table.release(&mut self.alloc);
        self.cached.clear();
    }

    /// Keep only the first `len` cached tokens; blocks past them are freed.
    pub fn truncate(&mut self, len: usize) {
        self.cached.truncate(len);
        let keep = len.div_ceil(BLOCK_SIZE);
        if self.table.blocks.len() > keep {
            let extra = self.table.blocks.split_off(keep);
            self.alloc.release(&extra);
        }
    }

    /// Keep the cached tokens `tokens` starts with, but at least its last one is left to
    /// compute (its logits are needed); returns how many are kept.
    pub fn keep_prefix_of(&mut self, tokens: &[u32]) -> usize {
        let common = self
            .cached
            .iter()
            .zip(tokens)
            .take_while(|(a, b)| a == b)
            .count()
            .min(tokens.len().saturating_sub(1));
        self.truncate(common);
        common
    }

    pub fn free_blocks(&self) -> usize {
        self.alloc.free_count()
    }

    /// Append `tokens` (`generated`: tokens the model produced, which take the decode kernels
    /// where a backend tells them apart, `AttnSeq::generated_from`). Returns logits `[rows,
    /// vocab]` for the rows whose index within `tokens` is `>= logits_from`.
    pub fn feed(
        &mut self,
        backend: &B,
        model: &Model<B>,
        tokens: &[u32],
        logits_from: usize,
        generated: bool,
    ) -> Result<&[f32], SessionError> {
        self.feed_head(
            backend,
            model,
            tokens,
            logits_from,
            generated,
            HeadRows::All,
        )
    }

    /// `feed`, the logits from `head` (`[rows, model.head_rows(head)]`).
    pub fn feed_head(
        &mut self,
        backend: &B,
        model: &Model<B>,
        tokens: &[u32],
        logits_from: usize,
        generated: bool,
        head: HeadRows,
    ) -> Result<&[f32], SessionError> {
        let vocab = model.vocab_size();
        if let Some(id) = crate::session::out_of_vocab(tokens, vocab) {
            return Err(SessionError::BadToken { id, vocab });
        }
        let width = model.head_rows(head).unwrap_or(vocab);
        let start = self.cached.len();
        if start + tokens.len() > self.ctx {
            return Err(SessionError::PromptTooLong {
                prompt: start + tokens.len(),
                ctx: self.ctx,
            });
        }
        self.table
            .ensure(start + tokens.len(), BLOCK_SIZE, &mut self.alloc)?;
        let n_logits = tokens.len().saturating_sub(logits_from);
        self.logits.resize(n_logits * width, 0.0);
        let cap = self.scratch.capacity();
        let mut done = 0;
        while done < tokens.len() {
            let n = cap.min(tokens.len() - done);
            let rows: Vec<u32> = (0..n)
                .filter(|&i| done + i >= logits_from)
                .map(|i| i as u32)
                .collect();
            let out_off = (done + rows.first().copied().unwrap_or(0) as usize)
                .saturating_sub(logits_from)
                * width;
            let plan = BatchPlan::single(
                &tokens[done..done + n],
                start + done,
                &self.table.blocks,
                BLOCK_SIZE,
                rows.clone(),
                if generated { start } else { usize::MAX },
            );
            let out = &mut self.logits[out_off..out_off + rows.len() * width];
            model.forward_head(backend, &plan, &mut self.kv, &mut self.scratch, out, head)?;
            self.cached.extend_from_slice(&tokens[done..done + n]);
            done += n;
        }
        Ok(&self.logits)
    }
}
