//! KV-cache events: the blocks the prefix cache stores and evicts, named as vLLM names them, so
//! routers that follow vLLM's event stream (vllm-router's `kv_aware`, llm-d's KV-cache
//! manager) follow suanli's cache too. The scheduler records; the server publishes.
//!
//! Block hashes are vLLM's `sha256_cbor` chain: a block's hash is SHA-256 over the canonical
//! CBOR of `[parent hash, [token ids…], null]` (the null is vLLM's absent extra keys: no LoRA,
//! no images, no cache salt). The first block's parent is the seed's hash, `sha256(cbor(seed))`
//! — vLLM takes the seed from `PYTHONHASHSEED` — or 32 random bytes when there is no seed, so
//! equal prompts get equal hashes across replicas only when they share a seed.

use sha2::{Digest, Sha256};
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

pub type BlockHash = [u8; 32];

/// One change to the prefix cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvEvent {
    /// Consecutive blocks of one prompt were cached: `hashes[i]` holds
    /// `tokens[i * block_size..][..block_size]`; the first one's parent is `parent` (`None`:
    /// the prompt's first block).
    Stored {
        hashes: Vec<BlockHash>,
        parent: Option<BlockHash>,
        tokens: Vec<u32>,
    },
    /// Blocks were evicted.
    Removed { hashes: Vec<BlockHash> },
    /// Everything cached is gone.
    AllCleared,
}

/// vLLM's block-hash chain (`sha256_cbor`).
#[derive(Clone, Debug)]
pub struct BlockHasher {
    /// The first block's parent (vLLM's `NONE_HASH`).
    root: BlockHash,
}

impl BlockHasher {
    /// The chain vLLM computes with `PYTHONHASHSEED=seed`.
    pub fn seeded(seed: &str) -> BlockHasher {
        let mut cbor = Vec::with_capacity(seed.len() + 9);
        cbor_head(&mut cbor, 3, seed.len() as u64);
        cbor.extend_from_slice(seed.as_bytes());
        BlockHasher {
            root: Sha256::digest(&cbor).into(),
        }
    }

    /// A chain of this process alone (vLLM without `PYTHONHASHSEED`).
    pub fn unseeded() -> BlockHasher {
        // Four independently keyed SipHashes: std draws their keys from the OS.
        let mut root = [0u8; 32];
        for (i, part) in root.chunks_exact_mut(8).enumerate() {
            part.copy_from_slice(&RandomState::new().hash_one(i).to_le_bytes());
        }
        BlockHasher { root }
    }

    /// The hash of the block holding `tokens` after the block hashed `parent` (`None`: first).
    pub fn hash(&self, parent: Option<&BlockHash>, tokens: &[u32]) -> BlockHash {
        let mut cbor = Vec::with_capacity(40 + tokens.len() * 5);
        cbor_head(&mut cbor, 4, 3);
        cbor_head(&mut cbor, 2, 32);
        cbor.extend_from_slice(parent.unwrap_or(&self.root));
        cbor_head(&mut cbor, 4, tokens.len() as u64);
        for &t in tokens {
            cbor_head(&mut cbor, 0, t as u64);
        }
        cbor.push(0xf6); // null: no extra keys
        Sha256::digest(&cbor).into()
    }
}

/// The scheduler's record of its prefix cache, in events, until the server takes them.
#[derive(Debug)]
pub struct EventLog {
    pub hasher: BlockHasher,
    /// The vLLM hash of each cached block, by the scheduler's own key.
    pub hashes: std::collections::HashMap<u64, BlockHash>,
    pending: Vec<KvEvent>,
}

impl EventLog {
    /// A log whose first event says the cache starts empty (a restarted replica's subscribers
    /// drop what they knew of it).
    pub fn new(hasher: BlockHasher) -> EventLog {
        EventLog {
            hasher,
            hashes: Default::default(),
            pending: vec![KvEvent::AllCleared],
        }
    }

    /// Block `hash` (holding `tokens`, after `parent`) was cached. It extends the last event
    /// when that one stored its parent, so a prompt's blocks travel as one chain.
    pub fn stored(&mut self, parent: Option<BlockHash>, hash: BlockHash, block: &[u32]) {
        if let Some(KvEvent::Stored { hashes, tokens, .. }) = self.pending.last_mut() {
            if parent.is_some() && hashes.last() == parent.as_ref() {
                hashes.push(hash);
                tokens.extend_from_slice(block);
                return;
            }
        }
        self.pending.push(KvEvent::Stored {
            hashes: vec![hash],
            parent,
            tokens: block.to_vec(),
        });
    }

    /// Block `hash` was evicted.
    pub fn removed(&mut self, hash: BlockHash) {
        if let Some(KvEvent::Removed { hashes }) = self.pending.last_mut() {
            hashes.push(hash);
            return;
        }
        self.pending.push(KvEvent::Removed { hashes: vec![hash] });
    }

    /// The events so far, oldest first.
    pub fn take(&mut self) -> Vec<KvEvent> {
        std::mem::take(&mut self.pending)
    }
}

/// A CBOR item head in its shortest form (RFC 8949 §4.2.1, which `cbor2`'s canonical mode uses).
fn cbor_head(out: &mut Vec<u8>, major: u8, n: u64) {
    let m = major << 5;
    match n {
        0..=23 => out.push(m | n as u8),
        24..=0xff => out.extend_from_slice(&[m | 24, n as u8]),
        0x100..=0xffff => {
            out.push(m | 25);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(m | 26);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        }
        _ => {
            out.push(m | 27);
            out.extend_from_slice(&n.to_be_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(h: &BlockHash) -> String {
        h.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Reference values from Python, as vLLM computes them (`vllm/utils/hashing.py`
    /// `sha256_cbor`, `kv_cache_utils.py` `init_none_hash` / `hash_block_tokens`):
    /// ```python
    /// import cbor2, hashlib
    /// h = lambda o: hashlib.sha256(cbor2.dumps(o, canonical=True)).digest()
    /// root = h("0")
    /// b0 = h((root, tuple(range(16)), None))
    /// b1 = h((b0, (23, 24, 255, 256, 65535, 65536, 151643, 4294967295), None))
    /// ```
    /// (`scripts/kv-hash-vectors.py` prints them.)
    #[test]
    fn the_chain_is_vllms_sha256_cbor() {
        let h = BlockHasher::seeded("0");
        assert_eq!(
            hex(&h.root),
            "4e1195df020de59e0d65a33a4279f1183e7ae4e5d980e309f8b55adff2e61c3e"
        );
        let b0 = h.hash(None, &(0..16).collect::<Vec<u32>>());
        assert_eq!(
            hex(&b0),
            "d830de3d42c00f25a2949b5d12d98642664a44872c1614c5b0147556276afc9c"
        );
        let b1 = h.hash(
            Some(&b0),
            &[23, 24, 255, 256, 65535, 65536, 151643, u32::MAX],
        );
        assert_eq!(
            hex(&b1),
            "683fb24bc52ec4e7d64c2ed8dd0662080525ce197148d117513fa4cbf535b41b"
        );
    }

    #[test]
    fn unseeded_chains_differ_between_hashers() {
        let (a, b) = (BlockHasher::unseeded(), BlockHasher::unseeded());
        assert_ne!(a.root, b.root);
        assert_ne!(a.hash(None, &[1, 2]), b.hash(None, &[1, 2]));
        assert_eq!(a.hash(None, &[1, 2]), a.hash(None, &[1, 2]));
    }
}
