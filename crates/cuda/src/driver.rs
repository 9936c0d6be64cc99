//! `Device` on an NVIDIA GPU: the CUDA driver (through cudarc, loaded at run time), the NVRTC-built
//! kernels of `kernels.rs`, cuBLAS for the GEMM. One stream carries all work, so ordering needs no
//! events; memory comes from the stream-ordered allocator.

use crate::device::{check_geometry, device_err, Arg, DevPtr, Device, Elem, Gemm};
use crate::kernels::Kernels;
use cudarc::cublas::{result as blas, sys as blas_sys, CudaBlas};
use cudarc::driver::{result, sys, CudaContext, CudaGraph, CudaStream};
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::Arc;
use std::sync::Mutex;
use suanli_backend::Result;

pub struct CudaDevice {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    kernels: Kernels,
    graphs: Mutex<(u64, HashMap<u64, Graph>)>,
    workspace: u64,
    /// `SUANLI_CUDA_PROFILE=1`: every launch and GEMM is timed (synchronously) per kernel name,
    /// and the table is printed to stderr when the device closes. Graphs are off meanwhile.
    profile: Option<Mutex<HashMap<String, (u64, f64)>>>,
}

/// A recorded graph. CUDA graph handles may be used from any thread (the driver API is thread
/// safe); cudarc leaves `CudaGraph` !Send only because it holds raw pointers. Every use here is
/// behind the mutex.
struct Graph(CudaGraph);
// SAFETY: see above — the handles are plain driver objects, used one thread at a time.
unsafe impl Send for Graph {}

impl CudaDevice {
    /// Open device `ordinal`: context, stream, kernels (compiled or from the cache), cuBLAS.
    /// Returns the device and a one-line description.
    pub fn open(ordinal: usize) -> std::result::Result<(CudaDevice, String), String> {
        let n = CudaContext::device_count().map_err(|e| format!("counting CUDA devices: {e}"))?;
        if ordinal >= n.max(0) as usize {
            return Err(format!(
                "cuda:{ordinal} does not exist ({n} CUDA device(s) found)"
            ));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| format!("opening cuda:{ordinal}: {e}"))?;
        let kernels = Kernels::load(&ctx)?;
        let stream = ctx
            .new_stream()
            .map_err(|e| format!("creating a stream: {e}"))?;
        let blas = CudaBlas::new(stream.clone()).map_err(|e| format!("starting cuBLAS: {e:?}"))?;
        // A fixed cuBLAS workspace, so that GEMMs recorded into graphs never allocate.
        const WORKSPACE: usize = 32 << 20;
        // SAFETY: plain allocation on the live context; kept for the device's lifetime.
        let workspace = unsafe { result::malloc_sync(WORKSPACE) }
            .map_err(|e| format!("cuBLAS workspace: {e}"))?;
        // SAFETY: the handle is live and the workspace outlives it (freed in Drop after it).
        unsafe {
            blas_sys::cublasSetWorkspace_v2(*blas.handle(), workspace as *mut c_void, WORKSPACE)
        }
        .result()
        .map_err(|e| format!("cuBLAS workspace: {e:?}"))?;
        let name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        let (maj, min) = ctx.compute_capability().unwrap_or((0, 0));
        let mem = ctx.total_mem().unwrap_or(0);
        let detail = format!(
            "cuda:{ordinal} {name}, sm_{maj}{min}, {:.0} GiB",
            mem as f64 / (1u64 << 30) as f64
        );
        Ok((
            CudaDevice {
                ctx,
                stream,
                blas,
                kernels,
                graphs: Mutex::new((0, HashMap::new())),
                workspace,
                profile: (std::env::var("SUANLI_CUDA_PROFILE").as_deref() == Ok("1"))
                    .then(|| Mutex::new(HashMap::new())),
            },
            detail,
        ))
    }

    fn launch_now(&self, kernel: &str, grid: (u32, u32), block: u32, args: &[Arg]) -> Result<()> {
        check_geometry(kernel, grid, block)?;
        self.bind()?;
        let f = self
            .kernels
            .get(kernel)
            .ok_or_else(|| device_err("launch", format!("no kernel {kernel}")))?;
        // Each argument in an 8-byte slot; the driver reads as many bytes as the parameter has.
        let mut slots = Arg::slots(args);
        let mut params: Vec<*mut c_void> =
            slots.iter_mut().map(|s| s.as_mut_ptr().cast()).collect();
        // SAFETY: the argument list matches the kernel's parameters (the emulator tests run the
        // same lists against the same kernel source), and every pointer is a live buffer.
        unsafe {
            result::launch_kernel(
                f.cu_function(),
                (grid.0.max(1), grid.1.max(1), 1),
                (block, 1, 1),
                0,
                self.stream.cu_stream(),
                &mut params,
            )
        }
        .map_err(|e| device_err("launch", format!("{kernel}: {e}")))
    }

    fn gemm_now(&self, g: &Gemm) -> Result<()> {
        g.check()?;
        self.bind()?;
        let cuda_type = |e: Elem| match e {
            Elem::F32 => blas_sys::cudaDataType::CUDA_R_32F,
            Elem::F16 => blas_sys::cudaDataType::CUDA_R_16F,
            Elem::BF16 => blas_sys::cudaDataType::CUDA_R_16BF,
        };
        let ty = cuda_type(g.ab);
        let op = |t: bool| {
            if t {
                blas_sys::cublasOperation_t::CUBLAS_OP_T
            } else {
                blas_sys::cublasOperation_t::CUBLAS_OP_N
            }
        };
        // SAFETY: the caller sized A, B and C for these dimensions, strides and batch count.
        unsafe {
            blas::gemm_strided_batched_ex(
                *self.blas.handle(),
                op(g.trans_a),
                op(g.trans_b),
                g.m as i32,
                g.n as i32,
                g.k as i32,
                (&g.alpha as *const f32).cast(),
                g.a as *const c_void,
                ty,
                g.lda as i32,
                g.stride_a as i64,
                g.b as *const c_void,
                ty,
                g.ldb as i32,
                g.stride_b as i64,
                (&g.beta as *const f32).cast(),
                g.c as *mut c_void,
                cuda_type(g.c_elem),
                g.ldc as i32,
                g.stride_c as i64,
                g.batch as i32,
                blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| device_err("cublasGemmStridedBatchedEx", format!("{e:?}")))
    }

    /// Run `f`, timing it under `name` when profiling.
    fn timed(&self, name: &str, f: impl FnOnce() -> Result<()>) -> Result<()> {
        let Some(p) = &self.profile else { return f() };
        self.sync()?;
        let t0 = std::time::Instant::now();
        f()?;
        self.sync()?;
        let dt = t0.elapsed().as_secs_f64();
        let mut m = p.lock().unwrap_or_else(|e| e.into_inner());
        let e = m.entry(name.to_owned()).or_insert((0, 0.0));
        e.0 += 1;
        e.1 += dt;
        Ok(())
    }

    fn bind(&self) -> Result<()> {
        self.ctx
            .bind_to_thread()
            .map_err(|e| device_err("binding the context", e))
    }
}

impl Device for CudaDevice {
    fn alloc(&self, bytes: usize) -> Result<DevPtr> {
        self.bind()?;
        let s = self.stream.cu_stream();
        // SAFETY: the stream is live; the memory is used only on this stream and zeroed first.
        unsafe {
            let p = result::malloc_async(s, bytes).map_err(|e| device_err("alloc", e))?;
            result::memset_d8_async(p, 0, bytes, s).map_err(|e| device_err("alloc", e))?;
            Ok(p)
        }
    }

    fn free(&self, p: DevPtr) {
        if self.bind().is_ok() {
            // SAFETY: `p` came from `alloc` on this stream; later work on the stream is ordered after.
            let _ = unsafe { result::free_async(p, self.stream.cu_stream()) };
        }
    }

    fn htod(&self, dst: DevPtr, src: &[u8]) -> Result<()> {
        self.bind()?;
        // SAFETY: `dst` holds at least `src.len()` bytes (callers size their buffers); a pageable
        // source is staged before this returns.
        unsafe { result::memcpy_htod_async(dst, src, self.stream.cu_stream()) }
            .map_err(|e| device_err("upload", e))
    }

    fn dtoh(&self, src: DevPtr, dst: &mut [u8]) -> Result<()> {
        self.bind()?;
        // SAFETY: `src` holds at least `dst.len()` bytes; the sync makes the copy complete.
        unsafe { result::memcpy_dtoh_async(dst, src, self.stream.cu_stream()) }
            .map_err(|e| device_err("download", e))?;
        self.sync()
    }

    fn dtod(&self, dst: DevPtr, src: DevPtr, bytes: usize) -> Result<()> {
        self.bind()?;
        // SAFETY: both ranges are live device buffers of at least `bytes`.
        unsafe { result::memcpy_dtod_async(dst, src, bytes, self.stream.cu_stream()) }
            .map_err(|e| device_err("copy", e))
    }

    fn launch(&self, kernel: &str, grid: (u32, u32), block: u32, args: &[Arg]) -> Result<()> {
        self.timed(kernel, || self.launch_now(kernel, grid, block, args))
    }

    fn gemm(&self, g: &Gemm) -> Result<()> {
        self.timed(
            if g.batch > 1 {
                "cublas gemm (attention)"
            } else {
                "cublas gemm"
            },
            || self.gemm_now(g),
        )
    }

    fn sync(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(|e| device_err("synchronize", e))
    }

    fn mem_free(&self) -> Result<usize> {
        self.bind()?;
        self.ctx
            .mem_get_info()
            .map(|(free, _)| free)
            .map_err(|e| device_err("mem_get_info", e))
    }

    fn begin_capture(&self) -> Result<bool> {
        if std::env::var("SUANLI_CUDA_GRAPHS").as_deref() == Ok("0") || self.profile.is_some() {
            return Ok(false);
        }
        self.stream
            .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(|e| device_err("begin_capture", e))?;
        Ok(true)
    }

    fn end_capture(&self) -> Result<u64> {
        let g = self
            .stream
            .end_capture(sys::CUgraphInstantiate_flags(0))
            .map_err(|e| device_err("end_capture", e))?
            .ok_or_else(|| device_err("end_capture", "nothing was recorded"))?;
        let mut gs = self.graphs.lock().unwrap_or_else(|p| p.into_inner());
        gs.0 += 1;
        let id = gs.0;
        gs.1.insert(id, Graph(g));
        Ok(id)
    }

    fn launch_graph(&self, graph: u64) -> Result<()> {
        let gs = self.graphs.lock().unwrap_or_else(|p| p.into_inner());
        let g =
            gs.1.get(&graph)
                .ok_or_else(|| device_err("launch_graph", format!("no graph {graph}")))?;
        g.0.launch().map_err(|e| device_err("launch_graph", e))
    }

    fn drop_graph(&self, graph: u64) {
        self.graphs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .remove(&graph);
    }
}

impl Drop for CudaDevice {
    fn drop(&mut self) {
        let _ = self.sync();
        // SAFETY: nothing runs any more on the stream that used it.
        let _ = unsafe { result::free_sync(self.workspace) };
        let Some(p) = &self.profile else { return };
        let m = p.lock().unwrap_or_else(|e| e.into_inner());
        let total: f64 = m.values().map(|v| v.1).sum();
        let mut rows: Vec<_> = m.iter().collect();
        rows.sort_by(|a, b| b.1 .1.total_cmp(&a.1 .1));
        eprintln!(
            "CUDA profile (each launch timed alone, graphs off): {:.1} ms in all",
            total * 1e3
        );
        eprintln!(
            "{:<28} {:>9} {:>11} {:>9} {:>6}",
            "kernel", "launches", "total ms", "mean µs", "share"
        );
        for (name, (n, t)) in rows {
            eprintln!(
                "{:<28} {:>9} {:>11.2} {:>9.1} {:>5.1}%",
                name,
                n,
                t * 1e3,
                t * 1e6 / *n as f64,
                100.0 * t / total
            );
        }
    }
}
