//! Products of BF16 and F16 weights on the AMX BF16 tiles (`tdpbf16ps`) at the `amx` level,
//! for a step's prompt rows: the activations are the A operand, the weights the B operand, repacked
//! at load into the pair order `tdpbf16ps` reads (`PairTiles`), and the sums stay in the tile
//! accumulators over the whole row (stored and loaded between panels of k as they are).
//!
//! Exact to about 2^-17 of each product rather than bf16's 2^-8: each activation is split into
//! a high bf16 and the bf16 of what it leaves (`crate::amx::bf16::split`), the two as
//! neighbouring rows of the A tile (8 tokens a tile), so one `tdpbf16ps` gives both sums of a
//! token and `write_out` adds them. A BF16 weight is exact in the tiles; an F16 weight (11
//! significant bits) is exactly the sum of two bf16, converted per panel at run time and
//! multiplied twice. F32 weights stay on the f32 tiles (`float_tiles`): their 24 bits do not
//! split into two bf16.
//!
//! Which rows take the tiles is the caller's rule, never the step's shape (`matmul::
//! prompt_split`): a step's prompt rows, however many; its generated rows take f32
//! multiply-adds on the vector units from the same tiles (`products_f32`), as attention keeps
//! them off the tiles. A token's sums are its own two rows of the
//! accumulators, over the k values in one order, so its bits do not depend on how many tokens
//! share the tiles. Decode stays off the tiles because on these Xeons tile loads stream the
//! weights at about half the rate vector loads do (`matmul_probe bf16 4864 896 1`, one
//! thread: 5–7 against 12–13 G multiply-adds/s), while prefill gains ~9× (512 tokens: 260–350
//! against 28–37). A job of one token tile configures its A and accumulator tiles with only
//! the rows its tokens fill.

// Off x86-64 only the repacking is built (no CPU there has the tiles).
#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]

use crate::pool::Pool;
#[cfg(target_arch = "x86_64")]
use crate::pool::SharedMut;
use std::cell::RefCell;

/// Weight element kinds (as `float_tiles`).
pub use super::float_tiles::{BF16, F16};

/// Weight rows per tile: the accumulators' 16 columns.
pub const ROWS: usize = 16;
/// k values per tile: 16 rows of pairs.
pub const KB: usize = 32;
/// Tokens per tile: the accumulators' 16 rows are each token's hi and lo sums.
const TOKENS: usize = 8;
/// k blocks per panel: a quad's weights of one panel are 128 KiB (F16: 256 KiB as bf16 hi
/// and lo), one token tile's activations 32 KiB.
const PANEL: usize = 32;
/// Activation bytes of a token chunk's panel, kept in L2 while the row quads pass over it:
/// 32 token tiles.
const CHUNK_BYTES: usize = 1024 * 1024;
/// Row pieces per thread and token chunk: enough that a slowed thread takes fewer.
const PIECES: usize = 4;
/// Most weight bytes in one piece of the vector products (`products_f32`) when its token
/// chunks take turns over them: well inside the 2 MiB of L2 per core beside the activations.
const PIECE_BYTES: usize = 512 * 1024;

/// One 1 KiB tile of 16 rows × 32 bf16 (or f16), on a cache line.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub struct Tile([u16; 512]);
const ZERO: Tile = Tile([0; 512]);

/// A BF16 or F16 matrix in B tiles: group g of 16 rows (rows past the end zero), k block j of
/// 32 columns (columns past the end zero) is tile `g * kb + j`, whose row r holds, for each of
/// the 16 rows n, the values at columns 32j + 2r and 32j + 2r + 1 (`tdpbf16ps`'s pair order).
pub struct PairTiles {
    kind: u8,
    rows: usize,
    cols: usize,
    kb: usize,
    tiles: Vec<Tile>,
}

/// Whether this process can run the tiles: AMX with BF16 and the AVX-512 BF16 conversions.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        crate::amx::Amx::new().is_ok_and(|a| a.bf16()) && is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

impl PairTiles {
    /// `raw` (`rows` × `cols` little-endian values of `kind`, file layout) in pair order. Err
    /// with the bytes asked for when the allocator refuses.
    pub fn pack(
        kind: u8,
        raw: &[u8],
        rows: usize,
        cols: usize,
        pool: &Pool,
    ) -> Result<PairTiles, usize> {
        assert!(
            (kind == BF16 || kind == F16) && raw.len() == rows * cols * 2,
            "pair tiles of a 16-bit matrix"
        );
        let kb = cols.div_ceil(KB);
        let n = rows.div_ceil(ROWS) * kb;
        let mut tiles = Vec::new();
        tiles.try_reserve_exact(n).map_err(|_| n * 1024)?;
        crate::huge::advise(&mut tiles);
        tiles.resize(n, ZERO);
        pool.split_mut(&mut tiles, kb.max(1), 4, &|g0, part| {
            for (gi, group) in part.chunks_exact_mut(kb).enumerate() {
                let g = g0 + gi;
                for r in 0..ROWS.min(rows - g * ROWS) {
                    let row = &raw[(g * ROWS + r) * cols * 2..][..cols * 2];
                    for (c, v) in row.chunks_exact(2).enumerate() {
                        group[c / KB].0[(c % KB / 2) * 32 + r * 2 + c % 2] =
                            u16::from_le_bytes([v[0], v[1]]);
                    }
                }
            }
        });
        Ok(PairTiles {
            kind,
            rows,
            cols,
            kb,
            tiles,
        })
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.tiles.len() * std::mem::size_of::<Tile>()
    }

    /// Row `r` as f32 into `dst` (`cols` values): the file's values exactly (BF16 and F16
    /// widen without rounding), so a tied embedding table looks its rows up here, and a head's
    /// rescored candidates are read here, and the file's pages can be given back. The row's
    /// pairs lie 64 bytes apart in each k block's tile.
    pub fn row_into(&self, r: usize, dst: &mut [f32]) {
        assert!(
            r < self.rows && dst.len() == self.cols,
            "pair-tile row lookup"
        );
        let (g, lane) = (r / ROWS, r % ROWS);
        let widen = |bits: u16| match self.kind {
            BF16 => f32::from_bits((bits as u32) << 16),
            _ => half::f16::from_bits(bits).to_f32(),
        };
        let tiles = &self.tiles[g * self.kb..(g + 1) * self.kb];
        for (tile, out) in tiles.iter().zip(dst.chunks_mut(KB)) {
            for (p, o) in out.chunks_mut(2).enumerate() {
                let pair = &tile.0[p * 32 + lane * 2..][..2];
                for (o, &bits) in o.iter_mut().zip(pair) {
                    *o = widen(bits);
                }
            }
        }
    }
}

/// Scratch reused across calls: the activations' hi/lo tiles (shared by the threads of one
/// call), and per thread an F16 quad's panel as bf16 hi/lo tiles and the piece's sums.
#[derive(Default)]
struct Scratch(Vec<Tile>);

impl Scratch {
    fn grow(&mut self, n: usize) -> *mut Tile {
        if self.0.len() < n {
            self.0 = vec![ZERO; n];
        }
        self.0.as_mut_ptr()
    }
}

thread_local! {
    static ACTS: RefCell<Scratch> = RefCell::new(Scratch::default());
    static PAIR: RefCell<Scratch> = RefCell::new(Scratch::default());
    static SUMS: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// out[t, r] = Σ_c w[r, c] x[t, c] (+ bias[r]) for `n` tokens of `x` (`w.cols` floats each) and
/// every row of `w`; `out` is `n × w.rows`.
///
/// # Safety
/// `available()` must hold.
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
pub unsafe fn products(
    w: &PairTiles,
    pool: &Pool,
    x: &[f32],
    n: usize,
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    let (m, kd, kb) = (w.rows, w.cols, w.kb);
    assert!(
        x.len() >= n * kd && out.len() >= n * m && bias.is_none_or(|b| b.len() >= m),
        "float tile product operand sizes"
    );
    if n == 0 || m == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    ACTS.with(|acts| {
        let token_tiles = n.div_ceil(TOKENS);
        // Token tile i, block j: tile i kb + j.
        let a = SharedMut(acts.borrow_mut().grow(token_tiles * kb));
        let xs = SharedMut(x.as_ptr() as *mut f32);
        pool.pieces(token_tiles, &|i| {
            // SAFETY: tile i's rows are written by this piece alone; x holds n × kd floats.
            unsafe { x86::split_tokens(xs.get(), n, kd, i, a.get().add(i * kb)) }
        });
        // Token chunks of whole tile pairs whose activations of one panel stay in L2.
        let chunk = (CHUNK_BYTES / (PANEL.min(kb) * 1024)).max(2) / 2 * 2;
        let chunks = token_tiles.div_ceil(chunk);
        let quads = m.div_ceil(4 * ROWS);
        let per_piece = quads.div_ceil(pool.threads() * PIECES);
        let row_pieces = quads.div_ceil(per_piece);
        let dst = SharedMut(out.as_mut_ptr());
        pool.pieces(chunks * row_pieces, &|p| {
            let (c, g) = (p / row_pieces, p % row_pieces);
            let job = x86::Job {
                w,
                acts: a.get(),
                n,
                tiles: c * chunk..((c + 1) * chunk).min(token_tiles),
                quads: g * per_piece..((g + 1) * per_piece).min(quads),
                bias,
                out: dst.get(),
            };
            // SAFETY: `available()` holds; the piece's (tokens, rows) cells are its own.
            PAIR.with(|s| {
                SUMS.with(|c| unsafe { x86::run(&job, &mut s.borrow_mut(), &mut c.borrow_mut()) })
            });
        });
    });
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("AMX tiles exist only on x86-64");
}

/// The same products in f32 on the vector units, from the same tiles: every (row, token) sum a
/// chain of f32 multiply-adds over the k values in one order (even and odd k apart, added at
/// the end), whatever the tokens beside it — generated rows take this at the `amx` level (tile
/// loads stream the weights at half the vector loads' rate on these Xeons), so the matrix
/// needs no second copy in its file layout.
///
/// # Safety
/// The CPU must have AVX-512 (F, BW, VL, DQ) and F16C.
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
pub unsafe fn products_f32(
    w: &PairTiles,
    pool: &Pool,
    x: &[f32],
    n: usize,
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    let (m, kd) = (w.rows, w.cols);
    assert!(
        x.len() >= n * kd && out.len() >= n * m && bias.is_none_or(|b| b.len() >= m),
        "float tile product operand sizes"
    );
    if n == 0 || m == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    {
        // Pieces of a run of group pairs, each taking every token chunk (up to 6 tokens, cut
        // as evenly as they go) in turn over its rows: with more than one chunk the run's
        // weights are read from memory once and from L2 after (`PIECE_BYTES`), rather than
        // once per chunk — a 16-stream step of BF16 weights streamed them three times.
        let pairs = m.div_ceil(2 * ROWS);
        let chunks = n.div_ceil(6);
        let mut per_piece = pairs.div_ceil(pool.threads() * PIECES).max(1);
        if chunks > 1 {
            per_piece = per_piece.min((PIECE_BYTES / (2 * ROWS * kd * 2)).max(1));
        }
        let row_pieces = pairs.div_ceil(per_piece);
        let (xs, dst) = (
            SharedMut(x.as_ptr() as *mut f32),
            SharedMut(out.as_mut_ptr()),
        );
        pool.pieces(row_pieces, &|g| {
            let pairs = g * per_piece..((g + 1) * per_piece).min(pairs);
            for c in 0..chunks {
                let tokens = n * c / chunks..n * (c + 1) / chunks;
                // SAFETY: the caller vouches for the CPU; each piece writes its own cells.
                unsafe { x86::fma_rows(w, xs.get(), tokens, pairs.clone(), bias, dst.get()) }
            }
        });
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("AMX tiles exist only on x86-64");
}

#[cfg(target_arch = "x86_64")]
mod x86 {
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
                    let mask =
                        |from: usize| ((1u32 << left.saturating_sub(from).min(16)) - 1) as u16;
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
                                let cs =
                                    [acc(t, h), acc(t, h + 1), acc(t + 1, h), acc(t + 1, h + 1)];
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
                                _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(
                                    h,
                                )))
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
                    let pair_sum =
                        |v: __m512| _mm512_add_ps(v, _mm512_permute_ps::<0b1011_0001>(v));
                    let (a, b) = (pair_sum(acc[gi][0]), pair_sum(acc[gi][1]));
                    let rows = _mm512_permutex2var_ps(a, evens, b);
                    let r0 = g * ROWS;
                    let mask = ((1u32 << ROWS.min(m - r0)) - 1) as u16;
                    let v = match bias {
                        Some(b) => {
                            _mm512_add_ps(rows, _mm512_maskz_loadu_ps(mask, b.as_ptr().add(r0)))
                        }
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
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Row lookups from the tiles give the file's values bit for bit (a tied embedding table's
    /// rows come from here at the `amx` level), partial groups and k blocks included.
    #[test]
    fn rows_come_back_from_the_tiles_exactly() {
        let pool = Pool::new(2).unwrap();
        for kind in [BF16, F16] {
            for (rows, kd) in [(16, 32), (23, 37), (40, 1100)] {
                let (bytes, vals) = crate::kernels::float_tiles::tests::weights(kind, rows, kd);
                let t = PairTiles::pack(kind, &bytes, rows, kd, &pool).unwrap();
                let mut row = vec![f32::NAN; kd];
                for r in 0..rows {
                    t.row_into(r, &mut row);
                    for (c, (got, want)) in row.iter().zip(&vals[r * kd..]).enumerate() {
                        assert_eq!(
                            got.to_bits(),
                            (*want as f32).to_bits(),
                            "kind {kind} {rows}x{kd} row {r} column {c}"
                        );
                    }
                }
            }
        }
    }

    /// Both kinds, rows and columns not multiples of the tiles', 1 to 300 tokens, on the tiles
    /// and on the vector units (`products_f32`, within 1e-6): every tile result within 2^-16 of
    /// the f64 sum of the exact products (relative to Σ|products|; the hi/lo
    /// split leaves 2^-17 of each activation, the f32 sums ~2^-24 per add), and each token's
    /// row bit for bit the same alone as among the others.
    #[test]
    fn pair_tiles_match_the_f64_sum_and_ignore_the_batch() {
        if !available() {
            eprintln!("SKIPPED: AMX BF16 tiles unavailable here");
            return;
        }
        let pool = Pool::new(2).unwrap();
        for kind in [BF16, F16] {
            // (rows, columns, tokens): partial groups, quads and k blocks; 3 panels of k; two
            // token chunks of the tiles.
            let shapes = [
                (16, 32, 37),
                (23, 37, 37),
                (70, 96, 37),
                (33, 300, 37),
                (5, 1000, 37),
                (9, 2100, 20),
                (40, 1100, 300),
                // Every token count of a vector pass (`products_f32` takes up to 6).
                (16, 32, 2),
                (23, 37, 3),
                (33, 300, 4),
            ];
            for (rows, kd, n) in shapes {
                let (bytes, wv) = crate::kernels::float_tiles::tests::weights(kind, rows, kd);
                let w = PairTiles::pack(kind, &bytes, rows, kd, &pool).unwrap();
                let x: Vec<f32> = (0..n * kd)
                    .map(|i| ((i * 31 % 97) as f32 - 48.0) / 17.0 + (i * 7 % 13) as f32 * 1e-3)
                    .collect();
                let bias: Vec<f32> = (0..rows).map(|r| r as f32 * 0.25 - 2.0).collect();
                let mut all = vec![f32::NAN; n * rows];
                unsafe { products(&w, &pool, &x, n, Some(&bias), &mut all) };
                let mut vec_all = vec![f32::NAN; n * rows];
                unsafe { products_f32(&w, &pool, &x, n, Some(&bias), &mut vec_all) };
                for t in 0..n {
                    let mut one = vec![f32::NAN; rows];
                    unsafe { products(&w, &pool, &x[t * kd..], 1, Some(&bias), &mut one) };
                    let mut vec_one = vec![f32::NAN; rows];
                    unsafe { products_f32(&w, &pool, &x[t * kd..], 1, Some(&bias), &mut vec_one) };
                    for r in 0..rows {
                        let (mut want, mut mag) = (bias[r] as f64, bias[r].abs() as f64);
                        for c in 0..kd {
                            let p = wv[r * kd + c] * x[t * kd + c] as f64;
                            want += p;
                            mag += p.abs();
                        }
                        let got = all[t * rows + r];
                        assert!(
                            (got as f64 - want).abs() <= mag / 65536.0,
                            "kind {kind} {rows}x{kd} row {r} token {t}: {got} vs {want}"
                        );
                        assert_eq!(
                            got.to_bits(),
                            one[r].to_bits(),
                            "kind {kind} {rows}x{kd} row {r} token {t}: alone ≠ batched"
                        );
                        // The vector units: f32 products of the same values.
                        let got = vec_all[t * rows + r];
                        assert!(
                            (got as f64 - want).abs() <= 1e-6 * mag + 1e-6,
                            "f32 kind {kind} {rows}x{kd} row {r} token {t}: {got} vs {want}"
                        );
                        assert_eq!(
                            got.to_bits(),
                            vec_one[r].to_bits(),
                            "f32 kind {kind} {rows}x{kd} row {r} token {t}: alone ≠ batched"
                        );
                    }
                }
            }
        }
    }
}
