//! What the generated types report about themselves (shapes, concat
//! sources, parameter counts) and how they behave at run time (weights,
//! input errors, modes).

use sparsenet::prelude::*;
use sparsenet::runtime::{
    ndarray::Array4, InputError, Store, TensorSpec, ValueProblem, WeightsError,
};

sparsenet! {
    /// The seed's 2018-02-20 network as the issue pins it: 185,314 parameters.
    pub struct SeedV2Depth40 { style: seed_2018_02_20, input: [3, 32, 32], classes: 10, depth: 40, growth: 12 }

    /// The seed's pre-2018-01-30 network as its notebook builds it:
    /// SparseNet(num_classes=10, num_sparseblk_count=3, num_layers=12, growth_rate=24, init_channels=16).
    pub(crate) struct SeedV1Notebook {
        style: seed_2018_01_30, input: [3, 32, 32], classes: 10,
        blocks: 3, units: 12, growth: 24, stem: bn_relu_conv3x3(16),
    }

    /// DenseNet-BC-100 (k = 12) for comparison: every earlier layer.
    struct DenseNetBc100 { style: paper, classes: 10, depth: 100, growth: 12, bottleneck: true, aggregation: dense, stem: conv3x3(24) }

    /// DenseNet-121 on ImageNet-sized input, as torchvision builds it.
    struct DenseNet121 {
        style: paper, input: [3, 224, 224], classes: 1000, units: [6, 12, 24, 16], growth: 32,
        bottleneck: true, aggregation: dense, stem: imagenet(64),
    }

    /// The paper's SparseNet-BC with a growth rate per stage and dropout.
    struct PaperBc { style: paper, classes: 100, depth: 100, growth: [16, 32, 64], bottleneck: true, dropout: 0.2 }

    /// A small grayscale network.
    struct Gray { style: paper, input: [1, 28, 28], classes: 10, depth: 22, growth: 8, bottleneck: true }

    /// The paper's BC units (BN-ReLU-Conv1x1-BN-ReLU-Conv3x3) on planes whose
    /// widths (32, 16, 8) take the fused inference chain.
    struct PaperSmallBc { style: paper, input: [3, 32, 32], classes: 10, depth: 22, growth: 12, bottleneck: true }

    /// The seed's BC units (BN-Conv1x1-BN-ReLU-Conv3x3-BN).
    struct SeedV2SmallBc { style: seed_2018_02_20, input: [3, 32, 32], classes: 10, depth: 22, growth: 12, bottleneck: true }
    /// Growth 16: its 3x3 layers (64 -> 16) at 32 and 16 wide take the
    /// Winograd path at batch 16.
    struct SeedV2SmallBcK16 { style: seed_2018_02_20, input: [3, 32, 32], classes: 10, depth: 22, growth: 16, bottleneck: true }

    /// Explicit offsets.
    struct Offsets { classes: 10, input: [3, 16, 16], units: [5, 5], growth: 4, aggregation: offsets(1, 3) }
}

fn layer<N: NetworkSpec>(name: &str) -> &'static LayerInfo {
    N::layers()
        .iter()
        .find(|l| l.name == name)
        .unwrap_or_else(|| panic!("no layer {name}"))
}

#[test]
fn parameter_counts_match_the_reference_implementations() {
    // Counted by scripts/make_fixtures.py on the seed's own MXNet model.
    assert_eq!(SeedV2Depth40::<f32>::PARAMETERS, 185_314);
    // torchvision.models.densenet121().parameters()
    assert_eq!(DenseNet121::<f32>::PARAMETERS, 7_978_856);
    // The well-known count of DenseNet-BC (L=100, k=12) on CIFAR-10.
    assert_eq!(DenseNetBc100::<f32>::PARAMETERS, 769_162);
    // The counts agree with the tensor table.
    for (params, tensors) in [
        (
            SeedV2Depth40::<f32>::PARAMETERS,
            SeedV2Depth40::<f32>::tensors(),
        ),
        (
            DenseNet121::<f32>::PARAMETERS,
            DenseNet121::<f32>::tensors(),
        ),
    ] {
        let sum: usize = tensors
            .iter()
            .filter(|t| t.store == sparsenet::runtime::Store::Param)
            .map(|t| t.len())
            .sum();
        assert_eq!(sum, params);
    }
}

#[test]
fn the_seed_block_check_holds() {
    // The notebook: a block of 12 units with growth 24 on a 16-channel input yields 96 channels.
    let t = layer::<SeedV1Notebook<f32>>("transitions.0");
    assert_eq!(t.in_channels, 96);
    assert_eq!(
        t.sources,
        [
            "stages.0.units.11",
            "stages.0.units.10",
            "stages.0.units.8",
            "stages.0.units.4"
        ]
    );
    assert_eq!(t.out_channels, 48);
    assert_eq!(t.out_size, (16, 16));
}

#[test]
fn exponential_aggregation_reads_newest_first() {
    let u = layer::<SeedV2Depth40<f32>>("stages.1.units.6");
    // layer 7 of the block reads layers 6, 5, 3 (block input is layer 0).
    assert_eq!(
        u.sources,
        ["stages.1.units.5", "stages.1.units.4", "stages.1.units.2"]
    );
    let u = layer::<SeedV2Depth40<f32>>("stages.1.units.3");
    // layer 4 reads 3, 2 and the block input (the first transition's output).
    assert_eq!(
        u.sources,
        ["stages.1.units.2", "stages.1.units.1", "transitions.0"]
    );
    assert_eq!(u.in_channels, 12 + 12 + 48); // transition 0 keeps all 48 channels (compression 1)
    assert_eq!((u.out_channels, u.out_size), (12, (16, 16)));
    let o = layer::<Offsets<f32>>("stages.0.units.4");
    assert_eq!(o.sources, ["stages.0.units.3", "stages.0.units.1"]);
}

#[test]
fn dense_aggregation_reads_every_earlier_layer() {
    let u = layer::<DenseNetBc100<f32>>("stages.2.units.15");
    assert_eq!(u.sources.len(), 16);
    assert_eq!(u.sources[0], "stages.2.units.14");
    assert_eq!(u.sources[15], "transitions.1");
    // DenseNet-BC-100: 24 -> 216 -> 108 -> 300 -> 150 -> 342
    assert_eq!(
        layer::<DenseNetBc100<f32>>("transitions.0").in_channels,
        216
    );
    assert_eq!(
        layer::<DenseNetBc100<f32>>("transitions.1").in_channels,
        300
    );
    assert_eq!(layer::<DenseNetBc100<f32>>("head").in_channels, 342);
    let head = layer::<DenseNet121<f32>>("head");
    assert_eq!((head.in_channels, head.in_size), (1024, (7, 7)));
    assert_eq!(layer::<DenseNet121<f32>>("stem").out_size, (56, 56));
}

#[test]
fn per_stage_growth_and_grayscale_inputs() {
    assert_eq!(layer::<PaperBc<f32>>("stages.0.units.0").out_channels, 16);
    assert_eq!(layer::<PaperBc<f32>>("stages.2.units.0").out_channels, 64);
    assert_eq!(layer::<PaperBc<f32>>("stem").out_channels, 32);
    assert_eq!(layer::<Gray<f32>>("head").in_size, (7, 7));
    let mut g = Gray::<f32>::new(1);
    let x = Array4::<f32>::from_elem((2, 1, 28, 28), 0.5);
    let y = g.forward(x.view(), Mode::Train).unwrap();
    assert_eq!(y.dim(), (2, 10));
    assert!(y.iter().all(|v| v.is_finite()));
}

#[test]
fn macs_and_memory_are_reported() {
    let macs: u64 = SeedV2Depth40::<f32>::layers().iter().map(|l| l.macs).sum();
    assert_eq!(macs, SeedV2Depth40::<f32>::MACS_PER_IMAGE);
    // torchvision's DenseNet-121 is 2.87 GMACs per 224x224 image.
    let g = DenseNet121::<f32>::MACS_PER_IMAGE as f64 / 1e9;
    assert!((2.8..2.95).contains(&g), "DenseNet-121 GMACs {g}");
    // Both are constants (inherent items of the network): checked at compile time.
    const {
        assert!(
            SeedV2Depth40::<f32>::PEAK_INFERENCE_PER_IMAGE
                < SeedV2Depth40::<f32>::ACTIVATIONS_PER_IMAGE
        )
    };
    let s = SeedV2Depth40::<f32>::summary();
    assert!(s.contains("Trainable params: 185,314"), "{s}");
}

#[test]
fn eval_is_per_image_and_deterministic() {
    let mut m = SeedV1Notebook::<f64>::new(7);
    let x = Array4::<f64>::from_shape_fn((3, 3, 32, 32), |(n, c, h, w)| {
        ((n * 7 + c * 3 + h * 5 + w) % 11) as f64 / 11.0
    });
    let all = m.forward(x.view(), Mode::Eval).unwrap();
    let one = m
        .forward(
            x.slice(sparsenet::runtime::ndarray::s![1..2, .., .., ..]),
            Mode::Eval,
        )
        .unwrap();
    for c in 0..10 {
        assert!((all[[1, c]] - one[[0, c]]).abs() < 1e-12);
    }
    let again = m.forward(x.view(), Mode::Eval).unwrap();
    assert_eq!(all, again);
}

/// Eval logits of the f32 model (direct kernels, fused unit chains, image
/// by image) against the f64 model with the same weights (general kernels,
/// each layer on its own), within `tol` relative to the largest logit.
fn f32_eval_matches_f64<A: Model<f32>, B: Model<f64>>(batch: usize, tol: f64) {
    let mut a = A::new(5);
    // Non-zero biases and BN shifts, and running statistics away from
    // (0, 1), so that every folded term does something.
    for (i, v) in a.params_mut().iter_mut().enumerate() {
        *v += ((i * 13) % 7) as f32 * 0.01 - 0.03;
    }
    for t in A::tensors() {
        let is_mean = t.name.ends_with("running_mean");
        if is_mean || t.name.ends_with("running_var") {
            for (i, v) in a.state_mut()[t.offset..t.offset + t.len()]
                .iter_mut()
                .enumerate()
            {
                let u = ((i * 37) % 11) as f32 / 11.0;
                *v = if is_mean { 0.2 * (u - 0.5) } else { 0.5 + u };
            }
        }
    }
    let mut b = B::new(0);
    for (d, &s) in b.params_mut().iter_mut().zip(a.params()) {
        *d = s as f64;
    }
    for (d, &s) in b.state_mut().iter_mut().zip(a.state()) {
        *d = s as f64;
    }
    let [c, h, w] = A::INPUT;
    let x = Array4::<f64>::from_shape_fn((batch, c, h, w), |(n, c, y, x)| {
        ((n * 5 + c * 3 + y * 7 + x) % 13) as f64 / 6.5 - 1.0
    });
    let want = b.forward(x.view(), Mode::Eval).unwrap();
    let got = a.forward(x.mapv(|v| v as f32).view(), Mode::Eval).unwrap();
    let scale = want.iter().fold(1e-3f64, |m, v| m.max(v.abs()));
    let err = got
        .iter()
        .zip(&want)
        .fold(0.0f64, |m, (&g, &w)| m.max((g as f64 - w).abs()))
        / scale;
    assert!(err < tol, "{}: relative error {err:e}", A::NAME);
}

#[test]
fn fused_f32_inference_matches_the_layer_by_layer_f64_pass() {
    // Batch 3 runs image by image on the threads, batch 1 splits each
    // layer's channels over them.
    for batch in [3, 1] {
        f32_eval_matches_f64::<PaperSmallBc<f32>, PaperSmallBc<f64>>(batch, 2e-5);
        f32_eval_matches_f64::<SeedV2SmallBc<f32>, SeedV2SmallBc<f64>>(batch, 2e-5);
        f32_eval_matches_f64::<SeedV2Depth40<f32>, SeedV2Depth40<f64>>(batch, 2e-5);
    }
}

#[test]
fn training_mode_updates_running_statistics_and_eval_does_not() {
    let mut m = SeedV2Depth40::<f32>::new(3);
    let before = m.state().to_vec();
    let x = Array4::<f32>::from_shape_fn((2, 3, 32, 32), |(n, c, h, w)| {
        ((n + c + h * w) % 7) as f32 - 3.0
    });
    m.forward(x.view(), Mode::Eval).unwrap();
    assert_eq!(m.state(), &before[..]);
    m.forward(x.view(), Mode::Train).unwrap();
    assert_ne!(m.state(), &before[..]);
}

#[test]
fn wrong_input_shape_is_an_error_naming_the_tensor() {
    let mut m = SeedV2Depth40::<f32>::new(0);
    let x = Array4::<f32>::zeros((2, 1, 32, 32));
    let err = m.forward(x.view(), Mode::Eval).unwrap_err();
    assert!(matches!(err, InputError::Shape { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains("`input`")
            && msg.contains("[2, 1, 32, 32]")
            && msg.contains("[batch, 3, 32, 32]"),
        "{msg}"
    );
    let empty = Array4::<f32>::zeros((0, 3, 32, 32));
    assert!(m.forward(empty.view(), Mode::Eval).is_err());
}

/// A loss closure whose gradient is not shaped like the logits is an error
/// naming both shapes (it used to panic inside ndarray in the backward
/// pass), and the gradient buffer is left as it was.
#[test]
fn a_loss_gradient_of_the_wrong_shape_is_an_error_naming_both_shapes() {
    let mut m = Offsets::<f32>::new(0);
    let x = Array4::<f32>::from_shape_fn((2, 3, 16, 16), |(n, c, y, x)| {
        ((n + 3 * c + 5 * y + 7 * x) % 11) as f32 / 5.5 - 1.0
    });
    let mut grads = vec![7.0f32; Offsets::<f32>::PARAMETERS];
    for (rows, cols) in [(2, 11), (2, 9), (1, 10), (3, 10)] {
        let err = m
            .forward_backward(x.view(), Mode::Train, &mut grads, &mut |_| {
                sparsenet::runtime::ndarray::Array2::zeros((rows, cols))
            })
            .unwrap_err();
        assert_eq!(
            err,
            InputError::LossGradient {
                model: "Offsets",
                expected: [2, 10],
                found: [rows, cols],
            }
        );
        assert_eq!(
            err.to_string(),
            format!(
                "the loss gradient has shape [{rows}, {cols}], but the logits of model `Offsets` \
                 are [2, 10] (batch, classes): the loss must return one value per logit"
            )
        );
        assert!(grads.iter().all(|&g| g == 7.0), "grads untouched");
    }
    // The right shape still trains.
    m.forward_backward(x.view(), Mode::Train, &mut grads, &mut |l| {
        l.mapv(|v| v * 0.1)
    })
    .unwrap();
    assert!(grads.iter().any(|&g| g != 7.0));
}

#[test]
fn weights_round_trip_and_mismatches_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("seed.safetensors");
    let mut a = SeedV2Depth40::<f32>::new(1);
    let x = Array4::<f32>::from_elem((1, 3, 32, 32), 0.25);
    a.forward(x.view(), Mode::Train).unwrap(); // move the running statistics away from 0/1
    a.save(&path).unwrap();
    let mut b = SeedV2Depth40::<f32>::new(2);
    b.load(&path).unwrap();
    assert_eq!(a.params(), b.params());
    assert_eq!(a.state(), b.state());
    assert_eq!(
        a.forward(x.view(), Mode::Eval).unwrap(),
        b.forward(x.view(), Mode::Eval).unwrap()
    );

    // Another architecture's file: the first offending tensor is named with both shapes.
    let mut other = SeedV1Notebook::<f32>::new(0);
    let err = other.load(&path).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("seed.safetensors"), "{msg}");
    assert!(
        matches!(
            err,
            WeightsError::MissingTensor { .. } | WeightsError::ShapeMismatch { .. }
        ),
        "{msg}"
    );

    // An f32 file into an f64 model: every value exactly, so the f64 model
    // computes what the f32 one would with exact arithmetic.
    let mut wide = SeedV2Depth40::<f64>::new(0);
    wide.load(&path).unwrap();
    assert!(wide
        .params()
        .iter()
        .zip(a.params())
        .all(|(&w, &n)| w == n as f64));
    assert!(wide
        .state()
        .iter()
        .zip(a.state())
        .all(|(&w, &n)| w == n as f64));
    // And an f64 file into an f32 model: rounded to nearest, ties to even
    // (Rust's `as f32`); values chosen between two f32s to see the rounding.
    for v in wide.params_mut().iter_mut() {
        *v += 1e-9;
    }
    let wide_path = dir.path().join("wide.safetensors");
    wide.save(&wide_path).unwrap();
    let mut narrow = SeedV2Depth40::<f32>::new(3);
    narrow.load(&wide_path).unwrap();
    assert!(narrow
        .params()
        .iter()
        .zip(wide.params())
        .all(|(&n, &w)| n == w as f32));
    assert!(
        narrow
            .params()
            .iter()
            .zip(a.params())
            .any(|(&n, &o)| n != o),
        "the 1e-9 shows"
    );

    // A truncated file is an error, and leaves the model unchanged.
    let bytes = std::fs::read(&path).unwrap();
    let cut = dir.path().join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let snapshot = b.params().to_vec();
    assert!(b.load(&cut).is_err());
    assert_eq!(b.params(), &snapshot[..]);
}

#[test]
fn fixture_names_are_the_documented_names() {
    let names: Vec<&str> = SeedV2Depth40::<f32>::tensors()
        .iter()
        .map(|t| t.name)
        .collect();
    for n in [
        "stem.conv.weight",
        "stem.conv.bias",
        "stages.0.units.3.bn1.weight",
        "stages.0.units.3.bn1.running_var",
        "stages.0.units.3.conv1.weight",
        "stages.0.units.3.bn_out.bias",
        "transitions.1.conv.weight",
        "head.bn.running_mean",
        "head.fc.weight",
    ] {
        assert!(names.contains(&n), "missing {n}");
    }
    let conv = SeedV2Depth40::<f32>::tensors()
        .iter()
        .find(|t| t.name == "stages.0.units.3.conv1.weight")
        .unwrap();
    assert_eq!(conv.shape, [12, 36, 3, 3]);
}

#[test]
fn an_imagenet_sized_network_runs() {
    let mut m = DenseNet121::<f32>::new(0);
    let x = Array4::<f32>::from_elem((1, 3, 224, 224), 0.1);
    let y = m.forward(x.view(), Mode::Eval).unwrap();
    assert_eq!(y.dim(), (1, 1000));
    assert!(y.iter().all(|v| v.is_finite()));
}

/// The largest difference between the f32 and f64 gradients of one training
/// step (same weights, same input), relative to the largest f64 gradient.
fn f32_gradient_error<A: Model<f32>, B: Model<f64>>(batch: usize) -> f64 {
    let mut a = A::new(5);
    let mut b = B::new(0);
    for (d, &s) in b.params_mut().iter_mut().zip(a.params()) {
        *d = s as f64;
    }
    let [c, h, w] = A::INPUT;
    let x = Array4::<f64>::from_shape_fn((batch, c, h, w), |(n, c, y, x)| {
        ((n * 5 + c * 3 + y * 7 + x) % 13) as f64 / 6.5 - 1.0
    });
    let mut ga = vec![0.0f32; A::PARAMETERS];
    let mut gb = vec![0.0f64; B::PARAMETERS];
    // The loss sum(logits * k) for fixed k: its gradient is k.
    let k = |i: usize| ((i * 7) % 5) as f64 * 0.1 - 0.2;
    a.forward_backward(
        x.mapv(|v| v as f32).view(),
        Mode::Train,
        &mut ga,
        &mut |l| {
            let mut d = l.to_owned();
            d.iter_mut().enumerate().for_each(|(i, v)| *v = k(i) as f32);
            d
        },
    )
    .unwrap();
    b.forward_backward(x.view(), Mode::Train, &mut gb, &mut |l| {
        let mut d = l.to_owned();
        d.iter_mut().enumerate().for_each(|(i, v)| *v = k(i));
        d
    })
    .unwrap();
    let scale = gb.iter().fold(1e-12f64, |m, v| m.max(v.abs()));
    ga.iter()
        .zip(&gb)
        .fold(0.0f64, |m, (&g, &w)| m.max((g as f64 - w).abs()))
        / scale
}

#[test]
fn winograd_f32_matches_f64_in_inference_and_training() {
    // Batch 16: the 3x3 layers at 32 and 16 wide have at least 4096 output
    // positions in all, and with 16 or more input and output channels take
    // the Winograd path (forward, input gradient and weight gradient, all
    // through 4x4 tiles at these widths); batch 3
    // above does not, nor do growth-12 layers.
    f32_eval_matches_f64::<SeedV2SmallBcK16<f32>, SeedV2SmallBcK16<f64>>(16, 2e-5);
    f32_eval_matches_f64::<SeedV2SmallBc<f32>, SeedV2SmallBc<f64>>(16, 2e-5);
    // Batch 1: with two or more threads, a team pass whose Winograd layers
    // split each image's blocks of tile rows over the threads.
    f32_eval_matches_f64::<SeedV2SmallBcK16<f32>, SeedV2SmallBcK16<f64>>(1, 2e-5);
    // Training gradients: no further from the f64 ones than the direct
    // kernels' f32 gradients are (within a factor 2; measured 3.4e-6 against
    // 1.6e-6 through 4x4 tiles, 2.4e-6 with 2x2 weight gradients), and close in absolute
    // terms. Switching the path is process-wide; other tests running
    // meanwhile only see the other (equally checked) kernels.
    sparsenet::runtime::__private::set_winograd(false);
    let direct = f32_gradient_error::<SeedV2SmallBcK16<f32>, SeedV2SmallBcK16<f64>>(16);
    sparsenet::runtime::__private::set_winograd(true);
    let winograd = f32_gradient_error::<SeedV2SmallBcK16<f32>, SeedV2SmallBcK16<f64>>(16);
    eprintln!("f32 gradient error against f64: direct {direct:.2e}, Winograd {winograd:.2e}");
    assert!(
        winograd <= 2.0 * direct + 1e-6 && winograd < 1e-3,
        "Winograd f32 gradients {winograd:e} from f64, direct {direct:e}"
    );
}

/// `Net::summary()`, `Net::tensors()` and `Net::layers()` work without
/// naming the element type (an inherent impl on `Net<f32>`), and say what
/// the trait says for every element type.
#[test]
fn summary_tensors_and_layers_need_no_element_type() {
    use sparsenet::zoo::SeedV2Depth40 as Net;
    assert_eq!(Net::summary(), <Net<f64> as NetworkSpec>::summary());
    assert_eq!(
        Net::tensors().len(),
        <Net<f64> as NetworkSpec>::tensors().len()
    );
    assert_eq!(
        Net::layers().len(),
        <Net<f64> as NetworkSpec>::layers().len()
    );
}

/// A deterministic batch for `N` with values in [-0.4, 0.6).
fn batch<N: NetworkSpec>(n: usize) -> Array4<f32> {
    let [c, h, w] = N::INPUT;
    Array4::from_shape_fn((n, c, h, w), |(b, c, y, x)| {
        ((b * 7 + c * 3 + y * 5 + x) % 11) as f32 / 11.0 - 0.4
    })
}

/// Sets element 0 of every tensor to NaN in turn (the running statistics
/// moved by one training pass first) and checks that inference shows it:
/// before the ReLUs and max-pools kept NaN, a NaN weight anywhere but the
/// classifier gave finite, plausible logits.
fn nan_in_any_tensor_shows_in_the_logits<N: Model<f32>>() {
    let x = batch::<N>(2);
    let mut trained = N::new(1);
    trained.forward(x.view(), Mode::Train).unwrap();
    for t in N::tensors() {
        let mut m = N::new(1);
        m.params_mut().copy_from_slice(trained.params());
        m.state_mut().copy_from_slice(trained.state());
        match t.store {
            Store::Param => m.params_mut()[t.offset] = f32::NAN,
            Store::State => m.state_mut()[t.offset] = f32::NAN,
        }
        let y = m.forward(x.view(), Mode::Eval).unwrap();
        assert!(
            y.iter().any(|v| v.is_nan()),
            "{}: NaN in `{}` gave finite logits {y:?}",
            N::NAME,
            t.name
        );
    }
}

#[test]
fn a_nan_weight_or_statistic_is_never_hidden_by_inference() {
    nan_in_any_tensor_shows_in_the_logits::<SeedV2SmallBc<f32>>(); // seed BC, Winograd sizes
    nan_in_any_tensor_shows_in_the_logits::<PaperSmallBc<f32>>(); // fused inference chain
    nan_in_any_tensor_shows_in_the_logits::<Offsets<f32>>();
    nan_in_any_tensor_shows_in_the_logits::<SmallImagenetStem<f32>>(); // max-pool stem
}

sparsenet! {
    /// The ImageNet stem (conv 7x7 stride 2, max-pool 3x3 stride 2) at a
    /// size the tests can afford.
    struct SmallImagenetStem {
        style: paper, input: [3, 64, 64], classes: 10, units: [2, 2], growth: 8,
        bottleneck: true, aggregation: dense, stem: imagenet(16),
    }
}

#[test]
fn a_non_finite_pixel_in_inference_gives_non_finite_logits_for_its_image_only() {
    let x = batch::<SmallImagenetStem<f32>>(3);
    let mut m = SmallImagenetStem::<f32>::new(5);
    let clean = m.forward(x.view(), Mode::Eval).unwrap();
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut xb = x.clone();
        xb[[1, 2, 40, 17]] = bad;
        let y = m.forward(xb.view(), Mode::Eval).unwrap();
        assert!(
            y.row(1).iter().all(|v| !v.is_finite()),
            "{bad}: {:?}",
            y.row(1)
        );
        // The other images are untouched, to the bit (eval is per image).
        for i in [0, 2] {
            assert_eq!(y.row(i), clean.row(i), "{bad}: image {i}");
        }
    }
}

/// A training-mode pass given a non-finite input is refused before it
/// changes anything: parameters, running statistics, the gradient buffer.
fn non_finite_training_input_is_refused<N: Model<f32>>() {
    let mut m = N::new(2);
    let params = m.params().to_vec();
    let state = m.state().to_vec();
    let [_, h, w] = N::INPUT;
    for (bad, shown) in [
        (f32::NAN, "NaN"),
        (f32::INFINITY, "inf"),
        (f32::NEG_INFINITY, "-inf"),
    ] {
        let mut x = batch::<N>(4);
        x[[2, 0, h - 1, w / 2]] = bad;
        x[[3, 0, 0, 0]] = f32::NAN;
        let want = InputError::NonFinite {
            model: N::NAME,
            image: 2,
            channel: 0,
            row: h - 1,
            column: w / 2,
            value: shown.to_string(),
            others: 1,
        };
        assert_eq!(m.forward(x.view(), Mode::Train).unwrap_err(), want);
        let mut grads = vec![7.0f32; N::PARAMETERS];
        let e = m
            .forward_backward(x.view(), Mode::Train, &mut grads, &mut |l| l.clone())
            .unwrap_err();
        assert_eq!(e, want);
        assert!(e.to_string().contains(&format!(
            "input image 2 of the batch holds {shown} at channel 0, row {}, column {}",
            h - 1,
            w / 2
        )));
        assert!(grads.iter().all(|&g| g == 7.0));
        assert_eq!(m.params(), &params[..]);
        assert_eq!(m.state(), &state[..], "running statistics untouched");
        // Inference takes it (and shows it in that image's logits).
        let y = m.forward(x.view(), Mode::Eval).unwrap();
        assert!(y.row(2).iter().all(|v| !v.is_finite()));
        assert!(y.row(0).iter().all(|v| v.is_finite()));
    }
}

#[test]
fn a_training_pass_refuses_a_non_finite_input_before_touching_any_state() {
    non_finite_training_input_is_refused::<SeedV2SmallBc<f32>>();
    non_finite_training_input_is_refused::<PaperBc<f32>>(); // dropout
    non_finite_training_input_is_refused::<SmallImagenetStem<f32>>();
}

#[test]
fn weights_holding_nan_inf_or_a_negative_variance_are_refused_at_load_and_save() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    let good = Offsets::<f32>::new(4);
    good.save(&path).unwrap();
    let saved = std::fs::read(&path).unwrap();
    let conv = Offsets::<f32>::tensors()
        .iter()
        .filter(|t| t.name.starts_with("stages.1") && t.shape.len() == 4)
        .nth(2)
        .unwrap();
    let var = Offsets::<f32>::tensors()
        .iter()
        .find(|t| t.name.ends_with("running_var"))
        .unwrap();
    let cases: [(&TensorSpec, usize, f32, ValueProblem); 4] = [
        (conv, 5, f32::NAN, ValueProblem::NotFinite),
        (conv, 0, f32::INFINITY, ValueProblem::NotFinite),
        (var, 1, -1e-3, ValueProblem::NegativeVariance),
        (var, 2, f32::NEG_INFINITY, ValueProblem::NotFinite),
    ];
    for (t, at, value, problem) in cases {
        let mut bad = Offsets::<f32>::new(4);
        match t.store {
            Store::Param => bad.params_mut()[t.offset + at] = value,
            Store::State => bad.state_mut()[t.offset + at] = value,
        }
        // Saving is refused, and the file on disk is left as it was.
        let e = bad.save(&path).unwrap_err();
        let WeightsError::BadValue {
            ref name,
            ref index,
            problem: p,
            count,
            saving,
            ..
        } = e
        else {
            panic!("{e}")
        };
        assert_eq!(
            (name.as_str(), p, count, saving),
            (t.name, problem, 1, true),
            "{e}"
        );
        let mut flat = 0;
        for (i, d) in index.iter().zip(t.shape) {
            flat = flat * d + i;
        }
        assert_eq!(flat, at, "{e}");
        assert!(e.to_string().contains("nothing was written"), "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), saved);

        // Such a file made by another tool is refused at load, and the
        // model is left as it was.
        let forged = dir.path().join("forged.safetensors");
        std::fs::write(&forged, forge(&saved, t.name, at, value)).unwrap();
        let mut m = Offsets::<f32>::new(9);
        let before = (m.params().to_vec(), m.state().to_vec());
        let e = m.load(&forged).unwrap_err();
        assert!(
            matches!(e, WeightsError::BadValue { problem: p, saving: false, .. } if p == problem),
            "{e}"
        );
        assert!(
            e.to_string().contains(t.name) && e.to_string().contains("nothing was loaded"),
            "{e}"
        );
        assert_eq!((m.params().to_vec(), m.state().to_vec()), before);
    }
}

/// `bytes` (a safetensors file of f32 tensors) with element `at` of tensor
/// `name` replaced by `value`: a file no model of ours would write.
fn forge(bytes: &[u8], name: &str, at: usize, value: f32) -> Vec<u8> {
    let st = safetensors::SafeTensors::deserialize(bytes).unwrap();
    let view = st.tensor(name).unwrap();
    let start = view.data().as_ptr() as usize - bytes.as_ptr() as usize + 4 * at;
    let mut out = bytes.to_vec();
    out[start..start + 4].copy_from_slice(&value.to_le_bytes());
    out
}

#[test]
fn an_f64_value_too_large_for_f32_is_refused_not_made_infinite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wide.safetensors");
    let mut wide = Offsets::<f64>::new(1);
    wide.params_mut()[3] = 1e39;
    wide.save(&path).unwrap(); // fine in f64
    let mut m = Offsets::<f32>::new(1);
    let e = m.load(&path).unwrap_err();
    assert!(
        matches!(e, WeightsError::BadValue { problem: ValueProblem::TooLargeForF32, value, .. } if value == 1e39),
        "{e}"
    );
    assert!(e.to_string().contains("largest finite f32"), "{e}");
    let mut back = Offsets::<f64>::new(2);
    back.load(&path).unwrap();
    assert_eq!(back.params()[3], 1e39);
}

/// `infer(&self)` is inference without exclusive access: the same logits
/// as `forward(Eval)`, from threads sharing one model, the model unchanged.
#[test]
fn inference_needs_no_exclusive_access_and_threads_can_share_a_model() {
    let mut m = SeedV2SmallBc::<f32>::new(6);
    let x = batch::<SeedV2SmallBc<f32>>(3);
    m.forward(x.view(), Mode::Train).unwrap(); // statistics away from 0/1
    let want = m.forward(x.view(), Mode::Eval).unwrap();
    let (params, state) = (m.params().to_vec(), m.state().to_vec());
    let shared = &m;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..3)
            .map(|_| s.spawn(|| shared.infer(x.view()).unwrap()))
            .collect();
        for h in handles {
            assert_eq!(h.join().unwrap(), want);
        }
    });
    assert_eq!((m.params(), m.state()), (&params[..], &state[..]));
    // Its input check is eval's: the shape is checked, a NaN is not refused.
    let bad = Array4::<f32>::zeros((1, 3, 8, 8));
    assert!(matches!(m.infer(bad.view()), Err(InputError::Shape { .. })));
}
