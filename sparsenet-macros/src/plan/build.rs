//! Builds a [`Plan`] from a validated [`Config`]: the stem, each stage's
//! units (reading the sources [`topology`] names), the
//! transitions between stages and the head, in that order, each recording
//! its buffers, nodes, tensors and its row of the layer table.

use super::topology;
use super::{Bn, BufId, Buffer, InitKind, Layer, Node, Op, ParamRef, Plan, PreOp, Store, Tensor};
use crate::config::{Config, StemKind};

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
    let mut cur = b.stem(input);
    let n_stages = cfg.stages.len();
    for (s, stage) in cfg.stages.iter().enumerate() {
        // list[j]: layer j of the block; 0 is the block input.
        let mut list = vec![cur];
        for u in 0..stage.units {
            let srcs = topology::sources(&cfg.aggregation, &list, u + 1);
            let out = b.unit(s, u, &srcs, stage.growth);
            list.push(out);
        }
        // The block output: what a layer after the last unit would read.
        let block_out = topology::sources(&cfg.aggregation, &list, stage.units + 1);
        if s + 1 < n_stages {
            cur = b.transition(s, &block_out);
        } else {
            b.head(&block_out);
        }
    }
    b.plan
}

impl Builder<'_> {
    /// The stem over the input buffer; returns its output.
    fn stem(&mut self, input: BufId) -> BufId {
        let cfg = self.cfg;
        let eps = cfg.bn_eps;
        let c = self.plan.buffers[input].channels;
        let start = self.plan.params_len;
        let sc = cfg.stem.channels;
        let (cur, macs, op) = match cfg.stem.kind {
            StemKind::Conv3x3 => {
                let (o, m) = self.conv("stem.conv", "stem", &[input], None, sc, 3, 1, 1, 0.0);
                (o, m, format!("Conv3x3({sc})"))
            }
            StemKind::BnReluConv3x3 => {
                let bn = self.bn("stem.bn", c, eps);
                let pre = Some(PreOp { bn, relu: true });
                let (o, m) = self.conv("stem.conv", "stem", &[input], pre, sc, 3, 1, 1, 0.0);
                (o, m, format!("BN-ReLU-Conv3x3({sc})"))
            }
            StemKind::ImageNet => {
                let (conv, m) =
                    self.conv("stem.conv", "stem.conv", &[input], None, sc, 7, 2, 3, 0.0);
                let bn = self.bn("stem.bn", sc, eps);
                let cb = &self.plan.buffers[conv];
                let (ch, ho, wo) = (cb.channels, (cb.h - 1) / 2 + 1, (cb.w - 1) / 2 + 1);
                let out = self.buffer("stem", ch, ho, wo);
                self.plan.nodes.push(Node {
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
        self.layer("stem", op, &[input], Some(cur), start, macs);
        cur
    }

    /// Unit `u` of stage `s` over `srcs` with growth rate `k`: a bottleneck
    /// 1x1 convolution if the network has them, the 3x3 convolution, and
    /// the trailing BN of the seed's 2018-02-20 version; returns its output.
    fn unit(&mut self, s: usize, u: usize, srcs: &[BufId], k: usize) -> BufId {
        let cfg = self.cfg;
        let eps = cfg.bn_eps;
        let unit_dropout = if cfg.dropout_in_units {
            cfg.dropout
        } else {
            0.0
        };
        let cin = self.channels(srcs);
        let p = format!("stages.{s}.units.{u}");
        let start = self.plan.params_len;
        let mut ops = Vec::new();
        let mut macs = 0;
        let last_out = if cfg.trailing_bn {
            format!("{p}.conv_out")
        } else {
            p.clone()
        };
        let out = if let Some(bt) = cfg.bottleneck {
            let inter = bt.width * k;
            let bn1 = self.bn(&format!("{p}.bn1"), cin, eps);
            let (mid, m1) = self.conv(
                &format!("{p}.conv1"),
                &format!("{p}.conv1"),
                srcs,
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
            let bn2 = self.bn(&format!("{p}.bn2"), inter, eps);
            let (o, m2) = self.conv(
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
            let bn1 = self.bn(&format!("{p}.bn1"), cin, eps);
            let (o, m) = self.conv(
                &format!("{p}.conv1"),
                &last_out,
                srcs,
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
            let bn = self.bn(&format!("{p}.bn_out"), k, eps);
            let ob = self.plan.buffers[out].clone();
            let y = self.buffer(&p, k, ob.h, ob.w);
            self.plan.nodes.push(Node {
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
        self.layer(&p, ops.join("-"), srcs, Some(out), start, macs);
        out
    }

    /// The transition after stage `s` over the block's output: BN-ReLU,
    /// a 1x1 convolution keeping `compression` of the channels, a 2x2/2
    /// average pool; returns its output.
    fn transition(&mut self, s: usize, block_out: &[BufId]) -> BufId {
        let cfg = self.cfg;
        let cout = self.channels(block_out);
        let p = format!("transitions.{s}");
        let start = self.plan.params_len;
        let tc = ((cout as f64) * cfg.compression).floor() as usize;
        let tc = tc.max(1);
        let bn = self.bn(&format!("{p}.bn"), cout, cfg.bn_eps);
        let (conv, m) = self.conv(
            &format!("{p}.conv"),
            &format!("{p}.conv"),
            block_out,
            Some(PreOp { bn, relu: true }),
            tc,
            1,
            1,
            0,
            cfg.dropout,
        );
        let cb = self.plan.buffers[conv].clone();
        let out = self.buffer(&p, tc, cb.h / 2, cb.w / 2);
        self.plan.nodes.push(Node {
            inputs: vec![conv],
            pre: None,
            op: Op::AvgPool {
                kernel: 2,
                stride: 2,
            },
            dropout: 0.0,
            output: Some(out),
        });
        self.layer(
            &p,
            format!("BN-ReLU-Conv1x1({tc})-AvgPool2x2"),
            block_out,
            Some(out),
            start,
            m,
        );
        out
    }

    /// The head over the last block's output: BN-ReLU where the style has
    /// it, global average pool and the dense classifier (the logits).
    fn head(&mut self, block_out: &[BufId]) {
        let cfg = self.cfg;
        let cout = self.channels(block_out);
        let start = self.plan.params_len;
        let pre = cfg.head_bn.then(|| PreOp {
            bn: self.bn("head.bn", cout, cfg.head_bn_eps),
            relu: true,
        });
        let weight = self.param(
            "head.fc.weight".into(),
            vec![cfg.classes, cout],
            InitKind::Normal {
                std: (1.0 / cout as f64).sqrt(),
            },
        );
        let bias = self.param("head.fc.bias".into(), vec![cfg.classes], InitKind::Zeros);
        self.plan.nodes.push(Node {
            inputs: block_out.to_vec(),
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
        self.layer(
            "head",
            op,
            block_out,
            None,
            start,
            (cout * cfg.classes) as u64,
        );
    }
}
