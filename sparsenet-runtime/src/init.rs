//! Parameter initialisation from a seed.

use crate::model::Init;
use crate::Float;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

/// Fills `params` following `table` (offset, length, rule) with a
/// deterministic RNG seeded by `seed`.
pub fn init_params<T: Float>(params: &mut [T], table: &[(usize, usize, Init)], seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for &(offset, len, init) in table {
        let dst = &mut params[offset..offset + len];
        match init {
            Init::Zeros => dst.fill(T::zero()),
            Init::Ones => dst.fill(T::one()),
            Init::KaimingNormal { .. } | Init::Normal { .. } => {
                let std = match init {
                    Init::KaimingNormal { fan_in } => (2.0 / fan_in as f64).sqrt(),
                    Init::Normal { std } => std,
                    _ => unreachable!(),
                };
                let normal = Normal::new(0.0, std).expect("std is finite and positive");
                for v in dst.iter_mut() {
                    *v = T::from_f64c(normal.sample(&mut rng));
                }
            }
        }
    }
}

/// Running statistics of a fresh model: mean 0, variance 1, for each
/// BatchNorm at `offsets` with `channels` channels.
pub fn init_state<T: Float>(state: &mut [T], bns: &[(usize, usize)]) {
    for &(offset, c) in bns {
        state[offset..offset + c].fill(T::zero());
        state[offset + c..offset + 2 * c].fill(T::one());
    }
}
