//! The safetensors reader against the ST-* classes of the reliability catalogue: every header
//! length, offset, shape and dtype checked against the bytes present; errors, never panics.

use super::*;

fn file(header: &str, data: usize) -> Bytes {
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(header.as_bytes());
    b.resize(b.len() + data, 0);
    Bytes::from_vec(b)
}

fn parse(header: &str, data: usize) -> Result<Vec<(String, StTensor)>, String> {
    parse_safetensors(Path::new("x.safetensors"), &file(header, data)).map_err(|e| e.problem)
}

#[test]
fn valid_files_parse() {
    let t = parse(
        r#"{"__metadata__": {"format": "pt"}, "a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
            "b": {"dtype": "BF16", "shape": [4], "data_offsets": [24, 32]},
            "z": {"dtype": "F16", "shape": [0, 5], "data_offsets": [32, 32]}}"#,
        32,
    )
    .unwrap();
    assert_eq!(t.len(), 3);
    assert_eq!(t[0].1.shape, vec![2, 3]);
}

#[test]
fn hostile_headers_are_errors() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        // ST-01 / ST-02: header length over the cap, u64::MAX, longer than the file.
        ((200u64 << 20).to_le_bytes().to_vec(), "exceeds"),
        (u64::MAX.to_le_bytes().to_vec(), "exceeds"),
        ([&16u64.to_le_bytes()[..], b"{}"].concat(), "exceeds"),
        (vec![1, 2, 3], "shorter"),
        // ST-03: not UTF-8, not JSON, not an object.
        ([&2u64.to_le_bytes()[..], &[0xff, 0xfe]].concat(), "UTF-8"),
        ([&3u64.to_le_bytes()[..], b"{{{"].concat(), "JSON"),
        ([&2u64.to_le_bytes()[..], b"[]"].concat(), "object"),
    ];
    for (bytes, needle) in cases {
        let e = parse_safetensors(Path::new("x"), &Bytes::from_vec(bytes)).unwrap_err();
        assert!(e.problem.contains(needle), "{needle}: {}", e.problem);
    }
    let t = |h: &str, data: usize, needle: &str| {
        let e = parse(h, data).unwrap_err();
        assert!(e.contains(needle), "{h}: {e}");
    };
    // ST-04: gap, overlap, aliasing, first offset not 0, end before begin, past the end.
    t(
        r#"{"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}"#,
        8,
        "unused",
    );
    t(
        r#"{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}"#,
        12,
        "overlaps",
    );
    t(
        r#"{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}"#,
        8,
        "overlaps",
    );
    t(
        r#"{"a": {"dtype": "F32", "shape": [1], "data_offsets": [8, 4]}}"#,
        8,
        "outside",
    );
    t(
        r#"{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4000]}}"#,
        8,
        "outside",
    );
    t(
        r#"{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 18446744073709551615]}}"#,
        8,
        "outside",
    );
    // ST-05: size mismatch, product overflow.
    t(
        r#"{"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}"#,
        8,
        "does not match",
    );
    t(
        r#"{"a": {"dtype": "F32", "shape": [4294967296, 4294967296, 16], "data_offsets": [0, 8]}}"#,
        8,
        "does not match",
    );
    // ST-06: bytes after the last tensor.
    t(
        r#"{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}"#,
        4096,
        "after the last tensor",
    );
    // ST-07: unknown dtype, negative or fractional dims, non-string metadata, missing fields.
    t(
        r#"{"a": {"dtype": "Q9", "shape": [1], "data_offsets": [0, 4]}}"#,
        4,
        "not supported",
    );
    t(
        r#"{"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}"#,
        4,
        "non-integer",
    );
    t(
        r#"{"a": {"dtype": "F32", "shape": [1.5], "data_offsets": [0, 4]}}"#,
        4,
        "non-integer",
    );
    t(
        r#"{"__metadata__": {"k": 1}, "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}"#,
        4,
        "__metadata__",
    );
    t(
        r#"{"a": {"shape": [1], "data_offsets": [0, 4]}}"#,
        4,
        "dtype",
    );
    t(
        r#"{"a": {"dtype": "F32", "data_offsets": [0, 4]}}"#,
        4,
        "shape",
    );
    t(
        r#"{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0]}}"#,
        4,
        "pair",
    );
    // Long names are cut short in messages.
    let long = format!(
        r#"{{"{}": {{"dtype": "Q9", "shape": [1], "data_offsets": [0, 4]}}}}"#,
        "n".repeat(100_000)
    );
    assert!(parse(&long, 4).unwrap_err().len() < 300);
}

#[test]
fn many_tiny_tensors_parse_quickly() {
    // ST-08: 100k entries under the header cap parse within a second.
    let mut h = String::from("{");
    for i in 0..100_000 {
        if i > 0 {
            h.push(',');
        }
        h.push_str(&format!(
            r#""t{i}": {{"dtype": "F16", "shape": [1], "data_offsets": [{}, {}]}}"#,
            2 * i,
            2 * i + 2
        ));
    }
    h.push('}');
    let t0 = std::time::Instant::now();
    assert_eq!(parse(&h, 200_000).unwrap().len(), 100_000);
    assert!(t0.elapsed().as_secs_f64() < 2.0, "{:?}", t0.elapsed());
}

#[test]
fn every_truncation_of_a_valid_file_is_an_error() {
    let f = file(
        r#"{"a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}"#,
        16,
    );
    let b = f.as_slice().to_vec();
    for cut in 0..b.len() {
        assert!(parse_safetensors(Path::new("x"), &Bytes::from_vec(b[..cut].to_vec())).is_err());
    }
}
