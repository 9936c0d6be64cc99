//! Transparent huge pages for the large buffers streamed over and over: repacked weights (every
//! decode step reads all of them), the KV cache, activation scratch, the bandwidth probe's
//! buffer. Linux in its
//! usual `madvise` mode backs anonymous memory with 2 MiB pages only where a process asks; on
//! 4 KiB pages a pass over the weights misses the TLB every 4 KiB and the hardware prefetchers
//! stop at each page's end.

#[cfg(not(target_os = "linux"))]
use std::alloc::Layout;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, Weak};

/// Buffers below this get no advice (a huge page needs 2 MiB aligned inside the buffer).
const HUGE: usize = 2 << 20;

/// Ask for huge pages for the whole pages of `v`'s allocation, before they are written (a page
/// is 4 KiB or 2 MiB from its first write on). Best effort: where the kernel has no transparent
/// huge pages (or another system), nothing changes.
pub fn advise<T>(v: &mut Vec<T>) {
    let bytes = v.capacity() * std::mem::size_of::<T>();
    if bytes < HUGE {
        return;
    }
    let start = v.as_mut_ptr() as usize;
    let (from, to) = (start.next_multiple_of(4096), (start + bytes) & !4095);
    // The range lies inside `v`'s allocation.
    advise_range(from as *mut u8, to - from);
}

/// Ask for huge pages over `len` bytes at `p` (page-aligned, inside one allocation of the
/// caller's), before they are written. Best effort: its failure leaves ordinary pages.
fn advise_range(p: *mut u8, len: usize) {
    #[cfg(target_os = "linux")]
    {
        extern "C" {
            fn madvise(addr: *mut std::ffi::c_void, len: usize, advice: i32) -> i32;
        }
        const MADV_HUGEPAGE: i32 = 14;
        // SAFETY: the caller owns the range; the advice changes no contents, and its failure
        // (no THP support) leaves ordinary pages.
        unsafe { madvise(p as *mut std::ffi::c_void, len, MADV_HUGEPAGE) };
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (p, len);
}

/// An arena's memory: 2 MiB-aligned, zero, advised whole before any byte of it is written.
struct Chunk {
    ptr: NonNull<u8>,
    size: usize,
    /// The anonymous mapping it lies in (start, length), given back on drop.
    #[cfg(target_os = "linux")]
    map: (*mut u8, usize),
    #[cfg(not(target_os = "linux"))]
    layout: Layout,
}

// SAFETY: a chunk is plain memory; `Lines` hands out disjoint ranges of it.
unsafe impl Send for Chunk {}
unsafe impl Sync for Chunk {}

#[cfg(target_os = "linux")]
mod sys {
    use std::ffi::c_void;
    extern "C" {
        pub fn mmap(
            addr: *mut c_void,
            len: usize,
            prot: i32,
            flags: i32,
            fd: i32,
            off: i64,
        ) -> *mut c_void;
        pub fn munmap(addr: *mut c_void, len: usize) -> i32;
    }
    pub const PROT_READ_WRITE: i32 = 1 | 2;
    /// MAP_PRIVATE | MAP_ANONYMOUS (the same values on x86-64 and aarch64).
    pub const PRIVATE_ANONYMOUS: i32 = 0x02 | 0x20;
}

impl Chunk {
    /// At least `bytes` of zeros. On Linux an anonymous mapping: its pages read as zero and
    /// become memory only where written, by the thread that writes them — repacking writes
    /// every weight on every thread. Zeroing an allocation first had one thread fault in and
    /// clear every page of the weights before repacking began: 42 % of Qwen2.5-Coder-1.5B's
    /// load samples, the kernel's page clearing nearly all of it.
    fn new(bytes: usize) -> Option<Chunk> {
        let size = bytes.next_multiple_of(HUGE);
        #[cfg(target_os = "linux")]
        {
            // Room to start on a 2 MiB boundary; the unused head and tail are never touched.
            let len = size.checked_add(HUGE)?;
            // SAFETY: a new private anonymous mapping; nothing else refers to its range.
            let base = unsafe {
                sys::mmap(
                    std::ptr::null_mut(),
                    len,
                    sys::PROT_READ_WRITE,
                    sys::PRIVATE_ANONYMOUS,
                    -1,
                    0,
                )
            };
            if base as isize == -1 {
                return None;
            }
            let ptr = NonNull::new((base as usize).next_multiple_of(HUGE) as *mut u8)?;
            advise_range(ptr.as_ptr(), size);
            Some(Chunk {
                ptr,
                size,
                map: (base as *mut u8, len),
            })
        }
        #[cfg(not(target_os = "linux"))]
        {
            let layout = Layout::from_size_align(size, HUGE).ok()?;
            // SAFETY: `layout` has a non-zero size (callers ask for at least one line).
            let ptr = NonNull::new(unsafe { std::alloc::alloc_zeroed(layout) })?;
            advise_range(ptr.as_ptr(), size);
            Some(Chunk { ptr, size, layout })
        }
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        // SAFETY: mapped (or allocated) in `Chunk::new` with these bounds, and no `Lines` of
        // it is left (each holds the chunk).
        #[cfg(target_os = "linux")]
        unsafe {
            sys::munmap(self.map.0 as *mut std::ffi::c_void, self.map.1);
        }
        #[cfg(not(target_os = "linux"))]
        unsafe {
            std::alloc::dealloc(self.ptr.as_ptr(), self.layout)
        }
    }
}

/// Shared arenas' size: matrices up to a quarter of it are carved one after another out of
/// the current one; larger ones get their own. Only written pages become resident, but each
/// arena's last written huge page is whole: with 64 MiB arenas the peak resident memory of
/// Qwen2.5-1.5B went 1315 → 1342 MB, with 256 MiB (address space reserved, not memory) 1329.
const ARENA: usize = 256 << 20;

/// Where ranges are carved: the arena in use and how many of its bytes are taken. Weak, so
/// that an arena whose ranges were all dropped (a model unloaded) is freed, not kept.
struct Arenas {
    size: usize,
    current: Mutex<Option<(Weak<Chunk>, usize)>>,
}

impl Arenas {
    const fn new(size: usize) -> Arenas {
        Arenas {
            size,
            current: Mutex::new(None),
        }
    }

    /// `len` bytes' arena and offset: after the last range while they fit, else in a new
    /// arena (of `len` alone above a quarter of `size`, or where `size` is refused).
    fn carve(&self, len: usize) -> Option<(Arc<Chunk>, usize)> {
        if len > self.size / 4 {
            return Some((Arc::new(Chunk::new(len)?), 0));
        }
        let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let live = cur
            .as_ref()
            .and_then(|(w, used)| Some((w.upgrade()?, *used)));
        match live {
            Some((c, used)) if used + len <= c.size => {
                *cur = Some((Arc::downgrade(&c), used + len));
                Some((c, used))
            }
            _ => {
                let c = Arc::new(Chunk::new(self.size).or_else(|| Chunk::new(len))?);
                *cur = Some((Arc::downgrade(&c), len));
                Some((c, 0))
            }
        }
    }
}

/// The weights' arenas.
static WEIGHTS: Arenas = Arenas::new(ARENA);

/// Zeroed, 64-byte aligned bytes for a repacked weight matrix, carved out of shared arenas
/// that start on a 2 MiB boundary and are advised whole, so that every 2 MiB stretch of the
/// weights can sit on one huge page. Allocated one by one, a 3 MiB matrix got a huge page only
/// where a whole aligned 2 MiB fell inside it: Qwen2.5-0.5B's per-layer matrices were 40–80 %
/// on huge pages, and one thread streams ~25 % faster, two ~10 %, from huge pages (AMD EPYC
/// Zen 4). An arena is freed when its last matrix is; its untouched tail is never resident.
pub struct Lines {
    chunk: Arc<Chunk>,
    off: usize,
    len: usize,
}

impl Lines {
    /// `len` zeroed bytes (`len` a positive multiple of 64), or `None` where memory is short.
    pub fn zeroed(len: usize) -> Option<Lines> {
        debug_assert!(len > 0 && len.is_multiple_of(64));
        // A chunk is zero when made and no range of it is carved twice: these bytes are zero.
        let (chunk, off) = WEIGHTS.carve(len)?;
        Some(Lines { chunk, off, len })
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: this `Lines`' own range of the chunk, zero from its making (`Chunk::new`).
        unsafe { std::slice::from_raw_parts(self.chunk.ptr.as_ptr().add(self.off), self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as `as_slice`; the range is this `Lines`' alone, borrowed mutably through it.
        unsafe { std::slice::from_raw_parts_mut(self.chunk.ptr.as_ptr().add(self.off), self.len) }
    }
}

// On x86-64 only: the aarch64 tests run under qemu-user, which accepts `madvise` and ignores it
// (the advice itself is architecture-independent).
#[cfg(all(test, target_os = "linux", target_arch = "x86_64"))]
mod tests {
    /// An advised 8 MiB buffer, once written, sits at least partly on 2 MiB pages (the kernel's
    /// own account in /proc/self/smaps), where the kernel offers transparent huge pages.
    #[test]
    fn advised_buffers_get_huge_pages() {
        let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .unwrap_or_default();
        if !thp.contains("[always]") && !thp.contains("[madvise]") {
            eprintln!("transparent huge pages are off here ({thp:?}): nothing to test");
            return;
        }
        let n = 8 << 20;
        let mut v: Vec<u8> = Vec::with_capacity(n);
        super::advise(&mut v);
        v.resize(n, 1);
        // The middle of the buffer (advice splits the mapping at the whole pages' edges).
        let huge_kb = huge_kb_of_mapping(v.as_ptr() as usize + n / 2);
        assert!(
            huge_kb >= 2048,
            "no huge page in an advised 8 MiB buffer ({huge_kb} kB)"
        );
        assert!(v.iter().all(|&b| b == 1));
    }

    /// The kernel's account (/proc/self/smaps) of the huge pages in the mapping holding `at`.
    fn huge_kb_of_mapping(at: usize) -> usize {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut inside = false;
        let mut huge_kb = None;
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ') {
                if let Some((a, b)) = range.split_once('-') {
                    if let (Ok(a), Ok(b)) =
                        (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
                    {
                        inside = a <= at && at < b;
                        continue;
                    }
                }
            }
            if inside {
                if let Some(kb) = line.strip_prefix("AnonHugePages:") {
                    huge_kb = kb
                        .trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<usize>()
                        .ok();
                }
            }
        }
        huge_kb.expect("the buffer's mapping in smaps")
    }

    /// Ranges follow one another in an arena while they fit; an arena whose ranges were all
    /// dropped is freed, and the next range starts a new one.
    #[test]
    fn arenas_fill_in_turn_and_are_freed_with_their_last_range() {
        let arenas = super::Arenas::new(4 << 20);
        let (a, at_a) = arenas.carve(1 << 20).unwrap();
        let (b, at_b) = arenas.carve(1 << 20).unwrap();
        assert!(std::sync::Arc::ptr_eq(&a, &b));
        assert_eq!((at_a, at_b), (0, 1 << 20));
        // Above a quarter of the arena: a chunk of its own.
        let (own, at) = arenas.carve((1 << 20) + 64).unwrap();
        assert!(!std::sync::Arc::ptr_eq(&own, &a) && at == 0);
        let (c, at_c) = arenas.carve(1 << 20).unwrap();
        assert!(std::sync::Arc::ptr_eq(&a, &c) && at_c == 2 << 20);
        // A range that no longer fits starts the next arena.
        let (d, at_d) = arenas.carve(1 << 20).unwrap();
        let (e, at_e) = arenas.carve(1 << 20).unwrap();
        assert!(std::sync::Arc::ptr_eq(&a, &d) && at_d == 3 << 20);
        assert!(!std::sync::Arc::ptr_eq(&a, &e) && at_e == 0);
        let gone = std::sync::Arc::downgrade(&e);
        drop(e);
        assert!(
            gone.upgrade().is_none(),
            "an arena with no ranges left is freed"
        );
        let (f, at_f) = arenas.carve(64).unwrap();
        assert_eq!(at_f, 0, "the next range starts a new arena");
        drop((a, b, c, d, f, own));
    }

    /// Matrices carved from an arena are zeroed, line-aligned and disjoint, and (where the
    /// kernel offers transparent huge pages) three of 3 MiB, written, sit on at least four
    /// huge pages: allocated one by one, each held at most one.
    #[test]
    fn arena_lines_are_zeroed_disjoint_and_on_huge_pages() {
        let mut m: Vec<super::Lines> = (0..3)
            .map(|_| super::Lines::zeroed(3 << 20).unwrap())
            .collect();
        let small = super::Lines::zeroed(64).unwrap();
        for (i, l) in m.iter_mut().enumerate() {
            assert_eq!(l.as_slice().as_ptr() as usize % 64, 0);
            assert!(l.as_slice().iter().all(|&b| b == 0));
            l.as_mut_slice().fill(i as u8 + 1);
        }
        for (i, l) in m.iter().enumerate() {
            assert!(
                l.as_slice().iter().all(|&b| b == i as u8 + 1),
                "matrix {i} overwritten"
            );
        }
        assert!(small.as_slice().iter().all(|&b| b == 0));
        let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .unwrap_or_default();
        if !thp.contains("[always]") && !thp.contains("[madvise]") {
            eprintln!("transparent huge pages are off here ({thp:?}): placement not tested");
            return;
        }
        // Without defragmentation at fault time, huge pages come only where memory happens to
        // have them free.
        let defrag = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/defrag")
            .unwrap_or_default();
        if defrag.contains("[never]") {
            eprintln!(
                "huge pages are never defragmented at fault time here ({defrag:?}): placement not tested"
            );
            return;
        }
        let at = m[0].as_slice().as_ptr() as usize;
        let huge_kb = huge_kb_of_mapping(at);
        assert!(
            huge_kb >= 8192,
            "the arena holds {huge_kb} kB of huge pages"
        );
    }
}
