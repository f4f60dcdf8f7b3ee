//! The plan: a backend-neutral, fully resolved description of one network:
//! its buffers (activations), the nodes that produce them and the concat
//! sources each node reads, every parameter and running statistic with its
//! place in the flat stores, and per-layer facts (shapes, parameters, MACs).
//! Emitters read only this; it is testable without any token stream.
//!
//! [`topology`] holds the rule of which earlier outputs a layer reads (the
//! declaration only names the aggregation); [`build`](build()) lays the
//! network out from a validated [`Config`](crate::config::Config).

mod build;
pub mod topology;

pub use build::build;

pub type BufId = usize;

/// An activation tensor `[batch, channels, h, w]`.
#[derive(Clone, Debug)]
pub struct Buffer {
    /// The layer (or sub-layer) that produces it; unit and transition
    /// outputs carry the layer's name, which is how sources are reported.
    pub name: String,
    pub channels: usize,
    pub h: usize,
    pub w: usize,
}

impl Buffer {
    pub fn per_image(&self) -> usize {
        self.channels * self.h * self.w
    }
}

/// A slice of the flat parameter store.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ParamRef {
    pub offset: usize,
    pub len: usize,
}

#[derive(Clone, Debug)]
pub struct Bn {
    /// Offset of gamma in params (beta follows).
    pub gamma: usize,
    /// Offset of the running mean in state (running variance follows).
    pub running: usize,
    pub channels: usize,
    pub eps: f64,
    pub momentum: f64,
    pub unbiased_running_var: bool,
}

/// BN (and maybe ReLU) applied to a node's inputs as they are read.
#[derive(Clone, Copy, Debug)]
pub struct PreOp {
    pub bn: usize,
    pub relu: bool,
}

#[derive(Clone, Debug)]
pub enum Op {
    Conv {
        kernel: usize,
        stride: usize,
        pad: usize,
        out_channels: usize,
        weight: ParamRef,
        bias: Option<ParamRef>,
    },
    AvgPool {
        kernel: usize,
        stride: usize,
    },
    MaxPool {
        kernel: usize,
        stride: usize,
        pad: usize,
    },
    /// Stores the (BN) transform of its input: the trailing BN of a unit.
    Affine,
    /// Global average pool and the dense classifier; produces the logits.
    GapDense {
        weight: ParamRef,
        bias: ParamRef,
        classes: usize,
    },
}

#[derive(Clone, Debug)]
pub struct Node {
    /// Sources in concatenation order (newest first).
    pub inputs: Vec<BufId>,
    pub pre: Option<PreOp>,
    pub op: Op,
    /// Dropout rate applied to the output in training mode.
    pub dropout: f64,
    /// `None` for the head, whose output is the logits.
    pub output: Option<BufId>,
}

/// Nodes `start..=end()` that inference runs as one call: a 1x1
/// bottleneck convolution at `start` when `start < conv`, the convolution
/// `conv`, and the `Affine` node `conv + 1` when `post`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EvalChain {
    pub start: usize,
    pub conv: usize,
    pub post: bool,
}

impl EvalChain {
    pub fn end(&self) -> usize {
        self.conv + usize::from(self.post)
    }

    pub fn bottleneck(&self) -> Option<usize> {
        (self.start < self.conv).then_some(self.start)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Store {
    Param,
    State,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum InitKind {
    KaimingNormal { fan_in: usize },
    Normal { std: f64 },
    Zeros,
    Ones,
}

#[derive(Clone, Debug)]
pub struct Tensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub store: Store,
    pub offset: usize,
    /// How `new` fills it (parameters only).
    pub init: Option<InitKind>,
}

impl Tensor {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
}

/// One row of the user-visible layer table.
#[derive(Clone, Debug)]
pub struct Layer {
    pub name: String,
    pub op: String,
    pub sources: Vec<String>,
    pub in_channels: usize,
    pub out_channels: usize,
    pub in_size: (usize, usize),
    pub out_size: (usize, usize),
    pub params: usize,
    pub macs: u64,
}

pub struct Plan {
    pub buffers: Vec<Buffer>,
    pub nodes: Vec<Node>,
    pub bns: Vec<Bn>,
    pub tensors: Vec<Tensor>,
    pub layers: Vec<Layer>,
    pub params_len: usize,
    pub state_len: usize,
    pub input: [usize; 3],
    pub classes: usize,
}

impl Plan {
    pub fn macs(&self) -> u64 {
        self.layers.iter().map(|l| l.macs).sum()
    }

    /// Floats per image of every activation the forward pass produces: what
    /// a training step keeps for backward at most.
    pub fn activations_per_image(&self) -> usize {
        self.buffers.iter().map(Buffer::per_image).sum()
    }

    /// The runs of nodes that an inference pass does as one
    /// `conv_chain` call (see the runtime's `chain` module), in node order
    /// and not overlapping: a stride-1 convolution, with the 1x1
    /// convolution before it when that one's output is read by it alone
    /// (a bottleneck), and with the `Affine` after it when that is the only
    /// reader of its output (a unit's trailing BN). A convolution with
    /// neither is no chain. An intermediate output must have no dropout:
    /// nothing reads it.
    pub fn eval_chains(&self) -> Vec<EvalChain> {
        let readers = self.readers();
        // The single reader of node `i`'s output, if it has exactly one and
        // `i` applies no dropout to it.
        let only_reader = |i: usize| -> Option<usize> {
            let n = &self.nodes[i];
            let o = n.output?;
            if n.dropout > 0.0 || readers[o].len() != 1 {
                return None;
            }
            let r = readers[o][0];
            (self.nodes[r].inputs == [o]).then_some(r)
        };
        let conv = |i: usize| match self.nodes[i].op {
            Op::Conv {
                kernel,
                stride,
                pad,
                ..
            } => Some((kernel, stride, pad)),
            _ => None,
        };
        let mut chains = Vec::new();
        let mut i = 0;
        while i < self.nodes.len() {
            let bottleneck = conv(i) == Some((1, 1, 0))
                && only_reader(i).is_some_and(|r| r == i + 1 && conv(r).is_some_and(|c| c.1 == 1));
            let at = if bottleneck { i + 1 } else { i };
            let post = conv(at).is_some_and(|c| c.1 == 1)
                && only_reader(at).is_some_and(|r| {
                    r == at + 1
                        && matches!(self.nodes[r].op, Op::Affine)
                        && self.nodes[r].pre.is_some()
                });
            if bottleneck || post {
                chains.push(EvalChain {
                    start: i,
                    conv: at,
                    post,
                });
                i = at + 1 + usize::from(post);
            } else {
                i += 1;
            }
        }
        chains
    }

    /// For each buffer, the nodes that read it, in order.
    pub fn readers(&self) -> Vec<Vec<usize>> {
        let mut readers = vec![Vec::new(); self.buffers.len()];
        for (i, n) in self.nodes.iter().enumerate() {
            for &b in &n.inputs {
                if readers[b].last() != Some(&i) {
                    readers[b].push(i);
                }
            }
        }
        readers
    }

    /// For each buffer, the index of the last node that reads it.
    pub fn last_use(&self) -> Vec<Option<usize>> {
        let mut last = vec![None; self.buffers.len()];
        for (i, n) in self.nodes.iter().enumerate() {
            for &b in &n.inputs {
                last[b] = Some(i);
            }
        }
        last
    }

    /// Peak floats per image alive at once in an inference pass that frees
    /// each buffer after its last reader.
    pub fn peak_inference_per_image(&self) -> usize {
        let last = self.last_use();
        let mut alive = self.buffers[0].per_image();
        let mut peak = alive;
        for (i, n) in self.nodes.iter().enumerate() {
            if let Some(o) = n.output {
                alive += self.buffers[o].per_image();
            }
            peak = peak.max(alive);
            for (b, l) in last.iter().enumerate() {
                if *l == Some(i) {
                    alive -= self.buffers[b].per_image();
                }
            }
        }
        peak
    }

    /// Whether buffer `b` is read through a BatchNorm (needs batch statistics
    /// in training mode).
    pub fn needs_stats(&self) -> Vec<bool> {
        let mut need = vec![false; self.buffers.len()];
        for n in &self.nodes {
            if n.pre.is_some() {
                for &b in &n.inputs {
                    need[b] = true;
                }
            }
        }
        need
    }
}
