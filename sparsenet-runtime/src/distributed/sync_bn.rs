//! Synchronised BatchNorm: while a data-parallel step runs the CPU path's
//! forward and backward pass with [`with_sync`], every training-mode
//! BatchNorm normalises with the statistics of the whole global batch, and
//! its backward uses the whole batch's sums, as one process on the whole
//! batch would (to rounding).
//!
//! The generated code reaches BatchNorm through the runtime (`Ctx::stats`
//! in the forward pass, `pre_backward` in the backward pass), both on the
//! thread that called the pass; a thread-local hook set by [`with_sync`]
//! makes them exchange their per-channel values with the other ranks. Each
//! exchange is an all-gather combined in rank order, so every rank computes
//! the same statistics.

use std::cell::RefCell;

use super::collective::DistError;
use crate::cpu::layers::forward::Stats;
use crate::Float;

/// An all-gather of the ranks' f64 vectors (see
/// [`Collective::all_gather`](super::Collective::all_gather)).
pub type Gather<'a> = dyn FnMut(&[f64], &mut [f64]) -> Result<(), DistError> + 'a;

struct Hook {
    gather: Box<Gather<'static>>,
    ranks: usize,
    /// This rank's share of the global batch, `n_r / n`.
    weight: f64,
    /// The first exchange that failed (later ones are skipped).
    error: Option<DistError>,
}

thread_local! {
    static HOOK: RefCell<Option<Hook>> = const { RefCell::new(None) };
}

/// Runs `pass` (a training-mode forward and backward pass of this rank's
/// share, a fraction `weight` of the global batch, on this thread) with
/// BatchNorm synchronised over `ranks` ranks through `gather`. Returns
/// the pass's result and the first failed exchange, if any (after one, the
/// pass finishes with this rank's own statistics; its result is then not
/// to be used).
pub fn with_sync<R>(
    gather: Box<Gather<'static>>,
    ranks: usize,
    weight: f64,
    pass: impl FnOnce() -> R,
) -> (R, Option<DistError>) {
    HOOK.with(|h| {
        *h.borrow_mut() = Some(Hook {
            gather,
            ranks,
            weight,
            error: None,
        })
    });
    // Cleared even if the pass panics, so no later pass on this thread
    // exchanges by mistake.
    struct Clear;
    impl Drop for Clear {
        fn drop(&mut self) {
            HOOK.with(|h| h.borrow_mut().take());
        }
    }
    let clear = Clear;
    let r = pass();
    let error = HOOK.with(|h| h.borrow_mut().as_mut().and_then(|hook| hook.error.take()));
    drop(clear);
    (r, error)
}

/// Exchanges `local` (the same length on every rank) and returns every
/// rank's, rank after rank; `None` when no synchronisation is active on
/// this thread or an exchange already failed.
fn exchange(local: &[f64]) -> Option<Vec<f64>> {
    HOOK.with(|h| {
        let mut h = h.borrow_mut();
        let hook = h.as_mut()?;
        if hook.error.is_some() {
            return None;
        }
        let mut all = vec![0.0; hook.ranks * local.len()];
        match (hook.gather)(local, &mut all) {
            Ok(()) => Some(all),
            Err(e) => {
                hook.error = Some(e);
                None
            }
        }
    })
}

/// The statistics of the whole global batch from this rank's: per channel,
/// the ranks' counts, means and variances combined in rank order (Chan et
/// al.'s pairwise update, in f64). This rank's own when not synchronised.
pub(crate) fn global_stats<T: Float>(local: Stats<T>) -> Stats<T> {
    let c = local.mean.len();
    let mut mine = Vec::with_capacity(3 * c);
    for i in 0..c {
        mine.extend([
            local.count as f64,
            local.mean[i].to_f64c(),
            local.var[i].to_f64c(),
        ]);
    }
    let Some(all) = exchange(&mine) else {
        return local;
    };
    let ranks = all.len() / mine.len();
    let mut mean = Vec::with_capacity(c);
    let mut var = Vec::with_capacity(c);
    let mut total = 0.0;
    for i in 0..c {
        let (mut cnt, mut mu, mut m2) = (0.0f64, 0.0f64, 0.0f64);
        for r in 0..ranks {
            let v = &all[r * 3 * c + 3 * i..r * 3 * c + 3 * i + 3];
            let (nb, mb, m2b) = (v[0], v[1], v[2] * v[0]);
            if nb == 0.0 {
                continue;
            }
            let n = cnt + nb;
            let delta = mb - mu;
            mu += delta * nb / n;
            m2 += m2b + delta * delta * cnt * nb / n;
            cnt = n;
        }
        mean.push(T::from_f64c(mu));
        var.push(T::from_f64c(if cnt > 0.0 { m2 / cnt } else { 0.0 }));
        total = cnt;
    }
    Stats {
        mean,
        var,
        count: total as usize,
    }
}

/// BatchNorm backward's means of `da` and `da * xhat` over the whole global
/// batch, as this rank's pass must use them, from this rank's sums over its
/// `m` values per channel; `None` when not synchronised.
///
/// Rank r's pass differentiates its own mean loss, `1 / w_r` times its
/// part of the global mean loss (`w_r = n_r / n`), and its gradients are
/// summed with weight `w_r`; so the mean it needs is
/// `(1 / w_r) * (1 / N) * sum_q w_q S_q = (1 / m) * sum_q w_q S_q` with
/// `N = n H W` values in all and `S_q` rank q's sums.
pub(crate) fn global_means(local: &[(f64, f64)], m: f64) -> Option<Vec<(f64, f64)>> {
    let weight = HOOK.with(|h| h.borrow().as_ref().map(|hook| hook.weight))?;
    let mine: Vec<f64> = local
        .iter()
        .flat_map(|&(a, b)| [weight * a, weight * b])
        .collect();
    let all = exchange(&mine)?;
    let ranks = all.len() / mine.len().max(1);
    Some(
        (0..local.len())
            .map(|c| {
                let (mut a, mut b) = (0.0, 0.0);
                for r in 0..ranks {
                    a += all[r * mine.len() + 2 * c];
                    b += all[r * mine.len() + 2 * c + 1];
                }
                (a / m, b / m)
            })
            .collect(),
    )
}
