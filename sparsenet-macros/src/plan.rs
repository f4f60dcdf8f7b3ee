//! The plan: a backend-neutral, fully resolved description of one network:
//! its buffers (activations), the nodes that produce them and the concat
//! sources each node reads, every parameter and running statistic with its
//! place in the flat stores, and per-layer facts (shapes, parameters, MACs).
//! Emitters read only this; it is testable without any token stream.

use crate::config::{Config, StemKind};

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

struct Builder<'a> {
    cfg: &'a Config,
    plan: Plan,
}

impl Builder<'_> {
    fn buffer(&mut self, name: &str, channels: usize, h: usize, w: usize) -> BufId {
        self.plan.buffers.push(Buffer {
            name: name.to_string(),
            channels,
            h,
            w,
        });
        self.plan.buffers.len() - 1
    }

    fn param(&mut self, name: String, shape: Vec<usize>, init: InitKind) -> ParamRef {
        let len = shape.iter().product();
        let offset = self.plan.params_len;
        self.plan.params_len += len;
        self.plan.tensors.push(Tensor {
            name,
            shape,
            store: Store::Param,
            offset,
            init: Some(init),
        });
        ParamRef { offset, len }
    }

    fn bn(&mut self, name: &str, channels: usize, eps: f64) -> usize {
        let gamma = self
            .param(format!("{name}.weight"), vec![channels], InitKind::Ones)
            .offset;
        self.param(format!("{name}.bias"), vec![channels], InitKind::Zeros);
        let running = self.plan.state_len;
        for (i, what) in ["running_mean", "running_var"].iter().enumerate() {
            self.plan.tensors.push(Tensor {
                name: format!("{name}.{what}"),
                shape: vec![channels],
                store: Store::State,
                offset: running + i * channels,
                init: None,
            });
        }
        self.plan.state_len += 2 * channels;
        self.plan.bns.push(Bn {
            gamma,
            running,
            channels,
            eps,
            momentum: self.cfg.bn_momentum,
            unbiased_running_var: self.cfg.unbiased_running_var,
        });
        self.plan.bns.len() - 1
    }

    fn channels(&self, srcs: &[BufId]) -> usize {
        srcs.iter().map(|&b| self.plan.buffers[b].channels).sum()
    }

    /// A convolution node over `srcs` (with optional BN/ReLU before it);
    /// returns its output buffer and MACs per image.
    #[allow(clippy::too_many_arguments)]
    fn conv(
        &mut self,
        name: &str,
        out_name: &str,
        srcs: &[BufId],
        pre: Option<PreOp>,
        out_channels: usize,
        kernel: usize,
        stride: usize,
        pad: usize,
        dropout: f64,
    ) -> (BufId, u64) {
        let cin = self.channels(srcs);
        let b0 = &self.plan.buffers[srcs[0]];
        let (h, w) = (b0.h, b0.w);
        let ho = (h + 2 * pad - kernel) / stride + 1;
        let wo = (w + 2 * pad - kernel) / stride + 1;
        let fan_in = cin * kernel * kernel;
        let weight = self.param(
            format!("{name}.weight"),
            vec![out_channels, cin, kernel, kernel],
            InitKind::KaimingNormal { fan_in },
        );
        let bias = self
            .cfg
            .conv_bias
            .then(|| self.param(format!("{name}.bias"), vec![out_channels], InitKind::Zeros));
        let out = self.buffer(out_name, out_channels, ho, wo);
        self.plan.nodes.push(Node {
            inputs: srcs.to_vec(),
            pre,
            op: Op::Conv {
                kernel,
                stride,
                pad,
                out_channels,
                weight,
                bias,
            },
            dropout,
            output: Some(out),
        });
        (out, (out_channels * ho * wo * fan_in) as u64)
    }

    fn layer(
        &mut self,
        name: &str,
        op: String,
        srcs: &[BufId],
        out: Option<BufId>,
        params_before: usize,
        macs: u64,
    ) {
        let b0 = &self.plan.buffers[srcs[0]];
        let in_size = (b0.h, b0.w);
        let (out_channels, out_size) = match out {
            Some(o) => {
                let b = &self.plan.buffers[o];
                (b.channels, (b.h, b.w))
            }
            None => (self.cfg.classes, (1, 1)),
        };
        self.plan.layers.push(Layer {
            name: name.to_string(),
            op,
            sources: srcs
                .iter()
                .map(|&b| self.plan.buffers[b].name.clone())
                .collect(),
            in_channels: self.channels(srcs),
            out_channels,
            in_size,
            out_size,
            params: self.plan.params_len - params_before,
            macs,
        });
    }
}

/// Builds the plan of a validated configuration.
pub fn build(cfg: &Config) -> Plan {
    let mut b = Builder {
        cfg,
        plan: Plan {
            buffers: Vec::new(),
            nodes: Vec::new(),
            bns: Vec::new(),
            tensors: Vec::new(),
            layers: Vec::new(),
            params_len: 0,
            state_len: 0,
            input: cfg.input,
            classes: cfg.classes,
        },
    };
    let [c, h, w] = cfg.input;
    let input = b.buffer("input", c, h, w);
    let eps = cfg.bn_eps;
    let unit_dropout = if cfg.dropout_in_units {
        cfg.dropout
    } else {
        0.0
    };

    // Stem.
    let start = b.plan.params_len;
    let sc = cfg.stem.channels;
    let (mut cur, macs, op) = match cfg.stem.kind {
        StemKind::Conv3x3 => {
            let (o, m) = b.conv("stem.conv", "stem", &[input], None, sc, 3, 1, 1, 0.0);
            (o, m, format!("Conv3x3({sc})"))
        }
        StemKind::BnReluConv3x3 => {
            let bn = b.bn("stem.bn", c, eps);
            let pre = Some(PreOp { bn, relu: true });
            let (o, m) = b.conv("stem.conv", "stem", &[input], pre, sc, 3, 1, 1, 0.0);
            (o, m, format!("BN-ReLU-Conv3x3({sc})"))
        }
        StemKind::ImageNet => {
            let (conv, m) = b.conv("stem.conv", "stem.conv", &[input], None, sc, 7, 2, 3, 0.0);
            let bn = b.bn("stem.bn", sc, eps);
            let cb = &b.plan.buffers[conv];
            let (ch, ho, wo) = (cb.channels, (cb.h - 1) / 2 + 1, (cb.w - 1) / 2 + 1);
            let out = b.buffer("stem", ch, ho, wo);
            b.plan.nodes.push(Node {
                inputs: vec![conv],
                pre: Some(PreOp { bn, relu: true }),
                op: Op::MaxPool {
                    kernel: 3,
                    stride: 2,
                    pad: 1,
                },
                dropout: 0.0,
                output: Some(out),
            });
            (out, m, format!("Conv7x7/2({sc})-BN-ReLU-MaxPool3x3/2"))
        }
    };
    b.layer("stem", op, &[input], Some(cur), start, macs);

    let n_stages = cfg.stages.len();
    for (s, stage) in cfg.stages.iter().enumerate() {
        let k = stage.growth;
        // list[j]: layer j of the block; 0 is the block input.
        let mut list = vec![cur];
        for u in 0..stage.units {
            let j = u + 1;
            let srcs: Vec<BufId> = cfg
                .aggregation
                .offsets(j)
                .iter()
                .map(|&o| list[j - o])
                .collect();
            let cin = b.channels(&srcs);
            let p = format!("stages.{s}.units.{u}");
            let start = b.plan.params_len;
            let mut ops = Vec::new();
            let mut macs = 0;
            let last_out = if cfg.trailing_bn {
                format!("{p}.conv_out")
            } else {
                p.clone()
            };
            let out = if let Some(bt) = cfg.bottleneck {
                let inter = bt.width * k;
                let bn1 = b.bn(&format!("{p}.bn1"), cin, eps);
                let (mid, m1) = b.conv(
                    &format!("{p}.conv1"),
                    &format!("{p}.conv1"),
                    &srcs,
                    Some(PreOp {
                        bn: bn1,
                        relu: bt.relu,
                    }),
                    inter,
                    1,
                    1,
                    0,
                    unit_dropout,
                );
                let bn2 = b.bn(&format!("{p}.bn2"), inter, eps);
                let (o, m2) = b.conv(
                    &format!("{p}.conv2"),
                    &last_out,
                    &[mid],
                    Some(PreOp {
                        bn: bn2,
                        relu: true,
                    }),
                    k,
                    3,
                    1,
                    1,
                    unit_dropout,
                );
                ops.push(format!(
                    "BN{}-Conv1x1({inter})",
                    if bt.relu { "-ReLU" } else { "" }
                ));
                ops.push(format!("BN-ReLU-Conv3x3({k})"));
                macs += m1 + m2;
                o
            } else {
                let bn1 = b.bn(&format!("{p}.bn1"), cin, eps);
                let (o, m) = b.conv(
                    &format!("{p}.conv1"),
                    &last_out,
                    &srcs,
                    Some(PreOp {
                        bn: bn1,
                        relu: true,
                    }),
                    k,
                    3,
                    1,
                    1,
                    unit_dropout,
                );
                ops.push(format!("BN-ReLU-Conv3x3({k})"));
                macs += m;
                o
            };
            let out = if cfg.trailing_bn {
                let bn = b.bn(&format!("{p}.bn_out"), k, eps);
                let ob = b.plan.buffers[out].clone();
                let y = b.buffer(&p, k, ob.h, ob.w);
                b.plan.nodes.push(Node {
                    inputs: vec![out],
                    pre: Some(PreOp { bn, relu: false }),
                    op: Op::Affine,
                    dropout: 0.0,
                    output: Some(y),
                });
                ops.push("BN".into());
                y
            } else {
                out
            };
            b.layer(&p, ops.join("-"), &srcs, Some(out), start, macs);
            list.push(out);
        }
        // The block output: what a layer after the last unit would read.
        let j = stage.units + 1;
        let block_out: Vec<BufId> = cfg
            .aggregation
            .offsets(j)
            .iter()
            .map(|&o| list[j - o])
            .collect();
        let cout = b.channels(&block_out);
        if s + 1 < n_stages {
            let p = format!("transitions.{s}");
            let start = b.plan.params_len;
            let tc = ((cout as f64) * cfg.compression).floor() as usize;
            let tc = tc.max(1);
            let bn = b.bn(&format!("{p}.bn"), cout, eps);
            let (conv, m) = b.conv(
                &format!("{p}.conv"),
                &format!("{p}.conv"),
                &block_out,
                Some(PreOp { bn, relu: true }),
                tc,
                1,
                1,
                0,
                cfg.dropout,
            );
            let cb = b.plan.buffers[conv].clone();
            let out = b.buffer(&p, tc, cb.h / 2, cb.w / 2);
            b.plan.nodes.push(Node {
                inputs: vec![conv],
                pre: None,
                op: Op::AvgPool {
                    kernel: 2,
                    stride: 2,
                },
                dropout: 0.0,
                output: Some(out),
            });
            b.layer(
                &p,
                format!("BN-ReLU-Conv1x1({tc})-AvgPool2x2"),
                &block_out,
                Some(out),
                start,
                m,
            );
            cur = out;
        } else {
            let start = b.plan.params_len;
            let pre = cfg.head_bn.then(|| PreOp {
                bn: b.bn("head.bn", cout, cfg.head_bn_eps),
                relu: true,
            });
            let weight = b.param(
                "head.fc.weight".into(),
                vec![cfg.classes, cout],
                InitKind::Normal {
                    std: (1.0 / cout as f64).sqrt(),
                },
            );
            let bias = b.param("head.fc.bias".into(), vec![cfg.classes], InitKind::Zeros);
            b.plan.nodes.push(Node {
                inputs: block_out.clone(),
                pre,
                op: Op::GapDense {
                    weight,
                    bias,
                    classes: cfg.classes,
                },
                dropout: 0.0,
                output: None,
            });
            let op = format!(
                "{}GlobalAvgPool-Dense({})",
                if cfg.head_bn { "BN-ReLU-" } else { "" },
                cfg.classes
            );
            b.layer(
                "head",
                op,
                &block_out,
                None,
                start,
                (cout * cfg.classes) as u64,
            );
        }
    }
    b.plan
}
