//! `CudaBackend`: the backend contract on an NVIDIA GPU. Weights stay in their file's block
//! format in device memory; decode-sized products (≤ 8 rows) run matrix-vector kernels that
//! dequantize in registers and read every weight once, larger ones dequantize the matrix to bf16
//! and use cuBLAS on the tensor cores. Activations are f32; the paged KV cache is f16 or f32 with
//! the same slots and block tables as the CPU's. Kernels come from `kernels/*.cu` through NVRTC
//! (`kernels.rs`); the device itself is behind `device::Device` (`driver.rs` on a GPU, a host
//! emulator in the tests), so all of this file runs in the tests.

mod attention;
pub mod device;
mod driver;
mod fused;
mod graph;
mod kernels;
mod matmul;
mod scratch;

pub use attention::attention_rows;
pub use kernels::{compile, kernel_names, source, typed_name, WEIGHT_TYPES};

use device::{f32_bytes, f32_bytes_mut, u32_bytes, u32_bytes_mut, Arg, DevBuf, Device};
use scratch::ensure;
use std::sync::{Arc, Mutex};
use suanli_backend::{
    check, shape_err, Act, AttnMeta, Backend, BackendError, Capabilities, Draw, HostTensor,
    KvDType, KvPages, KvSpec, MlpScratch, Result, RopeParams, RopeStyle, TopLogits, Weight,
    WeightRole,
};
use suanli_core::{quant, DType};

/// Products with at most this many rows take the matrix-vector kernels (`MV_MAX_TOKENS`).
pub const MATVEC_MAX_ROWS: usize = 8;
/// Quantized matrices take the matrix-vector kernels up to this many rows, in launches of
/// `MATVEC_MAX_ROWS`: each launch reads the quantized matrix once (at 32 rows, 4 × 0.56 bytes
/// a weight for Q4_K), where the GEMM path dequantizes it to bf16 first (0.56 read + 2 written
/// + 2 read by the GEMM) — so the chunks move less memory up to about 64 rows.
pub const QUANT_MATVEC_MAX_ROWS: usize = 32;

/// Whether `n` rows of products with a `ty` matrix take the matrix-vector kernels.
pub(crate) fn matvec_takes(ty: DType, n: usize) -> bool {
    n >= 1 && (n <= MATVEC_MAX_ROWS || (ty.is_quantized() && n <= QUANT_MATVEC_MAX_ROWS))
}

/// `n` rows as the matrix-vector kernels take them: (first row, rows), `MATVEC_MAX_ROWS` at a time.
pub(crate) fn matvec_chunks(n: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..n)
        .step_by(MATVEC_MAX_ROWS)
        .map(move |first| (first, (n - first).min(MATVEC_MAX_ROWS)))
}
/// A sequence with at least this many new rows in a step takes the GEMM attention path.
pub const ATTN_GEMM_MIN_ROWS: usize = 64;
/// The most candidates `top_logits` selects per row (`TOPK_MAX` in topk.cu).
pub const TOP_LOGITS_MAX: usize = 256;

/// A weight in device memory: matrices in the file's block layout, vectors as f32.
pub enum CudaWeight {
    Raw { buf: DevBuf, row_bytes: usize },
    F32(DevBuf),
}

/// One layer's K or V cache: `[slots, kv_dim]`, f16 or f32.
pub struct KvBuf {
    pub buf: DevBuf,
    pub dtype: KvDType,
}

impl KvBuf {
    /// The suffix of the kernels for this cache type (`attention_f16`, ...).
    fn suffix(&self) -> &'static str {
        self.dtype.name()
    }
}

pub struct CudaBackend {
    dev: Arc<dyn Device>,
    graphs: Arc<graph::GraphDevice>,
    caps: Capabilities,
    scratch: Mutex<scratch::Scratch>,
    /// Prefill attention over an f16 cache in the fused kernel; `SUANLI_CUDA_FLASH=0` sends it
    /// through the gather + GEMM path instead (for comparing the two on a GPU).
    flash: bool,
    /// The fused decoder-block kernels (`fused.rs`); `SUANLI_CUDA_FUSED=0` runs the separate ops
    /// (for measuring what fusion saves).
    fused: bool,
}

/// 1-D geometry: enough `threads`-thread blocks for `n` items.
fn blocks(n: usize, threads: usize) -> (u32, u32) {
    (n.div_ceil(threads).max(1) as u32, 1)
}

impl CudaBackend {
    /// Open GPU `ordinal`. Fails with a message (never a panic) when the driver library, the
    /// device or NVRTC is missing.
    pub fn new(ordinal: usize) -> std::result::Result<CudaBackend, String> {
        // cudarc panics when a dynamically loaded library is absent; turn that into an error.
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let opened = std::panic::catch_unwind(|| driver::CudaDevice::open(ordinal));
        std::panic::set_hook(prev);
        let (dev, detail) = match opened {
            Ok(r) => r?,
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                return Err(format!(
                    "the CUDA libraries could not be loaded ({msg}); install the NVIDIA driver and put the CUDA \
                     libraries (libnvrtc, libcublas) on LD_LIBRARY_PATH"
                ));
            }
        };
        Ok(CudaBackend::with_device(Arc::new(dev), "cuda", detail))
    }

    /// A backend over any `Device` (the tests pass the emulator). Launches go through the graph
    /// layer (`graph.rs`): repeated launch sequences replay as recorded graphs.
    pub fn with_device(dev: Arc<dyn Device>, name: &'static str, detail: String) -> CudaBackend {
        let graphs = Arc::new(graph::GraphDevice::new(dev));
        let dev: Arc<dyn Device> = graphs.clone();
        let caps = Capabilities {
            name,
            detail,
            weight_dtypes: WEIGHT_TYPES.iter().map(|(t, _)| *t).collect(),
            kv_dtypes: vec![KvDType::F16, KvDType::F32, KvDType::Q8_0],
            // Not yet in the kernels (waits for a GPU to test them on): models with windowed
            // layers are refused at load, and `attention` refuses a window.
            sliding_window: false,
            gelu_and_scale: false,
            // Float activations, but large batches go through bf16 tensor-core products.
            act_precision: false,
            experts: false,
        };
        CudaBackend {
            flash: std::env::var("SUANLI_CUDA_FLASH").as_deref() != Ok("0"),
            fused: std::env::var("SUANLI_CUDA_FUSED").as_deref() != Ok("0"),
            dev,
            graphs,
            caps,
            scratch: Mutex::new(Default::default()),
        }
    }

    /// (graph launches, plain kernel launches) issued so far.
    pub fn launch_counts(&self) -> (u64, u64) {
        self.graphs.counts()
    }

    /// Wait for all queued work.
    pub fn synchronize(&self) -> Result<()> {
        self.dev.sync()
    }

    /// Bytes a product with `w` reads from device memory.
    pub fn weight_bytes(w: &Weight<CudaWeight>) -> usize {
        match &w.store {
            CudaWeight::Raw { buf, .. } | CudaWeight::F32(buf) => buf.bytes,
        }
    }

    /// Device-to-device copy bandwidth in GB/s (bytes read + written per second), the figure
    /// decode speed is held against.
    pub fn copy_bandwidth(&self) -> Result<f64> {
        let n = 1usize << 30;
        let (src, dst) = (
            DevBuf::new(&self.dev, n, "bandwidth probe")?,
            DevBuf::new(&self.dev, n, "bandwidth probe")?,
        );
        let mut best = 0f64;
        for _ in 0..6 {
            self.dev.sync()?;
            let t0 = std::time::Instant::now();
            self.dev.dtod(dst.ptr, src.ptr, n)?;
            self.dev.sync()?;
            best = best.max(2.0 * n as f64 / t0.elapsed().as_secs_f64() / 1e9);
        }
        Ok(best)
    }

    fn scratch(&self) -> std::sync::MutexGuard<'_, scratch::Scratch> {
        self.scratch.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn launch(&self, kernel: &str, grid: (u32, u32), block: u32, args: &[Arg]) -> Result<()> {
        self.dev.launch(kernel, grid, block, args)
    }

    fn typed(&self, kind: &str, ty: DType) -> Result<String> {
        typed_name(kind, ty).ok_or(BackendError::UnsupportedDType {
            backend: "cuda",
            dtype: ty,
            tensor: kind.into(),
        })
    }

    fn vector<'w>(w: &'w Weight<CudaWeight>, len: usize, op: &'static str) -> Result<&'w DevBuf> {
        match &w.store {
            CudaWeight::F32(v) if v.bytes == len * 4 => Ok(v),
            _ => Err(shape_err(op, format!("weight is not a vector of {len}"))),
        }
    }
}

impl Backend for CudaBackend {
    type Buffer = DevBuf;
    type KvBuffer = KvBuf;
    type WeightStore = CudaWeight;

    fn caps(&self) -> &Capabilities {
        &self.caps
    }

    fn prepare_weight(&self, host: HostTensor<'_>) -> Result<Weight<CudaWeight>> {
        let rb = check::weight_bytes(&host)?;
        let store = if host.role == WeightRole::Vector {
            let mut v = vec![0f32; host.rows * host.cols];
            quant::dequantize(host.dtype, host.bytes.as_slice(), &mut v)
                .map_err(|e| shape_err("prepare_weight", e.to_string()))?;
            CudaWeight::F32(DevBuf::from_host(&self.dev, f32_bytes(&v), "weights")?)
        } else {
            if typed_name("matvec", host.dtype).is_none() || !host.cols.is_multiple_of(32) {
                return Err(BackendError::UnsupportedDType {
                    backend: "cuda",
                    dtype: host.dtype,
                    tensor: host.name.into(),
                });
            }
            CudaWeight::Raw {
                buf: DevBuf::from_host(&self.dev, host.bytes.as_slice(), "weights")?,
                row_bytes: rb,
            }
        };
        Ok(Weight {
            dtype: host.dtype,
            rows: host.rows,
            cols: host.cols,
            store,
        })
    }

    fn alloc_act(&self, capacity: usize, cols: usize) -> Result<Act<DevBuf>> {
        let n = capacity.checked_mul(cols).and_then(|n| n.checked_mul(4));
        let n = n.ok_or_else(|| shape_err("alloc_act", "size overflows"))?;
        Ok(Act {
            rows: 0,
            cols,
            capacity,
            buf: DevBuf::new(&self.dev, n, "activations")?,
        })
    }

    fn alloc_kv(&self, spec: KvSpec) -> Result<KvPages<KvBuf>> {
        check::kv_cache(&spec)?;
        // Bytes per slot row of kv_dim values (Q8_0: 34 per 32).
        let row_bytes = match spec.dtype {
            KvDType::F32 => spec.kv_dim().checked_mul(4),
            KvDType::F16 => spec.kv_dim().checked_mul(2),
            KvDType::Q8_0 => Some(spec.kv_dim() / 32 * 34),
        };
        let bytes = row_bytes
            .and_then(|r| spec.slots().checked_mul(r))
            .ok_or_else(|| shape_err("alloc_kv", "size overflows"))?;
        let need = bytes as u128 * 2 * spec.n_layers as u128;
        let free = self.dev.mem_free()?;
        if need > free as u128 {
            return Err(BackendError::OutOfMemory {
                what: "KV cache",
                detail: format!("{need} bytes wanted, {free} free on the device"),
            });
        }
        let mut layers = Vec::with_capacity(spec.n_layers);
        for _ in 0..spec.n_layers {
            let one = || -> Result<KvBuf> {
                Ok(KvBuf {
                    buf: DevBuf::new(&self.dev, bytes, "KV cache")?,
                    dtype: spec.dtype,
                })
            };
            layers.push((one()?, one()?));
        }
        Ok(KvPages { spec, layers })
    }

    fn upload(&self, data: &[f32], rows: usize, out: &mut Act<DevBuf>) -> Result<()> {
        check::upload(data.len(), rows, out)?;
        if !data.is_empty() {
            self.dev.htod(out.buf.ptr, f32_bytes(data))?;
        }
        out.rows = rows;
        Ok(())
    }

    fn download(&self, x: &Act<DevBuf>) -> Result<Vec<f32>> {
        let mut v = vec![0f32; x.rows * x.cols];
        if !v.is_empty() {
            self.dev.dtoh(x.buf.ptr, f32_bytes_mut(&mut v))?;
        }
        Ok(v)
    }

    fn embed(&self, table: &Weight<CudaWeight>, ids: &[u32], out: &mut Act<DevBuf>) -> Result<()> {
        check::embed(table, ids, out)?;
        let mut args = matmul::matrix_args(table, "embed")?.to_vec();
        out.rows = ids.len();
        if ids.is_empty() {
            return Ok(());
        }
        let dev_ids = self.scratch().ids.put(&self.dev, u32_bytes(ids))?.ptr;
        args.extend([Arg::Ptr(dev_ids), out.buf.arg()]);
        self.launch(
            &self.typed("embed", table.dtype)?,
            (ids.len() as u32, 1),
            128,
            &args,
        )
    }

    fn rms_norm(
        &self,
        x: &Act<DevBuf>,
        w: &Weight<CudaWeight>,
        eps: f32,
        out: &mut Act<DevBuf>,
    ) -> Result<()> {
        check::rows_into("rms_norm", x, out)?;
        out.rows = x.rows;
        self.norm_rows("rms_norm", x, (w, eps), out.buf.ptr)
    }

    fn rms_norm_groups(&self, x: &mut Act<DevBuf>, w: &Weight<CudaWeight>, eps: f32) -> Result<()> {
        check::norm_groups(x, w)?;
        let g = w.cols;
        let wv = Self::vector(w, g, "rms_norm_groups")?;
        let groups = x.rows * x.cols / g;
        if groups == 0 {
            return Ok(());
        }
        let args = [
            x.buf.arg(),
            wv.arg(),
            Arg::I32(g as i32),
            Arg::U64(groups as u64),
            Arg::F32(eps),
        ];
        self.launch("rms_norm_groups", blocks(groups, 4), 128, &args)
    }

    fn linear(
        &self,
        x: &Act<DevBuf>,
        w: &Weight<CudaWeight>,
        bias: Option<&Weight<CudaWeight>>,
        out: &mut Act<DevBuf>,
    ) -> Result<()> {
        check::product("linear", x, w, out)?;
        out.rows = x.rows;
        if x.rows == 0 {
            return Ok(());
        }
        let mut sc = self.scratch();
        self.matmul(x.buf.ptr, x.rows, w, bias, out.buf.ptr, false, &mut sc)
    }

    fn linear_many(
        &self,
        x: &Act<DevBuf>,
        ws: &[(&Weight<CudaWeight>, Option<&Weight<CudaWeight>>)],
        outs: &mut [&mut Act<DevBuf>],
    ) -> Result<()> {
        self.products(x, ws, outs)
    }

    fn rope(&self, x: &mut Act<DevBuf>, positions: &[u32], rope: &RopeParams) -> Result<()> {
        check::rope(x, positions, rope)?;
        let pairs = x.rows * rope.n_heads * (rope.rotary_dim / 2);
        if pairs == 0 {
            return Ok(());
        }
        let mut sc = self.scratch();
        let pos = sc.positions.put(&self.dev, u32_bytes(positions))?.ptr;
        let freq = sc.inv_freq.put(&self.dev, f32_bytes(&rope.inv_freq))?.ptr;
        let args = [
            x.buf.arg(),
            Arg::Ptr(pos),
            Arg::Ptr(freq),
            Arg::I32(x.rows as i32),
            Arg::I32(rope.n_heads as i32),
            Arg::I32(rope.head_dim as i32),
            Arg::I32(rope.rotary_dim as i32),
            Arg::I32((rope.style == RopeStyle::Neox) as i32),
        ];
        self.launch("rope", blocks(pairs, 256), 256, &args)
    }

    fn write_kv(
        &self,
        k: &Act<DevBuf>,
        v: &Act<DevBuf>,
        slots: &[u32],
        kv: &mut KvPages<KvBuf>,
        layer: usize,
    ) -> Result<()> {
        check::write_kv(k, v, slots, kv, layer)?;
        let kv_dim = kv.spec.kv_dim();
        if slots.is_empty() {
            return Ok(());
        }
        let dev_slots = self.scratch().slots.put(&self.dev, u32_bytes(slots))?.ptr;
        let (kc, vc) = &kv.layers[layer];
        let kernel = format!("write_kv_{}", kc.suffix());
        let args = [
            k.buf.arg(),
            v.buf.arg(),
            Arg::Ptr(dev_slots),
            Arg::I32(slots.len() as i32),
            Arg::I32(kv_dim as i32),
            kc.buf.arg(),
            vc.buf.arg(),
        ];
        self.launch(&kernel, blocks(slots.len() * kv_dim, 256), 256, &args)
    }

    fn attention(
        &self,
        q: &Act<DevBuf>,
        kv: &KvPages<KvBuf>,
        meta: &AttnMeta<'_>,
        layer: usize,
        out: &mut Act<DevBuf>,
    ) -> Result<()> {
        if meta.window.is_some() {
            return Err(BackendError::Unsupported {
                backend: "cuda",
                feature: "sliding-window attention",
            });
        }
        self.attend(q, kv, meta, layer, out)
    }

    fn silu_mul(&self, gate: &Act<DevBuf>, up: &Act<DevBuf>, out: &mut Act<DevBuf>) -> Result<()> {
        check::silu_mul(gate, up, out)?;
        out.rows = gate.rows;
        let n = gate.rows * gate.cols;
        if n == 0 {
            return Ok(());
        }
        self.launch(
            "silu_mul",
            blocks(n, 256),
            256,
            &[
                gate.buf.arg(),
                up.buf.arg(),
                Arg::U64(n as u64),
                out.buf.arg(),
            ],
        )
    }

    fn add(&self, acc: &mut Act<DevBuf>, x: &Act<DevBuf>) -> Result<()> {
        check::add(acc, x)?;
        let n = x.rows * x.cols;
        if n == 0 {
            return Ok(());
        }
        self.launch(
            "add",
            blocks(n, 256),
            256,
            &[acc.buf.arg(), x.buf.arg(), Arg::U64(n as u64)],
        )
    }

    fn linear_add(
        &self,
        x: &Act<DevBuf>,
        w: &Weight<CudaWeight>,
        tmp: &mut Act<DevBuf>,
        acc: &mut Act<DevBuf>,
    ) -> Result<()> {
        self.fused_linear_add(x, w, tmp, acc)
    }

    fn gated_linear(
        &self,
        x: &Act<DevBuf>,
        gate: &Weight<CudaWeight>,
        up: &Weight<CudaWeight>,
        g: &mut Act<DevBuf>,
        u: &mut Act<DevBuf>,
        out: &mut Act<DevBuf>,
    ) -> Result<()> {
        self.fused_gated_linear(x, [gate, up], g, u, out)
    }

    fn mlp(
        &self,
        x: &mut Act<DevBuf>,
        norm: (&Weight<CudaWeight>, f32),
        w: [&Weight<CudaWeight>; 3],
        s: MlpScratch<'_, DevBuf>,
    ) -> Result<()> {
        self.fused_mlp(x, norm, w, s)
    }

    fn norm_linear_many(
        &self,
        x: &Act<DevBuf>,
        norm: (&Weight<CudaWeight>, f32),
        ws: &[(&Weight<CudaWeight>, Option<&Weight<CudaWeight>>)],
        outs: &mut [&mut Act<DevBuf>],
        h: &mut Act<DevBuf>,
    ) -> Result<()> {
        self.fused_norm_linear_many(x, norm, ws, outs, h)
    }

    fn rope_write_kv(
        &self,
        q: &mut Act<DevBuf>,
        k: &mut Act<DevBuf>,
        v: &Act<DevBuf>,
        positions: &[u32],
        rope: (&RopeParams, &RopeParams),
        slots: &[u32],
        kv: &mut KvPages<KvBuf>,
        layer: usize,
    ) -> Result<()> {
        self.fused_rope_write_kv(q, k, v, positions, rope, slots, kv, layer)
    }

    fn sample_logits(
        &self,
        x: &Act<DevBuf>,
        rows: &[u32],
        lm_head: &Weight<CudaWeight>,
        draws: &[Draw],
    ) -> Result<Option<Vec<u32>>> {
        check::logits(x, rows, lm_head, None)?;
        if draws.len() != rows.len() {
            return Err(shape_err(
                "sample_logits",
                format!("{} draws for {} rows", draws.len(), rows.len()),
            ));
        }
        if rows.is_empty() {
            return Ok(Some(Vec::new()));
        }
        let mut sc = self.scratch();
        let sc = &mut *sc;
        self.logits_on_device(x, rows, lm_head, sc)?;
        let params: Vec<u8> = draws
            .iter()
            .flat_map(|d| [d.temperature, d.min_p])
            .flat_map(f32::to_le_bytes)
            .collect();
        let us: Vec<u8> = draws.iter().flat_map(|d| d.u.to_le_bytes()).collect();
        let params = sc.draw_params.put(&self.dev, &params)?.ptr;
        let us = sc.draw_us.put(&self.dev, &us)?.ptr;
        let out = ensure(&self.dev, &mut sc.top_out, rows.len() * 4)?;
        let logits = sc.logits.as_ref().expect("filled by logits_on_device");
        let args = [
            logits.arg(),
            Arg::I32(lm_head.rows as i32),
            Arg::Ptr(params),
            Arg::Ptr(us),
            out.arg(),
        ];
        self.launch("sample_rows", (rows.len() as u32, 1), 1024, &args)?;
        let mut ids = vec![0u32; rows.len()];
        self.dev.dtoh(out.ptr, u32_bytes_mut(&mut ids))?;
        Ok(Some(ids))
    }

    fn top_logits(
        &self,
        x: &Act<DevBuf>,
        rows: &[u32],
        lm_head: &Weight<CudaWeight>,
        k: usize,
        mass: bool,
    ) -> Result<Option<TopLogits>> {
        check::logits(x, rows, lm_head, None)?;
        if k == 0 || k > TOP_LOGITS_MAX || k > lm_head.rows {
            return Ok(None);
        }
        if rows.is_empty() {
            return Ok(Some(TopLogits {
                k,
                ..TopLogits::default()
            }));
        }
        let mut sc = self.scratch();
        let sc = &mut *sc;
        self.logits_on_device(x, rows, lm_head, sc)?;
        // Ids, values, then the masses: one copy back.
        let n = rows.len() * k;
        let words = 2 * n + if mass { rows.len() } else { 0 };
        let out = ensure(&self.dev, &mut sc.top_out, words * 4)?;
        let logits = sc.logits.as_ref().expect("filled by logits_on_device");
        let args = [
            logits.arg(),
            Arg::I32(lm_head.rows as i32),
            out.arg(),
            Arg::Ptr(out.ptr + 4 * n as u64),
        ];
        // Greedy is one pass (argmax); larger k (or the mass) a radix selection.
        if k == 1 && !mass {
            self.launch("argmax_rows", (rows.len() as u32, 1), 1024, &args)?;
        } else {
            let mut args = args.to_vec();
            args.insert(2, Arg::I32(k as i32));
            args.push(Arg::Ptr(if mass { out.ptr + 8 * n as u64 } else { 0 }));
            self.launch("top_k_rows", (rows.len() as u32, 1), 1024, &args)?;
        }
        let mut host = vec![0u32; words];
        self.dev.dtoh(out.ptr, u32_bytes_mut(&mut host))?;
        let (ids, rest) = host.split_at(n);
        let (vals, masses) = rest.split_at(n);
        Ok(Some(TopLogits {
            k,
            pairs: ids
                .iter()
                .zip(vals)
                .map(|(&i, &v)| (i, f32::from_bits(v)))
                .collect(),
            mass: masses.iter().map(|&m| f32::from_bits(m)).collect(),
        }))
    }

    fn logits(
        &self,
        x: &Act<DevBuf>,
        rows: &[u32],
        lm_head: &Weight<CudaWeight>,
        out: &mut [f32],
    ) -> Result<()> {
        check::logits(x, rows, lm_head, Some(out.len()))?;
        if rows.is_empty() {
            return Ok(());
        }
        let mut sc = self.scratch();
        self.logits_on_device(x, rows, lm_head, &mut sc)?;
        let logits = sc.logits.as_ref().expect("filled by logits_on_device");
        self.dev.dtoh(logits.ptr, f32_bytes_mut(out))
    }
}
