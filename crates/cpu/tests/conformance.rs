//! The backend conformance suite against the CPU backend, one test per instruction-set level
//! (so that the levels run in parallel), each with the repacked and, where the level repacks,
//! the file-layout weights. A level this machine lacks says so and passes: `every_level_
//! this_machine_has_is_covered` checks that each available level has its test here.

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
    // Candidates are selected here (`top_logits`) for greedy and top-k, not for top-p's mass.
    let count = |op: &str| rep.checks.iter().filter(|c| c.op == op).count();
    assert_eq!(count("top_logits"), 2, "{label}: top_logits checks");
    assert_eq!(
        count("top_logits mass"),
        0,
        "{label}: top_logits mass checks"
    );
    assert!(
        failures.is_empty(),
        "{label}: {} of {} checks failed\n{}",
        failures.len(),
        rep.checks.len(),
        rep.table()
    );
}

/// The levels with a test below.
const TESTED: [Isa; 8] = [
    Isa::Generic,
    Isa::Avx2,
    Isa::Avx2Vnni,
    Isa::Avx512,
    Isa::Amx,
    Isa::Neon,
    Isa::NeonDot,
    Isa::NeonMm,
];

fn conforms(isa: Isa) {
    if !Isa::available().contains(&isa) {
        eprintln!("SKIPPED: this CPU has no {} level", isa.name());
        return;
    }
    let b = CpuBackend::with_isa(Some(2), isa).unwrap();
    let repacks = b.repacks();
    check(&b, isa.name());
    // The file-layout kernels at `neondot` and `neonmm` are `neon`'s, checked by
    // `neon_conforms` (under qemu a second run is slow).
    if repacks && !matches!(isa, Isa::NeonDot | Isa::NeonMm) {
        let b = b.without_repacking();
        check(&b, &format!("{} with file-layout weights", isa.name()));
    }
}

#[test]
fn every_level_this_machine_has_is_covered() {
    for isa in Isa::available() {
        assert!(
            TESTED.contains(&isa),
            "no conformance test for {}",
            isa.name()
        );
    }
}

#[test]
fn generic_conforms() {
    conforms(Isa::Generic);
}

#[test]
fn avx2_conforms() {
    conforms(Isa::Avx2);
}

#[test]
fn avx2vnni_conforms() {
    conforms(Isa::Avx2Vnni);
}

#[test]
fn avx512_conforms() {
    conforms(Isa::Avx512);
}

#[test]
fn amx_conforms() {
    conforms(Isa::Amx);
}

#[test]
fn neon_conforms() {
    conforms(Isa::Neon);
}

#[test]
fn neondot_conforms() {
    conforms(Isa::NeonDot);
}

#[test]
fn neonmm_conforms() {
    conforms(Isa::NeonMm);
}
