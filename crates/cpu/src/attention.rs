//! Causal attention over the paged KV cache with an online softmax (no score matrix). The work
//! unit is a run of up to 16 consecutive query tokens of one sequence × one KV head: the K and V
//! tiles of that head are read once for all those tokens and all the query heads that share it
//! (grouped-query attention), block by block through the block table; each (token, head) row
//! masks the positions it does not attend.
//!
//! The cache layout (the backend's own): per block and KV head, a K tile `[head_dim][BLOCK]`
//! (transposed, so the scores of a block's 16 positions come out as one vector) and a V tile
//! `[BLOCK][head_dim]`. Each block: 16 scores per query head, their max, one vectorized exp,
//! one rescale of the running sums, then the V rows weighted in.

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
use crate::kernels::Isa;
use crate::kernels::Kernels;
use crate::pool::Pool;
use crate::KvStore;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// Positions per KV block; the tile layout and the kernels assume it.
pub const BLOCK: usize = 16;
use suanli_backend::{shape_err, Act, AttnMeta, KvPages, Result};

pub fn paged_attention(
    k: &Kernels,
    pool: &Pool,
    q: &Act<crate::ActBuf>,
    kv: &KvPages<KvStore>,
    meta: &AttnMeta<'_>,
    layer: usize,
    out: &mut Act<crate::ActBuf>,
) -> Result<()> {
    let (nh, nkv, hd) = (meta.n_heads, meta.n_kv_heads, meta.head_dim);
    if nkv == 0
        || nh % nkv != 0
        || q.cols != nh * hd
        || out.cols != nh * hd
        || kv.spec.kv_dim() != nkv * hd
        || layer >= kv.layers.len()
    {
        return Err(shape_err(
            "attention",
            format!(
                "q [{}, {}], heads {nh}/{nkv}×{hd}, kv {:?}",
                q.rows, q.cols, kv.spec
            ),
        ));
    }
    if kv.spec.block_size != BLOCK {
        return Err(shape_err(
            "attention",
            format!(
                "the CPU cache uses blocks of {BLOCK}, not {}",
                kv.spec.block_size
            ),
        ));
    }
    if q.rows > out.capacity {
        return Err(shape_err("attention", "output too small"));
    }
    // Per query row: (sequence index, absolute position).
    let mut rows = vec![(0usize, 0usize); q.rows];
    for (si, s) in meta.seqs.iter().enumerate() {
        if s.q_start + s.q_len > q.rows
            || s.q_len > s.ctx_len
            || s.ctx_len.div_ceil(kv.spec.block_size) > s.block_table.len()
        {
            return Err(shape_err(
                "attention",
                format!("sequence {si}: {s:?} does not fit the batch or its block table"),
            ));
        }
        // Blocks wholly before the window of the sequence's first query are never read (an
        // engine may have given them back).
        let first = meta.window.map_or(0, |w| {
            (s.ctx_len - s.q_len + 1).saturating_sub(w) / kv.spec.block_size
        });
        if s.block_table[first.min(s.block_table.len())..]
            .iter()
            .any(|&b| b as usize >= kv.spec.num_blocks)
        {
            return Err(shape_err(
                "attention",
                format!("sequence {si}: block table points outside the cache"),
            ));
        }
        for i in 0..s.q_len {
            rows[s.q_start + i] = (si, s.ctx_len - s.q_len + i);
        }
    }
    out.rows = q.rows;
    let group = nh / nkv;
    let unit = group * hd;
    // Work: runs of up to TOKENS consecutive query rows of one sequence, per KV head, so that
    // each K/V tile read from the cache serves all of them (a prefill's queries share their
    // context); decode steps are runs of one. With AMX, prompt rows take the BF16 tiles and
    // generated rows the f32 loops, whatever the step (`AttnSeq::generated_from`: a row's bits
    // must not depend on how the steps were cut), in longer runs (each chunk of K/V converted
    // to bf16 serves more rows) that still leave each thread several units.
    #[cfg(target_arch = "x86_64")]
    let tiles = k.isa == Isa::Amx && amx::available() && amx::takes(hd);
    #[cfg(not(target_arch = "x86_64"))]
    let tiles = false;
    let per_run = if tiles {
        #[cfg(target_arch = "x86_64")]
        let most = amx::TOKENS;
        #[cfg(not(target_arch = "x86_64"))]
        let most = TOKENS;
        (q.rows * nkv)
            .div_ceil(4 * pool.threads())
            .clamp(TOKENS, most)
    } else {
        TOKENS
    };
    // (first row, rows, on tiles)
    let mut runs = Vec::new();
    for s in meta.seqs {
        let prompt = s.prompt_rows();
        for (from, to, on_tiles) in [(0, prompt, tiles), (prompt, s.q_len, false)] {
            let len = if on_tiles { per_run } else { TOKENS };
            for t0 in (from..to).step_by(len) {
                runs.push((s.q_start + t0, len.min(to - t0), on_tiles));
            }
        }
    }
    let units = runs.len() * nkv;
    let next = AtomicUsize::new(0);
    let dst = SharedOut(out.buf.as_mut_ptr());
    pool.run(&|_, _| {
        let mut st = State::default();
        // The unit's queries and outputs, reused across units.
        let (mut qs, mut acc) = (Vec::new(), Vec::new());
        loop {
            let i = next.fetch_add(1, Relaxed);
            if i >= units {
                break;
            }
            let ((t0, tn, on_tiles), kvh) = (runs[i / nkv], i % nkv);
            // Only x86 has the tile kernel.
            let _ = on_tiles;
            let (si, pos) = rows[t0];
            // The run's query heads of this KV head, token by token, `[tn × group, hd]`.
            qs.clear();
            for t in t0..t0 + tn {
                qs.extend_from_slice(&q.buf[t * q.cols + kvh * unit..][..unit]);
            }
            acc.resize(tn * unit, 0.0);
            let job = Job {
                q: &qs,
                kv,
                layer,
                kvh,
                table: &meta.seqs[si].block_table,
                len0: pos + 1,
                window: meta.window,
                group,
                hd,
                scale: meta.scale,
            };
            match k.isa {
                // SAFETY: `available()` and `takes` hold.
                #[cfg(target_arch = "x86_64")]
                Isa::Amx if on_tiles => unsafe { amx::attend_amx(&job, &mut acc) },
                // SAFETY: the levels were checked at detection.
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 | Isa::Avx2Vnni => unsafe { attend_avx2(&job, &mut acc, &mut st) },
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512 | Isa::Amx => unsafe { attend_avx512(&job, &mut acc, &mut st) },
                #[cfg(target_arch = "aarch64")]
                Isa::Neon | Isa::NeonDot | Isa::NeonMm => {
                    attend::<arm::Neon>(&job, &mut acc, &mut st)
                }
                _ => attend::<Portable>(&job, &mut acc, &mut st),
            }
            for (j, a) in acc.chunks_exact(unit).enumerate() {
                // SAFETY: `out` holds q.rows × nh × hd; each unit writes the heads of its own
                // KV head for its own tokens, so no two threads write the same cells.
                unsafe {
                    let at = dst.at((t0 + j) * nh * hd + kvh * unit);
                    std::ptr::copy_nonoverlapping(a.as_ptr(), at, unit);
                }
            }
        }
    });
    Ok(())
}

/// Query tokens of one sequence attended together (each K/V tile read once for all of them).
const TOKENS: usize = 16;

/// The output pointer shared by the threads (each writes its own cells).
struct SharedOut(*mut f32);
// SAFETY: the threads write disjoint cells (see the write above).
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// The cell `i` floats in (a method, so that closures capture the whole `Sync` wrapper).
    fn at(&self, i: usize) -> *mut f32 {
        self.0.wrapping_add(i)
    }
}

struct Job<'a> {
    /// For consecutive query tokens, the `group` query heads that share KV head `kvh`:
    /// `[tokens × group, hd]`.
    q: &'a [f32],
    kv: &'a KvPages<KvStore>,
    layer: usize,
    kvh: usize,
    table: &'a [u32],
    /// The first token attends positions 0..len0, the next one 0..len0 + 1, …
    len0: usize,
    /// In a sliding-window layer, each token attends only its last `window` positions.
    window: Option<usize>,
    group: usize,
    hd: usize,
    scale: f32,
}

/// Running max and sum per query head and a block's scores/weights, reused across units.
#[derive(Default)]
struct State {
    m: Vec<f32>,
    /// Per lane (summed at the end).
    l: Vec<[f32; BLOCK]>,
    w: Vec<[f32; BLOCK]>,
    /// Per row: the positions it attends (`Job::span`, computed once per unit).
    span: Vec<(usize, usize)>,
}

/// Where the tile of KV head `kvh` in block `blk` starts.
pub fn tile_start(blk: usize, kvh: usize, spec: &suanli_backend::KvSpec) -> usize {
    blk * BLOCK * spec.kv_dim() + kvh * BLOCK * spec.head_dim
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn attend_avx2(job: &Job<'_>, acc: &mut [f32], st: &mut State) {
    attend::<x86::Avx2>(job, acc, st)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
unsafe fn attend_avx512(job: &Job<'_>, acc: &mut [f32], st: &mut State) {
    attend::<x86::Avx512>(job, acc, st)
}

/// e^x for x ≤ 0 (scores minus their running max), to about 2 ulp; plain arithmetic so that the
/// block loops vectorize. Below −87 it returns ~1e-38 rather than 0, which no sum notices.
#[inline(always)]
pub(super) fn exp_neg(x: f32) -> f32 {
    crate::vmath::exp(x)
}

/// The largest of 16, as a halving tree (vector shuffles rather than a scalar chain).
#[inline(always)]
fn max16(s: &[f32; BLOCK]) -> f32 {
    let mut t = *s;
    let mut w = BLOCK / 2;
    while w > 0 {
        for i in 0..w {
            t[i] = t[i].max(t[i + w]);
        }
        w /= 2;
    }
    t[0]
}

/// One block's K or V tile of one KV head, as stored.
#[derive(Clone, Copy)]
enum Tile<'a> {
    F32(&'a [f32]),
    F16(&'a [half::f16]),
    /// Quants, and one scale per 32 values of a position (`Q8Tile`).
    Q8(Q8Tile<'a>),
}

#[derive(Clone, Copy)]
struct Q8Tile<'a> {
    q: &'a [i8],
    d: &'a [half::f16],
    hd: usize,
    /// A K tile (`[hd][BLOCK]`, scales `[hd / 32][BLOCK]`) rather than a V tile (`[BLOCK][hd]`,
    /// scales `[BLOCK][hd / 32]`).
    transposed: bool,
}

impl Q8Tile<'_> {
    /// Index into `d` of element `i` of the tile.
    #[inline(always)]
    fn scale_of(&self, i: usize) -> usize {
        if self.transposed {
            (i / BLOCK / 32) * BLOCK + i % BLOCK
        } else {
            (i / self.hd) * (self.hd / 32) + (i % self.hd) / 32
        }
    }
}

impl<'a> Tile<'a> {
    fn of(store: &'a KvStore, off: usize, len: usize, hd: usize, transposed: bool) -> Tile<'a> {
        match store {
            KvStore::F32(v) => Tile::F32(&v[off..off + len]),
            KvStore::F16(v) => Tile::F16(&v[off..off + len]),
            KvStore::Q8 { q, d } => Tile::Q8(Q8Tile {
                q: &q[off..off + len],
                d: &d[off / 32..(off + len) / 32],
                hd,
                transposed,
            }),
        }
    }

    /// Ask for the tile's cache lines.
    fn prefetch(self) {
        use crate::kernels::prefetch_lines;
        match self {
            Tile::F32(v) => prefetch_lines(v),
            Tile::F16(v) => prefetch_lines(v),
            Tile::Q8(t) => {
                prefetch_lines(t.q);
                prefetch_lines(t.d);
            }
        }
    }

    /// Elements `start..start + out.len()` as f32 (Q8: quant × its position's scale).
    #[inline(always)]
    fn row(self, start: usize, out: &mut [f32]) {
        let end = start + out.len();
        match self {
            Tile::F32(v) => out.copy_from_slice(&v[start..end]),
            Tile::F16(v) => out
                .iter_mut()
                .zip(&v[start..end])
                .for_each(|(o, x)| *o = x.to_f32()),
            Tile::Q8(t) => {
                for (k, o) in out.iter_mut().enumerate() {
                    let i = start + k;
                    *o = t.q[i] as f32 * t.d[t.scale_of(i)].to_f32();
                }
            }
        }
    }
}

/// The two inner loops, per instruction set, for up to `HEADS` query heads at once (`q` is
/// `[heads, hd]`): the scores of a block's positions, and the weighted V rows added in.
trait BlockOps {
    /// s[h][i] = q_h · K[:, i] for a transposed K tile `[hd][BLOCK]`.
    fn scores(q: &[f32], kt: Tile<'_>, s: &mut [[f32; BLOCK]]);
    /// acc_h += Σ_{i < n} w[h][i] · V[i] for a V tile `[BLOCK][hd]`.
    fn accumulate(acc: &mut [f32], w: &[[f32; BLOCK]], n: usize, vt: Tile<'_>);

    /// The online softmax's step for rows `h0..` (as many as `s` holds) at the block starting
    /// at position `p`: their scores `s` scaled, masked and turned into weights, their running
    /// max and sums updated and their outputs so far rescaled (`softmax_rows`).
    fn softmax(sm: Softmax<'_>, h0: usize, p: usize, s: &mut [[f32; BLOCK]]) {
        softmax_rows(sm, h0, p, s)
    }
}

/// What the softmax step reads and updates: the unit's rows' spans, running max `m` and
/// per-lane sums `l`, and outputs `acc` (`[rows, hd]`).
struct Softmax<'a> {
    span: &'a [(usize, usize)],
    m: &'a mut [f32],
    l: &'a mut [[f32; BLOCK]],
    acc: &'a mut [f32],
    hd: usize,
    scale: f32,
}

/// Row by row, `BlockOps::softmax`: lanes before the row's window and from its length on are
/// masked; the max, the exps and the sums per lane (summed at the end) in plain loops.
#[inline(always)]
fn softmax_rows(sm: Softmax<'_>, h0: usize, p: usize, s: &mut [[f32; BLOCK]]) {
    let hd = sm.hd;
    for (h, s) in (h0..).zip(s.iter_mut()) {
        let (start, len) = sm.span[h];
        let (skip, n) = (start.saturating_sub(p), BLOCK.min(len.saturating_sub(p)));
        // Most blocks are attended whole: no masks there.
        let whole = skip == 0 && n == BLOCK;
        if whole {
            s.iter_mut().for_each(|v| *v *= sm.scale);
        } else {
            for (i, v) in s.iter_mut().enumerate() {
                *v = if i < n && i >= skip {
                    *v * sm.scale
                } else {
                    f32::NEG_INFINITY
                };
            }
        }
        let m_new = sm.m[h].max(max16(s));
        // Computed for all lanes, then masked; the running sum is kept per lane (summed at
        // the end), so no loop here carries a scalar dependency.
        if whole {
            s.iter_mut().for_each(|v| *v = exp_neg(*v - m_new));
        } else {
            for (i, v) in s.iter_mut().enumerate() {
                let e = exp_neg(*v - m_new);
                *v = if i < n && i >= skip { e } else { 0.0 };
            }
        }
        let l = &mut sm.l[h];
        if m_new > sm.m[h] {
            let corr = if sm.m[h] == f32::NEG_INFINITY {
                0.0
            } else {
                exp_neg(sm.m[h] - m_new)
            };
            l.iter_mut().for_each(|x| *x *= corr);
            sm.acc[h * hd..(h + 1) * hd]
                .iter_mut()
                .for_each(|x| *x *= corr);
            sm.m[h] = m_new;
        }
        // On copies: in place, LLVM assumes `l` may alias `s` and adds one lane at a time.
        let (mut sum, add) = (*l, *s);
        for i in 0..BLOCK {
            sum[i] += add[i];
        }
        *l = sum;
    }
}

/// Plain loops (what generic builds and other architectures run).
struct Portable;

/// c + a·b: fused on aarch64, where `fmla` is the base instruction set (one rounding, one
/// instruction instead of two); elsewhere the generic level cannot assume an FMA unit, and
/// `mul_add` without one is a library call.
#[inline(always)]
fn madd(a: f32, b: f32, c: f32) -> f32 {
    #[cfg(target_arch = "aarch64")]
    return a.mul_add(b, c);
    #[cfg(not(target_arch = "aarch64"))]
    return c + a * b;
}

impl BlockOps for Portable {
    // A tile row is converted once (one match on the tile's type, not one per element — that
    // kept these loops scalar) and met by every head; each sum still runs over positions and
    // dimensions in order, so the bits are the per-element loops'.
    fn scores(q: &[f32], kt: Tile<'_>, s: &mut [[f32; BLOCK]]) {
        let hd = q.len() / s.len();
        s.iter_mut().for_each(|sh| *sh = [0.0; BLOCK]);
        let mut k = [0f32; BLOCK];
        for d in 0..hd {
            kt.row(d * BLOCK, &mut k);
            for (qh, sh) in q.chunks_exact(hd).zip(s.iter_mut()) {
                let qd = qh[d];
                for (x, kv) in sh.iter_mut().zip(&k) {
                    *x = madd(qd, *kv, *x);
                }
            }
        }
    }

    fn accumulate(acc: &mut [f32], w: &[[f32; BLOCK]], n: usize, vt: Tile<'_>) {
        const COLS: usize = 64;
        let hd = acc.len() / w.len();
        let mut v = [0f32; COLS];
        for c in (0..hd).step_by(COLS) {
            let cols = COLS.min(hd - c);
            for i in 0..n {
                vt.row(i * hd + c, &mut v[..cols]);
                for (a, wh) in acc.chunks_exact_mut(hd).zip(w) {
                    let wi = wh[i];
                    for (x, vv) in a[c..c + cols].iter_mut().zip(&v[..cols]) {
                        *x = madd(wi, *vv, *x);
                    }
                }
            }
        }
    }
}

/// Query heads handled together: their scores share each K load, their sums each V load.
const HEADS: usize = 8;

impl Job<'_> {
    /// Positions `start..len` that query row `r` (token r / group) attends.
    #[inline(always)]
    fn span(&self, r: usize) -> (usize, usize) {
        let len = self.len0 + r / self.group;
        (self.window.map_or(0, |w| len.saturating_sub(w)), len)
    }
}

#[inline(always)]
fn attend<O: BlockOps>(job: &Job<'_>, acc: &mut [f32], st: &mut State) {
    let hd = job.hd;
    let rows = job.q.len() / hd;
    let (ks, vs) = &job.kv.layers[job.layer];
    let spec = &job.kv.spec;
    st.m.clear();
    st.m.resize(rows, f32::NEG_INFINITY);
    st.l.clear();
    st.l.resize(rows, [0.0; BLOCK]);
    st.w.resize(rows, [0.0; BLOCK]);
    st.span.clear();
    st.span.extend((0..rows).map(|r| job.span(r)));
    acc.fill(0.0);
    // Blocks wholly before the first row's window are skipped (they may hold other data); the
    // last row attends the most positions.
    let (start, _) = job.span(0);
    let (_, end) = job.span(rows - 1);
    let first_block = start / BLOCK;
    let mut p = first_block * BLOCK;
    let blocks = &job.table[first_block.min(job.table.len())..];
    for (b, &blk) in blocks.iter().enumerate() {
        if p >= end {
            break;
        }
        // The cache's blocks lie anywhere; the next one's tiles are asked for while this one
        // is computed (decode steps waited on these loads).
        if let Some(&next) = blocks.get(b + 1).filter(|_| p + BLOCK < end) {
            let off = tile_start(next as usize, job.kvh, spec);
            Tile::of(ks, off, BLOCK * hd, hd, true).prefetch();
            Tile::of(vs, off, BLOCK * hd, hd, false).prefetch();
        }
        let off = tile_start(blk as usize, job.kvh, spec);
        let (kt, vt) = (
            Tile::of(ks, off, BLOCK * hd, hd, true),
            Tile::of(vs, off, BLOCK * hd, hd, false),
        );
        for h0 in (0..rows).step_by(HEADS) {
            let h1 = (h0 + HEADS).min(rows);
            if st.span[h1 - 1].1 <= p {
                // This block is past every position these rows attend (later rows, later
                // tokens, attend more).
                continue;
            }
            let s = &mut st.w[h0..h1];
            O::scores(&job.q[h0 * hd..h1 * hd], kt, s);
            let sm = Softmax {
                span: &st.span,
                m: &mut st.m,
                l: &mut st.l,
                acc: &mut *acc,
                hd,
                scale: job.scale,
            };
            O::softmax(sm, h0, p, s);
            // V rows up to the longest of these rows' lengths (the others weigh them 0).
            let n = BLOCK.min(st.span[h1 - 1].1 - p);
            O::accumulate(&mut acc[h0 * hd..h1 * hd], &st.w[h0..h1], n, vt);
        }
        p += BLOCK;
    }
    for h in 0..rows {
        let inv = 1.0 / st.l[h].iter().sum::<f32>();
        acc[h * hd..(h + 1) * hd].iter_mut().for_each(|x| *x *= inv);
    }
}

/// Calls `$f::<G, E>(args)` with G = the number of heads (1..=HEADS) and E the tile's type;
/// Q8 tiles go to `$q8` (`@q8`: `$f::<G>`). For the ISA block loops (`x86.rs`, `arm.rs`).
macro_rules! by_heads {
    ($f:ident, $q8:expr, $g:expr, $tile:expr, |$t:ident| ($($arg:expr),*)) => {
        match $tile {
            Tile::F32($t) => by_heads!(@g $f, f32, $g, ($($arg),*)),
            Tile::F16($t) => by_heads!(@g $f, half::f16, $g, ($($arg),*)),
            Tile::Q8($t) => $q8($t),
        }
    };
    (@q8 $f:ident, $g:expr, ($($arg:expr),*)) => {
        match $g {
            1 => $f::<1>($($arg),*),
            2 => $f::<2>($($arg),*),
            3 => $f::<3>($($arg),*),
            4 => $f::<4>($($arg),*),
            5 => $f::<5>($($arg),*),
            6 => $f::<6>($($arg),*),
            7 => $f::<7>($($arg),*),
            _ => $f::<8>($($arg),*),
        }
    };
    (@g $f:ident, $e:ty, $g:expr, ($($arg:expr),*)) => {
        match $g {
            1 => $f::<1, $e>($($arg),*),
            2 => $f::<2, $e>($($arg),*),
            3 => $f::<3, $e>($($arg),*),
            4 => $f::<4, $e>($($arg),*),
            5 => $f::<5, $e>($($arg),*),
            6 => $f::<6, $e>($($arg),*),
            7 => $f::<7, $e>($($arg),*),
            _ => $f::<8, $e>($($arg),*),
        }
    };
}

#[cfg(target_arch = "x86_64")]
mod amx;
#[cfg(target_arch = "aarch64")]
mod arm;
#[cfg(target_arch = "x86_64")]
mod x86;

#[cfg(test)]
mod tests;
