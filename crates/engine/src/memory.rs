//! How the process's allocator returns memory. Call [`tune_allocator`] first thing in `main`.
//!
//! glibc's malloc serves requests above its mmap threshold (128 KiB at start) with their own
//! mappings, which go back to the kernel on free. But it raises the threshold to the size of any
//! mapped block that is freed, up to 32 MiB. After the first 8 MiB buffer of a backup (the
//! chunker's, or a part of an S3 upload) has been freed, every later buffer of that size comes
//! from an arena instead, and an arena gives memory back only from its top. Buffers freed by
//! other threads than the ones that allocated them, between small long-lived allocations, then
//! stay resident: measured on full backups of the peer images, 30 to 50 MiB above the live heap.
//! A fixed threshold keeps large buffers in their own mappings.

/// Blocks of at least this many bytes get their own mapping and are unmapped on free.
pub const MMAP_THRESHOLD: usize = 1 << 20;

/// Fixes glibc's mmap threshold at [`MMAP_THRESHOLD`] (which also stops its dynamic changes).
/// Returns false where that is not possible (another C library).
#[allow(unsafe_code)]
pub fn tune_allocator() -> bool {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: mallopt takes two integers and changes a parameter of glibc's allocator under
        // the allocator's own lock; it is safe to call at any time from any thread.
        unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int) == 1 }
    }
    #[cfg(not(target_env = "gnu"))]
    {
        false
    }
}
