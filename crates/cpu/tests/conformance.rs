//! The backend conformance suite against the CPU backend, at every instruction-set level this
//! machine has (and, on AVX-512, with the repacked and the file-layout weights).

use suanli_backend::conformance;
use suanli_cpu::{kernels::Isa, CpuBackend};

fn check(b: &CpuBackend, label: &str) {
    let rep = conformance::run(b);
    println!("{label}:\n{}", rep.table());
    let failures = rep.failures();
    assert!(
        rep.checks.len() > 100,
        "{label}: only {} checks ran",
        rep.checks.len()
    );
    assert!(
        failures.is_empty(),
        "{label}: {} of {} checks failed\n{}",
        failures.len(),
        rep.checks.len(),
        rep.table()
    );
}

#[test]
fn cpu_backend_conforms_at_every_isa() {
    for isa in Isa::available() {
        let b = CpuBackend::with_isa(Some(2), isa).unwrap();
        let repacks = b.repacks();
        check(&b, isa.name());
        if repacks {
            let b = b.without_repacking();
            check(&b, &format!("{} with file-layout weights", isa.name()));
        }
    }
}
