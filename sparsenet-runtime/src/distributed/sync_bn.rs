//! Synchronised BatchNorm: while a data-parallel step runs the CPU path's
//! forward and backward pass under [`SyncBatchNorm`] (a
//! [`BatchNormHook`] installed with
//! [`with_batch_norm_hook`](crate::cpu::bn_hook::with_batch_norm_hook)),
//! every training-mode BatchNorm normalises with the statistics of the whole
//! global batch, and its backward uses the whole batch's sums, as one
//! process on the whole batch would (to rounding).
//!
//! Each exchange is an all-gather combined in rank order, so every rank
//! computes the same statistics.

use super::collective::DistError;
use crate::cpu::bn_hook::BatchNormHook;

/// An all-gather of the ranks' f64 vectors (see
/// [`Collective::all_gather`](super::Collective::all_gather)).
pub type Gather<'a> = dyn FnMut(&[f64], &mut [f64]) -> Result<(), DistError> + 'a;

/// The hook of one rank's pass: its share `weight` (`n_r / n`) of the
/// global batch, spread over `ranks` ranks that exchange through `gather`.
pub struct SyncBatchNorm {
    gather: Box<Gather<'static>>,
    ranks: usize,
    weight: f64,
    /// The first exchange that failed (later ones are skipped: the pass
    /// then finishes with this rank's own values, and its result is not to
    /// be used).
    pub error: Option<DistError>,
}

impl SyncBatchNorm {
    /// The hook of a rank holding the fraction `weight` of the global batch.
    pub fn new(gather: Box<Gather<'static>>, ranks: usize, weight: f64) -> Self {
        SyncBatchNorm {
            gather,
            ranks,
            weight,
            error: None,
        }
    }

    /// Exchanges `local` (the same length on every rank) and returns every
    /// rank's, rank after rank; `None` once an exchange failed.
    fn exchange(&mut self, local: &[f64]) -> Option<Vec<f64>> {
        if self.error.is_some() {
            return None;
        }
        let mut all = vec![0.0; self.ranks * local.len()];
        match (self.gather)(local, &mut all) {
            Ok(()) => Some(all),
            Err(e) => {
                self.error = Some(e);
                None
            }
        }
    }
}

impl BatchNormHook for SyncBatchNorm {
    /// The statistics of the whole global batch from this rank's: per
    /// channel, the ranks' counts, means and variances combined in rank
    /// order (Chan et al.'s pairwise update, in f64).
    fn batch_stats(
        &mut self,
        count: usize,
        mean: &[f64],
        var: &[f64],
    ) -> Option<(usize, Vec<f64>, Vec<f64>)> {
        let c = mean.len();
        let mut mine = Vec::with_capacity(3 * c);
        for i in 0..c {
            mine.extend([count as f64, mean[i], var[i]]);
        }
        let all = self.exchange(&mine)?;
        let ranks = all.len() / mine.len().max(1);
        let (mut means, mut vars) = (Vec::with_capacity(c), Vec::with_capacity(c));
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
            means.push(mu);
            vars.push(if cnt > 0.0 { m2 / cnt } else { 0.0 });
            total = cnt;
        }
        Some((total as usize, means, vars))
    }

    /// BatchNorm backward's means of `da` and `da * xhat` over the whole
    /// global batch, as this rank's pass must use them, from this rank's
    /// sums over its `m` values per channel.
    ///
    /// Rank r's pass differentiates its own mean loss, `1 / w_r` times its
    /// part of the global mean loss (`w_r = n_r / n`), and its gradients are
    /// summed with weight `w_r`; so the mean it needs is
    /// `(1 / w_r) * (1 / N) * sum_q w_q S_q = (1 / m) * sum_q w_q S_q` with
    /// `N = n H W` values in all and `S_q` rank q's sums.
    fn backward_means(&mut self, sums: &[(f64, f64)], m: f64) -> Option<Vec<(f64, f64)>> {
        let weight = self.weight;
        let mine: Vec<f64> = sums
            .iter()
            .flat_map(|&(a, b)| [weight * a, weight * b])
            .collect();
        let all = self.exchange(&mine)?;
        let ranks = all.len() / mine.len().max(1);
        Some(
            (0..sums.len())
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
}
