//! What bounds the AMX int8 products of the packed kernels on this machine, one core:
//!   cargo run --release -p suanli-cpu --example amx_probe
//! - the multiply rate alone (`tdpbssd` on tiles already loaded, as `Amx::peak_macs_per_s`);
//! - tile loads and tile stores alone (bytes per second, data in L1);
//! - one 32-column sub-block as `kernels/amx_packed.rs` runs it (zero, load a 16-token A tile
//!   and an 8-row B tile, multiply, store the 16×16 sums), and the same with the vector
//!   epilogue that scales the sums in f32;
//! - other orders of the same work: the epilogue issued before the store, two sub-blocks per
//!   step, a software pipeline (store the previous sums after issuing this multiply), and two
//!   token tiles × two row groups per sub-block (half the tile loads);
//! - whether the multiplies overlap vector work that touches no memory.
//!
//! llama.cpp's block formats give every 32 columns their own scale, so each multiply covers
//! k = 32 and its sums must leave the tile for the f32 epilogue: when loads and stores cost
//! more than the multiply, the multiply rate is out of reach whatever the blocking. Measured on
//! this project's Xeons (one core): multiplies 2,587–2,963 G MAC/s, loads 94–227 GB/s, stores
//! 108–174 GB/s; a sub-block's tile work 261–624 G MAC/s, the epilogue alone 379–470, both
//! 175–285. None of the other orders beat the plain one (in one sitting: epilogue first
//! 177–191, pairs 186–195, pipelined 183, against 228–243); 2 × 2 blocking took its tile work
//! from 261–270 to 289–297 only. Four independent k = 32 multiplies took 23.7–24.6 ns, 32
//! register-only vector steps 25.3–26.4 ns, both together 46.4–48.2 ns: the tile and vector
//! units take turns rather than overlap, so ~8 % of the multiply rate is the ceiling of these
//! formats here (the packed kernels reach about half of it in a whole prefill).

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
    // The epilogue of the previous sub-block placed before this one's store: its loads then
    // only wait for the older store, and the multiply runs beside it.
    let before_store = best(&mut || unsafe {
        let mut acc = [_mm512_setzero_ps(); 16];
        let sc = [0.5f32; 16];
        for i in 0..N {
            let (a, b, c) = (
                s.add(1024 * (i % 8)),
                s.add(1024 * (i % 8) + 512),
                d.add(1024 * (i & 1)),
            );
            if i & 1 == 0 {
                asm!("tilezero tmm0", "tileloadd tmm4, [{a} + {s32}*1]", "tileloadd tmm6, [{b} + {s64}*1]",
                     "tdpbssd tmm0, tmm4, tmm6",
                     a = in(reg) a, b = in(reg) b, s32 = in(reg) 32usize,
                     s64 = in(reg) 64usize, options(nostack, readonly));
            } else {
                asm!("tilezero tmm1", "tileloadd tmm5, [{a} + {s32}*1]", "tileloadd tmm7, [{b} + {s64}*1]",
                     "tdpbssd tmm1, tmm5, tmm7",
                     a = in(reg) a, b = in(reg) b, s32 = in(reg) 32usize,
                     s64 = in(reg) 64usize, options(nostack, readonly));
            }
            scale(&mut acc, d.add(1024 * ((i + 1) & 1)) as *const i32, sc);
            if i & 1 == 0 {
                asm!("tilestored [{c} + {s64}*1], tmm0", c = in(reg) c, s64 = in(reg) 64usize, options(nostack));
            } else {
                asm!("tilestored [{c} + {s64}*1], tmm1", c = in(reg) c, s64 = in(reg) 64usize, options(nostack));
            }
        }
        std::hint::black_box(acc);
    });
    // Two sub-blocks per step: both loaded and multiplied before the previous pair's
    // epilogues, then both stored.
    let pairs = |epilogue: bool| {
        best(&mut || unsafe {
            let mut acc = [_mm512_setzero_ps(); 16];
            let sc = [0.5f32; 16];
            for i in 0..N / 2 {
                let a = s.add(2048 * (i % 4));
                let c = d.add(2048 * (i & 1));
                asm!("tilezero tmm0", "tilezero tmm1",
                 "tileloadd tmm4, [{a} + {s32}*1]", "tileloadd tmm6, [{b} + {s64}*1]",
                 "tileloadd tmm5, [{a2} + {s32}*1]", "tileloadd tmm7, [{b2} + {s64}*1]",
                 "tdpbssd tmm0, tmm4, tmm6", "tdpbssd tmm1, tmm5, tmm7",
                 a = in(reg) a, b = in(reg) a.add(512), a2 = in(reg) a.add(1024), b2 = in(reg) a.add(1536),
                 s32 = in(reg) 32usize, s64 = in(reg) 64usize, options(nostack, readonly));
                if epilogue {
                    let prev = d.add(2048 * ((i + 1) & 1)) as *const i32;
                    scale(&mut acc, prev, sc);
                    scale(&mut acc, prev.add(256), sc);
                }
                asm!("tilestored [{c} + {s64}*1], tmm0", "tilestored [{c2} + {s64}*1], tmm1",
                 c = in(reg) c, c2 = in(reg) c.add(1024), s64 = in(reg) 64usize, options(nostack));
            }
            std::hint::black_box(acc);
        })
    };
    let (pairs_plain, pairs_epilogue) = (pairs(false), pairs(true));
    // Software-pipelined: sub-block i's multiply is issued, then sub-block i − 1's sums
    // (multiplied a step ago) are stored, then sub-block i − 2's are scaled; the store never
    // waits for a multiply in flight.
    let skewed = |epilogue: bool| {
        best(&mut || unsafe {
            let mut acc = [_mm512_setzero_ps(); 16];
            let sc = [0.5f32; 16];
            for i in 0..N {
                let (a, b) = (s.add(1024 * (i % 8)), s.add(1024 * (i % 8) + 512));
                let c = d.add(1024 * ((i + 2) % 3));
                if i & 1 == 0 {
                    asm!("tilezero tmm0", "tileloadd tmm4, [{a} + {s32}*1]", "tileloadd tmm6, [{b} + {s64}*1]",
                     "tdpbssd tmm0, tmm4, tmm6", "tilestored [{c} + {s64}*1], tmm1",
                     a = in(reg) a, b = in(reg) b, c = in(reg) c, s32 = in(reg) 32usize,
                     s64 = in(reg) 64usize, options(nostack));
                } else {
                    asm!("tilezero tmm1", "tileloadd tmm5, [{a} + {s32}*1]", "tileloadd tmm7, [{b} + {s64}*1]",
                     "tdpbssd tmm1, tmm5, tmm7", "tilestored [{c} + {s64}*1], tmm0",
                     a = in(reg) a, b = in(reg) b, c = in(reg) c, s32 = in(reg) 32usize,
                     s64 = in(reg) 64usize, options(nostack));
                }
                if epilogue {
                    scale(&mut acc, d.add(1024 * ((i + 1) % 3)) as *const i32, sc);
                }
            }
            std::hint::black_box(acc);
        })
    };
    let (skewed_plain, skewed_epilogue) = (skewed(false), skewed(true));
    // Two token tiles × two row groups per sub-block: A and B tiles each serve two multiplies
    // (half the tile loads), four sums stored.
    let two_by_two = best(&mut || unsafe {
        for i in 0..N / 4 {
            let a = s.add(2048 * (i % 4));
            let c = d.add(4096 * (i & 1));
            asm!("tileloadd tmm4, [{a} + {s32}*1]", "tileloadd tmm5, [{a2} + {s32}*1]",
                 "tileloadd tmm6, [{b} + {s64}*1]", "tileloadd tmm7, [{b2} + {s64}*1]",
                 "tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3",
                 "tdpbssd tmm0, tmm4, tmm6", "tdpbssd tmm1, tmm4, tmm7",
                 "tdpbssd tmm2, tmm5, tmm6", "tdpbssd tmm3, tmm5, tmm7",
                 "tilestored [{c} + {s64}*1], tmm0", "tilestored [{c1} + {s64}*1], tmm1",
                 "tilestored [{c2} + {s64}*1], tmm2", "tilestored [{c3} + {s64}*1], tmm3",
                 a = in(reg) a, a2 = in(reg) a.add(512), b = in(reg) a.add(1024), b2 = in(reg) a.add(1536),
                 c = in(reg) c, c1 = in(reg) c.add(1024), c2 = in(reg) c.add(2048), c3 = in(reg) c.add(3072),
                 s32 = in(reg) 32usize, s64 = in(reg) 64usize, options(nostack));
        }
    });
    // Does the tile unit's multiply overlap vector work that touches no memory? k = 32
    // multiplies into alternate sums (no loads, no stores) beside 16 × (convert, multiply, add)
    // on registers.
    let overlap = |mul: bool, vec: bool| {
        best(&mut || unsafe {
            let mut acc = [_mm512_setzero_ps(); 16];
            let mut x = _mm512_set1_epi32(3);
            let sc = _mm512_set1_ps(0.5);
            for _ in 0..N / 2 {
                if mul {
                    asm!(
                        "tdpbssd tmm0, tmm4, tmm6",
                        "tdpbssd tmm1, tmm5, tmm7",
                        "tdpbssd tmm2, tmm4, tmm7",
                        "tdpbssd tmm3, tmm5, tmm6",
                        options(nostack, nomem)
                    );
                }
                if vec {
                    regwork(&mut acc, &mut x, sc);
                }
            }
            std::hint::black_box((acc, x));
        })
    };
    let (o_mul, o_vec, o_both) = (
        overlap(true, false),
        overlap(false, true),
        overlap(true, true),
    );
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
    println!(
        "  epilogue before the store:    {:7.0} G MAC/s",
        g(sub_macs, before_store)
    );
    println!(
        "pairs of sub-blocks, tiles only:{:7.0} G MAC/s",
        g(sub_macs, pairs_plain)
    );
    println!(
        "pairs with epilogue:            {:7.0} G MAC/s",
        g(sub_macs, pairs_epilogue)
    );
    println!(
        "skewed, tiles only:             {:7.0} G MAC/s",
        g(sub_macs, skewed_plain)
    );
    println!(
        "skewed with epilogue:           {:7.0} G MAC/s",
        g(sub_macs, skewed_epilogue)
    );
    println!(
        "2 x 2 blocking, tiles only:     {:7.0} G MAC/s",
        g(sub_macs, two_by_two)
    );
    println!(
        "k = 32 multiplies, registers only: {:6.1} ns per pair; vector work alone {:6.1}; both {:6.1}",
        o_mul / (N / 2) as f64 * 1e9,
        o_vec / (N / 2) as f64 * 1e9,
        o_both / (N / 2) as f64 * 1e9
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

/// 32 × (integer add, convert, multiply, multiply-add) on registers only.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn regwork(
    acc: &mut [std::arch::x86_64::__m512; 16],
    x: &mut std::arch::x86_64::__m512i,
    sc: std::arch::x86_64::__m512,
) {
    use std::arch::x86_64::*;
    for _ in 0..2 {
        for v in acc.iter_mut() {
            *x = _mm512_add_epi32(*x, *x);
            *v = _mm512_fmadd_ps(_mm512_cvtepi32_ps(*x), _mm512_mul_ps(sc, *v), *v);
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn main() {
    println!("AMX is an x86-64 extension");
}
