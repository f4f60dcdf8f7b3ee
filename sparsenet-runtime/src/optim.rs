//! Stochastic gradient descent with momentum, exactly as `torch.optim.SGD`.
//!
//! For each parameter `p` with gradient `grad`, one [`Sgd::step`] does (dampening
//! 0, as PyTorch's default):
//!
//! ```text
//! g = grad + weight_decay * p
//! v = momentum * v + g            (first step: v = g)
//! update = g + momentum * v       (nesterov)   or   update = v   (plain)
//! p = p - lr * update
//! ```
//!
//! PyTorch creates the momentum buffer as a copy of `g` on the first step. The
//! velocity here starts at zero instead, which gives the same first step:
//! `momentum * 0 + g == g` exactly (up to the sign of a zero). So a fresh
//! [`SgdState`] and one restored from a checkpoint need no "started" flag.
//!
//! Arithmetic runs in the element type `T` with the hyper-parameters rounded to
//! `T`, as PyTorch does for `float32` parameters.

use crate::float::Float;

/// Hyper-parameters of SGD with momentum (PyTorch semantics, dampening 0).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sgd {
    /// Momentum factor (0 for plain SGD).
    pub momentum: f64,
    /// Nesterov momentum (needs `momentum > 0`, as in PyTorch).
    pub nesterov: bool,
    /// L2 penalty added to the gradient: `g = grad + weight_decay * p`.
    pub weight_decay: f64,
}

/// The optimiser's state: one velocity (momentum buffer) per parameter element,
/// in the same flat layout as the model's parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct SgdState<T> {
    /// Momentum buffer, `params.len()` elements.
    pub velocity: Vec<T>,
}

impl Sgd {
    /// Checks the hyper-parameters: finite, non-negative, and `momentum > 0` when
    /// `nesterov` is set (PyTorch refuses Nesterov without momentum).
    pub fn validate(&self) -> Result<(), String> {
        if !(self.momentum.is_finite() && self.momentum >= 0.0) {
            return Err(format!(
                "SGD momentum must be a finite number >= 0, found {}",
                self.momentum
            ));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(format!(
                "SGD weight decay must be a finite number >= 0, found {}",
                self.weight_decay
            ));
        }
        if self.nesterov && self.momentum <= 0.0 {
            return Err(format!(
                "Nesterov momentum requires momentum > 0, found momentum {}",
                self.momentum
            ));
        }
        Ok(())
    }

    /// A zero velocity for `n` parameter elements.
    pub fn init<T: Float>(&self, n: usize) -> SgdState<T> {
        SgdState {
            velocity: vec![T::zero(); n],
        }
    }

    /// One optimisation step with learning rate `lr`: updates `params` in place
    /// from `grads` and the velocity in `state`. Allocation-free.
    ///
    /// # Panics
    /// If `params`, `grads` and `state.velocity` differ in length.
    pub fn step<T: Float>(&self, state: &mut SgdState<T>, params: &mut [T], grads: &[T], lr: f64) {
        assert!(
            params.len() == grads.len() && params.len() == state.velocity.len(),
            "Sgd::step: expected equal lengths, found {} parameters, {} gradients and {} \
             velocity elements",
            params.len(),
            grads.len(),
            state.velocity.len()
        );
        let wd = T::from_f64c(self.weight_decay);
        let mom = T::from_f64c(self.momentum);
        let lr = T::from_f64c(lr);
        let with_wd = self.weight_decay != 0.0;
        let iter = params.iter_mut().zip(grads).zip(state.velocity.iter_mut());
        match (with_wd, self.nesterov) {
            (false, false) => {
                for ((p, &grad), v) in iter {
                    *v = mom * *v + grad;
                    *p = *p - lr * *v;
                }
            }
            (false, true) => {
                for ((p, &grad), v) in iter {
                    *v = mom * *v + grad;
                    *p = *p - lr * (grad + mom * *v);
                }
            }
            (true, false) => {
                for ((p, &grad), v) in iter {
                    let g = grad + wd * *p;
                    *v = mom * *v + g;
                    *p = *p - lr * *v;
                }
            }
            (true, true) => {
                for ((p, &grad), v) in iter {
                    let g = grad + wd * *p;
                    *v = mom * *v + g;
                    *p = *p - lr * (g + mom * *v);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 * (1.0 + b.abs())
    }

    fn assert_close(found: &[f64], expected: &[f64], what: &str) {
        assert_eq!(found.len(), expected.len());
        for (i, (&f, &e)) in found.iter().zip(expected).enumerate() {
            assert!(close(f, e), "{what}[{i}]: expected {e}, found {f}");
        }
    }

    /// Runs three steps with fixed gradients and returns params after each step.
    fn run(sgd: Sgd, lr: f64) -> Vec<Vec<f64>> {
        let mut p = vec![1.0, -2.0];
        let grads = [[0.5, 1.0], [-1.0, 2.0], [0.25, 0.0]];
        let mut st = sgd.init::<f64>(2);
        grads
            .iter()
            .map(|g| {
                sgd.step(&mut st, &mut p, g, lr);
                p.clone()
            })
            .collect()
    }

    #[test]
    fn plain_momentum_by_hand() {
        let sgd = Sgd {
            momentum: 0.9,
            nesterov: false,
            weight_decay: 0.0,
        };
        let out = run(sgd, 0.1);
        // Step 1: v = g = [0.5, 1]; p = [1 - 0.05, -2 - 0.1].
        assert_close(&out[0], &[0.95, -2.1], "step 1");
        // Step 2: v = 0.9*[0.5, 1] + [-1, 2] = [-0.55, 2.9]; p -= 0.1 v.
        assert_close(&out[1], &[1.005, -2.39], "step 2");
        // Step 3: v = 0.9*[-0.55, 2.9] + [0.25, 0] = [-0.245, 2.61].
        assert_close(&out[2], &[1.0295, -2.651], "step 3");
    }

    #[test]
    fn nesterov_by_hand() {
        let sgd = Sgd {
            momentum: 0.9,
            nesterov: true,
            weight_decay: 0.0,
        };
        let out = run(sgd, 0.1);
        // Step 1: v = [0.5, 1]; update = g + 0.9 v = [0.95, 1.9].
        assert_close(&out[0], &[0.905, -2.19], "step 1");
        // Step 2: v = [-0.55, 2.9]; update = [-1, 2] + 0.9 v = [-1.495, 4.61].
        assert_close(&out[1], &[1.0545, -2.651], "step 2");
        // Step 3: v = [-0.245, 2.61]; update = [0.25, 0] + 0.9 v = [0.0295, 2.349].
        assert_close(&out[2], &[1.05155, -2.8859], "step 3");
    }

    #[test]
    fn plain_with_weight_decay_by_hand() {
        let sgd = Sgd {
            momentum: 0.5,
            nesterov: false,
            weight_decay: 0.1,
        };
        let out = run(sgd, 1.0);
        // Step 1: g = [0.5 + 0.1, 1 - 0.2] = [0.6, 0.8]; v = g; p = [0.4, -2.8].
        assert_close(&out[0], &[0.4, -2.8], "step 1");
        // Step 2: g = [-1 + 0.04, 2 - 0.28] = [-0.96, 1.72];
        // v = 0.5*[0.6, 0.8] + g = [-0.66, 2.12]; p = [1.06, -4.92].
        assert_close(&out[1], &[1.06, -4.92], "step 2");
        // Step 3: g = [0.25 + 0.106, -0.492] = [0.356, -0.492];
        // v = 0.5*[-0.66, 2.12] + g = [0.026, 0.568]; p = [1.034, -5.488].
        assert_close(&out[2], &[1.034, -5.488], "step 3");
    }

    #[test]
    fn nesterov_with_weight_decay_by_hand() {
        let sgd = Sgd {
            momentum: 0.5,
            nesterov: true,
            weight_decay: 0.1,
        };
        let out = run(sgd, 1.0);
        // Step 1: g = [0.6, 0.8]; v = g; update = g + 0.5 v = [0.9, 1.2]; p = [0.1, -3.2].
        assert_close(&out[0], &[0.1, -3.2], "step 1");
        // Step 2: g = [-1 + 0.01, 2 - 0.32] = [-0.99, 1.68];
        // v = 0.5*[0.6, 0.8] + g = [-0.69, 2.08];
        // update = g + 0.5 v = [-1.335, 2.72]; p = [1.435, -5.92].
        assert_close(&out[1], &[1.435, -5.92], "step 2");
        // Step 3: g = [0.25 + 0.1435, -0.592] = [0.3935, -0.592];
        // v = 0.5*[-0.69, 2.08] + g = [0.0485, 0.448];
        // update = g + 0.5 v = [0.41775, -0.368]; p = [1.01725, -5.552].
        assert_close(&out[2], &[1.01725, -5.552], "step 3");
    }

    #[test]
    fn zero_momentum_is_plain_sgd() {
        let sgd = Sgd {
            momentum: 0.0,
            nesterov: false,
            weight_decay: 0.0,
        };
        let out = run(sgd, 0.5);
        assert_close(&out[0], &[0.75, -2.5], "step 1");
        assert_close(&out[1], &[1.25, -3.5], "step 2");
        assert_close(&out[2], &[1.125, -3.5], "step 3");
    }

    #[test]
    fn velocity_is_kept_in_state_and_f32_works() {
        let sgd = Sgd {
            momentum: 0.9,
            nesterov: true,
            weight_decay: 1e-4,
        };
        let mut st = sgd.init::<f32>(3);
        let mut p = [1.0f32, 2.0, 3.0];
        sgd.step(&mut st, &mut p, &[1.0, 0.0, -1.0], 0.1);
        // v = g = grad + 1e-4 p.
        let wd = 1e-4f32;
        assert_eq!(st.velocity, vec![1.0 + wd, wd * 2.0, -1.0 + wd * 3.0]);
        // Resuming from a copied state continues identically.
        let mut st2 = st.clone();
        let mut p2 = p;
        sgd.step(&mut st, &mut p, &[0.5, 0.5, 0.5], 0.01);
        sgd.step(&mut st2, &mut p2, &[0.5, 0.5, 0.5], 0.01);
        assert_eq!(p, p2);
        assert_eq!(st, st2);
    }

    #[test]
    #[should_panic(expected = "expected equal lengths")]
    fn length_mismatch_panics() {
        let sgd = Sgd {
            momentum: 0.9,
            nesterov: false,
            weight_decay: 0.0,
        };
        let mut st = sgd.init::<f64>(2);
        sgd.step(&mut st, &mut [0.0, 0.0], &[1.0], 0.1);
    }

    #[test]
    fn validate() {
        let ok = Sgd {
            momentum: 0.9,
            nesterov: true,
            weight_decay: 1e-4,
        };
        assert!(ok.validate().is_ok());
        let e = Sgd {
            momentum: 0.0,
            ..ok
        }
        .validate()
        .unwrap_err();
        assert!(e.contains("Nesterov"), "{e}");
        assert!(Sgd {
            momentum: -1.0,
            ..ok
        }
        .validate()
        .is_err());
        assert!(Sgd {
            weight_decay: f64::NAN,
            ..ok
        }
        .validate()
        .is_err());
    }
}
