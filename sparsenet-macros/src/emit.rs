//! Emits the CPU model from a [`Plan`]: a struct generic over the element
//! type, its tables (tensors, layers, init), and a straight-line forward pass
//! with one statement per node and no loop over layers. Each buffer is dropped
//! right after its last reader, so the emitted code itself is the memory plan
//! of an inference pass. The GPU program is [`crate::emit_gpu`]'s, placed
//! beside these items by [`crate::expand`].

use crate::config::Config;
use crate::plan::{EvalChain, InitKind, Op, Plan, Store};
use crate::tokens::{raw_str, rt};
use proc_macro2::{Ident, TokenStream};
use quote::{format_ident, quote};

fn lit_f64(v: f64) -> proc_macro2::Literal {
    proc_macro2::Literal::f64_suffixed(v)
}

fn buf(b: usize) -> Ident {
    format_ident!("b{}", b)
}

fn stat(b: usize) -> Ident {
    format_ident!("s{}", b)
}

/// The CPU model of one network, in two parts that `expand` places around
/// the GPU program's impl.
pub struct CpuItems {
    /// The struct (with the declaration's doc comments), its `Debug` and
    /// its `NetworkSpec`.
    pub type_and_spec: TokenStream,
    /// Its inference pass and its `Model`.
    pub model: TokenStream,
}

pub fn emit(cfg: &Config, plan: &Plan, summary: &str) -> CpuItems {
    CpuItems {
        type_and_spec: type_and_spec(cfg, plan, summary),
        model: model(cfg, plan),
    }
}

/// The struct, `Debug` and `NetworkSpec` (the constants and tables).
fn type_and_spec(cfg: &Config, plan: &Plan, summary: &str) -> TokenStream {
    let rt = rt();
    let attrs = &cfg.attrs;
    let name = &cfg.ident;
    let name_str = name.to_string();
    let summary_lit = raw_str(summary);
    let [ic, ih, iw] = plan.input;
    let classes = plan.classes;
    let params_len = plan.params_len;
    let state_len = plan.state_len;
    let macs = plan.macs();
    let acts = plan.activations_per_image();
    let peak = plan.peak_inference_per_image();
    let tensors = tensor_specs(plan, &rt);
    let graph = emit_graph(plan, &rt);
    let layers = layer_infos(plan, &rt);
    quote! {
        #(#attrs)*
        #[derive(Clone)]
        // `pub` in the module `wrap` puts it in; the declaration's
        // visibility is the re-export's.
        pub struct #name<T: #rt::Float = f32> {
            params: ::std::vec::Vec<T>,
            state: ::std::vec::Vec<T>,
            rng: #rt::__private::rand_chacha::ChaCha8Rng,
        }

        impl<T: #rt::Float> ::std::fmt::Debug for #name<T> {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.debug_struct(#name_str)
                    .field("parameters", &self.params.len())
                    .field("running_statistics", &self.state.len())
                    .finish_non_exhaustive()
            }
        }

        impl<T: #rt::Float> #rt::NetworkSpec for #name<T> {
            const NAME: &'static str = #name_str;
            const INPUT: [usize; 3] = [#ic, #ih, #iw];
            const CLASSES: usize = #classes;
            const PARAMETERS: usize = #params_len;
            const STATE_LEN: usize = #state_len;
            const MACS_PER_IMAGE: u64 = #macs;
            const ACTIVATIONS_PER_IMAGE: usize = #acts;
            const PEAK_INFERENCE_PER_IMAGE: usize = #peak;
            fn tensors() -> &'static [#rt::TensorSpec] {
                const TENSORS: &[#rt::TensorSpec] = &[#(#tensors),*];
                TENSORS
            }
            fn layers() -> &'static [#rt::LayerInfo] {
                const LAYERS: &[#rt::LayerInfo] = &[#(#layers),*];
                LAYERS
            }
            fn summary() -> &'static str {
                #summary_lit
            }
            fn graph() -> &'static [#rt::GraphNode] {
                const GRAPH: &[#rt::GraphNode] = &[#(#graph),*];
                GRAPH
            }
        }
    }
}

/// The `NetworkSpec::tensors` table: every parameter and statistic.
fn tensor_specs(plan: &Plan, rt: &TokenStream) -> Vec<TokenStream> {
    plan.tensors
        .iter()
        .map(|t| {
            let n = &t.name;
            let shape = &t.shape;
            let off = t.offset;
            let store = match t.store {
                Store::Param => quote!(#rt::Store::Param),
                Store::State => quote!(#rt::Store::State),
            };
            quote!(#rt::TensorSpec { name: #n, shape: &[#(#shape),*], store: #store, offset: #off })
        })
        .collect()
}

/// The `NetworkSpec::layers` table.
fn layer_infos(plan: &Plan, rt: &TokenStream) -> Vec<TokenStream> {
    plan.layers
        .iter()
        .map(|l| {
            let n = &l.name;
            let op = &l.op;
            let srcs = &l.sources;
            let (ci, co, p, m) = (l.in_channels, l.out_channels, l.params, l.macs);
            let (ih, iw) = l.in_size;
            let (oh, ow) = l.out_size;
            quote!(#rt::LayerInfo { name: #n, op: #op, sources: &[#(#srcs),*], in_channels: #ci, out_channels: #co,
                in_size: (#ih, #iw), out_size: (#oh, #ow), params: #p, macs: #m })
        })
        .collect()
}

/// How `new` initialises each parameter: (offset, length, init).
fn inits(plan: &Plan, rt: &TokenStream) -> Vec<TokenStream> {
    plan.tensors
        .iter()
        .filter_map(|t| {
            let off = t.offset;
            let len = t.len();
            let init = match t.init? {
                InitKind::KaimingNormal { fan_in } => {
                    quote!(#rt::__private::Init::KaimingNormal { fan_in: #fan_in })
                }
                InitKind::Normal { std } => {
                    let std = lit_f64(std);
                    quote!(#rt::__private::Init::Normal { std: #std })
                }
                InitKind::Zeros => quote!(#rt::__private::Init::Zeros),
                InitKind::Ones => quote!(#rt::__private::Init::Ones),
            };
            Some(quote!((#off, #len, #init)))
        })
        .collect()
}

/// The inference pass and `Model`: construction, the stores and the three
/// straight-line passes.
fn model(cfg: &Config, plan: &Plan) -> TokenStream {
    let rt = rt();
    let name = &cfg.ident;
    let params_len = plan.params_len;
    let state_len = plan.state_len;
    let inits = inits(plan, &rt);
    let bn_state = plan.bns.iter().map(|b| {
        let (o, c) = (b.running, b.channels);
        quote!((#o, #c))
    });
    let forward = emit_forward(plan);
    let eval_pass = emit_eval_pass(plan);
    let forward_backward = emit_forward_backward(plan);
    quote! {
        impl<T: #rt::Float> #name<T> {
            #eval_pass
        }

        impl<T: #rt::Float> #rt::Model<T> for #name<T> {
            fn new(seed: u64) -> Self {
                const INIT: &[(usize, usize, #rt::__private::Init)] = &[#(#inits),*];
                const BN_STATE: &[(usize, usize)] = &[#(#bn_state),*];
                let mut params = ::std::vec![T::zero(); #params_len];
                let mut state = ::std::vec![T::zero(); #state_len];
                #rt::__private::init_params(&mut params, INIT, seed);
                #rt::__private::init_state(&mut state, BN_STATE);
                let rng = <#rt::__private::rand_chacha::ChaCha8Rng as #rt::__private::SeedableRng>::seed_from_u64(seed ^ 0x5eed_d409_0u64);
                #name { params, state, rng }
            }
            fn params(&self) -> &[T] { &self.params }
            fn params_mut(&mut self) -> &mut [T] { &mut self.params }
            fn state(&self) -> &[T] { &self.state }
            fn state_mut(&mut self) -> &mut [T] { &mut self.state }
            fn stores_mut(&mut self) -> (&mut [T], &mut [T]) { (&mut self.params, &mut self.state) }
            fn reseed(&mut self, seed: u64) {
                self.rng = <#rt::__private::rand_chacha::ChaCha8Rng as #rt::__private::SeedableRng>::seed_from_u64(seed);
            }
            #forward
            #forward_backward
        }
    }
}

/// `forward`: in eval mode the inference pass ([`emit_eval_pass`]) image by
/// image on every thread; in training mode the nodes one by one over the
/// batch, with the batch statistics every BN needs.
fn emit_forward(plan: &Plan) -> TokenStream {
    let rt = rt();
    let need_stats = plan.needs_stats();
    let last = plan.last_use();
    let mut body = Vec::new();
    let b0 = buf(0);
    body.push(quote!(let #b0 = #rt::__private::scratch::copy4(x);));
    if need_stats[0] {
        let s0 = stat(0);
        body.push(quote!(let #s0 = ctx.stats(&#b0);));
    }
    for i in 0..plan.nodes.len() {
        body.extend(node_statements(plan, i, &need_stats, Pass::Train));
        body.extend(recycles(&last, i, &need_stats));
    }
    quote! {
        fn forward(&mut self, x: #rt::ndarray::ArrayView4<'_, T>, mode: #rt::Mode)
            -> ::std::result::Result<#rt::ndarray::Array2<T>, #rt::InputError> {
            #rt::__private::check_input(<Self as #rt::NetworkSpec>::NAME, &x, <Self as #rt::NetworkSpec>::INPUT, mode)?;
            if mode == #rt::Mode::Eval {
                let ctx = #rt::__private::EvalCtx::new(&self.params, &self.state);
                let macs = <Self as #rt::NetworkSpec>::MACS_PER_IMAGE;
                return ::std::result::Result::Ok(#rt::__private::threads::by_image(x, macs, |x| Self::eval_pass(ctx, x)));
            }
            let mut ctx = #rt::__private::Ctx::new(&self.params, &mut self.state, mode, &mut self.rng);
            #(#body)*
            ::std::result::Result::Ok(logits)
        }

        fn infer(&self, x: #rt::ndarray::ArrayView4<'_, T>)
            -> ::std::result::Result<#rt::ndarray::Array2<T>, #rt::InputError> {
            #rt::__private::check_input(<Self as #rt::NetworkSpec>::NAME, &x, <Self as #rt::NetworkSpec>::INPUT, #rt::Mode::Eval)?;
            let ctx = #rt::__private::EvalCtx::new(&self.params, &self.state);
            let macs = <Self as #rt::NetworkSpec>::MACS_PER_IMAGE;
            ::std::result::Result::Ok(#rt::__private::threads::by_image(x, macs, |x| Self::eval_pass(ctx, x)))
        }
    }
}

/// The inference pass over a batch (one image, as `forward` calls it): BN
/// with running statistics, no dropout, and each [`EvalChain`] of the plan
/// (a unit's convolutions and trailing BN) as one `conv_chain` call.
fn emit_eval_pass(plan: &Plan) -> TokenStream {
    let rt = rt();
    let no_stats = vec![false; plan.buffers.len()];
    let last = plan.last_use();
    let mut body = Vec::new();
    let b0 = buf(0);
    body.push(quote!(let #b0 = #rt::__private::scratch::copy4(x);));
    let chains = plan.eval_chains();
    let mut chain_at = chains.iter().peekable();
    let mut i = 0;
    while i < plan.nodes.len() {
        let Some(c) = chain_at.next_if(|c| c.start == i) else {
            body.extend(node_statements(plan, i, &no_stats, Pass::Eval));
            body.extend(recycles(&last, i, &no_stats));
            i += 1;
            continue;
        };
        let o = plan.nodes[c.end()]
            .output
            .expect("a chain ends in a buffer");
        let ob = buf(o);
        let call = chain_call(plan, c);
        body.push(quote!(let #ob = #call;));
        // The chain's own intermediate buffers never exist here.
        let inner: Vec<usize> = (c.start..c.end())
            .filter_map(|j| plan.nodes[j].output)
            .collect();
        for j in c.start..=c.end() {
            for stmt_b in
                (0..plan.buffers.len()).filter(|&b| last[b] == Some(j) && !inner.contains(&b))
            {
                let bb = buf(stmt_b);
                body.push(quote!(#rt::__private::scratch::recycle(#bb);));
            }
        }
        i = c.end() + 1;
    }
    quote! {
        /// The inference pass (see `forward`).
        fn eval_pass(ctx: #rt::__private::EvalCtx<'_, T>, x: #rt::ndarray::ArrayView4<'_, T>) -> #rt::ndarray::Array2<T> {
            #(#body)*
            logits
        }
    }
}

/// Buffers to hand back once node `i` has run: those it reads last (and
/// their statistics, where `need_stats`).
fn recycles(last: &[Option<usize>], i: usize, need_stats: &[bool]) -> Vec<TokenStream> {
    let rt = rt();
    let mut out = Vec::new();
    for (b, l) in last.iter().enumerate() {
        if *l == Some(i) {
            let bb = buf(b);
            out.push(quote!(#rt::__private::scratch::recycle(#bb);));
            if need_stats[b] {
                let sb = stat(b);
                out.push(quote!(drop(#sb);));
            }
        }
    }
    out
}

/// Which pass [`node_statements`] writes a node's forward for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pass {
    /// The inference pass: BN from running statistics, no dropout, no
    /// batch statistics.
    Eval,
    /// Training mode in `forward`: dropout masks are not needed again.
    Train,
    /// The forward half of `forward_backward`: each dropout mask's seed is
    /// kept (`dropN`) for backward.
    TrainForBackward,
}

/// The forward statements of node `i` in `pass`: its pre-op, its call, its
/// dropout, and the statistics of its output when a BN reads it.
fn node_statements(plan: &Plan, i: usize, need_stats: &[bool], pass: Pass) -> Vec<TokenStream> {
    let node = &plan.nodes[i];
    let mut out = Vec::new();
    let srcs: Vec<Ident> = node.inputs.iter().map(|&b| buf(b)).collect();
    let p = format_ident!("pre{}", i);
    let pre = match pass {
        Pass::Eval => bn_statement(plan, node, &p, None),
        Pass::Train | Pass::TrainForBackward => pre_statement(plan, node, &p),
    };
    let pre_arg = match pre {
        Some(stmt) => {
            out.push(stmt);
            quote!(Some(&#p))
        }
        None => quote!(None),
    };
    let call = forward_call(node, &srcs, &pre_arg, &p);
    let Some(o) = node.output else {
        out.push(quote!(let logits = #call;));
        return out;
    };
    let ob = buf(o);
    out.push(quote!(let #ob = #call;));
    if pass == Pass::Eval {
        return out;
    }
    if node.dropout > 0.0 {
        let pr = lit_f64(node.dropout);
        out.push(match pass {
            Pass::TrainForBackward => {
                let d = format_ident!("drop{}", i);
                quote!(let (#ob, #d) = ctx.dropout(#ob, #pr);)
            }
            _ => quote!(let (#ob, _) = ctx.dropout(#ob, #pr);),
        });
    }
    if need_stats[o] {
        let so = stat(o);
        out.push(quote!(let #so = ctx.stats(&#ob);));
    }
    out
}

/// The `conv_chain` call that runs chain `c` in the inference pass, as a
/// block: the BN transforms of its nodes, then the call.
fn chain_call(plan: &Plan, c: &EvalChain) -> TokenStream {
    let rt = rt();
    let mut stmts = Vec::new();
    let mut pre_of = |j: usize| -> TokenStream {
        let p = format_ident!("pre{}", j);
        match bn_statement(plan, &plan.nodes[j], &p, None) {
            Some(stmt) => {
                stmts.push(stmt);
                quote!(Some(&#p))
            }
            None => quote!(None),
        }
    };
    let step = |j: usize, pre: TokenStream| -> TokenStream {
        let Op::Conv {
            kernel,
            stride,
            pad,
            out_channels,
            weight,
            bias,
        } = &plan.nodes[j].op
        else {
            unreachable!("chains are made of convolutions")
        };
        let (wo, wl) = (weight.offset, weight.len);
        let bias = match bias {
            Some(b) => {
                let (bo, bl) = (b.offset, b.len);
                quote!(Some(ctx.p(#bo, #bl)))
            }
            None => quote!(None),
        };
        quote!(#rt::__private::ConvStep { pre: #pre, weight: ctx.p(#wo, #wl), bias: #bias,
            geom: #rt::__private::ConvGeom { out_channels: #out_channels, kernel: #kernel, stride: #stride, pad: #pad } })
    };
    let bottleneck = match c.bottleneck() {
        Some(j) => {
            let s = step(j, pre_of(j));
            quote!(Some(#s))
        }
        None => quote!(None),
    };
    let conv = step(c.conv, pre_of(c.conv));
    let post = if c.post {
        pre_of(c.conv + 1)
    } else {
        quote!(None)
    };
    let srcs: Vec<Ident> = plan.nodes[c.start].inputs.iter().map(|&b| buf(b)).collect();
    quote!({
        #(#stmts)*
        #rt::__private::conv_chain(&[#(&#srcs),*], #bottleneck, #conv, #post)
    })
}

/// The training pass: the forward statements keep every buffer, every
/// `Pre` (`sparsenet_runtime::__private::Pre`) and every dropout seed alive; then one
/// backward statement group per node in reverse order. A buffer's gradient
/// is created at its last reader (the first one backward meets), receives
/// every reader's contribution, and is consumed by its producer; buffers and
/// gradients go back to the thread's buffer store (`scratch::recycle`) as soon as
/// backward is done with them, to be reused by the next allocation that fits.
fn emit_forward_backward(plan: &Plan) -> TokenStream {
    let rt = rt();
    let need_stats = plan.needs_stats();
    let mut body = Vec::new();
    let b0 = buf(0);
    body.push(quote!(let #b0 = #rt::__private::scratch::copy4(x);));
    if need_stats[0] {
        let s0 = stat(0);
        body.push(quote!(let #s0 = ctx.stats(&#b0);));
    }
    // Forward, keeping everything backward recomputes from.
    for i in 0..plan.nodes.len() {
        body.extend(node_statements(
            plan,
            i,
            &need_stats,
            Pass::TrainForBackward,
        ));
    }
    // A loss gradient of another shape than the logits is an error before
    // backward reads it (and before `grads` is touched).
    body.push(
        quote!(let dlogits = #rt::__private::check_loss_gradient(<Self as #rt::NetworkSpec>::NAME, &logits, loss)?;),
    );
    body.push(quote!(drop(logits);));
    body.push(quote!(grads.fill(T::zero());));
    // Backward.
    let mut has_grad = vec![false; plan.buffers.len()];
    for (i, node) in plan.nodes.iter().enumerate().rev() {
        let srcs: Vec<Ident> = node.inputs.iter().map(|&b| buf(b)).collect();
        let p = format_ident!("pre{}", i);
        let pre_arg = if node.pre.is_some() {
            quote!(Some(&#p))
        } else {
            quote!(None)
        };
        let dy = match node.output {
            Some(o) => {
                let g = format_ident!("g{}", o);
                if node.dropout > 0.0 {
                    let pr = lit_f64(node.dropout);
                    let d = format_ident!("drop{}", i);
                    body.push(quote!(#rt::__private::dropout_backward(&mut #g, #pr, #d);));
                }
                quote!(#g)
            }
            None => quote!(dlogits),
        };
        let dz = backward_call(plan, node, &srcs, &pre_arg, &dy);
        body.push(quote!(let dz = #dz;));
        // The first node (in backward order) to write a source's gradient
        // stores into a fresh buffer; later ones add.
        let mut first = Vec::with_capacity(node.inputs.len());
        for &b in &node.inputs {
            first.push(!has_grad[b]);
            if !has_grad[b] {
                has_grad[b] = true;
                let g = format_ident!("g{}", b);
                let bb = buf(b);
                if b == 0 {
                    // The input's gradient is returned to the caller: a
                    // buffer of its own, not one of the store's (which
                    // would never come back to it).
                    body.push(
                        quote!(let mut #g = #rt::ndarray::Array4::<T>::zeros(#bb.raw_dim());),
                    );
                } else {
                    body.push(quote!(let mut #g = #rt::__private::stale_like(&#bb);));
                }
            }
        }
        let gs: Vec<Ident> = node
            .inputs
            .iter()
            .map(|&b| format_ident!("g{}", b))
            .collect();
        let dbn = match node.pre {
            Some(pre) => {
                let bn = &plan.bns[pre.bn];
                let (g0, g1) = (bn.gamma, bn.gamma + 2 * bn.channels);
                quote!(Some(&mut grads[#g0..#g1]))
            }
            None => quote!(None),
        };
        body.push(quote!(
            #rt::__private::pre_backward(&[#(&#srcs),*], dz.into(), #pre_arg, #dbn, &mut [#(&mut #gs),*], &[#(#first),*]);
        ));
        if let Some(o) = node.output {
            let g = format_ident!("g{}", o);
            let ob = buf(o);
            if !matches!(node.op, Op::Affine) {
                body.push(quote!(#rt::__private::scratch::recycle(#g);));
            }
            body.push(quote!(#rt::__private::scratch::recycle(#ob);));
        }
    }
    body.push(quote!(#rt::__private::scratch::recycle(#b0);));
    let params_len = plan.params_len;
    quote! {
        fn forward_backward(
            &mut self,
            x: #rt::ndarray::ArrayView4<'_, T>,
            mode: #rt::Mode,
            grads: &mut [T],
            loss: &mut dyn FnMut(&#rt::ndarray::Array2<T>) -> #rt::ndarray::Array2<T>,
        ) -> ::std::result::Result<#rt::ndarray::Array4<T>, #rt::InputError> {
            #rt::__private::check_input(<Self as #rt::NetworkSpec>::NAME, &x, <Self as #rt::NetworkSpec>::INPUT, mode)?;
            if grads.len() != #params_len {
                return ::std::result::Result::Err(#rt::InputError::Gradients {
                    model: <Self as #rt::NetworkSpec>::NAME, expected: #params_len, found: grads.len(),
                });
            }
            let mut ctx = #rt::__private::Ctx::new(&self.params, &mut self.state, mode, &mut self.rng);
            #(#body)*
            ::std::result::Result::Ok(g0)
        }
    }
}

/// The backward call of one node: its parameters' gradients into `grads`
/// and the gradient with respect to its (virtual, transformed) input,
/// from `dy`, the gradient of its output.
fn backward_call(
    plan: &Plan,
    node: &crate::plan::Node,
    srcs: &[Ident],
    pre_arg: &TokenStream,
    dy: &TokenStream,
) -> TokenStream {
    let rt = rt();
    match &node.op {
        Op::Conv {
            kernel,
            stride,
            pad,
            out_channels,
            weight,
            bias,
        } => {
            let (wo, wl) = (weight.offset, weight.len);
            let geom = quote!(#rt::__private::ConvGeom { out_channels: #out_channels, kernel: #kernel, stride: #stride, pad: #pad });
            match bias {
                Some(b) => {
                    // The plan places a bias right after its weight.
                    assert_eq!(b.offset, wo + wl, "bias follows its weight");
                    let end = b.offset + b.len;
                    quote!({
                        let (dw, db) = grads[#wo..#end].split_at_mut(#wl);
                        #rt::__private::conv2d_backward(&[#(&#srcs),*], #pre_arg, ctx.p(#wo, #wl), &#dy, #geom, dw, Some(db))
                    })
                }
                None => {
                    let end = wo + wl;
                    quote!(#rt::__private::conv2d_backward(&[#(&#srcs),*], #pre_arg, ctx.p(#wo, #wl), &#dy, #geom, &mut grads[#wo..#end], None))
                }
            }
        }
        Op::AvgPool { kernel, stride } => {
            let ib = &plan.buffers[node.inputs[0]];
            let (h, w) = (ib.h, ib.w);
            quote!(#rt::__private::avg_pool_backward(&#dy, #kernel, #stride, (#h, #w)))
        }
        Op::MaxPool {
            kernel,
            stride,
            pad,
        } => {
            quote!(#rt::__private::max_pool_backward(&[#(&#srcs),*], #pre_arg, &#dy, #kernel, #stride, #pad))
        }
        Op::Affine => quote!(#dy),
        Op::GapDense { weight, bias, .. } => {
            let (wo, wl) = (weight.offset, weight.len);
            assert_eq!(bias.offset, wo + wl, "bias follows its weight");
            let end = bias.offset + bias.len;
            quote!({
                let (dw, db) = grads[#wo..#end].split_at_mut(#wl);
                #rt::__private::gap_dense_backward(&[#(&#srcs),*], #pre_arg, ctx.p(#wo, #wl), &#dy, dw, db)
            })
        }
    }
}

/// The forward call of one node (shared by both passes).
fn forward_call(
    node: &crate::plan::Node,
    srcs: &[Ident],
    pre_arg: &TokenStream,
    pre_ident: &Ident,
) -> TokenStream {
    let rt = rt();
    match &node.op {
        Op::Conv {
            kernel,
            stride,
            pad,
            out_channels,
            weight,
            bias,
        } => {
            let (wo, wl) = (weight.offset, weight.len);
            let bias = match bias {
                Some(b) => {
                    let (bo, bl) = (b.offset, b.len);
                    quote!(Some(ctx.p(#bo, #bl)))
                }
                None => quote!(None),
            };
            quote!(#rt::__private::conv2d(&[#(&#srcs),*], #pre_arg, ctx.p(#wo, #wl), #bias,
                #rt::__private::ConvGeom { out_channels: #out_channels, kernel: #kernel, stride: #stride, pad: #pad }))
        }
        Op::AvgPool { kernel, stride } => {
            quote!(#rt::__private::avg_pool(&[#(&#srcs),*], #pre_arg, #kernel, #stride))
        }
        Op::MaxPool {
            kernel,
            stride,
            pad,
        } => quote!(#rt::__private::max_pool(&[#(&#srcs),*], #pre_arg, #kernel, #stride, #pad)),
        Op::Affine => quote!(#rt::__private::affine(&[#(&#srcs),*], &#pre_ident)),
        Op::GapDense {
            weight,
            bias,
            classes,
        } => {
            let (wo, wl) = (weight.offset, weight.len);
            let (bo, bl) = (bias.offset, bias.len);
            quote!(#rt::__private::gap_dense(&[#(&#srcs),*], #pre_arg, ctx.p(#wo, #wl), Some(ctx.p(#bo, #bl)), #classes).1)
        }
    }
}

/// `let preN = ctx.bn(...)`: the folded BN(-ReLU) a node applies to its
/// sources while reading them (none for nodes without a pre-op), with the
/// statistics of the sources (training-mode pass).
fn pre_statement(plan: &Plan, node: &crate::plan::Node, p: &Ident) -> Option<TokenStream> {
    let st = node
        .inputs
        .iter()
        .map(|&b| {
            let s = stat(b);
            quote!(#s.as_ref())
        })
        .collect();
    bn_statement(plan, node, p, Some(st))
}

/// `let preN = ctx.bn(...)` with `stats`, one per source of `node`, or with
/// none for the inference pass's `EvalCtx`.
fn bn_statement(
    plan: &Plan,
    node: &crate::plan::Node,
    p: &Ident,
    stats: Option<Vec<TokenStream>>,
) -> Option<TokenStream> {
    let rt = rt();
    let pre = node.pre?;
    let bn = &plan.bns[pre.bn];
    let (g, r, c) = (bn.gamma, bn.running, bn.channels);
    let eps = lit_f64(bn.eps);
    let mom = lit_f64(bn.momentum);
    let unb = bn.unbiased_running_var;
    let relu = pre.relu;
    let spec = quote!(&#rt::__private::BnSpec { gamma: #g, running: #r, channels: #c, eps: #eps, momentum: #mom, unbiased_running_var: #unb });
    Some(match stats {
        Some(st) => quote!(let #p = ctx.bn(#spec, &[#(#st),*], #relu);),
        None => quote!(let #p = ctx.bn(#spec, #relu);),
    })
}

/// The inference graph's table (`NetworkSpec::graph`): each node's sources,
/// BatchNorm-ReLU, operation and output, tensors by name.
fn emit_graph(plan: &Plan, rt: &TokenStream) -> Vec<TokenStream> {
    // Value names: the producing layer's name, made unique where a layer has
    // several outputs (a bottleneck's inner one).
    let mut names: Vec<String> = Vec::with_capacity(plan.buffers.len());
    for (i, b) in plan.buffers.iter().enumerate() {
        let base = if i == 0 {
            "input".to_string()
        } else {
            b.name.clone()
        };
        let taken = |n: &String| names.contains(n);
        let mut name = base.clone();
        let mut k = 1;
        while taken(&name) {
            name = format!("{base}#{k}");
            k += 1;
        }
        names.push(name);
    }
    let tensor_at = |store: Store, offset: usize| -> String {
        plan.tensors
            .iter()
            .find(|t| t.store == store && t.offset == offset)
            .map(|t| t.name.clone())
            .expect("every planned parameter is a named tensor")
    };
    plan.nodes
        .iter()
        .map(|n| {
            let inputs = n.inputs.iter().map(|&b| names[b].clone());
            let output = n.output.map_or_else(|| "logits".to_string(), |b| names[b].clone());
            let pre = match n.pre {
                Some(p) => {
                    let bn = &plan.bns[p.bn];
                    let weight = tensor_at(Store::Param, bn.gamma);
                    let prefix = weight.strip_suffix(".weight").expect("BN gamma is `.weight`").to_string();
                    let (eps, relu) = (bn.eps, p.relu);
                    quote!(::std::option::Option::Some(#rt::GraphBn { prefix: #prefix, eps: #eps, relu: #relu }))
                }
                None => quote!(::std::option::Option::None),
            };
            let op = match &n.op {
                Op::Conv { kernel, stride, pad, weight, bias, .. } => {
                    let w = tensor_at(Store::Param, weight.offset);
                    let b = match bias {
                        Some(b) => {
                            let b = tensor_at(Store::Param, b.offset);
                            quote!(::std::option::Option::Some(#b))
                        }
                        None => quote!(::std::option::Option::None),
                    };
                    quote!(#rt::GraphOp::Conv { weight: #w, bias: #b, kernel: #kernel, stride: #stride, pad: #pad })
                }
                Op::AvgPool { kernel, stride } => quote!(#rt::GraphOp::AvgPool { kernel: #kernel, stride: #stride }),
                Op::MaxPool { kernel, stride, pad } => {
                    quote!(#rt::GraphOp::MaxPool { kernel: #kernel, stride: #stride, pad: #pad })
                }
                Op::Affine => quote!(#rt::GraphOp::Identity),
                Op::GapDense { weight, bias, .. } => {
                    let w = tensor_at(Store::Param, weight.offset);
                    let b = tensor_at(Store::Param, bias.offset);
                    quote!(#rt::GraphOp::GapDense { weight: #w, bias: #b })
                }
            };
            quote!(#rt::GraphNode { inputs: &[#(#inputs),*], pre: #pre, op: #op, output: #output })
        })
        .collect()
}
