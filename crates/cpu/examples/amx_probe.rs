//! What bounds the AMX int8 products of the packed kernels on this machine, one core:
//!   cargo run --release -p suanli-cpu --example amx_probe
//! - the multiply rate alone (`tdpbssd` on tiles already loaded, as `Amx::peak_macs_per_s`);
//! - tile loads and tile stores alone (bytes per second, data in L1);
//! - one 32-column sub-block as `kernels/amx_packed.rs` runs it (zero, load a 16-token A tile
//!   and an 8-row B tile, multiply, store the 16×16 sums), and the same with the vector
//!   epilogue that scales the sums in f32.
//!
//! llama.cpp's block formats give every 32 columns their own scale, so each multiply covers
//! k = 32 and its sums must leave the tile for the f32 epilogue: when loads and stores cost
//! more than the multiply, the multiply rate is out of reach whatever the blocking. Measured on
//! this project's Xeon (one core): multiplies 2,963 G MAC/s, loads 227 GB/s, stores 174 GB/s;
//! a sub-block's tile work 598 G MAC/s, the epilogue alone 383–436, both 231 — the tile and
//! vector units take turns rather than overlap, so ~8 % of the multiply rate is the ceiling of
//! these formats here (the packed kernels reach about half of it in a whole prefill).

#[cfg(target_arch = "x86_64")]
fn main() {
    use std::arch::asm;
    use std::arch::x86_64::*;
    use std::time::Instant;
    use suanli_cpu::amx::TileConfig;

    if let Err(why) = suanli_cpu::amx::Amx::new() {
        println!("no AMX here: {why}");
        return;
    }
    // tmm0..3 sums (16 × 64 bytes), tmm4/5 A (16 × 32), tmm6/7 B (8 × 64).
    static CFG: TileConfig = TileConfig::new([
        (16, 64),
        (16, 64),
        (16, 64),
        (16, 64),
        (16, 32),
        (16, 32),
        (8, 64),
        (8, 64),
    ]);
    // SAFETY: the tile state is granted (Amx::new); the configuration is a valid palette 1.
    unsafe { asm!("ldtilecfg [{}]", in(reg) &CFG as *const TileConfig, options(nostack)) };

    #[repr(C, align(64))]
    struct Buf([u8; 16 * 1024]);
    let src = Box::new(Buf([1; 16 * 1024]));
    let mut dst = Box::new(Buf([0; 16 * 1024]));
    let (s, d) = (src.0.as_ptr(), dst.0.as_mut_ptr());
    let best = |f: &mut dyn FnMut()| {
        (0..20)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .fold(f64::MAX, f64::min)
    };
    const N: usize = 20_000;
    // SAFETY (every block below): tiles configured above; loads read and stores write inside
    // the 16 KiB buffers (at most 16 rows of 64 bytes from offsets below 8 KiB).
    let mul = best(&mut || unsafe {
        for _ in 0..N {
            asm!(
                "tdpbssd tmm0, tmm4, tmm6",
                "tdpbssd tmm1, tmm5, tmm7",
                "tdpbssd tmm2, tmm4, tmm7",
                "tdpbssd tmm3, tmm5, tmm6",
                options(nostack, nomem)
            );
        }
    });
    let load = best(&mut || unsafe {
        for i in 0..N {
            let p = s.add(1024 * (i % 8));
            asm!("tileloadd tmm4, [{p} + {st}*1]", "tileloadd tmm6, [{q} + {st2}*1]",
                 p = in(reg) p, q = in(reg) p.add(512), st = in(reg) 32usize, st2 = in(reg) 64usize,
                 options(nostack, readonly));
        }
    });
    let store = best(&mut || unsafe {
        for i in 0..N {
            asm!("tilestored [{p} + {st}*1], tmm0", p = in(reg) d.add(1024 * (i % 8)),
                 st = in(reg) 64usize, options(nostack));
        }
    });
    let alone = best(&mut || unsafe {
        let mut acc = [_mm512_setzero_ps(); 16];
        for i in 0..N {
            scale(&mut acc, d.add(1024 * (i & 1)) as *const i32, [0.5; 16]);
        }
        std::hint::black_box(acc);
    });
    let sub = |epilogue: bool| {
        best(&mut || unsafe {
            let mut acc = [_mm512_setzero_ps(); 16];
            let sc = [0.5f32; 16];
            for i in 0..N {
                let (a, b, c) = (
                    s.add(1024 * (i % 8)),
                    s.add(1024 * (i % 8) + 512),
                    d.add(1024 * (i & 1)),
                );
                asm!("tilezero tmm0", "tileloadd tmm4, [{a} + {s32}*1]", "tileloadd tmm6, [{b} + {s64}*1]",
                     "tdpbssd tmm0, tmm4, tmm6", "tilestored [{c} + {s64}*1], tmm0",
                     a = in(reg) a, b = in(reg) b, c = in(reg) c, s32 = in(reg) 32usize,
                     s64 = in(reg) 64usize, options(nostack));
                if epilogue {
                    scale(&mut acc, d.add(1024 * ((i + 1) & 1)) as *const i32, sc);
                }
            }
            std::hint::black_box(acc);
        })
    };
    let (plain, with_epilogue) = (sub(false), sub(true));
    // SAFETY: the tiles were configured above.
    unsafe { asm!("tilerelease", options(nostack, nomem)) };
    let g = |macs: f64, secs: f64| macs / secs / 1e9;
    let sub_macs = (N * 16 * 16 * 32) as f64;
    println!(
        "multiplies alone (k = 64):      {:7.0} G int8 MAC/s",
        g((N * 4 * 16 * 16 * 64) as f64, mul)
    );
    println!(
        "tile loads alone:               {:7.1} GB/s",
        (N * 1024) as f64 / load / 1e9
    );
    println!(
        "tile stores alone:              {:7.1} GB/s",
        (N * 1024) as f64 / store / 1e9
    );
    println!(
        "k = 32 sub-block, tiles only:   {:7.0} G MAC/s",
        g(sub_macs, plain)
    );
    println!(
        "f32 epilogue alone:             {:7.0} G MAC/s",
        g(sub_macs, alone)
    );
    println!(
        "k = 32 sub-block with epilogue: {:7.0} G MAC/s",
        g(sub_macs, with_epilogue)
    );
}

/// The previous sub-block's sums (16 tokens × 16 rows) scaled into the accumulators, as
/// `scale_in` does: convert, multiply the rows' scales by the token's, add.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn scale(acc: &mut [std::arch::x86_64::__m512; 16], sums: *const i32, sc: [f32; 16]) {
    use std::arch::x86_64::*;
    let s = _mm512_loadu_ps(sc.as_ptr());
    for (t, v) in acc.iter_mut().enumerate() {
        let sum = _mm512_cvtepi32_ps(_mm512_load_si512(sums.add(16 * t) as *const _));
        *v = _mm512_fmadd_ps(sum, _mm512_mul_ps(s, _mm512_set1_ps(t as f32)), *v);
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn main() {
    println!("AMX is an x86-64 extension");
}
