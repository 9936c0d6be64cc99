//! What bounds the VNNI tiles (`kernels/avx512_packed.rs`), one thread: `vpdpbusd` alone against
//! `vpdpbusd` mixed with the other instructions a tile runs per token and sub-block, and its
//! latency by the number of independent chains.
//!   cargo run --release -p suanli-cpu --example vnni_mix_probe
//! On the AMD EPYC (Zen 5) of sessions 20–26: float multiplies and FMAs take the pipes of
//! `vpdpbusd`, as do `vpmulld` and `vpmaddwd` (a tile's multiply and FMA per token and sub-block
//! against its 8 products cap it at 80 % of the peak); conversions, float adds, `vscalefps`,
//! integer, logic and mask ops do not — up to about one per product (18 integer ops per 12
//! products: 81 %). The latency is 4 cycles: 8 or more chains keep both pipes busy (a tile of 6
//! tokens with one chain each: at most ~75 %). Loads count too: the tiles' broadcast memory
//! operands 88–99 %, with 3 more loads per 12 products 66–70 %. (Session 28 tried the tiles with
//! fewer loads — quants broadcast by `vpshufd` from one 16-byte load, and 32 rows per broadcast
//! with the weights unpacked once per pair of groups — and both ran no faster or slower.)
//! On the AMD EPYC Zen 4 of session 36 (512-bit operations on 256-bit units): the same pattern
//! at half Zen 5's rate — 231 G MAC/s per thread alone, one `vpdpbusd` a cycle; float multiplies
//! and FMAs, `vpmulld`, `vpmaddwd` and `vptestmb` with a masked add take its pipes (3 per 12
//! products: 80–81 %), conversions, float adds, `vscalefps`, shuffles and permutes do not;
//! integer and logic ops up to about one per product (12 per 12: 95 %; 18: 76 %); 4 chains
//! already reach 95 %; broadcast memory operands and 3 more loads are free. A model in assembly
//! of a Q5_0 L1-accumulator tile's sub-block (16 tokens: 128 products, the unpacking, each
//! token's conversion, multiply, FMA, load and store) ran at 67–72 % of the peak, 74 % without
//! the multiply, 71 % without the unpacking, 85 % without either and the store: the float
//! epilogue per token and 32 columns is the larger cost, and the kernel itself runs ~62 %.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::asm;
    use std::time::Instant;

    /// `n` times: one `vpdpbusd` into each of `$r` (registers of zmm0–11, a register named
    /// twice continuing its chain), then `$extra`; the nanoseconds per iteration.
    macro_rules! timed {
        ($n:expr, [$($r:literal)*], [$($extra:literal),*]) => {{
            let t = Instant::now();
            asm!(
                "vpxord zmm30, zmm30, zmm30",
                "vpternlogd zmm31, zmm31, zmm31, 0xff",
                "vpxord zmm16, zmm16, zmm16",
                "2:",
                $(concat!("vpdpbusd zmm", $r, ", zmm31, zmm30"),)*
                $($extra,)*
                "dec {n}",
                "jnz 2b",
                n = inout(reg) $n => _,
                out("zmm0") _, out("zmm1") _, out("zmm2") _, out("zmm3") _, out("zmm4") _,
                out("zmm5") _, out("zmm6") _, out("zmm7") _, out("zmm8") _, out("zmm9") _,
                out("zmm10") _, out("zmm11") _, out("zmm16") _, out("zmm17") _,
                out("zmm18") _, out("zmm19") _, out("zmm20") _, out("zmm21") _,
                out("zmm30") _, out("zmm31") _, out("k1") _, out("k2") _, out("k3") _,
                options(nostack),
            );
            t.elapsed().as_secs_f64() * 1e9 / $n as f64
        }};
    }

    /// As `timed!`, with each product's second operand a 32-bit broadcast from memory (as the
    /// tiles take the token's quants) and `$extra` free to load from `{p}`.
    macro_rules! timed_mem {
        ($n:expr, [$($r:literal)*], [$($extra:literal),*]) => {{
            let buf = [0u8; 4096];
            let t = Instant::now();
            asm!(
                "vpternlogd zmm31, zmm31, zmm31, 0xff",
                "vpxord zmm16, zmm16, zmm16",
                "2:",
                $(concat!("vpdpbusd zmm", $r, ", zmm31, dword ptr [{p} + 4 * ", $r, "]{{1to16}}"),)*
                $($extra,)*
                "dec {n}",
                "jnz 2b",
                n = inout(reg) $n => _,
                p = in(reg) buf.as_ptr(),
                out("zmm0") _, out("zmm1") _, out("zmm2") _, out("zmm3") _, out("zmm4") _,
                out("zmm5") _, out("zmm6") _, out("zmm7") _, out("zmm8") _, out("zmm9") _,
                out("zmm10") _, out("zmm11") _, out("zmm16") _, out("zmm17") _,
                out("zmm18") _, out("zmm19") _, out("zmm20") _, out("zmm21") _,
                out("zmm31") _,
                options(nostack),
            );
            t.elapsed().as_secs_f64() * 1e9 / $n as f64
        }};
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn bcast(n: u64) -> f64 {
        timed_mem!(n, [0 1 2 3 4 5 6 7 8 9 10 11], [])
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn bcast_loads(n: u64) -> f64 {
        timed_mem!(
            n,
            [0 1 2 3 4 5 6 7 8 9 10 11],
            [
                "vmovdqu64 zmm17, [{p} + 256]",
                "vmovdqu64 zmm18, [{p} + 320]",
                "vmovdqu64 zmm19, [{p} + 384]"
            ]
        )
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn bcast_fma(n: u64) -> f64 {
        timed_mem!(
            n,
            [0 1 2 3 4 5 6 7 8 9 10 11],
            [
                "vfmadd231ps zmm17, zmm16, dword ptr [{p} + 512]{{1to16}}",
                "vmulps zmm18, zmm16, dword ptr [{p} + 516]{{1to16}}",
                "vfmadd231ps zmm19, zmm16, dword ptr [{p} + 520]{{1to16}}"
            ]
        )
    }

    /// Twelve independent `vpdpbusd` chains (zmm0–11), then `$extra`, `n` times; ns per iteration.
    macro_rules! mix {
        ($name:ident, $($extra:literal),*) => {
            #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
            unsafe fn $name(n: u64) -> f64 {
                timed!(n, [0 1 2 3 4 5 6 7 8 9 10 11], [$($extra),*])
            }
        };
    }

    mix!(alone,);
    mix!(
        fma3,
        "vfmadd231ps zmm17, zmm16, zmm31",
        "vfmadd231ps zmm18, zmm16, zmm31",
        "vfmadd231ps zmm19, zmm16, zmm31"
    );
    mix!(
        mul3,
        "vmulps zmm17, zmm16, zmm31",
        "vmulps zmm18, zmm16, zmm31",
        "vmulps zmm19, zmm16, zmm31"
    );
    mix!(
        pmul3,
        "vpmulld zmm17, zmm16, zmm31",
        "vpmulld zmm18, zmm16, zmm31",
        "vpmulld zmm19, zmm16, zmm31"
    );
    mix!(
        pmadd3,
        "vpmaddwd zmm17, zmm16, zmm31",
        "vpmaddwd zmm18, zmm16, zmm31",
        "vpmaddwd zmm19, zmm16, zmm31"
    );
    mix!(
        scalef3,
        "vscalefps zmm17, zmm16, zmm31",
        "vscalefps zmm18, zmm16, zmm31",
        "vscalefps zmm19, zmm16, zmm31"
    );
    mix!(
        add3,
        "vaddps zmm17, zmm16, zmm31",
        "vaddps zmm18, zmm16, zmm31",
        "vaddps zmm19, zmm16, zmm31"
    );
    mix!(
        cvt3,
        "vcvtdq2ps zmm17, zmm16",
        "vcvtdq2ps zmm18, zmm16",
        "vcvtdq2ps zmm19, zmm16"
    );
    mix!(
        int6,
        "vpaddd zmm17, zmm16, zmm31",
        "vpsrlw zmm18, zmm16, 4",
        "vpandq zmm19, zmm16, zmm31",
        "vpternlogq zmm20, zmm16, zmm31, 0xf8",
        "vpsllw zmm21, zmm16, 2",
        "vpaddd zmm17, zmm16, zmm31"
    );
    mix!(
        shuf6,
        "vpshufd zmm17, zmm16, 0x55",
        "vpshufd zmm18, zmm16, 0xaa",
        "vpshufd zmm19, zmm16, 0xff",
        "vpshufd zmm20, zmm16, 0x00",
        "vpshufd zmm21, zmm16, 0x55",
        "vpshufd zmm17, zmm16, 0xaa"
    );
    mix!(
        shuf12,
        "vpshufd zmm17, zmm16, 0x55",
        "vpshufd zmm18, zmm16, 0xaa",
        "vpshufd zmm19, zmm16, 0xff",
        "vpshufd zmm20, zmm16, 0x00",
        "vpshufd zmm21, zmm16, 0x55",
        "vpshufd zmm17, zmm16, 0xaa",
        "vpshufd zmm18, zmm16, 0x55",
        "vpshufd zmm19, zmm16, 0xaa",
        "vpshufd zmm20, zmm16, 0xff",
        "vpshufd zmm21, zmm16, 0x00",
        "vpshufd zmm17, zmm16, 0x55",
        "vpshufd zmm18, zmm16, 0xaa"
    );
    mix!(
        perm6,
        "vpermd zmm17, zmm31, zmm16",
        "vpermd zmm18, zmm31, zmm16",
        "vpermd zmm19, zmm31, zmm16",
        "vpermd zmm20, zmm31, zmm16",
        "vpermd zmm21, zmm31, zmm16",
        "vpermd zmm17, zmm31, zmm16"
    );
    mix!(
        int12,
        "vpaddd zmm17, zmm16, zmm31",
        "vpsrlw zmm18, zmm16, 4",
        "vpandq zmm19, zmm16, zmm31",
        "vpternlogq zmm20, zmm16, zmm31, 0xf8",
        "vpsllw zmm21, zmm16, 2",
        "vpaddd zmm17, zmm16, zmm31",
        "vpaddd zmm18, zmm16, zmm31",
        "vpsrlw zmm19, zmm16, 4",
        "vpandq zmm20, zmm16, zmm31",
        "vpternlogq zmm21, zmm16, zmm31, 0xf8",
        "vpsllw zmm17, zmm16, 2",
        "vpaddd zmm18, zmm16, zmm31"
    );
    mix!(
        int18,
        "vpaddd zmm17, zmm16, zmm31",
        "vpsrlw zmm18, zmm16, 4",
        "vpandq zmm19, zmm16, zmm31",
        "vpternlogq zmm20, zmm16, zmm31, 0xf8",
        "vpsllw zmm21, zmm16, 2",
        "vpaddd zmm17, zmm16, zmm31",
        "vpaddd zmm18, zmm16, zmm31",
        "vpsrlw zmm19, zmm16, 4",
        "vpandq zmm20, zmm16, zmm31",
        "vpternlogq zmm21, zmm16, zmm31, 0xf8",
        "vpsllw zmm17, zmm16, 2",
        "vpaddd zmm18, zmm16, zmm31",
        "vpaddd zmm19, zmm16, zmm31",
        "vpsrlw zmm20, zmm16, 4",
        "vpandq zmm21, zmm16, zmm31",
        "vpternlogq zmm17, zmm16, zmm31, 0xf8",
        "vpsllw zmm18, zmm16, 2",
        "vpaddd zmm19, zmm16, zmm31"
    );
    mix!(
        cvt12,
        "vcvtdq2ps zmm17, zmm16",
        "vcvtdq2ps zmm18, zmm16",
        "vcvtdq2ps zmm19, zmm16",
        "vcvtdq2ps zmm20, zmm16",
        "vcvtdq2ps zmm21, zmm16",
        "vcvtdq2ps zmm17, zmm16",
        "vcvtdq2ps zmm18, zmm16",
        "vcvtdq2ps zmm19, zmm16",
        "vcvtdq2ps zmm20, zmm16",
        "vcvtdq2ps zmm21, zmm16",
        "vcvtdq2ps zmm17, zmm16",
        "vcvtdq2ps zmm18, zmm16"
    );
    mix!(
        mask3,
        "vptestmb k1, zmm16, zmm31",
        "vpaddb zmm17{{k1}}, zmm16, zmm31",
        "vptestmb k2, zmm16, zmm31",
        "vpaddb zmm18{{k2}}, zmm16, zmm31",
        "vptestmb k3, zmm16, zmm31",
        "vpaddb zmm19{{k3}}, zmm16, zmm31"
    );

    /// `chains` independent chains, 12 products per iteration in all; ns per product.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn chains(n: u64, chains: usize) -> f64 {
        let per_iteration = match chains {
            1 => timed!(n, [0 0 0 0 0 0 0 0 0 0 0 0], []),
            4 => timed!(n, [0 1 2 3 0 1 2 3 0 1 2 3], []),
            6 => timed!(n, [0 1 2 3 4 5 0 1 2 3 4 5], []),
            _ => timed!(n, [0 1 2 3 4 5 6 7 8 9 10 11], []),
        };
        per_iteration / 12.0
    }

    /// A probe's name and its loop (ns per iteration).
    type Probe = (&'static str, unsafe fn(u64) -> f64);

    fn best(f: impl Fn() -> f64) -> f64 {
        (0..5).map(|_| f()).fold(f64::MAX, f64::min)
    }

    pub fn main() {
        if !(std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512vnni"))
        {
            println!("no AVX-512 VNNI on this CPU: nothing to probe");
            return;
        }
        const N: u64 = 5_000_000;
        // SAFETY (all calls): the CPU has AVX-512 F/BW/VNNI (checked above); the loops touch no
        // memory and clobber only the registers they declare.
        let base = best(|| unsafe { alone(N) });
        println!(
            "12 vpdpbusd alone: {base:.3} ns ({:.1} G int8 MAC/s)",
            12.0 * 64.0 / base
        );
        let mixes: [Probe; 15] = [
            ("+ 12 integer/logic ops", int12),
            ("+ 18 integer/logic ops", int18),
            ("+ 12 vcvtdq2ps", cvt12),
            ("+ 6 vpshufd", shuf6),
            ("+ 12 vpshufd", shuf12),
            ("+ 6 vpermd", perm6),
            ("+ 3 vpmulld", pmul3),
            ("+ 3 vpmaddwd", pmadd3),
            ("+ 3 vscalefps", scalef3),
            ("+ 3 vaddps", add3),
            ("+ 3 vfmadd231ps", fma3),
            ("+ 3 vmulps", mul3),
            ("+ 3 vcvtdq2ps", cvt3),
            ("+ 6 integer/logic ops", int6),
            ("+ 3 vptestmb and masked vpaddb", mask3),
        ];
        for (what, f) in mixes {
            let t = best(|| unsafe { f(N) });
            println!(
                "12 vpdpbusd {what:<33} {t:.3} ns: products at {:.0} % of alone",
                base / t * 100.0
            );
        }
        let mems: [Probe; 3] = [
            ("with {1to16} memory operands", bcast),
            ("with {1to16} memory operands + 3 loads", bcast_loads),
            ("with {1to16} memory operands + 3 float", bcast_fma),
        ];
        for (what, f) in mems {
            let t = best(|| unsafe { f(N) });
            println!(
                "12 vpdpbusd {what:<33} {t:.3} ns: products at {:.0} % of alone",
                base / t * 100.0
            );
        }
        for c in [1, 4, 6, 12] {
            let t = best(|| unsafe { chains(N, c) });
            println!(
                "{c:>2} chain(s): {t:.3} ns per product ({:.0} % of the peak)",
                base / 12.0 / t * 100.0
            );
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn main() {
    x86::main()
}

#[cfg(not(target_arch = "x86_64"))]
fn main() {
    println!("AVX-512 VNNI is an x86-64 extension");
}
