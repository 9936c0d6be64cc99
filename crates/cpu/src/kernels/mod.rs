//! Kernel table chosen at start-up by CPU feature detection. Each instruction-set file holds the
//! same kernels as `generic.rs`, which is the oracle they are tested against.
//! `SUANLI_CPU_ISA=generic|avx2` forces a level (never above what the CPU has).

mod generic;
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx2_q;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    Generic,
    Avx2,
}

impl Isa {
    pub fn name(self) -> &'static str {
        match self {
            Isa::Generic => "generic",
            Isa::Avx2 => "avx2+fma",
        }
    }

    /// The levels this CPU can run, lowest first.
    pub fn available() -> Vec<Isa> {
        let mut v = vec![Isa::Generic];
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            v.push(Isa::Avx2);
        }
        v
    }

    /// The best level, or the one forced by `SUANLI_CPU_ISA` when the CPU supports it.
    pub fn detect() -> Result<Isa, String> {
        let avail = Isa::available();
        match std::env::var("SUANLI_CPU_ISA").ok().filter(|s| !s.is_empty()) {
            None => Ok(*avail.last().expect("generic is always available")),
            Some(want) => {
                let isa = match want.as_str() {
                    "generic" => Isa::Generic,
                    "avx2" => Isa::Avx2,
                    other => return Err(format!("SUANLI_CPU_ISA={other} is not a known level (generic, avx2)")),
                };
                if avail.contains(&isa) {
                    Ok(isa)
                } else {
                    Err(format!("SUANLI_CPU_ISA={want}: this CPU does not support it"))
                }
            }
        }
    }
}

use suanli_core::quant::q8::{BlockQ8, BlockQ8K};
use suanli_core::DType;

/// The kernels one ISA level provides.
#[derive(Clone, Copy)]
pub struct Kernels {
    pub isa: Isa,
    /// Dot product of two equal-length f32 slices.
    pub dot: fn(&[f32], &[f32]) -> f32,
    /// y += a * x
    pub axpy: fn(f32, &[f32], &mut [f32]),
    /// A weight row of a 32-block type · Q8_0/Q8_1 activations.
    pub dot_q8: fn(DType, &[u8], &[BlockQ8]) -> f32,
    /// A weight row of a K-quant type · Q8_K activations.
    pub dot_q8k: fn(DType, &[u8], &[BlockQ8K]) -> f32,
}

impl Kernels {
    pub fn for_isa(isa: Isa) -> Kernels {
        use suanli_core::quant::dot as scalar;
        match isa {
            Isa::Generic => Kernels { isa, dot: generic::dot, axpy: generic::axpy, dot_q8: scalar::dot_q8, dot_q8k: scalar::dot_q8k },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => Kernels { isa, dot: avx2::dot, axpy: avx2::axpy, dot_q8: avx2::dot_q8, dot_q8k: avx2::dot_q8k },
            #[cfg(not(target_arch = "x86_64"))]
            Isa::Avx2 => unreachable!("avx2 is never detected off x86_64"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(1664525).wrapping_add(1013904223);
                (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
            })
            .collect()
    }

    #[test]
    fn every_isa_dot_and_axpy_match_generic() {
        let g = Kernels::for_isa(Isa::Generic);
        for isa in Isa::available() {
            let k = Kernels::for_isa(isa);
            for n in [0, 1, 7, 16, 33, 64, 100, 896, 4864] {
                let (a, b) = (data(n, 1), data(n, 2));
                let (x, y) = ((g.dot)(&a, &b), (k.dot)(&a, &b));
                // Summation order differs between levels: tolerance relative to sum of |a_i b_i|.
                let mag: f32 = a.iter().zip(&b).map(|(p, q)| (p * q).abs()).sum();
                assert!((x - y).abs() <= 1e-5 * mag.max(1.0), "{isa:?} n={n}: {x} vs {y}");
                let mut y1 = b.clone();
                let mut y2 = b.clone();
                (g.axpy)(0.37, &a, &mut y1);
                (k.axpy)(0.37, &a, &mut y2);
                for (p, q) in y1.iter().zip(&y2) {
                    assert!((p - q).abs() <= 1e-6, "{isa:?} axpy");
                }
            }
        }
    }
}

#[cfg(test)]
mod quant_tests {
    use super::*;
    use suanli_core::quant::q8::{act_format, quantize_q8, quantize_q8k, ActFormat};

    fn bytes(n: usize, seed: u32) -> Vec<u8> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(1664525).wrapping_add(1013904223);
                (s >> 24) as u8
            })
            .collect()
    }

    /// Quantized weight rows with sane f16 scales at the given byte offsets of each block.
    fn row(ty: DType, n: usize, seed: u32) -> Vec<u8> {
        let mut r = bytes(ty.row_bytes(n).unwrap(), seed);
        for blk in r.chunks_exact_mut(ty.block_bytes()) {
            for &o in suanli_core::quant::f16_scale_offsets(ty) {
                let v = half::f16::from_f32(0.002 + (blk[o] % 13) as f32 * 0.001).to_le_bytes();
                blk[o..o + 2].copy_from_slice(&v);
            }
        }
        r
    }

    #[test]
    fn every_isa_quantized_dot_matches_generic() {
        let g = Kernels::for_isa(Isa::Generic);
        let n = 1024;
        let x: Vec<f32> = bytes(n, 5).iter().map(|&b| (b as f32 - 128.0) / 17.0).collect();
        for isa in Isa::available() {
            let k = Kernels::for_isa(isa);
            for ty in DType::ALL.into_iter().filter(|t| t.is_quantized()) {
                for seed in 0..4 {
                    let w = row(ty, n, seed * 7 + 1);
                    let (a, b) = match act_format(ty) {
                        ActFormat::Q8K => {
                            let mut q = vec![BlockQ8K::default(); n / 256];
                            quantize_q8k(&x, &mut q);
                            ((g.dot_q8k)(ty, &w, &q), (k.dot_q8k)(ty, &w, &q))
                        }
                        f => {
                            let mut q = vec![BlockQ8::default(); n / 32];
                            quantize_q8(&x, f == ActFormat::Q8_1, &mut q);
                            ((g.dot_q8)(ty, &w, &q), (k.dot_q8)(ty, &w, &q))
                        }
                    };
                    assert!((a - b).abs() <= 1e-4 * a.abs().max(1.0), "{isa:?} {ty}: {b} vs generic {a}");
                }
            }
        }
    }
}
