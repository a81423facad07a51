//! Copies and zeroing of map memory, 8 bytes at a time.

/// Copies `*src` to `*dst` as 8-byte words. A plain assignment between map memory compiles to
/// a call of `memmove` (source and destination may alias), which the BPF target implements as
/// a loop of 5 instructions per byte; this is 2 instructions per word.
///
/// # Safety
/// Both pointers valid for `size_of::<T>()` bytes and 8-byte aligned.
#[inline(always)]
pub unsafe fn copy_words<T>(dst: *mut T, src: *const T) {
    const { assert!(core::mem::size_of::<T>().is_multiple_of(8)) };
    let (d, s) = (dst as *mut u64, src as *const u64);
    let mut i = 0;
    while i < core::mem::size_of::<T>() / 8 {
        // SAFETY: in bounds and aligned (caller). Volatile: kept as word moves, never merged
        // back into a `memmove` call.
        unsafe { core::ptr::write_volatile(d.add(i), core::ptr::read_volatile(s.add(i))) };
        i += 1;
    }
}

/// Sets `*dst` to zero bytes, 8 at a time (a plain `= ZERO` compiles to a byte-loop `memset`
/// call, as in `copy_words`).
///
/// # Safety
/// `dst` valid for `size_of::<T>()` bytes and 8-byte aligned; all zero bytes is a valid `T`.
#[inline(always)]
pub unsafe fn zero_words<T>(dst: *mut T) {
    const { assert!(core::mem::size_of::<T>().is_multiple_of(8)) };
    let d = dst as *mut u64;
    let mut i = 0;
    while i < core::mem::size_of::<T>() / 8 {
        // SAFETY: in bounds and aligned (caller).
        unsafe { core::ptr::write_volatile(d.add(i), 0) };
        i += 1;
    }
}
