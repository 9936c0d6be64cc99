//! The machine's memory read bandwidth with the backend's threads: what decode (which streams
//! every weight once per token) is measured against.

use crate::pool::Pool;
use std::time::Instant;

/// GB/s reading a `bytes` buffer (far larger than the caches) across the pool, best of `reps`.
pub fn read_bandwidth(pool: &Pool, bytes: usize, reps: usize) -> f64 {
    let words = (bytes / 8).max(1);
    // Zeroed by the allocator (fresh pages, no pass over them): `resize` zeroed on this thread
    // and faulted every page in one at a time — 13 s for 1 GiB on a virtual machine with slow
    // page faults; the pass below faults them in over all the threads.
    let Ok(layout) = std::alloc::Layout::array::<u64>(words) else {
        return 0.0;
    };
    // SAFETY: `layout` has a non-zero size; a non-null result is `words` zeroed (valid) u64s
    // allocated by the global allocator with the layout `Vec` uses for that capacity.
    let mut buf = unsafe {
        let p = std::alloc::alloc_zeroed(layout) as *mut u64;
        if p.is_null() {
            return 0.0;
        }
        Vec::from_raw_parts(p, words, words)
    };
    // On the pages the weights are read from (`huge`).
    crate::huge::advise(&mut buf);
    // Fault the pages in (and make them distinct) before timing.
    pool.split_mut(&mut buf, 1 << 16, 4, &|i0, part| {
        for (i, w) in part.iter_mut().enumerate() {
            *w = (i0 + i) as u64;
        }
    });
    let mut best = 0f64;
    for _ in 0..reps.max(1) {
        let t0 = Instant::now();
        pool.split_mut(&mut buf, 1 << 16, 4, &|_, part| {
            // Eight independent sums so the loads, not the adds, set the pace.
            let mut acc = [0u64; 8];
            for c in part.chunks_exact(8) {
                for j in 0..8 {
                    acc[j] = acc[j].wrapping_add(c[j]);
                }
            }
            std::hint::black_box(acc);
        });
        best = best.max(bytes as f64 / t0.elapsed().as_secs_f64() / 1e9);
    }
    best
}
