//! `suanli check-backend`: the backend conformance suite and the golden tiny models (transformers'
//! logits, `tests/fixtures/tiny`) on the chosen `--device` — what a new machine or backend must
//! pass. Prints one table; exits 1 if anything fails.

use crate::load::Hardware;
use anyhow::{bail, Result};
use clap::Args;
use std::path::PathBuf;
use suanli_backend::KvDType;

#[derive(Args)]
pub struct CheckArgs {
    /// Folder of golden tiny models (each `ARCH/` with golden.json, logits.f32, the HF files
    /// and model.gguf); empty skips them.
    #[arg(long, default_value = "tests/fixtures/tiny")]
    pub golden: PathBuf,
}

/// |Δlogit| relative to the largest |logit| of the position set: the CPU is within 3e-6 of
/// transformers (f32); 2e-3 leaves room for bf16 tensor-core products on a GPU.
const GOLDEN_REL_TOL: f64 = 2e-3;

pub fn check_backend(a: CheckArgs, opts: &crate::load::Opts) -> Result<()> {
    crate::on_device!(opts, check_on(a, opts))
}

fn check_on<B: Hardware>(a: CheckArgs, opts: &crate::load::Opts) -> Result<()> {
    let backend = B::open(opts)?;
    crate::outln!("{}: {}", backend.caps().name, backend.caps().detail);
    let rep = suanli_backend::conformance::run(&backend);
    crate::outln!("{}", rep.table());
    let mut failed = rep.failures().len();
    let mut golden = 0;
    let mut skipped = 0;
    if !a.golden.as_os_str().is_empty() {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(&a.golden)
            .map_err(|e| anyhow::anyhow!("{}: {e}", a.golden.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.join("golden.json").exists())
            .collect();
        dirs.sort();
        let kv = if backend.caps().kv_dtypes.contains(&KvDType::F32) {
            KvDType::F32
        } else {
            opts.kv
        };
        for dir in dirs {
            for file in [dir.clone(), dir.join("model.gguf")] {
                if !file.exists() {
                    continue;
                }
                let shown = file.strip_prefix(&a.golden).unwrap_or(&file).display();
                let (err, tol) = match golden_error::<B>(&file, &dir, opts, kv) {
                    Ok(r) => r,
                    Err(e) if unsupported(&e) => {
                        // A feature this backend lacks (and refuses at load): neither passed
                        // nor failed.
                        crate::outln!("{:<16} {:<44} unsupported: {e:#}", "golden", shown);
                        skipped += 1;
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                golden += 1;
                let ok = err <= tol;
                failed += usize::from(!ok);
                crate::outln!(
                    "{:<16} {:<44} {:>11.3e} {:>11.3e}  {}",
                    "golden",
                    shown,
                    err,
                    tol,
                    if ok { "ok" } else { "FAILED" }
                );
            }
        }
    }
    crate::outln!(
        "{} passed, {} failed{}",
        rep.checks.len() + golden - failed,
        failed,
        if skipped > 0 {
            format!(", {skipped} unsupported by this backend")
        } else {
            String::new()
        }
    );
    if failed > 0 {
        bail!("{failed} check(s) failed on {}", backend.caps().detail);
    }
    Ok(())
}

/// Logits at every position of the golden input against transformers'.
fn golden_error<B: Hardware>(
    file: &std::path::Path,
    dir: &std::path::Path,
    opts: &crate::load::Opts,
    kv: KvDType,
) -> Result<(f64, f64)> {
    let g: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("golden.json"))?)?;
    let ids: Vec<u32> = g["ids"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_u64())
                .map(|v| v as u32)
                .collect()
        })
        .unwrap_or_default();
    let want: Vec<f32> = std::fs::read(dir.join("logits.f32"))?
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let src = suanli_formats::open_model(file)?;
    let backend = B::open(opts)?;
    let model = suanli_models::Model::load(&src, &backend)?;
    // A small prefill chunk so that chunked prefill over the paged cache is exercised.
    let mut s = suanli_engine::Session::with_kv(backend, model, 128, 5, kv)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let got = s.feed(&ids, 0)?.to_vec();
    if got.len() != want.len() {
        bail!(
            "{}: {} logits, the golden file has {}",
            file.display(),
            got.len(),
            want.len()
        );
    }
    let scale = want.iter().map(|v| v.abs() as f64).fold(1e-30, f64::max);
    let err = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (*a as f64 - *b as f64).abs())
        .fold(0.0, f64::max)
        / scale;
    Ok((err, GOLDEN_REL_TOL))
}

/// The model needs a feature the backend says it lacks.
fn unsupported(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<suanli_models::LoadError>(),
            Some(suanli_models::LoadError::Backend {
                source: suanli_backend::BackendError::Unsupported { .. },
                ..
            })
        )
    })
}
