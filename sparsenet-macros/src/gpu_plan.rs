//! The GPU memory plan: where every activation, gradient and per-channel
//! value of one network lives on the device, fixed at compile time.
//!
//! Activations and gradients scale with the batch, so their offsets are
//! counted per image: buffer `b` lives at `act + act_off[b] * n`, and one
//! plan serves every batch size. Activations all stay alive through a
//! training step (backward reads them); gradients live only from their last
//! reader's backward to their producer's, and share the gradient arena by
//! first-fit allocation over those intervals, with each node's input
//! gradient (`dz`) as a scratch region alive for that node only.

use crate::plan::{Op, Plan};

/// Per-image offsets are multiples of this many floats (256 bytes), so every
/// buffer starts aligned whatever the batch size.
const ALIGN: usize = 64;

fn align(x: usize) -> usize {
    x.div_ceil(ALIGN) * ALIGN
}

pub struct GpuLayout {
    /// Per buffer: offset in the activation arena (floats per image).
    pub act_off: Vec<usize>,
    pub act_per_image: usize,
    /// Per buffer read through a BatchNorm: offset of its batch mean (the
    /// biased variance follows) in `aux`.
    pub stats_off: Vec<Option<usize>>,
    /// Per node with a BatchNorm: offset of its folded form in `aux`: scale,
    /// shift, mean, 1/std, then backward's sum(da) and sum(da * xhat), each
    /// `in_channels` long.
    pub pre_aux: Vec<Option<usize>>,
    pub aux_len: usize,
    /// Per buffer: offset of its gradient in the gradient arena (floats per
    /// image); `None` for the network input, whose gradient no one needs.
    pub grad_off: Vec<Option<usize>>,
    /// Per node: where its input gradient dz lives in the gradient arena, if
    /// backward computes one.
    pub dz_off: Vec<Option<usize>>,
    /// Per node, per source: whether this node is the first (in backward
    /// order) to write the source's gradient, so it stores instead of adds.
    pub first_writer: Vec<Vec<bool>>,
    pub grad_per_image: usize,
}

impl GpuLayout {
    /// Whether node `i`'s backward computes dz: it has BatchNorm parameters
    /// to differentiate or a source whose gradient someone needs.
    pub fn node_needs_dz(plan: &Plan, i: usize) -> bool {
        let node = &plan.nodes[i];
        node.pre.is_some() || node.inputs.iter().any(|&b| b != 0)
    }
}

/// First-fit placement of intervals of per-image floats.
#[derive(Default)]
struct FirstFit {
    live: Vec<(usize, usize)>,
    high: usize,
}

impl FirstFit {
    fn alloc(&mut self, len: usize) -> usize {
        let len = align(len);
        self.live.sort_unstable();
        let mut at = 0;
        for &(o, l) in &self.live {
            if o >= at + len {
                break;
            }
            at = at.max(o + l);
        }
        self.live.push((at, len));
        self.high = self.high.max(at + len);
        at
    }

    fn free(&mut self, off: usize) {
        let i = self
            .live
            .iter()
            .position(|&(o, _)| o == off)
            .expect("freeing a live interval");
        self.live.swap_remove(i);
    }
}

pub fn layout(plan: &Plan) -> GpuLayout {
    let nb = plan.buffers.len();
    // Activations: all alive for the whole step, in production order.
    let mut act_off = Vec::with_capacity(nb);
    let mut act = 0;
    for b in &plan.buffers {
        act_off.push(act);
        act += align(b.per_image());
    }
    // Per-channel values.
    let need = plan.needs_stats();
    let mut aux = 0;
    let mut stats_off = vec![None; nb];
    for (b, buf) in plan.buffers.iter().enumerate() {
        if need[b] {
            stats_off[b] = Some(aux);
            aux += 2 * buf.channels;
        }
    }
    let mut pre_aux = vec![None; plan.nodes.len()];
    for (i, node) in plan.nodes.iter().enumerate() {
        if let Some(pre) = node.pre {
            pre_aux[i] = Some(aux);
            aux += 6 * plan.bns[pre.bn].channels;
        }
    }
    // Gradients, by liveness in backward order.
    let mut grad_off = vec![None; nb];
    let mut dz_off = vec![None; plan.nodes.len()];
    let mut first_writer = vec![Vec::new(); plan.nodes.len()];
    let mut ff = FirstFit::default();
    for (i, node) in plan.nodes.iter().enumerate().rev() {
        for &b in &node.inputs {
            let first = b != 0 && grad_off[b].is_none();
            if first {
                grad_off[b] = Some(ff.alloc(plan.buffers[b].per_image()));
            }
            first_writer[i].push(first);
        }
        let mut scratch = None;
        if GpuLayout::node_needs_dz(plan, i) {
            dz_off[i] = Some(match (&node.op, node.output) {
                // The stored BatchNorm's input gradient is its output's.
                (Op::Affine, Some(o)) => grad_off[o].expect("an output's gradient exists"),
                _ => {
                    let (h, w) = {
                        let b = &plan.buffers[node.inputs[0]];
                        (b.h, b.w)
                    };
                    let cin: usize = node.inputs.iter().map(|&b| plan.buffers[b].channels).sum();
                    let off = ff.alloc(cin * h * w);
                    scratch = Some(off);
                    off
                }
            });
        }
        if let Some(off) = scratch {
            ff.free(off);
        }
        if let Some(o) = node.output {
            ff.free(grad_off[o].expect("an output's gradient exists before its producer"));
        }
    }
    GpuLayout {
        act_off,
        act_per_image: act,
        stats_off,
        pre_aux,
        aux_len: aux,
        grad_off,
        dz_off,
        first_writer,
        grad_per_image: ff.high,
    }
}
