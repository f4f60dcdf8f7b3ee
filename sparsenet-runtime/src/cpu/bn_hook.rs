//! A hook into training-mode BatchNorm, owned by the CPU backend and
//! installed from above (synchronised BatchNorm, `distributed::sync_bn`).
//!
//! The generated code reaches BatchNorm through the backend (`Ctx::stats`
//! in the forward pass, `pre_backward` in the backward pass), both on the
//! thread that called the pass. While a pass runs inside
//! [`with_batch_norm_hook`], those calls hand their per-channel values to
//! the hook, which may replace them (with the statistics of a batch spread
//! over several processes, say). The backend knows nothing of what the hook
//! does; the layer that installs it knows nothing of the kernels.

use std::any::Any;
use std::cell::RefCell;

/// What a training-mode pass's BatchNorms hand to an installed hook. Every
/// method may return `None` to keep the pass's own values.
pub trait BatchNormHook: Any {
    /// The statistics to normalise with, from this pass's own: `count`
    /// values per channel with per-channel `mean` and (biased) `var`.
    /// Returns the count, means and variances to use instead.
    fn batch_stats(
        &mut self,
        count: usize,
        mean: &[f64],
        var: &[f64],
    ) -> Option<(usize, Vec<f64>, Vec<f64>)>;

    /// BatchNorm backward's per-channel means of `dy` and `dy * xhat`, from
    /// this pass's per-channel sums of them over its `m` values.
    fn backward_means(&mut self, sums: &[(f64, f64)], m: f64) -> Option<Vec<(f64, f64)>>;
}

thread_local! {
    static HOOK: RefCell<Option<Box<dyn BatchNormHook>>> = const { RefCell::new(None) };
}

/// Runs `pass` (a training-mode forward and backward pass on this thread)
/// with `hook` installed; returns the pass's result and the hook, with
/// whatever it recorded. The hook is removed even if the pass panics.
pub fn with_batch_norm_hook<H: BatchNormHook, R>(hook: H, pass: impl FnOnce() -> R) -> (R, H) {
    HOOK.with(|h| *h.borrow_mut() = Some(Box::new(hook)));
    struct Clear;
    impl Drop for Clear {
        fn drop(&mut self) {
            HOOK.with(|h| h.borrow_mut().take());
        }
    }
    let clear = Clear;
    let r = pass();
    let hook = HOOK
        .with(|h| h.borrow_mut().take())
        .expect("the hook stays installed during the pass");
    drop(clear);
    let any: Box<dyn Any> = hook;
    (r, *any.downcast::<H>().expect("the hook installed above"))
}

/// Whether a hook is installed on this thread.
pub(crate) fn installed() -> bool {
    HOOK.with(|h| h.borrow().is_some())
}

/// The installed hook's statistics for this pass's, if one is installed
/// and replaces them.
pub(crate) fn hooked_stats(
    count: usize,
    mean: &[f64],
    var: &[f64],
) -> Option<(usize, Vec<f64>, Vec<f64>)> {
    HOOK.with(|h| h.borrow_mut().as_mut()?.batch_stats(count, mean, var))
}

/// The installed hook's backward means for this pass's sums, if any.
pub(crate) fn hooked_backward_means(sums: &[(f64, f64)], m: f64) -> Option<Vec<(f64, f64)>> {
    HOOK.with(|h| h.borrow_mut().as_mut()?.backward_means(sums, m))
}
