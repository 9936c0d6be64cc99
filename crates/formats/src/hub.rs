//! Models on the Hugging Face hub: `hf:org/repo/file.gguf` (one GGUF file) or `hf:org/repo`
//! (a safetensors layout). Files go through `hf-hub` and its standard cache
//! (`$HF_HOME/hub`, default `~/.cache/huggingface/hub`), so existing downloads are reused and
//! nothing is fetched when the cache already holds a file.

use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo};
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("{0:?} is not a hub reference; use hf:ORG/REPO or hf:ORG/REPO/FILE.gguf")]
    BadRef(String),
    #[error("cannot fetch {file} from the Hugging Face hub repository {repo}: {reason}. It is not in the local cache ({cache}) either; check the name and your network, or download it elsewhere and pass its path")]
    Fetch {
        repo: String,
        file: String,
        reason: String,
        cache: String,
    },
}

/// Files a safetensors model directory needs (the weights are added after reading the index).
const HF_DIR_FILES: &[(&str, bool)] = &[
    ("config.json", true),
    ("tokenizer.json", true),
    ("tokenizer_config.json", false),
    ("generation_config.json", false),
];

/// `hf:org/repo[/file]` → (repo id, file).
pub fn parse(spec: &str) -> Result<(String, Option<String>), HubError> {
    let rest = spec
        .strip_prefix("hf:")
        .ok_or_else(|| HubError::BadRef(spec.into()))?;
    let parts: Vec<&str> = rest.splitn(3, '/').collect();
    if parts.len() < 2
        || parts
            .iter()
            .any(|p| p.is_empty() || *p == ".." || *p == ".")
    {
        return Err(HubError::BadRef(spec.into()));
    }
    Ok((
        format!("{}/{}", parts[0], parts[1]),
        parts.get(2).map(|s| s.to_string()),
    ))
}

fn fetch(repo_id: &str, file: &str, required: bool) -> Result<Option<PathBuf>, HubError> {
    let cache = Cache::from_env();
    if let Some(p) = cache.repo(Repo::model(repo_id.to_owned())).get(file) {
        return Ok(Some(p));
    }
    let err = |reason: String| HubError::Fetch {
        repo: repo_id.into(),
        file: file.into(),
        reason,
        cache: cache.path().display().to_string(),
    };
    let api = ApiBuilder::from_env()
        .with_progress(true)
        .build()
        .map_err(|e| err(e.to_string()))?;
    match api.model(repo_id.to_owned()).get(file) {
        Ok(p) => Ok(Some(p)),
        Err(e) if required => Err(err(e.to_string())),
        Err(_) => Ok(None),
    }
}

/// Resolve a hub reference to a local GGUF file or model directory, downloading what is missing.
pub fn resolve(spec: &str) -> Result<PathBuf, HubError> {
    let (repo, file) = parse(spec)?;
    if let Some(f) = file {
        return Ok(fetch(&repo, &f, true)?.expect("required"));
    }
    let mut dir = None;
    for (f, required) in HF_DIR_FILES {
        if let Some(p) = fetch(&repo, f, *required)? {
            dir = p.parent().map(|d| d.to_owned());
        }
    }
    match fetch(&repo, "model.safetensors.index.json", false)? {
        Some(index) => {
            let text = std::fs::read_to_string(&index).map_err(|e| HubError::Fetch {
                repo: repo.clone(),
                file: "model.safetensors.index.json".into(),
                reason: e.to_string(),
                cache: String::new(),
            })?;
            let json: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            let mut shards: Vec<String> = json["weight_map"]
                .as_object()
                .map(|m| {
                    m.values()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            shards.sort();
            shards.dedup();
            for s in shards {
                fetch(&repo, &s, true)?;
            }
        }
        None => {
            fetch(&repo, "model.safetensors", true)?;
        }
    }
    Ok(dir.expect("config.json is required"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_references() {
        assert_eq!(
            parse("hf:Qwen/Qwen2.5-0.5B").unwrap(),
            ("Qwen/Qwen2.5-0.5B".into(), None)
        );
        assert_eq!(
            parse("hf:a/b/sub/x.gguf").unwrap(),
            ("a/b".into(), Some("sub/x.gguf".into()))
        );
        assert!(parse("hf:a").is_err());
        assert!(parse("hf:a/../x").is_err());
        assert!(parse("a/b").is_err());
    }
}
