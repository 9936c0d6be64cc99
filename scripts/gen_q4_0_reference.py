#!/usr/bin/env python3
"""Q4_0 blocks from the `gguf` package's quantizer (llama.cpp's gguf-py), the oracle for
`suanli_core::quant::q4::quantize_q4_0`. Prints the expected bytes of the blocks the Rust
test builds the same way: value j of block b is f32(m - 31) * f32(scale_b), with
m = (j * 37 + b * 11) % 64, every product a single f32 rounding on both sides.

    PYTHONPATH=llama.cpp/gguf-py python3 scripts/gen_q4_0_reference.py
"""
import numpy as np
from gguf.quants import Q4_0

SCALES = [0.37, -1.9, 1e-3, 250.0, 0.0, 3.1e-6]
blocks = []
for b, s in enumerate(SCALES):
    m = (np.arange(32) * 37 + b * 11) % 64
    blocks.append((m - 31).astype(np.float32) * np.float32(s))
q = Q4_0.quantize_blocks(np.stack(blocks).astype(np.float32))
for row in q:
    print('"' + bytes(row).hex() + '",')
