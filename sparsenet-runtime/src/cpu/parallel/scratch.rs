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
//! once (the longest-unused vectors go first), whatever is given back to
//! it; [`release`] frees it.

use ndarray::Array4;
use std::any::{Any, TypeId};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};

/// One thread's kept vectors.
///
/// Bounded: it never keeps more bytes than the thread once had taken and
/// not yet given back at one time (`peak_out`), evicting the longest-unused
/// vectors first. A vector given back on another thread than the one that
/// took it, or one that never came from the store (a copy made with the
/// allocator), would otherwise pile up: one such vector per image of every
/// evaluation grew a CIFAR-10 run's store by 10,000 entries an epoch, and
/// the linear scan over them took half of its time by epoch 8 (issue 33).
/// Indexed by (type, capacity), so a lookup costs a logarithm of its size.
#[derive(Default)]
struct Store {
    /// Kept vectors by (element type, capacity, arrival): the best fit for
    /// a length is the first key at or after (type, length, 0).
    kept: BTreeMap<(TypeId, usize, u64), Entry>,
    /// Arrival -> key in `kept`, oldest first, for eviction.
    by_arrival: BTreeMap<u64, (TypeId, usize)>,
    arrivals: u64,
    /// Bytes held in `kept`.
    kept_bytes: usize,
    /// Bytes this thread took (from `kept` or the allocator) and has not
    /// given back, as far as it can tell.
    out: usize,
    /// The most `out` has been since the store was last released.
    peak_out: usize,
}

/// A kept vector and its size in bytes.
struct Entry {
    vec: Box<dyn Any>,
    bytes: usize,
}

impl Store {
    fn take<T: 'static>(&mut self, len: usize) -> Vec<T> {
        let ty = TypeId::of::<T>();
        let key = self
            .kept
            .range((ty, len, 0)..=(ty, usize::MAX, u64::MAX))
            .next()
            .map(|(k, _)| *k);
        let v = match key {
            Some(key) => {
                let kept = self.kept.remove(&key).expect("the key was just found");
                self.by_arrival.remove(&key.2);
                self.kept_bytes -= kept.bytes;
                KEPT_BYTES.fetch_sub(kept.bytes, Ordering::Relaxed);
                *kept
                    .vec
                    .downcast::<Vec<T>>()
                    .expect("kept under its own type")
            }
            None => Vec::with_capacity(len),
        };
        self.out += bytes_of(&v);
        self.peak_out = self.peak_out.max(self.out);
        v
    }

    fn give<T: 'static>(&mut self, v: Vec<T>) {
        let bytes = bytes_of(&v);
        if bytes == 0 {
            return;
        }
        self.out = self.out.saturating_sub(bytes);
        let arrival = self.arrivals;
        self.arrivals += 1;
        let key = (TypeId::of::<T>(), v.capacity(), arrival);
        self.kept.insert(
            key,
            Entry {
                vec: Box::new(v),
                bytes,
            },
        );
        self.by_arrival.insert(arrival, (key.0, key.1));
        self.kept_bytes += bytes;
        KEPT_BYTES.fetch_add(bytes, Ordering::Relaxed);
        while self.kept_bytes > self.peak_out {
            let Some((arrival, (ty, cap))) = self.by_arrival.pop_first() else {
                break;
            };
            let evicted = self
                .kept
                .remove(&(ty, cap, arrival))
                .expect("every arrival is kept");
            self.kept_bytes -= evicted.bytes;
            KEPT_BYTES.fetch_sub(evicted.bytes, Ordering::Relaxed);
        }
    }

    fn release(&mut self) {
        KEPT_BYTES.fetch_sub(self.kept_bytes, Ordering::Relaxed);
        self.kept.clear();
        self.by_arrival.clear();
        self.kept_bytes = 0;
        self.peak_out = self.out;
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        KEPT_BYTES.fetch_sub(self.kept_bytes, Ordering::Relaxed);
    }
}

/// The bytes of a vector's allocation.
fn bytes_of<T>(v: &Vec<T>) -> usize {
    v.capacity() * std::mem::size_of::<T>()
}

/// Bytes kept by every thread's store together.
static KEPT_BYTES: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static STORE: RefCell<Store> = RefCell::new(Store::default());
}

/// Bytes the stores of all threads keep for reuse right now: flat over a
/// steady sequence of passes (the soak checks watch it).
pub fn kept_bytes() -> usize {
    KEPT_BYTES.load(Ordering::Relaxed)
}

/// The smallest allocation this thread gave back with room for `len`
/// elements, with the values it held, else a new empty one.
fn take_kept<T: 'static>(len: usize) -> Vec<T> {
    STORE.with(|s| s.borrow_mut().take(len))
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
    STORE.with(|s| s.borrow_mut().give(v));
}

/// A vector of `len` zeros built on a reused allocation.
pub fn zeros<T: Clone + num_traits::Zero + 'static>(len: usize) -> Vec<T> {
    let mut v = take::<T>(len);
    v.resize(len, T::zero());
    v
}

/// A copy of `x` in standard layout on a reused allocation (the passes'
/// copy of their input, given back to the store after its last reader).
pub fn copy4<T: Copy + num_traits::Zero + 'static>(x: ndarray::ArrayView4<'_, T>) -> Array4<T> {
    let mut a = stale4(x.dim());
    a.assign(&x);
    a
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
    STORE.with(|s| s.borrow_mut().release());
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
        // All taken from the store at once, so that it keeps them all.
        let v: Vec<f32> = zeros(1000);
        let (w, u): (Vec<f64>, Vec<f32>) = (zeros(10), zeros(100));
        let ptr = v.as_ptr();
        give(v);
        give(w);
        give(u);
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
        let mut seven: Vec<f32> = take(300);
        seven.resize(300, 7.0);
        give(seven);
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

    /// Vectors the store never handed out (copies made with the allocator)
    /// or that another thread took: given back one per pass, forever, they
    /// must not pile up (the soak's slowdown, issue 33). Seen failing
    /// before the bound: the store kept every one of them.
    #[test]
    fn vectors_from_elsewhere_do_not_pile_up() {
        std::thread::spawn(|| {
            // A thread that takes and gives back 1 MB at a time...
            for _ in 0..3 {
                let v: Vec<f32> = stale(250_000);
                give(v);
            }
            let steady = STORE.with(|s| s.borrow().kept_bytes);
            assert_eq!(steady, 1_000_000);
            // ...then is given 10,000 vectors it never took.
            for i in 0..10_000 {
                give(vec![i as f32; 3072]);
            }
            STORE.with(|s| {
                let s = s.borrow();
                assert!(
                    s.kept_bytes <= s.peak_out,
                    "{} > {}",
                    s.kept_bytes,
                    s.peak_out
                );
                assert!(s.kept.len() <= 100, "{} vectors kept", s.kept.len());
                assert_eq!(s.kept.len(), s.by_arrival.len());
            });
            // A thread that only ever receives keeps nothing.
            std::thread::spawn(|| {
                give(vec![0u8; 1 << 20]);
                assert_eq!(STORE.with(|s| s.borrow().kept_bytes), 0);
            })
            .join()
            .unwrap();
        })
        .join()
        .unwrap();
    }

    /// The longest-unused vector goes first when the bound is reached, and
    /// the best fit is still found among many kept sizes.
    #[test]
    fn evicts_the_longest_unused_and_finds_the_best_fit() {
        std::thread::spawn(|| {
            let held: Vec<Vec<u64>> = (1..=100).map(|k| take(k * 10)).collect();
            let ptrs: Vec<*const u64> = held.iter().map(|v| v.as_ptr()).collect();
            for v in held {
                give(v);
            }
            let v: Vec<u64> = take(455);
            assert_eq!(v.capacity(), 460, "the smallest that fits");
            assert_eq!(v.as_ptr(), ptrs[45]);
            give(v);
            // Over the bound by one vector of 8 bytes: the oldest (10
            // elements, given first) is evicted.
            give(vec![0u64; 1]);
            STORE.with(|s| {
                let s = s.borrow();
                assert!(s.kept_bytes <= s.peak_out);
                assert!(!s.kept.keys().any(|k| k.1 == 10), "the oldest went first");
            });
        })
        .join()
        .unwrap();
    }
}
