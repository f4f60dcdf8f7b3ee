//! Emits the GPU program of a network from its [`Plan`] and [`GpuLayout`]:
//! CUDA C source (one constants struct per node and one `extern "C"` kernel
//! per node and pass, each instantiating a template of the runtime's
//! `kernels.cuh` with the node's channel counts, concat sources, shapes and
//! offsets baked in) and the launch sequences of inference, the training
//! forward pass, backward and the optimiser step, as tables.

use crate::gpu_plan::{layout, GpuLayout};
use crate::plan::{Node, Op, Plan};
use crate::tokens::{raw_str, rt};
use proc_macro2::{Ident, TokenStream};
use quote::quote;
use std::fmt::Write;

/// A kernel launch: kernel index, work items `per_image * n + fixed`, and
/// the block shape (threads, items per block).
#[derive(Clone, Copy, Default)]
struct Launch {
    kernel: usize,
    per_image: usize,
    fixed: usize,
    block: u32,
    per_block: usize,
}

/// Threads of an element-wise launch's block; the runtime reads it from the
/// launches (`GpuProgram`'s tables and `stage_input`), never copies it.
const BLOCK: u32 = 256;
/// Rows of a tiled GEMM's block tile and its threads (`SN_TILE_M`,
/// `SN_TILE_THREADS`).
const TILE_M: usize = 128;
const TILE_THREADS: u32 = 128;

/// Blocks a convolution's weight gradient aims for (two per SM of an H100
/// or H200), and the most chunks its positions are split into.
const WGRAD_BLOCKS: usize = 264;
const WGRAD_MAX_SPLITS: usize = 32;

/// An element-wise launch: one thread per item, grid-stride.
fn elementwise(kernel: usize, per_image: usize, fixed: usize) -> Launch {
    Launch {
        kernel,
        per_image,
        fixed,
        block: BLOCK,
        per_block: BLOCK as usize,
    }
}

/// A tiled GEMM's launch over `rows_per_image * n` rows and `col_tiles`
/// column tiles: at least one block per tile (the blocks past the last tile
/// find no work).
fn tiled(kernel: usize, rows_per_image: usize, col_tiles: usize) -> Launch {
    Launch {
        kernel,
        per_image: rows_per_image * col_tiles,
        fixed: TILE_M * col_tiles,
        block: TILE_THREADS,
        per_block: TILE_M,
    }
}

/// The column tiling of a tiled GEMM with `n` columns: (NT, tiles), each
/// tile 8 * NT columns wide, NT <= 8 (a warp's accumulators stay at most
/// 64 registers), the tiles as even as they can be.
fn column_tiles(n: usize) -> (usize, usize) {
    let n8 = n.div_ceil(8);
    let tiles = n8.div_ceil(8);
    (n8.div_ceil(tiles), tiles)
}

/// Chunks of a channel's values in the split reductions (`SN_CHUNKS`).
const CHUNKS: usize = 64;

#[derive(Default)]
struct Program {
    source: String,
    kernels: Vec<String>,
    /// Per kernel: (multiply-add FLOPs, compulsory bytes) per image of the
    /// batch, for the profile's rates; zero where not estimated.
    costs: Vec<(usize, usize)>,
    /// Doubles of partial sums the largest split reduction needs.
    partials: usize,
    forward_eval: Vec<Launch>,
    forward_train: Vec<Launch>,
    backward: Vec<Launch>,
    optimizer: Vec<Launch>,
    /// The launch of the kernel that builds the input batch on the device.
    stage_input: Launch,
}

impl Program {
    /// Adds `SN_KERNEL(name) { body }`, whose threads never wait for one
    /// another, and returns its index.
    fn kernel(&mut self, name: String, body: String) -> usize {
        self.add(name, body, "SN_EMU")
    }

    /// Adds a kernel whose threads cooperate (shared memory, barriers, warp
    /// collectives): the emulator runs them as fibers.
    fn coop_kernel(&mut self, name: String, body: String) -> usize {
        self.add(name, body, "SN_EMU_COOP")
    }

    fn add(&mut self, name: String, body: String, emu: &str) -> usize {
        let _ = writeln!(self.source, "SN_KERNEL({name}) {{ {body} }}\n{emu}({name})");
        self.kernels.push(name);
        self.costs.push((0, 0));
        self.kernels.len() - 1
    }

    /// Records kernel `k`'s FLOPs and compulsory bytes per image.
    fn cost(&mut self, k: usize, flops: usize, bytes: usize) {
        self.costs[k] = (flops, bytes);
    }
}

/// A C literal of the `f64` the CPU path starts from, cast to the kernel's
/// element type: `(real)0.9` rounds exactly as `T::from_f64(0.9)` does.
fn c_real(v: f64) -> String {
    let s = format!("{v:?}");
    format!("(real){s}")
}

/// The body of a per-source constant `f(s)`: a switch, not an indexed local
/// array, which NVRTC would build in local memory at every call (144 stores
/// per tiled kernel of a small network).
fn c_select(v: &[i64]) -> String {
    let mut s = String::from("switch (s) { ");
    for (i, x) in v.iter().enumerate().skip(1) {
        let _ = write!(s, "case {i}: return {x}; ");
    }
    let _ = write!(s, "default: return {}; }}", v[0]);
    s
}

/// The constants struct of node `i`.
fn node_struct(plan: &Plan, lay: &GpuLayout, i: usize, node: &Node) -> String {
    let b0 = &plan.buffers[node.inputs[0]];
    let (h, w) = (b0.h, b0.w);
    let ch: Vec<i64> = node
        .inputs
        .iter()
        .map(|&b| plan.buffers[b].channels as i64)
        .collect();
    let cin: i64 = ch.iter().sum();
    let cbeg: Vec<i64> = ch
        .iter()
        .scan(0, |acc, &c| {
            let s = *acc;
            *acc += c;
            Some(s)
        })
        .collect();
    let off: Vec<i64> = node.inputs.iter().map(|&b| lay.act_off[b] as i64).collect();
    let grad: Vec<i64> = node
        .inputs
        .iter()
        .map(|&b| lay.grad_off[b].map_or(-1, |o| o as i64))
        .collect();
    let first: Vec<i64> = lay.first_writer[i].iter().map(|&f| f as i64).collect();
    let stats: Vec<i64> = node
        .inputs
        .iter()
        .map(|&b| lay.stats_off[b].map_or(-1, |o| o as i64))
        .collect();
    let mut s = String::new();
    let _ = write!(
        s,
        "struct N{i} {{\n  static constexpr int S = {}, CIN = {cin}, H = {h}, W = {w};\n",
        ch.len()
    );
    for (name, v) in [
        ("off", &off),
        ("ch", &ch),
        ("cbeg", &cbeg),
        ("grad", &grad),
        ("first", &first),
        ("stats", &stats),
    ] {
        let _ = writeln!(s, "  SN_DEVICE i64 {name}(int s) {{ {} }}", c_select(v));
    }
    match node.pre {
        Some(pre) => {
            let bn = &plan.bns[pre.bn];
            let _ = writeln!(
                s,
                "  static constexpr bool PRE = true, RELU = {}, UNBIASED = {};\n  static constexpr i64 PRE_AUX = {}, GAMMA = {}, RUNNING = {};\n  static constexpr real EPS = {}, MOMENTUM = {}, ONE_MINUS_MOMENTUM = {};",
                pre.relu,
                bn.unbiased_running_var,
                lay.pre_aux[i].expect("a BN node has aux space"),
                bn.gamma,
                bn.running,
                c_real(bn.eps),
                c_real(bn.momentum),
                c_real(1.0 - bn.momentum),
            );
        }
        None => {
            let _ = writeln!(
                s,
                "  static constexpr bool PRE = false, RELU = false, UNBIASED = false;\n  static constexpr i64 PRE_AUX = 0, GAMMA = 0, RUNNING = 0;\n  static constexpr real EPS = 0, MOMENTUM = 0, ONE_MINUS_MOMENTUM = 0;"
            );
        }
    }
    let (k, stride, pad, cout, weight, bias, classes) = match &node.op {
        Op::Conv {
            kernel,
            stride,
            pad,
            out_channels,
            weight,
            bias,
        } => (
            *kernel,
            *stride,
            *pad,
            *out_channels as i64,
            weight.offset as i64,
            bias.map_or(-1, |b| b.offset as i64),
            0,
        ),
        Op::AvgPool { kernel, stride } => (*kernel, *stride, 0, cin, -1, -1, 0),
        Op::MaxPool {
            kernel,
            stride,
            pad,
        } => (*kernel, *stride, *pad, cin, -1, -1, 0),
        Op::Affine => (1, 1, 0, cin, -1, -1, 0),
        Op::GapDense {
            weight,
            bias,
            classes,
        } => (
            1,
            1,
            0,
            *classes as i64,
            weight.offset as i64,
            bias.offset as i64,
            *classes,
        ),
    };
    let (ho, wo) = match node.output {
        Some(o) => (plan.buffers[o].h, plan.buffers[o].w),
        None => (1, 1),
    };
    let out = node.output.map_or(-1, |o| lay.act_off[o] as i64);
    let out_grad = node
        .output
        .map_or(-1, |o| lay.grad_off[o].map_or(-1, |g| g as i64));
    let dz = lay.dz_off[i].map_or(-1, |d| d as i64);
    let _ = writeln!(
        s,
        "  static constexpr int K = {k}, STRIDE = {stride}, PAD = {pad}, HO = {ho}, WO = {wo}, COUT = {cout}, CLASSES = {classes};\n  static constexpr i64 WEIGHT = {weight}, BIAS = {bias}, OUT = {out}, OUT_GRAD = {out_grad}, DZ = {dz};\n}};"
    );
    s
}

/// The program: every kernel's source and the four launch sequences.
fn build(plan: &Plan, lay: &GpuLayout) -> Program {
    let mut p = Program::default();
    p.source
        .push_str("// Generated by sparsenet!; kernels.cuh precedes this.\n");
    let _ = writeln!(
        p.source,
        "static_assert(SN_CHUNKS == {CHUNKS} && SN_TILE_M == {TILE_M} && SN_TILE_THREADS == {TILE_THREADS}, \"kernels.cuh and the emitter agree on chunks and tiles\");"
    );
    let stats = stats_kernels(&mut p, plan, lay);
    forward(&mut p, plan, lay, &stats);
    // Loss.
    let k = p.kernel(
        "loss".to_string(),
        format!("softmax_cross_entropy<{}>(a);", plan.classes),
    );
    p.backward.push(elementwise(k, 1, 0));
    // Backward, node by node in reverse.
    for (i, node) in plan.nodes.iter().enumerate().rev() {
        backward_node(&mut p, plan, lay, i, node);
    }
    let k = p.kernel(
        "sgd".to_string(),
        format!("sgd_step<{}>(a);", plan.params_len),
    );
    p.optimizer.push(elementwise(k, 0, plan.params_len));
    // The input batch from u8 images on the device (GpuModel::stage_batch).
    let [c, h, w] = plan.input;
    let k = p.kernel(
        AUGMENT_KERNEL.to_string(),
        format!("augment_input<{c}, {h}, {w}>(a);"),
    );
    p.stage_input = elementwise(k, c * h * w, 0);
    p
}

/// The batch-statistics kernels of a buffer read through a BatchNorm:
/// (partial sums, final, channels).
type StatsKernels = Option<(usize, usize, usize)>;

/// Adds the batch-statistics kernels of every buffer that needs them (run
/// right after the buffer is produced); per buffer.
fn stats_kernels(p: &mut Program, plan: &Plan, lay: &GpuLayout) -> Vec<StatsKernels> {
    let need = plan.needs_stats();
    let mut stats_kernel = vec![None; plan.buffers.len()];
    for (b, buf) in plan.buffers.iter().enumerate() {
        if need[b] {
            let aux = lay.stats_off[b].expect("stats placed");
            let c = buf.channels;
            let kp = p.kernel(
                format!("stats_b{b}"),
                format!(
                    "batch_stats_partial<{}, {c}, {}>(a);",
                    lay.act_off[b],
                    buf.h * buf.w
                ),
            );
            let kf = p.kernel(
                format!("statsf_b{b}"),
                format!("batch_stats_final<{c}, {aux}>(a);"),
            );
            p.partials = p.partials.max(3 * c * CHUNKS);
            stats_kernel[b] = Some((kp, kf, c));
        }
    }
    stats_kernel
}

/// Launches a buffer's batch statistics in the training forward pass.
fn push_stats(p: &mut Program, stats: StatsKernels) {
    if let Some((kp, kf, c)) = stats {
        p.forward_train.push(elementwise(kp, 0, c * CHUNKS));
        p.forward_train.push(elementwise(kf, 0, c));
    }
}

/// The forward kernels of every node and the inference and training
/// forward sequences (training adds the batch statistics).
fn forward(p: &mut Program, plan: &Plan, lay: &GpuLayout, stats: &[StatsKernels]) {
    let launch = elementwise;
    push_stats(p, stats[0]);
    for (i, node) in plan.nodes.iter().enumerate() {
        let st = node_struct(plan, lay, i, node);
        p.source.push_str(&st);
        let cin: usize = node.inputs.iter().map(|&b| plan.buffers[b].channels).sum();
        if node.pre.is_some() {
            let k = p.kernel(format!("fold_n{i}"), format!("bn_fold<N{i}>(a);"));
            p.forward_eval.push(launch(k, 0, cin));
            p.forward_train.push(launch(k, 0, cin));
        }
        if let (Op::Conv { out_channels, .. }, Some(o)) = (&node.op, node.output) {
            // The tiled implicit GEMM: rows are output positions.
            let (nt, tiles) = column_tiles(*out_channels);
            let k = p.coop_kernel(
                format!("fwd_n{i}"),
                format!("tiled_gemm<ConvForward<N{i}>, {nt}>(a);"),
            );
            let b = &plan.buffers[o];
            let l = tiled(k, b.h * b.w, tiles);
            let b0 = &plan.buffers[node.inputs[0]];
            let (flops, bytes) = conv_cost(node, cin, b0.h * b0.w, b.h * b.w);
            p.cost(k, flops, bytes);
            p.forward_eval.push(l);
            p.forward_train.push(l);
            push_stats(p, stats[o]);
            continue;
        }
        let (template, per_image) = match (&node.op, node.output) {
            (Op::AvgPool { .. }, Some(o)) => ("avg_pool_forward", plan.buffers[o].per_image()),
            (Op::MaxPool { .. }, Some(o)) => ("max_pool_forward", plan.buffers[o].per_image()),
            (Op::Affine, Some(o)) => ("affine_forward", plan.buffers[o].per_image()),
            (Op::GapDense { classes, .. }, _) => ("gap_dense_forward", *classes),
            _ => unreachable!("only the head has no output buffer"),
        };
        let k = p.kernel(format!("fwd_n{i}"), format!("{template}<N{i}>(a);"));
        p.forward_eval.push(launch(k, per_image, 0));
        p.forward_train.push(launch(k, per_image, 0));
        if let Some(o) = node.output {
            push_stats(p, stats[o]);
        }
    }
}

/// The backward kernels of node `i`: its input gradient, its weights'
/// gradient, its BatchNorm's sums and the gradient into its sources.
fn backward_node(p: &mut Program, plan: &Plan, lay: &GpuLayout, i: usize, node: &Node) {
    let launch = elementwise;
    let b0 = &plan.buffers[node.inputs[0]];
    let cin: usize = node.inputs.iter().map(|&b| plan.buffers[b].channels).sum();
    let in_per_image = cin * b0.h * b0.w;
    let needs_dz = lay.dz_off[i].is_some();
    let input_template = match node.op {
        Op::Conv { .. } => Some("conv_backward_input"),
        Op::AvgPool { .. } => Some("avg_pool_backward_input"),
        Op::MaxPool { .. } => Some("max_pool_backward_input"),
        Op::GapDense { .. } => Some("gap_dense_backward_input"),
        Op::Affine => None,
    };
    if let (true, Op::Conv { stride: 1, .. }) = (needs_dz, &node.op) {
        // The tiled data gradient: rows are input positions, columns
        // input channels.
        let (nt, tiles) = column_tiles(cin);
        let k = p.coop_kernel(
            format!("bin_n{i}"),
            format!("tiled_gemm<ConvBackwardData<N{i}>, {nt}>(a);"),
        );
        p.backward.push(tiled(k, b0.h * b0.w, tiles));
        let o = &plan.buffers[node.output.expect("a convolution has an output")];
        let (flops, bytes) = conv_cost(node, cin, b0.h * b0.w, o.h * o.w);
        p.cost(k, flops, bytes);
    } else if let (true, Some(t)) = (needs_dz, input_template) {
        let k = p.kernel(format!("bin_n{i}"), format!("{t}<N{i}>(a);"));
        p.backward.push(launch(k, in_per_image, 0));
    }
    match &node.op {
        Op::Conv { .. } => conv_weight_grad(p, plan, i, node, cin),
        Op::GapDense { classes, .. } => {
            let k = p.kernel(
                format!("bw_n{i}"),
                format!("gap_dense_backward_weight<N{i}>(a);"),
            );
            p.backward.push(launch(k, 0, classes * cin + classes));
        }
        _ => {}
    }
    if node.pre.is_some() {
        let kp = p.kernel(
            format!("bbnp_n{i}"),
            format!("bn_backward_sums_partial<N{i}>(a);"),
        );
        let kf = p.kernel(
            format!("bbn_n{i}"),
            format!("bn_backward_sums_final<N{i}>(a);"),
        );
        p.partials = p.partials.max(2 * cin * CHUNKS);
        p.backward.push(launch(kp, 0, cin * CHUNKS));
        p.backward.push(launch(kf, 0, cin));
    }
    if node.inputs.iter().any(|&b| lay.grad_off[b].is_some()) {
        let k = p.kernel(
            format!("bdx_n{i}"),
            format!("backward_to_sources<N{i}>(a);"),
        );
        p.backward.push(launch(k, in_per_image, 0));
    }
}

/// A convolution's weight gradient (node `i`, `cin` input channels): a
/// tiled GEMM over the batch's positions, split-K into a fixed number of
/// chunks (enough blocks to fill a GPU; the same for every batch size, so
/// results are deterministic), then the chunks summed in order.
fn conv_weight_grad(p: &mut Program, plan: &Plan, i: usize, node: &Node, cin: usize) {
    let Op::Conv {
        kernel,
        out_channels,
        bias,
        ..
    } = &node.op
    else {
        unreachable!("only convolutions have a weight gradient here")
    };
    let b0 = &plan.buffers[node.inputs[0]];
    let rows = cin * kernel * kernel + usize::from(bias.is_some());
    let (nt, tiles) = column_tiles(*out_channels);
    let blocks = rows.div_ceil(TILE_M) * tiles;
    let splits = WGRAD_BLOCKS.div_ceil(blocks).clamp(1, WGRAD_MAX_SPLITS);
    let kp = p.coop_kernel(
        format!("bwp_n{i}"),
        format!("tiled_gemm<ConvBackwardWeight<N{i}, {splits}>, {nt}>(a);"),
    );
    let kf = p.kernel(
        format!("bw_n{i}"),
        format!("conv_weight_grad_final<N{i}, {splits}>(a);"),
    );
    p.partials = p.partials.max(splits * rows * out_channels);
    let o = &plan.buffers[node.output.expect("a convolution has an output")];
    let (flops, bytes) = conv_cost(node, cin, b0.h * b0.w, o.h * o.w);
    p.cost(kp, flops, bytes);
    p.backward.push(Launch {
        kernel: kp,
        per_image: 0,
        fixed: blocks * splits * TILE_M,
        block: TILE_THREADS,
        per_block: TILE_M,
    });
    p.backward.push(elementwise(kf, 0, rows * out_channels));
}

/// The kernel that builds the input batch on the device; the runtime
/// launches it through `GpuProgram::stage_input`, not by this name.
const AUGMENT_KERNEL: &str = "augment";

/// A convolution pass's multiply-add FLOPs per image (2 per product; the
/// same for forward, data and weight gradient) and its compulsory bytes per
/// image: its input and output activations read or written once (f32).
fn conv_cost(node: &Node, cin: usize, in_hw: usize, out_hw: usize) -> (usize, usize) {
    let Op::Conv {
        kernel,
        out_channels,
        ..
    } = node.op
    else {
        return (0, 0);
    };
    let flops = 2 * out_hw * out_channels * cin * kernel * kernel;
    (flops, 4 * (cin * in_hw + out_channels * out_hw))
}

/// Why the GPU path cannot run this network yet, if it cannot.
fn unsupported(plan: &Plan) -> Option<String> {
    plan.nodes.iter().find(|n| n.dropout > 0.0).map(|_| {
        "dropout is not implemented on the GPU yet (its mask would have to match the CPU's \
         ChaCha8 stream); declare the network without dropout to train it on the GPU"
            .to_string()
    })
}

/// The `GpuNetwork` impl of the generated type `name`: its `GPU_PROGRAM`.
pub fn emit_gpu(name: &Ident, plan: &Plan) -> TokenStream {
    let rt = rt();
    let lay = layout(plan);
    assert_eq!(lay.act_off[0], 0, "the input is the first activation");
    let prog = build(plan, &lay);
    let source = raw_str(&prog.source);
    let kernels = &prog.kernels;
    let costs = prog.costs.iter().map(|&(f, b)| {
        let (f, b) = (f as u64, b as u64);
        quote!(#rt::gpu::KernelCost::new(#f, #b))
    });
    let launch_tokens = |l: &Launch| {
        let (k, pi, f, b, pb) = (l.kernel, l.per_image, l.fixed, l.block, l.per_block);
        quote!(#rt::gpu::Launch { kernel: #k, per_image: #pi, fixed: #f, block: #b, per_block: #pb })
    };
    let table = |ls: &[Launch]| {
        let items = ls.iter().map(launch_tokens);
        quote!(&[#(#items),*])
    };
    let fe = table(&prog.forward_eval);
    let ft = table(&prog.forward_train);
    let bw = table(&prog.backward);
    let op = table(&prog.optimizer);
    let stage = launch_tokens(&prog.stage_input);
    let (act, grad, aux) = (lay.act_per_image, lay.grad_per_image, lay.aux_len);
    let partials = prog.partials;
    let unsupported = match unsupported(plan) {
        Some(s) => quote!(::std::option::Option::Some(#s)),
        None => quote!(::std::option::Option::None),
    };
    quote! {
        impl<T: #rt::Float> #rt::gpu::GpuNetwork for #name<T> {
        const GPU_PROGRAM: #rt::gpu::GpuProgram = #rt::gpu::GpuProgram {
            name: <Self as #rt::NetworkSpec>::NAME,
            source: #source,
            kernels: &[#(#kernels),*],
            costs: &[#(#costs),*],
            act_per_image: #act,
            grad_per_image: #grad,
                        aux_len: #aux,
            partials_len: #partials,
            forward_eval: #fe,
            forward_train: #ft,
            backward: #bw,
            optimizer: #op,
            stage_input: ::std::option::Option::Some(#stage),
            unsupported: #unsupported,
        };
        }
    }
}

#[cfg(test)]
pub(crate) fn source_for_tests(plan: &Plan) -> (String, Vec<String>) {
    let prog = build(plan, &layout(plan));
    (prog.source, prog.kernels)
}
