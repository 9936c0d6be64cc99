//! The CPU backend. Quantized matrices are repacked at load for the AVX2 and AVX-512 kernels (`packed`)
//! where the CPU has them; otherwise weights stay memory-mapped in their file format. Kernels
//! come from a table chosen by feature detection.

mod aligned;
pub mod amx;
mod attention;
mod huge;
pub mod kernels;
mod matmul;
mod membw;
pub mod packed;
mod peak;
pub mod pool;
mod rescore;
mod rope;
#[cfg(test)]
mod testutil;
mod top;
mod vmath;
mod weights;

pub use weights::CpuWeight;

pub use aligned::ActBuf;

use kernels::{Isa, Kernels};
use suanli_backend::{
    check, shape_err, Act, AttnMeta, Backend, BackendError, Capabilities, HostTensor, KvDType,
    KvPages, KvSpec, Result, RopeParams, TopLogits, Weight,
};
use suanli_core::DType;

/// One layer's K or V, in tiles per block and KV head (see `attention`).
pub enum KvStore {
    F32(Vec<f32>),
    F16(Vec<half::f16>),
    /// Quants, and an f16 scale per 32 values of one position and head, tile by tile like the
    /// values (scale `i / 32` of a K tile covers values `d..d+32` of one position).
    Q8 {
        q: Vec<i8>,
        d: Vec<half::f16>,
    },
}

pub struct CpuBackend {
    caps: Capabilities,
    k: Kernels,
    pool: pool::Pool,
    /// Repack quantized matrices for the AVX-512 kernels (off with `SUANLI_CPU_REPACK=0`).
    repack: bool,
    /// Which rows of the current step are prompt tokens (`Backend::step_rows`): at the `amx`
    /// level those of BF16/F16 products take the tiles.
    prompt_rows: std::sync::Mutex<Option<Vec<bool>>>,
    /// `top_logits`' logits rows, kept between steps (a 16-row step's are ~10 MB, whose pages
    /// would otherwise be faulted in again every step).
    top_scratch: std::sync::Mutex<Vec<f32>>,
    /// The rotary angles of the pass under way (every layer rotates at the same positions).
    rope_tables: rope::Tables,
}

impl CpuBackend {
    /// `threads`: worker count (default: available parallelism). The ISA level is detected, or
    /// forced by `SUANLI_CPU_ISA`.
    pub fn new(threads: Option<usize>) -> std::result::Result<CpuBackend, String> {
        let isa = Isa::detect()?;
        Self::with_isa(threads, isa)
    }

    /// At level `isa`, which this CPU must offer (for AMX, this also asks the OS for the tile
    /// state: without it the first tile instruction would kill the process).
    pub fn with_isa(threads: Option<usize>, isa: Isa) -> std::result::Result<CpuBackend, String> {
        if !Isa::available().contains(&isa) {
            return Err(format!("this CPU cannot run the {} level", isa.name()));
        }
        let n = threads.unwrap_or_else(default_threads).max(1);
        let pool = pool::Pool::new(n).map_err(|e| format!("cannot start {n} CPU threads: {e}"))?;
        let caps = Capabilities {
            name: "cpu",
            detail: format!("{} threads, {}", n, isa.name()),
            weight_dtypes: DType::ALL.to_vec(),
            kv_dtypes: vec![KvDType::F32, KvDType::F16, KvDType::Q8_0],
            sliding_window: true,
            gelu_and_scale: true,
            act_precision: true,
            experts: true,
        };
        // Every level but the generic one has packed tiles.
        let repack =
            isa != Isa::Generic && std::env::var("SUANLI_CPU_REPACK").as_deref() != Ok("0");
        Ok(CpuBackend {
            caps,
            k: Kernels::for_isa(isa),
            pool,
            repack,
            prompt_rows: Default::default(),
            top_scratch: Default::default(),
            rope_tables: Default::default(),
        })
    }

    /// Whether quantized matrices are repacked at load (AVX2, AVX-512 and NEON unless
    /// `SUANLI_CPU_REPACK=0`).
    pub fn repacks(&self) -> bool {
        self.repack
    }

    /// Keep quantized matrices in their file layout (what generic machines run), for weights
    /// prepared from now on.
    pub fn without_repacking(mut self) -> Self {
        self.repack = false;
        self
    }

    pub fn isa(&self) -> Isa {
        self.k.isa
    }

    pub fn threads(&self) -> usize {
        self.pool.threads()
    }

    /// Memory read bandwidth in GB/s with this backend's threads (reads a 256 MiB buffer, 8× the largest L3 here).
    pub fn read_bandwidth(&self) -> f64 {
        membw::read_bandwidth(&self.pool, 256 << 20, 5)
    }

    /// Sustained int8 multiply-adds per second over this backend's threads with its level's
    /// instructions (a probe of about 0.1 s), or `None` where the level has no probe.
    pub fn int8_peak(&self) -> Option<f64> {
        peak::int8_peak(&self.pool, self.k.isa)
    }

    /// Wall seconds and multiply-adds of every matrix product this backend has run (the
    /// activations' quantization included), added up since it was made.
    pub fn product_time(&self) -> (f64, u64) {
        self.pool.products.read()
    }

    /// The multiply-add peak that products of float weights are measured against, and its
    /// name: for BF16/F16 weights (`sixteen_bit`) at the `amx` level the BF16 tiles' (where
    /// they multiply), otherwise the f32 FMA of this level's float tiles; `None` on the
    /// generic level.
    pub fn float_peak(&self, sixteen_bit: bool) -> Option<(f64, &'static str)> {
        if sixteen_bit && self.float_tile_kind(DType::BF16).is_some() {
            return peak::bf16_tile_peak(&self.pool, self.k.isa).map(|p| (p, "bf16 tile"));
        }
        self.f32_peak().map(|p| (p, "f32"))
    }

    /// Sustained f32 multiply-adds per second over this backend's threads with its level's FMA
    /// (float weights' products), or `None` on the generic level.
    pub fn f32_peak(&self) -> Option<f64> {
        peak::f32_peak(&self.pool, self.k.isa)
    }
}

/// Physical cores (a second hardware thread on a core only competes for the same SIMD units),
/// capped by what this process may use (affinity, cgroup quota).
pub fn default_threads() -> usize {
    let allowed = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    physical_cores().map_or(allowed, |p| p.min(allowed)).max(1)
}

/// Distinct (package, core) pairs under /sys (Linux); `None` where that is not available.
fn physical_cores() -> Option<usize> {
    let mut cores = std::collections::HashSet::new();
    for e in std::fs::read_dir("/sys/devices/system/cpu").ok()?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name
            .strip_prefix("cpu")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        {
            continue;
        }
        let read = |f: &str| {
            std::fs::read_to_string(e.path().join("topology").join(f))
                .ok()
                .map(|s| s.trim().to_owned())
        };
        if let (Some(pkg), Some(core)) = (read("physical_package_id"), read("core_id")) {
            cores.insert((pkg, core));
        }
    }
    (!cores.is_empty()).then_some(cores.len())
}

impl CpuBackend {
    /// out = act(gate) · up row by row, rows shared by the threads when there are enough.
    fn gated(
        &self,
        gate: &Act<ActBuf>,
        up: &Act<ActBuf>,
        out: &mut Act<ActBuf>,
        kernel: fn(Isa, &[f32], &[f32], &mut [f32]),
    ) -> Result<()> {
        check::silu_mul(gate, up, out)?;
        out.rows = gate.rows;
        let (cols, isa) = (gate.cols, self.k.isa);
        let n = gate.rows * cols;
        self.rows_in_parallel(&mut out.buf[..n], cols, &|row0, piece| {
            let at = row0 * cols..row0 * cols + piece.len();
            kernel(isa, &gate.buf[at.clone()], &up.buf[at], piece);
        });
        Ok(())
    }

    /// `f(first_row, rows)` over `data`'s rows of `cols`, shared by the threads when there are
    /// at least two rows per thread (row-wise steps — norms, RoPE, the gated activation — left to
    /// the calling thread kept the others waiting: ~1.5 % of a 16-stream decode step).
    fn rows_in_parallel(
        &self,
        data: &mut [f32],
        cols: usize,
        f: &(dyn Fn(usize, &mut [f32]) + Sync),
    ) {
        if data.len() >= 2 * self.pool.threads() * cols.max(1) {
            self.pool.split_mut(data, cols, 1, f);
        } else {
            f(0, data);
        }
    }
}

impl Backend for CpuBackend {
    type Buffer = ActBuf;
    type KvBuffer = KvStore;
    type WeightStore = CpuWeight;

    fn caps(&self) -> &Capabilities {
        &self.caps
    }

    fn prepare_weight(&self, host: HostTensor<'_>) -> Result<Weight<CpuWeight>> {
        self.prepare(host)
    }

    fn alloc_act(&self, capacity: usize, cols: usize) -> Result<Act<ActBuf>> {
        let oom = || BackendError::OutOfMemory {
            what: "activation",
            detail: format!("{capacity} × {cols}"),
        };
        let n = capacity.checked_mul(cols).ok_or_else(oom)?;
        let buf = ActBuf::zeroed(n).ok_or_else(oom)?;
        Ok(Act {
            rows: 0,
            cols,
            capacity,
            buf,
        })
    }

    fn alloc_kv(&self, spec: KvSpec) -> Result<KvPages<KvStore>> {
        let oom = || BackendError::OutOfMemory {
            what: "KV cache",
            detail: format!("{spec:?}"),
        };
        if spec.block_size != attention::BLOCK {
            return Err(shape_err(
                "alloc_kv",
                format!(
                    "the CPU cache uses blocks of {} positions, not {}",
                    attention::BLOCK,
                    spec.block_size
                ),
            ));
        }
        check::kv_cache(&spec)?;
        let n = spec.slots().checked_mul(spec.kv_dim()).ok_or_else(oom)?;
        let store = || -> Result<KvStore> {
            Ok(match spec.dtype {
                KvDType::F32 => KvStore::F32(try_zeroed(&self.pool, n, 0.0).ok_or_else(oom)?),
                KvDType::F16 => {
                    KvStore::F16(try_zeroed(&self.pool, n, half::f16::ZERO).ok_or_else(oom)?)
                }
                KvDType::Q8_0 => KvStore::Q8 {
                    q: try_zeroed(&self.pool, n, 0i8).ok_or_else(oom)?,
                    d: try_zeroed(&self.pool, n / 32, half::f16::ZERO).ok_or_else(oom)?,
                },
            })
        };
        let mut layers = Vec::with_capacity(spec.n_layers);
        for _ in 0..spec.n_layers {
            layers.push((store()?, store()?));
        }
        Ok(KvPages { spec, layers })
    }

    fn upload(&self, data: &[f32], rows: usize, out: &mut Act<ActBuf>) -> Result<()> {
        check::upload(data.len(), rows, out)?;
        out.rows = rows;
        out.buf[..data.len()].copy_from_slice(data);
        Ok(())
    }

    fn download(&self, x: &Act<ActBuf>) -> Result<Vec<f32>> {
        Ok(x.buf[..x.rows * x.cols].to_vec())
    }

    fn embed(&self, table: &Weight<CpuWeight>, ids: &[u32], out: &mut Act<ActBuf>) -> Result<()> {
        check::embed(table, ids, out)?;
        out.rows = ids.len();
        let k = table.cols;
        for (o, &id) in out.buf[..ids.len() * k].chunks_exact_mut(k).zip(ids) {
            table.store.row_into(table, id as usize, o);
        }
        Ok(())
    }

    fn rms_norm(
        &self,
        x: &Act<ActBuf>,
        w: &Weight<CpuWeight>,
        eps: f32,
        out: &mut Act<ActBuf>,
    ) -> Result<()> {
        check::rows_into("rms_norm", x, out)?;
        let wv = vector(w, x.cols, "rms_norm")?;
        out.rows = x.rows;
        let n = x.cols;
        let xs = &x.buf[..x.rows * n];
        self.rows_in_parallel(&mut out.buf[..x.rows * n], n, &|r0, part| {
            for (i, or) in part.chunks_exact_mut(n).enumerate() {
                let xr = &xs[(r0 + i) * n..(r0 + i + 1) * n];
                let scale = rms_scale(xr, eps);
                for ((o, xi), wi) in or.iter_mut().zip(xr).zip(wv) {
                    *o = wi * (xi * scale);
                }
            }
        });
        Ok(())
    }

    fn rms_norm_groups(&self, x: &mut Act<ActBuf>, w: &Weight<CpuWeight>, eps: f32) -> Result<()> {
        check::norm_groups(x, w)?;
        let g = w.cols;
        let wv = vector(w, g, "rms_norm_groups")?;
        let n = x.cols;
        self.rows_in_parallel(&mut x.buf[..x.rows * n], n, &|_, part| {
            for grp in part.chunks_exact_mut(g) {
                let scale = rms_scale(grp, eps);
                for (v, wi) in grp.iter_mut().zip(wv) {
                    *v = wi * (*v * scale);
                }
            }
        });
        Ok(())
    }

    fn step_rows(&self, rows: Option<(&[suanli_backend::AttnSeq], usize)>) {
        let flags = rows.map(|(seqs, n)| {
            let mut prompt = vec![false; n];
            for s in seqs {
                let rows = s.q_start.min(n)..(s.q_start + s.prompt_rows()).min(n);
                prompt[rows].fill(true);
            }
            prompt
        });
        *self.prompt_rows.lock().unwrap_or_else(|e| e.into_inner()) = flags;
    }

    fn linear(
        &self,
        x: &Act<ActBuf>,
        w: &Weight<CpuWeight>,
        bias: Option<&Weight<CpuWeight>>,
        out: &mut Act<ActBuf>,
    ) -> Result<()> {
        let b = linear_operands("linear", x, w, bias, out)?;
        out.rows = x.rows;
        let n = x.rows;
        let (x, out) = (&x.buf[..n * x.cols], &mut out.buf[..n * w.rows]);
        if w.store.pair_tiles.is_some() {
            let prompt = self.prompt_rows.lock().unwrap_or_else(|e| e.into_inner());
            let prompt = prompt.as_deref().filter(|p| p.len() == n);
            matmul::prompt_split(&self.pool, x, n, w, b, out, prompt);
        } else {
            matmul::matmul(&self.k, &self.pool, x, n, w, b, out);
        }
        Ok(())
    }

    fn linear_many(
        &self,
        x: &Act<ActBuf>,
        ws: &[(&Weight<CpuWeight>, Option<&Weight<CpuWeight>>)],
        outs: &mut [&mut Act<ActBuf>],
    ) -> Result<()> {
        if ws.len() != outs.len() {
            return Err(shape_err(
                "linear_many",
                format!("{} weights for {} outputs", ws.len(), outs.len()),
            ));
        }
        // All packed: one pass. Otherwise one product after another.
        if ws.iter().all(|(w, _)| w.store.packed.is_some()) {
            let n = x.rows;
            let mut jobs = Vec::with_capacity(ws.len());
            for ((w, bias), out) in ws.iter().zip(outs.iter_mut()) {
                let b = linear_operands("linear_many", x, w, *bias, out)?;
                out.rows = n;
                let packed = w.store.packed.as_ref().expect("checked above");
                jobs.push((packed, b, &mut out.buf[..n * w.rows]));
            }
            matmul::packed_many(&self.pool, &x.buf[..n * x.cols], n, &mut jobs, self.k.isa);
            return Ok(());
        }
        for ((w, b), o) in ws.iter().zip(outs.iter_mut()) {
            self.linear(x, w, *b, o)?;
        }
        Ok(())
    }

    fn gated_linear(
        &self,
        x: &Act<ActBuf>,
        gate: &Weight<CpuWeight>,
        up: &Weight<CpuWeight>,
        g: &mut Act<ActBuf>,
        u: &mut Act<ActBuf>,
        out: &mut Act<ActBuf>,
    ) -> Result<()> {
        // On the AMX tiles, and on VNNI where the groups are widened, both products run per
        // group of rows and meet in cache (`matmul::packed_gated`); the same bits as the two
        // products and `silu_mul`. Intel Xeon (AVX-512 VNNI), `bench`, medians of four
        // alternating runs of 8: Qwen2.5-Coder-0.5B (Q5_0) pp512 762 → 784 tok/s, pp64 726 →
        // 742. Not where the groups are not widened: fewer tokens stream the weights from
        // memory, and two streams, a group of each in turn, lost to one (16 tokens, `bench
        // --parallel 16`: 506–529 → 478–482 tok/s); Q4_K's (Qwen2.5-Coder-1.5B) pp512 lost
        // 2 % (210–215 → 208–210).
        #[cfg(target_arch = "x86_64")]
        if let (Isa::Amx | Isa::Avx512, Some(pg), Some(pu)) =
            (self.k.isa, &gate.store.packed, &up.store.packed)
        {
            let n = x.rows;
            let alike = pg.kind == pu.kind && (pg.rows, pg.cols) == (pu.rows, pu.cols);
            let takes = match self.k.isa {
                Isa::Amx => n >= kernels::avx512_packed::AMX_FROM,
                _ => kernels::avx512_packed::widens(pg.kind, n),
            };
            if alike && takes {
                linear_operands("gated_linear", x, gate, None, out)?;
                linear_operands("gated_linear", x, up, None, u)?;
                let m = gate.rows;
                out.rows = n;
                u.rows = n;
                matmul::packed_gated(
                    &self.pool,
                    &x.buf[..n * x.cols],
                    n,
                    (pg, pu),
                    &mut out.buf[..n * m],
                    &mut u.buf[..n * m],
                    self.k.isa,
                );
                return Ok(());
            }
        }
        self.linear_many(x, &[(gate, None), (up, None)], &mut [&mut *g, &mut *u])?;
        self.silu_mul(g, u, out)
    }

    fn rope(&self, x: &mut Act<ActBuf>, positions: &[u32], rope: &RopeParams) -> Result<()> {
        check::rope(x, positions, rope)?;
        let n = x.cols;
        let table = self.rope_tables.get(positions, rope);
        self.rows_in_parallel(&mut x.buf[..x.rows * n], n, &|r0, part| {
            for (r, row) in part.chunks_exact_mut(n).enumerate() {
                rope::rotate_row(row, rope, &table.angles(r0 + r));
            }
        });
        Ok(())
    }

    fn write_kv(
        &self,
        k: &Act<ActBuf>,
        v: &Act<ActBuf>,
        slots: &[u32],
        kv: &mut KvPages<KvStore>,
        layer: usize,
    ) -> Result<()> {
        // Checked before anything is written: a bad slot leaves the cache as it was.
        check::write_kv(k, v, slots, kv, layer)?;
        let d = kv.spec.kv_dim();
        let (hd, nkv) = (kv.spec.head_dim, kv.spec.n_kv_heads);
        let spec = kv.spec;
        let (ks, vs) = &mut kv.layers[layer];
        for (t, &s) in slots.iter().enumerate() {
            let s = s as usize;
            let (blk, o) = (s / attention::BLOCK, s % attention::BLOCK);
            for h in 0..nkv {
                let at = attention::tile_start(blk, h, &spec);
                let kr = &k.buf[t * d + h * hd..t * d + (h + 1) * hd];
                let vr = &v.buf[t * d + h * hd..t * d + (h + 1) * hd];
                // K tile [hd][BLOCK] (transposed), V tile [BLOCK][hd].
                let bs = attention::BLOCK;
                match ks {
                    KvStore::F32(dst) => {
                        for (j, x) in kr.iter().enumerate() {
                            dst[at + j * bs + o] = *x;
                        }
                    }
                    KvStore::F16(dst) => {
                        for (j, x) in kr.iter().enumerate() {
                            dst[at + j * bs + o] = half::f16::from_f32(*x);
                        }
                    }
                    KvStore::Q8 { q, d } => {
                        for (c, chunk) in kr.chunks_exact(32).enumerate() {
                            let (qs, scale) = kv_q8(chunk);
                            d[at / 32 + c * bs + o] = scale;
                            for (j, v) in qs.iter().enumerate() {
                                q[at + (c * 32 + j) * bs + o] = *v;
                            }
                        }
                    }
                }
                let vo = at + o * hd;
                match vs {
                    KvStore::F32(dst) => dst[vo..vo + hd].copy_from_slice(vr),
                    KvStore::F16(dst) => {
                        use half::slice::HalfFloatSliceExt;
                        dst[vo..vo + hd].convert_from_f32_slice(vr)
                    }
                    KvStore::Q8 { q, d } => {
                        for (c, chunk) in vr.chunks_exact(32).enumerate() {
                            let (qs, scale) = kv_q8(chunk);
                            d[vo / 32 + c] = scale;
                            q[vo + c * 32..vo + c * 32 + 32].copy_from_slice(&qs);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn attention(
        &self,
        q: &Act<ActBuf>,
        kv: &KvPages<KvStore>,
        meta: &AttnMeta<'_>,
        layer: usize,
        out: &mut Act<ActBuf>,
    ) -> Result<()> {
        attention::paged_attention(&self.k, &self.pool, q, kv, meta, layer, out)
    }

    fn silu_mul(&self, gate: &Act<ActBuf>, up: &Act<ActBuf>, out: &mut Act<ActBuf>) -> Result<()> {
        self.gated(gate, up, out, vmath::silu_mul)
    }

    fn gelu_mul(&self, gate: &Act<ActBuf>, up: &Act<ActBuf>, out: &mut Act<ActBuf>) -> Result<()> {
        self.gated(gate, up, out, vmath::gelu_mul)
    }

    fn scale(&self, x: &mut Act<ActBuf>, s: f32) -> Result<()> {
        let n = x.rows * x.cols;
        x.buf[..n].iter_mut().for_each(|v| *v *= s);
        Ok(())
    }

    fn gather_rows(&self, x: &Act<ActBuf>, rows: &[u32], out: &mut Act<ActBuf>) -> Result<()> {
        check::gather_rows(x, rows, out)?;
        let k = x.cols;
        for (i, &r) in rows.iter().enumerate() {
            let r = r as usize;
            out.buf[i * k..(i + 1) * k].copy_from_slice(&x.buf[r * k..(r + 1) * k]);
        }
        out.rows = rows.len();
        Ok(())
    }

    fn add_rows_scaled(
        &self,
        acc: &mut Act<ActBuf>,
        x: &Act<ActBuf>,
        rows: &[u32],
        weights: &[f32],
    ) -> Result<()> {
        check::add_rows_scaled(acc, x, rows, weights)?;
        let k = x.cols;
        for (i, (&r, &w)) in rows.iter().zip(weights).enumerate() {
            let r = r as usize;
            for (a, v) in acc.buf[r * k..(r + 1) * k]
                .iter_mut()
                .zip(&x.buf[i * k..(i + 1) * k])
            {
                *a += w * v;
            }
        }
        Ok(())
    }

    fn add(&self, acc: &mut Act<ActBuf>, x: &Act<ActBuf>) -> Result<()> {
        check::add(acc, x)?;
        let n = x.rows * x.cols;
        for (a, b) in acc.buf[..n].iter_mut().zip(&x.buf[..n]) {
            *a += b;
        }
        Ok(())
    }

    /// The logits as `logits` computes them (an `ExactTop` head rescored), then each row's
    /// candidates selected by the pool (`top.rs`). Not with `mass` (the whole rows go back
    /// then), nor for more than `top::TOP_MAX` candidates.
    fn top_logits(
        &self,
        x: &Act<ActBuf>,
        rows: &[u32],
        lm_head: &Weight<CpuWeight>,
        k: usize,
        mass: bool,
    ) -> Result<Option<TopLogits>> {
        check::logits(x, rows, lm_head, None)?;
        let vocab = lm_head.rows;
        if mass || k == 0 || k > top::TOP_MAX || k > vocab {
            return Ok(None);
        }
        let mut buf = self.top_scratch.lock().unwrap_or_else(|e| e.into_inner());
        // Rows in chunks, so that this scratch stays bounded beside the engine's own logits
        // buffer (a chunk reads the head once: at 64 rows its weights are already well shared).
        let chunk = rows.len().min(top::ROWS_AT_ONCE);
        let n = chunk * vocab;
        let have = buf.len();
        if have < n {
            buf.try_reserve_exact(n - have)
                .map_err(|e| BackendError::OutOfMemory {
                    what: "the logits rows of top_logits",
                    detail: format!("{chunk} rows of {vocab}: {e}"),
                })?;
            buf.resize(n, 0.0);
        }
        let mut pairs = vec![(0u32, 0f32); rows.len() * k];
        let mut found = vec![false; chunk];
        let chunks = rows.chunks(top::ROWS_AT_ONCE);
        for (part, out) in chunks.zip(pairs.chunks_mut(top::ROWS_AT_ONCE * k)) {
            let n = part.len() * vocab;
            let found = &mut found[..part.len()];
            found.fill(false);
            // The rescored heads' candidates decide most rows' answers; the rest are scanned.
            let tops = rescore::RowTops {
                k,
                pairs: out,
                found,
            };
            self.head_logits(x, part, lm_head, &mut buf[..n], Some(tops))?;
            top::top_of_rows(&self.pool, &buf[..n], vocab, k, out, found);
        }
        Ok(Some(TopLogits {
            k,
            pairs,
            mass: Vec::new(),
        }))
    }

    fn logits(
        &self,
        x: &Act<ActBuf>,
        rows: &[u32],
        lm_head: &Weight<CpuWeight>,
        out: &mut [f32],
    ) -> Result<()> {
        self.head_logits(x, rows, lm_head, out, None)
    }
}

impl CpuBackend {
    /// `Backend::logits`; with `tops`, the rows whose k largest the rescoring's candidates
    /// decide get them there (`rescore::RowTops`).
    fn head_logits(
        &self,
        x: &Act<ActBuf>,
        rows: &[u32],
        lm_head: &Weight<CpuWeight>,
        out: &mut [f32],
        tops: Option<rescore::RowTops<'_>>,
    ) -> Result<()> {
        check::logits(x, rows, lm_head, Some(out.len()))?;
        let k = x.cols;
        let mut xs = Vec::with_capacity(rows.len() * k);
        for &r in rows {
            xs.extend_from_slice(&x.buf[r as usize * k..(r as usize + 1) * k]);
        }
        matmul::matmul(&self.k, &self.pool, &xs, rows.len(), lm_head, None, out);
        if lm_head.store.rescore_top {
            rescore::rescore_top(self.k.isa, &self.pool, &xs, lm_head, out, tops);
        }
        Ok(())
    }
}

/// 32 cache values as Q8_0 (llama.cpp's rounding): quants and the f16 scale.
pub(crate) fn kv_q8(x: &[f32]) -> ([i8; 32], half::f16) {
    let mut b = [suanli_core::quant::q8::BlockQ8::default()];
    suanli_core::quant::q8::quantize_q8(x, false, &mut b);
    (b[0].qs, half::f16::from_f32(b[0].d))
}

/// `n` copies of `zero`, written by the pool's threads: a server's KV cache (532 MiB for
/// Qwen2.5-Coder-1.5B's default) was written by one thread, whose page faults and the kernel's
/// clearing of each page took 0.54 s of a 1.37 s start. Written now rather than left to the
/// kernel's lazy zero pages, so that a cache the machine cannot hold fails at start, not
/// once requests fill it.
fn try_zeroed<T: Copy + Send + Sync>(pool: &pool::Pool, n: usize, zero: T) -> Option<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).ok()?;
    huge::advise(&mut v);
    pool.split_mut(&mut v.spare_capacity_mut()[..n], 1, 2, &|_, part| {
        for x in part {
            x.write(zero);
        }
    });
    // SAFETY: the pool wrote each of the first `n` elements (`split_mut` with units of one
    // element hands every element to exactly one piece; with n = 0 there is none).
    unsafe { v.set_len(n) };
    Some(v)
}

/// Check that `x · wᵀ` fits `out`; the bias as a slice.
fn linear_operands<'a>(
    op: &'static str,
    x: &Act<ActBuf>,
    w: &Weight<CpuWeight>,
    bias: Option<&'a Weight<CpuWeight>>,
    out: &Act<ActBuf>,
) -> Result<Option<&'a [f32]>> {
    check::product(op, x, w, out)?;
    bias.map(|b| vector(b, w.rows, "linear bias")).transpose()
}

fn vector<'a>(w: &'a Weight<CpuWeight>, len: usize, op: &'static str) -> Result<&'a [f32]> {
    match &w.store.f32 {
        Some(v) if v.len() == len => Ok(v),
        _ => Err(shape_err(
            op,
            format!(
                "expected a vector of {len}, weight is [{}, {}]",
                w.rows, w.cols
            ),
        )),
    }
}

/// 1 / √(mean(x²) + ε), as llama.cpp's `rms_norm` takes it: each square in f32, their sum in
/// f64, the mean rounded to f32. The sum runs in `LANES` independent f64 partial sums, which
/// round alike to the sequential f64 sum's f32 mean but need no add to wait on the one before
/// (the f32 sum it replaces was one dependent add per element: 446 ns a 576-wide row against
/// 114, ~1 % of SmolLM2's prefill; and further from the exact mean than llama.cpp's).
fn rms_scale(x: &[f32], eps: f32) -> f32 {
    const LANES: usize = 16;
    let mut acc = [0f64; LANES];
    let chunks = x.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += (v * v) as f64;
        }
    }
    for (a, v) in acc.iter_mut().zip(rest) {
        *a += (v * v) as f64;
    }
    let sum: f64 = acc.iter().sum();
    let mean = (sum / x.len() as f64) as f32;
    1.0 / (mean + eps).sqrt()
}
