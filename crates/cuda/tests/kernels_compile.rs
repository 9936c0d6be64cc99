//! The CUDA kernels compile with NVRTC for the architectures suanli targets, and every kernel the
//! backend loads is in the result. NVRTC needs no GPU; `scripts/test-cuda.sh` puts it on
//! LD_LIBRARY_PATH and runs these (they are ignored by a plain `cargo test`).

fn check_arch(major: i32, minor: i32) {
    let ptx = suanli_cuda::compile(major, minor).unwrap_or_else(|e| panic!("{e}"));
    for name in suanli_cuda::kernel_names() {
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
