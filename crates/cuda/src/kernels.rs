//! The kernel sources (`kernels/*.cu`), compiled by NVRTC for the device's compute capability
//! on first use and cached as PTX under the cache directory, keyed by source and architecture.

use cudarc::driver::{CudaContext, CudaFunction, CudaModule};
use cudarc::nvrtc::{CompileOptions, Ptx};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use suanli_core::DType;

/// In concatenation order: helpers first.
const SOURCES: [(&str, &str); 8] = [
    ("common.cuh", include_str!("../kernels/common.cuh")),
    ("quant.cuh", include_str!("../kernels/quant.cuh")),
    ("qdot.cuh", include_str!("../kernels/qdot.cuh")),
    ("matvec.cu", include_str!("../kernels/matvec.cu")),
    ("ops.cu", include_str!("../kernels/ops.cu")),
    ("attention.cu", include_str!("../kernels/attention.cu")),
    ("topk.cu", include_str!("../kernels/topk.cu")),
    ("flash.cu", include_str!("../kernels/flash.cu")),
];

/// Weight types with kernels, and the suffix their kernel names carry.
pub const WEIGHT_TYPES: [(DType, &str); 11] = [
    (DType::F32, "f32"),
    (DType::F16, "f16"),
    (DType::BF16, "bf16"),
    (DType::Q4_0, "q4_0"),
    (DType::Q4_1, "q4_1"),
    (DType::Q5_0, "q5_0"),
    (DType::Q5_1, "q5_1"),
    (DType::Q8_0, "q8_0"),
    (DType::Q4K, "q4_k"),
    (DType::Q5K, "q5_k"),
    (DType::Q6K, "q6_k"),
];

/// Kernels without a weight type.
const PLAIN: [&str; 32] = [
    "rms_norm",
    "rms_norm_bf16",
    "rms_norm_groups",
    "rope",
    "silu_mul",
    "silu_mul_bf16",
    "add",
    "add_bias",
    "to_bf16",
    "to_f16",
    "gather_rows",
    "argmax_rows",
    "top_k_rows",
    "sample_rows",
    "flash_prefill_f16_64",
    "flash_prefill_f16_128",
    "flash_prefill_q8_0_64",
    "flash_prefill_q8_0_128",
    "write_kv_f32",
    "write_kv_f16",
    "rope_write_kv_f32",
    "rope_write_kv_f16",
    "rope_write_kv_q8_0",
    "attention_f32",
    "attention_f16",
    "attention_merge",
    "write_kv_q8_0",
    "attention_q8_0",
    "gather_kv_f32",
    "gather_kv_f16",
    "softmax_causal_f32",
    "softmax_causal_f16",
];
/// Kernels instantiated per weight type (`matvec_q4_k`, ...).
const TYPED: [&str; 8] = [
    "matvec",
    "matvec3",
    "matvec_glu",
    "matvec_t1",
    "matvec3_t1",
    "matvec_glu_t1",
    "dequant_bf16",
    "embed",
];

/// Every kernel the backend loads.
pub fn kernel_names() -> Vec<String> {
    let typed = WEIGHT_TYPES
        .iter()
        .flat_map(|(_, s)| TYPED.map(|k| format!("{k}_{s}")));
    PLAIN.iter().map(|s| s.to_string()).chain(typed).collect()
}

/// The kernel name for a weight type, e.g. `matvec_q4_k`; None for types without kernels.
pub fn typed_name(kind: &str, ty: DType) -> Option<String> {
    let suffix = WEIGHT_TYPES.iter().find(|(t, _)| *t == ty)?.1;
    Some(format!("{kind}_{suffix}"))
}

/// The whole program, one translation unit, with `#line` marks so NVRTC's messages name the file.
pub fn source() -> String {
    let mut s = String::new();
    for (name, text) in SOURCES {
        s += &format!("#line 1 \"{name}\"\n{text}\n");
    }
    s
}

/// Compile for `compute_{major}{minor}` (PTX; the driver finishes it for the exact device).
pub fn compile(major: i32, minor: i32) -> Result<String, String> {
    let opts = CompileOptions {
        options: vec![
            format!("--gpu-architecture=compute_{major}{minor}"),
            "--std=c++17".into(),
        ],
        ..Default::default()
    };
    let ptx = cudarc::nvrtc::compile_ptx_with_opts(source(), opts).map_err(|e| {
        format!("NVRTC could not compile the kernels for compute_{major}{minor}: {e:?}")
    })?;
    Ok(ptx.to_src())
}

fn cache_path(major: i32, minor: i32) -> Option<PathBuf> {
    let mut h = Sha256::new();
    h.update(source().as_bytes());
    h.update(format!("compute_{major}{minor}").as_bytes());
    let key: String = h
        .finalize()
        .iter()
        .take(12)
        .map(|b| format!("{b:02x}"))
        .collect();
    let base = std::env::var_os("SUANLI_HOME")
        .map(PathBuf::from)
        .or_else(|| dirs::cache_dir().map(|d| d.join("suanli")))?;
    Some(
        base.join("cuda")
            .join(format!("kernels-sm{major}{minor}-{key}.ptx")),
    )
}

/// The loaded kernels, by name.
pub struct Kernels {
    _module: Arc<CudaModule>,
    funcs: HashMap<String, CudaFunction>,
}

impl Kernels {
    pub fn load(ctx: &Arc<CudaContext>) -> Result<Kernels, String> {
        let (major, minor) = ctx
            .compute_capability()
            .map_err(|e| format!("reading the compute capability: {e}"))?;
        let cached = cache_path(major, minor);
        let from_cache = cached
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .and_then(|ptx| ctx.load_module(Ptx::from_src(ptx)).ok());
        let module = match from_cache {
            Some(m) => m,
            None => {
                let t0 = std::time::Instant::now();
                let ptx = compile(major, minor)?;
                tracing::info!(
                    "compiled the CUDA kernels for sm_{major}{minor} in {:.1}s",
                    t0.elapsed().as_secs_f64()
                );
                if let Some(p) = &cached {
                    // A cache that cannot be written only costs the next start a compile.
                    let _ = std::fs::create_dir_all(p.parent().unwrap_or(p));
                    let tmp = p.with_extension("tmp");
                    if std::fs::write(&tmp, &ptx).is_ok() {
                        let _ = std::fs::rename(&tmp, p);
                    }
                }
                ctx.load_module(Ptx::from_src(ptx))
                    .map_err(|e| format!("loading the compiled kernels: {e}"))?
            }
        };
        let mut funcs = HashMap::new();
        for name in kernel_names() {
            let f = module
                .load_function(&name)
                .map_err(|e| format!("kernel {name} missing from the module: {e}"))?;
            funcs.insert(name, f);
        }
        Ok(Kernels {
            _module: module,
            funcs,
        })
    }

    pub fn get(&self, name: &str) -> Option<&CudaFunction> {
        self.funcs.get(name)
    }
}
