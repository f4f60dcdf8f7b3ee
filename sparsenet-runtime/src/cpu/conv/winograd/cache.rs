//! The per-thread cache of transformed weights for inference image by image:
//! calls too small to pay for the weight transform each time take it from
//! here, keyed by the weights' values.

use super::*;

/// Bytes of weights and transforms [`CACHE`] keeps per thread at most (an
/// inference pass of BC-100 needs 11 MB).
pub(super) const CACHE_BYTES: usize = 64 << 20;

/// A cached transform: the weights it came from (compared in full on every
/// lookup, so that weights changed in place are never served a stale
/// transform), and `U`.
pub(super) struct CachedTransform {
    pub(super) weight: Vec<f32>,
    pub(super) cout: usize,
    /// Output tile side of the transform (2 or 4).
    pub(super) m: usize,
    pub(super) u: Arc<Vec<f32>>,
    /// The weight buffer last found equal, and the pass
    /// ([`crate::cpu::parallel::threads::current_pass`]) in which it was.
    pub(super) seen_at: usize,
    pub(super) seen_in: u64,
}

impl CachedTransform {
    /// Whether `weight` is this entry's: compared in full, or, for the
    /// buffer already found equal in this same pass (whose weights cannot
    /// have changed since), at a sample of places (a guard against a
    /// caller's freed buffer reused at the same address).
    pub(super) fn serves(&self, weight: &[f32], cout: usize, m: usize, pass: u64) -> bool {
        if self.cout != cout || self.m != m || self.weight.len() != weight.len() {
            return false;
        }
        if pass != 0 && self.seen_in == pass && self.seen_at == weight.as_ptr() as usize {
            let n = weight.len();
            return (0..n)
                .step_by(1021)
                .chain(n.checked_sub(1))
                .all(|i| self.weight[i] == weight[i]);
        }
        self.weight.as_slice() == weight
    }
}

thread_local! {
    /// This thread's transformed weights of recent [`Source::Cached`]
    /// calls, oldest first.
    static CACHE: RefCell<Vec<CachedTransform>> = const { RefCell::new(Vec::new()) };
}

/// `transform_weights` through this thread's [`CACHE`].
pub(super) fn cached_transform(weight: &[f32], cout: usize, cin: usize, m: usize) -> Arc<Vec<f32>> {
    CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        let pass = crate::cpu::parallel::threads::current_pass();
        if let Some(hit) = cache.iter_mut().find(|e| e.serves(weight, cout, m, pass)) {
            (hit.seen_at, hit.seen_in) = (weight.as_ptr() as usize, pass);
            return hit.u.clone();
        }
        let mut u = vec![0.0; positions(m) * cout * cin];
        transform_weights_into(weight, cout, cin, m, &mut u);
        let u = Arc::new(u);
        let bytes = |e: &CachedTransform| 4 * (e.weight.len() + e.u.len());
        let mut total: usize = cache.iter().map(bytes).sum();
        let entry = CachedTransform {
            weight: weight.to_vec(),
            cout,
            m,
            u: u.clone(),
            seen_at: weight.as_ptr() as usize,
            seen_in: pass,
        };
        total += bytes(&entry);
        while total > CACHE_BYTES && !cache.is_empty() {
            total -= bytes(&cache.remove(0));
        }
        cache.push(entry);
        u
    })
}
