//! Request bodies, read field by field from JSON so that every wrong value gets a 400 that
//! names its parameter (a derive would answer "invalid type at line 1 column 57"). Unknown
//! fields are ignored, as OpenAI clients send fields this server has no use for; `null` is
//! the same as absent.

use super::error::ApiError;
use serde_json::{Map, Value};
use suanli_engine::SamplingParams;

/// Most choices (`n`) per request, and most alternatives per token (`top_logprobs`).
pub const MAX_N: usize = 16;
pub const MAX_TOP_LOGPROBS: usize = 20;
pub const MAX_STOPS: usize = 16;

pub struct Body(pub Map<String, Value>);

impl Body {
    pub fn parse(bytes: &[u8]) -> Result<Body, ApiError> {
        match serde_json::from_slice::<Value>(bytes) {
            Ok(Value::Object(m)) => Ok(Body(m)),
            Ok(_) => Err(ApiError::invalid("the request body must be a JSON object")),
            Err(e) => Err(ApiError::invalid(format!(
                "the request body is not valid JSON: {e}"
            ))),
        }
    }

    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name).filter(|v| !v.is_null())
    }

    pub fn f32_in(&self, name: &str, lo: f64, hi: f64) -> Result<Option<f32>, ApiError> {
        let Some(v) = self.get(name) else {
            return Ok(None);
        };
        match v.as_f64() {
            Some(x) if (lo..=hi).contains(&x) => Ok(Some(x as f32)),
            Some(x) => Err(ApiError::param(
                name,
                format!("`{name}` must be between {lo} and {hi}, got {x}"),
            )),
            None => Err(ApiError::param(name, format!("`{name}` must be a number"))),
        }
    }

    pub fn int_in(&self, name: &str, lo: i64, hi: i64) -> Result<Option<i64>, ApiError> {
        let Some(v) = self.get(name) else {
            return Ok(None);
        };
        let x = v.as_i64().or_else(|| {
            // 3.0 is an integer; 3.5 and 1e300 are not.
            v.as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                .map(|f| f as i64)
        });
        match x {
            Some(x) if (lo..=hi).contains(&x) => Ok(Some(x)),
            Some(x) => Err(ApiError::param(
                name,
                format!("`{name}` must be between {lo} and {hi}, got {x}"),
            )),
            None => Err(ApiError::param(
                name,
                format!("`{name}` must be an integer"),
            )),
        }
    }

    pub fn bool(&self, name: &str) -> Result<Option<bool>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(ApiError::param(
                name,
                format!("`{name}` must be true or false"),
            )),
        }
    }

    pub fn string(&self, name: &str) -> Result<Option<&str>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(ApiError::param(name, format!("`{name}` must be a string"))),
        }
    }
}

/// What both endpoints ask of a generation.
pub struct GenParams {
    pub sampling: SamplingParams,
    /// `None`: up to the end of the context.
    pub max_tokens: Option<usize>,
    pub stop: Vec<String>,
    pub n: usize,
    /// Alternatives per token when log-probabilities are asked for.
    pub logprobs: Option<usize>,
    /// The same for the prompt's tokens (completions with `echo`).
    pub prompt_logprobs: Option<usize>,
    pub stream: bool,
    pub include_usage: bool,
    /// Completions: the prompt's text comes first in the answer.
    pub echo: bool,
    /// What each choice's answer must match (each gets its own matcher).
    pub constraint: Option<suanli_constrain::Compiled>,
}

/// The fields shared by chat and completions. `vocab`: for `logit_bias` ids; `max_ctx`: the
/// penalties look back over the whole context.
pub fn gen_params(b: &Body, vocab: usize, max_ctx: usize) -> Result<GenParams, ApiError> {
    // OpenAI's defaults: temperature 1, nucleus off; top_k and min_p off unless asked.
    let mut s = SamplingParams {
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
        min_p: 0.0,
        repeat_penalty: 1.0,
        presence_penalty: 0.0,
        frequency_penalty: 0.0,
        penalty_last_n: max_ctx,
        seed: None,
        logit_bias: Vec::new(),
    };
    if let Some(t) = b.f32_in("temperature", 0.0, 2.0)? {
        s.temperature = t;
    }
    if let Some(p) = b.f32_in("top_p", 0.0, 1.0)? {
        if p <= 0.0 {
            return Err(ApiError::param("top_p", "`top_p` must be greater than 0"));
        }
        s.top_p = p;
    }
    // -1 means "off" in vLLM and llama.cpp.
    if let Some(k) = b.int_in("top_k", -1, 1 << 31)? {
        s.top_k = k.max(0) as usize;
    }
    if let Some(p) = b.f32_in("min_p", 0.0, 1.0)? {
        s.min_p = p;
    }
    if let Some(p) = b.f32_in("presence_penalty", -2.0, 2.0)? {
        s.presence_penalty = p;
    }
    if let Some(p) = b.f32_in("frequency_penalty", -2.0, 2.0)? {
        s.frequency_penalty = p;
    }
    if let Some(p) = b.f32_in("repetition_penalty", 0.0, 10.0)? {
        if p <= 0.0 {
            return Err(ApiError::param(
                "repetition_penalty",
                "`repetition_penalty` must be greater than 0",
            ));
        }
        s.repeat_penalty = p;
    }
    if let Some(seed) = b.int_in("seed", i64::MIN, i64::MAX)? {
        s.seed = Some(seed as u64);
    }
    s.logit_bias = logit_bias(b, vocab)?;
    let max_tokens = match b.int_in("max_completion_tokens", 1, i64::MAX)? {
        Some(m) => Some(m),
        None => b.int_in("max_tokens", 1, i64::MAX)?,
    }
    .map(|m| m as usize);
    let n = b.int_in("n", 1, MAX_N as i64)?.unwrap_or(1) as usize;
    if n > 1 && s.temperature == 0.0 {
        return Err(ApiError::param(
            "n",
            "`n` > 1 needs sampling (temperature > 0): greedy choices would all be the same",
        ));
    }
    let stream = b.bool("stream")?.unwrap_or(false);
    let include_usage = match b.get("stream_options") {
        None => false,
        Some(Value::Object(o)) => match o.get("include_usage") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(v)) => *v,
            Some(_) => {
                return Err(ApiError::param(
                    "stream_options",
                    "`stream_options.include_usage` must be true or false",
                ))
            }
        },
        Some(_) => {
            return Err(ApiError::param(
                "stream_options",
                "`stream_options` must be an object",
            ))
        }
    };
    if b.get("stream_options").is_some() && !stream {
        return Err(ApiError::param(
            "stream_options",
            "`stream_options` is only allowed when `stream` is true",
        ));
    }
    Ok(GenParams {
        sampling: s,
        max_tokens,
        stop: stops(b)?,
        n,
        logprobs: None,
        prompt_logprobs: None,
        stream,
        include_usage,
        echo: false,
        constraint: None,
    })
}

fn stops(b: &Body) -> Result<Vec<String>, ApiError> {
    let list = match b.get("stop") {
        None => return Ok(Vec::new()),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                ApiError::param("stop", "`stop` must be a string or a list of strings")
            })?,
        Some(_) => {
            return Err(ApiError::param(
                "stop",
                "`stop` must be a string or a list of strings",
            ))
        }
    };
    if list.len() > MAX_STOPS {
        return Err(ApiError::param(
            "stop",
            format!("`stop` may hold at most {MAX_STOPS} strings"),
        ));
    }
    if list.iter().any(|s| s.is_empty() || s.len() > 1024) {
        return Err(ApiError::param(
            "stop",
            "stop strings must be 1 to 1024 bytes long",
        ));
    }
    Ok(list)
}

fn logit_bias(b: &Body, vocab: usize) -> Result<Vec<(u32, f32)>, ApiError> {
    let map = match b.get("logit_bias") {
        None => return Ok(Vec::new()),
        Some(Value::Object(m)) => m,
        Some(_) => {
            return Err(ApiError::param(
                "logit_bias",
                "`logit_bias` must be an object mapping token ids to biases",
            ))
        }
    };
    let mut out = Vec::with_capacity(map.len());
    for (k, v) in map {
        let id = k
            .parse::<u32>()
            .ok()
            .filter(|&id| (id as usize) < vocab)
            .ok_or_else(|| {
                ApiError::param(
                    "logit_bias",
                    format!("`logit_bias` key {k:?} is not a token id of this model (0..{vocab})"),
                )
            })?;
        let bias = v
            .as_f64()
            .filter(|x| (-100.0..=100.0).contains(x))
            .ok_or_else(|| {
                ApiError::param(
                    "logit_bias",
                    format!("`logit_bias` value for token {id} must be a number in [-100, 100]"),
                )
            })?;
        out.push((id, bias as f32));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(s: &str) -> Body {
        Body::parse(s.as_bytes()).unwrap()
    }

    #[test]
    fn wrong_values_name_their_parameter() {
        for (json, param) in [
            (r#"{"temperature": -1}"#, "temperature"),
            (r#"{"temperature": "hot"}"#, "temperature"),
            (r#"{"top_p": 0}"#, "top_p"),
            (r#"{"max_tokens": 0}"#, "max_tokens"),
            (r#"{"max_tokens": -5}"#, "max_tokens"),
            (r#"{"max_tokens": 2.5}"#, "max_tokens"),
            (r#"{"n": 100}"#, "n"),
            (r#"{"stop": 3}"#, "stop"),
            (r#"{"stop": ["a", 1]}"#, "stop"),
            (r#"{"logit_bias": {"99999999": 1}}"#, "logit_bias"),
            (r#"{"logit_bias": {"-1": 1}}"#, "logit_bias"),
            (r#"{"logit_bias": {"5": 1000}}"#, "logit_bias"),
            (r#"{"seed": "x"}"#, "seed"),
            (
                r#"{"stream_options": {"include_usage": true}}"#,
                "stream_options",
            ),
            (r#"{"n": 2, "temperature": 0}"#, "n"),
            (r#"{"top_k": -2}"#, "top_k"),
        ] {
            let e = gen_params(&body(json), 1000, 64).err().expect(json);
            assert_eq!(e.param.as_deref(), Some(param), "{json}: {}", e.message);
            assert_eq!(e.status, 400);
        }
    }

    #[test]
    fn defaults_and_values() {
        let p = gen_params(&body("{}"), 1000, 64).unwrap();
        assert_eq!(p.sampling.temperature, 1.0);
        assert_eq!((p.n, p.max_tokens, p.stream), (1, None, false));
        let p = gen_params(
            &body(
                r#"{"temperature": 0.5, "max_completion_tokens": 7, "max_tokens": 3, "stop": "x",
                    "logit_bias": {"5": -100}, "seed": -1, "stream": true,
                    "stream_options": {"include_usage": true}, "top_k": -1, "n": 2}"#,
            ),
            1000,
            64,
        )
        .unwrap();
        assert_eq!(p.max_tokens, Some(7));
        assert_eq!(p.stop, vec!["x".to_string()]);
        assert_eq!(p.sampling.logit_bias, vec![(5, -100.0)]);
        assert_eq!(p.sampling.seed, Some(u64::MAX));
        assert!(p.stream && p.include_usage);
        assert_eq!((p.sampling.top_k, p.n), (0, 2));
    }

    #[test]
    fn non_objects_are_refused() {
        assert!(Body::parse(b"[1]").is_err());
        assert!(Body::parse(b"{").is_err());
        assert!(Body::parse(&[0xff, 0xfe]).is_err());
    }
}
