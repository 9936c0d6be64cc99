//! One view over a model, whatever file format holds it: metadata for the configuration and
//! tensors by their Hugging Face names, with HF shape order (`[out_features, in_features]`).

use crate::bytes::Bytes;
use crate::gguf::{GgufError, GgufFile};
use crate::hf::{HfDir, HfError};
use crate::names::gguf_to_hf;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use suanli_core::DType;

#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub dtype: DType,
    /// Row-major HF order: the last dimension is the contiguous one.
    pub shape: Vec<usize>,
    pub bytes: Bytes,
}

pub enum ModelSource {
    Gguf {
        file: GgufFile,
        by_hf_name: BTreeMap<String, usize>,
    },
    Hf(HfDir),
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error(transparent)]
    Hf(#[from] HfError),
    #[error("{0}: no such file or directory")]
    Missing(PathBuf),
    /// A directory without `config.json`: not a Hugging Face model directory.
    #[error("{}: not a model directory (no config.json){}", .dir.display(), hint(.ggufs))]
    NotAModelDir { dir: PathBuf, ggufs: Vec<String> },
    #[error("{path}: tensor {name:?} has {n} dimensions; at most 4 are supported")]
    TooManyDims {
        path: PathBuf,
        name: String,
        n: usize,
    },
}

pub fn open_model(path: &Path) -> Result<ModelSource, OpenError> {
    if path.is_dir() {
        if !path.join("config.json").exists() {
            return Err(OpenError::NotAModelDir {
                dir: path.to_owned(),
                ggufs: gguf_files_in(path),
            });
        }
        return Ok(ModelSource::Hf(HfDir::open(path)?));
    }
    if !path.exists() {
        return Err(OpenError::Missing(path.to_owned()));
    }
    Ok(ModelSource::from_gguf(GgufFile::open(path)?))
}

/// The `.gguf` files directly in `dir`, sorted by name.
fn gguf_files_in(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension()
                .is_some_and(|x| x.eq_ignore_ascii_case("gguf"))
        })
        .map(|p| p.display().to_string())
        .collect();
    out.sort();
    out
}

/// What to try instead of a directory that is not a model.
fn hint(ggufs: &[String]) -> String {
    match ggufs {
        [] => "; a model is a GGUF file, or a Hugging Face directory with config.json and \
               *.safetensors"
            .into(),
        [one] => format!("; it holds a GGUF file: --model {one}"),
        many => format!(
            "; it holds {} GGUF files ({}): pass one of them",
            many.len(),
            many.iter().take(4).cloned().collect::<Vec<_>>().join(", ")
        ),
    }
}

impl ModelSource {
    /// A parsed GGUF file as a model source (tensors found by their Hugging Face names).
    pub fn from_gguf(file: GgufFile) -> ModelSource {
        let arch = gguf_arch(&file);
        let mut by_hf_name = BTreeMap::new();
        for (i, t) in file.tensors.iter().enumerate() {
            if let Some(hf) = gguf_to_hf_in(&arch, &t.name) {
                by_hf_name.insert(hf, i);
            }
        }
        ModelSource::Gguf { file, by_hf_name }
    }

    pub fn path(&self) -> &Path {
        match self {
            ModelSource::Gguf { file, .. } => &file.path,
            ModelSource::Hf(d) => &d.dir,
        }
    }

    pub fn is_gguf(&self) -> bool {
        matches!(self, ModelSource::Gguf { .. })
    }

    pub fn gguf(&self) -> Option<&GgufFile> {
        match self {
            ModelSource::Gguf { file, .. } => Some(file),
            ModelSource::Hf(_) => None,
        }
    }

    /// A tensor by its HF name.
    pub fn tensor(&self, hf_name: &str) -> Option<TensorInfo> {
        match self {
            ModelSource::Gguf { file, by_hf_name } => {
                let t = &file.tensors[*by_hf_name.get(hf_name)?];
                Some(TensorInfo {
                    dtype: t.dtype,
                    shape: t.dims.iter().rev().map(|&d| d as usize).collect(),
                    bytes: file.tensor_bytes(t),
                })
            }
            ModelSource::Hf(d) => {
                let t = d.tensors.get(hf_name)?;
                Some(TensorInfo {
                    dtype: t.dtype,
                    shape: t.shape.clone(),
                    bytes: t.bytes.clone(),
                })
            }
        }
    }

    /// The HF names of every tensor the file holds that has one.
    pub fn tensor_names(&self) -> Vec<String> {
        match self {
            ModelSource::Gguf { by_hf_name, .. } => by_hf_name.keys().cloned().collect(),
            ModelSource::Hf(d) => d.tensors.keys().cloned().collect(),
        }
    }

    /// GGUF tensors whose names this crate does not know (none for an HF directory).
    pub fn unknown_tensors(&self) -> Vec<String> {
        match self {
            ModelSource::Gguf { file, .. } => file
                .tensors
                .iter()
                .filter(|t| gguf_to_hf(&t.name).is_none())
                .map(|t| t.name.clone())
                .collect(),
            ModelSource::Hf(_) => Vec::new(),
        }
    }

    /// All tensors as (file name, HF name if known, info), in file order.
    pub fn tensor_table(&self) -> Vec<(String, Option<String>, TensorInfo)> {
        match self {
            ModelSource::Gguf { file, .. } => {
                let arch = gguf_arch(file);
                file.tensors
                    .iter()
                    .map(|t| {
                        let info = TensorInfo {
                            dtype: t.dtype,
                            shape: t.dims.iter().rev().map(|&d| d as usize).collect(),
                            bytes: file.tensor_bytes(t),
                        };
                        (t.name.clone(), gguf_to_hf_in(&arch, &t.name), info)
                    })
                    .collect()
            }
            ModelSource::Hf(d) => d
                .tensors
                .iter()
                .map(|(n, t)| {
                    (
                        n.clone(),
                        Some(n.clone()),
                        TensorInfo {
                            dtype: t.dtype,
                            shape: t.shape.clone(),
                            bytes: t.bytes.clone(),
                        },
                    )
                })
                .collect(),
        }
    }
}

fn gguf_arch(file: &GgufFile) -> String {
    file.get("general.architecture")
        .and_then(|v| v.as_str())
        .unwrap_or("")
        .to_owned()
}

/// `gguf_to_hf` with the names that mean something else in one architecture's HF checkpoints.
fn gguf_to_hf_in(arch: &str, name: &str) -> Option<String> {
    let hf = gguf_to_hf(name)?;
    Some(match arch {
        // GLM-4 stores its fused gate/up projection under ffn_up.
        "glm4" => hf.replace("mlp.up_proj", "mlp.gate_up_proj"),
        // Gemma's four norms per layer under its own HF names (its post_attention_layernorm
        // follows attention; pre_feedforward_layernorm precedes the MLP).
        "gemma3" => {
            let (stem, part) = hf.rsplit_once(".layers.").map_or((hf.as_str(), ""), |x| x);
            let (layer, rest) = part.split_once('.').unwrap_or(("", part));
            let renamed = match rest {
                "post_attention_layernorm.weight" => "pre_feedforward_layernorm.weight",
                "post_self_attn_layernorm.weight" => "post_attention_layernorm.weight",
                "post_mlp_layernorm.weight" => "post_feedforward_layernorm.weight",
                _ => return Some(hf),
            };
            format!("{stem}.layers.{layer}.{renamed}")
        }
        _ => hf,
    })
}
