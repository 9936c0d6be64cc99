//! The x86-64 kernels of `amx_float`: the activations split into A tiles, the tile products
//! over row quads and k panels, and the vector units' f32 multiply-adds from the same tiles.

use super::{PairTiles, Scratch, Tile, F16, KB, PANEL, ROWS, TOKENS};
use crate::amx::bf16::split;
use crate::amx::{TileConfig, FULL};
use std::arch::asm;
use std::arch::x86_64::*;
use std::ops::Range;

/// One thread's piece: token tiles × quads of row groups (64 rows).
pub struct Job<'a> {
    pub w: &'a PairTiles,
    pub acts: *const Tile,
    pub n: usize,
    pub tiles: Range<usize>,
    pub quads: Range<usize>,
    pub bias: Option<&'a [f32]>,
    pub out: *mut f32,
}

/// Token tile `i` of `x` as A tiles (tokens past `n` and columns past `kd` zero): block j
/// at `dst[j]`, its row 2t the hi bf16 of token 8i + t, row 2t + 1 the lo.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")]
pub unsafe fn split_tokens(x: *const f32, n: usize, kd: usize, i: usize, dst: *mut Tile) {
    let kb = kd.div_ceil(KB);
    for t in 0..TOKENS {
        let token = i * TOKENS + t;
        let row = x.add(token.min(n.saturating_sub(1)) * kd);
        for j in 0..kb {
            let hi = (dst.add(j) as *mut u16).add(64 * t);
            let left = if token < n { kd - j * KB } else { 0 };
            let (x0, x1) = if left >= KB {
                (
                    _mm512_loadu_ps(row.add(j * KB)),
                    _mm512_loadu_ps(row.add(j * KB + 16)),
                )
            } else {
                let mask = |from: usize| ((1u32 << left.saturating_sub(from).min(16)) - 1) as u16;
                (
                    _mm512_maskz_loadu_ps(mask(0), row.add(j * KB)),
                    _mm512_maskz_loadu_ps(mask(16), row.add(j * KB + 16)),
                )
            };
            split(x0, x1, hi, hi.add(32));
        }
    }
}

/// The job's products into `out`, panel by panel of `PANEL` k blocks: a quad's weights
/// and the chunk's activations of one panel stay in L2 while the token tiles pass, and
/// the accumulators go to scratch between panels (stored and loaded as they are, so the
/// sums run in the same order as without panels).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,f16c")]
pub unsafe fn run(job: &Job<'_>, scratch: &mut Scratch, sums: &mut Scratch) {
    let w = job.w;
    let kb = w.kb;
    let groups = w.rows.div_ceil(ROWS);
    let f16 = w.kind == F16;
    // F16: a quad's panel as bf16, group i's hi at `i PANEL` and its lo `4 PANEL` on.
    let conv = if f16 {
        scratch.grow(8 * PANEL)
    } else {
        std::ptr::null_mut()
    };
    // Accumulators of token tile t (of the job's) and group g (of the job's) at
    // `t · gs + g`; the last one takes the sums of groups past the matrix end.
    let (ts, gs) = (job.tiles.len(), 4 * job.quads.len());
    let c = sums.grow(ts * gs + 1) as *mut f32;
    let dead = c.add(ts * gs * 256);
    // A lone token tile: only the rows its tokens fill.
    let cfg = match ts {
        1 => {
            let rows = (2 * (job.n - job.tiles.start * TOKENS).min(TOKENS)) as u8;
            TileConfig::new([
                (rows, 64),
                (rows, 64),
                (rows, 64),
                (rows, 64),
                (rows, 64),
                (16, 64),
                (16, 64),
                (16, 64),
            ])
        }
        _ => FULL,
    };
    asm!("ldtilecfg [{c}]", c = in(reg) &cfg as *const _, options(nostack, readonly));
    for p0 in (0..kb).step_by(PANEL) {
        let blocks = PANEL.min(kb - p0);
        let first = p0 == 0;
        for (qi, quad) in job.quads.clone().enumerate() {
            // Groups past the end repeat the last one into the dead accumulators.
            let live = (groups - 4 * quad).min(4);
            let mut b = [std::ptr::null::<Tile>(); 4];
            for (i, b) in b.iter_mut().enumerate() {
                let g = 4 * quad + i.min(live - 1);
                let src = w.tiles.as_ptr().add(g * kb + p0);
                *b = if f16 {
                    if i < live {
                        to_bf16(src, blocks, conv.add(i * PANEL), 4 * PANEL);
                    }
                    conv.add(i.min(live - 1) * PANEL)
                } else {
                    src
                };
            }
            let lo = f16.then_some(4 * PANEL);
            let acc = |t: usize, i: usize| match i < live {
                true => c.add(((t - job.tiles.start) * gs + 4 * qi + i) * 256),
                false => dead,
            };
            let mut t = job.tiles.start;
            while t < job.tiles.end {
                let two = t + 1 < job.tiles.end;
                let a0 = job.acts.add(t * kb + p0);
                if two {
                    // Two token tiles × two groups at a time.
                    for h in [0, 2] {
                        if h < live {
                            let cs = [acc(t, h), acc(t, h + 1), acc(t + 1, h), acc(t + 1, h + 1)];
                            let ab = [a0, a0.add(kb)];
                            two_tiles(ab, [b[h], b[h + 1]], lo, blocks, cs, first);
                        }
                    }
                } else {
                    let cs = [acc(t, 0), acc(t, 1), acc(t, 2), acc(t, 3)];
                    one_tile(a0, b, lo, blocks, cs, first);
                }
                t += 1 + two as usize;
            }
        }
    }
    asm!("tilerelease", options(nostack, nomem));
    for (qi, quad) in job.quads.clone().enumerate() {
        for i in 0..(groups - 4 * quad).min(4) {
            for t in job.tiles.clone() {
                let sums = c.add(((t - job.tiles.start) * gs + 4 * qi + i) * 256);
                write_out(job, sums, t, 4 * quad + i);
            }
        }
    }
}

/// `kb` F16 B tiles at `src` as bf16: hi tiles at `hi`, lo tiles `lo` tiles further on
/// (exact: hi + lo).
#[inline(always)]
unsafe fn to_bf16(src: *const Tile, kb: usize, hi: *mut Tile, lo: usize) {
    for j in 0..kb {
        let (s, h, l) = (
            src.add(j) as *const u16,
            hi.add(j) as *mut u16,
            hi.add(j + lo) as *mut u16,
        );
        for r in 0..16 {
            let v = _mm512_loadu_si512(s.add(32 * r) as *const __m512i);
            let x0 = _mm512_cvtph_ps(_mm512_castsi512_si256(v));
            let x1 = _mm512_cvtph_ps(_mm512_extracti64x4_epi64::<1>(v));
            split(x0, x1, h.add(32 * r), l.add(32 * r));
        }
    }
}

/// Accumulators (token tile 0 | 1) × (group 0 | 1), at `c[2 · token + group]`, plus Σ over
/// `blocks` k blocks of A·B (F16: A·Bhi + A·Blo, B's lo tiles `lo` tiles after its hi
/// ones) — per accumulator the order of `one_tile`. `first`: the accumulators start at
/// zero instead of `c`.
#[inline(always)]
unsafe fn two_tiles(
    a: [*const Tile; 2],
    b: [*const Tile; 2],
    lo: Option<usize>,
    blocks: usize,
    c: [*mut f32; 4],
    first: bool,
) {
    let s = 64usize;
    load_sums(c, first);
    for j in 0..blocks {
        let (a0, a1, b0, b1) = (a[0].add(j), a[1].add(j), b[0].add(j), b[1].add(j));
        asm!(
            "tileloadd tmm4, [{a0} + {s}*1]",
            "tileloadd tmm6, [{b0} + {s}*1]",
            "tileloadd tmm7, [{b1} + {s}*1]",
            "tileloadd tmm5, [{a1} + {s}*1]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            a0 = in(reg) a0, a1 = in(reg) a1, b0 = in(reg) b0, b1 = in(reg) b1,
            s = in(reg) s,
            options(nostack, readonly),
        );
        if let Some(lo) = lo {
            asm!(
                "tileloadd tmm6, [{b0} + {s}*1]",
                "tileloadd tmm7, [{b1} + {s}*1]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                b0 = in(reg) b0.add(lo), b1 = in(reg) b1.add(lo), s = in(reg) s,
                options(nostack, readonly),
            );
        }
    }
    store_sums(c);
}

/// Accumulators of one token tile × four groups (`c[group]`), as `two_tiles`.
#[inline(always)]
unsafe fn one_tile(
    a: *const Tile,
    b: [*const Tile; 4],
    lo: Option<usize>,
    blocks: usize,
    c: [*mut f32; 4],
    first: bool,
) {
    let s = 64usize;
    load_sums(c, first);
    for j in 0..blocks {
        let (a, b) = (a.add(j), b.map(|b| b.add(j)));
        asm!(
            "tileloadd tmm4, [{a} + {s}*1]",
            "tileloadd tmm5, [{b0} + {s}*1]",
            "tileloadd tmm6, [{b1} + {s}*1]",
            "tileloadd tmm7, [{b2} + {s}*1]",
            "tdpbf16ps tmm0, tmm4, tmm5",
            "tdpbf16ps tmm1, tmm4, tmm6",
            "tdpbf16ps tmm2, tmm4, tmm7",
            "tileloadd tmm5, [{b3} + {s}*1]",
            "tdpbf16ps tmm3, tmm4, tmm5",
            a = in(reg) a, b0 = in(reg) b[0], b1 = in(reg) b[1], b2 = in(reg) b[2],
            b3 = in(reg) b[3], s = in(reg) s,
            options(nostack, readonly),
        );
        if let Some(lo) = lo {
            asm!(
                "tileloadd tmm5, [{b0} + {s}*1]",
                "tileloadd tmm6, [{b1} + {s}*1]",
                "tileloadd tmm7, [{b2} + {s}*1]",
                "tdpbf16ps tmm0, tmm4, tmm5",
                "tdpbf16ps tmm1, tmm4, tmm6",
                "tdpbf16ps tmm2, tmm4, tmm7",
                "tileloadd tmm5, [{b3} + {s}*1]",
                "tdpbf16ps tmm3, tmm4, tmm5",
                b0 = in(reg) b[0].add(lo), b1 = in(reg) b[1].add(lo),
                b2 = in(reg) b[2].add(lo), b3 = in(reg) b[3].add(lo), s = in(reg) s,
                options(nostack, readonly),
            );
        }
    }
    store_sums(c);
}

/// tmm0..3 from the four 16 × 16 f32 blocks `c`, or zero (`first`).
#[inline(always)]
unsafe fn load_sums(c: [*mut f32; 4], first: bool) {
    if first {
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            options(nostack, nomem)
        );
    } else {
        asm!(
            "tileloadd tmm0, [{c0} + {s}*1]",
            "tileloadd tmm1, [{c1} + {s}*1]",
            "tileloadd tmm2, [{c2} + {s}*1]",
            "tileloadd tmm3, [{c3} + {s}*1]",
            c0 = in(reg) c[0], c1 = in(reg) c[1], c2 = in(reg) c[2], c3 = in(reg) c[3],
            s = in(reg) 64usize,
            options(nostack, readonly),
        );
    }
}

/// tmm0..3 into the four 16 × 16 f32 blocks `c`.
#[inline(always)]
unsafe fn store_sums(c: [*mut f32; 4]) {
    asm!(
        "tilestored [{c0} + {s}*1], tmm0",
        "tilestored [{c1} + {s}*1], tmm1",
        "tilestored [{c2} + {s}*1], tmm2",
        "tilestored [{c3} + {s}*1], tmm3",
        c0 = in(reg) c[0], c1 = in(reg) c[1], c2 = in(reg) c[2], c3 = in(reg) c[3],
        s = in(reg) 64usize,
        options(nostack),
    );
}

/// How many tiles ahead `fma_tile` asks for a group's weights when it has few tokens.
const AHEAD: usize = 4;

/// `tokens` (up to 6) × the row group pairs `pairs` of `products_f32`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,f16c")]
pub unsafe fn fma_rows(
    w: &PairTiles,
    x: *const f32,
    tokens: Range<usize>,
    pairs: Range<usize>,
    bias: Option<&[f32]>,
    out: *mut f32,
) {
    match tokens.len() {
        1 => fma_tile::<1>(w, x, tokens.start, pairs, bias, out),
        2 => fma_tile::<2>(w, x, tokens.start, pairs, bias, out),
        3 => fma_tile::<3>(w, x, tokens.start, pairs, bias, out),
        4 => fma_tile::<4>(w, x, tokens.start, pairs, bias, out),
        5 => fma_tile::<5>(w, x, tokens.start, pairs, bias, out),
        _ => fma_tile::<6>(w, x, tokens.start, pairs, bias, out),
    }
}

/// T tokens from `t0` × two groups at a time: per (token, group) two accumulators of 8
/// rows' even and odd k lanes, met by the token's (x[k], x[k + 1]) broadcast as a pair.
#[inline(always)]
unsafe fn fma_tile<const T: usize>(
    w: &PairTiles,
    x: *const f32,
    t0: usize,
    pairs: Range<usize>,
    bias: Option<&[f32]>,
    out: *mut f32,
) {
    let (m, kd, kb) = (w.rows, w.cols, w.kb);
    let groups = m.div_ceil(ROWS);
    let f16 = w.kind == F16;
    let evens = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    for pair in pairs {
        let gs = [2 * pair, (2 * pair + 1).min(groups - 1)];
        let mut acc = [[[_mm512_setzero_ps(); 2]; 2]; T];
        for j in 0..kb {
            let tiles = gs.map(|g| w.tiles.as_ptr().add(g * kb + j) as *const u16);
            for r in 0..16 {
                let k = KB * j + 2 * r;
                if k >= kd {
                    break;
                }
                let mut wv = [[_mm512_setzero_ps(); 2]; 2];
                for (gi, tile) in tiles.iter().enumerate() {
                    if T <= 2 {
                        // Few tokens stream the weights from memory with little work per
                        // byte: ask for them `AHEAD` tiles on.
                        let ahead = tile.wrapping_add(32 * r + AHEAD * 512) as *const i8;
                        _mm_prefetch::<_MM_HINT_T0>(ahead);
                    }
                    let line = _mm512_loadu_si512(tile.add(32 * r) as *const __m512i);
                    let (lo, hi) = (
                        _mm512_castsi512_si256(line),
                        _mm512_extracti64x4_epi64::<1>(line),
                    );
                    wv[gi] = if f16 {
                        [_mm512_cvtph_ps(lo), _mm512_cvtph_ps(hi)]
                    } else {
                        let widen = |h: __m256i| {
                            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
                        };
                        [widen(lo), widen(hi)]
                    };
                }
                for (t, acc) in acc.iter_mut().enumerate() {
                    let xr = x.add((t0 + t) * kd + k);
                    // (x[k], x[k + 1]) in every lane pair; past the row's end a zero.
                    let xp = if k + 1 < kd {
                        _mm512_castpd_ps(_mm512_set1_pd((xr as *const f64).read_unaligned()))
                    } else {
                        _mm512_maskz_mov_ps(0x5555, _mm512_set1_ps(*xr))
                    };
                    for gi in 0..2 {
                        for h in 0..2 {
                            acc[gi][h] = _mm512_fmadd_ps(wv[gi][h], xp, acc[gi][h]);
                        }
                    }
                }
            }
        }
        for (t, acc) in acc.iter().enumerate() {
            for (gi, &g) in gs.iter().enumerate() {
                if gi == 1 && gs[1] == gs[0] {
                    continue;
                }
                // Even lane + odd lane of each row, then the 16 rows in order.
                let pair_sum = |v: __m512| _mm512_add_ps(v, _mm512_permute_ps::<0b1011_0001>(v));
                let (a, b) = (pair_sum(acc[gi][0]), pair_sum(acc[gi][1]));
                let rows = _mm512_permutex2var_ps(a, evens, b);
                let r0 = g * ROWS;
                let mask = ((1u32 << ROWS.min(m - r0)) - 1) as u16;
                let v = match bias {
                    Some(b) => _mm512_add_ps(rows, _mm512_maskz_loadu_ps(mask, b.as_ptr().add(r0))),
                    None => rows,
                };
                _mm512_mask_storeu_ps(out.add((t0 + t) * m + r0), mask, v);
            }
        }
    }
}

/// One accumulator block (the 8 tokens of tile `ti` × the 16 rows of group `g`, at `c`)
/// into `out`: each token's hi sum plus its lo sum plus the bias; tokens and rows past the
/// ends are dropped.
#[inline(always)]
unsafe fn write_out(job: &Job<'_>, c: *const f32, ti: usize, g: usize) {
    let m = job.w.rows;
    let r0 = g * ROWS;
    let cols = ROWS.min(m - r0);
    let mask = ((1u32 << cols) - 1) as u16;
    let bias = match job.bias {
        Some(b) => _mm512_maskz_loadu_ps(mask, b.as_ptr().add(r0)),
        None => _mm512_setzero_ps(),
    };
    for t in 0..TOKENS.min(job.n - ti * TOKENS) {
        let hi = _mm512_loadu_ps(c.add(32 * t));
        let lo = _mm512_loadu_ps(c.add(32 * t + 16));
        let v = _mm512_add_ps(_mm512_add_ps(hi, lo), bias);
        _mm512_mask_storeu_ps(job.out.add((ti * TOKENS + t) * m + r0), mask, v);
    }
}
