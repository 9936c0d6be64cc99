//! `EmuBackend`: the backend contract on the CUDA kernels executed by the host emulator
//! (`cuda_emu.h`), with the host-side logic of `CudaBackend` (`src/lib.rs`): the same kernel per
//! op and batch size, the same launch geometry (in `emu_kernels.cpp`), `attention_rows` shared,
//! and cuBLAS's part (bf16 × bf16 → f32 GEMM) computed here. Buffers are host vectors.

use libloading::{Library, Symbol};
use std::path::Path;
use std::process::Command;
use suanli_backend::{
    shape_err, Act, AttnMeta, Backend, Capabilities, HostTensor, KvDType, KvPages, KvSpec, Result,
    RopeParams, RopeStyle, Weight, WeightRole,
};
use suanli_core::{quant, DType};

pub enum EmuWeight {
    Raw { data: Vec<u8>, row_bytes: usize },
    F32(Vec<f32>),
}

pub enum EmuKv {
    F32(Vec<f32>),
    F16(Vec<u16>),
}

pub struct EmuBackend {
    lib: Library,
    caps: Capabilities,
}

/// Build the emulated kernels as a shared library in `dir` and load it.
pub fn build(dir: &Path) -> EmuBackend {
    let root = env!("CARGO_MANIFEST_DIR");
    let so = dir.join("libsuanli_cuda_emu.so");
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let out = Command::new(&cxx)
        .args([
            "-O2",
            "-std=c++20",
            "-shared",
            "-fPIC",
            "-Wno-unknown-pragmas",
            "-I",
        ])
        .arg(format!("{root}/kernels"))
        .arg(format!("{root}/tests/emu/emu_kernels.cpp"))
        .arg("-o")
        .arg(&so)
        .output()
        .unwrap_or_else(|e| panic!("running {cxx} (a C++ compiler is needed for this test): {e}"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // SAFETY: the library is ours, built just now; its functions have the signatures used below.
    let lib = unsafe { Library::new(&so) }.expect("loading the emulated kernels");
    EmuBackend {
        lib,
        caps: Capabilities {
            name: "cuda-emulated",
            detail: "CUDA kernels on the host emulator".into(),
            weight_dtypes: suanli_cuda::WEIGHT_TYPES.iter().map(|(t, _)| *t).collect(),
            kv_dtypes: vec![KvDType::F16, KvDType::F32],
        },
    }
}

macro_rules! call {
    ($self:ident, $name:literal, fn($($t:ty),*) -> $r:ty, $($arg:expr),*) => {{
        // SAFETY: the symbol's C signature is the one named here (emu_kernels.cpp); every
        // pointer refers to a live buffer sized as the kernel reads or writes it.
        unsafe {
            let f: Symbol<unsafe extern "C" fn($($t),*) -> $r> = $self.lib.get($name).expect("an emu_ symbol");
            f($($arg),*)
        }
    }};
}

fn bf16_round(v: &[u16]) -> Vec<f32> {
    v.iter()
        .map(|&b| f32::from_bits((b as u32) << 16))
        .collect()
}

impl EmuBackend {
    fn matmul(
        &self,
        x: &[f32],
        n: usize,
        w: &Weight<EmuWeight>,
        bias: Option<&Weight<EmuWeight>>,
        out: &mut [f32],
    ) -> Result<()> {
        let EmuWeight::Raw { data, row_bytes } = &w.store else {
            return Err(shape_err("linear", "a vector weight used as a matrix"));
        };
        let bias = match bias.map(|b| &b.store) {
            None => None,
            Some(EmuWeight::F32(v)) if v.len() == w.rows => Some(v),
            Some(_) => return Err(shape_err("linear", "bad bias")),
        };
        let (m, k) = (w.rows, w.cols);
        let ty = w.dtype.ggml_id() as i32;
        if n <= 8 {
            let bp = bias.map_or(std::ptr::null(), |b| b.as_ptr());
            let r = call!(
                self,
                b"emu_matvec",
                fn(i32, *const u8, i32, i32, u64, *const f32, i32, *const f32, *mut f32) -> i32,
                ty,
                data.as_ptr(),
                m as i32,
                k as i32,
                *row_bytes as u64,
                x.as_ptr(),
                n as i32,
                bp,
                out.as_mut_ptr()
            );
            assert_eq!(r, 0);
            return Ok(());
        }
        // The tensor-core path: weights and activations through bf16, f32 accumulation.
        let (wf, xf): (Vec<f32>, Vec<f32>) = if w.dtype == DType::F32 {
            let mut wf = vec![0f32; m * k];
            quant::dequantize(DType::F32, data, &mut wf).unwrap();
            (wf, x[..n * k].to_vec())
        } else {
            let mut wb = vec![0u16; m * k];
            if w.dtype == DType::BF16 {
                for (o, c) in wb.iter_mut().zip(data.chunks_exact(2)) {
                    *o = u16::from_le_bytes([c[0], c[1]]);
                }
            } else {
                let r = call!(
                    self,
                    b"emu_dequant_bf16",
                    fn(i32, *const u8, i32, i32, u64, *mut u16) -> i32,
                    ty,
                    data.as_ptr(),
                    m as i32,
                    k as i32,
                    *row_bytes as u64,
                    wb.as_mut_ptr()
                );
                assert_eq!(r, 0);
            }
            let mut xb = vec![0u16; n * k];
            call!(
                self,
                b"emu_to_bf16",
                fn(*const f32, u64, *mut u16) -> (),
                x.as_ptr(),
                (n * k) as u64,
                xb.as_mut_ptr()
            );
            (bf16_round(&wb), bf16_round(&xb))
        };
        for t in 0..n {
            for r in 0..m {
                let s: f32 = wf[r * k..][..k]
                    .iter()
                    .zip(&xf[t * k..][..k])
                    .map(|(a, b)| a * b)
                    .sum();
                out[t * m + r] = s;
            }
        }
        if let Some(b) = bias {
            call!(
                self,
                b"emu_add_bias",
                fn(*mut f32, *const f32, i32, u64) -> (),
                out.as_mut_ptr(),
                b.as_ptr(),
                m as i32,
                (n * m) as u64
            );
        }
        Ok(())
    }
}

impl Backend for EmuBackend {
    type Buffer = Vec<f32>;
    type KvBuffer = EmuKv;
    type WeightStore = EmuWeight;

    fn caps(&self) -> &Capabilities {
        &self.caps
    }

    fn prepare_weight(&self, host: HostTensor<'_>) -> Result<Weight<EmuWeight>> {
        let rb = host
            .dtype
            .row_bytes(host.cols)
            .map_err(|e| shape_err("prepare_weight", e.to_string()))?;
        let store = if host.role == WeightRole::Vector {
            let mut v = vec![0f32; host.rows * host.cols];
            quant::dequantize(host.dtype, host.bytes.as_slice(), &mut v)
                .map_err(|e| shape_err("prepare_weight", e.to_string()))?;
            EmuWeight::F32(v)
        } else {
            EmuWeight::Raw {
                data: host.bytes.as_slice().to_vec(),
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

    fn alloc_act(&self, capacity: usize, cols: usize) -> Result<Act<Vec<f32>>> {
        Ok(Act {
            rows: 0,
            cols,
            capacity,
            buf: vec![0.0; capacity.max(1) * cols],
        })
    }

    fn alloc_kv(&self, spec: KvSpec) -> Result<KvPages<EmuKv>> {
        let n = spec.slots() * spec.kv_dim();
        let one = || match spec.dtype {
            KvDType::F32 => Ok(EmuKv::F32(vec![0.0; n])),
            KvDType::F16 => Ok(EmuKv::F16(vec![0; n])),
            KvDType::Q8_0 => Err(shape_err("alloc_kv", "f16 or f32 only")),
        };
        let mut layers = Vec::new();
        for _ in 0..spec.n_layers {
            layers.push((one()?, one()?));
        }
        Ok(KvPages { spec, layers })
    }

    fn upload(&self, data: &[f32], rows: usize, out: &mut Act<Vec<f32>>) -> Result<()> {
        out.buf[..data.len()].copy_from_slice(data);
        out.rows = rows;
        Ok(())
    }

    fn download(&self, x: &Act<Vec<f32>>) -> Result<Vec<f32>> {
        Ok(x.buf[..x.rows * x.cols].to_vec())
    }

    fn embed(&self, table: &Weight<EmuWeight>, ids: &[u32], out: &mut Act<Vec<f32>>) -> Result<()> {
        let EmuWeight::Raw { data, row_bytes } = &table.store else {
            panic!("vector table")
        };
        assert!(ids.iter().all(|&i| (i as usize) < table.rows));
        let r = call!(
            self,
            b"emu_embed",
            fn(i32, *const u8, i32, i32, u64, *const u32, i32, *mut f32) -> i32,
            table.dtype.ggml_id() as i32,
            data.as_ptr(),
            table.rows as i32,
            table.cols as i32,
            *row_bytes as u64,
            ids.as_ptr(),
            ids.len() as i32,
            out.buf.as_mut_ptr()
        );
        assert_eq!(r, 0);
        out.rows = ids.len();
        Ok(())
    }

    fn rms_norm(
        &self,
        x: &Act<Vec<f32>>,
        w: &Weight<EmuWeight>,
        eps: f32,
        out: &mut Act<Vec<f32>>,
    ) -> Result<()> {
        let EmuWeight::F32(wv) = &w.store else {
            panic!("matrix as norm")
        };
        call!(
            self,
            b"emu_rms_norm",
            fn(*const f32, *const f32, i32, i32, f32, *mut f32) -> (),
            x.buf.as_ptr(),
            wv.as_ptr(),
            x.rows as i32,
            x.cols as i32,
            eps,
            out.buf.as_mut_ptr()
        );
        out.rows = x.rows;
        Ok(())
    }

    fn rms_norm_groups(
        &self,
        x: &mut Act<Vec<f32>>,
        w: &Weight<EmuWeight>,
        eps: f32,
    ) -> Result<()> {
        let EmuWeight::F32(wv) = &w.store else {
            panic!("matrix as norm")
        };
        let groups = (x.rows * x.cols / w.cols) as u64;
        call!(
            self,
            b"emu_rms_norm_groups",
            fn(*mut f32, *const f32, i32, u64, f32) -> (),
            x.buf.as_mut_ptr(),
            wv.as_ptr(),
            w.cols as i32,
            groups,
            eps
        );
        Ok(())
    }

    fn linear(
        &self,
        x: &Act<Vec<f32>>,
        w: &Weight<EmuWeight>,
        bias: Option<&Weight<EmuWeight>>,
        out: &mut Act<Vec<f32>>,
    ) -> Result<()> {
        out.rows = x.rows;
        self.matmul(&x.buf, x.rows, w, bias, &mut out.buf)
    }

    fn rope(&self, x: &mut Act<Vec<f32>>, positions: &[u32], rope: &RopeParams) -> Result<()> {
        call!(
            self,
            b"emu_rope",
            fn(*mut f32, *const u32, *const f32, i32, i32, i32, i32, i32) -> (),
            x.buf.as_mut_ptr(),
            positions.as_ptr(),
            rope.inv_freq.as_ptr(),
            x.rows as i32,
            rope.n_heads as i32,
            rope.head_dim as i32,
            rope.rotary_dim as i32,
            (rope.style == RopeStyle::Neox) as i32
        );
        Ok(())
    }

    fn write_kv(
        &self,
        k: &Act<Vec<f32>>,
        v: &Act<Vec<f32>>,
        slots: &[u32],
        kv: &mut KvPages<EmuKv>,
        layer: usize,
    ) -> Result<()> {
        let kv_dim = kv.spec.kv_dim();
        assert!(slots.iter().all(|&s| (s as usize) < kv.spec.slots()));
        let (kc, vc) = &mut kv.layers[layer];
        let (f16, kp, vp): (i32, *mut std::ffi::c_void, *mut std::ffi::c_void) = match (kc, vc) {
            (EmuKv::F32(a), EmuKv::F32(b)) => (0, a.as_mut_ptr().cast(), b.as_mut_ptr().cast()),
            (EmuKv::F16(a), EmuKv::F16(b)) => (1, a.as_mut_ptr().cast(), b.as_mut_ptr().cast()),
            _ => unreachable!(),
        };
        call!(
            self,
            b"emu_write_kv",
            fn(
                i32,
                *const f32,
                *const f32,
                *const u32,
                i32,
                i32,
                *mut std::ffi::c_void,
                *mut std::ffi::c_void,
            ) -> (),
            f16,
            k.buf.as_ptr(),
            v.buf.as_ptr(),
            slots.as_ptr(),
            slots.len() as i32,
            kv_dim as i32,
            kp,
            vp
        );
        Ok(())
    }

    fn attention(
        &self,
        q: &Act<Vec<f32>>,
        kv: &KvPages<EmuKv>,
        meta: &AttnMeta<'_>,
        layer: usize,
        out: &mut Act<Vec<f32>>,
    ) -> Result<()> {
        let (tables, row_meta) = suanli_cuda::attention_rows(meta, q.rows, &kv.spec)?;
        let (kc, vc) = &kv.layers[layer];
        let (f16, kp, vp): (i32, *const std::ffi::c_void, *const std::ffi::c_void) = match (kc, vc)
        {
            (EmuKv::F32(a), EmuKv::F32(b)) => (0, a.as_ptr().cast(), b.as_ptr().cast()),
            (EmuKv::F16(a), EmuKv::F16(b)) => (1, a.as_ptr().cast(), b.as_ptr().cast()),
            _ => unreachable!(),
        };
        call!(
            self,
            b"emu_attention",
            fn(
                i32,
                *const f32,
                *const std::ffi::c_void,
                *const std::ffi::c_void,
                *const u32,
                *const u32,
                i32,
                i32,
                i32,
                i32,
                i32,
                f32,
                *mut f32,
            ) -> (),
            f16,
            q.buf.as_ptr(),
            kp,
            vp,
            tables.as_ptr(),
            row_meta.as_ptr(),
            q.rows as i32,
            meta.n_heads as i32,
            meta.n_kv_heads as i32,
            meta.head_dim as i32,
            kv.spec.block_size as i32,
            meta.scale,
            out.buf.as_mut_ptr()
        );
        out.rows = q.rows;
        Ok(())
    }

    fn silu_mul(
        &self,
        gate: &Act<Vec<f32>>,
        up: &Act<Vec<f32>>,
        out: &mut Act<Vec<f32>>,
    ) -> Result<()> {
        let n = (gate.rows * gate.cols) as u64;
        call!(
            self,
            b"emu_silu_mul",
            fn(*const f32, *const f32, u64, *mut f32) -> (),
            gate.buf.as_ptr(),
            up.buf.as_ptr(),
            n,
            out.buf.as_mut_ptr()
        );
        out.rows = gate.rows;
        Ok(())
    }

    fn add(&self, acc: &mut Act<Vec<f32>>, x: &Act<Vec<f32>>) -> Result<()> {
        let n = (x.rows * x.cols) as u64;
        call!(
            self,
            b"emu_add",
            fn(*mut f32, *const f32, u64) -> (),
            acc.buf.as_mut_ptr(),
            x.buf.as_ptr(),
            n
        );
        Ok(())
    }

    fn logits(
        &self,
        x: &Act<Vec<f32>>,
        rows: &[u32],
        lm_head: &Weight<EmuWeight>,
        out: &mut [f32],
    ) -> Result<()> {
        let k = x.cols;
        assert!(rows.iter().all(|&r| (r as usize) < x.rows));
        let mut g = vec![0f32; rows.len() * k];
        call!(
            self,
            b"emu_gather_rows",
            fn(*const f32, *const u32, i32, i32, *mut f32) -> (),
            x.buf.as_ptr(),
            rows.as_ptr(),
            rows.len() as i32,
            k as i32,
            g.as_mut_ptr()
        );
        self.matmul(&g, rows.len(), lm_head, None, out)
    }
}

impl EmuBackend {
    /// `CudaBackend::argmax_logits` on the emulator: the index of each row's largest value.
    pub fn argmax(&self, x: &[f32], n: usize, cols: usize) -> Vec<u32> {
        let mut out = vec![0u32; n];
        call!(
            self,
            b"emu_argmax_rows",
            fn(*const f32, i32, i32, *mut u32) -> (),
            x.as_ptr(),
            n as i32,
            cols as i32,
            out.as_mut_ptr()
        );
        out
    }
}
