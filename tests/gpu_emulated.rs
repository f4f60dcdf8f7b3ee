//! The GPU program of each network (generated CUDA C kernels and launch
//! sequences) against the CPU path, run on the CPU stand-in
//! (`gpu::emulator`): the CUDA source compiled as C++ and executed block by
//! block. What this checks: every kernel's arithmetic, the launch order, the
//! memory plan (arena offsets, gradient liveness, first-writer stores), the
//! BatchNorm folding and running-statistics update, the loss and SGD.
//! What it cannot check: anything that depends on real GPU execution
//! (speed, NVRTC-specific code generation, the CUDA graph); those run in
//! `scripts/gpu-check.sh` on the GPU machine.

mod common;
mod gpu_parity;

use gpu_parity::*;
use sparsenet::prelude::*;
use sparsenet::runtime::gpu::{
    emulator::Emulator, Backend, GpuModel, GpuNetwork, GpuProgram, Precision,
};
use sparsenet::runtime::Float;

type Dev<T> = Emulator<T>;

fn new_device<T: Float>() -> Dev<T> {
    Emulator::new()
}

sparsenet! {
    struct WithDropout { style: paper, input: [3, 8, 8], classes: 4, units: [2, 2], growth: 3, dropout: 0.2 }

    // The networks at full depth and width, on 16x16 input to keep
    // the emulated (scalar, one thread at a time) kernels affordable.
    struct SeedV2Depth40At16 { style: seed_2018_02_20, input: [3, 16, 16], classes: 10, depth: 40, growth: 12 }
    struct SeedV1NotebookAt16 {
        style: seed_2018_01_30, input: [3, 16, 16], classes: 10,
        blocks: 3, units: 12, growth: 24, stem: bn_relu_conv3x3(16),
    }
    struct SparseNetBc100At16 { style: paper, input: [3, 16, 16], classes: 10, depth: 100, growth: 24, bottleneck: true }
}

/// Each network in f32 (what the GPU runs: rounding-level agreement) and
/// in f64 (agreement to ~1e-10: any logic error in a kernel, a launch out of
/// order or an overlap in the memory plan shows up far above that).
macro_rules! parity_tests {
    ($($name:ident: $net:ident,)*) => {$(
        #[test]
        fn $name() {
            parity::<f64, $net<f64>>(1e-10, 1e-8);
            parity::<f32, $net<f32>>(1e-5, 1e-4);
            // The TF32 path's logic (its fragments, exact in the f64
            // build), then its rounding against the bounds.
            in_precision(Precision::Tf32, || parity::<f64, $net<f64>>(1e-10, 1e-8));
            reduced_against_f64::<$net<f32>, $net<f64>>(Precision::Tf32, 5, 2e-3, Some(2e-3));
            // bf16 activations and gradients in memory (issue 21's bounds).
            reduced_against_f64::<$net<f32>, $net<f64>>(Precision::Bf16, 5, 2e-2, Some(2e-2));
        }
    )*};
}

parity_tests! {
    seed_2018_02_20_plain: V2D16K6,
    seed_2018_02_20_bottleneck: V2BcD28K6,
    seed_2018_01_30: V1B2L5K6C5,
    paper_dense_imagenet_stem_max_pool: PaperDenseImagenet,
    paper_exponential_base_3_grayscale: TinySparse,
}

#[test]
fn staged_batches_equal_the_cpu_pipeline_on_the_device() {
    staged_batches_equal_the_cpu_pipeline::<V2D16K6<f32>>();
    staged_batches_equal_the_cpu_pipeline::<TinySparse<f32>>(); // grayscale, 10x10
}

#[test]
fn non_finite_values_are_never_hidden_on_the_device() {
    non_finite_values_are_never_hidden::<V2BcD28K6<f32>>();
    non_finite_values_are_never_hidden::<PaperDenseImagenet<f32>>(); // max-pool stem
}

#[test]
fn dropout_is_refused_with_a_reason() {
    let m = WithDropout::<f32>::new(0);
    let err = GpuModel::new(Emulator::new(), &m, 4, Precision::F32)
        .err()
        .expect("dropout is refused");
    let msg = err.to_string();
    assert!(
        msg.contains("WithDropout") && msg.contains("dropout"),
        "{msg}"
    );
}

#[test]
fn bad_batch_and_labels_are_errors() {
    let m: V2D16K6<f32> = V2D16K6::new(0);
    let mut dev = gpu(&m, 2);
    let (x, labels) = input::<f32, V2D16K6>(3, 1);
    let err = dev.forward(x.view(), Mode::Eval).unwrap_err().to_string();
    assert!(err.contains("1..=2") && err.contains("found 3"), "{err}");
    let (x, _) = input::<f32, V2D16K6>(2, 1);
    let err = dev
        .forward_backward(x.view(), &[0, 10], 0.0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("0..10"), "{err}");
    drop(labels);
}

/// The full-size networks (on 16x16 input, batch 2): in f64 every
/// logit, gradient, running statistic and one SGD step agree to ~1e-10. In
/// f32 the logits agree to rounding; f32 gradients of these deep networks
/// are too ill-conditioned to compare with the CPU's f32 ones, so they are
/// compared with the f64 truth (`parity_f32_against_f64`), as on a GPU.
fn full_size<N32, N64>()
where
    N32: GpuNetwork + Model<f32> + Clone,
    N64: GpuNetwork + Model<f64> + Clone,
    Dev<f64>: Backend<f64>,
    Dev<f32>: Backend<f32>,
{
    parity_with::<f64, N64>(2, 1, 1e-10, 1e-8);
    parity_f32_against_f64::<N32, N64>(2, 2.0, 1e-4, 1e-6);
    // The reduced precisions' bounds at full depth and width (issues 18
    // and 21).
    reduced_against_f64::<N32, N64>(Precision::Tf32, 2, 2e-3, Some(2e-3));
    // bf16: the eval logits only. A training-mode loss at batch 2 is
    // conditioned by BatchNorm over as few as 32 values per channel (4x4 at
    // the last stage), which magnifies the activations' bf16 rounding
    // through 100 layers (3.8e-2 for SparseNet-BC-100 here, 2026-12-05);
    // issue 21 bounds bf16 training by a 200-step run instead
    // (gpu_cuda.rs), and `fifty_training_steps_track_the_cpu_losses` here.
    reduced_against_f64::<N32, N64>(Precision::Bf16, 2, 2e-2, None);
}

#[test]
fn seed_2018_02_20_depth_40_growth_12() {
    full_size::<SeedV2Depth40At16<f32>, SeedV2Depth40At16<f64>>();
}

#[test]
fn seed_2018_01_30_notebook() {
    full_size::<SeedV1NotebookAt16<f32>, SeedV1NotebookAt16<f64>>();
}

#[test]
fn sparsenet_bc_100_growth_24() {
    full_size::<SparseNetBc100At16<f32>, SparseNetBc100At16<f64>>();
}

#[test]
fn fifty_training_steps_track_the_cpu_losses() {
    fifty_steps::<f64, V2BcD28K6<f64>>(1e-12, 1e-12);
    fifty_steps::<f32, V2BcD28K6<f32>>(1e-5, 5e-2);
    // TF32 convolutions track the CPU's f32 losses within the 2%
    // over the first steps, and as loosely as IEEE f32 over all fifty.
    in_precision(Precision::Tf32, || {
        fifty_steps::<f32, V2BcD28K6<f32>>(2e-2, 5e-2)
    });
    // bf16 activations and gradients: within issue 21's 3% of the f32 run.
    in_precision(Precision::Bf16, || {
        fifty_steps::<f32, V2BcD28K6<f32>>(3e-2, 5e-2)
    });
}

/// The per-kernel counts behind `bench_gpu --profile`'s rates: the forward
/// convolutions' FLOPs add up to the network's multiply-adds (2 FLOPs each;
/// the dense head, not a tiled kernel, is the small rest), and each
/// convolution's data and weight gradients count the same FLOPs as its
/// forward pass.
#[test]
fn kernel_costs_add_up_to_the_networks_multiply_adds() {
    fn check(p: &GpuProgram, macs: u64) {
        assert_eq!(
            p.costs.len(),
            p.kernels.len(),
            "{}: a cost per kernel",
            p.name
        );
        let flops = |prefix: &str| -> Vec<(String, u64)> {
            p.kernels
                .iter()
                .zip(p.costs)
                .filter(|(k, _)| k.starts_with(prefix))
                .map(|(k, c)| (k[prefix.len()..].to_string(), c.flops_per_image))
                .collect()
        };
        let fwd = flops("fwd_n");
        let conv: u64 = fwd.iter().map(|(_, f)| f).sum();
        assert!(
            conv <= 2 * macs && conv as f64 >= 2.0 * macs as f64 * (1.0 - 1e-3),
            "{}: forward convolutions {conv} FLOPs against {macs} multiply-adds",
            p.name
        );
        for (node, f) in flops("bin_n").into_iter().chain(flops("bwp_n")) {
            if f > 0 {
                let forward = fwd.iter().find(|(n, _)| *n == node).map(|(_, f)| *f);
                assert_eq!(Some(f), forward, "{}: node {node}", p.name);
            }
        }
        assert!(p
            .costs
            .iter()
            .zip(p.kernels)
            .all(|(c, k)| (c.flops_per_image > 0) == (c.bytes_per_image > 0)
                && (c.flops_per_image == 0
                    || k.starts_with("fwd_n")
                    || k.starts_with("bin_n")
                    || k.starts_with("bwp_n"))));
    }
    type S = sparsenet::zoo::SeedV2Depth40;
    type B = sparsenet::zoo::SparseNetBc100;
    check(&<S as GpuNetwork>::GPU_PROGRAM, S::MACS_PER_IMAGE);
    check(&<B as GpuNetwork>::GPU_PROGRAM, B::MACS_PER_IMAGE);
}

/// The runtime and the program agree on how a batch is staged on the device
/// because the runtime copies nothing from the emitter: no kernel name, no
/// block size. A backend that only records launches (nothing compiled, no
/// memory) sees `stage_batch` launch the program's `augment` kernel, with
/// the block of the program's element-wise launches (its SGD step), over
/// every element of the input batch. (A program that does not fit the
/// runtime is refused by `GpuModel::new`, naming the launch: the unit
/// tests of `gpu/program.rs`.)
#[test]
fn batches_are_staged_with_the_programs_own_launch() {
    use sparsenet::runtime::data::{Augment, Dataset, Transform};
    use sparsenet::runtime::gpu::{GpuError, KernelArgs};
    use sparsenet::runtime::ndarray::Array4;

    /// Records each launch as (kernel name, blocks, threads per block).
    #[derive(Default)]
    struct Recorder {
        kernels: &'static [&'static str],
        launched: Vec<(&'static str, u32, u32)>,
    }
    impl Backend<f32> for Recorder {
        type Buffer = usize;
        fn compile(&mut self, program: &GpuProgram, _: Precision) -> Result<(), GpuError> {
            self.kernels = program.kernels;
            Ok(())
        }
        fn alloc(&mut self, len: usize) -> Result<usize, GpuError> {
            Ok(len)
        }
        fn upload(&mut self, _: &mut usize, _: usize, _: &[f32]) -> Result<(), GpuError> {
            Ok(())
        }
        fn upload_i32(&mut self, _: &mut usize, _: &[i32]) -> Result<(), GpuError> {
            Ok(())
        }
        fn upload_bytes(&mut self, _: &mut usize, _: &[u8]) -> Result<(), GpuError> {
            Ok(())
        }
        fn download(&mut self, _: &usize, dst: &mut [f32]) -> Result<(), GpuError> {
            dst.fill(0.0);
            Ok(())
        }
        fn address(&self, _: &usize) -> u64 {
            0
        }
        fn launch(
            &mut self,
            k: usize,
            blocks: u32,
            threads: u32,
            _: &KernelArgs,
        ) -> Result<(), GpuError> {
            self.launched.push((self.kernels[k], blocks, threads));
            Ok(())
        }
    }

    fn check<M: GpuNetwork + Model<f32>>() {
        let p = &M::GPU_PROGRAM;
        let mut dev = GpuModel::new(Recorder::default(), &M::new(0), 8, Precision::Tf32)
            .unwrap_or_else(|e| panic!("{}: {e}", M::NAME));
        let [c, h, w] = M::INPUT;
        let images = Array4::<u8>::zeros((2, c, h, w));
        let ds = Dataset::from_images(images.view(), &[0, 1], M::CLASSES).unwrap();
        let data = dev.upload_dataset(&ds, &Transform::identity(c)).unwrap();
        let n = 5;
        dev.stage_batch(&data, &vec![(1, Augment::default()); n])
            .unwrap();
        let block = p.optimizer[0].block;
        let blocks = (n * c * h * w).div_ceil(block as usize) as u32;
        assert_eq!(
            dev.backend().launched,
            [("augment", blocks, block)],
            "{}",
            M::NAME
        );
    }
    check::<sparsenet::zoo::FashionSparseNet>(); // 1x28x28
    check::<sparsenet::zoo::SeedV2Depth40>(); // 3x32x32
    check::<TinySparse<f32>>(); // 1x10x10
}

/// `Precision::Bf16` stores the activation and gradient arenas (and d loss /
/// d logits) in 2 bytes per value: the planned device memory of the zoo's
/// networks shrinks by half the arenas, everything else unchanged.
#[test]
fn bf16_halves_the_planned_arenas() {
    fn check<M: GpuNetwork + Model<f32>>() {
        let p = &M::GPU_PROGRAM;
        let n = 64;
        let bytes = |precision| GpuModel::<M, Dev<f32>>::planned_bytes(n, precision);
        let (f32_b, tf32_b, bf16_b) = (
            bytes(Precision::F32),
            bytes(Precision::Tf32),
            bytes(Precision::Bf16),
        );
        let arenas = (p.act_per_image + p.grad_per_image + M::CLASSES) * n * 4;
        eprintln!(
            "{}: planned at batch {n}: f32 and tf32 {:.1} MiB, bf16 {:.1} MiB (arenas {:.1} -> {:.1} MiB)",
            M::NAME,
            tf32_b as f64 / 1048576.0,
            bf16_b as f64 / 1048576.0,
            arenas as f64 / 1048576.0,
            arenas as f64 / 2097152.0
        );
        assert_eq!(f32_b, tf32_b);
        assert_eq!(f32_b - bf16_b, arenas / 2, "{}", M::NAME);
    }
    check::<sparsenet::zoo::SeedV2Depth40>();
    check::<sparsenet::zoo::SparseNetBc100>();
    check::<sparsenet::zoo::SeedV2Bc100>();
}
