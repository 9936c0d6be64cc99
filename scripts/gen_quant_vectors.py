#!/usr/bin/env python3
"""Generate dequantization test vectors with the `gguf` Python package's reference code.

For every supported type: random blocks (scale fields set to finite f16 values) and the
package's dequantization of them. Output: tests/fixtures/quant/<TYPE>.bin (raw blocks) and
<TYPE>.f32 (expected little-endian f32), plus versions.txt. Run once; the files are committed.

    python3 -m venv /tmp/q && /tmp/q/bin/pip install gguf numpy && /tmp/q/bin/python scripts/gen_quant_vectors.py
"""
import importlib.metadata
import pathlib
import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "quant"
SEED = 20261128

# (type, number of blocks, byte offsets of f16 scale fields within a block)
TYPES = [
    (T.Q4_0, 16, [0]),
    (T.Q4_1, 16, [0, 2]),
    (T.Q5_0, 16, [0]),
    (T.Q5_1, 16, [0, 2]),
    (T.Q8_0, 16, [0]),
    (T.Q2_K, 4, [80, 82]),
    (T.Q3_K, 4, [108]),
    (T.Q4_K, 4, [0, 2]),
    (T.Q5_K, 4, [0, 2]),
    (T.Q6_K, 4, [208]),
    (T.IQ4_NL, 16, [0]),
    (T.IQ4_XS, 4, [0]),
]


def main():
    rng = np.random.default_rng(SEED)
    OUT.mkdir(parents=True, exist_ok=True)
    for qtype, nblocks, scale_offsets in TYPES:
        block_elems, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
        raw = rng.integers(0, 256, size=(nblocks, block_bytes), dtype=np.uint8)
        for off in scale_offsets:
            scales = (rng.uniform(0.001, 0.5, size=nblocks) * rng.choice([-1, 1], size=nblocks)).astype(np.float16)
            raw[:, off:off + 2] = scales.view(np.uint8).reshape(nblocks, 2)
        out = dequantize(raw.reshape(-1), qtype).astype("<f4")
        assert out.size == nblocks * block_elems and np.all(np.isfinite(out))
        (OUT / f"{qtype.name}.bin").write_bytes(raw.tobytes())
        (OUT / f"{qtype.name}.f32").write_bytes(out.tobytes())
    # Plain float types.
    vals = rng.normal(0, 3, size=512).astype(np.float32)
    for name, arr in [("F32", vals.astype("<f4")), ("F16", vals.astype("<f2")),
                      ("BF16", (vals.view(np.uint32) >> 16).astype("<u2"))]:
        (OUT / f"{name}.bin").write_bytes(arr.tobytes())
        qtype = getattr(T, name)
        out = dequantize(np.frombuffer(arr.tobytes(), dtype=np.uint8), qtype).astype("<f4")
        (OUT / f"{name}.f32").write_bytes(out.tobytes())
    (OUT / "versions.txt").write_text(f"gguf {importlib.metadata.version('gguf')}\nnumpy {np.__version__}\nseed {SEED}\n")


if __name__ == "__main__":
    main()
