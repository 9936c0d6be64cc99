//! Launch replay through graphs: kernel launches and GEMMs are held back until the host next
//! needs the device (a copy, a free, a sync), and the held sequence is compared with sequences
//! seen before. The second time the same sequence (same kernels, geometry and arguments — buffers
//! included) comes, it is recorded into a graph; from then on it runs as one graph launch instead
//! of hundreds of launches. A decode step is, layer after layer, the same sequence every
//! time — only the contents of the position / slot / block-table buffers change, and those are
//! written by copies before the held launches run. Nothing about results changes: a graph runs
//! exactly the launches it replaces, in order.

use crate::device::{Arg, DevPtr, Device, Gemm};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use suanli_backend::Result;

/// A held piece of device work: a kernel launch or a GEMM.
#[derive(Clone, Debug, PartialEq)]
enum Launch {
    Kernel {
        kernel: String,
        grid: (u32, u32),
        block: u32,
        args: Vec<Arg>,
    },
    Gemm(Gemm),
}

struct Entry {
    launches: Vec<Launch>,
    graph: Option<u64>,
    /// Recording failed once (e.g. a library call that cannot be captured): always run plain.
    plain: bool,
}

/// Sequences shorter than this run as they are (a graph launch saves nothing on them).
const MIN_GRAPH_LAUNCHES: usize = 4;
/// Recorded graphs kept; past this the cache starts over (shapes change rarely).
const MAX_GRAPHS: usize = 256;

#[derive(Default)]
struct State {
    pending: Vec<Launch>,
    seen: HashMap<u64, Entry>,
    /// Graph launches and plain launches, for tests and statistics.
    graph_runs: u64,
    plain_runs: u64,
}

pub struct GraphDevice {
    inner: Arc<dyn Device>,
    st: Mutex<State>,
}

fn key(ls: &[Launch]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for l in ls {
        match l {
            Launch::Kernel {
                kernel,
                grid,
                block,
                args,
            } => {
                kernel.hash(&mut h);
                grid.hash(&mut h);
                block.hash(&mut h);
                for a in args {
                    match *a {
                        Arg::Ptr(p) | Arg::U64(p) => p.hash(&mut h),
                        Arg::I32(v) => v.hash(&mut h),
                        Arg::F32(v) => v.to_bits().hash(&mut h),
                    }
                }
            }
            Launch::Gemm(g) => {
                (
                    g.trans_a, g.trans_b, g.m, g.n, g.k, g.ab, g.a, g.lda, g.stride_a,
                )
                    .hash(&mut h);
                (
                    g.b,
                    g.ldb,
                    g.stride_b,
                    g.c,
                    g.c_elem,
                    g.ldc,
                    g.stride_c,
                    g.batch,
                    g.alpha.to_bits(),
                    g.beta.to_bits(),
                )
                    .hash(&mut h);
            }
        }
    }
    h.finish()
}

fn issue(dev: &dyn Device, l: &Launch) -> Result<()> {
    match l {
        Launch::Kernel {
            kernel,
            grid,
            block,
            args,
        } => dev.launch(kernel, *grid, *block, args),
        Launch::Gemm(g) => dev.gemm(g),
    }
}

impl GraphDevice {
    pub fn new(inner: Arc<dyn Device>) -> GraphDevice {
        GraphDevice {
            inner,
            st: Mutex::new(State::default()),
        }
    }

    /// (graph launches, plain launches) so far.
    pub fn counts(&self) -> (u64, u64) {
        let st = self.st.lock().unwrap_or_else(|p| p.into_inner());
        (st.graph_runs, st.plain_runs)
    }

    fn run_plain(&self, st: &mut State, ls: &[Launch]) -> Result<()> {
        for l in ls {
            issue(&*self.inner, l)?;
        }
        st.plain_runs += ls.len() as u64;
        Ok(())
    }

    /// Issue the held launches: as a recorded graph when this sequence has been seen before.
    fn flush(&self) -> Result<()> {
        let mut st = self.st.lock().unwrap_or_else(|p| p.into_inner());
        let pending = std::mem::take(&mut st.pending);
        if pending.is_empty() {
            return Ok(());
        }
        if pending.len() < MIN_GRAPH_LAUNCHES {
            return self.run_plain(&mut st, &pending);
        }
        let k = key(&pending);
        let known = st.seen.get(&k).is_some_and(|e| e.launches == pending);
        if !known {
            if st.seen.len() >= MAX_GRAPHS {
                for (_, e) in st.seen.drain() {
                    if let Some(g) = e.graph {
                        self.inner.drop_graph(g);
                    }
                }
            }
            self.run_plain(&mut st, &pending)?;
            st.seen.insert(
                k,
                Entry {
                    launches: pending,
                    graph: None,
                    plain: false,
                },
            );
            return Ok(());
        }
        if st.seen.get(&k).is_some_and(|e| e.plain) {
            return self.run_plain(&mut st, &pending);
        }
        let graph = match st.seen.get(&k).and_then(|e| e.graph) {
            Some(g) => g,
            None => {
                // Second sighting: record it. If recording fails, this sequence runs plain from
                // now on (nothing has run yet: a capture only records).
                if !self.inner.begin_capture()? {
                    return self.run_plain(&mut st, &pending);
                }
                let recorded = pending.iter().try_for_each(|l| issue(&*self.inner, l));
                let g = self.inner.end_capture();
                match (recorded, g) {
                    (Ok(()), Ok(g)) => {
                        if let Some(e) = st.seen.get_mut(&k) {
                            e.graph = Some(g);
                        }
                        g
                    }
                    (r, g) => {
                        let why = r
                            .err()
                            .or(g.err())
                            .map(|e| e.to_string())
                            .unwrap_or_default();
                        tracing::warn!("a launch sequence could not be recorded as a graph ({why}); running it plain");
                        if let Some(e) = st.seen.get_mut(&k) {
                            e.plain = true;
                        }
                        return self.run_plain(&mut st, &pending);
                    }
                }
            }
        };
        self.inner.launch_graph(graph)?;
        st.graph_runs += 1;
        Ok(())
    }
}

impl Device for GraphDevice {
    fn alloc(&self, bytes: usize) -> Result<DevPtr> {
        self.inner.alloc(bytes)
    }
    fn free(&self, p: DevPtr) {
        // Held launches may still use it.
        let _ = self.flush();
        self.inner.free(p)
    }
    fn htod(&self, dst: DevPtr, src: &[u8]) -> Result<()> {
        self.flush()?;
        self.inner.htod(dst, src)
    }
    fn dtoh(&self, src: DevPtr, dst: &mut [u8]) -> Result<()> {
        self.flush()?;
        self.inner.dtoh(src, dst)
    }
    fn dtod(&self, dst: DevPtr, src: DevPtr, bytes: usize) -> Result<()> {
        self.flush()?;
        self.inner.dtod(dst, src, bytes)
    }
    fn launch(&self, kernel: &str, grid: (u32, u32), block: u32, args: &[Arg]) -> Result<()> {
        let mut st = self.st.lock().unwrap_or_else(|p| p.into_inner());
        st.pending.push(Launch::Kernel {
            kernel: kernel.to_owned(),
            grid,
            block,
            args: args.to_vec(),
        });
        Ok(())
    }
    fn gemm(&self, g: &Gemm) -> Result<()> {
        let mut st = self.st.lock().unwrap_or_else(|p| p.into_inner());
        st.pending.push(Launch::Gemm(*g));
        Ok(())
    }
    fn sync(&self) -> Result<()> {
        self.flush()?;
        self.inner.sync()
    }
    fn mem_free(&self) -> Result<usize> {
        self.inner.mem_free()
    }
}

impl Drop for GraphDevice {
    fn drop(&mut self) {
        let _ = self.flush();
        let st = self.st.get_mut().unwrap_or_else(|p| p.into_inner());
        for (_, e) in st.seen.drain() {
            if let Some(g) = e.graph {
                self.inner.drop_graph(g);
            }
        }
    }
}
