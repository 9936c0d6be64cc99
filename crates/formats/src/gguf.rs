//! A hardened GGUF (v2/v3) reader over a memory map.
//!
//! Every count, length, dimension and offset comes from an untrusted file. The reader never
//! allocates more than the bytes that remain could possibly describe, uses checked arithmetic for
//! every size, and reports the first problem as a typed error naming the field.

use crate::bytes::Bytes;
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use suanli_core::DType;

const MAGIC: &[u8; 4] = b"GGUF";
pub const MAX_DIMS: usize = 4;
const MAX_NAME_LEN: usize = 256;
/// GGUF keys are at most 65535 bytes (the format's limit); real ones are far shorter.
const MAX_KEY_LEN: usize = 65_535;
const MAX_ARRAY_NESTING: usize = 2;
const MAX_ALIGNMENT: u64 = 1 << 20;
/// The smallest a tensor-info record can be (empty name, 1 dim): name len 8 + n_dims 4 + dim 8 + type 4 + offset 8.
const MIN_TENSOR_INFO_BYTES: u64 = 32;
/// The smallest a key/value record can be: key len 8 + 1 byte key + type 4 + 1 byte value.
const MIN_KV_BYTES: u64 = 14;

#[derive(Debug, thiserror::Error)]
#[error("{path}: {problem}")]
pub struct GgufError {
    pub path: PathBuf,
    pub problem: Problem,
}

#[derive(Debug, thiserror::Error)]
pub enum Problem {
    #[error("cannot read the file: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a GGUF file (magic bytes {0:02x?}, expected \"GGUF\")")]
    BadMagic([u8; 4]),
    #[error("unsupported GGUF version {0} (supported: 2 and 3){1}")]
    BadVersion(u32, &'static str),
    #[error("file ends early while reading {what} at byte {offset} (file has {len} bytes); the file is truncated or corrupt")]
    Truncated { what: String, offset: u64, len: u64 },
    #[error("{what} = {value} is impossible: {why}")]
    BadCount {
        what: String,
        value: u64,
        why: String,
    },
    #[error("metadata key #{index} {why}")]
    BadKey { index: u64, why: String },
    #[error("metadata key {} appears twice", shown(.key))]
    DuplicateKey { key: String },
    #[error("metadata {}: unknown value type {ty}", shown(.key))]
    BadValueType { key: String, ty: u32 },
    #[error("metadata {}: {why}", shown(.key))]
    BadValue { key: String, why: String },
    #[error("tensor #{index} ({}): {why}", shown(.name))]
    BadTensor {
        index: u64,
        name: String,
        why: String,
    },
    #[error("tensor name {} appears twice", shown(.0))]
    DuplicateTensor(String),
}

/// A name from the file as shown in messages: quoted, and cut short when long, so that a
/// hostile file cannot flood logs or terminals through its error messages.
pub(crate) fn shown(s: &str) -> String {
    const MAX: usize = 80;
    if s.len() <= MAX {
        return format!("{s:?}");
    }
    let mut end = 64;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}… ({} bytes)", &s[..end], s.len())
}

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
}

impl Value {
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::U8(_) => "u8",
            Value::I8(_) => "i8",
            Value::U16(_) => "u16",
            Value::I16(_) => "i16",
            Value::U32(_) => "u32",
            Value::I32(_) => "i32",
            Value::U64(_) => "u64",
            Value::I64(_) => "i64",
            Value::F32(_) => "f32",
            Value::F64(_) => "f64",
            Value::Bool(_) => "bool",
            Value::String(_) => "string",
            Value::Array(_) => "array",
        }
    }

    /// The value as a non-negative integer, if it is one.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            Value::Bool(v) => Some(v as u64),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::I8(v) => Some(v as i64),
            Value::I16(v) => Some(v as i64),
            Value::I32(v) => Some(v as i64),
            Value::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

impl fmt::Display for Value {
    /// Short display: long arrays and strings are summarised.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::String(s) => {
                let mut chars = s.chars();
                let head: String = chars.by_ref().take(80).collect();
                if chars.next().is_some() {
                    write!(f, "{:?}… ({} bytes)", head, s.len())
                } else {
                    write!(f, "{s:?}")
                }
            }
            Value::Array(a) => {
                let elem = a.first().map(|v| v.type_name()).unwrap_or("?");
                if a.len() <= 8 {
                    write!(f, "[")?;
                    for (i, v) in a.iter().enumerate() {
                        if i > 0 {
                            write!(f, ", ")?;
                        }
                        write!(f, "{v}")?;
                    }
                    write!(f, "]")
                } else {
                    write!(
                        f,
                        "[{}, {}, {}, … ] ({} × {elem})",
                        a[0],
                        a[1],
                        a[2],
                        a.len()
                    )
                }
            }
            Value::U8(v) => write!(f, "{v}"),
            Value::I8(v) => write!(f, "{v}"),
            Value::U16(v) => write!(f, "{v}"),
            Value::I16(v) => write!(f, "{v}"),
            Value::U32(v) => write!(f, "{v}"),
            Value::I32(v) => write!(f, "{v}"),
            Value::U64(v) => write!(f, "{v}"),
            Value::I64(v) => write!(f, "{v}"),
            Value::F32(v) => write!(f, "{v}"),
            Value::F64(v) => write!(f, "{v}"),
            Value::Bool(v) => write!(f, "{v}"),
        }
    }
}

/// One tensor's description. `dims` are in GGML order: `dims[0]` is the row length.
#[derive(Clone, Debug)]
pub struct GgufTensor {
    pub name: String,
    pub dims: Vec<u64>,
    pub dtype: DType,
    /// Offset from the start of the file.
    pub offset: u64,
    pub nbytes: u64,
}

pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub alignment: u64,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<GgufTensor>,
    pub data: Bytes,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<GgufFile, GgufError> {
        let bytes = Bytes::map_file(path).map_err(|e| GgufError {
            path: path.to_owned(),
            problem: e.into(),
        })?;
        Self::parse(path, bytes)
    }

    pub fn parse(path: &Path, bytes: Bytes) -> Result<GgufFile, GgufError> {
        parse(bytes.as_slice())
            .map(|(version, alignment, metadata, tensors)| GgufFile {
                path: path.to_owned(),
                version,
                alignment,
                metadata,
                tensors,
                data: bytes.clone(),
            })
            .map_err(|problem| GgufError {
                path: path.to_owned(),
                problem,
            })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    pub fn tensor(&self, name: &str) -> Option<&GgufTensor> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The bytes of a tensor (already bounds-checked at parse time).
    pub fn tensor_bytes(&self, t: &GgufTensor) -> Bytes {
        self.data
            .slice(t.offset as usize..(t.offset + t.nbytes) as usize)
            .expect("tensor ranges are validated at parse time")
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<&'a [u8], Problem> {
        if n > self.remaining() {
            return Err(Problem::Truncated {
                what: what(),
                offset: self.pos as u64,
                len: self.buf.len() as u64,
            });
        }
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N], Problem> {
        let s = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32, Problem> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64, Problem> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String, Problem> {
        let len = self.u64(what)?;
        if len > self.remaining() {
            return Err(Problem::BadCount {
                what: format!("length of {}", what()),
                value: len,
                why: format!("only {} bytes remain in the file", self.remaining()),
            });
        }
        let s = self.take(len, what)?;
        String::from_utf8(s.to_vec()).map_err(|_| Problem::BadCount {
            what: format!("text of {}", what()),
            value: len,
            why: "it is not valid UTF-8".into(),
        })
    }
}

type Parsed = (u32, u64, BTreeMap<String, Value>, Vec<GgufTensor>);

fn parse(buf: &[u8]) -> Result<Parsed, Problem> {
    let mut r = Reader { buf, pos: 0 };
    let magic: [u8; 4] = r.array(&|| "the magic bytes".into())?;
    if &magic != MAGIC {
        return Err(Problem::BadMagic(magic));
    }
    let version = r.u32(&|| "the version".into())?;
    if version != 2 && version != 3 {
        let hint = if version.swap_bytes() == 2 || version.swap_bytes() == 3 {
            " — this looks like a big-endian GGUF, which suanli does not read"
        } else {
            ""
        };
        return Err(Problem::BadVersion(version, hint));
    }
    let n_tensors = r.u64(&|| "the tensor count".into())?;
    let n_kv = r.u64(&|| "the metadata count".into())?;
    check_count(
        "tensor count",
        n_tensors,
        MIN_TENSOR_INFO_BYTES,
        r.remaining(),
    )?;
    check_count("metadata count", n_kv, MIN_KV_BYTES, r.remaining())?;

    let mut metadata = BTreeMap::new();
    for index in 0..n_kv {
        let key = r.string(&|| format!("metadata key #{index}"))?;
        if key.is_empty() || key.len() > MAX_KEY_LEN {
            return Err(Problem::BadKey {
                index,
                why: format!("is {} bytes long (1 to {MAX_KEY_LEN} allowed)", key.len()),
            });
        }
        let ty = r.u32(&|| format!("the type of metadata {}", shown(&key)))?;
        let value = read_value(&mut r, &key, ty, 0)?;
        if metadata.insert(key.clone(), value).is_some() {
            return Err(Problem::DuplicateKey { key });
        }
    }

    let alignment = match metadata.get("general.alignment") {
        None => 32,
        Some(Value::U32(a)) => {
            let a = *a as u64;
            if a == 0 || !a.is_power_of_two() || a > MAX_ALIGNMENT {
                return Err(Problem::BadValue {
                    key: "general.alignment".into(),
                    why: format!("{a} is not a power of two between 1 and {MAX_ALIGNMENT}"),
                });
            }
            a
        }
        Some(v) => {
            return Err(Problem::BadValue {
                key: "general.alignment".into(),
                why: format!("must be a u32, found {}", v.type_name()),
            })
        }
    };

    let mut infos =
        Vec::with_capacity(n_tensors.min(r.remaining() / MIN_TENSOR_INFO_BYTES) as usize);
    let mut names = HashSet::new();
    for index in 0..n_tensors {
        let name = r.string(&|| format!("the name of tensor #{index}"))?;
        let bad = |why: String| Problem::BadTensor {
            index,
            name: name.clone(),
            why,
        };
        if name.is_empty() || name.len() > MAX_NAME_LEN {
            return Err(bad(format!(
                "name length {} is not between 1 and {MAX_NAME_LEN}",
                name.len()
            )));
        }
        let n_dims = r.u32(&|| format!("the dimension count of tensor {}", shown(&name)))?;
        if n_dims == 0 || n_dims as usize > MAX_DIMS {
            return Err(bad(format!(
                "{n_dims} dimensions (must be 1 to {MAX_DIMS})"
            )));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for d in 0..n_dims {
            dims.push(r.u64(&|| format!("dimension {d} of tensor {}", shown(&name)))?);
        }
        let ty = r.u32(&|| format!("the type of tensor {}", shown(&name)))?;
        let dtype = DType::from_ggml_id(ty).map_err(|_| {
            bad(format!(
                "tensor type {ty} ({}) is not supported; supported types: F32 F16 BF16 Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q2_K Q3_K Q4_K Q5_K Q6_K IQ4_NL IQ4_XS",
                suanli_core::dtype::ggml_type_name(ty)
            ))
        })?;
        let offset = r.u64(&|| format!("the data offset of tensor {}", shown(&name)))?;
        let mut elems: u64 = 1;
        for &d in &dims {
            elems = elems
                .checked_mul(d)
                .ok_or_else(|| bad(format!("dimensions {dims:?} overflow")))?;
        }
        if elems > i64::MAX as u64 {
            return Err(bad(format!("dimensions {dims:?} overflow")));
        }
        if dims[0] % dtype.block_elems() as u64 != 0 {
            return Err(bad(format!(
                "row length {} is not a multiple of the {dtype} block size {}",
                dims[0],
                dtype.block_elems()
            )));
        }
        let nbytes = dtype.bytes_for(elems).map_err(|e| bad(e.to_string()))?;
        if offset % alignment != 0 {
            return Err(bad(format!(
                "data offset {offset} is not a multiple of the alignment {alignment}"
            )));
        }
        if !names.insert(name.clone()) {
            return Err(Problem::DuplicateTensor(name));
        }
        infos.push(GgufTensor {
            name,
            dims,
            dtype,
            offset,
            nbytes,
        });
    }

    let data_start = (r.pos as u64).div_ceil(alignment) * alignment;
    let file_len = buf.len() as u64;
    // Convert to absolute offsets, check bounds, then check that no two tensors overlap.
    for (index, t) in infos.iter_mut().enumerate() {
        let start = data_start.checked_add(t.offset);
        let end = start.and_then(|s| s.checked_add(t.nbytes));
        match (start, end) {
            (Some(s), Some(e)) if e <= file_len => t.offset = s,
            _ => {
                return Err(Problem::BadTensor {
                    index: index as u64,
                    name: t.name.clone(),
                    why: format!(
                        "data at offset {} + {} bytes lies beyond the end of the file ({} bytes of tensor data present); the file is truncated or corrupt",
                        t.offset,
                        t.nbytes,
                        file_len.saturating_sub(data_start)
                    ),
                })
            }
        }
    }
    let mut order: Vec<usize> = (0..infos.len()).collect();
    order.sort_by_key(|&i| infos[i].offset);
    for w in order.windows(2) {
        let (a, b) = (&infos[w[0]], &infos[w[1]]);
        if a.offset + a.nbytes > b.offset {
            return Err(Problem::BadTensor {
                index: w[1] as u64,
                name: b.name.clone(),
                why: format!("its data overlaps tensor {:?}", a.name),
            });
        }
    }
    Ok((version, alignment, metadata, infos))
}

fn check_count(what: &str, n: u64, min_bytes: u64, remaining: u64) -> Result<(), Problem> {
    if n > remaining / min_bytes {
        return Err(Problem::BadCount {
            what: what.into(),
            value: n,
            why: format!(
                "{remaining} bytes remain, enough for at most {} entries",
                remaining / min_bytes
            ),
        });
    }
    Ok(())
}

fn scalar_size(ty: u32) -> Option<u64> {
    Some(match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        10..=12 => 8,
        _ => return None,
    })
}

fn read_value(r: &mut Reader<'_>, key: &str, ty: u32, depth: usize) -> Result<Value, Problem> {
    let what = || format!("the value of {}", shown(key));
    Ok(match ty {
        0 => Value::U8(r.array::<1>(&what)?[0]),
        1 => Value::I8(r.array::<1>(&what)?[0] as i8),
        2 => Value::U16(u16::from_le_bytes(r.array(&what)?)),
        3 => Value::I16(i16::from_le_bytes(r.array(&what)?)),
        4 => Value::U32(r.u32(&what)?),
        5 => Value::I32(i32::from_le_bytes(r.array(&what)?)),
        6 => Value::F32(f32::from_le_bytes(r.array(&what)?)),
        7 => {
            let b = r.array::<1>(&what)?[0];
            if b > 1 {
                return Err(Problem::BadValue {
                    key: key.into(),
                    why: format!("boolean byte {b} is not 0 or 1"),
                });
            }
            Value::Bool(b == 1)
        }
        8 => Value::String(r.string(&what)?),
        9 => {
            if depth >= MAX_ARRAY_NESTING {
                return Err(Problem::BadValue {
                    key: key.into(),
                    why: "arrays nested too deeply".into(),
                });
            }
            let elem_ty = r.u32(&what)?;
            let n = r.u64(&what)?;
            // Each element takes at least one byte (strings: 8), so the count is bounded by what remains.
            let min = match elem_ty {
                8 => 8,
                9 => 12,
                t => scalar_size(t).ok_or(Problem::BadValueType {
                    key: key.into(),
                    ty: elem_ty,
                })?,
            };
            let max = r.remaining() / min;
            if n > max {
                return Err(Problem::BadCount {
                    what: format!("element count of array {}", shown(key)),
                    value: n,
                    why: format!(
                        "{} bytes remain, enough for at most {max} elements",
                        r.remaining()
                    ),
                });
            }
            let mut items = Vec::with_capacity(n as usize);
            for _ in 0..n {
                items.push(read_value(r, key, elem_ty, depth + 1)?);
            }
            Value::Array(items)
        }
        10 => Value::U64(r.u64(&what)?),
        11 => Value::I64(i64::from_le_bytes(r.array(&what)?)),
        12 => Value::F64(f64::from_le_bytes(r.array(&what)?)),
        _ => {
            return Err(Problem::BadValueType {
                key: key.into(),
                ty,
            })
        }
    })
}

/// Writes GGUF files; used by tests (malformed-file cases) and tools. Values are written as given.
pub mod write {
    use super::Value;
    use suanli_core::DType;

    pub struct TensorSpec<'a> {
        pub name: &'a str,
        pub dims: Vec<u64>,
        pub dtype: DType,
        pub data: &'a [u8],
    }

    fn put_str(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }

    fn type_id(v: &Value) -> u32 {
        match v {
            Value::U8(_) => 0,
            Value::I8(_) => 1,
            Value::U16(_) => 2,
            Value::I16(_) => 3,
            Value::U32(_) => 4,
            Value::I32(_) => 5,
            Value::F32(_) => 6,
            Value::Bool(_) => 7,
            Value::String(_) => 8,
            Value::Array(_) => 9,
            Value::U64(_) => 10,
            Value::I64(_) => 11,
            Value::F64(_) => 12,
        }
    }

    fn put_value(out: &mut Vec<u8>, v: &Value) {
        match v {
            Value::U8(x) => out.push(*x),
            Value::I8(x) => out.push(*x as u8),
            Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::Bool(x) => out.push(*x as u8),
            Value::String(s) => put_str(out, s),
            Value::Array(a) => {
                let elem = a.first().map(type_id).unwrap_or(0);
                out.extend_from_slice(&elem.to_le_bytes());
                out.extend_from_slice(&(a.len() as u64).to_le_bytes());
                for x in a {
                    put_value(out, x);
                }
            }
        }
    }

    /// Serialise a GGUF v3 file with alignment 32.
    pub fn gguf_bytes(meta: &[(&str, Value)], tensors: &[TensorSpec<'_>]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(b"GGUF");
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(meta.len() as u64).to_le_bytes());
        for (k, v) in meta {
            put_str(&mut out, k);
            out.extend_from_slice(&type_id(v).to_le_bytes());
            put_value(&mut out, v);
        }
        let mut offset = 0u64;
        let mut offsets = Vec::new();
        for t in tensors {
            put_str(&mut out, t.name);
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.dtype.ggml_id().to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            offsets.push(offset);
            offset = (offset + t.data.len() as u64).div_ceil(32) * 32;
        }
        while out.len() % 32 != 0 {
            out.push(0);
        }
        let base = out.len();
        for (t, off) in tensors.iter().zip(offsets) {
            out.resize(base + off as usize, 0);
            out.extend_from_slice(t.data);
        }
        out
    }

    /// `f` with `extra` entries appended to its vocabulary, `[PADn]` of token type `token_type`
    /// (5, unused, is what converters pad a model's embedding rows with: Qwen2.5's 7B and
    /// larger have 128 more than the smaller sizes), and as many rows appended to its F32 token
    /// table and output matrix: token `like`'s row times `scale` (0: zeros). For tests of
    /// models whose vocabularies differ by padding.
    pub fn with_more_tokens(
        f: &super::GgufFile,
        extra: usize,
        token_type: i32,
        like: u32,
        scale: f32,
    ) -> Result<Vec<u8>, String> {
        let n = match f.get("tokenizer.ggml.tokens") {
            Some(Value::Array(a)) => a.len(),
            _ => return Err("no tokenizer.ggml.tokens array".into()),
        };
        let meta: Vec<(&str, Value)> = f
            .metadata
            .iter()
            .map(|(k, v)| {
                let more: Vec<Value> = match k.as_str() {
                    "tokenizer.ggml.tokens" => (n..n + extra)
                        .map(|i| Value::String(format!("[PAD{i}]")))
                        .collect(),
                    "tokenizer.ggml.token_type" => vec![Value::I32(token_type); extra],
                    _ => Vec::new(),
                };
                let v = match v {
                    Value::Array(a) if !more.is_empty() => {
                        Value::Array(a.iter().cloned().chain(more).collect())
                    }
                    _ => v.clone(),
                };
                (k.as_str(), v)
            })
            .collect();
        let mut datas = Vec::new();
        let mut dims = Vec::new();
        for t in &f.tensors {
            let mut data = f.tensor_bytes(t).as_slice().to_vec();
            let mut d = t.dims.clone();
            if matches!(t.name.as_str(), "token_embd.weight" | "output.weight") {
                if t.dtype != DType::F32 || d.len() != 2 || d[1] != n as u64 || like as usize >= n {
                    return Err(format!("{} is not an F32 table of {n} rows", t.name));
                }
                let row = d[0] as usize * 4;
                let new: Vec<u8> = data[like as usize * row..][..row]
                    .chunks(4)
                    .flat_map(|b| (scale * f32::from_le_bytes(b.try_into().unwrap())).to_le_bytes())
                    .collect();
                for _ in 0..extra {
                    data.extend_from_slice(&new);
                }
                d[1] += extra as u64;
            }
            datas.push(data);
            dims.push(d);
        }
        let tensors: Vec<TensorSpec> = f
            .tensors
            .iter()
            .zip(datas.iter().zip(dims))
            .map(|(t, (data, dims))| TensorSpec {
                name: &t.name,
                dims,
                dtype: t.dtype,
                data,
            })
            .collect();
        Ok(gguf_bytes(&meta, &tensors))
    }
}

#[cfg(test)]
mod tests;
