//! Paged KV memory: a block allocator with reference counts and per-sequence block tables.

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("KV cache is full: {needed} more blocks needed, {free} free of {total}")]
pub struct OutOfBlocks {
    pub needed: usize,
    pub free: usize,
    pub total: usize,
}

pub struct BlockAllocator {
    free: Vec<u32>,
    refs: Vec<u32>,
}

impl BlockAllocator {
    pub fn new(num_blocks: usize) -> BlockAllocator {
        BlockAllocator {
            free: (0..num_blocks as u32).rev().collect(),
            refs: vec![0; num_blocks],
        }
    }

    pub fn total(&self) -> usize {
        self.refs.len()
    }

    pub fn free_count(&self) -> usize {
        self.free.len()
    }

    /// `n` fresh blocks, all or nothing.
    pub fn alloc(&mut self, n: usize) -> Result<Vec<u32>, OutOfBlocks> {
        if n > self.free.len() {
            return Err(OutOfBlocks {
                needed: n,
                free: self.free.len(),
                total: self.total(),
            });
        }
        let at = self.free.len() - n;
        let blocks = self.free.split_off(at);
        for &b in &blocks {
            self.refs[b as usize] = 1;
        }
        Ok(blocks)
    }

    /// Owners of block `b`.
    pub fn refs(&self, b: u32) -> u32 {
        self.refs[b as usize]
    }

    /// Share a block (prefix sharing): one more owner.
    pub fn retain(&mut self, b: u32) {
        self.refs[b as usize] += 1;
    }

    /// Drop one owner of each block; blocks with no owner return to the free list.
    /// Drop one reference to each block (`FREED` entries are skipped).
    pub fn release(&mut self, blocks: &[u32]) {
        for &b in blocks.iter().filter(|&&b| b != FREED) {
            let r = &mut self.refs[b as usize];
            debug_assert!(*r > 0, "double free of KV block {b}");
            *r = r.saturating_sub(1);
            if *r == 0 {
                self.free.push(b);
            }
        }
    }
}

/// A block-table entry whose block was given back: its positions fell out of every layer's
/// sliding window, so no query will read them again.
pub const FREED: u32 = u32::MAX;

/// The blocks of one sequence, in position order.
#[derive(Default, Debug)]
pub struct BlockTable {
    pub blocks: Vec<u32>,
}

impl BlockTable {
    /// Grow so that `len` tokens fit.
    pub fn ensure(
        &mut self,
        len: usize,
        block_size: usize,
        alloc: &mut BlockAllocator,
    ) -> Result<(), OutOfBlocks> {
        let need = len.div_ceil(block_size);
        if need > self.blocks.len() {
            let more = alloc.alloc(need - self.blocks.len())?;
            self.blocks.extend(more);
        }
        Ok(())
    }

    pub fn release(&mut self, alloc: &mut BlockAllocator) {
        alloc.release(&self.blocks);
        self.blocks.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alloc_is_all_or_nothing_and_release_frees() {
        let mut a = BlockAllocator::new(4);
        let mut t = BlockTable::default();
        t.ensure(33, 16, &mut a).unwrap();
        assert_eq!(t.blocks.len(), 3);
        assert_eq!(a.free_count(), 1);
        let mut u = BlockTable::default();
        assert!(u.ensure(40, 16, &mut a).is_err());
        assert_eq!(a.free_count(), 1, "failed allocation must not leak");
        a.retain(t.blocks[0]);
        t.release(&mut a);
        assert_eq!(a.free_count(), 3, "shared block stays allocated");
        a.release(&[0, 1, 2, 3][..0]);
    }
}
