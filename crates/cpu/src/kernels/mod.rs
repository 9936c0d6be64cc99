//! Kernel table chosen at start-up by CPU feature detection. Each instruction-set file holds the
//! same kernels as `generic.rs`, which is the oracle they are tested against.
//! `SUANLI_CPU_ISA=generic|avx2|avx2vnni|avx512|amx|neon|neondot|neonmm` forces a level (never
//! one the CPU lacks).

pub mod acts;
pub mod amx_float;
#[cfg(target_arch = "x86_64")]
mod amx_packed;
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
pub mod avx2_packed;
#[cfg(target_arch = "x86_64")]
mod avx2_q;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
pub mod avx512_packed;
#[cfg(target_arch = "x86_64")]
mod avx512_sub;
#[cfg(target_arch = "x86_64")]
mod avx512_wide;
pub mod float_tiles;
mod generic;
#[cfg(target_arch = "aarch64")]
mod neon;
#[cfg(target_arch = "aarch64")]
pub mod neon_packed;
mod packed_kinds;
pub mod pacts;
#[cfg(target_arch = "x86_64")]
mod x86;

/// Ask for every cache line of `v`: for data the next step needs and the hardware prefetchers
/// cannot guess (scattered KV-cache blocks, head rows picked by value). x86 and aarch64;
/// elsewhere nothing.
pub(crate) fn prefetch_lines<T>(v: &[T]) {
    let p = v.as_ptr() as *const u8;
    for o in (0..std::mem::size_of_val(v)).step_by(64) {
        // SAFETY (both): a hint on an address inside the slice; it reads and writes nothing.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                p.add(o) as *const i8
            )
        };
        #[cfg(target_arch = "aarch64")]
        unsafe {
            std::arch::asm!(
                "prfm pldl1keep, [{p}]",
                p = in(reg) p.add(o),
                options(nostack, readonly, preserves_flags)
            )
        };
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        let _ = (p, o);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    Generic,
    Avx2,
    /// `Avx2` plus AVX-VNNI (`vpdpbusd` on 256-bit registers: Intel Alder Lake and later cores
    /// without AVX-512, Sierra Forest, AMD Zen 5): the packed AVX2 tiles with one instruction per
    /// 4 columns instead of `vpmaddubsw` + `vpmaddwd`.
    Avx2Vnni,
    /// AVX-512 F/BW/VL/DQ with VNNI (plus AVX2/FMA/F16C).
    Avx512,
    /// `Avx512` plus AMX tiles (granted to this process): BF16 tiles for the prompt rows'
    /// attention (`attention/amx.rs`), int8 tiles for packed products of 32 tokens or more
    /// (bit-identical to VNNI).
    Amx,
    /// aarch64 Advanced SIMD: quantized matrices repacked at load for the packed tiles
    /// (`neon_packed`, widening multiplies).
    Neon,
    /// `Neon` plus the dot-product instructions: the packed tiles with `sdot`.
    NeonDot,
    /// `NeonDot` plus the int8 matrix multiplies (ARMv8.6 I8MM: AWS Graviton 3 and later,
    /// Apple M2 and later, Neoverse N2/V1/V2, Cortex-A710/X2 and later): tiles of two tokens or
    /// more with `smmla`, twice `sdot`'s multiply-adds per instruction.
    NeonMm,
}

impl Isa {
    pub fn name(self) -> &'static str {
        match self {
            Isa::Generic => "generic",
            Isa::Avx2 => "avx2+fma+f16c",
            Isa::Avx2Vnni => "avx2+avxvnni",
            Isa::Avx512 => "avx512+vnni",
            Isa::Amx => "amx+avx512",
            Isa::Neon => "neon",
            Isa::NeonDot => "neon+dotprod",
            Isa::NeonMm => "neon+dotprod+i8mm",
        }
    }

    /// The levels this CPU can run, lowest first.
    pub fn available() -> Vec<Isa> {
        let mut v = vec![Isa::Generic];
        #[cfg(target_arch = "aarch64")]
        if std::arch::is_aarch64_feature_detected!("neon") {
            v.push(Isa::Neon);
            if std::arch::is_aarch64_feature_detected!("dotprod") {
                v.push(Isa::NeonDot);
                if std::arch::is_aarch64_feature_detected!("i8mm") {
                    v.push(Isa::NeonMm);
                }
            }
        }
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c")
        {
            v.push(Isa::Avx2);
            if std::arch::is_x86_feature_detected!("avxvnni") {
                v.push(Isa::Avx2Vnni);
            }
            let f = |name| match name {
                "avx512f" => std::arch::is_x86_feature_detected!("avx512f"),
                "avx512bw" => std::arch::is_x86_feature_detected!("avx512bw"),
                "avx512vl" => std::arch::is_x86_feature_detected!("avx512vl"),
                "avx512dq" => std::arch::is_x86_feature_detected!("avx512dq"),
                "f16c" => std::arch::is_x86_feature_detected!("f16c"),
                _ => std::arch::is_x86_feature_detected!("avx512vnni"),
            };
            if [
                "avx512f",
                "avx512bw",
                "avx512vl",
                "avx512dq",
                "avx512vnni",
                "f16c",
            ]
            .into_iter()
            .all(f)
            {
                v.push(Isa::Avx512);
                if crate::amx::Amx::new().is_ok() {
                    v.push(Isa::Amx);
                }
            }
        }
        v
    }

    /// The best level, or the one forced by `SUANLI_CPU_ISA` when the CPU supports it.
    pub fn detect() -> Result<Isa, String> {
        let avail = Isa::available();
        match std::env::var("SUANLI_CPU_ISA")
            .ok()
            .filter(|s| !s.is_empty())
        {
            None => Ok(*avail.last().expect("generic is always available")),
            Some(want) => {
                let isa = match want.as_str() {
                    "generic" => Isa::Generic,
                    "avx2" => Isa::Avx2,
                    "avx2vnni" => Isa::Avx2Vnni,
                    "avx512" => Isa::Avx512,
                    "amx" => Isa::Amx,
                    "neon" => Isa::Neon,
                    "neondot" => Isa::NeonDot,
                    "neonmm" => Isa::NeonMm,
                    other => {
                        return Err(format!(
                        "SUANLI_CPU_ISA={other} is not a known level (generic, avx2, avx2vnni, avx512, amx, neon, neondot, neonmm)"
                    ))
                    }
                };
                if avail.contains(&isa) {
                    Ok(isa)
                } else {
                    Err(format!(
                        "SUANLI_CPU_ISA={want}: this CPU does not support it"
                    ))
                }
            }
        }
    }
}

/// Grow a scratch vector to at least `n` (never shrunk: the largest input's size is kept, and
/// a shrunk `Vec` would write zeros over the regrown part each time sizes alternate), and give
/// its first `n`.
pub(crate) fn at_least<T: Copy>(v: &mut Vec<T>, n: usize, zero: T) -> &mut [T] {
    if v.len() < n {
        v.resize(n, zero);
    }
    &mut v[..n]
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
    /// Weight rows against all tokens of pre-laid-out activations, for the types
    /// `RowTokens::supports` accepts.
    pub row_tokens: Option<RowTokens>,
}

#[derive(Clone, Copy)]
pub struct RowTokens {
    pub supports: fn(DType) -> bool,
    /// `(ty, rows, row_bytes, acts, n_tokens, out)`: `out[r * n_tokens + t]`.
    pub run: fn(DType, &[u8], usize, &acts::QActs, usize, &mut [f32]),
}

impl Kernels {
    pub fn for_isa(isa: Isa) -> Kernels {
        use suanli_core::quant::dot as scalar;
        match isa {
            Isa::Generic => Kernels {
                isa,
                dot: generic::dot,
                axpy: generic::axpy,
                dot_q8: scalar::dot_q8,
                dot_q8k: scalar::dot_q8k,
                row_tokens: None,
            },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 | Isa::Avx2Vnni => Kernels {
                isa,
                dot: avx2::dot,
                axpy: avx2::axpy,
                dot_q8: avx2::dot_q8,
                dot_q8k: avx2::dot_q8k,
                row_tokens: None,
            },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 | Isa::Amx => Kernels {
                isa,
                dot: avx2::dot,
                axpy: avx2::axpy,
                dot_q8: avx2::dot_q8,
                dot_q8k: avx2::dot_q8k,
                row_tokens: Some(RowTokens {
                    supports: avx512::supports,
                    run: avx512::rows_tokens,
                }),
            },
            #[cfg(target_arch = "aarch64")]
            Isa::Neon | Isa::NeonDot | Isa::NeonMm => Kernels {
                isa,
                dot: neon::dot,
                axpy: neon::axpy,
                dot_q8: neon::dot_q8,
                dot_q8k: scalar::dot_q8k,
                row_tokens: None,
            },
            #[cfg(not(target_arch = "x86_64"))]
            Isa::Avx2 | Isa::Avx2Vnni | Isa::Avx512 | Isa::Amx => {
                unreachable!("x86 levels are never detected off x86_64")
            }
            #[cfg(not(target_arch = "aarch64"))]
            Isa::Neon | Isa::NeonDot | Isa::NeonMm => {
                unreachable!("NEON is never detected off aarch64")
            }
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
                assert!(
                    (x - y).abs() <= 1e-5 * mag.max(1.0),
                    "{isa:?} n={n}: {x} vs {y}"
                );
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

    use crate::testutil::{bytes, quant_rows};

    fn row(ty: DType, n: usize, seed: u32) -> Vec<u8> {
        quant_rows(ty, 1, n, seed)
    }

    #[test]
    fn every_isa_quantized_dot_matches_generic() {
        let g = Kernels::for_isa(Isa::Generic);
        // 1056 = 33 blocks of 32: an odd block count exercises the kernels' tails.
        for (n, isa, ty) in [1024usize, 1056]
            .into_iter()
            .flat_map(|n| Isa::available().into_iter().map(move |i| (n, i)))
            .flat_map(|(n, i)| DType::ALL.into_iter().map(move |t| (n, i, t)))
            .filter(|(n, _, t)| t.is_quantized() && n % t.block_elems() == 0)
        {
            let x: Vec<f32> = bytes(n, 5)
                .iter()
                .map(|&b| (b as f32 - 128.0) / 17.0)
                .collect();
            let k = Kernels::for_isa(isa);
            {
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
                    assert!(
                        (a - b).abs() <= 1e-4 * a.abs().max(1.0),
                        "{isa:?} {ty}: {b} vs generic {a}"
                    );
                    if let Some(rt) = k.row_tokens.filter(|rt| (rt.supports)(ty)) {
                        // The same row against 8 tokens (and 1): token j is x scaled by (j + 1).
                        let xs: Vec<f32> = (0..8)
                            .flat_map(|j| x.iter().map(move |v| v * (j + 1) as f32))
                            .collect();
                        let mut qa = acts::QActs::default();
                        let want: Vec<f32> = match act_format(ty) {
                            ActFormat::Q8K => {
                                let mut q = vec![BlockQ8K::default(); 8 * n / 256];
                                quantize_q8k(&xs, &mut q);
                                qa.fill_q8k(&crate::pool::Pool::new(2).unwrap(), &q, n);
                                q.chunks(n / 256)
                                    .map(|qt| (g.dot_q8k)(ty, &w, qt))
                                    .collect()
                            }
                            f => {
                                let mut q = vec![BlockQ8::default(); 8 * n / 32];
                                quantize_q8(&xs, f == ActFormat::Q8_1, &mut q);
                                qa.fill_q8(&crate::pool::Pool::new(2).unwrap(), &q, n);
                                q.chunks(n / 32).map(|qt| (g.dot_q8)(ty, &w, qt)).collect()
                            }
                        };
                        // Five copies of the row: four take the 4-row tiles where a type has them, the
                        // fifth the single-row path.
                        let rows5 =
                            [w.clone(), w.clone(), w.clone(), w.clone(), w.clone()].concat();
                        let mut got = [0f32; 40];
                        (rt.run)(ty, &rows5, w.len(), &qa, 8, &mut got);
                        let mut one = [0f32; 1];
                        (rt.run)(ty, &w, w.len(), &qa, 1, &mut one);
                        for (j, (g8, w8)) in got.iter().zip(want.iter().cycle()).enumerate() {
                            assert!(
                                (g8 - w8).abs() <= 1e-4 * w8.abs().max(1.0),
                                "{isa:?} {ty} token {j}: {g8} vs generic {w8}"
                            );
                        }
                        assert!(
                            (one[0] - want[0]).abs() <= 1e-4 * want[0].abs().max(1.0),
                            "{isa:?} {ty} single token"
                        );
                    }
                }
            }
        }
    }
}
