//! `EmuDevice`: the `Device` layer of the CUDA backend on the host. Memory is host memory, kernels
//! run from their source under the execution-model emulator (`cuda_emu.h`, `emu_kernels.cpp`),
//! and cuBLAS's GEMM is computed here. `CudaBackend` on top is the unmodified backend.

use libloading::Library;
use std::collections::HashMap;
use std::ffi::{c_void, CString};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use suanli_backend::Result;
use suanli_cuda::device::{check_geometry, device_err, Arg, DevPtr, Device, Elem, Gemm};
use suanli_cuda::CudaBackend;

type LaunchFn = unsafe extern "C" fn(*const i8, u32, u32, u32, *mut *mut c_void) -> i32;

#[derive(Clone)]
enum Work {
    Kernel(String, (u32, u32), u32, Vec<Arg>),
    Gemm(Gemm),
}
type Recorded = Vec<Work>;

pub struct EmuDevice {
    _lib: Library,
    launch: LaunchFn,
    mem: Mutex<HashMap<u64, std::alloc::Layout>>,
    /// Stream capture: launches recorded instead of run, and the graphs made of them.
    capture: Mutex<Option<Recorded>>,
    graphs: Mutex<HashMap<u64, Recorded>>,
    /// Kernels executed (directly or in a graph), by name.
    ran: Arc<Mutex<HashMap<String, usize>>>,
}

/// How many times each kernel ran on one emulated device.
pub type Ran = Arc<Mutex<HashMap<String, usize>>>;

/// Build the emulated kernels in `dir` and return the CUDA backend on them.
pub fn backend(dir: &Path) -> CudaBackend {
    backend_counted(dir).0
}

/// `backend`, and the count of the kernels it runs.
pub fn backend_counted(dir: &Path) -> (CudaBackend, Ran) {
    let root = env!("CARGO_MANIFEST_DIR");
    let so = dir.join(format!("libsuanli_cuda_emu_{}.so", std::process::id()));
    if !so.exists() {
        let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
        // A misaligned 16-byte load faults on the GPU: make it stop the test here as well.
        // SUANLI_EMU_ASAN=1 adds AddressSanitizer (kernels reading past a buffer or a shared
        // array); the test binary then needs LD_PRELOAD=$(c++ -print-file-name=libasan.so).
        let mut sanitize = "-fsanitize=alignment".to_owned();
        if std::env::var("SUANLI_EMU_ASAN").as_deref() == Ok("1") {
            sanitize.push_str(",address");
        }
        let out = Command::new(&cxx)
            .args([
                "-O2",
                "-std=c++20",
                "-shared",
                "-fPIC",
                "-Wno-unknown-pragmas",
                "-fno-sanitize-recover=all",
                &sanitize,
                "-I",
            ])
            .arg(format!("{root}/kernels"))
            .arg(format!("{root}/tests/emu/emu_kernels.cpp"))
            .arg("-o")
            .arg(&so)
            .output()
            .unwrap_or_else(|e| {
                panic!("running {cxx} (a C++ compiler is needed for this test): {e}")
            });
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // SAFETY: the library is ours, built just now; `emu_launch` has the signature of LaunchFn.
    let (lib, launch) = unsafe {
        let lib = Library::new(&so).expect("loading the emulated kernels");
        let f: LaunchFn = *lib.get::<LaunchFn>(b"emu_launch").expect("emu_launch");
        (lib, f)
    };
    let dev = EmuDevice {
        _lib: lib,
        launch,
        mem: Mutex::new(HashMap::new()),
        capture: Mutex::new(None),
        graphs: Mutex::new(HashMap::new()),
        ran: Ran::default(),
    };
    let ran = dev.ran.clone();
    let b = CudaBackend::with_device(
        Arc::new(dev),
        "cuda-emulated",
        "CUDA kernels on the host emulator".into(),
    );
    (b, ran)
}

impl EmuDevice {
    fn run(&self, kernel: &str, grid: (u32, u32), block: u32, args: &[Arg]) -> Result<()> {
        *self
            .ran
            .lock()
            .unwrap()
            .entry(kernel.to_owned())
            .or_default() += 1;
        let mut slots = Arg::slots(args);
        let mut params: Vec<*mut c_void> =
            slots.iter_mut().map(|s| s.as_mut_ptr().cast()).collect();
        let name = CString::new(kernel).unwrap();
        // SAFETY: as for cuLaunchKernel: one pointer per kernel parameter, to a value of its size.
        let r = unsafe {
            (self.launch)(
                name.as_ptr(),
                grid.0.max(1),
                grid.1.max(1),
                block,
                params.as_mut_ptr(),
            )
        };
        if r != 0 {
            return Err(device_err("launch", format!("no kernel {kernel}")));
        }
        Ok(())
    }
}

impl Device for EmuDevice {
    fn alloc(&self, bytes: usize) -> Result<DevPtr> {
        let layout = std::alloc::Layout::from_size_align(bytes.max(1), 256)
            .map_err(|e| device_err("alloc", e))?;
        // SAFETY: non-zero size.
        let p = unsafe { std::alloc::alloc_zeroed(layout) };
        if p.is_null() {
            return Err(device_err("alloc", format!("{bytes} bytes")));
        }
        self.mem.lock().unwrap().insert(p as u64, layout);
        Ok(p as u64)
    }
    fn free(&self, p: DevPtr) {
        if let Some(layout) = self.mem.lock().unwrap().remove(&p) {
            // SAFETY: allocated by `alloc` with this layout.
            unsafe { std::alloc::dealloc(p as *mut u8, layout) };
        }
    }
    fn htod(&self, dst: DevPtr, src: &[u8]) -> Result<()> {
        // SAFETY: the backend writes inside buffers it sized.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst as *mut u8, src.len()) };
        Ok(())
    }
    fn dtoh(&self, src: DevPtr, dst: &mut [u8]) -> Result<()> {
        // SAFETY: as above.
        unsafe { std::ptr::copy_nonoverlapping(src as *const u8, dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }
    fn dtod(&self, dst: DevPtr, src: DevPtr, bytes: usize) -> Result<()> {
        // SAFETY: as above.
        unsafe { std::ptr::copy(src as *const u8, dst as *mut u8, bytes) };
        Ok(())
    }
    fn launch(&self, kernel: &str, grid: (u32, u32), block: u32, args: &[Arg]) -> Result<()> {
        check_geometry(kernel, grid, block)?;
        if let Some(rec) = self.capture.lock().unwrap().as_mut() {
            rec.push(Work::Kernel(kernel.to_owned(), grid, block, args.to_vec()));
            return Ok(());
        }
        self.run(kernel, grid, block, args)
    }
    fn begin_capture(&self) -> Result<bool> {
        *self.capture.lock().unwrap() = Some(Vec::new());
        Ok(true)
    }
    fn end_capture(&self) -> Result<u64> {
        let rec = self.capture.lock().unwrap().take().expect("capturing");
        let mut g = self.graphs.lock().unwrap();
        let id = g.len() as u64 + 1;
        g.insert(id, rec);
        Ok(id)
    }
    fn launch_graph(&self, graph: u64) -> Result<()> {
        let rec = self.graphs.lock().unwrap()[&graph].clone();
        for w in &rec {
            match w {
                Work::Kernel(k, grid, block, args) => self.run(k, *grid, *block, args)?,
                Work::Gemm(g) => self.run_gemm(g),
            }
        }
        Ok(())
    }
    fn drop_graph(&self, graph: u64) {
        self.graphs.lock().unwrap().remove(&graph);
    }
    fn gemm(&self, g: &Gemm) -> Result<()> {
        g.check()?;
        if let Some(rec) = self.capture.lock().unwrap().as_mut() {
            rec.push(Work::Gemm(*g));
            return Ok(());
        }
        self.run_gemm(g);
        Ok(())
    }
    fn sync(&self) -> Result<()> {
        Ok(())
    }
    fn mem_free(&self) -> Result<usize> {
        Ok(8 << 30)
    }
}

impl EmuDevice {
    fn run_gemm(&self, g: &Gemm) {
        // cuBLAS's definition, element by element (column-major, optional transposes, strides).
        let get = |p: u64, i: usize| -> f32 {
            // SAFETY: indices stay inside the buffers the backend sized for this product.
            unsafe {
                match g.ab {
                    Elem::F32 => *(p as *const f32).add(i),
                    Elem::F16 => half::f16::from_bits(*(p as *const u16).add(i)).to_f32(),
                    Elem::BF16 => half::bf16::from_bits(*(p as *const u16).add(i)).to_f32(),
                }
            }
        };
        for bi in 0..g.batch {
            let (a, b) = (bi * g.stride_a, bi * g.stride_b);
            for col in 0..g.n {
                for row in 0..g.m {
                    let mut s = 0f32;
                    for l in 0..g.k {
                        let av = if g.trans_a {
                            get(g.a, a + row * g.lda + l)
                        } else {
                            get(g.a, a + l * g.lda + row)
                        };
                        let bv = if g.trans_b {
                            get(g.b, b + l * g.ldb + col)
                        } else {
                            get(g.b, b + col * g.ldb + l)
                        };
                        s += av * bv;
                    }
                    // SAFETY: C holds the batch's m × n block at this leading dimension.
                    unsafe {
                        let i = bi * g.stride_c + col * g.ldc + row;
                        match g.c_elem {
                            Elem::F32 => {
                                let c = (g.c as *mut f32).add(i);
                                *c = g.alpha * s + if g.beta == 0.0 { 0.0 } else { g.beta * *c };
                            }
                            Elem::BF16 => {
                                let c = (g.c as *mut u16).add(i);
                                let old = half::bf16::from_bits(*c).to_f32();
                                let v =
                                    g.alpha * s + if g.beta == 0.0 { 0.0 } else { g.beta * old };
                                *c = half::bf16::from_f32(v).to_bits();
                            }
                            Elem::F16 => {
                                let c = (g.c as *mut u16).add(i);
                                let old = half::f16::from_bits(*c).to_f32();
                                let v =
                                    g.alpha * s + if g.beta == 0.0 { 0.0 } else { g.beta * old };
                                *c = half::f16::from_f32(v).to_bits();
                            }
                        }
                    };
                }
            }
        }
    }
}
