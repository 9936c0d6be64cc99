//! Transparent huge pages for the large buffers streamed over and over: repacked weights (every
//! decode step reads all of them), the KV cache, activation scratch, the bandwidth probe's
//! buffer. Linux in its
//! usual `madvise` mode backs anonymous memory with 2 MiB pages only where a process asks; on
//! 4 KiB pages a pass over the weights misses the TLB every 4 KiB and the hardware prefetchers
//! stop at each page's end.

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
    #[cfg(target_os = "linux")]
    {
        extern "C" {
            fn madvise(addr: *mut std::ffi::c_void, len: usize, advice: i32) -> i32;
        }
        const MADV_HUGEPAGE: i32 = 14;
        // SAFETY: the range lies inside `v`'s allocation; the advice changes no contents, and
        // its failure (no THP support) leaves ordinary pages.
        unsafe { madvise(from as *mut std::ffi::c_void, to - from, MADV_HUGEPAGE) };
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (from, to);
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
        let at = v.as_ptr() as usize + n / 2;
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        // The mapping holding `at`, and its AnonHugePages line.
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
        let huge_kb = huge_kb.expect("the buffer's mapping in smaps");
        assert!(
            huge_kb >= 2048,
            "no huge page in an advised 8 MiB buffer ({huge_kb} kB)"
        );
        assert!(v.iter().all(|&b| b == 1));
    }
}
