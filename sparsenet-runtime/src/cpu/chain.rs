//! Inference-time fusion of the convolutions of one unit.
//!
//! In eval mode every BatchNorm uses fixed running statistics, so the
//! transforms between a unit's convolutions no longer need the whole batch:
//! a bottleneck unit (1x1 convolution, BN-ReLU, kxk convolution, maybe a
//! trailing BN) can run image by image from start to end while the image's
//! intermediate planes stay in the core's L2 cache. Unfused, the 1x1
//! convolution writes its output for the whole batch (25 MB for a BC-100
//! stage-1 layer at batch 64), the kxk convolution's gather reads it back and
//! writes it again zero-padded, and the trailing BN is one more pass over
//! the unit's output.
//!
//! [`conv_chain`] does the unit as one call: each image's sources are
//! gathered (with their transform) into the 1x1 convolution's input layout;
//! the 1x1 kernel stores its outputs straight into the zero-padded planes
//! the kxk kernel reads, with the bias and BN-ReLU between them applied as
//! the values leave the registers ([`Epilogue`]); the kxk kernel stores the
//! unit's output with its bias and the trailing BN applied the same way.
//! Training cannot take this path (the BN between the convolutions needs
//! the batch statistics of the 1x1 output first), and the generated code
//! calls [`conv_chain`] only in eval mode.

use crate::cpu::conv::direct::{self, Direct, Epilogue};
use crate::cpu::conv::winograd::{Input, PreparedConv};
use crate::cpu::layers::forward::{
    affine, as_f32, as_f32_mut, concat_channels, conv2d, conv2d_direct, gather_into,
    gather_into_split, use_direct, ConvGeom, OwnedEpilogue, Pre,
};
use crate::cpu::parallel::scratch::{recycle, stale4, Scratch};
use crate::Float;
use ndarray::parallel::prelude::*;
use ndarray::{Array4, Axis};
use std::sync::OnceLock;

/// Whether [`conv_chain`] fuses its steps (the default), or runs them one
/// after the other when `SPARSENET_CHAIN=steps` (to measure what fusing
/// gains).
fn fused() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("SPARSENET_CHAIN").map_or(true, |v| v != "steps"))
}

/// One convolution of a chain: the transform applied to what it reads, its
/// OIHW weights, its bias and its shape.
#[derive(Clone, Copy, Debug)]
pub struct ConvStep<'a, T> {
    pub pre: Option<&'a Pre<T>>,
    pub weight: &'a [T],
    pub bias: Option<&'a [T]>,
    pub geom: ConvGeom,
}

/// `post(conv(bottleneck(srcs)))` for inference: the optional 1x1
/// `bottleneck` convolution of the virtual concatenation `srcs`, then
/// `conv` over its output (or over `srcs` when there is no bottleneck), then
/// the optional per-channel transform `post` of the result (a unit's
/// trailing BN), each step applying its own `pre` to what it reads.
///
/// The same function as [`conv2d`], [`conv2d`] and [`affine`] one after the
/// other, to rounding; the transforms after the first read must use fixed
/// (running) statistics, which is what inference has.
pub fn conv_chain<T: Float>(
    srcs: &[&Array4<T>],
    bottleneck: Option<ConvStep<'_, T>>,
    conv: ConvStep<'_, T>,
    post: Option<&Pre<T>>,
) -> Array4<T> {
    if let Some(b) = &bottleneck {
        let g = b.geom;
        assert!(
            g.kernel == 1 && g.stride == 1 && g.pad == 0,
            "a chain's bottleneck is a 1x1 convolution"
        );
        if let Some(p) = conv.pre {
            assert!(
                !p.batch_stats,
                "a chain's inner transforms use fixed statistics"
            );
        }
    }
    let (_, _, h, w) = srcs[0].dim();
    if conv.geom.stride == 1 && use_direct::<T>() && fused() {
        let ep = OwnedEpilogue::new(conv.bias, post, conv.geom.out_channels);
        match bottleneck {
            None => {
                return conv2d_direct(
                    srcs,
                    conv.pre,
                    conv.weight,
                    conv.geom,
                    ep.as_ref().map(OwnedEpilogue::view),
                )
            }
            Some(b) => {
                let mid = Direct::new(h, w, conv.geom.kernel, conv.geom.pad);
                let cin = concat_channels(srcs);
                if let Some(into) = Direct::pointwise_into(h, w, cin, &mid) {
                    let ep = ep.as_ref().map(OwnedEpilogue::view);
                    return bottleneck_direct(srcs, &b, &into, &mid, &conv, ep);
                }
            }
        }
    }
    // Any other type or shape: the steps one after the other.
    let mid = bottleneck.map(|b| conv2d(srcs, b.pre, b.weight, b.bias, b.geom));
    let y = match &mid {
        Some(m) => conv2d(&[m], conv.pre, conv.weight, conv.bias, conv.geom),
        None => conv2d(srcs, conv.pre, conv.weight, conv.bias, conv.geom),
    };
    if let Some(m) = mid {
        recycle(m);
    }
    match post {
        Some(p) => {
            let z = affine(&[&y], p);
            recycle(y);
            z
        }
        None => y,
    }
}

/// The direct-kernel path of [`conv_chain`] with a bottleneck: `into` is the
/// 1x1 convolution over `srcs` storing into the padded planes of `mid`, the
/// input layout of `conv`.
fn bottleneck_direct<T: Float>(
    srcs: &[&Array4<T>],
    b: &ConvStep<'_, T>,
    into: &Direct,
    mid: &Direct,
    conv: &ConvStep<'_, T>,
    ep: Option<Epilogue>,
) -> Array4<T> {
    let n = srcs[0].dim().0;
    let cin = concat_channels(srcs);
    let (cm, oc) = (b.geom.out_channels, conv.geom.out_channels);
    let wa = as_f32(b.weight);
    let kxk = PreparedConv::new(mid, as_f32(conv.weight), cm, oc, n);
    // The bottleneck's bias and the BN(-ReLU) that `conv` reads it through.
    let mid_ep = OwnedEpilogue::new(b.bias, conv.pre, cm);
    let mid_ep = mid_ep.as_ref().map(OwnedEpilogue::view);
    let mut out = stale4((n, oc, mid.ho, mid.wo));
    // One image, start to end, in the scratch buffers of the calling thread
    // (`planes` with its zero border already in place).
    let image =
        |bi: usize, o: &mut [f32], xin: &mut [T], planes: &mut [f32], grid: &mut Vec<f32>| {
            let split = n < crate::cpu::parallel::threads::available();
            if split {
                gather_into_split(srcs, b.pre, bi, into, xin);
            } else {
                gather_into(srcs, b.pre, bi, into, xin);
            }
            let x = as_f32(xin);
            if split {
                // Fewer images than threads: both convolutions split by output
                // channels.
                direct::split_out_channels(planes, mid.plane, |c0, cn, part| {
                    let e = mid_ep.map(|e| e.channels(c0, cn));
                    direct::forward_ep(into, x, cin, &wa[c0 * cin..(c0 + cn) * cin], cn, part, e);
                });
                kxk.run_split(Input::Padded(planes), o, ep);
            } else {
                direct::forward_ep(into, x, cin, wa, cm, planes, mid_ep);
                kxk.run(Input::Padded(planes), 0, oc, o, grid, ep);
            }
        };
    out.axis_iter_mut(Axis(0))
        .into_par_iter()
        .enumerate()
        .for_each_init(
            || {
                // Stale contents, as every element is written before it is
                // read: the gather writes all of `xin`, the 1x1 kernel the
                // interior of every plane, and the border is zeroed here,
                // once (rayon calls this once per piece of work it splits
                // off, not per image).
                let mut planes = Scratch::<f32>::stale(cm * mid.plane);
                mid.zero_border(&mut planes.0);
                (
                    Scratch::<T>::stale(into.input_len(cin)),
                    planes,
                    Scratch::<f32>::stale(kxk.scratch_len(oc)),
                )
            },
            |(xin, planes, grid), (bi, mut ob)| {
                let o = as_f32_mut(ob.as_slice_mut().expect("contiguous"));
                image(bi, o, &mut xin.0, &mut planes.0, &mut grid.0);
            },
        );
    out
}
