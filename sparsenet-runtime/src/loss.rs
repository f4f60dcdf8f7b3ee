//! Softmax cross-entropy for classification, as `torch.nn.CrossEntropyLoss`
//! (mean reduction, optional label smoothing).

use ndarray::{Array2, ArrayView2, ArrayViewMut2};

use crate::float::Float;

/// Why softmax cross-entropy cannot be computed for a batch. Nothing was
/// written to the gradient buffer.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum LossError {
    /// The label count differs from the batch size.
    #[error("cross-entropy: expected one label per batch row ({rows}), found {labels} labels")]
    LabelCount {
        /// Rows of the logits (the batch size).
        rows: usize,
        /// Labels given.
        labels: usize,
    },
    /// The logits have no rows.
    #[error("cross-entropy: expected a non-empty batch, found 0 rows")]
    EmptyBatch,
    /// The logits have no columns.
    #[error("cross-entropy: expected at least one class, found 0 logit columns")]
    NoClasses,
    /// The gradient buffer is not shaped like the logits.
    #[error("cross-entropy: expected a gradient buffer of shape [{}, {}], found {found:?}", expected[0], expected[1])]
    GradientShape {
        /// The logits' `[batch, classes]`.
        expected: [usize; 2],
        /// The buffer's shape.
        found: Vec<usize>,
    },
    /// Label smoothing outside `[0, 1]` (or NaN).
    #[error("cross-entropy: expected label smoothing in [0, 1], found {0}")]
    Smoothing(f64),
    /// A label is not one of the classes.
    #[error("cross-entropy: label {label} (batch row {row}) is out of range for {classes} classes (expected 0..={})", classes - 1)]
    LabelOutOfRange {
        /// The label.
        label: usize,
        /// Its row in the batch.
        row: usize,
        /// The number of classes (logit columns).
        classes: usize,
    },
}

/// Mean softmax cross-entropy of `logits` (batch × classes) against `labels`,
/// with PyTorch's label smoothing: the target distribution is
/// `(1 - eps) * onehot(label) + eps / K` for `K` classes.
///
/// Returns the mean loss, its gradient with respect to the logits
/// (`(softmax - target) / batch`), and the number of correct predictions
/// (`argmax == label`, the first maximum on ties). Numerically stable
/// (log-sum-exp with the row maximum subtracted).
///
/// Errors (with a message naming the offending value) on a label `>= K`, a
/// label count different from the batch size, an empty batch or no classes, and
/// a smoothing outside `[0, 1]`.
pub fn softmax_cross_entropy<T: Float>(
    logits: ArrayView2<T>,
    labels: &[usize],
    label_smoothing: f64,
) -> Result<(T, Array2<T>, usize), LossError> {
    let mut grad = Array2::zeros(logits.raw_dim());
    let (loss, correct) =
        softmax_cross_entropy_into(logits, labels, label_smoothing, grad.view_mut())?;
    Ok((loss, grad, correct))
}

/// The checks [`softmax_cross_entropy`] makes of a batch of `rows` images
/// and `classes` logits each, without logits: one label per row, each a
/// class, a label smoothing in `[0, 1]` (so that a training step can refuse
/// a bad batch before its forward pass changes anything).
pub(crate) fn check_batch(
    rows: usize,
    classes: usize,
    labels: &[usize],
    label_smoothing: f64,
) -> Result<(), LossError> {
    if labels.len() != rows {
        return Err(LossError::LabelCount {
            rows,
            labels: labels.len(),
        });
    }
    if rows == 0 {
        return Err(LossError::EmptyBatch);
    }
    if classes == 0 {
        return Err(LossError::NoClasses);
    }
    if !(0.0..=1.0).contains(&label_smoothing) {
        return Err(LossError::Smoothing(label_smoothing));
    }
    if let Some((row, &label)) = labels.iter().enumerate().find(|&(_, &l)| l >= classes) {
        return Err(LossError::LabelOutOfRange {
            label,
            row,
            classes,
        });
    }
    Ok(())
}

/// As [`softmax_cross_entropy`], writing the gradient into `grad` (same shape as
/// `logits`) instead of allocating it. Returns the mean loss and the number of
/// correct predictions; on error `grad` is unchanged.
pub fn softmax_cross_entropy_into<T: Float>(
    logits: ArrayView2<T>,
    labels: &[usize],
    label_smoothing: f64,
    mut grad: ArrayViewMut2<T>,
) -> Result<(T, usize), LossError> {
    let (n, k) = logits.dim();
    check_batch(n, k, labels, label_smoothing)?;
    if grad.dim() != (n, k) {
        return Err(LossError::GradientShape {
            expected: [n, k],
            found: grad.shape().to_vec(),
        });
    }

    let eps = label_smoothing;
    let off = T::from_f64c(eps / k as f64); // target mass on every class
    let on = T::from_f64c(1.0 - eps) + off; // target mass on the label
    let inv_n = T::from_f64c(1.0 / n as f64);
    let mut total = 0.0f64;
    let mut correct = 0usize;
    for ((row, mut g), &label) in logits.outer_iter().zip(grad.outer_iter_mut()).zip(labels) {
        // Row maximum and first argmax.
        let mut best = 0usize;
        let mut max = row[0];
        for (j, &x) in row.iter().enumerate().skip(1) {
            if x > max {
                max = x;
                best = j;
            }
        }
        if best == label {
            correct += 1;
        }
        let mut sum = T::zero();
        for (gj, &x) in g.iter_mut().zip(row.iter()) {
            let e = (x - max).exp();
            *gj = e;
            sum += e;
        }
        let lse = max + sum.ln();
        // loss = sum_j t_j (lse - x_j) with t = (1 - eps) onehot + eps / K; every
        // term is >= 0, so there is no cancellation.
        let mut loss = T::from_f64c(1.0 - eps) * (lse - row[label]);
        if eps > 0.0 {
            let mut smooth = T::zero();
            for &x in row.iter() {
                smooth += lse - x;
            }
            loss += off * smooth;
        }
        total += loss.to_f64c();
        // d loss_i / d x_j = softmax_j - t_j, scaled by 1/N for the mean.
        let inv_sum = sum.recip();
        for (j, gj) in g.iter_mut().enumerate() {
            let t = if j == label { on } else { off };
            *gj = (*gj * inv_sum - t) * inv_n;
        }
    }
    Ok((T::from_f64c(total / n as f64), correct))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{array, Array2};
    use rand::{Rng, SeedableRng};

    /// Straightforward reference: -sum_j t_j log softmax_j, averaged.
    fn reference(logits: &Array2<f64>, labels: &[usize], eps: f64) -> f64 {
        let (n, k) = logits.dim();
        let mut total = 0.0;
        for (i, row) in logits.outer_iter().enumerate() {
            let z: f64 = row.iter().map(|x| x.exp()).sum();
            for (j, &x) in row.iter().enumerate() {
                let t = if j == labels[i] { 1.0 - eps } else { 0.0 } + eps / k as f64;
                total -= t * (x.exp() / z).ln();
            }
        }
        total / n as f64
    }

    fn random_logits(n: usize, k: usize, seed: u64) -> (Array2<f64>, Vec<usize>) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let logits = Array2::from_shape_fn((n, k), |_| rng.gen_range(-3.0..3.0));
        let labels = (0..n).map(|_| rng.gen_range(0..k)).collect();
        (logits, labels)
    }

    #[test]
    fn matches_reference_and_hand_values() {
        // Two equal logits: loss ln 2 for either label.
        let l = array![[0.0f64, 0.0], [1.0, 1.0]];
        let (loss, grad, correct) = softmax_cross_entropy(l.view(), &[0, 1], 0.0).unwrap();
        assert!((loss - std::f64::consts::LN_2).abs() < 1e-15);
        // Ties go to the first index: row 0 correct, row 1 not.
        assert_eq!(correct, 1);
        assert!((grad[[0, 0]] - -0.25).abs() < 1e-15 && (grad[[0, 1]] - 0.25).abs() < 1e-15);

        for eps in [0.0, 0.1, 0.5, 1.0] {
            let (logits, labels) = random_logits(7, 5, 3);
            let (loss, _, _) = softmax_cross_entropy(logits.view(), &labels, eps).unwrap();
            let r = reference(&logits, &labels, eps);
            assert!((loss - r).abs() < 1e-13, "eps {eps}: {loss} vs {r}");
        }
    }

    #[test]
    fn counts_correct_predictions() {
        let l = array![[1.0f32, 5.0, 2.0], [9.0, 1.0, 0.0], [0.0, 0.0, 3.0]];
        let (_, _, c) = softmax_cross_entropy(l.view(), &[1, 0, 0], 0.0).unwrap();
        assert_eq!(c, 2);
    }

    #[test]
    fn gradient_matches_finite_differences() {
        for (eps, seed) in [(0.0, 1u64), (0.1, 2), (0.3, 3)] {
            let (logits, labels) = random_logits(4, 6, seed);
            let (_, grad, _) = softmax_cross_entropy(logits.view(), &labels, eps).unwrap();
            let h = 1e-6;
            for i in 0..4 {
                for j in 0..6 {
                    let mut plus = logits.clone();
                    plus[[i, j]] += h;
                    let mut minus = logits.clone();
                    minus[[i, j]] -= h;
                    let lp = softmax_cross_entropy(plus.view(), &labels, eps).unwrap().0;
                    let lm = softmax_cross_entropy(minus.view(), &labels, eps).unwrap().0;
                    let fd = (lp - lm) / (2.0 * h);
                    assert!(
                        (fd - grad[[i, j]]).abs() < 1e-8,
                        "eps {eps} [{i},{j}]: fd {fd} vs analytic {}",
                        grad[[i, j]]
                    );
                }
            }
            // Each row's gradient sums to 0 (softmax and target both sum to 1).
            for row in grad.outer_iter() {
                assert!(row.sum().abs() < 1e-15);
            }
        }
    }

    #[test]
    fn stable_for_huge_logits() {
        let l = array![[1000.0f32, -1000.0, 0.0], [-1e30, 1e30, 5.0]];
        let (loss, grad, correct) = softmax_cross_entropy(l.view(), &[0, 1], 0.1).unwrap();
        assert!(loss.is_finite(), "{loss}");
        assert!(grad.iter().all(|g| g.is_finite()));
        assert_eq!(correct, 2);
        // Confident and right: only the smoothing term remains, large but finite.
        let (loss, _, _) = softmax_cross_entropy(l.view(), &[0, 1], 0.0).unwrap();
        assert_eq!(loss, 0.0);
    }

    #[test]
    fn f32_agrees_with_f64() {
        let (logits, labels) = random_logits(16, 10, 9);
        let l32 = logits.mapv(|x| x as f32);
        let (a, ga, ca) = softmax_cross_entropy(logits.view(), &labels, 0.1).unwrap();
        let (b, gb, cb) = softmax_cross_entropy(l32.view(), &labels, 0.1).unwrap();
        assert!((a - b as f64).abs() < 1e-5);
        assert_eq!(ca, cb);
        for (x, y) in ga.iter().zip(gb.iter()) {
            assert!((x - *y as f64).abs() < 1e-6);
        }
    }

    #[test]
    fn into_variant_reuses_buffer() {
        let (logits, labels) = random_logits(3, 4, 5);
        let mut buf = Array2::from_elem((3, 4), 7.0);
        let (loss, c) =
            softmax_cross_entropy_into(logits.view(), &labels, 0.2, buf.view_mut()).unwrap();
        let (loss2, grad2, c2) = softmax_cross_entropy(logits.view(), &labels, 0.2).unwrap();
        assert_eq!((loss, c), (loss2, c2));
        assert_eq!(buf, grad2);
        let mut wrong = Array2::zeros((3, 5));
        let e = softmax_cross_entropy_into(logits.view(), &labels, 0.2, wrong.view_mut())
            .unwrap_err()
            .to_string();
        assert!(e.contains("[3, 4]"), "{e}");
    }

    #[test]
    fn errors() {
        let l = Array2::<f64>::zeros((2, 3));
        let e = softmax_cross_entropy(l.view(), &[0, 3], 0.0)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("label 3") && e.contains("3 classes") && e.contains("row 1"),
            "{e}"
        );
        let e = softmax_cross_entropy(l.view(), &[0], 0.0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("1 labels") && e.contains("(2)"), "{e}");
        let e = softmax_cross_entropy(l.view(), &[0, 1], 1.5)
            .unwrap_err()
            .to_string();
        assert!(e.contains("1.5"), "{e}");
        let e = softmax_cross_entropy(l.view(), &[0, 1], f64::NAN)
            .unwrap_err()
            .to_string();
        assert!(e.contains("NaN"), "{e}");
        let empty = Array2::<f64>::zeros((0, 3));
        assert!(softmax_cross_entropy(empty.view(), &[], 0.0).is_err());
        let none = Array2::<f64>::zeros((1, 0));
        let e = softmax_cross_entropy(none.view(), &[0], 0.0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("0 logit columns"), "{e}");
    }
}
