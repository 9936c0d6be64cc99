//! Hugging Face model directories: `config.json` and single or sharded `*.safetensors`.
//! The safetensors header is parsed and validated here (sizes, offsets, overlaps) rather than trusted.

use crate::bytes::Bytes;
use serde_json::Value as Json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use suanli_core::DType;

const MAX_HEADER: u64 = 100 << 20;

#[derive(Debug, thiserror::Error)]
#[error("{path}: {problem}")]
pub struct HfError {
    pub path: PathBuf,
    pub problem: String,
}

fn err(path: &Path, problem: impl Into<String>) -> HfError {
    HfError {
        path: path.to_owned(),
        problem: problem.into(),
    }
}

#[derive(Clone, Debug)]
pub struct StTensor {
    pub dtype: DType,
    /// Shape in row-major order (HF order: `[out, in]` for linear weights).
    pub shape: Vec<usize>,
    pub bytes: Bytes,
}

pub struct HfDir {
    pub dir: PathBuf,
    pub config: Json,
    pub tensors: BTreeMap<String, StTensor>,
}

impl HfDir {
    pub fn open(dir: &Path) -> Result<HfDir, HfError> {
        let cfg_path = dir.join("config.json");
        let text = std::fs::read_to_string(&cfg_path)
            .map_err(|e| err(&cfg_path, format!("cannot read: {e}")))?;
        let config: Json = serde_json::from_str(&text)
            .map_err(|e| err(&cfg_path, format!("invalid JSON: {e}")))?;
        let files = shard_files(dir)?;
        let mut tensors = BTreeMap::new();
        for f in files {
            for (name, t) in read_safetensors(&f)? {
                if tensors.insert(name.clone(), t).is_some() {
                    return Err(err(
                        &f,
                        format!("tensor {name:?} appears in more than one shard"),
                    ));
                }
            }
        }
        Ok(HfDir {
            dir: dir.to_owned(),
            config,
            tensors,
        })
    }
}

fn shard_files(dir: &Path) -> Result<Vec<PathBuf>, HfError> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index)
            .map_err(|e| err(&index, format!("cannot read: {e}")))?;
        let json: Json =
            serde_json::from_str(&text).map_err(|e| err(&index, format!("invalid JSON: {e}")))?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| err(&index, "missing \"weight_map\" object"))?;
        let mut files: Vec<String> = map
            .values()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect();
        files.sort();
        files.dedup();
        let mut out = Vec::new();
        for f in files {
            if f.contains('/') || f.contains('\\') || f.starts_with('.') {
                return Err(err(
                    &index,
                    format!("shard name {f:?} is not a plain file name"),
                ));
            }
            out.push(dir.join(f));
        }
        return Ok(out);
    }
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    Err(err(
        dir,
        "no model.safetensors or model.safetensors.index.json in this directory",
    ))
}

/// Read and validate one safetensors file.
pub fn read_safetensors(path: &Path) -> Result<Vec<(String, StTensor)>, HfError> {
    let bytes = Bytes::map_file(path).map_err(|e| err(path, format!("cannot read: {e}")))?;
    parse_safetensors(path, &bytes)
}

pub fn parse_safetensors(path: &Path, bytes: &Bytes) -> Result<Vec<(String, StTensor)>, HfError> {
    let b = bytes.as_slice();
    if b.len() < 8 {
        return Err(err(
            path,
            "file is shorter than the 8-byte safetensors header length",
        ));
    }
    let n = u64::from_le_bytes(b[..8].try_into().expect("8 bytes"));
    if n > MAX_HEADER || n > (b.len() - 8) as u64 {
        return Err(err(
            path,
            format!("header length {n} exceeds the file size or the 100 MB limit"),
        ));
    }
    let header =
        std::str::from_utf8(&b[8..8 + n as usize]).map_err(|_| err(path, "header is not UTF-8"))?;
    let json: Json = serde_json::from_str(header)
        .map_err(|e| err(path, format!("header is not valid JSON: {e}")))?;
    let obj = json
        .as_object()
        .ok_or_else(|| err(path, "header is not a JSON object"))?;
    let data_start = 8 + n as usize;
    let data_len = b.len() - data_start;
    let mut out = Vec::new();
    let mut ranges = Vec::new();
    for (name, info) in obj {
        if name == "__metadata__" {
            let strings = info
                .as_object()
                .is_some_and(|m| m.values().all(|v| v.is_string()));
            if !strings {
                return Err(err(path, "__metadata__ must map names to strings"));
            }
            continue;
        }
        let bad = |why: String| err(path, format!("tensor {}: {why}", crate::gguf::shown(name)));
        let dtype_s = info
            .get("dtype")
            .and_then(|v| v.as_str())
            .ok_or_else(|| bad("missing dtype".into()))?;
        let dtype = match dtype_s {
            "F32" => DType::F32,
            "F16" => DType::F16,
            "BF16" => DType::BF16,
            other => {
                return Err(bad(format!(
                    "dtype {other} is not supported (F32, F16, BF16 are)"
                )))
            }
        };
        let shape: Vec<usize> = info
            .get("shape")
            .and_then(|v| v.as_array())
            .ok_or_else(|| bad("missing shape".into()))?
            .iter()
            .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
            .collect::<Option<_>>()
            .ok_or_else(|| bad("shape has a non-integer dimension".into()))?;
        let offs = info
            .get("data_offsets")
            .and_then(|v| v.as_array())
            .filter(|a| a.len() == 2)
            .ok_or_else(|| bad("data_offsets must be a pair".into()))?;
        let (start, end) = match (offs[0].as_u64(), offs[1].as_u64()) {
            (Some(s), Some(e)) if s <= e && e as usize <= data_len => (s as usize, e as usize),
            _ => {
                return Err(bad(format!(
                    "data_offsets {offs:?} are outside the {data_len} data bytes"
                )))
            }
        };
        let elems = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        let need = elems.and_then(|e| e.checked_mul(dtype.block_bytes()));
        if need != Some(end - start) {
            return Err(bad(format!(
                "shape {shape:?} of {dtype} does not match its {} data bytes",
                end - start
            )));
        }
        ranges.push((start, end, name.clone()));
        let bytes = bytes
            .slice(data_start + start..data_start + end)
            .expect("checked above");
        out.push((
            name.clone(),
            StTensor {
                dtype,
                shape,
                bytes,
            },
        ));
    }
    // The tensors must tile the data exactly: no overlap (two names sharing bytes), no gap,
    // nothing after the last one (a polyglot file hiding other content).
    ranges.sort();
    let mut covered = 0;
    for (start, end, name) in &ranges {
        let name = crate::gguf::shown(name);
        if *start < covered {
            return Err(err(
                path,
                format!("tensor {name} overlaps the one before it"),
            ));
        }
        if *start > covered {
            return Err(err(
                path,
                format!("{} unused bytes before tensor {name}", start - covered),
            ));
        }
        covered = *end;
    }
    if covered != data_len {
        return Err(err(
            path,
            format!(
                "{} bytes after the last tensor belong to no tensor",
                data_len - covered
            ),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
