//! Asking the kernel for transparent huge pages under the flow cache's
//! tables: a hit reads a random bucket line and a random slot line, and on
//! 4 KiB pages each also misses the TLB once the tables outgrow it (100k
//! flows take some 20 MiB). The only `unsafe` of the switch's own code is
//! here.

/// Advises `MADV_HUGEPAGE` for the whole 2 MiB pages inside the `bytes` at
/// `ptr` (an allocation not yet touched, so that its first faults already
/// get huge pages). Best effort: where the kernel says no, nothing changes.
pub fn advise(ptr: *const u8, bytes: usize) {
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
