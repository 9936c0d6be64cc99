//! The thin layer under `CudaBackend`: device memory as raw addresses, kernels launched by name
//! with a flat argument list, one GEMM. `driver.rs` implements it with the CUDA driver, NVRTC
//! and cuBLAS; the tests implement it with a host emulator running the same kernel source, so
//! everything above this line — argument lists, launch geometry, scratch, uploads — is the code
//! that runs on a GPU, tested without one.

use std::sync::Arc;
use suanli_backend::{BackendError, Result};

/// A device address.
pub type DevPtr = u64;

/// One kernel argument, as the kernel declares it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Arg {
    Ptr(DevPtr),
    I32(i32),
    U64(u64),
    F32(f32),
}

/// Element type of GEMM inputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Elem {
    F32,
    F16,
    BF16,
}

impl Elem {
    pub fn bytes(self) -> usize {
        match self {
            Elem::F32 => 4,
            Elem::F16 | Elem::BF16 => 2,
        }
    }
}

/// `C_i = alpha · op(A_i) · op(B_i) + beta · C_i` for i < batch, column-major as cuBLAS has it: op(A) is
/// m × k (A stored k × m with `trans_a`), op(B) k × n, C m × n with leading dimension ldc;
/// batch i starts `stride_*` elements after batch i − 1 (0: the same matrix for every i).
/// A and B are `ab` elements, C is `c_elem` (f32, or bf16 for an intermediate the next product
/// reads).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Gemm {
    pub trans_a: bool,
    pub trans_b: bool,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub alpha: f32,
    /// 0: C is overwritten; 1: the product is added to it.
    pub beta: f32,
    pub ab: Elem,
    pub a: DevPtr,
    pub lda: usize,
    pub stride_a: usize,
    pub b: DevPtr,
    pub ldb: usize,
    pub stride_b: usize,
    pub c: DevPtr,
    pub c_elem: Elem,
    pub ldc: usize,
    pub stride_c: usize,
    pub batch: usize,
}

impl Gemm {
    /// `out[n][m] = x[n][k] · w[m][k]ᵀ`, all row-major (a linear layer).
    pub fn linear(
        m: usize,
        n: usize,
        k: usize,
        ab: Elem,
        w: DevPtr,
        x: DevPtr,
        out: DevPtr,
    ) -> Gemm {
        // Row-major out[n][m] is column-major C (m × n); w row-major [m][k] is column-major
        // k × m, read transposed; x row-major [n][k] is column-major k × n.
        Gemm {
            trans_a: true,
            trans_b: false,
            m,
            n,
            k,
            alpha: 1.0,
            beta: 0.0,
            ab,
            a: w,
            lda: k,
            stride_a: 0,
            b: x,
            ldb: k,
            stride_b: 0,
            c: out,
            c_elem: Elem::F32,
            ldc: m,
            stride_c: 0,
            batch: 1,
        }
    }
}

impl Gemm {
    /// cuBLAS's argument rules (`cublasGemmStridedBatchedEx` answers CUBLAS_STATUS_INVALID_VALUE
    /// otherwise): sizes and strides fit its 32-bit integers, and each leading dimension covers
    /// its matrix's stored rows. Checked before every GEMM, here and in the emulator, so a
    /// wrong product shape is a message naming it rather than a failed status on the GPU.
    pub fn check(&self) -> Result<()> {
        let i32_max = i32::MAX as usize;
        let rows = |trans: bool, r: usize, c: usize| if trans { c } else { r };
        let bad = [
            (
                self.m > i32_max || self.n > i32_max || self.k > i32_max,
                "a size beyond i32",
            ),
            (self.batch == 0 || self.batch > i32_max, "batch count"),
            (
                self.lda < rows(self.trans_a, self.m, self.k).max(1),
                "lda below A's rows",
            ),
            (
                self.ldb < rows(self.trans_b, self.k, self.n).max(1),
                "ldb below B's rows",
            ),
            (self.ldc < self.m.max(1), "ldc below m"),
            (
                self.lda > i32_max || self.ldb > i32_max || self.ldc > i32_max,
                "a leading dimension beyond i32",
            ),
        ];
        match bad.iter().find(|(b, _)| *b) {
            Some((_, what)) => Err(device_err("gemm", format!("{what}: {self:?}"))),
            None => Ok(()),
        }
    }
}

/// The launch limits every CUDA device has (grid y ≤ 65535, x < 2³¹, blocks of 1 to 1024
/// threads in whole warps, as every kernel here assumes): a geometry past them fails at launch
/// on the GPU, so it is checked first, by the driver and by the emulator alike.
pub fn check_geometry(kernel: &str, grid: (u32, u32), block: u32) -> Result<()> {
    if grid.0 > i32::MAX as u32
        || grid.1 > 65535
        || block == 0
        || block > 1024
        || !block.is_multiple_of(32)
    {
        return Err(device_err(
            "launch",
            format!("{kernel}: grid {grid:?} of {block}-thread blocks is past the device's limits"),
        ));
    }
    Ok(())
}

impl Arg {
    /// Each argument in an 8-byte slot, as `cuLaunchKernel` reads them (a parameter takes as many
    /// bytes of its slot as it has).
    pub fn slots(args: &[Arg]) -> Vec<[u8; 8]> {
        args.iter()
            .map(|a| {
                let mut s = [0u8; 8];
                match *a {
                    Arg::Ptr(p) | Arg::U64(p) => s.copy_from_slice(&p.to_le_bytes()),
                    Arg::I32(v) => s[..4].copy_from_slice(&v.to_le_bytes()),
                    Arg::F32(v) => s[..4].copy_from_slice(&v.to_le_bytes()),
                }
                s
            })
            .collect()
    }
}

pub trait Device: Send + Sync + 'static {
    /// `bytes` of zeroed device memory.
    fn alloc(&self, bytes: usize) -> Result<DevPtr>;
    fn free(&self, p: DevPtr);
    /// Queue a copy from the host; `src` may be reused once this returns.
    fn htod(&self, dst: DevPtr, src: &[u8]) -> Result<()>;
    /// Copy to the host, waiting for all queued work first.
    fn dtoh(&self, src: DevPtr, dst: &mut [u8]) -> Result<()>;
    fn dtod(&self, dst: DevPtr, src: DevPtr, bytes: usize) -> Result<()>;
    /// Launch `kernel` on a (grid.0 × grid.1) grid of `block`-thread blocks.
    fn launch(&self, kernel: &str, grid: (u32, u32), block: u32, args: &[Arg]) -> Result<()>;
    /// A (strided, batched) GEMM in cuBLAS's column-major terms; f32 accumulation and output.
    fn gemm(&self, g: &Gemm) -> Result<()>;
    fn sync(&self) -> Result<()>;
    /// Free device memory in bytes.
    fn mem_free(&self) -> Result<usize>;

    /// Start recording launches instead of running them (CUDA stream capture). `false`: this
    /// device cannot record, and the launches run as they come.
    fn begin_capture(&self) -> Result<bool> {
        Ok(false)
    }
    /// Stop recording; the id of a replayable graph of the recorded launches.
    fn end_capture(&self) -> Result<u64> {
        Err(device_err(
            "end_capture",
            "this device does not record graphs",
        ))
    }
    fn launch_graph(&self, _graph: u64) -> Result<()> {
        Err(device_err(
            "launch_graph",
            "this device does not record graphs",
        ))
    }
    fn drop_graph(&self, _graph: u64) {}
}

pub fn device_err(op: &'static str, detail: impl std::fmt::Display) -> BackendError {
    BackendError::Device {
        backend: "cuda",
        op,
        detail: detail.to_string(),
    }
}

/// Owned device memory, freed on drop.
pub struct DevBuf {
    pub ptr: DevPtr,
    pub bytes: usize,
    dev: Arc<dyn Device>,
}

impl DevBuf {
    pub fn new(dev: &Arc<dyn Device>, bytes: usize, what: &'static str) -> Result<DevBuf> {
        let ptr = dev
            .alloc(bytes.max(4))
            .map_err(|e| BackendError::OutOfMemory {
                what,
                detail: e.to_string(),
            })?;
        Ok(DevBuf {
            ptr,
            bytes,
            dev: dev.clone(),
        })
    }
    pub fn from_host(dev: &Arc<dyn Device>, data: &[u8], what: &'static str) -> Result<DevBuf> {
        let b = DevBuf::new(dev, data.len(), what)?;
        if !data.is_empty() {
            dev.htod(b.ptr, data)?;
        }
        Ok(b)
    }
    pub fn arg(&self) -> Arg {
        Arg::Ptr(self.ptr)
    }
}

impl Drop for DevBuf {
    fn drop(&mut self) {
        self.dev.free(self.ptr);
    }
}

pub fn f32_bytes(v: &[f32]) -> &[u8] {
    // SAFETY: f32 has no padding and any byte pattern is a valid u8.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast(), std::mem::size_of_val(v)) }
}
pub fn u32_bytes(v: &[u32]) -> &[u8] {
    // SAFETY: as above.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast(), std::mem::size_of_val(v)) }
}
pub fn f32_bytes_mut(v: &mut [f32]) -> &mut [u8] {
    // SAFETY: every byte pattern is a valid f32.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast(), std::mem::size_of_val(v)) }
}
pub fn u32_bytes_mut(v: &mut [u32]) -> &mut [u8] {
    // SAFETY: every byte pattern is a valid u32.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast(), std::mem::size_of_val(v)) }
}
