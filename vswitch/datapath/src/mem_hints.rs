//! Hints to the memory system for the flow cache's tables, which a hit
//! reads at random places: a bucket line and a slot line.
//!
//! - Transparent huge pages under the tables ([`advise_huge`]): on 4 KiB
//!   pages each of those reads also misses the TLB once the tables outgrow
//!   it (100k flows take some 20 MiB).
//! - Prefetches ([`prefetch`]): a batch asks for all its lines before it
//!   reads any, so that their fetches from memory overlap. A prefetch, unlike
//!   a load, retires at once, so a whole batch's fetches can be in flight
//!   rather than the few a load-bound loop leaves room for.
//!
//! The only `unsafe` of the switch's own code is here.

/// Advises `MADV_HUGEPAGE` for the whole 2 MiB pages inside the `bytes` at
/// `ptr` (an allocation not yet touched, so that its first faults already
/// get huge pages). Best effort: where the kernel says no, nothing changes.
pub fn advise_huge(ptr: *const u8, bytes: usize) {
    const HUGE: usize = 2 << 20;
    let start = (ptr as usize).next_multiple_of(HUGE);
    let end = (ptr as usize + bytes) / HUGE * HUGE;
    if end <= start {
        return;
    }
    let Some(addr) = std::ptr::NonNull::new(start as *mut std::ffi::c_void) else {
        return;
    };
    #[allow(unsafe_code)]
    // SAFETY: the range lies inside one live allocation (rounded inwards to
    // whole huge pages), and MADV_HUGEPAGE changes how it is backed, never
    // its contents.
    let r = unsafe {
        nix::sys::mman::madvise(addr, end - start, nix::sys::mman::MmapAdvise::MADV_HUGEPAGE)
    };
    if let Err(e) = r {
        tracing::debug!("flow cache: no huge pages: {e}");
    }
}

/// Starts fetching the cache line of `r` into every cache level, without
/// waiting for it.
#[inline(always)]
pub fn prefetch<T>(r: &T) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        #[allow(unsafe_code)]
        // SAFETY: SSE is part of the x86_64 baseline, so the instruction
        // exists; a prefetch reads nothing the program sees and cannot fault,
        // and the address is that of a live reference anyway.
        unsafe {
            _mm_prefetch::<_MM_HINT_T0>(r as *const T as *const i8)
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    std::hint::black_box(r);
}
