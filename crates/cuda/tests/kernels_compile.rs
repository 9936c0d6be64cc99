//! The CUDA kernels compile with NVRTC for the architectures suanli targets, and every kernel the
//! backend loads is in the result. NVRTC needs no GPU; `scripts/test-cuda.sh` puts it on
//! LD_LIBRARY_PATH and runs these (they are ignored by a plain `cargo test`).

const ENTRIES: [&str; 18] = [
    "gather_kv_f32",
    "gather_kv_f16",
    "softmax_causal_f32",
    "softmax_causal_f16",
    "to_f16",
    "rms_norm",
    "rms_norm_groups",
    "rope",
    "silu_mul",
    "add",
    "add_bias",
    "to_bf16",
    "gather_rows",
    "argmax_rows",
    "write_kv_f32",
    "write_kv_f16",
    "attention_f32",
    "attention_f16",
];

fn check_arch(major: i32, minor: i32) {
    let ptx = suanli_cuda::compile(major, minor).unwrap_or_else(|e| panic!("{e}"));
    let typed = suanli_cuda::WEIGHT_TYPES.iter().flat_map(|(_, s)| {
        ["matvec", "matvec3", "dequant_bf16", "embed"].map(|k| format!("{k}_{s}"))
    });
    for name in ENTRIES.iter().map(|s| s.to_string()).chain(typed) {
        assert!(
            ptx.contains(&format!(".entry {name}(")),
            "sm_{major}{minor}: kernel {name} missing from the PTX"
        );
    }
    assert!(
        ptx.contains(&format!(".target sm_{major}{minor}")),
        "PTX not for sm_{major}{minor}"
    );
}

#[test]
#[ignore = "needs NVRTC on LD_LIBRARY_PATH: scripts/test-cuda.sh"]
fn kernels_compile_for_hopper() {
    check_arch(9, 0);
}

#[test]
#[ignore = "needs NVRTC on LD_LIBRARY_PATH: scripts/test-cuda.sh"]
fn kernels_compile_for_ampere_and_ada() {
    check_arch(8, 0);
    check_arch(8, 9);
}
