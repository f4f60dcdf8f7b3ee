//! Learning-rate schedules and the SparseNet paper's training recipe.
//!
//! A [`LrPolicy`] gives the learning rate at a fractional epoch (so schedules can
//! change the rate every step): a linear warm-up from 0 to `base_lr` over
//! `warmup_epochs`, multiplied by a [`Schedule`]:
//!
//! * [`Schedule::Constant`] gives `base_lr`.
//! * [`Schedule::Step`] gives `base_lr * gamma^k`, where `k` counts the milestones
//!   reached; a milestone `m` is the fraction `m` of `total_epochs` (as
//!   `torch.optim.lr_scheduler.MultiStepLR` with milestones `m * total_epochs`).
//! * [`Schedule::Cosine`] gives cosine annealing from `base_lr` to `min_lr` over the
//!   epochs after the warm-up, `[warmup_epochs, total_epochs]`.

use crate::optim::Sgd;

/// The shape of the learning rate over training (after warm-up).
#[derive(Clone, Debug, PartialEq)]
pub enum Schedule {
    /// The base learning rate throughout.
    Constant,
    /// Multiply by `gamma` at each milestone.
    Step {
        /// Fractions of the total epochs, increasing, each in `(0, 1)`; e.g.
        /// `[0.5, 0.75]`.
        milestones: Vec<f64>,
        /// Factor applied at each milestone, e.g. `0.1`.
        gamma: f64,
    },
    /// Cosine annealing from the base rate down to `min_lr` at the last epoch.
    Cosine {
        /// Learning rate at the end of training.
        min_lr: f64,
    },
}

impl Schedule {
    /// The paper's step schedule: divide by 10 at 50% and 75% of training.
    pub fn paper_step() -> Schedule {
        Schedule::Step {
            milestones: vec![0.5, 0.75],
            gamma: 0.1,
        }
    }
}

impl std::str::FromStr for Schedule {
    type Err = String;

    /// See [`parse_schedule`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_schedule(s)
    }
}

/// Parses a schedule from a command-line string:
///
/// * `constant`
/// * `step` (milestones 0.5 and 0.75 of training, gamma 0.1) or
///   `step:0.5,0.75` (milestones as fractions of the total epochs, gamma 0.1)
/// * `cosine` (down to 0) or `cosine:1e-4` (down to that learning rate)
///
/// Names are case-insensitive; surrounding white space is ignored.
pub fn parse_schedule(s: &str) -> Result<Schedule, String> {
    const FORMS: &str = "expected `constant`, `step`, `step:M1,M2,...` (milestones as fractions \
                         of the total epochs, e.g. `step:0.5,0.75`), `cosine` or `cosine:MIN_LR`";
    let trimmed = s.trim();
    let (name, arg) = match trimmed.split_once(':') {
        Some((n, a)) => (n.trim(), Some(a.trim())),
        None => (trimmed, None),
    };
    match (name.to_ascii_lowercase().as_str(), arg) {
        ("constant", None) => Ok(Schedule::Constant),
        ("constant", Some(_)) => Err(format!(
            "invalid learning-rate schedule `{s}`: `constant` takes no argument; {FORMS}"
        )),
        ("step", None) => Ok(Schedule::paper_step()),
        ("step", Some(list)) => {
            let mut milestones = Vec::new();
            for item in list.split(',') {
                let item = item.trim();
                let m: f64 = item.parse().map_err(|_| {
                    format!(
                        "invalid learning-rate schedule `{s}`: expected milestones as numbers \
                         separated by commas, found `{item}`"
                    )
                })?;
                milestones.push(m);
            }
            let sched = Schedule::Step {
                milestones,
                gamma: 0.1,
            };
            check_schedule(&sched)
                .map_err(|e| format!("invalid learning-rate schedule `{s}`: {e}"))?;
            Ok(sched)
        }
        ("cosine", None) => Ok(Schedule::Cosine { min_lr: 0.0 }),
        ("cosine", Some(v)) => {
            let min_lr: f64 = v.parse().map_err(|_| {
                format!(
                    "invalid learning-rate schedule `{s}`: expected a minimum learning rate \
                     after `cosine:`, found `{v}`"
                )
            })?;
            let sched = Schedule::Cosine { min_lr };
            check_schedule(&sched)
                .map_err(|e| format!("invalid learning-rate schedule `{s}`: {e}"))?;
            Ok(sched)
        }
        _ => Err(format!("unknown learning-rate schedule `{s}`: {FORMS}")),
    }
}

fn check_schedule(s: &Schedule) -> Result<(), String> {
    match s {
        Schedule::Constant => Ok(()),
        Schedule::Step { milestones, gamma } => {
            if milestones.is_empty() {
                return Err("expected at least one milestone, found none".to_string());
            }
            for &m in milestones {
                if !(m > 0.0 && m < 1.0) {
                    return Err(format!(
                        "expected milestones strictly between 0 and 1 (fractions of the total \
                         epochs), found {m}"
                    ));
                }
            }
            for w in milestones.windows(2) {
                if w[1] <= w[0] {
                    return Err(format!(
                        "expected strictly increasing milestones, found {} after {}",
                        w[1], w[0]
                    ));
                }
            }
            if !(gamma.is_finite() && *gamma > 0.0) {
                return Err(format!("expected a step factor gamma > 0, found {gamma}"));
            }
            Ok(())
        }
        Schedule::Cosine { min_lr } => {
            if !(min_lr.is_finite() && *min_lr >= 0.0) {
                return Err(format!(
                    "expected a minimum learning rate >= 0, found {min_lr}"
                ));
            }
            Ok(())
        }
    }
}

/// The learning rate as a function of the (fractional) epoch.
#[derive(Clone, Debug, PartialEq)]
pub struct LrPolicy {
    /// Peak learning rate (reached at the end of the warm-up).
    pub base_lr: f64,
    /// Shape after the warm-up.
    pub schedule: Schedule,
    /// Epochs of linear warm-up from 0 to `base_lr` (0: none); less than
    /// `total_epochs`.
    pub warmup_epochs: f64,
    /// Length of training in epochs.
    pub total_epochs: f64,
}

/// A field of [`LrPolicy`], as [`LrPolicyError`] names it (displayed as the
/// field's name), so that a caller can say which of its own settings is
/// wrong (the `train` example maps each to its flag).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LrParam {
    /// [`LrPolicy::base_lr`].
    BaseLr,
    /// [`LrPolicy::schedule`].
    Schedule,
    /// [`LrPolicy::warmup_epochs`].
    WarmupEpochs,
    /// [`LrPolicy::total_epochs`].
    TotalEpochs,
}

impl std::fmt::Display for LrParam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LrParam::BaseLr => "base_lr",
            LrParam::Schedule => "schedule",
            LrParam::WarmupEpochs => "warmup_epochs",
            LrParam::TotalEpochs => "total_epochs",
        })
    }
}

/// An [`LrPolicy`] that [`LrPolicy::validate`] refuses: which field, and why
/// (with the value found).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{param}: {reason}")]
pub struct LrPolicyError {
    /// The offending field.
    pub param: LrParam,
    /// What is wrong with it, naming the value.
    pub reason: String,
}

impl LrPolicy {
    /// Checks the policy: positive finite base rate and total, a finite
    /// warm-up in `[0, total_epochs)`, a well-formed schedule, and a cosine
    /// minimum no higher than the base rate. Every policy it accepts gives a
    /// finite, non-negative rate at every epoch, and the base rate (or the
    /// schedule's value) once the warm-up is over.
    pub fn validate(&self) -> Result<(), LrPolicyError> {
        let err = |param, reason: String| Err(LrPolicyError { param, reason });
        if !(self.base_lr.is_finite() && self.base_lr > 0.0) {
            return err(
                LrParam::BaseLr,
                format!(
                    "expected a finite base learning rate > 0, found {}",
                    self.base_lr
                ),
            );
        }
        if !(self.total_epochs.is_finite() && self.total_epochs > 0.0) {
            return err(
                LrParam::TotalEpochs,
                format!(
                    "expected a finite number of epochs > 0, found {}",
                    self.total_epochs
                ),
            );
        }
        // The warm-up must end before the run does: a warm-up as long as the
        // run never reaches the base rate, and leaves the cosine decay no
        // epochs, which made it train at rate 0 (its minimum) throughout.
        if !(self.warmup_epochs >= 0.0 && self.warmup_epochs < self.total_epochs) {
            return err(
                LrParam::WarmupEpochs,
                format!(
                    "expected a warm-up of at least 0 epochs that ends before the run's {} \
                     epochs, found {}",
                    self.total_epochs, self.warmup_epochs
                ),
            );
        }
        check_schedule(&self.schedule).or_else(|reason| err(LrParam::Schedule, reason))?;
        if let Schedule::Cosine { min_lr } = self.schedule {
            if min_lr > self.base_lr {
                return err(
                    LrParam::Schedule,
                    format!(
                        "expected a cosine minimum learning rate at most the base rate {}, \
                         found {min_lr} (the rate would rise over the run)",
                        self.base_lr
                    ),
                );
            }
        }
        Ok(())
    }

    /// The learning rate at fractional epoch `epoch` (`step / steps_per_epoch`).
    /// Epochs before 0 count as 0 and epochs after `total_epochs` as
    /// `total_epochs`.
    pub fn lr_at(&self, epoch: f64) -> f64 {
        let total = self.total_epochs;
        let e = if epoch.is_nan() {
            0.0
        } else {
            epoch.clamp(0.0, total.max(0.0))
        };
        let warm = if self.warmup_epochs > 0.0 && e < self.warmup_epochs {
            e / self.warmup_epochs
        } else {
            1.0
        };
        let scheduled = match &self.schedule {
            Schedule::Constant => self.base_lr,
            Schedule::Step { milestones, gamma } => {
                // `e / total >= m` rather than `e >= m * total`: division is
                // correctly rounded, so epoch 3 of 10 reaches milestone 0.3 exactly.
                let reached = milestones.iter().filter(|&&m| e / total >= m).count();
                self.base_lr * gamma.powi(reached as i32)
            }
            Schedule::Cosine { min_lr } => {
                let span = total - self.warmup_epochs;
                let t = if span > 0.0 {
                    ((e - self.warmup_epochs) / span).clamp(0.0, 1.0)
                } else {
                    1.0
                };
                min_lr + (self.base_lr - min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
            }
        };
        warm * scheduled
    }

    /// The learning rate for global step `step` (0-based) with `steps_per_epoch`
    /// steps per epoch: `lr_at(step / steps_per_epoch)`.
    pub fn lr_at_step(&self, step: u64, steps_per_epoch: u64) -> f64 {
        self.lr_at(step as f64 / steps_per_epoch.max(1) as f64)
    }
}

/// A complete training recipe: batch size, epochs, learning-rate policy and
/// optimiser.
#[derive(Clone, Debug, PartialEq)]
pub struct Recipe {
    /// Images per mini-batch.
    pub batch_size: usize,
    /// Epochs of training.
    pub epochs: u64,
    /// Learning rate over training (`lr.total_epochs == epochs as f64`).
    pub lr: LrPolicy,
    /// Optimiser hyper-parameters.
    pub sgd: Sgd,
}

impl Recipe {
    /// The SparseNet paper's CIFAR recipe (after DenseNet's): batch 64, SGD with
    /// Nesterov momentum 0.9 and weight decay 1e-4, 300 epochs, learning rate 0.1
    /// divided by 10 at 50% and 75% of training, no warm-up.
    pub fn paper() -> Recipe {
        Recipe {
            batch_size: 64,
            epochs: 300,
            lr: LrPolicy {
                base_lr: 0.1,
                schedule: Schedule::paper_step(),
                warmup_epochs: 0.0,
                total_epochs: 300.0,
            },
            sgd: Sgd {
                momentum: 0.9,
                nesterov: true,
                weight_decay: 1e-4,
            },
        }
    }

    /// A short recipe for a first result in minutes (the `train` example's
    /// default): batch 64, SGD with Nesterov momentum 0.9 and weight decay
    /// 5e-4, 6 epochs, learning rate 0.1 after 0.3 epochs of linear warm-up,
    /// then cosine decay to 0.
    pub fn quick() -> Recipe {
        Recipe {
            batch_size: 64,
            epochs: 6,
            lr: LrPolicy {
                base_lr: 0.1,
                schedule: Schedule::Cosine { min_lr: 0.0 },
                warmup_epochs: 0.3,
                total_epochs: 6.0,
            },
            sgd: Sgd {
                momentum: 0.9,
                nesterov: true,
                weight_decay: 5e-4,
            },
        }
    }

    /// The same recipe over `epochs` epochs (the schedule's milestones, being
    /// fractions, scale along; the warm-up is capped at half the new length,
    /// so that it still ends before the run does).
    pub fn with_epochs(mut self, epochs: u64) -> Recipe {
        self.epochs = epochs;
        self.lr.total_epochs = epochs as f64;
        self.lr.warmup_epochs = self.lr.warmup_epochs.min(epochs as f64 / 2.0);
        self
    }

    /// Checks the learning-rate policy, the optimiser, and that the batch size
    /// and epochs are positive and agree with the policy.
    pub fn validate(&self) -> Result<(), String> {
        if self.batch_size == 0 {
            return Err("expected a batch size > 0, found 0".to_string());
        }
        if self.epochs == 0 {
            return Err("expected epochs > 0, found 0".to_string());
        }
        if self.lr.total_epochs != self.epochs as f64 {
            return Err(format!(
                "expected the learning-rate policy to span the recipe's {} epochs, found {}",
                self.epochs, self.lr.total_epochs
            ));
        }
        self.lr.validate().map_err(|e| e.to_string())?;
        self.sgd.validate()
    }
}

/// The SparseNet paper's CIFAR recipe; see [`Recipe::paper`].
pub fn paper_recipe() -> Recipe {
    Recipe::paper()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(schedule: Schedule, warmup: f64, total: f64) -> LrPolicy {
        LrPolicy {
            base_lr: 0.1,
            schedule,
            warmup_epochs: warmup,
            total_epochs: total,
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 * (1.0 + b.abs())
    }

    #[test]
    fn paper_recipe_values() {
        let r = paper_recipe();
        assert_eq!(r, Recipe::paper());
        assert_eq!(r.batch_size, 64);
        assert_eq!(r.epochs, 300);
        assert_eq!(
            r.sgd,
            Sgd {
                momentum: 0.9,
                nesterov: true,
                weight_decay: 1e-4
            }
        );
        r.validate().unwrap();
        let lr = &r.lr;
        assert_eq!(lr.lr_at(0.0), 0.1);
        assert_eq!(lr.lr_at(149.999), 0.1);
        assert!(close(lr.lr_at(150.0), 0.01));
        assert!(close(lr.lr_at(224.5), 0.01));
        assert!(close(lr.lr_at(225.0), 0.001));
        assert!(close(lr.lr_at(299.99), 0.001));
        assert!(close(lr.lr_at(1000.0), 0.001));
        // Step-level: step 150 * 782 is the first step of epoch 150.
        assert_eq!(lr.lr_at_step(150 * 782 - 1, 782), 0.1);
        assert!(close(lr.lr_at_step(150 * 782, 782), 0.01));
    }

    #[test]
    fn with_epochs_scales_milestones() {
        let r = Recipe::paper().with_epochs(10);
        r.validate().unwrap();
        assert_eq!(r.lr.lr_at(4.99), 0.1);
        assert!(close(r.lr.lr_at(5.0), 0.01));
        // 0.75 * 10 = 7.5.
        assert!(close(r.lr.lr_at(7.4), 0.01));
        assert!(close(r.lr.lr_at(7.5), 0.001));
    }

    #[test]
    fn milestone_boundaries_are_exact() {
        let p = policy(
            Schedule::Step {
                milestones: vec![0.3, 0.7],
                gamma: 0.5,
            },
            0.0,
            10.0,
        );
        // 0.3 * 10.0 == 3.0000000000000004 in f64; epoch 3 must still be past it.
        assert_eq!(p.lr_at(2.999), 0.1);
        assert_eq!(p.lr_at(3.0), 0.05);
        assert_eq!(p.lr_at(6.999), 0.05);
        assert_eq!(p.lr_at(7.0), 0.025);
    }

    #[test]
    fn constant_and_warmup() {
        let p = policy(Schedule::Constant, 2.0, 10.0);
        p.validate().unwrap();
        assert_eq!(p.lr_at(0.0), 0.0);
        assert!(close(p.lr_at(0.5), 0.025));
        assert!(close(p.lr_at(1.0), 0.05));
        assert!(close(p.lr_at(1.5), 0.075));
        assert_eq!(p.lr_at(2.0), 0.1);
        assert_eq!(p.lr_at(9.0), 0.1);
        assert_eq!(p.lr_at(-1.0), 0.0);
        assert_eq!(p.lr_at(f64::NAN), 0.0);
        // Monotone during warm-up.
        let mut prev = -1.0;
        for i in 0..=200 {
            let lr = p.lr_at(i as f64 * 0.01);
            assert!(lr > prev);
            prev = lr;
        }
    }

    #[test]
    fn cosine_after_warmup() {
        let p = policy(Schedule::Cosine { min_lr: 0.001 }, 1.0, 11.0);
        p.validate().unwrap();
        assert!(close(p.lr_at(0.5), 0.05));
        assert!(close(p.lr_at(1.0), 0.1));
        // Half-way through the 10 post-warm-up epochs: the mean of base and min.
        assert!(close(p.lr_at(6.0), 0.0505));
        // A quarter: min + (base - min) * (1 + cos(pi/4)) / 2.
        let q = 0.001 + 0.099 * 0.5 * (1.0 + std::f64::consts::FRAC_1_SQRT_2);
        assert!(close(p.lr_at(3.5), q));
        assert!(close(p.lr_at(11.0), 0.001));
        assert!(close(p.lr_at(50.0), 0.001));
        // Non-increasing after the warm-up.
        let mut prev = f64::INFINITY;
        for i in 0..=100 {
            let lr = p.lr_at(1.0 + i as f64 * 0.1);
            assert!(lr <= prev + 1e-15);
            prev = lr;
        }
        // No warm-up.
        let p = policy(Schedule::Cosine { min_lr: 0.0 }, 0.0, 4.0);
        assert_eq!(p.lr_at(0.0), 0.1);
        assert!(close(p.lr_at(2.0), 0.05));
        assert!(p.lr_at(4.0).abs() < 1e-17);
    }

    #[test]
    fn warmup_with_step() {
        let p = policy(Schedule::paper_step(), 5.0, 100.0);
        assert!(close(p.lr_at(2.5), 0.05));
        assert_eq!(p.lr_at(5.0), 0.1);
        assert!(close(p.lr_at(50.0), 0.01));
    }

    #[test]
    fn parse_accepted_forms() {
        assert_eq!(parse_schedule("constant").unwrap(), Schedule::Constant);
        assert_eq!(parse_schedule(" Constant ").unwrap(), Schedule::Constant);
        assert_eq!(parse_schedule("step").unwrap(), Schedule::paper_step());
        assert_eq!(
            parse_schedule("step:0.5,0.75").unwrap(),
            Schedule::paper_step()
        );
        assert_eq!(
            parse_schedule("STEP: 0.3 , 0.6, 0.9").unwrap(),
            Schedule::Step {
                milestones: vec![0.3, 0.6, 0.9],
                gamma: 0.1
            }
        );
        assert_eq!(
            parse_schedule("cosine").unwrap(),
            Schedule::Cosine { min_lr: 0.0 }
        );
        assert_eq!(
            parse_schedule("cosine:1e-4").unwrap(),
            Schedule::Cosine { min_lr: 1e-4 }
        );
        let s: Schedule = "step:0.25".parse().unwrap();
        assert_eq!(
            s,
            Schedule::Step {
                milestones: vec![0.25],
                gamma: 0.1
            }
        );
    }

    #[test]
    fn parse_errors_are_clear() {
        let e = parse_schedule("linear").unwrap_err();
        assert!(e.contains("`linear`") && e.contains("`cosine`"), "{e}");
        let e = parse_schedule("").unwrap_err();
        assert!(e.contains("unknown"), "{e}");
        let e = parse_schedule("step:0.5,x").unwrap_err();
        assert!(e.contains("`x`"), "{e}");
        let e = parse_schedule("step:").unwrap_err();
        assert!(e.contains("found ``"), "{e}");
        let e = parse_schedule("step:0.75,0.5").unwrap_err();
        assert!(e.contains("increasing"), "{e}");
        let e = parse_schedule("step:50,75").unwrap_err();
        assert!(e.contains("between 0 and 1") && e.contains("50"), "{e}");
        let e = parse_schedule("step:0.5,0.5").unwrap_err();
        assert!(e.contains("increasing"), "{e}");
        let e = parse_schedule("cosine:-1").unwrap_err();
        assert!(e.contains("-1"), "{e}");
        let e = parse_schedule("cosine:abc").unwrap_err();
        assert!(e.contains("`abc`"), "{e}");
        let e = parse_schedule("constant:1").unwrap_err();
        assert!(e.contains("no argument"), "{e}");
        let e = parse_schedule("step:nan").unwrap_err();
        assert!(e.contains("NaN"), "{e}");
    }

    /// Every parameter a policy can hold wrong, each refused naming its
    /// field and the value: a warm-up as long as the run (or NaN, infinite,
    /// negative) used to pass or be clamped, and a cosine run then trained at
    /// rate 0 throughout.
    #[test]
    fn validate_names_every_bad_parameter() {
        let cosine = policy(Schedule::Cosine { min_lr: 0.0 }, 1.0, 6.0);
        cosine.validate().unwrap();
        let refused = |p: LrPolicy| p.validate().expect_err(&format!("{p:?} is refused"));
        for warmup in [6.0, 7.0, f64::NAN, f64::INFINITY, -0.5] {
            let e = refused(LrPolicy {
                warmup_epochs: warmup,
                ..cosine.clone()
            });
            assert_eq!(e.param, LrParam::WarmupEpochs);
            assert_eq!(
                e.to_string(),
                format!(
                    "warmup_epochs: expected a warm-up of at least 0 epochs that ends before \
                     the run's 6 epochs, found {warmup}"
                )
            );
        }
        for base in [0.0, -0.1, f64::NAN, f64::INFINITY] {
            let e = refused(LrPolicy {
                base_lr: base,
                ..cosine.clone()
            });
            assert_eq!(e.param, LrParam::BaseLr);
            assert!(e.to_string().contains(&format!("found {base}")), "{e}");
        }
        for total in [0.0, f64::NAN, f64::INFINITY] {
            let e = refused(LrPolicy {
                total_epochs: total,
                ..cosine.clone()
            });
            assert_eq!(e.param, LrParam::TotalEpochs);
            assert!(e.to_string().contains(&format!("found {total}")), "{e}");
        }
        for min_lr in [0.2, f64::NAN, f64::INFINITY, -1e-3] {
            let e = refused(LrPolicy {
                schedule: Schedule::Cosine { min_lr },
                ..cosine.clone()
            });
            assert_eq!(e.param, LrParam::Schedule);
            assert!(e.to_string().contains(&format!("found {min_lr}")), "{e}");
        }
        let e = refused(LrPolicy {
            schedule: Schedule::Step {
                milestones: vec![0.5],
                gamma: f64::NAN,
            },
            ..cosine.clone()
        });
        assert_eq!(
            e.to_string(),
            "schedule: expected a step factor gamma > 0, found NaN"
        );
    }

    /// The edges of an accepted policy: no warm-up starts at the base rate,
    /// the last step of a cosine run is still above its minimum (reached at
    /// the end of the run), and a minimum equal to the base rate is a
    /// constant rate. Every step of a valid run trains at a positive rate but
    /// the first of a warm-up.
    #[test]
    fn accepted_policies_are_well_defined_at_their_edges() {
        let steps = 10; // per epoch
        let none = policy(Schedule::Cosine { min_lr: 0.0 }, 0.0, 3.0);
        none.validate().unwrap();
        assert_eq!(none.lr_at_step(0, steps), 0.1);
        let last = none.lr_at_step(3 * steps - 1, steps);
        assert!(last > 0.0 && last < 0.01, "{last}");
        assert_eq!(none.lr_at(3.0), 0.0);
        let flat = policy(Schedule::Cosine { min_lr: 0.1 }, 0.5, 3.0);
        flat.validate().unwrap();
        for step in 5..3 * steps {
            assert_eq!(flat.lr_at_step(step, steps), 0.1);
        }
        // The longest warm-up accepted still leaves the run steps at > 0.
        let long = policy(Schedule::Cosine { min_lr: 0.0 }, 2.9, 3.0);
        long.validate().unwrap();
        for step in 1..3 * steps {
            assert!(long.lr_at_step(step, steps) > 0.0, "step {step}");
        }
    }

    #[test]
    fn validate_policy() {
        let ok = policy(Schedule::Constant, 0.0, 10.0);
        assert!(ok.validate().is_ok());
        assert!(LrPolicy {
            base_lr: 0.0,
            ..ok.clone()
        }
        .validate()
        .is_err());
        assert!(LrPolicy {
            warmup_epochs: 11.0,
            ..ok.clone()
        }
        .validate()
        .is_err());
        assert!(LrPolicy {
            total_epochs: f64::INFINITY,
            ..ok.clone()
        }
        .validate()
        .is_err());
        let e = Recipe {
            epochs: 5,
            ..Recipe::paper()
        }
        .validate()
        .unwrap_err();
        assert!(e.contains("300"), "{e}");
    }
}
