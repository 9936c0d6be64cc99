//! out[t, r] = dot(w[r], x[t]) (+ bias[r]). Quantized weights take quantized activations
//! (Q8_0 / Q8_1 / Q8_K, as llama.cpp) and integer dot products; float weights take f32. A weight
//! marked for exact activations takes two passes: its activations' rounding error is quantized
//! and multiplied as well (as f32 activations would give, to ~1/127 of one rounding).

use crate::kernels::acts::QActs;
use crate::kernels::float_tiles;
use crate::kernels::pacts::PActs;
use crate::kernels::Isa;
use crate::kernels::{Kernels, RowTokens};
use crate::pool::{Pool, SharedMut};
use crate::CpuWeight;
use std::cell::RefCell;
use std::time::Instant;
use suanli_backend::Weight;
use suanli_core::quant::q8::{act_format, quantize_q8, quantize_q8k, ActFormat, BlockQ8, BlockQ8K};
use suanli_core::DType;

thread_local! {
    /// Per-thread rows of dequantized weights, reused across calls.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static ACT_Q8: RefCell<Vec<BlockQ8>> = const { RefCell::new(Vec::new()) };
    static ACT_Q8K: RefCell<Vec<BlockQ8K>> = const { RefCell::new(Vec::new()) };
    static QACTS: RefCell<QActs> = RefCell::new(QActs::default());
    static OUT_T: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// Both passes' products of a two-pass weight, before they are summed.
    static OUT_2: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static PACTS: RefCell<PActs> = RefCell::new(PActs::default());
}

/// Weight rows handled together while a thread's tokens stream past (kept in L1/L2).
const ROW_TILE: usize = 16;

fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < len {
            s.resize(len, 0.0);
        }
        f(&mut s[..len])
    })
}

/// Quantize the activations of each token (`per` blocks each); batches are split across threads.
fn quantize_tokens<B: Send>(
    pool: &Pool,
    q: &mut [B],
    per: usize,
    f: &(dyn Fn(usize, &mut [B]) + Sync),
) {
    if q.len() <= per {
        return f(0, q);
    }
    pool.split_mut(q, per, 1, &|t0, part| {
        for (i, qt) in part.chunks_exact_mut(per).enumerate() {
            f(t0 + i, qt);
        }
    });
}

/// Pieces of work per thread: enough for uneven progress to even out.
const PIECES: usize = 4;

/// The pieces of a packed product — (job, token chunk, row groups) — in the order the threads
/// take them: each a share of the work still left (`1 / (GUIDED · threads)`, at least one
/// group, never across a job), so that the last pieces are single groups and the threads
/// finish together. Even pieces left one thread waiting on the other's last one: in verifying
/// passes of 11 tokens the worker spun in 9.8 % of its samples, 5.5 points of them while the
/// other thread finished a product (8.7 % and 4.4 with guided pieces; the main thread waited
/// in 5.4 % of its samples, 4.9 % with them).
fn guided_pieces(
    groups: impl Iterator<Item = usize> + Clone,
    chunks: usize,
    threads: usize,
) -> Vec<(usize, usize, std::ops::Range<usize>)> {
    const GUIDED: usize = 2;
    let mut left = chunks * groups.clone().sum::<usize>();
    let mut pieces = Vec::new();
    for c in 0..chunks {
        for (j, g) in groups.clone().enumerate() {
            let mut s = 0;
            while s < g {
                let size = left.div_ceil(GUIDED * threads).clamp(1, g - s);
                pieces.push((j, c, s..s + size));
                s += size;
                left -= size;
            }
        }
    }
    pieces
}

/// `x` is `[n, w.cols]`, `out` is `[n, w.rows]`.
pub fn matmul(
    k: &Kernels,
    pool: &Pool,
    x: &[f32],
    n: usize,
    w: &Weight<CpuWeight>,
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    if n == 0 || w.rows == 0 {
        return;
    }
    if let Some(p) = &w.store.packed {
        return packed_many(pool, x, n, &mut [(p, bias, out)], k.isa);
    }
    if w.store.pair_tiles.is_some() {
        return prompt_split(pool, x, n, w, bias, out, None);
    }
    let t0 = Instant::now();
    unpacked(k, pool, x, n, w, bias, out);
    pool.products
        .add(t0.elapsed(), (n * w.rows * w.cols) as u64);
}

/// `matmul` of a weight in AMX BF16 tiles (`amx_float::PairTiles`): the rows `prompt` marks
/// take the tiles, the others f32 multiply-adds on the vector units from the same tiles (a
/// generated row's result never depends on the step; decode streams the weights faster that
/// way), each set gathered into its own product when the step mixes them.
pub fn prompt_split(
    pool: &Pool,
    x: &[f32],
    n: usize,
    w: &Weight<CpuWeight>,
    bias: Option<&[f32]>,
    out: &mut [f32],
    prompt: Option<&[bool]>,
) {
    use crate::kernels::amx_float::{products, products_f32};
    let tiles = w.store.pair_tiles.as_ref().expect("a weight in pair tiles");
    if n == 0 || w.rows == 0 {
        return;
    }
    let on_tiles = prompt.map_or(0, |p| p.iter().filter(|&&p| p).count());
    let (kd, m) = (w.cols, w.rows);
    let t0 = Instant::now();
    // SAFETY (all): weights are put in pair tiles only where `amx_float::available()` holds,
    // which includes AVX-512.
    if on_tiles == n {
        unsafe { products(tiles, pool, x, n, bias, out) };
    } else if on_tiles == 0 {
        unsafe { products_f32(tiles, pool, x, n, bias, out) };
    } else {
        let prompt = prompt.expect("some rows are prompt rows");
        for on_tiles in [true, false] {
            let rows: Vec<usize> = (0..n).filter(|&r| prompt[r] == on_tiles).collect();
            let xs: Vec<f32> = rows
                .iter()
                .flat_map(|&r| &x[r * kd..(r + 1) * kd])
                .copied()
                .collect();
            let mut part = vec![0f32; rows.len() * m];
            match on_tiles {
                true => unsafe { products(tiles, pool, &xs, rows.len(), bias, &mut part) },
                false => unsafe { products_f32(tiles, pool, &xs, rows.len(), bias, &mut part) },
            }
            for (i, &r) in rows.iter().enumerate() {
                out[r * m..(r + 1) * m].copy_from_slice(&part[i * m..(i + 1) * m]);
            }
        }
    }
    pool.products
        .add(t0.elapsed(), (n * w.rows * w.cols) as u64);
}

/// `matmul` of a weight kept in its file layout (float tiles, or the row-at-a-time kernels).
fn unpacked(
    k: &Kernels,
    pool: &Pool,
    x: &[f32],
    n: usize,
    w: &Weight<CpuWeight>,
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    if let Some(level) = float_tiles::Level::of(k.isa) {
        if float_products(level, pool, x, n, w, bias, out) {
            return;
        }
    }
    let kd = w.cols;
    let rb = w.dtype.row_bytes(kd).expect("validated in prepare_weight");
    let raw = w.store.raw.as_slice();
    let fast = k.row_tokens.filter(|rt| (rt.supports)(w.dtype));
    let ctx = QuantCtx {
        pool,
        x,
        n,
        kd,
        w,
        raw,
        rb,
        bias,
        fast,
    };
    match act_format(w.dtype) {
        ActFormat::F32 => matmul_f32(k, pool, x, n, w, bias, out),
        ActFormat::Q8K => quantized(
            &ACT_Q8K,
            &ctx,
            256,
            &|xt, qt| quantize_q8k(xt, qt),
            QActs::fill_q8k,
            k.dot_q8k,
            dequant_q8k,
            out,
        ),
        fmt => {
            let with_sum = fmt == ActFormat::Q8_1;
            quantized(
                &ACT_Q8,
                &ctx,
                32,
                &|xt, qt| quantize_q8(xt, with_sum, qt),
                QActs::fill_q8,
                k.dot_q8,
                dequant_q8,
                out,
            )
        }
    }
}

/// Activation bytes a token chunk may occupy, so that it stays in L2 while row groups stream past.
const CHUNK_BYTES: usize = 384 * 1024;
/// On the AMX tiles, chunks of at least `AMX_CHUNK_TOKENS` tokens where they fit in this many
/// bytes (Xeons since Sapphire Rapids have 2 MiB of L2 per core): each group's sub-blocks are
/// unpacked once per chunk, and at 384 KiB a 4864-column input (Qwen2.5-0.5B's down projection)
/// gave chunks of 48 tokens, an 8960-column one (the 1.5B's) of 16, so the unpacking was paid
/// every one to three tiles. `matmul_probe`, 512 tokens, 2 threads, three alternating pairs,
/// G MAC/s: Q4_K 896 × 4864 299–303 → 318–336, Q6_K 896 × 4864 194–196 → 209–226, Q4_K
/// 1536 × 8960 192–202 → 224–286. Whole prefills move less than this machine's noise
/// (pp512, six interleaved runs each, medians: Qwen2.5-Coder-1.5B 158 → 170 tok/s, 0.5B 599 →
/// 590); growing the narrower inputs' chunks too (1 MiB for all) measured no better.
const AMX_CHUNK_BYTES: usize = 1024 * 1024;
const AMX_CHUNK_TOKENS: usize = 128;

/// Tokens per chunk of a packed product's input of `cols` columns: whole AMX tiles of 16
/// tokens (the VNNI kernels take 8, 4, 2, 1) whose quantized activations stay in L2.
fn token_chunk(cols: usize, isa: Isa) -> usize {
    let per_token = cols + cols / 32 * std::mem::size_of::<crate::kernels::pacts::Meta>();
    let fit = |bytes: usize| (bytes / per_token).max(16) / 16 * 16;
    match isa {
        // Only the wide inputs' chunks grow: narrower ones already hold 160 tokens or more.
        Isa::Amx => fit(CHUNK_BYTES).max(fit(AMX_CHUNK_BYTES).min(AMX_CHUNK_TOKENS)),
        _ => fit(CHUNK_BYTES),
    }
}

/// The gated MLP's first half on the AMX tiles or VNNI: `out` = silu(x · gateᵀ) · (x · upᵀ),
/// without writing the two products out (`avx512_packed::run_gated`); `up_rest` (`[n, rows]`)
/// is scratch for the up products the tiles do not combine. The same bits as the two products
/// and `silu_mul`. The caller checked the shapes, that gate and up are packed alike, and that
/// `isa` is `Isa::Amx` or `Isa::Avx512`.
#[cfg(target_arch = "x86_64")]
pub fn packed_gated(
    pool: &Pool,
    x: &[f32],
    n: usize,
    (gate, up): (&crate::packed::Packed, &crate::packed::Packed),
    out: &mut [f32],
    up_rest: &mut [f32],
    isa: Isa,
) {
    let amx = isa == Isa::Amx;
    assert!(
        (amx || isa == Isa::Avx512)
            && gate.kind == up.kind
            && (gate.rows, gate.cols) == (up.rows, up.cols)
    );
    assert!(
        out.len() == n * gate.rows && up_rest.len() == n * gate.rows && x.len() == n * gate.cols
    );
    if n == 0 {
        return;
    }
    let t0 = Instant::now();
    PACTS.with(|a| {
        let mut a = a.borrow_mut();
        let tiled = amx || crate::kernels::avx512_packed::reads_tiles(gate.kind);
        a.fill(pool, x, n, gate.cols, tiled);
        let a = &*a;
        let chunk = token_chunk(gate.cols, isa);
        let pieces = guided_pieces(
            std::iter::once(gate.groups()),
            n.div_ceil(chunk),
            pool.threads(),
        );
        let (dst, rest) = (SharedMut(out.as_mut_ptr()), SharedMut(up_rest.as_mut_ptr()));
        pool.pieces(pieces.len(), &|i| {
            let (_, c, gs) = pieces[i].clone();
            let ts = c * chunk..((c + 1) * chunk).min(n);
            // SAFETY: the AMX or AVX-512 level (checked above: detection found it, and
            // granted the tiles); both outputs hold n × rows floats, and each piece writes its
            // own (tokens, groups) cells of them.
            unsafe {
                crate::kernels::avx512_packed::run_gated(
                    gate,
                    up,
                    a,
                    gs,
                    ts,
                    dst.get(),
                    rest.get(),
                    amx,
                )
            };
        });
    });
    pool.products
        .add(t0.elapsed(), (2 * n * gate.rows * gate.cols) as u64);
}

/// One product of `packed_many`: the weights, their bias and the `[n, rows]` output.
pub type PackedJob<'a> = (&'a crate::packed::Packed, Option<&'a [f32]>, &'a mut [f32]);

/// Products of one input with packed weights (all with `cols` = the input's width): the
/// activations are quantized once (Q8, blocks of 32), then pieces of (weight, token chunk,
/// row groups) are taken by the threads in turn — one synchronisation for all of them.
pub fn packed_many(pool: &Pool, x: &[f32], n: usize, jobs: &mut [PackedJob], isa: Isa) {
    // Only x86 has the level (on aarch64 nothing reads it).
    #[cfg(target_arch = "x86_64")]
    let amx = isa == Isa::Amx;
    let Some(cols) = jobs.first().map(|j| j.0.cols) else {
        return;
    };
    if n == 0 {
        return;
    }
    let t0 = Instant::now();
    let macs: usize = jobs.iter().map(|j| n * j.0.rows * j.0.cols).sum();
    PACTS.with(|a| {
        let mut a = a.borrow_mut();
        // Whole tiles of 16 tokens laid out again for the AMX tiles and the VNNI tiles of 16.
        #[cfg(target_arch = "x86_64")]
        let tiled = amx
            || isa == Isa::Avx512
                && jobs
                    .iter()
                    .any(|j| crate::kernels::avx512_packed::reads_tiles(j.0.kind));
        #[cfg(not(target_arch = "x86_64"))]
        let tiled = false;
        a.fill(pool, x, n, cols, tiled);
        let a = &*a;
        let chunk = token_chunk(cols, isa);
        let chunks = n.div_ceil(chunk);
        let pieces = guided_pieces(jobs.iter().map(|j| j.0.groups()), chunks, pool.threads());
        // The jobs as the threads share them: each output as a raw pointer.
        type Shared<'a> = (&'a crate::packed::Packed, Option<&'a [f32]>, SharedMut<f32>);
        let plan: Vec<Shared> = jobs
            .iter_mut()
            .map(|(p, b, o)| {
                debug_assert!(p.cols == cols && o.len() == n * p.rows);
                (*p, *b, SharedMut(o.as_mut_ptr()))
            })
            .collect();
        pool.pieces(pieces.len(), &|i| {
            let (j, c, gs) = pieces[i].clone();
            let (p, bias, dst) = &plan[j];
            let ts = c * chunk..((c + 1) * chunk).min(n);
            // SAFETY: the backend packs only at the AVX2 (with or without AVX-VNNI), AVX-512, AMX
            // and NEON levels (each one's kernel is the one called here, and detection checked
            // it); each output holds n × rows floats and each piece writes its own (tokens,
            // groups) cells of one job.
            unsafe {
                match isa {
                    #[cfg(target_arch = "x86_64")]
                    Isa::Avx2 => {
                        crate::kernels::avx2_packed::run(p, a, gs, ts, *bias, dst.get(), false)
                    }
                    #[cfg(target_arch = "x86_64")]
                    Isa::Avx2Vnni => {
                        crate::kernels::avx2_packed::run(p, a, gs, ts, *bias, dst.get(), true)
                    }
                    #[cfg(target_arch = "x86_64")]
                    Isa::Avx512 | Isa::Amx => {
                        crate::kernels::avx512_packed::run(p, a, gs, ts, *bias, dst.get(), amx)
                    }
                    #[cfg(target_arch = "aarch64")]
                    Isa::Neon | Isa::NeonDot | Isa::NeonMm => {
                        use crate::kernels::neon_packed::{run, Mul};
                        let mul = match isa {
                            Isa::NeonMm => Mul::Smmla,
                            Isa::NeonDot => Mul::Sdot,
                            _ => Mul::Smull,
                        };
                        run(p, a, gs, ts, *bias, dst.get(), mul)
                    }
                    _ => unreachable!("{} does not repack", isa.name()),
                }
            };
        });
    });
    pool.products.add(t0.elapsed(), macs as u64);
}

/// Float weights (BF16, F16, F32) against f32 activations (`kernels/float_tiles.rs`): pieces
/// of (token chunk, rows) taken by the threads in turn. False when the weight is not a float
/// type.
fn float_products(
    level: float_tiles::Level,
    pool: &Pool,
    x: &[f32],
    n: usize,
    w: &Weight<CpuWeight>,
    bias: Option<&[f32]>,
    out: &mut [f32],
) -> bool {
    use float_tiles as f;
    let (m, kd) = (w.rows, w.cols);
    if !matches!(w.dtype, DType::F32 | DType::F16 | DType::BF16) {
        // (A one-row quantized matrix also keeps an f32 copy; it stays on the quantized path.)
        return false;
    }
    let (kind, ptr, rb) = match (&w.store.f32, w.dtype) {
        (Some(v), _) => (f::F32, v.as_ptr() as *const u8, kd * 4),
        (None, DType::BF16) => (f::BF16, w.store.raw.as_slice().as_ptr(), kd * 2),
        (None, _) => (f::F16, w.store.raw.as_slice().as_ptr(), kd * 2),
    };
    assert!(
        x.len() >= n * kd && out.len() >= n * m,
        "float product operand sizes"
    );
    // Token chunks whose activations stay in L2 while the rows stream past.
    let chunk = (CHUNK_BYTES / (kd * 4)).max(6) / 6 * 6;
    let chunks = n.div_ceil(chunk);
    let per_piece = m.div_ceil(pool.threads() * PIECES).next_multiple_of(4);
    let row_pieces = m.div_ceil(per_piece);
    let total = chunks * row_pieces;
    let piece = SharedPiece(f::Piece {
        kind,
        w: ptr,
        rb,
        m,
        kd,
        x: x.as_ptr(),
        bias,
        out: out.as_mut_ptr(),
    });
    pool.pieces(total, &|i| {
        let (c, g) = (i / row_pieces, i % row_pieces);
        let rows = g * per_piece..((g + 1) * per_piece).min(m);
        let ts = c * chunk..((c + 1) * chunk).min(n);
        // SAFETY: `level` comes from the kernels' ISA; the weight holds m rows of rb bytes, x
        // n × kd floats, out n × m (asserted); each piece writes its own (tokens, rows) cells.
        unsafe { f::run(level, piece.get(), rows, ts) };
    });
    true
}

/// A float product's operands, shared by the threads (weights and activations only read,
/// output cells written by one piece each).
struct SharedPiece<'a>(float_tiles::Piece<'a>);
// SAFETY: see `float_products`.
unsafe impl Send for SharedPiece<'_> {}
unsafe impl Sync for SharedPiece<'_> {}
impl<'a> SharedPiece<'a> {
    /// The operands (a method, so that closures capture the whole `Sync` wrapper).
    fn get(&self) -> &float_tiles::Piece<'a> {
        &self.0
    }
}

/// What the quantized-activation path needs to know about one product.
struct QuantCtx<'a> {
    pool: &'a Pool,
    x: &'a [f32],
    n: usize,
    kd: usize,
    w: &'a Weight<CpuWeight>,
    raw: &'a [u8],
    rb: usize,
    bias: Option<&'a [f32]>,
    fast: Option<RowTokens>,
}

/// Quantize the activations into blocks of `B` (`block` elements each), then multiply: with the
/// row × tokens kernels where the ISA has them for this type, otherwise one dot per (row, token).
#[allow(clippy::too_many_arguments)]
fn quantized<B: Copy + Default + Send + Sync>(
    cell: &'static std::thread::LocalKey<RefCell<Vec<B>>>,
    c: &QuantCtx<'_>,
    block: usize,
    quantize: &(dyn Fn(&[f32], &mut [B]) + Sync),
    fill: fn(&mut QActs, &Pool, &[B], usize),
    dot: fn(DType, &[u8], &[B]) -> f32,
    dequant: fn(&[B], &mut [f32]),
    out: &mut [f32],
) {
    let (kd, per) = (c.kd, c.kd / block);
    // `n` tokens of quantized activations `q` times the weight into `out` (`[n, rows]`).
    let run = |q: &[B], n: usize, bias: Option<&[f32]>, out: &mut [f32]| {
        if let Some(rt) = c.fast {
            return QACTS.with(|a| {
                let mut a = a.borrow_mut();
                fill(&mut a, c.pool, q, kd);
                rows_by_tokens(c.pool, rt, c.w, c.raw, c.rb, &a, n, bias, out)
            });
        }
        tiled(c.pool, n, c.w.rows, bias, out, |r, t| {
            dot(
                c.w.dtype,
                &c.raw[r * c.rb..(r + 1) * c.rb],
                &q[t * per..(t + 1) * per],
            )
        });
    };
    let two_pass = c.w.store.two_pass;
    cell.with(|q| {
        let mut q = q.borrow_mut();
        let tokens = if two_pass { 2 * c.n } else { c.n };
        q.resize(tokens * per, B::default());
        let (first, second) = q.split_at_mut(c.n * per);
        quantize_tokens(c.pool, first, per, &|t, qt| {
            quantize(&c.x[t * kd..(t + 1) * kd], qt)
        });
        if !two_pass {
            return run(first, c.n, c.bias, out);
        }
        // Two passes: the activations' rounding error, quantized in turn, is multiplied too —
        // W·x = W·q(x) + W·(x − q(x)) — as extra tokens of the same product, so each weight row
        // is still read once. The error left is that of the second rounding (~1/127 of one).
        let first = &*first;
        quantize_tokens(c.pool, second, per, &|t, qt| {
            let mut r = c.x[t * kd..(t + 1) * kd].to_vec();
            let mut back = vec![0f32; kd];
            dequant(&first[t * per..(t + 1) * per], &mut back);
            r.iter_mut().zip(&back).for_each(|(a, b)| *a -= b);
            quantize(&r, qt)
        });
        let m = c.w.rows;
        OUT_2.with(|o2| {
            let mut o2 = o2.borrow_mut();
            o2.resize(tokens * m, 0.0);
            run(&q[..], tokens, None, &mut o2[..]);
            let (a, b) = o2.split_at(c.n * m);
            for (t, o) in out.chunks_exact_mut(m).take(c.n).enumerate() {
                for (r, v) in o.iter_mut().enumerate() {
                    *v = a[t * m + r] + b[t * m + r] + c.bias.map_or(0.0, |bias| bias[r]);
                }
            }
        });
    })
}

/// Activations as the kernels see them: each block's quants times its scale.
fn dequant_q8(q: &[BlockQ8], out: &mut [f32]) {
    for (b, o) in q.iter().zip(out.chunks_exact_mut(32)) {
        o.iter_mut()
            .zip(&b.qs)
            .for_each(|(v, &x)| *v = b.d * x as f32);
    }
}

fn dequant_q8k(q: &[BlockQ8K], out: &mut [f32]) {
    for (b, o) in q.iter().zip(out.chunks_exact_mut(256)) {
        o.iter_mut()
            .zip(&b.qs)
            .for_each(|(v, &x)| *v = b.d * x as f32);
    }
}

/// Weight rows split across threads; each row meets the tokens 8 at a time (its blocks are
/// unpacked once per 8 tokens). For batches the result is produced transposed, then laid out.
#[allow(clippy::too_many_arguments)]
fn rows_by_tokens(
    pool: &Pool,
    rt: RowTokens,
    w: &Weight<CpuWeight>,
    raw: &[u8],
    rb: usize,
    a: &QActs,
    n: usize,
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    let m = w.rows;
    if n == 1 {
        pool.split_mut(out, 1, PIECES, &|r0, oc| {
            (rt.run)(w.dtype, &raw[r0 * rb..(r0 + oc.len()) * rb], rb, a, 1, oc);
            if let Some(b) = bias {
                for (o, bv) in oc.iter_mut().zip(&b[r0..]) {
                    *o += bv;
                }
            }
        });
        return;
    }
    OUT_T.with(|ot| {
        let mut ot = ot.borrow_mut();
        ot.resize(m * n, 0.0);
        pool.split_mut(&mut ot[..], n, PIECES, &|r0, oc| {
            (rt.run)(
                w.dtype,
                &raw[r0 * rb..(r0 + oc.len() / n) * rb],
                rb,
                a,
                n,
                oc,
            );
        });
        let ot = &ot[..];
        pool.split_mut(out, m, 1, &|t0, part| {
            for (i, o) in part.chunks_exact_mut(m).enumerate() {
                for (r, v) in o.iter_mut().enumerate() {
                    *v = ot[r * n + t0 + i] + bias.map_or(0.0, |b| b[r]);
                }
            }
        });
    });
}

/// Run `dot(row, token)` over all (row, token) pairs: rows split across threads for one token,
/// tokens split across threads (rows walked in tiles) for batches.
fn tiled(
    pool: &Pool,
    n: usize,
    m: usize,
    bias: Option<&[f32]>,
    out: &mut [f32],
    dot: impl Fn(usize, usize) -> f32 + Sync,
) {
    if n == 1 {
        pool.split_mut(out, 1, PIECES, &|r0, oc| {
            for (j, o) in oc.iter_mut().enumerate() {
                *o = dot(r0 + j, 0) + bias.map_or(0.0, |b| b[r0 + j]);
            }
        });
        return;
    }
    pool.split_mut(out, m, 1, &|t0, oc| {
        let nt = oc.len() / m;
        for r0 in (0..m).step_by(ROW_TILE) {
            for t in 0..nt {
                for r in r0..(r0 + ROW_TILE).min(m) {
                    oc[t * m + r] = dot(r, t0 + t) + bias.map_or(0.0, |b| b[r]);
                }
            }
        }
    });
}

fn matmul_f32(
    k: &Kernels,
    pool: &Pool,
    x: &[f32],
    n: usize,
    w: &Weight<CpuWeight>,
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    let (m, kd) = (w.rows, w.cols);
    if n == 1 {
        pool.split_mut(out, 1, PIECES, &|r0, oc| {
            with_scratch(kd, |s| {
                for (j, o) in oc.iter_mut().enumerate() {
                    let r = r0 + j;
                    let row = w.store.row(w, r, s);
                    *o = (k.dot)(row, x) + bias.map_or(0.0, |b| b[r]);
                }
            })
        });
        return;
    }
    pool.split_mut(out, m, 1, &|t0, oc| {
        let nt = oc.len() / m;
        with_scratch(kd * ROW_TILE, |s| {
            for r0 in (0..m).step_by(ROW_TILE) {
                let rt = ROW_TILE.min(m - r0);
                for j in 0..rt {
                    w.store.row_into(w, r0 + j, &mut s[j * kd..(j + 1) * kd]);
                }
                for t in 0..nt {
                    let xt = &x[(t0 + t) * kd..(t0 + t + 1) * kd];
                    for j in 0..rt {
                        oc[t * m + r0 + j] =
                            (k.dot)(&s[j * kd..(j + 1) * kd], xt) + bias.map_or(0.0, |b| b[r0 + j]);
                    }
                }
            }
        })
    });
}

#[cfg(test)]
mod tests {
    use super::guided_pieces;

    /// Guided pieces cover every (job, chunk, group) once, in order, never across a job; they
    /// shrink towards the end, and the last ones are single groups.
    #[test]
    fn guided_pieces_cover_the_work_and_end_in_single_groups() {
        for (groups, chunks, threads) in [
            (vec![56], 1, 2),
            (vec![56, 8, 8], 1, 2),
            (vec![9496], 1, 2),
            (vec![304, 304], 2, 4),
            (vec![1], 3, 2),
        ] {
            let pieces = guided_pieces(groups.iter().copied(), chunks, threads);
            let mut want = Vec::new();
            for c in 0..chunks {
                for (j, &g) in groups.iter().enumerate() {
                    want.extend((0..g).map(|i| (j, c, i)));
                }
            }
            let got: Vec<_> = pieces
                .iter()
                .flat_map(|(j, c, gs)| gs.clone().map(move |i| (*j, *c, i)))
                .collect();
            assert_eq!(got, want, "{groups:?} × {chunks} chunks");
            let sizes: Vec<usize> = pieces.iter().map(|p| p.2.len()).collect();
            assert!(sizes.iter().all(|&s| s >= 1));
            assert_eq!(*sizes.last().unwrap(), 1, "{groups:?}: {sizes:?}");
            // Within one job and chunk, a piece is never larger than the one before.
            for w in pieces.windows(2) {
                if w[0].0 == w[1].0 && w[0].1 == w[1].1 {
                    assert!(w[1].2.len() <= w[0].2.len(), "{groups:?}: {sizes:?}");
                }
            }
        }
    }
}
