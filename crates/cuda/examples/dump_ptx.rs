//! Print the kernels' PTX for `compute_XY` (default 90): `cargo run -p suanli-cuda --example dump_ptx -- 90 > k.ptx`,
//! then `ptxas -arch=sm_90 -v k.ptx` shows registers and spills per kernel. Needs NVRTC on LD_LIBRARY_PATH.
fn main() {
    let arch = std::env::args().nth(1).unwrap_or_else(|| "90".into());
    let (major, minor) = arch.split_at(arch.len() - 1);
    match suanli_cuda::compile(major.parse().unwrap_or(9), minor.parse().unwrap_or(0)) {
        Ok(ptx) => print!("{ptx}"),
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
}
