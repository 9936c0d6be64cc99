//! The backend conformance suite on a GPU (`scripts/gpu-check.sh` runs it on the GPU machine).

#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-check.sh"]
fn cuda_backend_conforms() {
    let b = suanli_cuda::CudaBackend::new(0).unwrap_or_else(|e| panic!("{e}"));
    let rep = suanli_backend::conformance::run(&b);
    println!(
        "{}\n{}",
        suanli_backend::Backend::caps(&b).detail,
        rep.table()
    );
    let failures = rep.failures();
    assert!(
        failures.is_empty(),
        "{} of {} checks failed",
        failures.len(),
        rep.checks.len()
    );
}
