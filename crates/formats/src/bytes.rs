//! Shared, cheaply clonable views of file bytes (memory-mapped) or owned buffers.

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

/// A byte range inside a shared owner (a memory map or a vector).
#[derive(Clone)]
pub struct Bytes {
    owner: Arc<dyn Owner>,
    range: Range<usize>,
}

/// What holds the bytes.
trait Owner: Send + Sync {
    fn bytes(&self) -> &[u8];
    /// Drop the resident pages of `range` (a file map re-reads them on the next access).
    fn release(&self, _range: Range<usize>) {}
}

struct MappedFile(memmap2::Mmap);

impl Owner for MappedFile {
    fn bytes(&self) -> &[u8] {
        &self.0
    }

    fn release(&self, range: Range<usize>) {
        // SAFETY: the map is read-only and file-backed, so dropping its pages loses nothing:
        // the next access faults them in from the file again. Failure only leaves them resident.
        #[cfg(unix)]
        unsafe {
            let _ = self.0.unchecked_advise_range(
                memmap2::UncheckedAdvice::DontNeed,
                range.start,
                range.len(),
            );
        }
        #[cfg(not(unix))]
        let _ = range;
    }
}

/// Anonymous memory whose released pages are given back to the OS, contents and all.
struct Scratch(memmap2::Mmap);

impl Owner for Scratch {
    fn bytes(&self) -> &[u8] {
        &self.0
    }

    fn release(&self, range: Range<usize>) {
        // Only whole pages inside the range: their neighbours may still be read.
        let page = 4096;
        let (start, end) = (range.start.div_ceil(page) * page, range.end / page * page);
        if start >= end {
            return;
        }
        // SAFETY: private anonymous memory; the pages of `start..end` lie inside the range the
        // releasing view covers, whose owner (a backend that copied them) promised not to read
        // them again, and reading them anyway gives zeros, never undefined memory.
        #[cfg(unix)]
        unsafe {
            let _ = self.0.unchecked_advise_range(
                memmap2::UncheckedAdvice::DontNeed,
                start,
                end - start,
            );
        }
    }
}

impl Owner for Vec<u8> {
    fn bytes(&self) -> &[u8] {
        self
    }
}

impl Bytes {
    /// Memory-map a whole file read-only.
    pub fn map_file(path: &Path) -> std::io::Result<Bytes> {
        let file = std::fs::File::open(path)?;
        // SAFETY: the map is read-only; suanli never writes model files while they are mapped.
        // A file truncated by another process underneath us is outside what any mmap-based loader
        // can defend against (llama.cpp and candle share this assumption).
        let map = unsafe { memmap2::Mmap::map(&file)? };
        let len = map.len();
        Ok(Bytes {
            owner: Arc::new(MappedFile(map)),
            range: 0..len,
        })
    }

    pub fn from_vec(v: Vec<u8>) -> Bytes {
        let len = v.len();
        Bytes {
            owner: Arc::new(v),
            range: 0..len,
        }
    }

    /// `len` bytes of anonymous memory filled by `fill`. Unlike other bytes, released pages
    /// lose their contents (they read as zeros): for data a backend copies into its own layout
    /// and never reads again, such as the random weights of a benchmark model, whose memory then
    /// goes back to the OS as the copies are made.
    pub fn scratch(len: usize, fill: impl FnOnce(&mut [u8])) -> std::io::Result<Bytes> {
        let mut map = memmap2::MmapMut::map_anon(len.max(1))?;
        fill(&mut map[..len]);
        Ok(Bytes {
            owner: Arc::new(Scratch(map.make_read_only()?)),
            range: 0..len,
        })
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.owner.bytes()[self.range.clone()]
    }

    pub fn len(&self) -> usize {
        self.range.len()
    }

    pub fn is_empty(&self) -> bool {
        self.range.is_empty()
    }

    /// Tell the OS these bytes will not be read soon: a memory map drops their resident pages
    /// (after a backend has copied them into its own layout). The bytes stay readable.
    pub fn release_pages(&self) {
        self.owner.release(self.range.clone());
    }

    /// A sub-range, relative to this view. `None` when out of bounds.
    pub fn slice(&self, r: Range<usize>) -> Option<Bytes> {
        if r.start > r.end || r.end > self.len() {
            return None;
        }
        Some(Bytes {
            owner: self.owner.clone(),
            range: self.range.start + r.start..self.range.start + r.end,
        })
    }
}

impl std::fmt::Debug for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bytes({} bytes)", self.len())
    }
}
