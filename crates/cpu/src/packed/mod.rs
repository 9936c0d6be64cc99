//! Weights repacked at load for the AVX-512 and AVX2 kernels: 16 rows interleaved so that one
//! 512-bit register holds the same 4 columns of 16 rows, one row per 32-bit lane (a 256-bit
//! register the same of 8 rows, half a group). `vpdpbusd` (AVX2: `vpmaddubsw` + `vpmaddwd`)
//! then sums 4 products per lane into that row's accumulator, with the activations broadcast —
//! no horizontal sums, and each scale is applied to 16 (8) rows at once.
//!
//! The repacking is exact: every quant and scale keeps its value (K-quant 6-bit scales become
//! bytes), so `unpack_row` reproduces the file's dequantization bit for bit — the test oracle.
//!
//! Layout of one group of 16 rows (rows past the matrix end are zero): the row's superblocks
//! (32 columns for the legacy types, 256 for K-quants and IQ4_XS) one after another, each
//!
//! ```text
//! head:  d[16] f16 | second[16] f16 (Q4_1/Q5_1 min m, Q4_K/Q5_K dmin)
//!        | sc[n_sc][16] (K-quant / IQ4_XS sub-block scales) | mn[8][16] (Q4_K/Q5_K mins)
//! then per 32-column sub-block:
//!        low plane:  4-bit: 4 × 64 bytes; byte (r, i) of register j holds column 4j+i in its
//!                    low nibble and column 16+4j+i in its high nibble (r = row, i = 0..4)
//!                    8-bit: 8 × 64 bytes; register g holds columns 4g..4g+4
//!        high plane: 5-bit: 64 bytes; bit g of byte (r, i) is bit 4 of column 4g+i
//!                    6-bit: 2 × 64 bytes; register h, bits 2s..2s+2 of byte (r, i) are
//!                    bits 4..6 of column 4(4h+s)+i
//! ```
//!
//! Quants are stored unsigned; a kind's offset (Q4_0's 8, Q8_0's 128, ...) is subtracted through
//! the activation sums.

mod decode;

use crate::pool::Pool;
use suanli_core::DType;

/// Rows interleaved in one group (one per 32-bit lane of a 512-bit register).
pub const ROWS: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum Kind {
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    IQ4NL,
    Q4K,
    Q5K,
    Q6K,
    IQ4XS,
}

impl Kind {
    pub fn of(dt: DType) -> Option<Kind> {
        Some(match dt {
            DType::Q4_0 => Kind::Q4_0,
            DType::Q4_1 => Kind::Q4_1,
            DType::Q5_0 => Kind::Q5_0,
            DType::Q5_1 => Kind::Q5_1,
            DType::Q8_0 => Kind::Q8_0,
            DType::IQ4NL => Kind::IQ4NL,
            DType::Q4K => Kind::Q4K,
            DType::Q5K => Kind::Q5K,
            DType::Q6K => Kind::Q6K,
            DType::IQ4XS => Kind::IQ4XS,
            _ => return None,
        })
    }

    pub fn dtype(self) -> DType {
        match self {
            Kind::Q4_0 => DType::Q4_0,
            Kind::Q4_1 => DType::Q4_1,
            Kind::Q5_0 => DType::Q5_0,
            Kind::Q5_1 => DType::Q5_1,
            Kind::Q8_0 => DType::Q8_0,
            Kind::IQ4NL => DType::IQ4NL,
            Kind::Q4K => DType::Q4K,
            Kind::Q5K => DType::Q5K,
            Kind::Q6K => DType::Q6K,
            Kind::IQ4XS => DType::IQ4XS,
        }
    }

    /// Columns per superblock.
    pub const fn sb_cols(self) -> usize {
        match self {
            Kind::Q4K | Kind::Q5K | Kind::Q6K | Kind::IQ4XS => 256,
            _ => 32,
        }
    }

    /// Bits per stored quant.
    pub const fn bits(self) -> u32 {
        match self {
            Kind::Q5_0 | Kind::Q5_1 | Kind::Q5K => 5,
            Kind::Q6K => 6,
            Kind::Q8_0 => 8,
            _ => 4,
        }
    }

    /// What is subtracted from every stored quant (a power of two), or 0 where a float min is
    /// added instead.
    pub const fn offset(self) -> u32 {
        match self {
            Kind::Q4_0 => 8,
            Kind::Q5_0 => 16,
            Kind::Q6K => 32,
            Kind::Q8_0 | Kind::IQ4NL | Kind::IQ4XS => 128,
            Kind::Q4_1 | Kind::Q5_1 | Kind::Q4K | Kind::Q5K => 0,
        }
    }

    /// A second f16 per row and superblock (Q4_1/Q5_1's min, Q4_K/Q5_K's dmin).
    pub const fn has_second(self) -> bool {
        matches!(self, Kind::Q4_1 | Kind::Q5_1 | Kind::Q4K | Kind::Q5K)
    }

    /// Sub-block scale bytes per row and superblock (IQ4_XS and Q6_K signed).
    pub const fn n_sc(self) -> usize {
        match self {
            Kind::Q4K | Kind::Q5K | Kind::IQ4XS => 8,
            Kind::Q6K => 16,
            _ => 0,
        }
    }

    /// Sub-block min bytes per row and superblock.
    pub const fn n_mn(self) -> usize {
        match self {
            Kind::Q4K | Kind::Q5K => 8,
            _ => 0,
        }
    }

    pub const fn head_bytes(self) -> usize {
        ROWS * (2 + if self.has_second() { 2 } else { 0 } + self.n_sc() + self.n_mn())
    }

    /// Offsets inside the head.
    pub const fn sc_at(self) -> usize {
        ROWS * (2 + if self.has_second() { 2 } else { 0 })
    }

    pub const fn mn_at(self) -> usize {
        self.sc_at() + ROWS * self.n_sc()
    }

    pub const fn low_bytes(self) -> usize {
        if self.bits() == 8 {
            512
        } else {
            256
        }
    }

    /// Bytes per 32-column sub-block of 16 rows.
    pub const fn sub_bytes(self) -> usize {
        self.low_bytes()
            + match self.bits() {
                5 => 64,
                6 => 128,
                _ => 0,
            }
    }

    pub const fn sb_bytes(self) -> usize {
        self.head_bytes() + self.sb_cols() / 32 * self.sub_bytes()
    }
}

/// A weight matrix in the interleaved layout.
pub struct Packed {
    pub kind: Kind,
    pub rows: usize,
    pub cols: usize,
    /// Bytes per group of 16 rows (a multiple of 64, so groups start on cache lines).
    pub group_bytes: usize,
    /// The groups, one after another (`huge::Lines`: on huge pages).
    lines: crate::huge::Lines,
}

/// Why a matrix was not packed (the caller keeps the file layout).
#[derive(Debug)]
pub enum PackError {
    Unsupported,
    OutOfMemory(usize),
}

impl Packed {
    pub fn groups(&self) -> usize {
        self.rows.div_ceil(ROWS)
    }

    pub fn bytes(&self) -> &[u8] {
        self.lines.as_slice()
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        self.lines.as_mut_slice()
    }

    /// The bytes of group `g`.
    pub fn group(&self, g: usize) -> &[u8] {
        &self.bytes()[g * self.group_bytes..(g + 1) * self.group_bytes]
    }

    /// Repack `rows` rows of `cols` columns in file layout (`raw`, already size-checked).
    /// Groups are packed in parallel on `pool`.
    pub fn pack(
        dtype: DType,
        raw: &[u8],
        rows: usize,
        cols: usize,
        pool: &Pool,
    ) -> Result<Packed, PackError> {
        let kind = Kind::of(dtype).ok_or(PackError::Unsupported)?;
        if cols == 0 || rows == 0 || !cols.is_multiple_of(kind.sb_cols()) {
            return Err(PackError::Unsupported);
        }
        let rb = dtype.row_bytes(cols).map_err(|_| PackError::Unsupported)?;
        if raw.len() != rb * rows {
            return Err(PackError::Unsupported);
        }
        let nsb = cols / kind.sb_cols();
        let group_bytes = (nsb * kind.sb_bytes()).div_ceil(64) * 64;
        let groups = rows.div_ceil(ROWS);
        let bytes = groups * group_bytes;
        let lines = crate::huge::Lines::zeroed(bytes).ok_or(PackError::OutOfMemory(bytes))?;
        let mut p = Packed {
            kind,
            rows,
            cols,
            group_bytes,
            lines,
        };
        let sbb = dtype.block_bytes() * (kind.sb_cols() / dtype.block_elems());
        pool.split_mut(p.bytes_mut(), group_bytes, 4, &|g0, part| {
            let mut d = decode::Superblock::default();
            for (gi, dst) in part.chunks_exact_mut(group_bytes).enumerate() {
                let g = g0 + gi;
                for r in 0..ROWS.min(rows - g * ROWS) {
                    let row = &raw[(g * ROWS + r) * rb..(g * ROWS + r + 1) * rb];
                    for (sb, src) in row.chunks_exact(sbb).enumerate() {
                        decode::superblock(kind, src, &mut d);
                        let at = sb * kind.sb_bytes();
                        place(kind, &d, r, &mut dst[at..at + kind.sb_bytes()]);
                    }
                }
            }
        });
        Ok(p)
    }

    /// Row `r` dequantized from the packed layout into `dst` (`cols` values): the same bits as
    /// `quant::dequantize` of the file's row (tested for every kind), so a tied embedding table
    /// looks its rows up here and its file pages can be given back.
    pub fn row_into(&self, r: usize, dst: &mut [f32]) {
        assert!(r < self.rows && dst.len() == self.cols, "packed row lookup");
        self.lane_into(r, dst);
    }

    /// Lane `r` of its group (a row, or a padding lane of the last group) into `dst`.
    fn lane_into(&self, r: usize, dst: &mut [f32]) {
        let k = self.kind;
        for (sb, out) in dst.chunks_exact_mut(k.sb_cols()).enumerate() {
            let v = self.lane_view(r, sb);
            let (d, second) = (v.d(), v.second());
            for (c, o) in out.iter_mut().enumerate() {
                let u = v.quant(c) as i32;
                let j = c / 32;
                *o = match k {
                    Kind::Q4_1 | Kind::Q5_1 => d * u as f32 + second,
                    Kind::Q4K | Kind::Q5K => {
                        (d * v.sc(j) as f32) * u as f32 - second * v.mn(j) as f32
                    }
                    Kind::Q6K => (d * (v.sc(c / 16) as i8) as f32) * (u - 32) as f32,
                    Kind::IQ4XS => (d * (v.sc(j) as i8) as f32) * (u - 128) as f32,
                    Kind::Q8_0 => (u - 128) as f32 * d,
                    _ => d * (u - k.offset() as i32) as f32,
                };
            }
        }
    }

    /// Row `r` as `row_into` gives it, or a padding lane of the last group (the test oracle
    /// for the layout).
    #[cfg(test)]
    pub fn unpack_row(&self, r: usize) -> Vec<f32> {
        let mut out = vec![0f32; self.cols];
        self.lane_into(r, &mut out);
        out
    }

    /// Row `r`'s numbers in superblock `sb`.
    fn lane_view(&self, r: usize, sb: usize) -> LaneView<'_> {
        let k = self.kind;
        let grp = self.group(r / ROWS);
        LaneView {
            k,
            s: &grp[sb * k.sb_bytes()..(sb + 1) * k.sb_bytes()],
            lane: r % ROWS,
        }
    }
}

/// One row's numbers in one packed superblock.
struct LaneView<'a> {
    k: Kind,
    s: &'a [u8],
    lane: usize,
}

impl LaneView<'_> {
    fn f16(&self, at: usize) -> f32 {
        let at = at + 2 * self.lane;
        half::f16::from_le_bytes([self.s[at], self.s[at + 1]]).to_f32()
    }

    fn d(&self) -> f32 {
        self.f16(0)
    }

    fn second(&self) -> f32 {
        if self.k.has_second() {
            self.f16(ROWS * 2)
        } else {
            0.0
        }
    }

    fn sc(&self, i: usize) -> u8 {
        self.s[self.k.sc_at() + i * ROWS + self.lane]
    }

    fn mn(&self, j: usize) -> u8 {
        self.s[self.k.mn_at() + j * ROWS + self.lane]
    }

    /// The stored quant of column `c` (IQ4 kinds: level + 128).
    fn quant(&self, c: usize) -> u8 {
        quant_at(self.k, &self.s[self.k.head_bytes()..], self.lane, c)
    }
}

impl Packed {
    /// The packed kernels' products in scalar code, step for step (the test oracle every ISA's
    /// kernels must equal bit for bit): per 32-column sub-block an exact integer sum of signed
    /// quants × the token's quants, then in f32 `acc = i · (row scale · token scale) + acc`
    /// fused (Q6_K: `x = i₁ · s₁ + i₀ · s₀`, the second fused, the halves' row scales, then
    /// `acc = x · token scale + acc`), the min term fused after it, and the bias added last.
    /// `out` is `[a.n, rows]`.
    #[cfg(test)]
    pub fn reference_product(
        &self,
        a: &crate::kernels::pacts::PActs,
        bias: Option<&[f32]>,
    ) -> Vec<f32> {
        let k = self.kind;
        let nblk = self.cols / 32;
        let mut out = vec![0f32; a.n * self.rows];
        for r in 0..self.rows {
            for t in 0..a.n {
                let mut acc = 0f32;
                for sb in 0..self.cols / k.sb_cols() {
                    let v = self.lane_view(r, sb);
                    let (d, second) = (v.d(), v.second());
                    for j in 0..k.sb_cols() / 32 {
                        let blk = sb * k.sb_cols() / 32 + j;
                        let m = a.meta[t * nblk + blk];
                        let q = &a.qs[t * self.cols + blk * 32..][..32];
                        let off = k.offset() as i32;
                        let isum = |cs: std::ops::Range<usize>| -> i32 {
                            cs.map(|c| (v.quant(32 * j + c) as i32 - off) * q[c] as i32)
                                .sum()
                        };
                        let (s0, s1, mv) = match k {
                            Kind::Q4K | Kind::Q5K => {
                                (d * v.sc(j) as f32, d, second * v.mn(j) as f32)
                            }
                            Kind::Q6K => (
                                d * (v.sc(2 * j) as i8) as f32,
                                d * (v.sc(2 * j + 1) as i8) as f32,
                                second,
                            ),
                            Kind::IQ4XS => (d * (v.sc(j) as i8) as f32, d, second),
                            _ => (d, d, second),
                        };
                        if k == Kind::Q6K {
                            let x = (isum(16..32) as f32).mul_add(s1, isum(0..16) as f32 * s0);
                            acc = x.mul_add(m.d, acc);
                        } else {
                            acc = (isum(0..32) as f32).mul_add(s0 * m.d, acc);
                        }
                        match k {
                            Kind::Q4_1 | Kind::Q5_1 => acc = mv.mul_add(m.s, acc),
                            Kind::Q4K | Kind::Q5K => acc = (-mv).mul_add(m.s, acc),
                            _ => {}
                        }
                    }
                }
                out[t * self.rows + r] = acc + bias.map_or(0.0, |b| b[r]);
            }
        }
        out
    }
}

/// The stored (unsigned) quant of column `c` of a superblock for lane `r`; `q` starts at the
/// superblock's first sub-block.
fn quant_at(k: Kind, q: &[u8], r: usize, c: usize) -> u8 {
    let sub = &q[(c / 32) * k.sub_bytes()..];
    let (gi, i) = ((c % 32) / 4, c % 4);
    let lane = r * 4 + i;
    let low = if k.bits() == 8 {
        return sub[gi * 64 + lane];
    } else {
        (sub[(gi % 4) * 64 + lane] >> (4 * (gi / 4))) & 0xF
    };
    let high = match k.bits() {
        5 => ((sub[256 + lane] >> gi) & 1) << 4,
        6 => ((sub[256 + (gi / 4) * 64 + lane] >> (2 * (gi % 4))) & 3) << 4,
        _ => 0,
    };
    let u = low | high;
    match k {
        // The level + 128, as the kernels look it up.
        Kind::IQ4NL | Kind::IQ4XS => {
            (suanli_core::quant::IQ4_LEVELS[u as usize] as i32 + 128) as u8
        }
        _ => u,
    }
}

/// Write one row's decoded superblock into lane `r` of the group's superblock `dst`.
fn place(k: Kind, d: &decode::Superblock, r: usize, dst: &mut [u8]) {
    dst[2 * r..2 * r + 2].copy_from_slice(&d.d.to_le_bytes());
    if k.has_second() {
        dst[ROWS * 2 + 2 * r..ROWS * 2 + 2 * r + 2].copy_from_slice(&d.second.to_le_bytes());
    }
    for i in 0..k.n_sc() {
        dst[k.sc_at() + i * ROWS + r] = d.sc[i];
    }
    for i in 0..k.n_mn() {
        dst[k.mn_at() + i * ROWS + r] = d.mn[i];
    }
    let planes = &mut dst[k.head_bytes()..];
    // One 32-column sub-block at a time, each stored byte computed whole (IQ4 types keep their
    // 4-bit index; the kernel looks the level up).
    for (sub, q) in d.q[..k.sb_cols()].chunks_exact(32).enumerate() {
        let out = &mut planes[sub * k.sub_bytes()..(sub + 1) * k.sub_bytes()];
        let lane = r * 4;
        if k.bits() == 8 {
            for g in 0..8 {
                out[g * 64 + lane..g * 64 + lane + 4].copy_from_slice(&q[4 * g..4 * g + 4]);
            }
            continue;
        }
        for j in 0..4 {
            for i in 0..4 {
                out[j * 64 + lane + i] = (q[4 * j + i] & 0xF) | ((q[16 + 4 * j + i] & 0xF) << 4);
            }
        }
        match k.bits() {
            5 => {
                for i in 0..4 {
                    out[256 + lane + i] =
                        (0..8).fold(0u8, |b, g| b | (((q[4 * g + i] >> 4) & 1) << g));
                }
            }
            6 => {
                for h in 0..2 {
                    for i in 0..4 {
                        out[256 + h * 64 + lane + i] = (0..4).fold(0u8, |b, s| {
                            b | (((q[4 * (4 * h + s) + i] >> 4) & 3) << (2 * s))
                        });
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests;
