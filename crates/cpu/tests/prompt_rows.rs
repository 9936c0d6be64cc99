//! At the `amx` level a BF16 or F16 product multiplies the step's prompt rows on the AMX BF16
//! tiles and its generated rows on the vector units (`Backend::step_rows`): in a step that mixes
//! them (one sequence's prompt beside another's decode, as continuous batching runs them), each
//! row is the same bits as in a step of its own kind alone, and the two kinds differ (the tiles
//! ran). Skipped, visibly, without AMX BF16 tiles.
use suanli_backend::{ActPrecision, AttnSeq, Backend, HostTensor, WeightRole};
use suanli_core::DType;
use suanli_cpu::kernels::{amx_float, Isa};
use suanli_cpu::CpuBackend;

fn seq(q_start: usize, q_len: usize, ctx_len: usize, generated_from: usize) -> AttnSeq {
    AttnSeq {
        q_start,
        q_len,
        ctx_len,
        block_table: Vec::new(),
        generated_from,
    }
}

#[test]
fn mixed_steps_give_each_row_the_bits_of_its_kind() {
    if !Isa::available().contains(&Isa::Amx) || !amx_float::available() {
        eprintln!("SKIPPED: no AMX BF16 tiles on this machine");
        return;
    }
    let b = CpuBackend::with_isa(Some(2), Isa::Amx).unwrap();
    let (rows, cols) = (70, 300);
    let v = |i: usize| ((i * 7919 % 2003) as f32 - 1001.0) / 1001.0;
    for ty in [DType::BF16, DType::F16] {
        let raw: Vec<u8> = (0..rows * cols)
            .flat_map(|i| match ty {
                DType::BF16 => half::bf16::from_f32(v(i)).to_le_bytes(),
                _ => half::f16::from_f32(v(i)).to_le_bytes(),
            })
            .collect();
        let raw = suanli_formats::Bytes::from_vec(raw);
        let w = b
            .prepare_weight(HostTensor {
                name: "w",
                dtype: ty,
                rows,
                cols,
                bytes: &raw,
                role: WeightRole::Matrix,
                precision: ActPrecision::Fast,
            })
            .unwrap();
        // Rows 0..5: sequence A's prompt (positions 0..5); rows 5..8: sequence B's generated
        // tokens (positions 20..23, generated from 10).
        let n = 8;
        let xs: Vec<f32> = (0..n * cols).map(|i| v(i + 11) * 3.0).collect();
        let product = |x: &[f32], seqs: &[AttnSeq]| {
            let n = x.len() / cols;
            let mut xa = b.alloc_act(n, cols).unwrap();
            b.upload(x, n, &mut xa).unwrap();
            let mut out = b.alloc_act(n, rows).unwrap();
            b.step_rows(Some((seqs, n)));
            b.linear(&xa, &w, None, &mut out).unwrap();
            b.step_rows(None);
            b.download(&out).unwrap()
        };
        let mixed = product(&xs, &[seq(0, 5, 5, usize::MAX), seq(5, 3, 23, 10)]);
        let prompt = product(&xs[..5 * cols], &[seq(0, 5, 5, usize::MAX)]);
        let generated = product(&xs[5 * cols..], &[seq(0, 3, 23, 10)]);
        assert!(
            mixed[..5 * rows] == prompt[..],
            "{ty}: prompt rows changed by the mix"
        );
        assert!(
            mixed[5 * rows..] == generated[..],
            "{ty}: generated rows changed by the mix"
        );
        // The same prompt rows as generated ones: other kernels, other bits (close ones).
        let as_generated = product(&xs[..5 * cols], &[seq(0, 5, 5, 0)]);
        assert!(
            as_generated != prompt,
            "{ty}: the prompt rows did not take the tiles"
        );
        let worst = as_generated
            .iter()
            .zip(&prompt)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-3, "{ty}: tiles against f32 differ by {worst}");
    }
}
