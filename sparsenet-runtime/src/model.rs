//! What a generated model tells about itself, and the trait every generated
//! model implements so that training and evaluation code can be generic.

use crate::weights::{TensorSpec, WeightsError};
use crate::Float;
use ndarray::{Array2, Array4, ArrayView4};
use std::path::Path;

/// Whether BatchNorm uses batch statistics (and updates its running
/// statistics) and dropout is active.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Inference: BatchNorm uses its running statistics, dropout is off.
    Eval,
    /// Training: BatchNorm uses batch statistics and updates its running
    /// statistics; dropout is on.
    Train,
}

/// One layer of the plan, as the generated type reports it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LayerInfo {
    /// Dotted name (`stages.0.units.3`, `transitions.1`, `stem`, `head`).
    pub name: &'static str,
    /// What the layer computes, e.g. `BN-ReLU-Conv3x3`.
    pub op: &'static str,
    /// The layers whose outputs this layer concatenates, newest first
    /// (`input` for the network input, `stages.0.input` for a block input).
    pub sources: &'static [&'static str],
    /// Channels the layer reads: the sum of its sources' channels.
    pub in_channels: usize,
    /// Channels the layer produces (for `head`, the number of classes).
    pub out_channels: usize,
    /// (height, width) of the input.
    pub in_size: (usize, usize),
    /// (height, width) of the output.
    pub out_size: (usize, usize),
    /// Trainable parameters of the layer.
    pub params: usize,
    /// Multiply-adds per image.
    pub macs: u64,
}

/// One step of the network's inference graph, as the macro planned it:
/// what [`onnx`](crate::onnx) exports. Values are named after the layer
/// that produces them (`input` is the network's input, `logits` its output).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GraphNode {
    /// The values it reads, concatenated along channels in this order
    /// (newest first).
    pub inputs: &'static [&'static str],
    /// A BatchNorm (and maybe ReLU) applied to the concatenation first.
    pub pre: Option<GraphBn>,
    /// What it computes then.
    pub op: GraphOp,
    /// The value it produces.
    pub output: &'static str,
}

/// A BatchNorm in inference form and the ReLU after it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GraphBn {
    /// The tensors' common prefix: `{prefix}.weight`, `.bias`,
    /// `.running_mean`, `.running_var`.
    pub prefix: &'static str,
    /// The variance epsilon.
    pub eps: f64,
    /// Whether a ReLU follows.
    pub relu: bool,
}

/// The operation of a [`GraphNode`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum GraphOp {
    /// A square convolution, zero-padded by `pad` on every side.
    Conv {
        /// The weight tensor's name (`[out, in, k, k]`).
        weight: &'static str,
        /// The bias tensor's name, if any.
        bias: Option<&'static str>,
        /// Kernel size.
        kernel: usize,
        /// Stride.
        stride: usize,
        /// Padding.
        pad: usize,
    },
    /// Average pooling without padding.
    AvgPool {
        /// Window size.
        kernel: usize,
        /// Stride.
        stride: usize,
    },
    /// Max pooling, padding never chosen.
    MaxPool {
        /// Window size.
        kernel: usize,
        /// Stride.
        stride: usize,
        /// Padding.
        pad: usize,
    },
    /// The BatchNorm (`pre`) alone: its output is stored.
    Identity,
    /// Global average pooling then the dense classifier (`y = x W^T + b`).
    GapDense {
        /// The weight tensor's name (`[classes, in]`).
        weight: &'static str,
        /// The bias tensor's name.
        bias: &'static str,
    },
}

/// How a parameter is initialised by `new`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// Normal with std sqrt(2 / fan_in) (He et al.; PyTorch's kaiming_normal_).
    KaimingNormal {
        /// Inputs of one output unit: input channels x kernel height x
        /// kernel width.
        fan_in: usize,
    },
    /// Normal with the given std (the classifier: std sqrt(1 / fan_in)).
    Normal {
        /// Standard deviation of the distribution (its mean is 0).
        std: f64,
    },
    /// All zeros (biases, BatchNorm beta).
    Zeros,
    /// All ones (BatchNorm gamma).
    Ones,
}

/// A wrong input given to a model at run time.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InputError {
    /// The input array is not `[batch, C, H, W]` with `batch >= 1` and
    /// `[C, H, W]` the declared [`NetworkSpec::INPUT`].
    #[error("input tensor `{tensor}` has shape {found:?}, the model `{model}` expects [batch, {}, {}, {}] with batch >= 1", expected[0], expected[1], expected[2])]
    Shape {
        /// The model's [`NetworkSpec::NAME`].
        model: &'static str,
        /// Which argument was wrong (`input`).
        tensor: &'static str,
        /// The declared `[channels, height, width]` of one image.
        expected: [usize; 3],
        /// The shape given, batch dimension first.
        found: Vec<usize>,
    },
    /// The gradient buffer given to [`Model::forward_backward`] is not
    /// [`NetworkSpec::PARAMETERS`] long.
    #[error("gradient buffer has {found} entries, the model `{model}` has {expected} parameters")]
    Gradients {
        /// The model's [`NetworkSpec::NAME`].
        model: &'static str,
        /// The number of parameters, which the buffer must match.
        expected: usize,
        /// The buffer's length.
        found: usize,
    },
    /// The loss closure given to [`Model::forward_backward`] returned a
    /// gradient whose shape is not the logits' `[batch, classes]`. Nothing
    /// was written to the gradient buffer; the forward pass had run (in
    /// training mode it updated the BatchNorm running statistics).
    #[error("the loss gradient has shape [{}, {}], but the logits of model `{model}` are [{}, {}] (batch, classes): the loss must return one value per logit", found[0], found[1], expected[0], expected[1])]
    LossGradient {
        /// The model's [`NetworkSpec::NAME`].
        model: &'static str,
        /// The logits' shape, `[batch, classes]`.
        expected: [usize; 2],
        /// The shape the loss returned.
        found: [usize; 2],
    },
    /// A training-mode pass was given an input holding NaN or an infinity.
    /// Refused before anything ran: its batch statistics would carry the
    /// value into every image's output and into the BatchNorm running
    /// statistics for good. (In [`Mode::Eval`] a non-finite input is not an
    /// error: it gives non-finite logits for its own image only, never
    /// finite ones that hide it.)
    #[error("input image {image} of the batch holds {value} at channel {channel}, row {row}, column {column} (and {others} more non-finite value(s) in the batch): the training-mode pass of model `{model}` was refused before it changed anything, since batch statistics would spread it into every image and into the running statistics")]
    NonFinite {
        /// The model's [`NetworkSpec::NAME`].
        model: &'static str,
        /// Index in the batch of the first image holding one.
        image: usize,
        /// Where in that image (first in memory order).
        channel: usize,
        /// Row of the value.
        row: usize,
        /// Column of the value.
        column: usize,
        /// `NaN`, `inf` or `-inf`.
        value: String,
        /// How many other non-finite values the batch holds.
        others: usize,
    },
}

/// The gradient the loss closure of [`Model::forward_backward`] returned for
/// `logits`, if it has their shape; else an error naming both shapes (the
/// backward pass would otherwise fail inside ndarray, or read past a row).
pub fn check_loss_gradient<T>(
    model: &'static str,
    logits: &Array2<T>,
    loss: &mut dyn FnMut(&Array2<T>) -> Array2<T>,
) -> Result<Array2<T>, InputError> {
    let dlogits = loss(logits);
    if dlogits.dim() != logits.dim() {
        let (b, c) = logits.dim();
        let (fb, fc) = dlogits.dim();
        return Err(InputError::LossGradient {
            model,
            expected: [b, c],
            found: [fb, fc],
        });
    }
    Ok(dlogits)
}

/// Checks that `x` is `[batch >= 1, C, H, W]` as declared and, in
/// [`Mode::Train`], that every value is finite ([`InputError::NonFinite`]).
pub fn check_input<T: Float>(
    model: &'static str,
    x: &ArrayView4<'_, T>,
    expected: [usize; 3],
    mode: Mode,
) -> Result<(), InputError> {
    let d = x.dim();
    if d.0 == 0 || [d.1, d.2, d.3] != expected {
        return Err(InputError::Shape {
            model,
            tensor: "input",
            expected,
            found: vec![d.0, d.1, d.2, d.3],
        });
    }
    if mode == Mode::Train {
        check_finite(model, x)?;
    }
    Ok(())
}

/// The first non-finite value of `x` (in memory order), if any, as an error.
/// One read of the input: nothing next to a convolution's cost.
fn check_finite<T: Float>(model: &'static str, x: &ArrayView4<'_, T>) -> Result<(), InputError> {
    if x.iter().all(|v| v.is_finite()) {
        return Ok(());
    }
    let mut bad = x.indexed_iter().filter(|(_, v)| !v.is_finite());
    let ((image, channel, row, column), v) = bad.next().expect("a non-finite value was seen");
    let value = if v.is_nan() {
        "NaN".to_string()
    } else if v.is_sign_positive() {
        "inf".to_string()
    } else {
        "-inf".to_string()
    };
    Err(InputError::NonFinite {
        model,
        image,
        channel,
        row,
        column,
        value,
        others: bad.count(),
    })
}

/// Static facts about a generated network, fixed at compile time.
pub trait NetworkSpec {
    /// The type's name as declared (`SparseNet40`); error messages use it.
    const NAME: &'static str;
    /// [channels, height, width] of one input image.
    const INPUT: [usize; 3];
    /// Number of classes: the width of the logits.
    const CLASSES: usize;
    /// Trainable parameters.
    const PARAMETERS: usize;
    /// Length of the running-statistics store: for each BatchNorm, its
    /// running means then its running variances (one per channel each).
    const STATE_LEN: usize;
    /// Multiply-adds of one forward pass per image (convolutions and dense).
    const MACS_PER_IMAGE: u64;
    /// Floats per image of every activation a forward pass produces (what a
    /// training step can keep for backward at most).
    const ACTIVATIONS_PER_IMAGE: usize;
    /// Floats per image alive at the peak of an inference pass, which frees
    /// each activation after its last reader.
    const PEAK_INFERENCE_PER_IMAGE: usize;
    /// Every named tensor: parameters, then running statistics.
    fn tensors() -> &'static [TensorSpec];
    /// Every layer of the plan, in execution order (stem first, head last).
    fn layers() -> &'static [LayerInfo];
    /// The inference graph, node by node in execution order (the head last).
    fn graph() -> &'static [GraphNode];
    /// A Keras-style table of the layers.
    fn summary() -> &'static str;
}

/// A generated network instance in element type `T`.
pub trait Model<T: Float>: NetworkSpec + Sized {
    /// A freshly initialised model (Kaiming-normal convolutions, BN gamma 1
    /// and beta 0, zero biases, running mean 0 and variance 1).
    fn new(seed: u64) -> Self;
    /// Every trainable parameter in one flat vector of
    /// [`NetworkSpec::PARAMETERS`] elements, laid out as the
    /// [`Store::Param`](crate::Store::Param) entries of
    /// [`NetworkSpec::tensors`] say.
    fn params(&self) -> &[T];
    /// The parameters, writable (an optimiser updates them in place).
    fn params_mut(&mut self) -> &mut [T];
    /// The BatchNorm running statistics in one flat vector of
    /// [`NetworkSpec::STATE_LEN`] elements, laid out as the
    /// [`Store::State`](crate::Store::State) entries of
    /// [`NetworkSpec::tensors`] say.
    fn state(&self) -> &[T];
    /// The running statistics, writable.
    fn state_mut(&mut self) -> &mut [T];
    /// Logits `[batch, classes]` for `x` of shape `[batch, C, H, W]`.
    ///
    /// In [`Mode::Train`] BatchNorm normalises with the batch's statistics
    /// and each call updates the running statistics once (momentum 0.1 of
    /// the batch's), and dropout draws its masks; in [`Mode::Eval`] nothing
    /// changes (the same as [`Model::infer`]). A training-mode input holding
    /// NaN or an infinity is refused ([`InputError::NonFinite`]) before
    /// anything changes.
    fn forward(&mut self, x: ArrayView4<'_, T>, mode: Mode) -> Result<Array2<T>, InputError>;

    /// Inference: logits `[batch, classes]` with the running statistics and
    /// no dropout, changing nothing, so that threads can share one model
    /// (`&Model` is `Sync`). The same numbers as `forward(x, Mode::Eval)`.
    fn infer(&self, x: ArrayView4<'_, T>) -> Result<Array2<T>, InputError>;

    /// Forward in `mode`, then `loss` turns the logits into d(loss)/d(logits),
    /// then the unrolled backward pass. `grads` (laid out like `params`) is
    /// overwritten with the parameter gradients. Returns d(loss)/d(input).
    /// Its forward pass is the step's only one: in [`Mode::Train`] it
    /// updates the running statistics once, as [`Model::forward`] does (so
    /// a `forward(Train)` before it would update them twice).
    /// An error if `x` or `grads` has the wrong shape, or if `loss` returns a
    /// gradient not shaped like the logits ([`InputError::LossGradient`]).
    fn forward_backward(
        &mut self,
        x: ArrayView4<'_, T>,
        mode: Mode,
        grads: &mut [T],
        loss: &mut dyn FnMut(&Array2<T>) -> Array2<T>,
    ) -> Result<Array4<T>, InputError>;

    /// Reseeds the dropout RNG (training loops do this per step, so that a
    /// resumed run draws the same masks as an uninterrupted one).
    fn reseed(&mut self, seed: u64);

    /// Saves parameters and running statistics as safetensors (atomically).
    fn save(&self, path: &Path) -> Result<(), WeightsError> {
        crate::weights::save_weights(path, Self::tensors(), self.params(), self.state())
    }

    /// Loads parameters and running statistics; on error the model is unchanged.
    fn load(&mut self, path: &Path) -> Result<(), WeightsError> {
        let (p, s) = self.stores_mut();
        crate::weights::load_weights(path, Self::tensors(), p, s)
    }

    /// Both stores at once (for loaders).
    fn stores_mut(&mut self) -> (&mut [T], &mut [T]);
}
