//! The machine's int8 multiply-add peak for an ISA level, measured with short probes (as
//! `membw` measures memory reads): what prefill's matrix products are compared against. Each
//! thread of the pool runs independent multiply-add chains on registers, no memory traffic.

use crate::kernels::Isa;
use crate::pool::Pool;
use std::sync::Mutex;

/// FMA chains in flight: enough to cover the latency (4 cycles) of two ports.
const FMA_CHAINS: usize = 10;

/// Sustained int8 multiply-adds per second over the pool's threads with the instructions the
/// `isa` level's kernels use (AMX tiles, AVX-512 VNNI, AVX2 `vpmaddubsw`, NEON `sdot` or
/// `smull`), or `None` where no probe exists for the level (generic).
pub fn int8_peak(pool: &Pool, isa: Isa) -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    {
        let per_thread: fn() -> f64 = match isa {
            Isa::Amx => || match crate::amx::Amx::new() {
                Ok(a) => a.peak_macs_per_s(),
                Err(_) => 0.0,
            },
            // SAFETY (both): the level is only chosen where the CPU has its features.
            Isa::Avx512 => || best_of(|n| unsafe { x86::vnni(n) }),
            Isa::Avx2 => || best_of(|n| unsafe { x86::maddubs(n) }),
            Isa::Avx2Vnni => || best_of(|n| unsafe { x86::vnni256(n) }),
            _ => return None,
        };
        over_threads(pool, per_thread)
    }
    #[cfg(target_arch = "aarch64")]
    {
        match isa {
            // SAFETY (both): the level is only chosen where the CPU has its instructions.
            Isa::NeonMm => over_threads(pool, || best_of(|n| unsafe { arm::smmla128(n) })),
            Isa::NeonDot => over_threads(pool, || best_of(|n| unsafe { arm::sdot128(n) })),
            Isa::Neon => over_threads(pool, || best_of(|n| unsafe { arm::smull128(n) })),
            _ => None,
        }
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        let _ = (pool, isa);
        None
    }
}

/// Sustained f32 multiply-adds per second over the pool's threads with the FMA of the `isa`
/// level's float tiles (AVX-512, AVX2, NEON), what prefill of BF16/F16/F32 weights is compared
/// against; `None` for the generic level.
pub fn f32_peak(pool: &Pool, isa: Isa) -> Option<f64> {
    let per_thread: fn() -> f64 = match isa {
        // SAFETY (all): the level is only chosen where the CPU has its features.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 | Isa::Amx => || best_of(|n| unsafe { x86::fma512(n) }),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx2Vnni => || best_of(|n| unsafe { x86::fma256(n) }),
        #[cfg(target_arch = "aarch64")]
        Isa::Neon | Isa::NeonDot | Isa::NeonMm => || best_of(|n| unsafe { arm::fma128(n) }),
        _ => return None,
    };
    over_threads(pool, per_thread)
}

/// Sustained BF16 multiply-adds per second over the pool's threads on the AMX tiles, what the
/// `amx` level's products of BF16/F16 weights are compared against (each of their
/// multiply-adds takes two or three on the tiles: `kernels/amx_float.rs`); `None` elsewhere.
pub fn bf16_tile_peak(pool: &Pool, isa: Isa) -> Option<f64> {
    if isa != Isa::Amx || !crate::kernels::amx_float::available() {
        return None;
    }
    over_threads(pool, || {
        crate::amx::Amx::new()
            .ok()
            .and_then(|a| a.bf16_peak_macs_per_s())
            .unwrap_or(0.0)
    })
}

/// The sum of `per_thread()` run on every thread of the pool at once (`None` if nothing).
fn over_threads(pool: &Pool, per_thread: fn() -> f64) -> Option<f64> {
    let total = Mutex::new(0.0);
    pool.run(&|_, _| {
        let r = per_thread();
        *total.lock().unwrap_or_else(|e| e.into_inner()) += r;
    });
    let t = total.into_inner().unwrap_or_else(|e| e.into_inner());
    (t > 0.0).then_some(t)
}

/// The best of five runs of `spin(iterations)` (which returns the multiply-adds it did), each
/// about 10 ms on current CPUs.
fn best_of(spin: impl Fn(u64) -> u64) -> f64 {
    spin(20_000); // wake the units up
    (0..5)
        .map(|_| {
            let t0 = std::time::Instant::now();
            let macs = spin(200_000);
            macs as f64 / t0.elapsed().as_secs_f64()
        })
        .fold(0.0, f64::max)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;
    use std::hint::black_box;

    /// Chains in flight: enough to cover the latency (5 cycles) of two ports.
    const CHAINS: usize = 12;

    /// `vpdpbusd` on 512-bit registers: 64 multiply-adds each.
    #[target_feature(enable = "avx512f,avx512vnni")]
    pub unsafe fn vnni(iters: u64) -> u64 {
        let (a, b) = (
            black_box(_mm512_set1_epi8(1)),
            black_box(_mm512_set1_epi8(2)),
        );
        let mut acc = [_mm512_setzero_si512(); CHAINS];
        for _ in 0..iters {
            for v in acc.iter_mut() {
                *v = _mm512_dpbusd_epi32(*v, a, b);
            }
        }
        black_box(acc);
        iters * (CHAINS * 64) as u64
    }

    /// `vpdpbusd` on 256-bit registers (AVX-VNNI): 32 multiply-adds each.
    #[target_feature(enable = "avx2,avxvnni")]
    pub unsafe fn vnni256(iters: u64) -> u64 {
        let (a, b) = (
            black_box(_mm256_set1_epi8(1)),
            black_box(_mm256_set1_epi8(2)),
        );
        let mut acc = [_mm256_setzero_si256(); CHAINS];
        for _ in 0..iters {
            for v in acc.iter_mut() {
                *v = _mm256_dpbusd_avx_epi32(*v, a, b);
            }
        }
        black_box(acc);
        iters * (CHAINS * 32) as u64
    }

    /// `vfmadd231ps` on 512-bit registers: 16 multiply-adds each.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn fma512(iters: u64) -> u64 {
        let (a, b) = (
            black_box(_mm512_set1_ps(0.999)),
            black_box(_mm512_set1_ps(1e-3)),
        );
        let mut acc = [_mm512_setzero_ps(); super::FMA_CHAINS];
        for _ in 0..iters {
            for v in acc.iter_mut() {
                *v = _mm512_fmadd_ps(*v, a, b);
            }
        }
        black_box(acc);
        iters * (super::FMA_CHAINS * 16) as u64
    }

    /// `vfmadd231ps` on 256-bit registers: 8 multiply-adds each.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn fma256(iters: u64) -> u64 {
        let (a, b) = (
            black_box(_mm256_set1_ps(0.999)),
            black_box(_mm256_set1_ps(1e-3)),
        );
        let mut acc = [_mm256_setzero_ps(); super::FMA_CHAINS];
        for _ in 0..iters {
            for v in acc.iter_mut() {
                *v = _mm256_fmadd_ps(*v, a, b);
            }
        }
        black_box(acc);
        iters * (super::FMA_CHAINS * 8) as u64
    }

    /// `vpmaddubsw` + `vpmaddwd` + `vpaddd` on 256-bit registers (the AVX2 kernels' int8 dot):
    /// 32 multiply-adds per triple. The activations change every iteration and each chain has
    /// its own weights, so nothing is loop-invariant and only the adds are chained.
    #[target_feature(enable = "avx2")]
    pub unsafe fn maddubs(iters: u64) -> u64 {
        const N: usize = 6;
        let w: [__m256i; N] = black_box(std::array::from_fn(|j| _mm256_set1_epi8(j as i8 + 1)));
        let (one, ones) = (_mm256_set1_epi8(1), _mm256_set1_epi16(1));
        let mut x = black_box(_mm256_set1_epi8(3));
        let mut acc = [_mm256_setzero_si256(); N];
        for _ in 0..iters {
            x = _mm256_add_epi8(x, one);
            for (v, w) in acc.iter_mut().zip(&w) {
                let p = _mm256_madd_epi16(_mm256_maddubs_epi16(x, *w), ones);
                *v = _mm256_add_epi32(*v, p);
            }
        }
        black_box(acc);
        iters * (N * 32) as u64
    }
}

#[cfg(target_arch = "aarch64")]
mod arm {
    use std::arch::aarch64::*;
    use std::hint::black_box;

    /// `fmla` on 128-bit registers: 4 multiply-adds each.
    pub unsafe fn fma128(iters: u64) -> u64 {
        let (a, b) = (black_box(vdupq_n_f32(0.999)), black_box(vdupq_n_f32(1e-3)));
        let mut acc = [vdupq_n_f32(0.0); super::FMA_CHAINS];
        for _ in 0..iters {
            for v in acc.iter_mut() {
                *v = vfmaq_f32(b, *v, a);
            }
        }
        black_box(acc);
        iters * (super::FMA_CHAINS * 4) as u64
    }

    /// `$insn` on 128-bit registers in 12 chains, `$macs` multiply-adds each.
    macro_rules! int8_probe {
        ($(#[$doc:meta])* $name:ident, $features:literal, $insn:literal, $macs:literal) => {
            $(#[$doc])*
            #[target_feature(enable = $features)]
            pub unsafe fn $name(iters: u64) -> u64 {
                const CHAINS: usize = 12;
                let (a, b) = (black_box(vdupq_n_s8(1)), black_box(vdupq_n_s8(2)));
                let mut acc = [vdupq_n_s32(0); CHAINS];
                for _ in 0..iters {
                    for v in acc.iter_mut() {
                        std::arch::asm!(
                            concat!($insn, " {acc:v}.4s, {a:v}.16b, {b:v}.16b"),
                            acc = inout(vreg) *v,
                            a = in(vreg) a,
                            b = in(vreg) b,
                            options(pure, nomem, nostack, preserves_flags)
                        );
                    }
                }
                black_box(acc);
                iters * (CHAINS * $macs) as u64
            }
        };
    }
    int8_probe!(
        /// `sdot` (the packed tiles' product): 16 multiply-adds each.
        sdot128, "neon,dotprod", "sdot", 16
    );
    int8_probe!(
        /// `smmla` (the packed tiles' product of token pairs): 32 multiply-adds each (2 × 2
        /// sums of 8).
        smmla128, "neon,i8mm", "smmla", 32
    );

    /// `smull` + `smull2` + `addp` + `sadalp` (the packed tiles' product without `sdot`): 16
    /// multiply-adds per four. Each chain has its own weights and the activations change every
    /// iteration, so only the accumulations are chained.
    pub unsafe fn smull128(iters: u64) -> u64 {
        const CHAINS: usize = 6;
        let w: [int8x16_t; CHAINS] = black_box(std::array::from_fn(|j| vdupq_n_s8(j as i8 + 1)));
        let (one, mut x) = (vdupq_n_s8(1), black_box(vdupq_n_s8(3)));
        let mut acc = [vdupq_n_s32(0); CHAINS];
        for _ in 0..iters {
            x = vaddq_s8(x, one);
            for (v, w) in acc.iter_mut().zip(&w) {
                let lo = vmull_s8(vget_low_s8(*w), vget_low_s8(x));
                let hi = vmull_high_s8(*w, x);
                *v = vpadalq_s16(*v, vpaddq_s16(lo, hi));
            }
        }
        black_box(acc);
        iters * (CHAINS * 16) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every level with a probe reports a plausible int8 and f32 peak (more than 1 G
    /// multiply-adds/s); the others say there is none.
    #[test]
    fn probes_report_a_peak_where_they_exist() {
        let (one, two) = (Pool::new(1).unwrap(), Pool::new(2).unwrap());
        for isa in Isa::available() {
            let p = int8_peak(&two, isa);
            eprintln!(
                "{}: {:?} G MAC/s on 2 threads, {:?} on 1",
                isa.name(),
                p.map(|p| p / 1e9),
                int8_peak(&one, isa).map(|p| p / 1e9)
            );
            match isa {
                Isa::Generic => assert!(p.is_none()),
                // CI runs NEON under qemu, far below any real core's rate.
                Isa::Neon | Isa::NeonDot | Isa::NeonMm => assert!(p.unwrap() > 0.0, "{isa:?}"),
                _ => assert!(p.unwrap() > 1e9, "{isa:?}"),
            }
            let f = f32_peak(&two, isa);
            eprintln!(
                "{}: f32 {:?} G MAC/s on 2 threads",
                isa.name(),
                f.map(|p| p / 1e9)
            );
            match isa {
                Isa::Generic => assert!(f.is_none()),
                // CI runs NEON under qemu, far below any real core's rate.
                Isa::Neon | Isa::NeonDot | Isa::NeonMm => assert!(f.unwrap() > 0.0, "{isa:?}"),
                _ => assert!(f.unwrap() > 1e9, "{isa:?}"),
            }
        }
    }
}
