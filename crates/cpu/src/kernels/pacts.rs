//! Activations for the packed-weight kernels: each token quantized in blocks of 32 as llama.cpp's
//! Q8_1 (`core::quant::q8`), the quants in one array and each block's numbers in another, so the
//! kernels broadcast 4 quants at a time and read one 16-byte record per block.

use super::at_least;
use crate::pool::{Pool, SharedMut};
use suanli_core::quant::q8::{quantize_q8, BlockQ8};

/// Per 32-element block of one token.
///
/// The weight offsets' terms (`Kind::offset` × −Σq) are stored multiplied out, so that a
/// kernel's integer sums start from one broadcast load: the multiply and the broadcast from a
/// general register it replaced ran on the vector ports, two of every ~15 operations per token
/// and sub-block of the VNNI tiles.
#[derive(Clone, Copy, Default, Debug, PartialEq)]
#[repr(C)]
pub struct Meta {
    /// Scale: x ≈ d · q.
    pub d: f32,
    /// d · Σq (what a float min multiplies).
    pub s: f32,
    /// −Σq over the block times the 32-element kinds' offsets 8, 16 and 128.
    noff: [i32; 3],
    /// −Σq over each half (Q6_K's 16-element sub-blocks) times Q6_K's offset 32.
    noff16: [i32; 2],
}

impl Meta {
    /// A block's record from its stored (f16-rounded) scale `d` and the negated sums of its
    /// halves' quants.
    fn of(d: f32, h0: i32, h1: i32) -> Meta {
        let n = h0 + h1;
        // |n| ≤ 32 · 128, so n · 128 fits an i32 with room to spare.
        Meta {
            d,
            // In f32 (llama.cpp rounds it to f16; exact is better and costs nothing here).
            s: d * -n as f32,
            noff: [n * 8, n * 16, n * 128],
            noff16: [h0 * 32, h1 * 32],
        }
    }

    /// −Σq over the block times `off` (a kind's `offset`). Kernels pass a constant, so this
    /// is one field's load.
    #[inline(always)]
    pub fn offset_sum(&self, off: i32) -> i32 {
        match off {
            0 => 0,
            8 => self.noff[0],
            16 => self.noff[1],
            128 => self.noff[2],
            _ => (self.noff[0] >> 3) * off,
        }
    }

    /// −Σq over half `h` times `off` (Q6_K's offset, 32).
    #[inline(always)]
    pub fn half_offset_sum(&self, h: usize, off: i32) -> i32 {
        match off {
            32 => self.noff16[h],
            _ => (self.noff16[h] >> 5) * off,
        }
    }
}

/// Tokens per tile of the AMX kernels (rows of an A tile).
pub const TILE_TOKENS: usize = 16;

/// One 32-element block of 16 tokens, contiguous so that the AMX kernels' tile loads stream:
/// the quants as an A tile (16 rows of 32 bytes), the tokens' scales and scaled sums; and the
/// tokens' records, from which the VNNI tiles of 16 tokens take every token's operands at a
/// constant distance from one pointer (`avx512_packed`: token-major, each token's address
/// was a general register to compute, or to reload once the 16 no longer fit).
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub struct TileBlock {
    pub q: [i8; TILE_TOKENS * 32],
    pub d: [f32; TILE_TOKENS],
    pub s: [f32; TILE_TOKENS],
    pub meta: [Meta; TILE_TOKENS],
}

#[derive(Default)]
pub struct PActs {
    /// Elements per token (a multiple of 32).
    pub k: usize,
    pub n: usize,
    /// `[n, k]` (and past it, what earlier inputs left: the buffers only grow).
    pub qs: Vec<i8>,
    /// `[n, k / 32]`, then earlier inputs' records.
    pub meta: Vec<Meta>,
    /// With `fill(…, tiled: true)`: the whole tiles of 16 tokens again, `[n / 16, k / 32]`
    /// (built once per input, not once per piece of work), then earlier inputs' tiles.
    tile_buf: Vec<TileBlock>,
    /// The current input's tiles in `tile_buf`.
    ntiles: usize,
}

const ZERO_TILE: TileBlock = TileBlock {
    q: [0; TILE_TOKENS * 32],
    d: [0.0; TILE_TOKENS],
    s: [0.0; TILE_TOKENS],
    meta: [Meta {
        d: 0.0,
        s: 0.0,
        noff: [0; 3],
        noff16: [0; 2],
    }; TILE_TOKENS],
};

/// Tokens per thread below which quantizing is left to the calling thread.
const SERIAL_BELOW: usize = 4;

fn quantize_token(x: &[f32], qs: &mut [i8], meta: &mut [Meta]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512bw") {
        // SAFETY: the CPU has AVX-512 F/BW (checked just above).
        unsafe { x86::quantize_token(x, qs, meta) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked just above).
        unsafe { x86::quantize_token_avx2(x, qs, meta) };
        return;
    }
    #[cfg(target_arch = "aarch64")]
    return arm::quantize_token(x, qs, meta);
    #[allow(unreachable_code)]
    quantize_token_scalar(x, qs, meta);
}

/// The oracle: `core::quant::q8::quantize_q8` per block, then the block's sums.
fn quantize_token_scalar(x: &[f32], qs: &mut [i8], meta: &mut [Meta]) {
    let mut b = [BlockQ8::default()];
    for ((xb, qb), m) in x.chunks_exact(32).zip(qs.chunks_exact_mut(32)).zip(meta) {
        quantize_q8(xb, false, &mut b);
        qb.copy_from_slice(&b[0].qs);
        let half = |h: usize| {
            -(b[0].qs[h * 16..h * 16 + 16]
                .iter()
                .map(|&v| v as i32)
                .sum::<i32>())
        };
        let (h0, h1) = (half(0), half(1));
        *m = Meta::of(b[0].d, h0, h1);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::Meta;
    use std::arch::x86_64::*;
    use suanli_core::quant::q8::round_f16;

    /// roundf (half away from zero) exactly: trunc, then one step away from zero when the
    /// dropped fraction (exact in floating point) is at least one half.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn round_away(x: __m512) -> __m512 {
        let t = _mm512_roundscale_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(x);
        let frac = _mm512_abs_ps(_mm512_sub_ps(x, t));
        let up = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(frac, _mm512_set1_ps(0.5));
        // ±1 with x's sign.
        let one = _mm512_castsi512_ps(_mm512_or_si512(
            _mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32(i32::MIN)),
            _mm512_set1_epi32(1.0f32.to_bits() as i32),
        ));
        _mm512_mask_add_ps(t, up, t, one)
    }

    /// Σ of 16 signed bytes: `vpsadbw` adds them biased to unsigned, 8 to a lane (a widening and
    /// a 16-lane reduction cost ~4× as many instructions). SSE2: both quantizers inline it.
    #[inline]
    #[target_feature(enable = "sse2")]
    fn sum16(b: __m128i) -> i32 {
        let s = _mm_sad_epu8(
            _mm_xor_si128(b, _mm_set1_epi8(i8::MIN)),
            _mm_setzero_si128(),
        );
        _mm_cvtsi128_si32(s) + _mm_extract_epi16::<4>(s) - 16 * 128
    }

    /// Lane b: the largest of `m[b]`'s 16 lanes. Four rounds, each halving the lanes per
    /// vector and the vectors (46 shuffles and maxima for 16 rows, against ~8 per row for a
    /// row's own reduction), then one permutation into row order.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn max_of_rows(m: &[__m512; 16]) -> __m512 {
        // Rows 2i, 2i+1: 128-bit quarters 0–1 hold row 2i's 8 partial maxima, 2–3 row 2i+1's.
        let t: [__m512; 8] = std::array::from_fn(|i| {
            let (a, b) = (m[2 * i], m[2 * i + 1]);
            _mm512_max_ps(
                _mm512_shuffle_f32x4::<0b01_00_01_00>(a, b),
                _mm512_shuffle_f32x4::<0b11_10_11_10>(a, b),
            )
        });
        // Quarter q holds row 4i + q's 4 partial maxima.
        let u: [__m512; 4] = std::array::from_fn(|i| {
            let (a, b) = (t[2 * i], t[2 * i + 1]);
            _mm512_max_ps(
                _mm512_shuffle_f32x4::<0b10_00_10_00>(a, b),
                _mm512_shuffle_f32x4::<0b11_01_11_01>(a, b),
            )
        });
        // Quarter q: rows 8i + q (elements 0, 1) and 8i + 4 + q (2, 3), two partials each.
        let v: [__m512; 2] = std::array::from_fn(|i| {
            let (a, b) = (u[2 * i], u[2 * i + 1]);
            _mm512_max_ps(
                _mm512_shuffle_ps::<0b01_00_01_00>(a, b),
                _mm512_shuffle_ps::<0b11_10_11_10>(a, b),
            )
        });
        // Lane 4q + j: row q + 4j.
        let w = _mm512_max_ps(
            _mm512_shuffle_ps::<0b10_00_10_00>(v[0], v[1]),
            _mm512_shuffle_ps::<0b11_01_11_01>(v[0], v[1]),
        );
        let order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
        _mm512_permutexvar_ps(order, w)
    }

    /// `quantize_token_scalar`, 32 elements per block in two vectors; the same operations in
    /// the same order per element, so the same bits. Sixteen blocks at a time share one
    /// reduction of their maxima and one vector division each for their scales (per block,
    /// a reduction and two scalar divisions waited on each other): `quant_probe`, one thread,
    /// 512 tokens × 4864 10.1 → 8.0 ns per block, 16 × 896 13.3 → 8.2; without the memset of
    /// the group's arrays (below) 7.5 → 5.9 and 7.7–9.4 → 5.8.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub unsafe fn quantize_token(x: &[f32], qs: &mut [i8], meta: &mut [Meta]) {
        for ((xg, qg), mg) in x
            .chunks(32 * 16)
            .zip(qs.chunks_mut(32 * 16))
            .zip(meta.chunks_mut(16))
        {
            // Built element by element: zeroed arrays filled by a loop of unknown length were a
            // 3 KiB memset per group (1.2 % of a prefill). Blocks past a short group's end are 0.
            let blocks = xg.len() / 32;
            let v: [[__m512; 2]; 16] = std::array::from_fn(|b| match b < blocks {
                // SAFETY: block b holds 32 elements.
                true => unsafe {
                    let p = xg.as_ptr().add(32 * b);
                    [_mm512_loadu_ps(p), _mm512_loadu_ps(p.add(16))]
                },
                false => [_mm512_setzero_ps(); 2],
            });
            let absmax: [__m512; 16] = std::array::from_fn(|b| {
                _mm512_max_ps(_mm512_abs_ps(v[b][0]), _mm512_abs_ps(v[b][1]))
            });
            // As the scalar steps: d = amax / 127, id = 1 / d (0 for d = 0), the stored scale
            // rounded to f16 (to nearest, ties to even); IEEE division rounds alike in lanes.
            let d = _mm512_div_ps(max_of_rows(&absmax), _mm512_set1_ps(127.0));
            let nonzero = _mm512_cmp_ps_mask::<_CMP_NEQ_UQ>(d, _mm512_setzero_ps());
            let id = _mm512_maskz_div_ps(nonzero, _mm512_set1_ps(1.0), d);
            let d16 = _mm512_cvtph_ps(_mm512_cvtps_ph::<
                { _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC },
            >(d));
            let (mut ids, mut ds) = ([0f32; 16], [0f32; 16]);
            // SAFETY: 16 floats each.
            unsafe {
                _mm512_storeu_ps(ids.as_mut_ptr(), id);
                _mm512_storeu_ps(ds.as_mut_ptr(), d16);
            }
            for (b, ((vb, qb), m)) in v.iter().zip(qg.chunks_exact_mut(32)).zip(mg).enumerate() {
                let id = _mm512_set1_ps(ids[b]);
                let q0 = _mm512_cvtps_epi32(round_away(_mm512_mul_ps(vb[0], id)));
                let q1 = _mm512_cvtps_epi32(round_away(_mm512_mul_ps(vb[1], id)));
                // Saturating, like `as i8`.
                let (b0, b1) = (_mm512_cvtsepi32_epi8(q0), _mm512_cvtsepi32_epi8(q1));
                // SAFETY: qb holds 32 bytes.
                unsafe {
                    _mm_storeu_si128(qb.as_mut_ptr() as *mut __m128i, b0);
                    _mm_storeu_si128(qb.as_mut_ptr().add(16) as *mut __m128i, b1);
                }
                let (h0, h1) = (-sum16(b0), -sum16(b1));
                *m = Meta::of(ds[b], h0, h1);
            }
        }
    }

    /// `round_away` on 8 lanes.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn round_away8(x: __m256) -> __m256 {
        let t = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(x);
        let sign = _mm256_and_ps(x, _mm256_set1_ps(-0.0));
        let frac = _mm256_andnot_ps(_mm256_set1_ps(-0.0), _mm256_sub_ps(x, t));
        let up = _mm256_cmp_ps::<_CMP_GE_OQ>(frac, _mm256_set1_ps(0.5));
        // ±1 with x's sign where the fraction is at least one half.
        let one = _mm256_and_ps(up, _mm256_or_ps(sign, _mm256_set1_ps(1.0)));
        _mm256_add_ps(t, one)
    }

    /// `quantize_token` with AVX2 (machines without AVX-512): the same operations per element,
    /// so the same bits as the scalar oracle.
    #[target_feature(enable = "avx2")]
    pub unsafe fn quantize_token_avx2(x: &[f32], qs: &mut [i8], meta: &mut [Meta]) {
        for ((xb, qb), m) in x.chunks_exact(32).zip(qs.chunks_exact_mut(32)).zip(meta) {
            let abs = _mm256_set1_ps(-0.0);
            // SAFETY: xb holds 32 elements.
            let v: [__m256; 4] =
                std::array::from_fn(|i| unsafe { _mm256_loadu_ps(xb.as_ptr().add(8 * i)) });
            let mut mx = _mm256_max_ps(
                _mm256_max_ps(_mm256_andnot_ps(abs, v[0]), _mm256_andnot_ps(abs, v[1])),
                _mm256_max_ps(_mm256_andnot_ps(abs, v[2]), _mm256_andnot_ps(abs, v[3])),
            );
            mx = _mm256_max_ps(mx, _mm256_permute2f128_ps::<1>(mx, mx));
            mx = _mm256_max_ps(mx, _mm256_shuffle_ps::<0b01_00_11_10>(mx, mx));
            mx = _mm256_max_ps(mx, _mm256_shuffle_ps::<0b10_11_00_01>(mx, mx));
            let amax = _mm256_cvtss_f32(mx);
            let d = amax / 127.0;
            let id = _mm256_set1_ps(if d != 0.0 { 1.0 / d } else { 0.0 });
            let mut q = [0i8; 32];
            for (i, vi) in v.iter().enumerate() {
                let r = _mm256_cvtps_epi32(round_away8(_mm256_mul_ps(*vi, id)));
                // Saturating, like `as i8` (|r| ≤ 127 here anyway).
                let w =
                    _mm_packs_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256::<1>(r));
                let b = _mm_packs_epi16(w, w);
                _mm_storel_epi64(q.as_mut_ptr().add(8 * i) as *mut __m128i, b);
            }
            qb.copy_from_slice(&q);
            let half = |h: usize| _mm_loadu_si128(q.as_ptr().add(16 * h) as *const __m128i);
            let (h0, h1) = (-sum16(half(0)), -sum16(half(1)));
            *m = Meta::of(round_f16(d), h0, h1);
        }
    }
}

#[cfg(target_arch = "aarch64")]
mod arm {
    use super::Meta;
    use std::arch::aarch64::*;
    use suanli_core::quant::q8::round_f16;

    /// `quantize_token_scalar` with NEON (part of the aarch64 baseline): the same operations
    /// per element — `fmaxnm` ignores NaN as `f32::max` does, `fcvtas` rounds half away from
    /// zero as `roundf`, the narrowing saturates as `as i8` — so the same bits.
    pub fn quantize_token(x: &[f32], qs: &mut [i8], meta: &mut [Meta]) {
        for ((xb, qb), m) in x.chunks_exact(32).zip(qs.chunks_exact_mut(32)).zip(meta) {
            // SAFETY: xb and qb hold 32 elements each; NEON is always present on aarch64.
            unsafe {
                let v: [float32x4_t; 8] =
                    std::array::from_fn(|i| vld1q_f32(xb.as_ptr().add(4 * i)));
                let mut mx = vabsq_f32(v[0]);
                for vi in &v[1..] {
                    mx = vmaxnmq_f32(mx, vabsq_f32(*vi));
                }
                let d = vmaxnmvq_f32(mx) / 127.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                let mut halves = [vdupq_n_s8(0); 2];
                for (h, out) in halves.iter_mut().enumerate() {
                    let r: [int16x4_t; 4] = std::array::from_fn(|i| {
                        vqmovn_s32(vcvtaq_s32_f32(vmulq_n_f32(v[4 * h + i], id)))
                    });
                    *out = vcombine_s8(
                        vqmovn_s16(vcombine_s16(r[0], r[1])),
                        vqmovn_s16(vcombine_s16(r[2], r[3])),
                    );
                    vst1q_s8(qb.as_mut_ptr().add(16 * h), *out);
                }
                let (h0, h1) = (
                    -(vaddlvq_s8(halves[0]) as i32),
                    -(vaddlvq_s8(halves[1]) as i32),
                );
                *m = Meta::of(round_f16(d), h0, h1);
            }
        }
    }
}

impl PActs {
    /// The whole tiles of 16 tokens of the last `fill(…, tiled: true)`, `[n / 16, k / 32]`
    /// (empty after an untiled one).
    pub fn tiles(&self) -> &[TileBlock] {
        &self.tile_buf[..self.ntiles]
    }

    /// Quantize `n` tokens of `k` elements (`x` is `[n, k]`); the work is spread over the
    /// threads. `tiled`: also lay the whole tiles of 16 tokens out (`tiles`) for the AMX kernels
    /// and the VNNI tiles of 16 — each tile's blocks right after its tokens are quantized,
    /// while they are in L1 (a second pass over the token-major quants read them back from L2
    /// with 16 strided streams and was 14 % of a SmolLM2-sized product, 1536 × 576 × 512
    /// tokens).
    pub fn fill(&mut self, pool: &Pool, x: &[f32], n: usize, k: usize, tiled: bool) {
        debug_assert!(k.is_multiple_of(32) && x.len() == n * k);
        let nblk = k / 32;
        self.k = k;
        self.n = n;
        // The buffers keep their length as inputs' widths alternate (576 and 1536 columns in
        // each layer of SmolLM2: `at_least`).
        at_least(&mut self.qs, n * k, 0);
        at_least(&mut self.meta, n * nblk, Meta::default());
        let whole = if tiled { n / TILE_TOKENS } else { 0 };
        self.ntiles = whole * nblk;
        at_least(&mut self.tile_buf, self.ntiles, ZERO_TILE);
        if whole == 0 && n < SERIAL_BELOW * pool.threads() {
            for t in 0..n {
                quantize_token(
                    &x[t * k..(t + 1) * k],
                    &mut self.qs[t * k..(t + 1) * k],
                    &mut self.meta[t * nblk..(t + 1) * nblk],
                );
            }
            return;
        }
        // Units: a whole tile's tokens over a run of its blocks (several runs where the tiles
        // are too few to keep every thread busy), then the tokens after the whole tiles a few
        // at a time.
        let threads = pool.threads();
        let runs = match whole {
            0 => 1,
            w => (2 * threads).div_ceil(w).min(nblk.div_ceil(16)),
        };
        let run_blocks = nblk.div_ceil(runs);
        let rest = n - whole * TILE_TOKENS;
        let rest_units = rest.div_ceil(SERIAL_BELOW);
        let units = whole * runs + rest_units;
        let (qs, meta, tiles) = (
            SharedMut(self.qs.as_mut_ptr()),
            SharedMut(self.meta.as_mut_ptr()),
            SharedMut(self.tile_buf.as_mut_ptr()),
        );
        pool.pieces(units, &|u| {
            let (tokens, blocks, tile) = match u < whole * runs {
                true => {
                    let (tile, run) = (u / runs, u % runs);
                    let b0 = run * run_blocks;
                    let t0 = tile * TILE_TOKENS;
                    (
                        t0..t0 + TILE_TOKENS,
                        b0.min(nblk)..(b0 + run_blocks).min(nblk),
                        Some(tile),
                    )
                }
                false => {
                    let t0 = whole * TILE_TOKENS + (u - whole * runs) * SERIAL_BELOW;
                    (t0..(t0 + SERIAL_BELOW).min(n), 0..nblk, None)
                }
            };
            // SAFETY: units cover disjoint (token, block) cells of `qs` and `meta` and disjoint
            // blocks of `tiles`, all within the lengths grown above.
            unsafe {
                for t in tokens.clone() {
                    let (e0, e1) = (t * k + blocks.start * 32, t * k + blocks.end * 32);
                    quantize_token(
                        &x[e0..e1],
                        std::slice::from_raw_parts_mut(qs.get().add(e0), e1 - e0),
                        std::slice::from_raw_parts_mut(
                            meta.get().add(t * nblk + blocks.start),
                            blocks.len(),
                        ),
                    );
                }
                let Some(tile) = tile else { return };
                for blk in blocks {
                    let tb = &mut *tiles.get().add(tile * nblk + blk);
                    for (i, t) in tokens.clone().enumerate() {
                        let src = qs.get().add(t * k + blk * 32);
                        std::ptr::copy_nonoverlapping(src, tb.q.as_mut_ptr().add(32 * i), 32);
                        let m = *meta.get().add(t * nblk + blk);
                        (tb.d[i], tb.s[i], tb.meta[i]) = (m.d, m.s, m);
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SIMD quantizer gives the scalar oracle's bits, ties and saturation included, for
    /// rows of whole groups of 16 blocks (64), a group and a part (28, Qwen2.5-0.5B's 896) and
    /// one block.
    #[test]
    fn simd_quantization_equals_scalar() {
        for blocks in [64, 28, 1] {
            check_simd_quantization(blocks);
        }
    }

    /// `fill` gives every token the quants and records `quantize_token` gives it alone, and
    /// lays the whole tiles out as copies of them — for inputs whose tiles are fewer than the
    /// threads' units (one tile: its blocks split in runs), several tiles with tokens after
    /// them, and a narrower input after a wider one (the buffers keep their length; `tiles`
    /// shows only the current input's).
    #[test]
    fn fill_lays_tiles_out_as_the_tokens_quants() {
        let pool = Pool::new(3).unwrap();
        let mut a = PActs::default();
        for (n, k, tiled) in [
            (16, 896, true),
            (53, 4864, true),
            (37, 576, true),
            (21, 896, false),
            (7, 64, true),
        ] {
            let x: Vec<f32> = (0..n * k)
                .map(|i| ((i as f32 * 0.61).sin() * 2.0).powi(3) + (i % 7) as f32 * 0.1)
                .collect();
            a.fill(&pool, &x, n, k, tiled);
            let nblk = k / 32;
            for t in 0..n {
                let (mut q, mut m) = (vec![0i8; k], vec![Meta::default(); nblk]);
                quantize_token(&x[t * k..(t + 1) * k], &mut q, &mut m);
                assert_eq!(&a.qs[t * k..(t + 1) * k], &q[..], "n {n} k {k} token {t}");
                assert_eq!(
                    &a.meta[t * nblk..(t + 1) * nblk],
                    &m[..],
                    "n {n} k {k} token {t}"
                );
            }
            let whole = if tiled { n / TILE_TOKENS } else { 0 };
            assert_eq!(a.tiles().len(), whole * nblk, "n {n} k {k}");
            for (i, tb) in a.tiles().iter().enumerate() {
                let (tile, blk) = (i / nblk, i % nblk);
                for j in 0..TILE_TOKENS {
                    let t = tile * TILE_TOKENS + j;
                    assert_eq!(&tb.q[32 * j..32 * j + 32], &a.qs[t * k + 32 * blk..][..32]);
                    let m = a.meta[t * nblk + blk];
                    assert_eq!((tb.d[j], tb.s[j], tb.meta[j]), (m.d, m.s, m));
                }
            }
        }
    }

    fn check_simd_quantization(blocks: usize) {
        let mut x: Vec<f32> = (0..32 * 64)
            .map(|i| ((i as f32 * 0.37).sin() * 3.0).powi(3))
            .collect();
        // Exact ties after scaling (amax 127 → id 1): 2.5, -0.5, …; an all-zero block; tiny values.
        for (j, v) in [127.0, 2.5, -0.5, 3.5, -126.5, 0.49999997, -1.5]
            .iter()
            .enumerate()
        {
            x[j] = *v;
        }
        for v in &mut x[32..64] {
            *v = 0.0;
        }
        for v in &mut x[64..96] {
            *v *= 1e-30;
        }
        // Scales that round to f16 subnormals or overflow it.
        for v in &mut x[96..128] {
            *v *= 1e-5;
        }
        for v in &mut x[128..160] {
            *v *= 1e6;
        }
        x.truncate(32 * blocks);
        let (mut qa, mut qb) = (vec![0i8; x.len()], vec![0i8; x.len()]);
        let (mut ma, mut mb) = (
            vec![Meta::default(); x.len() / 32],
            vec![Meta::default(); x.len() / 32],
        );
        quantize_token(&x, &mut qa, &mut ma);
        quantize_token_scalar(&x, &mut qb, &mut mb);
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            let (mut qc, mut mc) = (vec![0i8; x.len()], vec![Meta::default(); x.len() / 32]);
            // SAFETY: the CPU has AVX2 (checked just above).
            unsafe { x86::quantize_token_avx2(&x, &mut qc, &mut mc) };
            assert_eq!(qc, qb);
            for (a, b) in mc.iter().zip(&mb) {
                assert_eq!(
                    (a.d.to_bits(), a.s.to_bits(), a.noff, a.noff16),
                    (b.d.to_bits(), b.s.to_bits(), b.noff, b.noff16)
                );
            }
        }
        assert_eq!(qa, qb);
        for (a, b) in ma.iter().zip(&mb) {
            assert_eq!(
                (a.d.to_bits(), a.s.to_bits(), a.noff, a.noff16),
                (b.d.to_bits(), b.s.to_bits(), b.noff, b.noff16)
            );
        }
    }
}
