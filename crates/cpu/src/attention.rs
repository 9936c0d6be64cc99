//! Causal attention over the paged KV cache with an online softmax (no score matrix). The work
//! unit is one query row × one KV head: the K and V rows of that head are read once for all the
//! query heads that share it (grouped-query attention), block by block through the block table.

use crate::kernels::{Isa, Kernels};
use crate::pool::Pool;
use crate::KvStore;
use half::slice::HalfFloatSliceExt;
use suanli_backend::{shape_err, Act, AttnMeta, KvPages, Result};

pub fn paged_attention(
    k: &Kernels,
    pool: &Pool,
    q: &Act<Vec<f32>>,
    kv: &KvPages<KvStore>,
    meta: &AttnMeta<'_>,
    layer: usize,
    out: &mut Act<Vec<f32>>,
) -> Result<()> {
    let (nh, nkv, hd) = (meta.n_heads, meta.n_kv_heads, meta.head_dim);
    if nkv == 0
        || nh % nkv != 0
        || q.cols != nh * hd
        || out.cols != nh * hd
        || kv.spec.kv_dim() != nkv * hd
        || layer >= kv.layers.len()
    {
        return Err(shape_err(
            "attention",
            format!(
                "q [{}, {}], heads {nh}/{nkv}×{hd}, kv {:?}",
                q.rows, q.cols, kv.spec
            ),
        ));
    }
    if q.rows > out.capacity {
        return Err(shape_err("attention", "output too small"));
    }
    // Per query row: (sequence index, absolute position).
    let mut rows = vec![(0usize, 0usize); q.rows];
    for (si, s) in meta.seqs.iter().enumerate() {
        if s.q_start + s.q_len > q.rows
            || s.q_len > s.ctx_len
            || s.ctx_len.div_ceil(kv.spec.block_size) > s.block_table.len()
        {
            return Err(shape_err(
                "attention",
                format!("sequence {si}: {s:?} does not fit the batch or its block table"),
            ));
        }
        if s.block_table
            .iter()
            .any(|&b| b as usize >= kv.spec.num_blocks)
        {
            return Err(shape_err(
                "attention",
                format!("sequence {si}: block table points outside the cache"),
            ));
        }
        for i in 0..s.q_len {
            rows[s.q_start + i] = (si, s.ctx_len - s.q_len + i);
        }
    }
    out.rows = q.rows;
    let group = nh / nkv;
    let unit = group * hd;
    pool.split_mut(&mut out.buf[..q.rows * nh * hd], unit, 2, &|first, part| {
        let mut st = State::default();
        for (i, acc) in part.chunks_exact_mut(unit).enumerate() {
            let idx = first + i;
            let (t, kvh) = (idx / nkv, idx % nkv);
            let (si, pos) = rows[t];
            let job = Job {
                q: &q.buf[t * q.cols + kvh * unit..t * q.cols + (kvh + 1) * unit],
                kv,
                layer,
                kvh,
                table: &meta.seqs[si].block_table,
                len: pos + 1,
                group,
                hd,
                scale: meta.scale,
            };
            match k.isa {
                Isa::Generic => attend::<false>(&job, acc, &mut st),
                #[cfg(target_arch = "x86_64")]
                _ => {
                    // SAFETY: every level above generic includes AVX2, FMA and F16C (checked at detection).
                    unsafe { attend_avx2(&job, acc, &mut st) }
                }
                #[cfg(not(target_arch = "x86_64"))]
                _ => attend::<false>(&job, acc, &mut st),
            }
        }
    });
    Ok(())
}

struct Job<'a> {
    /// The `group` query heads that share KV head `kvh`, `[group, hd]`.
    q: &'a [f32],
    kv: &'a KvPages<KvStore>,
    layer: usize,
    kvh: usize,
    table: &'a [u32],
    /// Positions 0..len are attended.
    len: usize,
    group: usize,
    hd: usize,
    scale: f32,
}

/// Running max and sum per query head, and rows converted from F16, reused across units.
#[derive(Default)]
struct State {
    m: Vec<f32>,
    l: Vec<f32>,
    s: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
}

/// Row `off..off + hd` of a KV store as f32 (F16 rows are converted into `buf`). `F16C`: the
/// caller is compiled with the F16C instructions.
#[inline(always)]
fn kv_row<'a, const F16C: bool>(
    store: &'a KvStore,
    off: usize,
    hd: usize,
    buf: &'a mut Vec<f32>,
) -> &'a [f32] {
    match store {
        KvStore::F32(v) => &v[off..off + hd],
        KvStore::F16(v) => {
            buf.resize(hd, 0.0);
            let src = &v[off..off + hd];
            #[cfg(target_arch = "x86_64")]
            if F16C {
                use std::arch::x86_64::*;
                let mut i = 0;
                while i + 8 <= hd {
                    // SAFETY: F16C is enabled in the caller (attend_avx2); i + 8 <= hd bounds both slices.
                    unsafe {
                        let h = _mm_loadu_si128(src.as_ptr().add(i) as *const __m128i);
                        _mm256_storeu_ps(buf.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
                    }
                    i += 8;
                }
                src[i..].convert_to_f32_slice(&mut buf[i..hd]);
                return buf;
            }
            src.convert_to_f32_slice(buf);
            buf
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn attend_avx2(job: &Job<'_>, acc: &mut [f32], st: &mut State) {
    attend::<true>(job, acc, st)
}

#[inline(always)]
fn attend<const F16C: bool>(job: &Job<'_>, acc: &mut [f32], st: &mut State) {
    let (g, hd) = (job.group, job.hd);
    let (ks, vs) = &job.kv.layers[job.layer];
    let bs = job.kv.spec.block_size;
    let kvd = job.kv.spec.kv_dim();
    st.m.clear();
    st.m.resize(g, f32::NEG_INFINITY);
    st.l.clear();
    st.l.resize(g, 0.0);
    st.s.resize(g, 0.0);
    acc.fill(0.0);
    let mut p = 0;
    for &blk in job.table {
        if p >= job.len {
            break;
        }
        let n = bs.min(job.len - p);
        let base = blk as usize * bs;
        for o in 0..n {
            let off = (base + o) * kvd + job.kvh * hd;
            let mut kb = std::mem::take(&mut st.k);
            let mut vb = std::mem::take(&mut st.v);
            let (kr, vr) = (
                kv_row::<F16C>(ks, off, hd, &mut kb),
                kv_row::<F16C>(vs, off, hd, &mut vb),
            );
            for h in 0..g {
                st.s[h] = dot(&job.q[h * hd..(h + 1) * hd], kr) * job.scale;
            }
            for h in 0..g {
                let s = st.s[h];
                let a = &mut acc[h * hd..(h + 1) * hd];
                if s > st.m[h] {
                    let corr = (st.m[h] - s).exp();
                    a.iter_mut().for_each(|x| *x *= corr);
                    st.l[h] *= corr;
                    st.m[h] = s;
                }
                let w = (s - st.m[h]).exp();
                st.l[h] += w;
                for (x, v) in a.iter_mut().zip(vr) {
                    *x += w * v;
                }
            }
            st.k = kb;
            st.v = vb;
        }
        p += n;
    }
    for h in 0..g {
        let inv = 1.0 / st.l[h];
        acc[h * hd..(h + 1) * hd].iter_mut().for_each(|x| *x *= inv);
    }
}

/// Eight independent partial sums, so the loop vectorizes (inlined into each ISA's build).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}
