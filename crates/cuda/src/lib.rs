//! `CudaBackend`: the backend contract on an NVIDIA GPU. Weights stay in their file's block
//! format in device memory; decode-sized products (≤ 8 rows) run matrix-vector kernels that
//! dequantize in registers and read every weight once, larger ones dequantize the matrix to bf16
//! and use cuBLAS on the tensor cores. Activations are f32; the paged KV cache is f16 or f32 with
//! the same slots and block tables as the CPU's. Kernels come from `kernels/*.cu` through NVRTC
//! (see `kernels.rs`). Everything runs on one stream; the host waits only in `download`/`logits`.

mod kernels;
mod scratch;

pub use kernels::{compile, source, WEIGHT_TYPES};

use cudarc::cublas::{result as blas_result, sys as blas_sys, CudaBlas};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, LaunchConfig,
    PushKernelArg,
};
use scratch::ensure;
use std::sync::{Arc, Mutex};
use suanli_backend::{
    shape_err, Act, AttnMeta, Backend, BackendError, Capabilities, HostTensor, KvDType, KvPages,
    KvSpec, Result, RopeParams, RopeStyle, Weight, WeightRole,
};
use suanli_core::{quant, DType};

/// Products with at most this many rows take the matrix-vector kernels (`MV_MAX_TOKENS`).
const MATVEC_MAX_ROWS: usize = 8;

fn dev_err(op: &'static str) -> impl Fn(cudarc::driver::DriverError) -> BackendError {
    move |e| BackendError::Device {
        backend: "cuda",
        op,
        detail: e.to_string(),
    }
}

/// A weight in device memory: matrices in the file's block layout, vectors as f32.
pub enum CudaWeight {
    Raw {
        data: CudaSlice<u8>,
        row_bytes: usize,
    },
    F32(CudaSlice<f32>),
}

/// One layer's K or V cache.
pub enum KvBuf {
    F32(CudaSlice<f32>),
    F16(CudaSlice<u16>),
}

pub struct CudaBackend {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    k: kernels::Kernels,
    caps: Capabilities,
    scratch: Mutex<scratch::Scratch>,
}

impl CudaBackend {
    /// Open device `ordinal`. Fails with a message (never a panic) when the driver library, the
    /// device or NVRTC is missing.
    pub fn new(ordinal: usize) -> std::result::Result<CudaBackend, String> {
        // cudarc panics when a dynamically loaded library is absent; turn that into an error.
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let opened = std::panic::catch_unwind(|| -> std::result::Result<_, String> {
            let n =
                CudaContext::device_count().map_err(|e| format!("counting CUDA devices: {e}"))?;
            if ordinal >= n.max(0) as usize {
                return Err(format!(
                    "cuda:{ordinal} does not exist ({n} CUDA device(s) found)"
                ));
            }
            let ctx =
                CudaContext::new(ordinal).map_err(|e| format!("opening cuda:{ordinal}: {e}"))?;
            let k = kernels::Kernels::load(&ctx)?;
            Ok((ctx, k))
        });
        std::panic::set_hook(prev);
        let (ctx, k) = match opened {
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
        let stream = ctx
            .new_stream()
            .map_err(|e| format!("creating a stream: {e}"))?;
        let blas = CudaBlas::new(stream.clone()).map_err(|e| format!("starting cuBLAS: {e:?}"))?;
        let name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        let (maj, min) = ctx.compute_capability().unwrap_or((0, 0));
        let mem = ctx.total_mem().unwrap_or(0);
        let caps = Capabilities {
            name: "cuda",
            detail: format!(
                "cuda:{ordinal} {name}, sm_{maj}{min}, {:.0} GiB",
                mem as f64 / (1u64 << 30) as f64
            ),
            weight_dtypes: WEIGHT_TYPES.iter().map(|(t, _)| *t).collect(),
            kv_dtypes: vec![KvDType::F16, KvDType::F32],
        };
        Ok(CudaBackend {
            ctx,
            stream,
            blas,
            k,
            caps,
            scratch: Mutex::new(Default::default()),
        })
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// Wait for all queued work.
    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(dev_err("synchronize"))
    }

    /// Bytes a product with `w` reads from device memory.
    pub fn weight_bytes(w: &Weight<CudaWeight>) -> usize {
        match &w.store {
            CudaWeight::Raw { data, .. } => data.len(),
            CudaWeight::F32(v) => v.len() * 4,
        }
    }

    /// Device-to-device copy bandwidth in GB/s (bytes read + written per second), the figure
    /// decode speed is held against.
    pub fn copy_bandwidth(&self) -> Result<f64> {
        let n = 1usize << 28; // 1 GiB of f32
        let src = self
            .stream
            .alloc_zeros::<f32>(n)
            .map_err(dev_err("bandwidth probe"))?;
        let mut dst = self
            .stream
            .alloc_zeros::<f32>(n)
            .map_err(dev_err("bandwidth probe"))?;
        let mut best = 0f64;
        for _ in 0..6 {
            self.synchronize()?;
            let t0 = std::time::Instant::now();
            self.stream
                .memcpy_dtod(&src, &mut dst)
                .map_err(dev_err("bandwidth probe"))?;
            self.synchronize()?;
            best = best.max(2.0 * (n * 4) as f64 / t0.elapsed().as_secs_f64() / 1e9);
        }
        Ok(best)
    }

    /// Greedy tokens for the selected rows, computed on the device (only the ids come back).
    pub fn argmax_logits(
        &self,
        x: &Act<CudaSlice<f32>>,
        rows: &[u32],
        lm_head: &Weight<CudaWeight>,
    ) -> Result<Vec<u32>> {
        let mut sc = self.scratch.lock().unwrap_or_else(|p| p.into_inner());
        self.logits_on_device(x, rows, lm_head, &mut sc)?;
        let sc = &mut *sc;
        let ids = ensure(&self.stream, &mut sc.ids_out, rows.len())?;
        let logits = sc.logits.as_ref().expect("filled by logits_on_device");
        let vocab = lm_head.rows as i32;
        let mut b = self.stream.launch_builder(self.k.get("argmax_rows"));
        b.arg(logits).arg(&vocab).arg(&mut *ids);
        launch(b, grid1(rows.len(), 1024), "argmax")?;
        let v = self
            .stream
            .clone_dtoh(&ids.slice(0..rows.len()))
            .map_err(dev_err("argmax"))?;
        self.synchronize()?;
        Ok(v)
    }

    fn logits_on_device(
        &self,
        x: &Act<CudaSlice<f32>>,
        rows: &[u32],
        lm_head: &Weight<CudaWeight>,
        sc: &mut scratch::Scratch,
    ) -> Result<()> {
        let k = x.cols;
        if k != lm_head.cols || rows.iter().any(|&r| r as usize >= x.rows) || rows.is_empty() {
            return Err(shape_err(
                "logits",
                format!(
                    "rows {rows:?} of [{}, {k}] · lm_head [{}, {}]",
                    x.rows, lm_head.rows, lm_head.cols
                ),
            ));
        }
        let n = rows.len();
        let sel = sc.rows.put(&self.stream, rows)?;
        let gathered = ensure(&self.stream, &mut sc.gather, n * k)?;
        let cols = k as i32;
        let mut b = self.stream.launch_builder(self.k.get("gather_rows"));
        b.arg(&x.buf).arg(sel).arg(&cols).arg(&mut *gathered);
        launch(b, grid1(n, 256), "logits gather")?;
        let gathered = sc.gather.take().expect("just ensured");
        let mut out = sc.logits.take();
        let r = (|| {
            let o = ensure(&self.stream, &mut out, n * lm_head.rows)?;
            self.matmul(&gathered, n, lm_head, None, o, sc)
        })();
        sc.gather = Some(gathered);
        sc.logits = out;
        r
    }

    /// out[n, w.rows] = x[n, w.cols] · wᵀ (+ bias), choosing the kernel by batch size.
    fn matmul(
        &self,
        x: &CudaSlice<f32>,
        n: usize,
        w: &Weight<CudaWeight>,
        bias: Option<&Weight<CudaWeight>>,
        out: &mut CudaSlice<f32>,
        sc: &mut scratch::Scratch,
    ) -> Result<()> {
        let (data, row_bytes) = match &w.store {
            CudaWeight::Raw { data, row_bytes } => (data, *row_bytes),
            CudaWeight::F32(_) => {
                return Err(shape_err("linear", "a vector weight used as a matrix"))
            }
        };
        let bias = match bias.map(|b| &b.store) {
            None => None,
            Some(CudaWeight::F32(v)) if v.len() == w.rows => Some(v),
            Some(_) => {
                return Err(shape_err(
                    "linear",
                    format!("bias is not a vector of {}", w.rows),
                ))
            }
        };
        let (rows, cols, rb) = (w.rows as i32, w.cols as i32, row_bytes as u64);
        if n <= MATVEC_MAX_ROWS {
            let f = self.typed("matvec", w.dtype)?;
            let nt = n as i32;
            let null = 0u64;
            let mut b = self.stream.launch_builder(f);
            b.arg(data).arg(&rows).arg(&cols).arg(&rb).arg(x).arg(&nt);
            match bias {
                Some(v) => b.arg(v),
                None => b.arg(&null),
            };
            b.arg(out);
            return launch(b, grid1(w.rows.div_ceil(4), 128), "matvec");
        }
        // Tensor cores: bf16 weights (dequantized into scratch unless stored as bf16) and
        // bf16 activations, f32 accumulation and output.
        let (m, k) = (w.rows, w.cols);
        let wbf: Option<&CudaSlice<u16>> = if w.dtype == DType::BF16 || w.dtype == DType::F32 {
            None
        } else {
            let f = self.typed("dequant_bf16", w.dtype)?;
            let buf = ensure(&self.stream, &mut sc.bf16_w, m * k)?;
            let mut b = self.stream.launch_builder(f);
            b.arg(data).arg(&rows).arg(&cols).arg(&rb).arg(&mut *buf);
            launch(b, grid1((m * k / 32).div_ceil(256), 256), "dequantize")?;
            Some(&*buf)
        };
        let f32_path = w.dtype == DType::F32;
        if !f32_path {
            let xb = ensure(&self.stream, &mut sc.bf16_x, n * k)?;
            let len = (n * k) as u64;
            let mut b = self.stream.launch_builder(self.k.get("to_bf16"));
            b.arg(x).arg(&len).arg(&mut *xb);
            launch(b, grid1((n * k).div_ceil(256), 256), "to_bf16")?;
        }
        let (alpha, beta) = (1.0f32, 0.0f32);
        let (a_ptr, _ga) = match wbf {
            Some(buf) => buf.device_ptr(&self.stream),
            None => data.device_ptr(&self.stream),
        };
        let (b_ptr, _gb) = if f32_path {
            x.device_ptr(&self.stream)
        } else {
            sc.bf16_x
                .as_ref()
                .expect("filled above")
                .device_ptr(&self.stream)
        };
        let (c_ptr, _gc) = out.device_ptr_mut(&self.stream);
        let ty = if f32_path {
            blas_sys::cudaDataType::CUDA_R_32F
        } else {
            blas_sys::cudaDataType::CUDA_R_16BF
        };
        // Row-major out[n][m] is column-major C (m × n); W row-major [m][k] read transposed.
        let r = unsafe {
            blas_result::gemm_ex(
                *self.blas.handle(),
                blas_sys::cublasOperation_t::CUBLAS_OP_T,
                blas_sys::cublasOperation_t::CUBLAS_OP_N,
                m as i32,
                n as i32,
                k as i32,
                &alpha as *const f32 as *const _,
                a_ptr as *const _,
                ty,
                k as i32,
                b_ptr as *const _,
                ty,
                k as i32,
                &beta as *const f32 as *const _,
                c_ptr as *mut _,
                blas_sys::cudaDataType::CUDA_R_32F,
                m as i32,
                blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        };
        drop((_ga, _gb, _gc));
        r.map_err(|e| BackendError::Device {
            backend: "cuda",
            op: "cublasGemmEx",
            detail: format!("{e:?}"),
        })?;
        if let Some(v) = bias {
            let len = (n * m) as u64;
            let mcols = m as i32;
            let mut b = self.stream.launch_builder(self.k.get("add_bias"));
            b.arg(out).arg(v).arg(&mcols).arg(&len);
            launch(b, grid1((n * m).div_ceil(256), 256), "add_bias")?;
        }
        Ok(())
    }

    fn typed(&self, kind: &str, ty: DType) -> Result<&CudaFunction> {
        self.k
            .typed(kind, ty)
            .ok_or_else(|| BackendError::UnsupportedDType {
                backend: "cuda",
                dtype: ty,
                tensor: kind.into(),
            })
    }

    fn vector<'w>(
        w: &'w Weight<CudaWeight>,
        len: usize,
        op: &'static str,
    ) -> Result<&'w CudaSlice<f32>> {
        match &w.store {
            CudaWeight::F32(v) if v.len() == len => Ok(v),
            _ => Err(shape_err(op, format!("weight is not a vector of {len}"))),
        }
    }
}

/// A 1-D grid of `blocks` blocks of `threads` threads.
fn grid1(blocks: usize, threads: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (blocks.max(1) as u32, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn launch(
    mut b: cudarc::driver::LaunchArgs<'_>,
    cfg: LaunchConfig,
    op: &'static str,
) -> Result<()> {
    // SAFETY: every launch passes the argument list its kernel declares (checked by the
    // conformance suite on a device); sizes are validated by the callers before launching.
    unsafe { b.launch(cfg) }.map(|_| ()).map_err(dev_err(op))
}

fn check_act(op: &'static str, x: &Act<CudaSlice<f32>>, out: &Act<CudaSlice<f32>>) -> Result<()> {
    if out.cols != x.cols || out.capacity < x.rows {
        return Err(shape_err(
            op,
            format!(
                "[{}, {}] into [cap {}, {}]",
                x.rows, x.cols, out.capacity, out.cols
            ),
        ));
    }
    Ok(())
}

impl Backend for CudaBackend {
    type Buffer = CudaSlice<f32>;
    type KvBuffer = KvBuf;
    type WeightStore = CudaWeight;

    fn caps(&self) -> &Capabilities {
        &self.caps
    }

    fn prepare_weight(&self, host: HostTensor<'_>) -> Result<Weight<CudaWeight>> {
        let rb = host
            .dtype
            .row_bytes(host.cols)
            .map_err(|e| shape_err("prepare_weight", format!("{}: {e}", host.name)))?;
        if rb.checked_mul(host.rows) != Some(host.bytes.len()) {
            return Err(shape_err(
                "prepare_weight",
                format!(
                    "{}: {} bytes for [{}, {}] {}",
                    host.name,
                    host.bytes.len(),
                    host.rows,
                    host.cols,
                    host.dtype
                ),
            ));
        }
        let store = if host.role == WeightRole::Vector {
            let mut v = vec![0f32; host.rows * host.cols];
            quant::dequantize(host.dtype, host.bytes.as_slice(), &mut v)
                .map_err(|e| shape_err("prepare_weight", e.to_string()))?;
            CudaWeight::F32(self.stream.clone_htod(&v).map_err(oom(host.name))?)
        } else {
            if self.k.typed("matvec", host.dtype).is_none() || host.cols % 32 != 0 {
                return Err(BackendError::UnsupportedDType {
                    backend: "cuda",
                    dtype: host.dtype,
                    tensor: host.name.into(),
                });
            }
            CudaWeight::Raw {
                data: self
                    .stream
                    .clone_htod(host.bytes.as_slice())
                    .map_err(oom(host.name))?,
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

    fn alloc_act(&self, capacity: usize, cols: usize) -> Result<Act<CudaSlice<f32>>> {
        let n = capacity
            .checked_mul(cols)
            .ok_or_else(|| shape_err("alloc_act", "size overflows"))?;
        let buf = self
            .stream
            .alloc_zeros::<f32>(n.max(1))
            .map_err(oom("activations"))?;
        Ok(Act {
            rows: 0,
            cols,
            capacity,
            buf,
        })
    }

    fn alloc_kv(&self, spec: KvSpec) -> Result<KvPages<KvBuf>> {
        let n = spec
            .slots()
            .checked_mul(spec.kv_dim())
            .ok_or_else(|| shape_err("alloc_kv", "size overflows"))?;
        let elem = match spec.dtype {
            KvDType::F32 => 4,
            KvDType::F16 => 2,
            KvDType::Q8_0 => {
                return Err(shape_err(
                    "alloc_kv",
                    "the CUDA backend keeps the KV cache in f16 or f32 (--kv-type f16)",
                ))
            }
        };
        let need = n as u128 * elem * 2 * spec.n_layers as u128;
        let (free, _) = self.ctx.mem_get_info().map_err(dev_err("alloc_kv"))?;
        if need > free as u128 {
            return Err(BackendError::OutOfMemory {
                what: "KV cache",
                detail: format!("{need} bytes wanted, {free} free on the device"),
            });
        }
        let mut layers = Vec::with_capacity(spec.n_layers);
        for _ in 0..spec.n_layers {
            let one = || -> Result<KvBuf> {
                Ok(match spec.dtype {
                    KvDType::F32 => {
                        KvBuf::F32(self.stream.alloc_zeros(n.max(1)).map_err(oom("KV cache"))?)
                    }
                    _ => KvBuf::F16(self.stream.alloc_zeros(n.max(1)).map_err(oom("KV cache"))?),
                })
            };
            layers.push((one()?, one()?));
        }
        Ok(KvPages { spec, layers })
    }

    fn upload(&self, data: &[f32], rows: usize, out: &mut Act<CudaSlice<f32>>) -> Result<()> {
        if rows > out.capacity || data.len() != rows * out.cols {
            return Err(shape_err(
                "upload",
                format!("{} values as {rows} rows of {}", data.len(), out.cols),
            ));
        }
        if !data.is_empty() {
            self.stream
                .memcpy_htod(data, &mut out.buf.slice_mut(0..data.len()))
                .map_err(dev_err("upload"))?;
        }
        out.rows = rows;
        Ok(())
    }

    fn download(&self, x: &Act<CudaSlice<f32>>) -> Result<Vec<f32>> {
        let n = x.rows * x.cols;
        if n == 0 {
            return Ok(Vec::new());
        }
        let v = self
            .stream
            .clone_dtoh(&x.buf.slice(0..n))
            .map_err(dev_err("download"))?;
        // Copies into pageable memory complete before returning; the sync makes it explicit.
        self.synchronize()?;
        Ok(v)
    }

    fn embed(
        &self,
        table: &Weight<CudaWeight>,
        ids: &[u32],
        out: &mut Act<CudaSlice<f32>>,
    ) -> Result<()> {
        if out.cols != table.cols || ids.len() > out.capacity {
            return Err(shape_err(
                "embed",
                format!(
                    "{} ids into [cap {}, {}]",
                    ids.len(),
                    out.capacity,
                    out.cols
                ),
            ));
        }
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= table.rows) {
            return Err(shape_err(
                "embed",
                format!("token id {bad} is outside the vocabulary of {}", table.rows),
            ));
        }
        let CudaWeight::Raw { data, row_bytes } = &table.store else {
            return Err(shape_err("embed", "the table is a vector"));
        };
        out.rows = ids.len();
        if ids.is_empty() {
            return Ok(());
        }
        let mut sc = self.scratch.lock().unwrap_or_else(|p| p.into_inner());
        let dev_ids = sc.ids.put(&self.stream, ids)?;
        let (rows, cols, rb) = (table.rows as i32, table.cols as i32, *row_bytes as u64);
        let mut b = self
            .stream
            .launch_builder(self.typed("embed", table.dtype)?);
        b.arg(data)
            .arg(&rows)
            .arg(&cols)
            .arg(&rb)
            .arg(dev_ids)
            .arg(&mut out.buf);
        launch(b, grid1(ids.len(), 128), "embed")
    }

    fn rms_norm(
        &self,
        x: &Act<CudaSlice<f32>>,
        w: &Weight<CudaWeight>,
        eps: f32,
        out: &mut Act<CudaSlice<f32>>,
    ) -> Result<()> {
        check_act("rms_norm", x, out)?;
        let wv = Self::vector(w, x.cols, "rms_norm")?;
        out.rows = x.rows;
        if x.rows == 0 {
            return Ok(());
        }
        let cols = x.cols as i32;
        let mut b = self.stream.launch_builder(self.k.get("rms_norm"));
        b.arg(&x.buf).arg(wv).arg(&cols).arg(&eps).arg(&mut out.buf);
        launch(b, grid1(x.rows, 256), "rms_norm")
    }

    fn rms_norm_groups(
        &self,
        x: &mut Act<CudaSlice<f32>>,
        w: &Weight<CudaWeight>,
        eps: f32,
    ) -> Result<()> {
        let g = w.cols;
        if g == 0 || x.cols % g != 0 {
            return Err(shape_err(
                "rms_norm_groups",
                format!("row of {} is not made of groups of {g}", x.cols),
            ));
        }
        let wv = Self::vector(w, g, "rms_norm_groups")?;
        let groups = (x.rows * x.cols / g) as u64;
        if groups == 0 {
            return Ok(());
        }
        let gi = g as i32;
        let mut b = self.stream.launch_builder(self.k.get("rms_norm_groups"));
        b.arg(&mut x.buf).arg(wv).arg(&gi).arg(&groups).arg(&eps);
        launch(
            b,
            grid1((groups as usize).div_ceil(4), 128),
            "rms_norm_groups",
        )
    }

    fn linear(
        &self,
        x: &Act<CudaSlice<f32>>,
        w: &Weight<CudaWeight>,
        bias: Option<&Weight<CudaWeight>>,
        out: &mut Act<CudaSlice<f32>>,
    ) -> Result<()> {
        if x.cols != w.cols || out.cols != w.rows || out.capacity < x.rows {
            return Err(shape_err(
                "linear",
                format!(
                    "[{}, {}] · [{}, {}] into [cap {}, {}]",
                    x.rows, x.cols, w.rows, w.cols, out.capacity, out.cols
                ),
            ));
        }
        out.rows = x.rows;
        if x.rows == 0 {
            return Ok(());
        }
        let mut sc = self.scratch.lock().unwrap_or_else(|p| p.into_inner());
        self.matmul(&x.buf, x.rows, w, bias, &mut out.buf, &mut sc)
    }

    fn rope(
        &self,
        x: &mut Act<CudaSlice<f32>>,
        positions: &[u32],
        rope: &RopeParams,
    ) -> Result<()> {
        if positions.len() != x.rows
            || x.cols != rope.n_heads * rope.head_dim
            || rope.rotary_dim > rope.head_dim
            || rope.inv_freq.len() < rope.rotary_dim / 2
        {
            return Err(shape_err(
                "rope",
                format!(
                    "{} positions for [{}, {}] with {rope:?}",
                    positions.len(),
                    x.rows,
                    x.cols
                ),
            ));
        }
        let pairs = x.rows * rope.n_heads * (rope.rotary_dim / 2);
        if pairs == 0 {
            return Ok(());
        }
        let mut sc = self.scratch.lock().unwrap_or_else(|p| p.into_inner());
        let sc = &mut *sc;
        let pos = sc.positions.put(&self.stream, positions)?;
        let freq = sc.inv_freq.put(&self.stream, &rope.inv_freq)?;
        let (rows, heads, hd, rot) = (
            x.rows as i32,
            rope.n_heads as i32,
            rope.head_dim as i32,
            rope.rotary_dim as i32,
        );
        let neox = (rope.style == RopeStyle::Neox) as i32;
        let mut b = self.stream.launch_builder(self.k.get("rope"));
        b.arg(&mut x.buf)
            .arg(pos)
            .arg(freq)
            .arg(&rows)
            .arg(&heads)
            .arg(&hd)
            .arg(&rot)
            .arg(&neox);
        launch(b, grid1(pairs.div_ceil(256), 256), "rope")
    }

    fn write_kv(
        &self,
        k: &Act<CudaSlice<f32>>,
        v: &Act<CudaSlice<f32>>,
        slots: &[u32],
        kv: &mut KvPages<KvBuf>,
        layer: usize,
    ) -> Result<()> {
        let kv_dim = kv.spec.kv_dim();
        if k.rows != slots.len()
            || v.rows != slots.len()
            || k.cols != kv_dim
            || v.cols != kv_dim
            || layer >= kv.layers.len()
        {
            return Err(shape_err(
                "write_kv",
                format!(
                    "{} slots for k [{}, {}], layer {layer}",
                    slots.len(),
                    k.rows,
                    k.cols
                ),
            ));
        }
        if let Some(&bad) = slots.iter().find(|&&s| s as usize >= kv.spec.slots()) {
            return Err(shape_err(
                "write_kv",
                format!("slot {bad} outside the cache of {}", kv.spec.slots()),
            ));
        }
        if slots.is_empty() {
            return Ok(());
        }
        let mut sc = self.scratch.lock().unwrap_or_else(|p| p.into_inner());
        let dev_slots = sc.slots.put(&self.stream, slots)?;
        let (rows, kd) = (slots.len() as i32, kv_dim as i32);
        let cfg = grid1((slots.len() * kv_dim).div_ceil(256), 256);
        let (kc, vc) = &mut kv.layers[layer];
        match (kc, vc) {
            (KvBuf::F32(kc), KvBuf::F32(vc)) => {
                let mut b = self.stream.launch_builder(self.k.get("write_kv_f32"));
                b.arg(&k.buf)
                    .arg(&v.buf)
                    .arg(dev_slots)
                    .arg(&rows)
                    .arg(&kd)
                    .arg(kc)
                    .arg(vc);
                launch(b, cfg, "write_kv")
            }
            (KvBuf::F16(kc), KvBuf::F16(vc)) => {
                let mut b = self.stream.launch_builder(self.k.get("write_kv_f16"));
                b.arg(&k.buf)
                    .arg(&v.buf)
                    .arg(dev_slots)
                    .arg(&rows)
                    .arg(&kd)
                    .arg(kc)
                    .arg(vc);
                launch(b, cfg, "write_kv")
            }
            _ => Err(shape_err("write_kv", "K and V caches differ in type")),
        }
    }

    fn attention(
        &self,
        q: &Act<CudaSlice<f32>>,
        kv: &KvPages<KvBuf>,
        meta: &AttnMeta<'_>,
        layer: usize,
        out: &mut Act<CudaSlice<f32>>,
    ) -> Result<()> {
        let (nh, nkv, hd) = (meta.n_heads, meta.n_kv_heads, meta.head_dim);
        let bs = kv.spec.block_size;
        if nkv == 0
            || nh % nkv != 0
            || hd > 256
            || nkv != kv.spec.n_kv_heads
            || hd != kv.spec.head_dim
            || q.cols != nh * hd
            || out.cols != q.cols
            || out.capacity < q.rows
            || layer >= kv.layers.len()
        {
            return Err(shape_err(
                "attention",
                format!("q [{}, {}] with {nh}/{nkv} heads of {hd}", q.rows, q.cols),
            ));
        }
        let (tables, row_meta) = attention_rows(meta, q.rows, &kv.spec)?;
        out.rows = q.rows;
        if q.rows == 0 {
            return Ok(());
        }
        let mut sc = self.scratch.lock().unwrap_or_else(|p| p.into_inner());
        let sc = &mut *sc;
        let dev_tables = sc.tables.put(&self.stream, &tables)?;
        let dev_meta = sc.row_meta.put(&self.stream, &row_meta)?;
        let (nhi, nkvi, hdi, bsi) = (nh as i32, nkv as i32, hd as i32, bs as i32);
        let cfg = LaunchConfig {
            grid_dim: (nh.div_ceil(4) as u32, q.rows as u32, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        let (kc, vc) = &kv.layers[layer];
        let mut b;
        match (kc, vc) {
            (KvBuf::F32(kc), KvBuf::F32(vc)) => {
                b = self.stream.launch_builder(self.k.get("attention_f32"));
                b.arg(&q.buf).arg(kc).arg(vc);
            }
            (KvBuf::F16(kc), KvBuf::F16(vc)) => {
                b = self.stream.launch_builder(self.k.get("attention_f16"));
                b.arg(&q.buf).arg(kc).arg(vc);
            }
            _ => return Err(shape_err("attention", "K and V caches differ in type")),
        }
        b.arg(dev_tables)
            .arg(dev_meta)
            .arg(&nhi)
            .arg(&nkvi)
            .arg(&hdi)
            .arg(&bsi)
            .arg(&meta.scale)
            .arg(&mut out.buf);
        launch(b, cfg, "attention")
    }

    fn silu_mul(
        &self,
        gate: &Act<CudaSlice<f32>>,
        up: &Act<CudaSlice<f32>>,
        out: &mut Act<CudaSlice<f32>>,
    ) -> Result<()> {
        if gate.rows != up.rows || gate.cols != up.cols {
            return Err(shape_err(
                "silu_mul",
                format!(
                    "gate [{}, {}] vs up [{}, {}]",
                    gate.rows, gate.cols, up.rows, up.cols
                ),
            ));
        }
        check_act("silu_mul", gate, out)?;
        out.rows = gate.rows;
        let n = (gate.rows * gate.cols) as u64;
        if n == 0 {
            return Ok(());
        }
        let mut b = self.stream.launch_builder(self.k.get("silu_mul"));
        b.arg(&gate.buf).arg(&up.buf).arg(&n).arg(&mut out.buf);
        launch(b, grid1((n as usize).div_ceil(256), 256), "silu_mul")
    }

    fn add(&self, acc: &mut Act<CudaSlice<f32>>, x: &Act<CudaSlice<f32>>) -> Result<()> {
        if acc.rows != x.rows || acc.cols != x.cols {
            return Err(shape_err(
                "add",
                format!("[{}, {}] += [{}, {}]", acc.rows, acc.cols, x.rows, x.cols),
            ));
        }
        let n = (x.rows * x.cols) as u64;
        if n == 0 {
            return Ok(());
        }
        let mut b = self.stream.launch_builder(self.k.get("add"));
        b.arg(&mut acc.buf).arg(&x.buf).arg(&n);
        launch(b, grid1((n as usize).div_ceil(256), 256), "add")
    }

    fn logits(
        &self,
        x: &Act<CudaSlice<f32>>,
        rows: &[u32],
        lm_head: &Weight<CudaWeight>,
        out: &mut [f32],
    ) -> Result<()> {
        if out.len() != rows.len() * lm_head.rows {
            return Err(shape_err(
                "logits",
                format!(
                    "{} outputs for {} rows of {}",
                    out.len(),
                    rows.len(),
                    lm_head.rows
                ),
            ));
        }
        if rows.is_empty() {
            return Ok(());
        }
        let mut sc = self.scratch.lock().unwrap_or_else(|p| p.into_inner());
        self.logits_on_device(x, rows, lm_head, &mut sc)?;
        let logits = sc.logits.as_ref().expect("filled by logits_on_device");
        self.stream
            .memcpy_dtoh(&logits.slice(0..out.len()), out)
            .map_err(dev_err("logits"))?;
        self.synchronize()
    }
}

/// The attention kernels' per-step data: every sequence's reachable block-table entries, one
/// after another, and per query row (offset of its table in that list, positions it sees).
/// Checks that every block a row can reach exists and every row belongs to the batch, so the
/// kernel never reads outside the cache.
pub fn attention_rows(
    meta: &AttnMeta<'_>,
    q_rows: usize,
    spec: &KvSpec,
) -> Result<(Vec<u32>, Vec<u32>)> {
    let bs = spec.block_size;
    let (mut tables, mut row_meta) = (Vec::new(), vec![0u32; 2 * q_rows]);
    for s in meta.seqs {
        let reach = s.ctx_len.div_ceil(bs);
        if s.q_len > s.ctx_len
            || s.q_start + s.q_len > q_rows
            || reach > s.block_table.len()
            || s.block_table[..reach]
                .iter()
                .any(|&b| b as usize >= spec.num_blocks)
        {
            return Err(shape_err(
                "attention",
                format!("sequence {s:?} does not fit the cache or the batch"),
            ));
        }
        let off = tables.len() as u32;
        tables.extend_from_slice(&s.block_table[..reach]);
        for i in 0..s.q_len {
            let r = s.q_start + i;
            row_meta[2 * r] = off;
            row_meta[2 * r + 1] = (s.ctx_len - s.q_len + i + 1) as u32;
        }
    }
    if let Some(r) = (0..q_rows).find(|&r| row_meta[2 * r + 1] == 0) {
        return Err(shape_err(
            "attention",
            format!("query row {r} belongs to no sequence"),
        ));
    }
    if tables.is_empty() {
        tables.push(0);
    }
    Ok((tables, row_meta))
}

fn oom(what: &str) -> impl Fn(cudarc::driver::DriverError) -> BackendError + '_ {
    move |e| BackendError::OutOfMemory {
        what: "device memory",
        detail: format!("{what}: {e}"),
    }
}
