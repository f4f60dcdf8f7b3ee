//! How the CPU backend uses its threads and memory.
//!
//! * [`threads`]: inference image by image, one thread per image.
//! * [`team`]: a team of threads held for a batch-1 pass.
//! * [`scratch`]: per-thread reuse of large buffers.

pub mod scratch;
pub mod team;
pub mod threads;

/// A buffer shared by the threads that write its disjoint parts.
pub(crate) struct SharedMut<T>(pub(crate) *mut T);

// SAFETY: only used to write disjoint parts, one thread each.
unsafe impl<T> Sync for SharedMut<T> {}

impl<T> SharedMut<T> {
    /// The address `offset` elements in.
    pub(crate) fn at(&self, offset: usize) -> *mut T {
        // SAFETY: callers stay within the slice the pointer came from.
        unsafe { self.0.add(offset) }
    }
}
