//! Unit tests of the macro core: snapshots of the generated code and of the
//! summary tables, and invariants of the plan over many configurations.

use crate::ast::Invocation;
use crate::errors::Errors;
use crate::{config, emit_gpu, expand, gpu_plan, plan, summary};
use proc_macro2::TokenStream;
use quote::quote;

fn resolve(ts: TokenStream) -> Vec<config::Config> {
    let inv: Invocation = syn::parse2(ts).expect("parses");
    let mut errors = Errors::default();
    let cfgs: Vec<_> = inv
        .nets
        .into_iter()
        .filter_map(|d| config::resolve(d, &mut errors))
        .collect();
    errors.finish().expect("valid");
    cfgs
}

fn pretty(ts: TokenStream) -> String {
    let out = expand::try_expand_with(ts, false).expect("expands");
    prettyplease::unparse(&syn::parse2(out).expect("generated code parses as a file"))
}

fn table(ts: TokenStream) -> String {
    let cfg = resolve(ts).remove(0);
    summary::render(&cfg, &plan::build(&cfg))
}

fn seed_2018_02_20() -> TokenStream {
    quote!(pub struct SeedV2Depth40 { style: seed_2018_02_20, input: [3, 32, 32], classes: 10, depth: 40, growth: 12 })
}

fn seed_2018_01_30() -> TokenStream {
    quote!(pub struct SeedV1 { style: seed_2018_01_30, input: [3, 32, 32], classes: 10, blocks: 3, units: 12, growth: 24, stem: bn_relu_conv3x3(16) })
}

fn densenet_bc() -> TokenStream {
    quote!(pub struct DenseNetBc40 { style: paper, classes: 10, depth: 40, growth: 12, bottleneck: true, aggregation: dense })
}

#[test]
fn code_seed_2018_02_20() {
    insta::assert_snapshot!(pretty(seed_2018_02_20()));
}

#[test]
fn code_seed_2018_01_30() {
    insta::assert_snapshot!(pretty(seed_2018_01_30()));
}

#[test]
fn code_densenet_bc() {
    insta::assert_snapshot!(pretty(densenet_bc()));
}

#[test]
fn summary_seed_2018_02_20() {
    insta::assert_snapshot!(table(seed_2018_02_20()));
}

#[test]
fn summary_seed_2018_01_30() {
    insta::assert_snapshot!(table(seed_2018_01_30()));
}

#[test]
fn summary_densenet_bc() {
    insta::assert_snapshot!(table(densenet_bc()));
}

/// Checks every structural invariant of a plan.
fn check_plan(cfg: &config::Config, p: &plan::Plan) {
    use plan::{Op, Store};
    // Parameters and state tile their stores exactly, in order.
    for store in [Store::Param, Store::State] {
        let mut next = 0;
        for t in p.tensors.iter().filter(|t| t.store == store) {
            assert_eq!(t.offset, next, "{} is not contiguous", t.name);
            next += t.len();
        }
        let len = if store == Store::Param {
            p.params_len
        } else {
            p.state_len
        };
        assert_eq!(next, len);
    }
    let mut names: Vec<&str> = p.tensors.iter().map(|t| t.name.as_str()).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), p.tensors.len(), "tensor names are unique");
    assert_eq!(
        p.layers.iter().map(|l| l.params).sum::<usize>(),
        p.params_len
    );
    // Every node reads buffers that exist before it and produces a new one.
    let mut produced = vec![false; p.buffers.len()];
    produced[0] = true;
    for (i, n) in p.nodes.iter().enumerate() {
        for &b in &n.inputs {
            assert!(produced[b], "node {i} reads a buffer before it is produced");
        }
        let h = p.buffers[n.inputs[0]].h;
        assert!(
            n.inputs.iter().all(|&b| p.buffers[b].h == h),
            "node {i}: sources differ in size"
        );
        let cin: usize = n.inputs.iter().map(|&b| p.buffers[b].channels).sum();
        if let Some(pre) = n.pre {
            assert_eq!(p.bns[pre.bn].channels, cin, "node {i}: BN width");
        }
        match &n.op {
            Op::Conv {
                weight,
                kernel,
                out_channels,
                ..
            } => {
                assert_eq!(weight.len, out_channels * cin * kernel * kernel)
            }
            Op::GapDense {
                weight, classes, ..
            } => assert_eq!(weight.len, classes * cin),
            _ => {}
        }
        if let Some(o) = n.output {
            assert!(!produced[o], "node {i}: a buffer is produced twice");
            produced[o] = true;
        }
    }
    assert!(produced.iter().all(|&x| x), "every buffer is produced");
    // Units read exactly the layers the aggregation rule names, newest first.
    for (s, stage) in cfg.stages.iter().enumerate() {
        for u in 0..stage.units {
            let l = p
                .layers
                .iter()
                .find(|l| l.name == format!("stages.{s}.units.{u}"))
                .unwrap();
            let offsets = plan::topology::offsets(&cfg.aggregation, u + 1);
            assert_eq!(l.sources.len(), offsets.len());
            for (src, o) in l.sources.iter().zip(&offsets) {
                if u + 1 - o > 0 {
                    assert_eq!(src, &format!("stages.{s}.units.{}", u - o));
                } else {
                    assert!(src == "stem" || src.starts_with("transitions."), "{src}");
                }
            }
            assert_eq!(l.out_channels, stage.growth);
        }
    }
    // Every buffer but the input is read by someone.
    let last = p.last_use();
    assert!(last.iter().all(|l| l.is_some()), "every buffer is read");
    assert!(p.peak_inference_per_image() <= p.activations_per_image());
    check_gpu_layout(p);
}

/// The GPU memory plan: activation buffers are disjoint; in backward, every
/// region a node touches (its sources' gradients, its output's gradient, its
/// dz scratch) is disjoint from every other gradient alive at that moment;
/// each source's gradient has exactly one first writer, its last reader.
fn check_gpu_layout(p: &plan::Plan) {
    let lay = gpu_plan::layout(p);
    let overlap = |a: (usize, usize), b: (usize, usize)| a.0 < b.0 + b.1 && b.0 < a.0 + a.1;
    for (i, bi) in p.buffers.iter().enumerate() {
        assert!(lay.act_off[i] + bi.per_image() <= lay.act_per_image);
        for (j, bj) in p.buffers.iter().enumerate().skip(i + 1) {
            assert!(
                !overlap(
                    (lay.act_off[i], bi.per_image()),
                    (lay.act_off[j], bj.per_image())
                ),
                "activations {i} and {j} overlap"
            );
        }
    }
    let mut alive: Vec<usize> = Vec::new();
    let mut writers = vec![0; p.buffers.len()];
    let region = |b: usize| (lay.grad_off[b].unwrap(), p.buffers[b].per_image());
    for (i, n) in p.nodes.iter().enumerate().rev() {
        for (k, &b) in n.inputs.iter().enumerate() {
            if lay.first_writer[i][k] {
                writers[b] += 1;
                assert!(
                    !alive.contains(&b),
                    "node {i}: buffer {b} written first twice"
                );
                alive.push(b);
            }
        }
        for &a in &alive {
            let (o, l) = region(a);
            assert!(
                o + l <= lay.grad_per_image,
                "gradient {a} outside the arena"
            );
            for &c in &alive {
                if a < c {
                    assert!(
                        !overlap(region(a), region(c)),
                        "node {i}: gradients {a} and {c} overlap"
                    );
                }
            }
        }
        if let (Some(dz), false) = (lay.dz_off[i], matches!(n.op, plan::Op::Affine)) {
            let b0 = &p.buffers[n.inputs[0]];
            let cin: usize = n.inputs.iter().map(|&b| p.buffers[b].channels).sum();
            let len = cin * b0.h * b0.w;
            assert!(dz + len <= lay.grad_per_image);
            for &a in &alive {
                assert!(
                    !overlap((dz, len), region(a)),
                    "node {i}: dz overlaps gradient {a}"
                );
            }
        }
        if let Some(o) = n.output {
            alive.retain(|&a| a != o);
        }
    }
    for (b, &w) in writers.iter().enumerate().skip(1) {
        assert_eq!(w, 1, "buffer {b}'s gradient has {w} first writers");
    }
    assert_eq!(writers[0], 0, "no one writes the input's gradient");
}

/// The CUDA C the GPU path compiles for a small seed network.
#[test]
fn cuda_source_seed_2018_02_20_small() {
    let cfg = resolve(quote!(struct Small { style: seed_2018_02_20, input: [3, 8, 8], classes: 10, depth: 10, growth: 4 })).remove(0);
    let (source, kernels) = emit_gpu::source_for_tests(&plan::build(&cfg));
    assert!(kernels
        .iter()
        .all(|k| source.contains(&format!("SN_KERNEL({k})"))));
    insta::assert_snapshot!(source);
}

#[test]
fn plans_hold_their_invariants_across_configurations() {
    let mut count = 0;
    for style in ["seed_2018_02_20", "seed_2018_01_30", "paper"] {
        for aggregation in [
            "exponential(2)",
            "exponential(3)",
            "dense",
            "offsets(1, 2, 5)",
        ] {
            for units in 1..=9usize {
                for (bottleneck, growth) in [(false, "5"), (true, "[3, 4, 6]")] {
                    if style == "seed_2018_02_20" && growth.starts_with('[') && !bottleneck {
                        continue;
                    }
                    let src = format!(
                        "struct N {{ style: {style}, classes: 7, input: [2, 16, 12], units: [{units}, {}, {}], growth: {growth}, bottleneck: {bottleneck}, aggregation: {aggregation} }}",
                        units + 1,
                        (units % 3) + 1
                    );
                    let ts: TokenStream = src.parse().unwrap();
                    let cfg = resolve(ts).remove(0);
                    let p = plan::build(&cfg);
                    check_plan(&cfg, &p);
                    count += 1;
                }
            }
        }
    }
    assert!(count > 150);
}

#[test]
fn exponential_offsets_are_powers_of_the_base() {
    for c in 2..5usize {
        let agg = config::Aggregation::Exponential(c);
        for j in 1..100usize {
            let offs = plan::topology::offsets(&agg, j);
            let mut want = Vec::new();
            let mut p = 1;
            while p <= j {
                want.push(p);
                p *= c;
            }
            assert_eq!(offs, want);
        }
    }
    assert_eq!(
        plan::topology::offsets(&config::Aggregation::Dense, 4),
        [1, 2, 3, 4]
    );
}

#[test]
fn seed_block_of_twelve_units_yields_96_channels() {
    let cfg = resolve(seed_2018_01_30()).remove(0);
    let p = plan::build(&cfg);
    let t = p.layers.iter().find(|l| l.name == "transitions.0").unwrap();
    assert_eq!(t.in_channels, 96);
}

/// Prints the size of the generated code of the largest networks
/// (`cargo test -p sparsenet-macros generated_code_size -- --nocapture`)
/// and keeps it bounded, since rustc's time grows with it.
#[test]
fn generated_code_size_stays_lean() {
    let nets = [
        (
            "SparseNet-BC-100 (k=24)",
            quote!(struct N { style: paper, classes: 10, depth: 100, growth: 24, bottleneck: true }),
        ),
        (
            "DenseNet-BC-100 (k=12)",
            quote!(struct N { style: paper, classes: 10, depth: 100, growth: 12, bottleneck: true, aggregation: dense }),
        ),
        (
            "DenseNet-121 (224x224)",
            quote!(struct N { style: paper, input: [3, 224, 224], classes: 1000, units: [6, 12, 24, 16], growth: 32, bottleneck: true, aggregation: dense, stem: imagenet(64) }),
        ),
    ];
    for (name, ts) in nets {
        let code = pretty(ts);
        let lines = code.lines().count();
        let fwd = code
            .split("fn forward(")
            .nth(1)
            .unwrap()
            .split("fn forward_backward(")
            .next()
            .unwrap();
        eprintln!(
            "{name}: {} KiB, {lines} lines of formatted code ({} lines in forward)",
            code.len() / 1024,
            fwd.lines().count()
        );
        assert!(
            code.len() < 4 << 20,
            "{name}: generated code grew to {} bytes",
            code.len()
        );
    }
}

/// The key table of `docs/declaring.md` (the macro's reference) names
/// exactly the keys the macro reads, and the keys' expectations name every
/// style and stem.
#[test]
fn the_documented_keys_are_the_keys() {
    let doc = include_str!("../../docs/declaring.md");
    let table = doc
        .split("| key | value | default |")
        .nth(1)
        .expect("declaring.md has a key table");
    let mut documented: Vec<&str> = Vec::new();
    for row in table.lines().skip(2).take_while(|l| l.starts_with('|')) {
        let first_cell = row.split('|').nth(1).expect("a table row has cells");
        documented.extend(first_cell.split('`').skip(1).step_by(2));
    }
    let keys: Vec<&str> = config::keys::ALL.iter().map(|k| k.name).collect();
    let (mut a, mut b) = (documented.clone(), keys.clone());
    a.sort_unstable();
    b.sort_unstable();
    assert_eq!(
        a, b,
        "docs/declaring.md's key table against config::keys::ALL"
    );
    for style in config::Style::ALL {
        assert!(config::keys::STYLE
            .expects
            .contains(&format!("`{}`", style.name())));
    }
    for stem in config::StemKind::ALL {
        assert!(config::keys::STEM
            .expects
            .contains(&format!("`{}(C)`", stem.name())));
    }
}

/// A side over 64 with a stride-1 stem is refused unless the declaration
/// says `large_input: allow`; 64 itself and the ImageNet stem need nothing.
#[test]
fn a_large_input_with_a_stride_1_stem_needs_large_input_allow() {
    let expand = |ts: TokenStream| expand::try_expand_with(ts, false);
    let refused = expand(quote!(struct N { input: [3, 96, 96], classes: 10, depth: 22 }))
        .expect_err("a 96x96 input with the conv3x3 stem");
    assert!(
        refused.to_string().contains("`large_input: allow`"),
        "{refused}"
    );
    expand(quote!(struct N { input: [3, 96, 96], classes: 10, depth: 22, large_input: allow }))
        .expect("allowed");
    expand(quote!(struct N { input: [3, 64, 64], classes: 10, depth: 22 })).expect("64x64");
    expand(quote!(struct N { input: [3, 96, 96], classes: 10, depth: 22, stem: imagenet(24) }))
        .expect("the ImageNet stem");
    // The key's description says the same bound.
    let side = crate::cost_check::LARGE_SIDE;
    assert!(config::keys::LARGE_INPUT
        .expects
        .contains(&format!("{side}x{side}")));
}
