//! The global allocator: mimalloc, asked for alignment only when a block needs more than a
//! word's.
//!
//! The `mimalloc` crate sends every allocation through `mi_malloc_aligned`. In mimalloc 3 its
//! fast path needs a free block already on the size class's page; when there is none, a size
//! that is not a power of two (24, 40, 160 bytes...) is over-allocated by `alignment - 1` bytes
//! into the next size class and its page marked as holding interior pointers (mimalloc#889,
//! mimalloc_rust#170). On the request path that was 16 of ~92 allocations per request, ~5,000
//! instructions (BENCHMARKS.md). Every mimalloc block is word-aligned, so alignments up to a
//! word take the plain calls, as C's `malloc` would.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// Every block mimalloc hands out is aligned to a word (its size classes are whole words).
const PLAIN_ALIGN: usize = std::mem::size_of::<usize>();

/// mimalloc, through its plain calls where the alignment allows them.
pub struct Allocator;

// SAFETY: each call forwards to mimalloc, which returns blocks of at least `layout.size()`
// bytes aligned to at least `layout.align()`: the aligned calls by contract, the plain ones
// because no block is less than word-aligned (`tests::blocks_are_aligned_as_asked`).
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= PLAIN_ALIGN {
            mi::mi_malloc(layout.size()) as *mut u8
        } else {
            mi::mi_malloc_aligned(layout.size(), layout.align()) as *mut u8
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= PLAIN_ALIGN {
            mi::mi_zalloc(layout.size()) as *mut u8
        } else {
            mi::mi_zalloc_aligned(layout.size(), layout.align()) as *mut u8
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        mi::mi_free(ptr as *mut c_void);
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if layout.align() <= PLAIN_ALIGN {
            mi::mi_realloc(ptr as *mut c_void, new_size) as *mut u8
        } else {
            mi::mi_realloc_aligned(ptr as *mut c_void, new_size, layout.align()) as *mut u8
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_aligned_as_asked() {
        let a = Allocator;
        for align in [1, 2, 4, 8, 16, 32, 64, 128, 4096] {
            // Many of each size, so that fresh pages and reused blocks are both seen.
            for size in (1..=600).chain([1000, 4095, 4096, 10_000, 70_000, 1 << 20]) {
                let layout = Layout::from_size_align(size, align).unwrap();
                let blocks: Vec<*mut u8> = (0..8).map(|_| unsafe { a.alloc(layout) }).collect();
                for &p in &blocks {
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "size {size} align {align}");
                    // The whole block is ours to write.
                    unsafe { std::ptr::write_bytes(p, 0xa5, size) };
                }
                for p in blocks {
                    unsafe { a.dealloc(p, layout) };
                }
            }
        }
    }

    #[test]
    fn zeroed_and_grown_blocks_keep_their_bytes_and_alignment() {
        let a = Allocator;
        for align in [1, 8, 16, 128] {
            let layout = Layout::from_size_align(24, align).unwrap();
            let p = unsafe { a.alloc_zeroed(layout) };
            assert_eq!(p as usize % align, 0);
            assert!(unsafe { std::slice::from_raw_parts(p, 24) }
                .iter()
                .all(|&b| b == 0));
            unsafe { std::ptr::write_bytes(p, 7, 24) };
            let q = unsafe { a.realloc(p, layout, 5000) };
            assert_eq!(q as usize % align, 0);
            assert!(unsafe { std::slice::from_raw_parts(q, 24) }
                .iter()
                .all(|&b| b == 7));
            unsafe { a.dealloc(q, Layout::from_size_align(5000, align).unwrap()) };
        }
    }
}
