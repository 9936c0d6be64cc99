//! The GPU's dequantization code (`kernels/quant.cuh`), built for the host with the C++ compiler,
//! gives exactly the values of the scalar oracle for every weight type the backend loads — the
//! unit indexing and bit fiddling checked here on any machine, before a GPU ever runs it.

use std::process::Command;
use suanli_backend::conformance::{random_weight, Rng};

#[test]
fn gpu_dequantization_equals_the_oracle_on_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let kernels = concat!(env!("CARGO_MANIFEST_DIR"), "/kernels");
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/host_dequant.cpp");
    let exe = dir.path().join("host_dequant");
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let out = Command::new(&cxx)
        .args(["-O1", "-std=c++17", "-I", kernels, src, "-o"])
        .arg(&exe)
        .output()
        .unwrap_or_else(|e| panic!("running {cxx} (a C++ compiler is needed for this test): {e}"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut rng = Rng::new(7);
    let (rows, cols) = (5usize, 1024usize);
    for (ty, _) in suanli_cuda::WEIGHT_TYPES {
        let bytes = random_weight(ty, rows, cols, &mut rng);
        let rb = ty.row_bytes(cols).unwrap();
        let (inp, outp) = (dir.path().join("w.bin"), dir.path().join("v.bin"));
        std::fs::write(&inp, &bytes).unwrap();
        let st = Command::new(&exe)
            .args([
                ty.ggml_id().to_string(),
                rows.to_string(),
                cols.to_string(),
                rb.to_string(),
            ])
            .arg(&inp)
            .arg(&outp)
            .status()
            .unwrap();
        assert!(st.success(), "{ty}: host_dequant exited with {st}");
        let got: Vec<f32> = std::fs::read(&outp)
            .unwrap()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let mut want = vec![0f32; rows * cols];
        suanli_core::quant::dequantize(ty, &bytes, &mut want).unwrap();
        let bad = got
            .iter()
            .zip(&want)
            .position(|(a, b)| a.to_bits() != b.to_bits());
        assert!(
            bad.is_none(),
            "{ty}: value {} is {} on the GPU path, {} in the oracle",
            bad.unwrap(),
            got[bad.unwrap()],
            want[bad.unwrap()]
        );
        assert_eq!(got.len(), want.len(), "{ty}");
    }
}
