//! Per-thread reuse of buffers: activations, gradients and kernels'
//! temporaries (unfolded inputs, BN-ReLU planes, unfolded gradients).
//!
//! These are megabytes each and live for part of one pass; allocating them
//! afresh means fresh pages from the operating system every time (page
//! faults and zeroing). Each thread (the caller and rayon's workers) keeps
//! the vectors it gave back and hands them out again when one fits, so a
//! steady sequence of training steps stops asking the allocator for memory
//! after the first step. The generated passes give every buffer back at its
//! last use ([`recycle`]). What a thread keeps is at most what it held at
//! once; [`release`] frees it.

use ndarray::Array4;
use std::any::Any;
use std::cell::RefCell;

thread_local! {
    static FREE: RefCell<Vec<Box<dyn Any>>> = const { RefCell::new(Vec::new()) };
}

/// The smallest allocation this thread gave back with room for `len`
/// elements, with the values it held, else a new empty one.
fn take_kept<T: 'static>(len: usize) -> Vec<T> {
    FREE.with(|free| {
        let mut free = free.borrow_mut();
        let mut fit: Option<(usize, usize)> = None;
        for (i, b) in free.iter().enumerate() {
            if let Some(v) = b.downcast_ref::<Vec<T>>() {
                let cap = v.capacity();
                if cap >= len && fit.is_none_or(|(_, c)| cap < c) {
                    fit = Some((i, cap));
                }
            }
        }
        match fit {
            Some((i, _)) => *free
                .swap_remove(i)
                .downcast::<Vec<T>>()
                .expect("checked type"),
            None => Vec::with_capacity(len),
        }
    })
}

/// An empty vector with room for `len` elements: the smallest allocation this
/// thread gave back that fits, else a new one.
pub fn take<T: 'static>(len: usize) -> Vec<T> {
    let mut v = take_kept(len);
    v.clear();
    v
}

/// A vector of `len` elements whose values are unspecified (what the reused
/// allocation held before, zeros where it held nothing): for buffers the
/// caller overwrites entirely, so that no pass of zeros precedes the real
/// writes.
pub fn stale<T: Clone + num_traits::Zero + 'static>(len: usize) -> Vec<T> {
    let mut v = take_kept(len);
    if v.len() >= len {
        v.truncate(len);
    } else {
        v.resize(len, T::zero());
    }
    v
}

/// An array of the given shape whose values are unspecified (see [`stale`]).
pub fn stale4<T: Clone + num_traits::Zero + 'static>(
    shape: (usize, usize, usize, usize),
) -> Array4<T> {
    shaped(shape, stale)
}

/// Gives a vector back to this thread's store for a later [`take`]. Its
/// values are kept (they are initialised memory that [`stale`] may hand
/// out again).
pub fn give<T: 'static>(v: Vec<T>) {
    if v.capacity() == 0 {
        return;
    }
    FREE.with(|free| free.borrow_mut().push(Box::new(v)));
}

/// A vector of `len` zeros built on a reused allocation.
pub fn zeros<T: Clone + num_traits::Zero + 'static>(len: usize) -> Vec<T> {
    let mut v = take::<T>(len);
    v.resize(len, T::zero());
    v
}

/// An array of zeros of the given shape on a reused allocation.
pub fn zeros4<T: Clone + num_traits::Zero + 'static>(
    shape: (usize, usize, usize, usize),
) -> Array4<T> {
    shaped(shape, zeros)
}

/// An array of the given shape over the vector `make` builds for its length.
fn shaped<T>(shape: (usize, usize, usize, usize), make: fn(usize) -> Vec<T>) -> Array4<T> {
    let len = shape.0 * shape.1 * shape.2 * shape.3;
    Array4::from_shape_vec(shape, make(len)).expect("length matches the shape")
}

/// Gives an array's allocation back to this thread's store.
pub fn recycle<T: 'static>(a: Array4<T>) {
    give(a.into_raw_vec_and_offset().0);
}

/// Frees every buffer this thread keeps (for a long-lived thread that is done
/// with a model).
pub fn release() {
    FREE.with(|free| free.borrow_mut().clear());
}

/// A temporary vector that goes back to the store of the thread dropping it.
pub struct Scratch<T: 'static>(pub Vec<T>, Kept);

/// What a [`Scratch::stale`] vector's allocation held initialised before
/// it was shortened: its address and that length, so that it goes back to
/// the store with that length again.
#[derive(Clone, Copy)]
pub struct Kept {
    /// The allocation's address (only compared, never dereferenced).
    at: usize,
    len: usize,
}

impl Kept {
    const NONE: Kept = Kept { at: 0, len: 0 };
}

impl<T: 'static> Scratch<T> {
    /// An empty vector with room for `len` elements (see [`take`]).
    pub fn with_capacity(len: usize) -> Self {
        Scratch(take(len), Kept::NONE)
    }

    /// A vector of `len` zeros (see [`zeros`]).
    pub fn zeros(len: usize) -> Self
    where
        T: Clone + num_traits::Zero,
    {
        Scratch(zeros(len), Kept::NONE)
    }

    /// A vector of `len` elements with unspecified values (see [`stale`]),
    /// for a buffer its user overwrites entirely. When the reused
    /// allocation held more initialised elements than `len`, it goes back
    /// to the store with all of them: kernels ask for scratch of a
    /// different length at every layer, and a vector that went back as
    /// short as its last use would be zero-filled again up to the next
    /// longer one.
    pub fn stale(len: usize) -> Self
    where
        T: Copy + num_traits::Zero,
    {
        let mut v = take_kept::<T>(len);
        let kept = Kept {
            at: v.as_ptr() as usize,
            len: v.len().max(len),
        };
        if v.len() >= len {
            v.truncate(len);
        } else {
            v.resize(len, T::zero());
        }
        Scratch(v, kept)
    }
}

impl<T: 'static> Drop for Scratch<T> {
    fn drop(&mut self) {
        let mut v = std::mem::take(&mut self.0);
        if v.as_ptr() as usize == self.1.at && v.len() < self.1.len {
            // SAFETY: still the allocation `stale` handed out (same
            // address), whose first `kept.len` elements were initialised
            // then; shortening a vector of `Copy` values leaves them
            // initialised, and `kept.len` is within its capacity.
            unsafe { v.set_len(self.1.len) };
        }
        give(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_the_allocation_and_keeps_types_apart() {
        let v: Vec<f32> = zeros(1000);
        let ptr = v.as_ptr();
        give(v);
        give(vec![1.0f64; 10]);
        give(vec![0.0f32; 100]);
        let again: Vec<f32> = take(500);
        assert!(again.is_empty() && again.capacity() >= 1000);
        assert_eq!(
            again.as_ptr(),
            ptr,
            "the smallest allocation that fits comes back"
        );
        let big: Vec<f32> = take(5000);
        assert!(
            big.capacity() >= 5000,
            "nothing kept fits: a new allocation"
        );
        let small: Vec<f32> = take(50);
        assert!(small.capacity() >= 100 && small.capacity() < 1000);
        give(vec![7.0f32; 300]);
        let s: Vec<f32> = stale(200);
        assert_eq!(s.len(), 200, "a stale vector has the asked length");
        assert!(s.iter().all(|&v| v == 7.0), "and keeps the reused values");
        give(s);
        let s: Vec<f32> = stale(250);
        assert!(
            s.len() == 250 && s[200..].iter().all(|&v| v == 0.0),
            "zeros past what was held"
        );
        let w: Vec<f64> = take(0);
        assert!(w.is_empty() && w.capacity() >= 10);
        let fresh: Vec<f64> = take(0);
        assert_eq!(fresh.capacity(), 0, "nothing more of that type is kept");
        let a = zeros4::<f32>((2, 3, 4, 5));
        let p = a.as_ptr();
        recycle(a);
        let b = zeros4::<f32>((1, 2, 3, 4));
        assert_eq!(b.as_ptr(), p, "a recycled array's allocation is reused");
        assert!(b.iter().all(|&v| v == 0.0));
        release();
        assert_eq!(take::<f32>(0).capacity(), 0);
        let z: Vec<f32> = zeros(5);
        assert_eq!(z, vec![0.0; 5]);
    }
}
