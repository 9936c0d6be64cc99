//! Intel AMX (Advanced Matrix Extensions) int8 tiles behind a small safe interface.
//!
//! AMX multiplies 16×64-byte tiles in one instruction: `tdpbusd` accumulates a 16×16 block of
//! i32 from a 16×64 tile of u8 (A: 16 rows of 64 k values) and a 16×64 tile of i8 in VNNI order
//! (B: 16 rows, each holding 16 columns × 4 consecutive k values) — about 8× what one core's
//! AVX-512 VNNI does per cycle. Rust has no AMX intrinsics on stable, so the instructions are
//! inline assembly here, and nothing else in the process touches tile registers.
//!
//! Linux hands out the tile state only on request (`arch_prctl(ARCH_REQ_XCOMP_PERM,
//! XFEATURE_XTILEDATA)`); `Amx::new` asks once per process and returns `None` when the CPU, the
//! kernel or a seccomp profile says no, so callers fall back to VNNI.

#[cfg(target_arch = "x86_64")]
use std::arch::asm;
use std::sync::OnceLock;

/// Proof that this process may use AMX int8 tiles (CPU support, OS state and permission).
#[derive(Clone, Copy, Debug)]
pub struct Amx(());

/// Why AMX is not in use, for the log line of a fallback.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unavailable {
    NotX86,
    /// CPUID does not report AMX-TILE and AMX-INT8.
    NoCpuSupport,
    /// The OS does not enable the tile state in XCR0.
    NoOsSupport,
    /// `arch_prctl(ARCH_REQ_XCOMP_PERM)` failed (an old kernel or a strict seccomp profile).
    PermissionRefused(i64),
}

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unavailable::NotX86 => write!(f, "not an x86-64 CPU"),
            Unavailable::NoCpuSupport => write!(f, "the CPU has no AMX int8 tiles"),
            Unavailable::NoOsSupport => write!(f, "the OS does not enable the AMX tile state"),
            Unavailable::PermissionRefused(e) => write!(
                f,
                "the kernel refused the AMX tile state (arch_prctl error {e})"
            ),
        }
    }
}

static STATE: OnceLock<Result<Amx, Unavailable>> = OnceLock::new();

impl Amx {
    /// AMX int8, if this CPU and OS offer it to this process (asked once per process).
    pub fn new() -> Result<Amx, Unavailable> {
        STATE
            .get_or_init(|| {
                let r = enable();
                // Said once per process, where the CPU has tiles but this process cannot use them.
                if let Err(why @ (Unavailable::NoOsSupport | Unavailable::PermissionRefused(_))) =
                    &r
                {
                    tracing::info!("AMX not used: {why}; AVX-512 VNNI instead");
                }
                r
            })
            .clone()
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn enable() -> Result<Amx, Unavailable> {
    Err(Unavailable::NotX86)
}

#[cfg(target_arch = "x86_64")]
fn enable() -> Result<Amx, Unavailable> {
    use std::arch::x86_64::{__cpuid, __cpuid_count};
    let (max_leaf, l7) = (__cpuid(0).eax, __cpuid_count(7, 0));
    let (tile, int8) = (l7.edx & (1 << 24) != 0, l7.edx & (1 << 25) != 0);
    if max_leaf < 7 || !tile || !int8 {
        return Err(Unavailable::NoCpuSupport);
    }
    // CPUID leaf 1 ECX bit 27 (OSXSAVE) says XGETBV may run.
    let osxsave = __cpuid(1).ecx & (1 << 27) != 0;
    if !osxsave {
        return Err(Unavailable::NoOsSupport);
    }
    let xcr0: u64;
    // SAFETY: OSXSAVE is set, so XGETBV with ECX = 0 is defined.
    unsafe {
        let (lo, hi): (u32, u32);
        asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") hi, options(nomem, nostack));
        xcr0 = (hi as u64) << 32 | lo as u64;
    }
    // XTILECFG (17) and XTILEDATA (18) may be enabled in XCR0 only after permission on Linux;
    // the permission request below is what turns them on for this process.
    const ARCH_REQ_XCOMP_PERM: u64 = 0x1023;
    const XFEATURE_XTILEDATA: u64 = 18;
    const SYS_ARCH_PRCTL: u64 = 158;
    let ret: i64;
    // SAFETY: arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA) only changes this process's permitted
    // extended state; the syscall clobbers rcx and r11.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") SYS_ARCH_PRCTL as i64 => ret,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    if ret != 0 {
        return Err(Unavailable::PermissionRefused(ret));
    }
    if xcr0 & (0b11 << 17) != 0b11 << 17 {
        return Err(Unavailable::NoOsSupport);
    }
    Ok(Amx(()))
}

impl Amx {
    /// Whether the tiles also multiply BF16 (`tdpbf16ps`, CPUID AMX-BF16): every AMX CPU so
    /// far has them, but the instruction set lists them apart.
    pub fn bf16(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            static BF16: OnceLock<bool> = OnceLock::new();
            *BF16.get_or_init(|| std::arch::x86_64::__cpuid_count(7, 0).edx & (1 << 22) != 0)
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    }
}

/// f32 ⇄ bf16 pieces shared by the tile kernels (attention, float weights); the callers enable
/// AVX-512 BF16.
#[cfg(target_arch = "x86_64")]
pub(crate) mod bf16 {
    use std::arch::x86_64::*;

    /// x (32 values: x0 then x1) as bf16 hi and lo rows of 64 bytes each: hi is x rounded to bf16,
    /// lo the bf16 of the exact remainder, so hi + lo is x to 2^-17.
    #[inline(always)]
    pub(crate) unsafe fn split(x0: __m512, x1: __m512, hi: *mut u16, lo: *mut u16) {
        let h: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(x1, x0));
        let (h0, h1) = (
            widen(_mm512_castsi512_si256(h)),
            widen(_mm512_extracti64x4_epi64::<1>(h)),
        );
        let l: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(
            _mm512_sub_ps(x1, h1),
            _mm512_sub_ps(x0, h0),
        ));
        _mm512_storeu_si512(hi as *mut __m512i, h);
        _mm512_storeu_si512(lo as *mut __m512i, l);
    }

    /// As `split`, with hi rounded in x's bits (half away from zero, where `split` rounds ties
    /// to even) on the integer units, so that no bf16 is widened back to f32 for the remainder:
    /// x − hi is exact, and hi + lo is x to 2^-17 as with `split`, in three fewer operations
    /// per row. Not for values within 2^-8 of f32's largest (hi would round to infinity).
    #[inline(always)]
    pub(crate) unsafe fn split_by_bits(x0: __m512, x1: __m512, hi: *mut u16, lo: *mut u16) {
        let (half, top) = (
            _mm512_set1_epi32(0x8000),
            _mm512_set1_epi32(0xFFFF_0000_u32 as i32),
        );
        let round = |x: __m512| {
            let bits = _mm512_add_epi32(_mm512_castps_si512(x), half);
            _mm512_castsi512_ps(_mm512_and_si512(bits, top))
        };
        let (h0, h1) = (round(x0), round(x1));
        // hi has no bits below bf16's, so its conversion is exact.
        let h: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(h1, h0));
        let l: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(
            _mm512_sub_ps(x1, h1),
            _mm512_sub_ps(x0, h0),
        ));
        _mm512_storeu_si512(hi as *mut __m512i, h);
        _mm512_storeu_si512(lo as *mut __m512i, l);
    }

    /// 16 bf16 as f32.
    #[inline(always)]
    pub(crate) unsafe fn widen(v: __m256i) -> __m512 {
        _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(v), 16))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        /// Both splits of 32 values: (hi, lo) as f32.
        #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
        unsafe fn both(x: &[f32; 32]) -> [([f32; 32], [f32; 32]); 2] {
            let (x0, x1) = (
                _mm512_loadu_ps(x.as_ptr()),
                _mm512_loadu_ps(x.as_ptr().add(16)),
            );
            let mut out = [([0f32; 32], [0f32; 32]); 2];
            for (k, (hi, lo)) in out.iter_mut().enumerate() {
                let (mut h, mut l) = ([0u16; 32], [0u16; 32]);
                if k == 0 {
                    split(x0, x1, h.as_mut_ptr(), l.as_mut_ptr());
                } else {
                    split_by_bits(x0, x1, h.as_mut_ptr(), l.as_mut_ptr());
                }
                *hi = h.map(|b| f32::from_bits((b as u32) << 16));
                *lo = l.map(|b| f32::from_bits((b as u32) << 16));
            }
            out
        }

        /// `split_by_bits` leaves what `split` leaves: hi is x to the nearest bf16 (ties aside),
        /// x − hi is exact, hi + lo is x to 2^-17; values of 16 significant bits (an F16
        /// cache's) come out exactly.
        #[test]
        fn splitting_in_the_bits_is_as_exact_as_converting() {
            if !(is_x86_feature_detected!("avx512bw") && is_x86_feature_detected!("avx512bf16")) {
                eprintln!("skipped: no AVX-512 BF16");
                return;
            }
            let mut seed = 7u32;
            let mut next = || {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                seed
            };
            for round in 0..2000 {
                let x: [f32; 32] = std::array::from_fn(|_| {
                    let v = f32::from_bits(next() & 0x807F_FFFF | ((next() % 60 + 100) << 23));
                    if round % 2 == 0 {
                        v
                    } else {
                        half::f16::from_f32(v.clamp(-6e4, 6e4)).to_f32()
                    }
                });
                // SAFETY: the features were checked above.
                let [(h0, l0), (h1, l1)] = unsafe { both(&x) };
                for i in 0..32 {
                    let (xi, tol) = (x[i] as f64, x[i].abs() as f64 * 2f64.powi(-17));
                    assert!(
                        (h1[i] as f64 + l1[i] as f64 - xi).abs() <= tol,
                        "{} ≉ {} + {}",
                        x[i],
                        h1[i],
                        l1[i]
                    );
                    assert!((h0[i] as f64 + l0[i] as f64 - xi).abs() <= tol);
                    // The same hi but where x lies halfway (ties go up, not to even).
                    let tie = x[i].to_bits() & 0xFFFF == 0x8000;
                    assert!(
                        tie || h1[i] == h0[i],
                        "{}: hi {} against {}",
                        x[i],
                        h1[i],
                        h0[i]
                    );
                    if round % 2 == 1 {
                        assert_eq!(h1[i] + l1[i], x[i], "an f16 value splits exactly");
                    }
                }
            }
        }
    }
}

/// The 64-byte tile configuration (palette 1) that `ldtilecfg` loads: bytes per row and rows
/// of each of the 8 tiles (public for the probes in `examples/`).
#[repr(C, align(64))]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
impl TileConfig {
    /// Tiles 0..8 with these (rows, bytes per row).
    pub const fn new(shapes: [(u8, u16); 8]) -> TileConfig {
        let mut c = TileConfig {
            palette: 1,
            start_row: 0,
            reserved: [0; 14],
            colsb: [0; 16],
            rows: [0; 16],
        };
        let mut i = 0;
        while i < 8 {
            c.rows[i] = shapes[i].0;
            c.colsb[i] = shapes[i].1;
            i += 1;
        }
        c
    }
}

/// Accumulators tmm0..3 (16×16 i32: 64 bytes a row), A tiles tmm4..5 (16 rows of 64 u8), B
/// tiles tmm6..7 (16 rows of 64 i8, VNNI order).
#[cfg(target_arch = "x86_64")]
pub(crate) const FULL: TileConfig = TileConfig::new([(16, 64); 8]);

/// Row-major i8 B `[n][k]` (output column j's k values contiguous) → VNNI order for `tdpbusd`:
/// `k/4` rows of `n × 4` bytes, row r holding, for each column j, k values 4r..4r+4. `k` and `n`
/// are padded with zeros to multiples of 64 and 32 (whole tiles).
pub fn pack_b(b: &[i8], n: usize, k: usize) -> PackedB {
    let (kp, np) = (k.div_ceil(64) * 64, n.div_ceil(32) * 32);
    let mut out = vec![0i8; kp * np];
    for j in 0..n {
        for kk in 0..k {
            out[(kk / 4) * np * 4 + j * 4 + kk % 4] = b[j * k + kk];
        }
    }
    PackedB {
        data: out,
        n,
        k,
        np,
        kp,
    }
}

/// B in VNNI order, padded to whole tiles (`pack_b`).
pub struct PackedB {
    data: Vec<i8>,
    n: usize,
    k: usize,
    np: usize,
    kp: usize,
}

impl Amx {
    /// C `[m][b.n]` (i32) = A `[m][b.k]` (u8, row-major) · Bᵀ, exact integer arithmetic.
    /// Whole 32×32 blocks of C per pass (four accumulators); edges are computed on zero-padded
    /// copies.
    pub fn gemm_u8i8(self, a: &[u8], m: usize, b: &PackedB, c: &mut [i32]) {
        let (n, k, np, kp) = (b.n, b.k, b.np, b.kp);
        assert!(a.len() >= m * k && c.len() >= m * n, "operand sizes");
        let mp = m.div_ceil(32) * 32;
        // A padded to whole tiles (rows to 32, k to 64).
        let mut ap = vec![0u8; mp * kp];
        for i in 0..m {
            ap[i * kp..i * kp + k].copy_from_slice(&a[i * k..(i + 1) * k]);
        }
        let mut block = [0i32; 32 * 32];
        for i0 in (0..mp).step_by(32) {
            for j0 in (0..np).step_by(32) {
                // SAFETY: `self` proves the tile state is enabled; the pointers cover whole
                // tiles inside `ap` (mp × kp), `b.data` (kp/4 rows of np × 4) and `block`.
                unsafe {
                    block_32x32(
                        ap.as_ptr().add(i0 * kp),
                        kp,
                        b.data.as_ptr().add(j0 * 4),
                        np * 4,
                        kp / 64,
                        block.as_mut_ptr(),
                    );
                }
                for i in i0..(i0 + 32).min(m) {
                    for j in j0..(j0 + 32).min(n) {
                        c[i * n + j] = block[(i - i0) * 32 + (j - j0)];
                    }
                }
            }
        }
    }

    /// Sustained int8 multiply-adds per second of one core's tiles (accumulators only, no
    /// memory traffic): the machine's compute peak that prefill is measured against.
    /// The best of five runs of about 20 ms each (the first ones also wake the tile unit up).
    pub fn peak_macs_per_s(self) -> f64 {
        let zeros = [0u8; 16 * 64];
        let iters = 100_000u64;
        // SAFETY: as below; a first run wakes the tile unit up.
        unsafe { spin(zeros.as_ptr(), iters / 4) };
        (0..5)
            .map(|_| {
                let t0 = std::time::Instant::now();
                // SAFETY: tiles enabled; the loads read `zeros` (16 rows of 64 bytes).
                unsafe { spin(zeros.as_ptr(), iters) };
                // Each iteration: 4 tdpbusd of 16×16 outputs × 64 k values.
                (iters * 4 * 16 * 16 * 64) as f64 / t0.elapsed().as_secs_f64()
            })
            .fold(0.0, f64::max)
    }
}

impl Amx {
    /// Sustained BF16 multiply-adds per second of one core's tiles (`tdpbf16ps`, accumulators
    /// only): the peak that BF16/F16 weights' products are measured against, as
    /// `peak_macs_per_s`. None without AMX-BF16.
    pub fn bf16_peak_macs_per_s(self) -> Option<f64> {
        if !self.bf16() {
            return None;
        }
        let zeros = [0u8; 16 * 64];
        let iters = 100_000u64;
        // SAFETY: as below; a first run wakes the tile unit up.
        unsafe { spin_bf16(zeros.as_ptr(), iters / 4) };
        let best = (0..5)
            .map(|_| {
                let t0 = std::time::Instant::now();
                // SAFETY: tiles with BF16 enabled; the loads read `zeros` (16 rows of 64 bytes).
                unsafe { spin_bf16(zeros.as_ptr(), iters) };
                // Each iteration: 4 tdpbf16ps of 16×16 outputs × 32 k values.
                (iters * 4 * 16 * 16 * 32) as f64 / t0.elapsed().as_secs_f64()
            })
            .fold(0.0, f64::max);
        Some(best)
    }
}

/// C block (32×32 i32, row-major, stride 32) = Σ over `ksteps` of A (32 rows × 64 u8 at `a`,
/// stride `lda` bytes) · B (16 rows × 64 i8 per 16 columns, at `b`, stride `ldb` bytes).
#[cfg(target_arch = "x86_64")]
unsafe fn block_32x32(
    a: *const u8,
    lda: usize,
    b: *const i8,
    ldb: usize,
    ksteps: usize,
    c: *mut i32,
) {
    let cfg = &FULL;
    asm!(
        "ldtilecfg [{cfg}]",
        "tilezero tmm0",
        "tilezero tmm1",
        "tilezero tmm2",
        "tilezero tmm3",
        cfg = in(reg) cfg as *const TileConfig,
        options(nostack),
    );
    for s in 0..ksteps {
        let (a0, b0) = (a.add(s * 64), b.add(s * 16 * ldb));
        let (a1, b1) = (a0.add(16 * lda), b0.add(64));
        asm!(
            "tileloadd tmm4, [{a0} + {lda}*1]",
            "tileloadd tmm5, [{a1} + {lda}*1]",
            "tileloadd tmm6, [{b0} + {ldb}*1]",
            "tileloadd tmm7, [{b1} + {ldb}*1]",
            "tdpbusd tmm0, tmm4, tmm6",
            "tdpbusd tmm1, tmm4, tmm7",
            "tdpbusd tmm2, tmm5, tmm6",
            "tdpbusd tmm3, tmm5, tmm7",
            a0 = in(reg) a0,
            a1 = in(reg) a1,
            b0 = in(reg) b0,
            b1 = in(reg) b1,
            lda = in(reg) lda,
            ldb = in(reg) ldb,
            options(nostack, readonly),
        );
    }
    let stride = 32 * 4usize;
    asm!(
        "tilestored [{c0} + {s}*1], tmm0",
        "tilestored [{c1} + {s}*1], tmm1",
        "tilestored [{c2} + {s}*1], tmm2",
        "tilestored [{c3} + {s}*1], tmm3",
        "tilerelease",
        c0 = in(reg) c,
        c1 = in(reg) c.add(16),
        c2 = in(reg) c.add(16 * 32),
        c3 = in(reg) c.add(16 * 32 + 16),
        s = in(reg) stride,
        options(nostack),
    );
}

/// `iters` × four tile multiplies `$op` on registers (the peak probes).
macro_rules! spin_with {
    ($name:ident, $op:literal) => {
        #[cfg(target_arch = "x86_64")]
        unsafe fn $name(zeros: *const u8, iters: u64) {
            asm!(
                "ldtilecfg [{cfg}]",
                "tileloadd tmm4, [{z} + {s}*1]",
                "tileloadd tmm5, [{z} + {s}*1]",
                "tileloadd tmm6, [{z} + {s}*1]",
                "tileloadd tmm7, [{z} + {s}*1]",
                "2:",
                concat!($op, " tmm0, tmm4, tmm6"),
                concat!($op, " tmm1, tmm4, tmm7"),
                concat!($op, " tmm2, tmm5, tmm6"),
                concat!($op, " tmm3, tmm5, tmm7"),
                "dec {n}",
                "jnz 2b",
                "tilerelease",
                cfg = in(reg) &FULL as *const TileConfig,
                z = in(reg) zeros,
                s = in(reg) 64usize,
                n = inout(reg) iters => _,
                options(nostack),
            );
        }
    };
}
spin_with!(spin, "tdpbusd");
spin_with!(spin_bf16, "tdpbf16ps");

#[cfg(not(target_arch = "x86_64"))]
unsafe fn spin_bf16(_: *const u8, _: u64) {
    unreachable!("Amx cannot be constructed off x86-64")
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn block_32x32(_: *const u8, _: usize, _: *const i8, _: usize, _: usize, _: *mut i32) {
    unreachable!("Amx cannot be constructed off x86-64")
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn spin(_: *const u8, _: u64) {
    unreachable!("Amx cannot be constructed off x86-64")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every AMX result equals the scalar integer product, at odd shapes (partial tiles in m, n
    /// and k) and with the extreme values of both operands.
    #[test]
    fn tiles_equal_the_scalar_product() {
        let amx = match Amx::new() {
            Ok(a) => a,
            Err(why) => {
                eprintln!("SKIPPED: AMX int8 unavailable here: {why}");
                return;
            }
        };
        let mut seed = 0x9e37_79b9u32;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed
        };
        for (m, n, k) in [
            (1, 1, 4),
            (16, 16, 64),
            (33, 47, 200),
            (5, 70, 1000),
            (64, 32, 128),
        ] {
            let a: Vec<u8> = (0..m * k).map(|_| next() as u8).collect();
            let mut b: Vec<i8> = (0..n * k).map(|_| next() as i8).collect();
            b[0] = i8::MIN;
            let mut c = vec![0i32; m * n];
            amx.gemm_u8i8(&a, m, &pack_b(&b, n, k), &mut c);
            for i in 0..m {
                for j in 0..n {
                    let want: i32 = (0..k)
                        .map(|kk| a[i * k + kk] as i32 * b[j * k + kk] as i32)
                        .sum();
                    assert_eq!(c[i * n + j], want, "{m}x{n}x{k} at ({i}, {j})");
                }
            }
        }
    }

    #[test]
    fn reports_why_it_is_unavailable_or_measures_a_peak() {
        match Amx::new() {
            Ok(a) => {
                let peak = a.peak_macs_per_s();
                eprintln!(
                    "AMX int8 peak of one core: {:.0} G multiply-adds/s",
                    peak / 1e9
                );
                assert!(peak > 1e9);
                match a.bf16_peak_macs_per_s() {
                    Some(p) => {
                        eprintln!(
                            "AMX BF16 peak of one core: {:.0} G multiply-adds/s",
                            p / 1e9
                        );
                        assert!(p > 1e9);
                    }
                    None => eprintln!("SKIPPED: this CPU's tiles have no BF16"),
                }
            }
            Err(why) => eprintln!("SKIPPED: AMX int8 unavailable here: {why}"),
        }
    }
}
