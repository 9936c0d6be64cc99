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
mod x86;

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
