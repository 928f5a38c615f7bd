//! The process allocator: the system allocator, plus recycling of large blocks.
//!
//! Every epoch the series-state arrangement is rewritten: the operator builds a batch of block differences
//! (about as large as the state itself) and the spine merges it with the previous state into a new batch, after
//! which both inputs are freed. With the system allocator each of those gigabyte-sized vectors is a fresh
//! `mmap`, and the kernel zeroes every page on first touch: on this VM that was a quarter of all CPU time at
//! 2 M customers (BENCHMARKS.md, "Where the time goes"). The allocations have the same sizes epoch after
//! epoch, so this allocator keeps freed large blocks mapped and hands them out again: the pages are already
//! resident and nothing is zeroed that the program does not ask to be zeroed.
//!
//! * Allocations of at least [`LARGE`] bytes (alignment ≤ one page) are mappings of their own, rounded up to
//!   2 MiB with transparent huge pages requested; the mapping's length is kept in the page before the block.
//! * A freed large block goes to a small cache (at most [`CACHE_SLOTS`] blocks and [`CACHE_BYTES`] bytes); an
//!   allocation takes the smallest cached block that fits and is at most twice the request (plus 2 MiB).
//!   Blocks that do not fit the cache are unmapped.
//! * Everything else goes to the system allocator unchanged.
//!
//! The invariant the allocator relies on: a block is "large" exactly when its current layout size is at
//! least [`LARGE`] (realloc moves blocks across the boundary when the size crosses it).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Mutex;

/// Allocations of this size and above are recycled.
pub const LARGE: usize = 32 << 20;
/// Most blocks kept for reuse.
pub const CACHE_SLOTS: usize = 16;
/// Most bytes (of address space: a block's untouched tail is not resident) kept for reuse.
pub const CACHE_BYTES: usize = 16 << 30;

const PAGE: usize = 4096;
const HUGE: usize = 2 << 20;

/// Cached blocks: (mapping base, mapping length, when it was cached), unused entries have length 0.
struct Cache {
    blocks: [(usize, usize, u64); CACHE_SLOTS],
    bytes: usize,
    /// Blocks cached so far (the age of an entry).
    clock: u64,
}

static CACHE: Mutex<Cache> = Mutex::new(Cache {
    blocks: [(0, 0, 0); CACHE_SLOTS],
    bytes: 0,
    clock: 0,
});

/// The global allocator of the `fleetwatch` binary.
pub struct Recycling;

fn is_large(layout: &Layout) -> bool {
    layout.size() >= LARGE && layout.align() <= PAGE
}

/// The mapping length for a block of `size` bytes: one header page in front, and 1/16 of headroom so that a
/// block freed this epoch still fits next epoch's slightly larger request (the fleet grows). Untouched
/// headroom costs address space, not memory.
fn mapping_len(size: usize) -> Option<usize> {
    size.checked_add(size / 16)?
        .checked_add(PAGE + HUGE - 1)
        .map(|n| n / HUGE * HUGE)
}

/// The usable capacity of the block at `ptr` (its mapping minus the header page).
///
/// # Safety
/// `ptr` must come from `alloc_large`.
unsafe fn capacity(ptr: *mut u8) -> usize {
    // SAFETY: the header page in front of the block holds the mapping length.
    unsafe { (ptr.sub(PAGE) as *const usize).read() - PAGE }
}

impl Cache {
    /// The smallest cached mapping that holds `need` bytes (header included) and is at most about twice
    /// that.
    fn take(&mut self, need: usize) -> Option<(usize, usize)> {
        let mut best: Option<usize> = None;
        for (i, &(_, l, _)) in self.blocks.iter().enumerate() {
            if l >= need && l <= 2 * need + HUGE && best.is_none_or(|b| l < self.blocks[b].1) {
                best = Some(i);
            }
        }
        let i = best?;
        let (base, len, _) = self.blocks[i];
        self.blocks[i] = (0, 0, 0);
        self.bytes -= len;
        Some((base, len))
    }

    /// Caches a freed block. A full cache makes room by evicting its oldest blocks (the sizes a program
    /// allocates now are those it freed last: a block cached long ago and never taken — a buffer's growth
    /// during warm-up — is the one not to keep). The evicted blocks go to `evicted`, for the caller to
    /// unmap outside the lock; `false` if the block itself does not fit.
    fn put(
        &mut self,
        base: usize,
        len: usize,
        evicted: &mut [(usize, usize); CACHE_SLOTS],
    ) -> bool {
        if len > CACHE_BYTES {
            return false;
        }
        let mut n = 0;
        loop {
            let free = self.blocks.iter().position(|&(_, l, _)| l == 0);
            if let Some(i) = free.filter(|_| self.bytes + len <= CACHE_BYTES) {
                self.clock += 1;
                self.blocks[i] = (base, len, self.clock);
                self.bytes += len;
                return true;
            }
            let Some(oldest) = self
                .blocks
                .iter()
                .enumerate()
                .filter(|(_, b)| b.1 != 0)
                .min_by_key(|(_, b)| b.2)
                .map(|(i, _)| i)
            else {
                return false;
            };
            let (b, l, _) = self.blocks[oldest];
            self.blocks[oldest] = (0, 0, 0);
            self.bytes -= l;
            evicted[n] = (b, l);
            n += 1;
        }
    }
}

fn take_cached(need: usize) -> Option<(usize, usize)> {
    CACHE.lock().unwrap_or_else(|e| e.into_inner()).take(need)
}

fn put_cached(base: usize, len: usize, evicted: &mut [(usize, usize); CACHE_SLOTS]) -> bool {
    CACHE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .put(base, len, evicted)
}

/// # Safety
/// As `GlobalAlloc::alloc`, for a large layout.
unsafe fn alloc_large(size: usize, zeroed: bool) -> *mut u8 {
    let (Some(need), Some(len)) = (size.checked_add(PAGE), mapping_len(size)) else {
        return std::ptr::null_mut();
    };
    let (base, len, fresh) = match take_cached(need) {
        Some((base, l)) => (base as *mut u8, l, false),
        None => {
            // SAFETY: an anonymous private mapping; checked for failure below.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            if p == libc::MAP_FAILED {
                return std::ptr::null_mut();
            }
            // (no MADV_HUGEPAGE: with defrag=madvise the kernel compacts memory synchronously on fault)
            (p as *mut u8, len, true)
        }
    };
    // SAFETY: the mapping is at least PAGE + size bytes long and writable.
    unsafe {
        (base as *mut usize).write(len);
        let ptr = base.add(PAGE);
        if zeroed && !fresh {
            std::ptr::write_bytes(ptr, 0, size);
        }
        ptr
    }
}

/// # Safety
/// `ptr` must come from `alloc_large` and not be used afterwards.
unsafe fn free_large(ptr: *mut u8) {
    // SAFETY: the header page precedes the block; its first word is the mapping length.
    let base = unsafe { ptr.sub(PAGE) };
    let len = unsafe { (base as *const usize).read() };
    let mut evicted = [(0usize, 0usize); CACHE_SLOTS];
    if !put_cached(base as usize, len, &mut evicted) {
        // SAFETY: unmapping our own mapping, which nothing references any more.
        unsafe { libc::munmap(base as *mut libc::c_void, len) };
    }
    for (b, l) in evicted.into_iter().filter(|(_, l)| *l != 0) {
        // SAFETY: an evicted cached block: our own mapping, referenced by nothing.
        unsafe { libc::munmap(b as *mut libc::c_void, l) };
    }
}

// SAFETY: large blocks are private mappings handed out once until freed; the rest is `System`.
unsafe impl GlobalAlloc for Recycling {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if is_large(&layout) {
            // SAFETY: a large layout.
            unsafe { alloc_large(layout.size(), false) }
        } else {
            // SAFETY: forwarded unchanged.
            unsafe { System.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if is_large(&layout) {
            // SAFETY: a large layout.
            unsafe { alloc_large(layout.size(), true) }
        } else {
            // SAFETY: forwarded unchanged.
            unsafe { System.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if is_large(&layout) {
            // SAFETY: a large layout's block came from alloc_large.
            unsafe { free_large(ptr) }
        } else {
            // SAFETY: forwarded unchanged.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: GlobalAlloc's contract makes this a valid layout.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (is_large(&layout), is_large(&new_layout)) {
            (false, false) => {
                // SAFETY: forwarded unchanged.
                unsafe { System.realloc(ptr, layout, new_size) }
            }
            // SAFETY: ptr came from alloc_large.
            (true, true) if new_size <= unsafe { capacity(ptr) } => ptr,
            _ => {
                // Move: allocate under the new layout, copy, free under the old one.
                // SAFETY: the new block is fresh and at least min(old, new) long; the old one is freed once.
                unsafe {
                    let new = self.alloc(new_layout);
                    if !new.is_null() {
                        std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                        self.dealloc(ptr, layout);
                    }
                    new
                }
            }
        }
    }
}

/// glibc's settings for everything below [`LARGE`], applied by the binary at start (a setting whose
/// `MALLOC_*_` environment variable is set is left to it):
///
/// * trimming off (threshold 2 GiB, `MALLOC_TRIM_THRESHOLD_`): the heap's top is not handed back to the
///   kernel after each epoch only to be faulted in, zeroed, again the next;
/// * a fixed `mmap` threshold of 32 MiB, the size where [`Recycling`] takes over (`MALLOC_MMAP_THRESHOLD_`):
///   glibc's dynamic threshold otherwise moves the epoch's medium-sized buffers between fresh mappings and
///   the heap;
/// * 256 MiB of top padding (`MALLOC_TOP_PAD_`): the heap grows in steps of that, not page by page.
///
/// Zen 1, 2 M customers: the same settings by environment made the median steady epoch 5–11 % faster in four
/// pairs out of four at +0.02 GiB peak RSS (BENCHMARKS.md). Returns the settings glibc refused (none
/// expected); elsewhere than glibc on Linux it does nothing.
pub fn tune_system_allocator() -> Vec<&'static str> {
    let mut refused = Vec::new();
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    for (name, param, value) in [
        (
            "MALLOC_TRIM_THRESHOLD_",
            libc::M_TRIM_THRESHOLD,
            libc::c_int::MAX,
        ),
        (
            "MALLOC_MMAP_THRESHOLD_",
            libc::M_MMAP_THRESHOLD,
            LARGE as libc::c_int,
        ),
        ("MALLOC_TOP_PAD_", libc::M_TOP_PAD, 256 << 20),
    ] {
        if std::env::var_os(name).is_some() {
            continue;
        }
        // SAFETY: mallopt only changes glibc's malloc parameters; it is called before any other thread
        // exists (the binary's first statement) and returns 0 for a value it refuses.
        if unsafe { libc::mallopt(param, value) } == 0 {
            refused.push(name);
        }
    }
    refused
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_cache_keeps_the_blocks_freed_last() {
        let mut c = Cache {
            blocks: [(0, 0, 0); CACHE_SLOTS],
            bytes: 0,
            clock: 0,
        };
        let mut evicted = [(0, 0); CACHE_SLOTS];
        // Sixteen small blocks of warm-up growth fill the cache...
        for i in 0..CACHE_SLOTS {
            assert!(c.put(0x1000 * (i + 1), 64 << 20, &mut evicted));
        }
        assert!(evicted.iter().all(|e| e.1 == 0));
        // ...the epoch's gigabyte block still gets in, evicting the oldest small one,
        assert!(c.put(0xBEEF000, 1 << 30, &mut evicted));
        assert_eq!(evicted[0], (0x1000, 64 << 20));
        assert_eq!(evicted[1], (0, 0));
        // and the next epoch's request of about that size takes it.
        assert_eq!(c.take((1 << 30) - (10 << 20)), Some((0xBEEF000, 1 << 30)));
        // A block over the byte budget evicts as many as it needs.
        let mut evicted = [(0, 0); CACHE_SLOTS];
        assert!(c.put(0xF000000, CACHE_BYTES - (200 << 20), &mut evicted));
        assert_eq!(evicted.iter().filter(|e| e.1 != 0).count(), 12);
        assert!(c.bytes <= CACHE_BYTES);
        assert!(!c.put(1, CACHE_BYTES + 1, &mut evicted));
        // A request far smaller than a cached block does not take it (at most about twice the request).
        assert_eq!(c.take(1 << 20), None);
    }

    #[test]
    fn glibc_accepts_the_allocator_settings() {
        // Every value is inside glibc's limits (the mmap threshold's maximum is 32 MiB on 64-bit targets).
        assert!(tune_system_allocator().is_empty());
    }

    #[test]
    fn large_blocks_are_recycled_and_zeroed_on_request() {
        let a = Recycling;
        let layout = Layout::from_size_align(LARGE + 12_345, 64).unwrap();
        unsafe {
            let p = a.alloc(layout);
            assert!(!p.is_null());
            assert_eq!(p as usize % PAGE, 0);
            assert!(capacity(p) >= layout.size());
            std::ptr::write_bytes(p, 0xAB, layout.size());
            a.dealloc(p, layout);
            // The same block comes back (the cache is process-wide: other tests may race, so only check
            // the contract, not the address).
            let q = a.alloc_zeroed(layout);
            assert!(!q.is_null());
            let s = std::slice::from_raw_parts(q, layout.size());
            assert!(s.iter().all(|&b| b == 0));
            // Grow within the mapping, then across the boundary both ways.
            let r = a.realloc(q, layout, layout.size() + 100);
            assert!(!r.is_null());
            let big = Layout::from_size_align(layout.size() + 100, 64).unwrap();
            r.write(7);
            let small = a.realloc(r, big, 1000);
            assert_eq!(small.read(), 7);
            let small_layout = Layout::from_size_align(1000, 64).unwrap();
            let again = a.realloc(small, small_layout, LARGE * 2);
            assert_eq!(again.read(), 7);
            a.dealloc(again, Layout::from_size_align(LARGE * 2, 64).unwrap());
        }
    }

    #[test]
    fn mapping_lengths() {
        assert_eq!(mapping_len(1), Some(HUGE));
        assert_eq!(mapping_len(HUGE / 2), Some(HUGE));
        assert_eq!(mapping_len(HUGE), Some(2 * HUGE));
        assert_eq!(mapping_len(32 * HUGE), Some(35 * HUGE));
        assert_eq!(mapping_len(usize::MAX), None);
    }
}
