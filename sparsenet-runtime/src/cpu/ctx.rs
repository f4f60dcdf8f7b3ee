//! The per-call context a generated forward pass threads through its layers:
//! the flat parameter and running-statistics stores, the mode, and the RNG
//! for dropout. BatchNorm layers are folded here into a [`Pre`] transform.

use crate::cpu::layers::forward::batch_stats;
use crate::cpu::layers::forward::{Pre, Stats};
use crate::{Float, Mode};
use ndarray::Array4;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// One BatchNorm layer, placed in the flat stores by the plan.
#[derive(Clone, Copy, Debug)]
pub struct BnSpec {
    /// Offset of gamma in `params` (beta follows at `gamma + channels`).
    pub gamma: usize,
    /// Offset of the running mean in `state` (running variance follows).
    pub running: usize,
    pub channels: usize,
    pub eps: f64,
    /// Fraction of the old running value kept at each update
    /// (MXNet's `momentum`; PyTorch's `momentum` is `1 - this`).
    pub momentum: f64,
    /// Whether the running variance is updated with the unbiased batch
    /// variance (PyTorch) rather than the biased one (MXNet).
    pub unbiased_running_var: bool,
}

pub struct Ctx<'a, T> {
    params: &'a [T],
    state: &'a mut [T],
    mode: Mode,
    rng: &'a mut ChaCha8Rng,
}

impl<'a, T: Float> Ctx<'a, T> {
    pub fn new(params: &'a [T], state: &'a mut [T], mode: Mode, rng: &'a mut ChaCha8Rng) -> Self {
        Ctx {
            params,
            state,
            mode,
            rng,
        }
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// A parameter tensor by its place in the flat store.
    #[inline]
    pub fn p(&self, offset: usize, len: usize) -> &'a [T] {
        &self.params[offset..offset + len]
    }

    /// Batch statistics of a buffer that a BatchNorm reads, computed once
    /// where the buffer is produced; `None` in eval mode. Those an installed
    /// [`BatchNormHook`](crate::cpu::bn_hook::BatchNormHook) gives instead,
    /// if any (the whole global batch's, under synchronised BatchNorm).
    pub fn stats(&self, x: &Array4<T>) -> Option<Stats<T>> {
        match self.mode {
            Mode::Train => Some(hooked(batch_stats(x))),
            Mode::Eval => None,
        }
    }

    /// Folds a BatchNorm over the concatenation of sources whose statistics
    /// are `stats` into a [`Pre`]; in training mode also updates the layer's
    /// running statistics.
    pub fn bn(&mut self, bn: &BnSpec, stats: &[Option<&Stats<T>>], relu: bool) -> Pre<T> {
        if self.mode == Mode::Eval {
            return EvalCtx::new(self.params, self.state).bn(bn, relu);
        }
        let c = bn.channels;
        let gamma = &self.params[bn.gamma..bn.gamma + c];
        let beta = &self.params[bn.gamma + c..bn.gamma + 2 * c];
        let mut mean = Vec::with_capacity(c);
        let mut var = Vec::with_capacity(c);
        let m = T::from_f64c(bn.momentum);
        let one_m = T::from_f64c(1.0 - bn.momentum);
        for s in stats {
            let s = s.expect("training mode computes statistics for every BN source");
            let correction = if bn.unbiased_running_var && s.count > 1 {
                T::from_f64c(s.count as f64 / (s.count as f64 - 1.0))
            } else {
                T::one()
            };
            for (&mu, &v) in s.mean.iter().zip(&s.var) {
                let i = mean.len();
                let rm = &mut self.state[bn.running + i];
                *rm = m * *rm + one_m * mu;
                let rv = &mut self.state[bn.running + c + i];
                *rv = m * *rv + one_m * v * correction;
                mean.push(mu);
                var.push(v);
            }
        }
        debug_assert_eq!(mean.len(), c);
        fold_bn(bn, gamma, beta, &mean, &var, relu, true)
    }

    /// Inverted dropout in training mode (kept values scaled by 1/(1-p));
    /// identity in eval mode. Returns the seed of the mask, from which
    /// backward regenerates it instead of storing it.
    pub fn dropout(&mut self, mut x: Array4<T>, p: f64) -> (Array4<T>, u64) {
        if self.mode == Mode::Eval || p <= 0.0 {
            return (x, 0);
        }
        let seed: u64 = self.rng.gen();
        apply_dropout_mask(x.as_slice_mut().expect("contiguous"), p, seed);
        (x, seed)
    }
}

/// BatchNorm with mean `mean` and variance `var`, then maybe ReLU, as a
/// [`Pre`]: `scale = gamma / sqrt(var + eps)`, `shift = beta - mean * scale`.
fn fold_bn<T: Float>(
    bn: &BnSpec,
    gamma: &[T],
    beta: &[T],
    mean: &[T],
    var: &[T],
    relu: bool,
    batch_stats: bool,
) -> Pre<T> {
    let eps = T::from_f64c(bn.eps);
    let c = bn.channels;
    let mut scale = Vec::with_capacity(c);
    let mut shift = Vec::with_capacity(c);
    let mut inv_std = Vec::with_capacity(c);
    for i in 0..c {
        let is = T::one() / (var[i] + eps).sqrt();
        let s = gamma[i] * is;
        scale.push(s);
        shift.push(beta[i] - mean[i] * s);
        inv_std.push(is);
    }
    Pre {
        scale,
        shift,
        relu,
        mean: mean.to_vec(),
        inv_std,
        batch_stats,
    }
}

/// The context of an inference pass: the parameters and the running
/// statistics, read only, so that several images can run at once on one
/// model (see [`crate::cpu::parallel::threads::by_image`]). BatchNorm uses the running
/// statistics; there is no dropout.
#[derive(Clone, Copy)]
pub struct EvalCtx<'a, T> {
    params: &'a [T],
    state: &'a [T],
}

impl<'a, T: Float> EvalCtx<'a, T> {
    pub fn new(params: &'a [T], state: &'a [T]) -> Self {
        EvalCtx { params, state }
    }

    /// A parameter tensor by its place in the flat store.
    #[inline]
    pub fn p(&self, offset: usize, len: usize) -> &'a [T] {
        &self.params[offset..offset + len]
    }

    /// A BatchNorm with its running statistics (and maybe ReLU) as a [`Pre`].
    pub fn bn(&self, bn: &BnSpec, relu: bool) -> Pre<T> {
        let c = bn.channels;
        fold_bn(
            bn,
            &self.params[bn.gamma..bn.gamma + c],
            &self.params[bn.gamma + c..bn.gamma + 2 * c],
            &self.state[bn.running..bn.running + c],
            &self.state[bn.running + c..bn.running + 2 * c],
            relu,
            false,
        )
    }
}

/// Multiplies `v` by the inverted-dropout mask drawn from `seed`: forward
/// applies it to activations, backward to their gradients.
pub fn apply_dropout_mask<T: Float>(v: &mut [T], p: f64, seed: u64) {
    use rand::SeedableRng;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let keep = T::from_f64c(1.0 / (1.0 - p));
    for x in v.iter_mut() {
        *x = if rng.gen::<f64>() < p {
            T::zero()
        } else {
            *x * keep
        };
    }
}

/// `local`, or the statistics an installed BatchNorm hook gives for it.
fn hooked<T: Float>(local: Stats<T>) -> Stats<T> {
    if !crate::cpu::bn_hook::installed() {
        return local;
    }
    let mean: Vec<f64> = local.mean.iter().map(|v| v.to_f64c()).collect();
    let var: Vec<f64> = local.var.iter().map(|v| v.to_f64c()).collect();
    match crate::cpu::bn_hook::hooked_stats(local.count, &mean, &var) {
        Some((count, mean, var)) => Stats {
            mean: mean.into_iter().map(T::from_f64c).collect(),
            var: var.into_iter().map(T::from_f64c).collect(),
            count,
        },
        None => local,
    }
}
