//! Elementwise math in plain arithmetic, so that loops over it vectorize (under each ISA's
//! `target_feature` wrapper) and give the same bits at every ISA level.

/// e^x to about 2 ulp for x in [−87, 88] (clamped outside: ~1e-38 below, ~1.6e38 above).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two so that n · LN2_HI is exact.
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding and subtracting 1.5 · 2^23 rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * LOG2E + ROUND;
    let n = shifted - ROUND;
    // n as an integer, read from the shifted float's low mantissa bits: integer arithmetic
    // that vectorizes (`n as i32` saturates, which LLVM turns into a scalar loop here).
    let ni = (shifted.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let r = (x - n * LN2_HI) - n * LN2_LO;
    // Taylor to degree 6 on |r| ≤ ln2 / 2.
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    p * f32::from_bits(((ni + 127) as u32) << 23)
}

/// out = silu(gate) · up, silu(g) = g / (1 + e^−g). (Plain IEEE operations: the same bits
/// however a caller's loop is vectorized.)
#[inline(always)]
pub(crate) fn silu_mul_plain(gate: &[f32], up: &[f32], out: &mut [f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = g / (1.0 + exp(-g)) * u;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn silu_mul_avx512(gate: &[f32], up: &[f32], out: &mut [f32]) {
    silu_mul_plain(gate, up, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn silu_mul_avx2(gate: &[f32], up: &[f32], out: &mut [f32]) {
    silu_mul_plain(gate, up, out)
}

/// out = gelu(gate) · up with GELU's tanh approximation, written as
/// g · sigmoid(2·√(2/π)·(g + 0.044715·g³)) (the same function: 0.5·(1 + tanh y) = sigmoid(2y)).
#[inline(always)]
fn gelu_mul_plain(gate: &[f32], up: &[f32], out: &mut [f32]) {
    const C: f32 = 2.0 * 0.797_884_6; // 2·√(2/π)
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = g / (1.0 + exp(-C * (g + 0.044_715 * g * g * g))) * u;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn gelu_mul_avx512(gate: &[f32], up: &[f32], out: &mut [f32]) {
    gelu_mul_plain(gate, up, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn gelu_mul_avx2(gate: &[f32], up: &[f32], out: &mut [f32]) {
    gelu_mul_plain(gate, up, out)
}

pub fn gelu_mul(isa: crate::kernels::Isa, gate: &[f32], up: &[f32], out: &mut [f32]) {
    match isa {
        // SAFETY: an ISA level is only ever chosen when the CPU has it.
        #[cfg(target_arch = "x86_64")]
        crate::kernels::Isa::Avx512 | crate::kernels::Isa::Amx => unsafe {
            gelu_mul_avx512(gate, up, out)
        },
        #[cfg(target_arch = "x86_64")]
        crate::kernels::Isa::Avx2 | crate::kernels::Isa::Avx2Vnni => unsafe {
            gelu_mul_avx2(gate, up, out)
        },
        _ => gelu_mul_plain(gate, up, out),
    }
}

pub fn silu_mul(isa: crate::kernels::Isa, gate: &[f32], up: &[f32], out: &mut [f32]) {
    // Isa's x86 levels by full path: on other architectures the arms go, and an import would
    // be unused.
    match isa {
        // SAFETY: an ISA level is only ever chosen when the CPU has it.
        #[cfg(target_arch = "x86_64")]
        crate::kernels::Isa::Avx512 | crate::kernels::Isa::Amx => unsafe {
            silu_mul_avx512(gate, up, out)
        },
        #[cfg(target_arch = "x86_64")]
        crate::kernels::Isa::Avx2 | crate::kernels::Isa::Avx2Vnni => unsafe {
            silu_mul_avx2(gate, up, out)
        },
        _ => silu_mul_plain(gate, up, out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exponent read from the shifted float's bits is `n as i32`, over the whole clamped
    /// range (so `exp` keeps its bits).
    #[test]
    fn exp_exponent_from_bits_equals_the_cast() {
        const ROUND: f32 = 12_582_912.0;
        for i in -88_000_000..=89_000_000 {
            if i % 7 != 0 && !(-2_000..=2_000).contains(&i) {
                continue;
            }
            let x = (i as f32 * 1e-6).clamp(-87.0, 88.0);
            let shifted = x * std::f32::consts::LOG2_E + ROUND;
            let n = shifted - ROUND;
            let ni = (shifted.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
            assert_eq!(ni, n as i32, "x = {x}");
        }
    }

    #[test]
    fn exp_is_close_to_libm() {
        let mut worst = 0f64;
        for i in -87_000..88_000 {
            let x = i as f32 * 1e-3 + 0.000_37;
            let (got, want) = (exp(x) as f64, (x as f64).exp());
            worst = worst.max(((got - want) / want).abs());
        }
        assert!(worst < 3e-7, "relative error {worst}");
        assert!(exp(-1000.0) >= 0.0 && exp(-1000.0) < 2e-38);
        assert!(exp(1000.0).is_finite());
    }

    #[test]
    fn silu_mul_same_bits_at_every_level() {
        let g: Vec<f32> = (0..1000).map(|i| (i as f32 - 500.0) * 0.05).collect();
        let u: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.3).cos()).collect();
        let mut want = vec![0.0; 1000];
        silu_mul_plain(&g, &u, &mut want);
        for (gi, (&w, (&g, &u))) in want.iter().zip(g.iter().zip(&u)).enumerate() {
            let exact = g as f64 / (1.0 + (-g as f64).exp()) * u as f64;
            assert!(
                (w as f64 - exact).abs() <= 1e-6 * (1.0 + exact.abs()),
                "{gi}"
            );
        }
        for isa in crate::kernels::Isa::available() {
            let mut got = vec![0.0; 1000];
            silu_mul(isa, &g, &u, &mut got);
            assert_eq!(got, want, "{isa:?}");
        }
    }

    #[test]
    fn gelu_mul_is_the_tanh_approximation_with_the_same_bits_at_every_level() {
        let g: Vec<f32> = (0..2000).map(|i| (i as f32 - 1000.0) * 0.02).collect();
        let u: Vec<f32> = (0..2000).map(|i| (i as f32 * 0.3).cos()).collect();
        let mut want = vec![0.0; 2000];
        gelu_mul_plain(&g, &u, &mut want);
        for (gi, (&w, (&g, &u))) in want.iter().zip(g.iter().zip(&u)).enumerate() {
            let x = g as f64;
            let c = (2.0 / std::f64::consts::PI).sqrt();
            let exact = 0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh()) * u as f64;
            assert!(
                (w as f64 - exact).abs() <= 2e-6 * (1.0 + exact.abs()),
                "{gi}: {w} vs {exact}"
            );
        }
        for isa in crate::kernels::Isa::available() {
            let mut got = vec![0.0; 2000];
            gelu_mul(isa, &g, &u, &mut got);
            assert_eq!(got, want, "{isa:?}");
        }
    }
}
