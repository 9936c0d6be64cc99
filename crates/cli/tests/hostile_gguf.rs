//! A corpus of malformed GGUF files modelled on the public loader CVEs and llama.cpp's
//! `test-gguf` cases (the MF-* classes of `shared/reference/reliability.md`), each given to
//! `suanli inspect` and `suanli run` under a 4 GiB address-space limit: a non-zero exit with a
//! message naming the file, no panic, within seconds — while the valid file they derive from runs.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use suanli_formats::gguf::write::{gguf_bytes, TensorSpec};
use suanli_formats::gguf::{GgufFile, Value};

const LIMIT_KIB: u64 = 4 << 20;

/// Run the binary with an address-space cap and a deadline; (exit code, stderr, seconds).
fn capped(args: &[&str]) -> (i32, String, f64) {
    let t0 = Instant::now();
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(format!("ulimit -v {LIMIT_KIB} && exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_suanli"))
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .env_remove("SUANLI_API_KEY")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read stderr while it runs (a long message must not block the child on a full pipe).
    let mut pipe = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut err = String::new();
        let _ = std::io::Read::read_to_string(&mut pipe, &mut err);
        err
    });
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t0.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("{args:?} still running after 30 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let err = reader.join().unwrap();
    (status.code().unwrap_or(-1), err, t0.elapsed().as_secs_f64())
}

fn refused(path: &Path, case: &str) {
    let p = path.to_str().unwrap();
    for args in [
        vec!["inspect", p],
        vec![
            "--threads",
            "1",
            "run",
            "--model",
            p,
            "--max-tokens",
            "2",
            "--ctx",
            "64",
            "hi",
        ],
    ] {
        let (code, err, secs) = capped(&args);
        assert_eq!(
            code, 1,
            "{case}: {args:?} should fail cleanly; stderr: {err}"
        );
        assert!(
            !err.contains("panicked") && !err.contains("memory allocation"),
            "{case}: {err}"
        );
        assert!(
            err.contains(p),
            "{case}: the message should name the file: {err}"
        );
        assert!(
            err.trim().len() > p.len() + 10,
            "{case}: say what is wrong: {err}"
        );
        assert!(
            err.len() < 4096,
            "{case}: the message stays short ({} bytes)",
            err.len()
        );
        assert!(secs < 10.0, "{case}: {secs:.1} s");
    }
}

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny/llama/model.gguf")
}

/// The fixture's metadata and tensors, to rewrite with changes.
struct Parts {
    meta: Vec<(String, Value)>,
    tensors: Vec<(String, Vec<u64>, suanli_core::DType, Vec<u8>)>,
}

fn parts() -> Parts {
    let f = GgufFile::open(&fixture()).unwrap();
    Parts {
        meta: f
            .metadata
            .iter()
            .filter(|(k, _)| k.as_str() != "general.alignment")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        tensors: f
            .tensors
            .iter()
            .map(|t| {
                (
                    t.name.clone(),
                    t.dims.clone(),
                    t.dtype,
                    f.tensor_bytes(t).as_slice().to_vec(),
                )
            })
            .collect(),
    }
}

impl Parts {
    fn set(mut self, key: &str, v: Value) -> Parts {
        self.meta.retain(|(k, _)| k != key);
        self.meta.push((key.to_owned(), v));
        self
    }
    fn bytes(&self) -> Vec<u8> {
        let meta: Vec<(&str, Value)> = self
            .meta
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect();
        let tensors: Vec<TensorSpec<'_>> = self
            .tensors
            .iter()
            .map(|(n, d, t, b)| TensorSpec {
                name: n,
                dims: d.clone(),
                dtype: *t,
                data: b,
            })
            .collect();
        gguf_bytes(&meta, &tensors)
    }
}

fn header(version: u32, n_tensors: u64, n_kv: u64) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend_from_slice(&version.to_le_bytes());
    b.extend_from_slice(&n_tensors.to_le_bytes());
    b.extend_from_slice(&n_kv.to_le_bytes());
    b
}

fn kv_raw(b: &mut Vec<u8>, key: &[u8], ty: u32, payload: &[u8]) {
    b.extend_from_slice(&(key.len() as u64).to_le_bytes());
    b.extend_from_slice(key);
    b.extend_from_slice(&ty.to_le_bytes());
    b.extend_from_slice(payload);
}

fn tensor_raw(b: &mut Vec<u8>, name: &[u8], dims: &[u64], ty: u32, offset: u64) {
    b.extend_from_slice(&(name.len() as u64).to_le_bytes());
    b.extend_from_slice(name);
    b.extend_from_slice(&(dims.len() as u32).to_le_bytes());
    for d in dims {
        b.extend_from_slice(&d.to_le_bytes());
    }
    b.extend_from_slice(&ty.to_le_bytes());
    b.extend_from_slice(&offset.to_le_bytes());
}

fn one_tensor_file(dims: &[u64], ty: u32, offset: u64, data: usize) -> Vec<u8> {
    let mut b = header(3, 1, 0);
    tensor_raw(&mut b, b"token_embd.weight", dims, ty, offset);
    b.resize(b.len().div_ceil(32) * 32 + data, 0);
    b
}

#[cfg(unix)]
#[test]
fn cve_modelled_files_are_refused_under_a_4_gib_limit() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read(fixture()).unwrap();
    // The untouched fixture, rewritten by our writer, runs.
    let base = parts().bytes();
    let ok = dir.path().join("valid.gguf");
    std::fs::write(&ok, &base).unwrap();
    let (code, err, _) = capped(&[
        "--threads",
        "1",
        "run",
        "--model",
        ok.to_str().unwrap(),
        "--max-tokens",
        "2",
        "--raw",
        "hi",
    ]);
    assert_eq!(code, 0, "the valid file must run: {err}");

    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        // MF-01 magic and version.
        ("bad magic", b"GGML\x03\0\0\0".to_vec()),
        ("version 0", header(0, 0, 0)),
        ("version 9", header(9, 0, 0)),
        // MF-02 counts.
        ("n_tensors u64::MAX", header(3, u64::MAX, 0)),
        ("n_kv u64::MAX", header(3, 0, u64::MAX)),
    ];
    // MF-03 / MF-05 string lengths: u64::MAX (n + 1 wraps) and 1 GiB in a 160-byte file.
    for len in [u64::MAX, u64::MAX - 1, 1 << 30] {
        let mut b = header(3, 0, 1);
        kv_raw(&mut b, b"general.name", 8, &len.to_le_bytes());
        b.resize(160, b'x');
        cases.push(("huge string", b));
    }
    let mut b = header(3, 0, 1);
    b.extend_from_slice(&u64::MAX.to_le_bytes()); // the key's own length
    b.resize(160, 0);
    cases.push(("huge key length", b));
    // MF-04 arrays: count × element size overflows, or exceeds the file.
    for (elem, count) in [
        (10u32, 1u64 << 62),
        (4, u64::MAX),
        (8, 1 << 32),
        (9, 1 << 40),
    ] {
        let mut p = elem.to_le_bytes().to_vec();
        p.extend_from_slice(&count.to_le_bytes());
        let mut b = header(3, 0, 1);
        kv_raw(&mut b, b"tokenizer.ggml.tokens", 9, &p);
        b.resize(b.len() + 64, 0);
        cases.push(("huge array", b));
    }
    // Nested arrays (array of arrays) with huge inner counts.
    let mut p = 9u32.to_le_bytes().to_vec();
    p.extend_from_slice(&2u64.to_le_bytes());
    p.extend_from_slice(&9u32.to_le_bytes());
    p.extend_from_slice(&(1u64 << 61).to_le_bytes());
    let mut b = header(3, 0, 1);
    kv_raw(&mut b, b"k", 9, &p);
    b.resize(b.len() + 64, 0);
    cases.push(("nested array", b));
    // MF-06 / MF-07 / MF-08 / MF-09 dimensions and sizes.
    cases.push(("n_dims 5", one_tensor_file(&[4, 1, 1, 1, 1], 0, 0, 64)));
    cases.push(("n_dims 9", one_tensor_file(&[1; 9], 0, 0, 64)));
    let mut b = header(3, 1, 0);
    b.extend_from_slice(&17u64.to_le_bytes());
    b.extend_from_slice(b"token_embd.weight");
    b.extend_from_slice(&u32::MAX.to_le_bytes());
    b.resize(b.len() + 256, 0);
    cases.push(("n_dims u32::MAX", b));
    cases.push((
        "dims overflow i64",
        one_tensor_file(&[4, (1 << 30) - 1, (1 << 30) + 1, 1], 0, 0, 64),
    ));
    cases.push((
        "nbytes overflow q4_0",
        one_tensor_file(&[1 << 40, 1 << 23], 2, 0, 64),
    ));
    cases.push((
        "nbytes near usize::MAX",
        one_tensor_file(&[u64::MAX / 4 - 7], 0, 0, 64),
    ));
    // MF-12 type ids.
    cases.push(("type 99", one_tensor_file(&[16], 99, 0, 64)));
    cases.push(("type -1", one_tensor_file(&[16], u32::MAX, 0, 64)));
    // MF-14 offsets.
    cases.push(("misaligned offset", one_tensor_file(&[16], 0, 3, 128)));
    cases.push((
        "offset past the end",
        one_tensor_file(&[16], 0, 1 << 40, 64),
    ));
    cases.push(("offset wraps", one_tensor_file(&[16], 0, u64::MAX - 31, 64)));
    cases.push(("data too short", one_tensor_file(&[1024], 0, 0, 64)));
    // Overlap: b starts inside a.
    let mut overlap = header(3, 2, 0);
    tensor_raw(&mut overlap, b"a", &[64], 0, 0);
    tensor_raw(&mut overlap, b"b", &[64], 0, 32);
    overlap.resize(overlap.len().div_ceil(32) * 32 + 512, 0);
    cases.push(("overlapping tensors", overlap));
    // MF-13 alignment.
    for a in [
        Value::U32(0),
        Value::U32(13),
        Value::U32(1 << 31),
        Value::I32(32),
    ] {
        cases.push(("alignment", gguf_bytes(&[("general.alignment", a)], &[])));
    }
    // MF-15 / MF-16 duplicate and empty keys, duplicate and over-long tensor names.
    cases.push((
        "duplicate key",
        gguf_bytes(&[("a", Value::U8(1)), ("a", Value::U8(2))], &[]),
    ));
    cases.push(("empty key", gguf_bytes(&[("", Value::U8(1))], &[])));
    let mut b = header(3, 2, 0);
    tensor_raw(&mut b, b"t", &[8], 0, 0);
    tensor_raw(&mut b, b"t", &[8], 0, 32);
    b.resize(b.len().div_ceil(32) * 32 + 64, 0);
    cases.push(("duplicate tensor", b));
    let mut b = header(3, 0, 1);
    kv_raw(&mut b, &vec![b'k'; 100_000], 4, &7u32.to_le_bytes());
    cases.push(("long key", b));
    let long = vec![b'n'; 70_000];
    let mut b = header(3, 1, 0);
    tensor_raw(&mut b, &long, &[8], 0, 0);
    b.resize(b.len().div_ceil(32) * 32 + 64, 0);
    cases.push(("long tensor name", b));
    // MF-17 truncations of the real fixture (a few offsets; every offset is in formats' tests).
    for cut in [4, 23, 24, 100, good.len() / 2, good.len() - 1] {
        cases.push(("truncated", good[..cut].to_vec()));
    }
    // MF-18 / MF-19 / MF-20 vocabulary.
    let n = match parts()
        .meta
        .iter()
        .find(|(k, _)| k == "tokenizer.ggml.tokens")
    {
        Some((_, Value::Array(a))) => a.len(),
        _ => panic!("fixture has a vocabulary"),
    };
    cases.push((
        "scores as u8",
        parts()
            .set("tokenizer.ggml.scores", Value::Array(vec![Value::U8(0); n]))
            .bytes(),
    ));
    cases.push((
        "token types short",
        parts()
            .set(
                "tokenizer.ggml.token_type",
                Value::Array(vec![Value::I32(1); n / 2]),
            )
            .bytes(),
    ));
    cases.push((
        "bos out of range",
        parts()
            .set("tokenizer.ggml.bos_token_id", Value::U32(n as u32 + 5))
            .bytes(),
    ));
    cases.push((
        "eos out of range",
        parts()
            .set("tokenizer.ggml.eos_token_id", Value::U32(u32::MAX))
            .bytes(),
    ));
    cases.push((
        "tokens not strings",
        parts()
            .set(
                "tokenizer.ggml.tokens",
                Value::Array(vec![Value::U32(7); n]),
            )
            .bytes(),
    ));
    cases.push((
        "no tokenizer model",
        parts().set("tokenizer.ggml.model", Value::U32(3)).bytes(),
    ));
    // MF-21 hyperparameters.
    for (k, v) in [
        ("llama.block_count", Value::U32(1_000_000)),
        ("llama.attention.head_count", Value::U32(0)),
        ("llama.attention.head_count", Value::U32(7)),
        ("llama.context_length", Value::U32(0)),
        ("llama.embedding_length", Value::U32(0)),
        ("llama.attention.head_count_kv", Value::U32(1000)),
        ("llama.rope.dimension_count", Value::U32(1 << 20)),
        (
            "llama.attention.layer_norm_rms_epsilon",
            Value::F32(f32::NAN),
        ),
        ("llama.rope.freq_base", Value::F32(-1.0)),
    ] {
        cases.push(("hyperparameter", parts().set(k, v).bytes()));
    }
    // MF-22 a token embedding smaller than vocabulary × hidden.
    let mut p = parts();
    let emb = p
        .tensors
        .iter_mut()
        .find(|t| t.0 == "token_embd.weight")
        .unwrap();
    emb.1[1] /= 2;
    emb.3.truncate(emb.3.len() / 2);
    cases.push(("token_embd too small", p.bytes()));
    // A layer weight with its two dimensions swapped.
    let mut p = parts();
    let w = p
        .tensors
        .iter_mut()
        .find(|t| t.0 == "blk.0.ffn_down.weight")
        .unwrap();
    w.1.swap(0, 1);
    cases.push(("swapped dims", p.bytes()));

    // MF-07: a zero dimension is a defined, empty tensor (inspect may list it); running such a
    // file fails for want of a model, cleanly.
    let zero = dir.path().join("zero-dim.gguf");
    std::fs::write(&zero, one_tensor_file(&[0, 16], 0, 0, 64)).unwrap();
    let (code, err, _) = capped(&["inspect", zero.to_str().unwrap()]);
    assert!(
        code == 0 || (code == 1 && !err.contains("panicked")),
        "{err}"
    );
    let (code, err, _) = capped(&["run", "--model", zero.to_str().unwrap(), "hi"]);
    assert!(code == 1 && !err.contains("panicked"), "{err}");

    for (i, (case, bytes)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("case{i:02}.gguf"));
        std::fs::write(&path, bytes).unwrap();
        refused(&path, case);
    }
}
