//! One training step from a user's own loop: gradients by tensor name, the
//! loss and accuracy returned (not captured from inside a closure), typed
//! errors. The [`Trainer`](super::Trainer) is built on the same pieces.
//!
//! The README's "Your own training loop" runs one (it is a doctest of the
//! `sparsenet` crate).

use crate::loss::{check_batch, softmax_cross_entropy_into, LossError};
use crate::model::{InputError, Mode, Model, NetworkSpec};
use crate::weights::{Store, TensorSpec};
use crate::Float;
use ndarray::{Array2, ArrayView4, ArrayViewD, IxDyn};

/// A model's parameter gradients, flat (laid out as [`Model::params`], for
/// the optimiser) and by tensor name.
#[derive(Clone, Debug)]
pub struct Gradients<T> {
    flat: Vec<T>,
    tensors: &'static [TensorSpec],
}

impl<T: Float> Gradients<T> {
    /// Zero gradients for network `N`'s parameters.
    pub fn of<N: NetworkSpec>() -> Self {
        Gradients {
            flat: vec![T::zero(); N::PARAMETERS],
            tensors: N::tensors(),
        }
    }

    /// All of them, laid out as [`Model::params`] (what
    /// [`Sgd::step`](crate::optim::Sgd::step) takes).
    pub fn as_slice(&self) -> &[T] {
        &self.flat
    }

    /// All of them, writable.
    pub fn as_mut_slice(&mut self) -> &mut [T] {
        &mut self.flat
    }

    /// The gradient of the parameter tensor `name` (e.g.
    /// `stages.0.units.3.conv2.weight`) in its shape; `None` for a name
    /// that is not a parameter of the network (running statistics have no
    /// gradient).
    pub fn get(&self, name: &str) -> Option<ArrayViewD<'_, T>> {
        self.params().find(|t| t.name == name).map(|t| self.view(t))
    }

    /// Every parameter tensor's name and gradient, in storage order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, ArrayViewD<'_, T>)> + '_ {
        self.params().map(move |t| (t.name, self.view(t)))
    }

    fn params(&self) -> impl Iterator<Item = &'static TensorSpec> {
        self.tensors.iter().filter(|t| t.store == Store::Param)
    }

    fn view(&self, t: &TensorSpec) -> ArrayViewD<'_, T> {
        let data = &self.flat[t.offset..t.offset + t.len()];
        ArrayViewD::from_shape(IxDyn(t.shape), data).expect("the table's shape fits its range")
    }
}

/// What one step measured on its batch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchOutcome {
    /// Mean softmax cross-entropy (with the step's label smoothing).
    pub loss: f64,
    /// Images whose first largest logit is their label.
    pub correct: usize,
}

/// Why a step could not run. Nothing was written to the gradients.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// The batch (shape, or a non-finite value in training mode).
    #[error(transparent)]
    Input(#[from] InputError),
    /// The labels or the label smoothing.
    #[error(transparent)]
    Loss(#[from] LossError),
    /// `grads` was made for another network.
    #[error("the gradients were made for a network with {found} parameters, the model `{model}` has {expected}: make them with `Gradients::of::<{model}>()`")]
    Gradients {
        /// The model's name.
        model: &'static str,
        /// Its parameter count.
        expected: usize,
        /// The gradients' length.
        found: usize,
    },
}

/// One training-mode forward pass, softmax cross-entropy against `labels`
/// (as `torch.nn.CrossEntropyLoss`, mean over the batch, optional label
/// smoothing) and the backward pass: `grads` receives d(loss)/d(parameters).
/// The running statistics are updated once; the parameters are not touched
/// (apply an optimiser, e.g. [`Sgd::step`](crate::optim::Sgd::step)).
///
/// The labels and smoothing are checked before the pass runs, so that a
/// bad label is an error with the model unchanged.
pub fn loss_and_gradients<M: Model<T>, T: Float>(
    model: &mut M,
    x: ArrayView4<'_, T>,
    labels: &[usize],
    label_smoothing: f64,
    grads: &mut Gradients<T>,
) -> Result<BatchOutcome, StepError> {
    if grads.flat.len() != M::PARAMETERS {
        return Err(StepError::Gradients {
            model: M::NAME,
            expected: M::PARAMETERS,
            found: grads.flat.len(),
        });
    }
    // The loss's checks of the labels, before the pass changes the running
    // statistics (an empty batch is the input check's to report).
    let rows = x.dim().0;
    if rows > 0 {
        check_batch(rows, M::CLASSES, labels, label_smoothing)?;
    }
    let mut outcome = BatchOutcome {
        loss: 0.0,
        correct: 0,
    };
    model.forward_backward(x, Mode::Train, &mut grads.flat, &mut |logits| {
        let mut d = Array2::zeros(logits.raw_dim());
        // Checked above (check_batch): this cannot fail.
        if let Ok((loss, correct)) =
            softmax_cross_entropy_into(logits.view(), labels, label_smoothing, d.view_mut())
        {
            outcome = BatchOutcome {
                loss: loss.to_f64c(),
                correct,
            };
        }
        d
    })?;
    Ok(outcome)
}
