//! A small thread pool for per-operation parallelism in the decode loop. The calling thread
//! takes part as thread 0; workers spin briefly between operations (an operation every few
//! microseconds must not pay a futex wake-up each time), then sleep on a condition variable
//! when the engine goes idle.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// `(thread index, thread count)`.
type Job = dyn Fn(usize, usize) + Sync;

/// Busy-wait rounds before yielding the core (the next operation usually comes within microseconds).
const SPINS: u32 = 1 << 14;
/// Rounds (spinning, then yielding to other threads) before a worker goes to sleep.
const SPINS_BEFORE_SLEEP: u32 = 1 << 15;

struct Shared {
    n: usize,
    generation: AtomicUsize,
    pending: AtomicUsize,
    /// The current job, with its lifetime erased; valid while `pending > 0` (see `run`).
    job: UnsafeCell<Option<*const Job>>,
    stop: AtomicBool,
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
    panicked: AtomicBool,
}

// SAFETY: `job` is written only by `run` while no worker reads it (all workers have finished the
// previous generation, `pending == 0`), and read by workers only between the generation bump and
// their `pending` decrement, while `run` keeps the pointee alive.
unsafe impl Sync for Shared {}
unsafe impl Send for Shared {}

pub struct Pool {
    shared: Arc<Shared>,
    handles: Vec<JoinHandle<()>>,
    /// One job at a time even if the backend is shared between threads.
    busy: Mutex<()>,
    /// The matrix products run on this pool (`matmul`): what `bench` holds against the compute
    /// peak on their own, apart from attention and the rest of a prefill.
    pub products: WorkClock,
}

/// Wall time and multiply-adds of timed work, added up (relaxed atomics: read between runs).
#[derive(Default)]
pub struct WorkClock {
    nanos: AtomicU64,
    macs: AtomicU64,
}

impl WorkClock {
    pub fn add(&self, took: std::time::Duration, macs: u64) {
        self.nanos
            .fetch_add(took.as_nanos().min(u64::MAX as u128) as u64, Relaxed);
        self.macs.fetch_add(macs, Relaxed);
    }

    /// Seconds and multiply-adds so far.
    pub fn read(&self) -> (f64, u64) {
        (
            self.nanos.load(Relaxed) as f64 * 1e-9,
            self.macs.load(Relaxed),
        )
    }
}

impl Pool {
    pub fn new(n: usize) -> std::io::Result<Pool> {
        let n = n.max(1);
        let shared = Arc::new(Shared {
            n,
            generation: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            job: UnsafeCell::new(None),
            stop: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
            panicked: AtomicBool::new(false),
        });
        let mut handles = Vec::new();
        for i in 1..n {
            let s = shared.clone();
            handles.push(
                std::thread::Builder::new()
                    .name(format!("suanli-cpu-{i}"))
                    .spawn(move || worker(&s, i))?,
            );
        }
        Ok(Pool {
            shared,
            handles,
            busy: Mutex::new(()),
            products: WorkClock::default(),
        })
    }

    pub fn threads(&self) -> usize {
        self.shared.n
    }

    /// Run `f(i, n)` on every thread `i` of `n`, the caller being thread 0; returns when all are done.
    pub fn run(&self, f: &(dyn Fn(usize, usize) + Sync)) {
        let s = &*self.shared;
        if s.n == 1 {
            return f(0, 1);
        }
        let _busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: no worker is reading `job` (the previous run waited for pending == 0), and this
        // function does not return before every worker is done with `f` (pending == 0 again),
        // so erasing the lifetime never lets a worker see a dangling pointer.
        unsafe {
            let p: *const Job =
                std::mem::transmute::<&(dyn Fn(usize, usize) + Sync), &'static Job>(f);
            *s.job.get() = Some(p);
        }
        s.pending.store(s.n - 1, SeqCst);
        s.generation.fetch_add(1, SeqCst);
        if s.sleepers.load(SeqCst) > 0 {
            let _g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        let mine = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(0, s.n)));
        let mut spins = 0u32;
        while s.pending.load(Acquire) != 0 {
            spins = spins.saturating_add(1);
            if spins < SPINS {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        // SAFETY: all workers are done with this job.
        unsafe { *s.job.get() = None };
        if let Err(p) = mine {
            std::panic::resume_unwind(p);
        }
        if s.panicked.swap(false, SeqCst) {
            panic!("a CPU worker thread panicked");
        }
    }

    /// Cut `data` into pieces of whole `unit`s (about `pieces_per_thread` per thread) that the
    /// threads take in turn — a thread slowed by other load simply takes fewer — and call
    /// `f(first_unit, piece)` for each.
    pub fn split_mut<T: Send>(
        &self,
        data: &mut [T],
        unit: usize,
        pieces_per_thread: usize,
        f: &(dyn Fn(usize, &mut [T]) + Sync),
    ) {
        let unit = unit.max(1);
        let units = data.len() / unit;
        if units == 0 {
            return;
        }
        let per = units.div_ceil(self.threads() * pieces_per_thread.max(1));
        if self.threads() == 1 {
            for (c, piece) in data.chunks_mut(per * unit).enumerate() {
                f(c * per, piece);
            }
            return;
        }
        let pieces: Vec<Mutex<&mut [T]>> = data.chunks_mut(per * unit).map(Mutex::new).collect();
        self.pieces(pieces.len(), &|c| {
            let mut g = pieces[c].lock().unwrap_or_else(|e| e.into_inner());
            f(c * per, &mut g);
        });
    }

    /// Call `f(i)` for each `i` in `0..count`, the threads taking the next one in turn — a
    /// thread slowed by other load simply takes fewer.
    pub fn pieces(&self, count: usize, f: &(dyn Fn(usize) + Sync)) {
        let next = AtomicUsize::new(0);
        self.run(&|_, _| loop {
            let i = next.fetch_add(1, Relaxed);
            if i >= count {
                break;
            }
            f(i);
        });
    }
}

fn worker(s: &Shared, i: usize) {
    // Generation 0 is the pool's initial state; a job published before this thread got going
    // still counts as new.
    let mut seen = 0;
    loop {
        let mut spins = 0u32;
        loop {
            let g = s.generation.load(Acquire);
            if g != seen {
                seen = g;
                break;
            }
            if s.stop.load(Acquire) {
                return;
            }
            spins += 1;
            if spins < SPINS {
                std::hint::spin_loop();
                continue;
            }
            if spins < SPINS_BEFORE_SLEEP {
                std::thread::yield_now();
                continue;
            }
            let guard = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.sleepers.fetch_add(1, SeqCst);
            let guard = if s.generation.load(SeqCst) == seen && !s.stop.load(SeqCst) {
                s.wake.wait(guard).unwrap_or_else(|e| e.into_inner())
            } else {
                guard
            };
            s.sleepers.fetch_sub(1, SeqCst);
            drop(guard);
            spins = 0;
        }
        if s.stop.load(Acquire) {
            return;
        }
        // SAFETY: a new generation was published with a job that stays alive until we decrement
        // `pending` (see `Pool::run`).
        let job = unsafe { *s.job.get() };
        if let Some(f) = job {
            // SAFETY: as above.
            let f = unsafe { &*f };
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(i, s.n))).is_err() {
                s.panicked.store(true, SeqCst);
            }
        }
        s.pending.fetch_sub(1, Release);
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.stop.store(true, SeqCst);
        self.shared.generation.fetch_add(1, SeqCst);
        {
            let _g = self.shared.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_thread_runs_each_job_and_split_covers_all() {
        let pool = Pool::new(3).unwrap();
        for round in 0..2000 {
            let hits = AtomicUsize::new(0);
            pool.run(&|i, n| {
                assert_eq!(n, 3);
                hits.fetch_add(1 << (8 * i), SeqCst);
            });
            assert_eq!(hits.load(SeqCst), 1 | 1 << 8 | 1 << 16, "round {round}");
        }
        let mut v = vec![0usize; 1001];
        pool.split_mut(&mut v, 1, 4, &|first, part| {
            for (j, x) in part.iter_mut().enumerate() {
                *x = first + j;
            }
        });
        assert!(v.iter().enumerate().all(|(i, &x)| i == x));
        // After an idle pause long enough for the workers to sleep, jobs still run.
        std::thread::sleep(std::time::Duration::from_millis(50));
        let hits = AtomicUsize::new(0);
        pool.run(&|_, _| {
            hits.fetch_add(1, SeqCst);
        });
        assert_eq!(hits.load(SeqCst), 3);
    }
}

/// A pointer the pool's threads share, each writing cells no other touches (their pieces say
/// which); `get` is a method so that closures capture the whole `Sync` value, not the field.
#[derive(Clone, Copy)]
pub(crate) struct SharedMut<T>(pub(crate) *mut T);
// SAFETY: the users split the pointee into disjoint parts per piece.
unsafe impl<T> Send for SharedMut<T> {}
unsafe impl<T> Sync for SharedMut<T> {}

impl<T> SharedMut<T> {
    pub(crate) fn get(&self) -> *mut T {
        self.0
    }
}
