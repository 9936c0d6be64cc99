//! Activation buffers that start on a cache line. A `Vec<f32>` of a few MiB comes from `mmap`
//! through malloc, 16 bytes past a page boundary, so every 16-float row of a product's output
//! (a group of 16 weight rows) straddled two lines: two read-for-ownership misses per store,
//! and no whole-line (non-temporal) stores at all.

use std::alloc::{alloc_zeroed, Layout};
use std::ops::{Deref, DerefMut};

/// One cache line of f32.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([f32; 16]);

/// `len` f32, zeroed, starting on a 64-byte boundary (the tail of the last line is padding).
pub struct ActBuf {
    lines: Vec<Line>,
    len: usize,
}

impl ActBuf {
    /// Zeroed by the allocator (fresh pages stay untouched), then advised onto huge pages
    /// before anything writes them. None when the allocator refuses.
    pub fn zeroed(len: usize) -> Option<ActBuf> {
        let n = len.div_ceil(16);
        let mut lines = if n == 0 {
            Vec::new()
        } else {
            let layout = Layout::array::<Line>(n).ok()?;
            // SAFETY: `layout` is `Line`'s array layout of `n > 0` elements (non-zero size); all-zero
            // bytes are a valid `Line`, so the vector owns `n` initialised elements, allocated
            // as a `Vec<Line>` of capacity `n` would be.
            unsafe {
                let p = alloc_zeroed(layout) as *mut Line;
                if p.is_null() {
                    return None;
                }
                Vec::from_raw_parts(p, n, n)
            }
        };
        crate::huge::advise(&mut lines);
        Some(ActBuf { lines, len })
    }
}

impl Deref for ActBuf {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        // SAFETY: the lines hold 16 × lines.len() ≥ len initialised f32, contiguous.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr() as *const f32, self.len) }
    }
}

impl DerefMut for ActBuf {
    fn deref_mut(&mut self) -> &mut [f32] {
        // SAFETY: as `deref`, borrowed mutably through `self`.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr() as *mut f32, self.len) }
    }
}

#[cfg(test)]
mod tests {
    use super::ActBuf;

    #[test]
    fn buffers_start_on_a_line_and_are_zeroed() {
        for len in [0, 1, 15, 16, 17, 1000, 3 << 20] {
            let mut b = ActBuf::zeroed(len).unwrap();
            assert_eq!(b.len(), len);
            assert_eq!(b.as_ptr() as usize % 64, 0, "{len}");
            assert!(b.iter().all(|&v| v == 0.0));
            if len > 0 {
                b[len - 1] = 1.0;
                assert_eq!(b[len - 1], 1.0);
            }
        }
    }
}
