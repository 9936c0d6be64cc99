#!/usr/bin/env python3
"""Print vLLM's KV block hashes for the vectors in crates/engine/src/kv_events.rs.

vLLM hashes a block as sha256(cbor2.dumps((parent, tuple(token_ids), extra_keys),
canonical=True)) (vllm/utils/hashing.py sha256_cbor, vllm/v1/core/kv_cache_utils.py
hash_block_tokens); the first block's parent is sha256_cbor(PYTHONHASHSEED) (init_none_hash).
Needs `pip install cbor2`.
"""
import hashlib

import cbor2


def h(obj):
    return hashlib.sha256(cbor2.dumps(obj, canonical=True)).digest()


root = h("0")
b0 = h((root, tuple(range(16)), None))
b1 = h((b0, (23, 24, 255, 256, 65535, 65536, 151643, 4294967295), None))
for name, v in (("root", root), ("b0", b0), ("b1", b1)):
    print(name, v.hex())
