use super::write::{gguf_bytes, TensorSpec};
use super::*;

fn parse_bytes(b: Vec<u8>) -> Result<GgufFile, GgufError> {
    GgufFile::parse(Path::new("test.gguf"), Bytes::from_vec(b))
}

fn valid() -> Vec<u8> {
    let data = vec![0u8; 4 * 8 * 2];
    let q = vec![0u8; 34 * 2];
    gguf_bytes(
        &[
            ("general.architecture", Value::String("llama".into())),
            ("llama.block_count", Value::U32(1)),
            (
                "tokenizer.ggml.tokens",
                Value::Array(vec![Value::String("a".into()), Value::String("b".into())]),
            ),
        ],
        &[
            TensorSpec {
                name: "a",
                dims: vec![8, 2],
                dtype: DType::F32,
                data: &data,
            },
            TensorSpec {
                name: "b",
                dims: vec![32, 2],
                dtype: DType::Q8_0,
                data: &q,
            },
        ],
    )
}

#[test]
fn valid_file_parses() {
    let f = parse_bytes(valid()).unwrap();
    assert_eq!(f.tensors.len(), 2);
    assert_eq!(f.tensor("b").unwrap().nbytes, 68);
    assert_eq!(f.get("llama.block_count").unwrap().as_u64(), Some(1));
}

#[test]
fn truncated_at_every_offset_is_an_error() {
    let v = valid();
    for cut in 0..v.len() {
        let r = parse_bytes(v[..cut].to_vec());
        assert!(r.is_err(), "truncation at {cut} was accepted");
    }
}

#[test]
fn flipped_header_bytes_never_panic() {
    let v = valid();
    for i in 0..v.len().min(400) {
        for bit in [0x01u8, 0x80, 0xff] {
            let mut w = v.clone();
            w[i] ^= bit;
            let _ = parse_bytes(w);
        }
    }
}

fn header(n_tensors: u64, n_kv: u64) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&n_tensors.to_le_bytes());
    b.extend_from_slice(&n_kv.to_le_bytes());
    b
}

fn err_text(b: Vec<u8>) -> String {
    match parse_bytes(b) {
        Ok(_) => panic!("malformed file accepted"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn huge_counts_rejected_before_allocation() {
    assert!(err_text(header(u64::MAX, 0)).contains("tensor count"));
    assert!(err_text(header(0, u64::MAX)).contains("metadata count"));
}

#[test]
fn huge_string_length_rejected() {
    let mut b = header(0, 1);
    b.extend_from_slice(&u64::MAX.to_le_bytes());
    b.resize(b.len() + 64, 0);
    assert!(err_text(b).contains("length of metadata key"));
}

#[test]
fn huge_array_rejected() {
    let mut b = header(0, 1);
    b.extend_from_slice(&1u64.to_le_bytes());
    b.push(b'k');
    b.extend_from_slice(&9u32.to_le_bytes());
    b.extend_from_slice(&8u32.to_le_bytes());
    b.extend_from_slice(&(1u64 << 40).to_le_bytes());
    assert!(err_text(b).contains("element count"));
}

#[test]
fn bad_magic_and_version() {
    assert!(err_text(b"GGUX\x03\0\0\0".to_vec()).contains("not a GGUF"));
    let mut b = header(0, 0);
    b[4] = 1;
    assert!(err_text(b).contains("version 1"));
}

fn one_tensor(dims: &[u64], ty: u32, offset: u64) -> Vec<u8> {
    let mut b = header(1, 0);
    b.extend_from_slice(&1u64.to_le_bytes());
    b.push(b't');
    b.extend_from_slice(&(dims.len() as u32).to_le_bytes());
    for d in dims {
        b.extend_from_slice(&d.to_le_bytes());
    }
    b.extend_from_slice(&ty.to_le_bytes());
    b.extend_from_slice(&offset.to_le_bytes());
    b.resize(b.len() + 64, 0);
    b
}

#[test]
fn bad_tensor_infos_rejected() {
    assert!(err_text(one_tensor(&[4, 2, 1, 1, 1], 0, 0)).contains("dimensions"));
    assert!(err_text(one_tensor(&[4, 1 << 62, 8], 0, 0)).contains("overflow"));
    assert!(err_text(one_tensor(&[4], 99, 0)).contains("not supported"));
    assert!(err_text(one_tensor(&[4], 0, 3)).contains("alignment"));
    assert!(err_text(one_tensor(&[1 << 20], 0, 0)).contains("beyond the end"));
    assert!(err_text(one_tensor(&[33], 8, 0)).contains("block size"));
    assert!(err_text(one_tensor(&[4], 0, u64::MAX - 31)).contains("beyond the end"));
}

#[test]
fn duplicate_and_bad_alignment_rejected() {
    let b = gguf_bytes(&[("general.alignment", Value::U32(13))], &[]);
    assert!(err_text(b).contains("alignment"));
    let b = gguf_bytes(&[("general.alignment", Value::I32(32))], &[]);
    assert!(err_text(b).contains("must be a u32"));
    let b = gguf_bytes(&[("a", Value::U8(1)), ("a", Value::U8(2))], &[]);
    assert!(err_text(b).contains("twice"));
}
