//! The GPU program on a real GPU (CUDA backend) against the CPU path: the
//! same checks as tests/gpu_emulated.rs, in f32, plus the networks
//! at full size (3x32x32, batch 16) and CUDA graph replay against plain
//! launches. Every test needs an NVIDIA GPU, so they are ignored by default;
//! `scripts/gpu-run.sh` runs them with `--ignored` on the GPU machine.
#![cfg(feature = "cuda")]

mod common;
#[allow(dead_code)]
mod gpu_parity;

use gpu_parity::*;
use sparsenet::prelude::*;
use sparsenet::runtime::gpu::cuda::CudaBackend;
use sparsenet::runtime::gpu::{GpuModel, GpuNetwork, Precision};
use sparsenet::runtime::optim::Sgd;
use sparsenet::runtime::Float;

/// The CUDA backend whatever the element type (it implements `Backend<f32>`
/// only, so only f32 tests compile).
trait OnCuda {
    type B;
}
impl<T> OnCuda for T {
    type B = CudaBackend;
}
type Dev<T> = <T as OnCuda>::B;

fn new_device<T: Float>() -> Dev<T> {
    CudaBackend::new(0).unwrap_or_else(|e| panic!("{e}"))
}

macro_rules! cuda_parity {
    ($($name:ident: $net:ty,)*) => {$(
        #[test]
        #[ignore = "needs an NVIDIA GPU: scripts/gpu-run.sh runs it"]
        fn $name() {
            parity::<f32, $net>(1e-5, 1e-4);
        }
    )*};
}

cuda_parity! {
    seed_2018_02_20_plain: V2D16K6<f32>,
    seed_2018_02_20_bottleneck: V2BcD28K6<f32>,
    seed_2018_01_30: V1B2L5K6C5<f32>,
    paper_dense_imagenet_stem_max_pool: PaperDenseImagenet<f32>,
    paper_exponential_base_3_grayscale: TinySparse<f32>,
}

#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-run.sh runs it"]
fn staged_batches_equal_the_cpu_pipeline_on_the_device() {
    staged_batches_equal_the_cpu_pipeline::<V2D16K6<f32>>();
    staged_batches_equal_the_cpu_pipeline::<TinySparse<f32>>();
}

#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-run.sh runs it"]
fn non_finite_values_are_never_hidden_on_the_device() {
    non_finite_values_are_never_hidden::<V2BcD28K6<f32>>();
    non_finite_values_are_never_hidden::<PaperDenseImagenet<f32>>();
}

/// The networks at full size, batch 16: logits (eval and train),
/// loss, running statistics and one SGD step against the CPU's f32 run;
/// every gradient against the CPU's f64 run, no further from it than twice
/// the CPU's own f32 gradients are (`parity_f32_against_f64` says why:
/// f32 gradients of these networks are only good to a few 1e-2 relative).
macro_rules! cuda_full_size {
    ($($name:ident: $net:ident,)*) => {$(
        #[test]
        #[ignore = "needs an NVIDIA GPU: scripts/gpu-run.sh runs it"]
        fn $name() {
            parity_f32_against_f64::<sparsenet::zoo::$net<f32>, sparsenet::zoo::$net<f64>>(
                16, 2.0, 1e-5, 1e-6,
            );
        }
    )*};
}

cuda_full_size! {
    seed_2018_02_20_depth_40_growth_12: SeedV2Depth40,
    seed_2018_01_30_notebook: SeedV1Notebook,
    sparsenet_bc_100_growth_24: SparseNetBc100,
    sparsenet_bc_100_seed_stem: SeedV2Bc100,
}

#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-run.sh runs it"]
fn fifty_training_steps_track_the_cpu_losses() {
    fifty_steps::<f32, V2BcD28K6<f32>>(1e-5, 5e-2);
    in_precision(Precision::Tf32, || {
        fifty_steps::<f32, V2BcD28K6<f32>>(2e-2, 5e-2)
    });
    in_precision(Precision::Bf16, || {
        fifty_steps::<f32, V2BcD28K6<f32>>(3e-2, 5e-2)
    });
}

/// TF32 convolutions (tensor cores) and bf16 storage against the f64 CPU
/// model: the small networks, then the zoo's at full size (batch 16). Issue
/// 18's bound for TF32: eval logits within 2e-3 of the largest logit; issue
/// 21's for bf16: 2e-2.
macro_rules! cuda_tf32 {
    ($($name:ident: $m32:ty, $m64:ty, $n:expr,)*) => {$(
        #[test]
        #[ignore = "needs an NVIDIA GPU: scripts/gpu-run.sh runs it"]
        fn $name() {
            reduced_against_f64::<$m32, $m64>(Precision::Tf32, $n, 2e-3, Some(2e-3));
            // Issue 21's bound for bf16 activations and gradients.
            reduced_against_f64::<$m32, $m64>(Precision::Bf16, $n, 2e-2, Some(2e-2));
        }
    )*};
}

cuda_tf32! {
    tf32_seed_2018_02_20_plain: V2D16K6<f32>, V2D16K6<f64>, 5,
    tf32_seed_2018_01_30: V1B2L5K6C5<f32>, V1B2L5K6C5<f64>, 5,
    tf32_paper_dense_imagenet_stem: PaperDenseImagenet<f32>, PaperDenseImagenet<f64>, 5,
    tf32_seed_2018_02_20_depth_40_growth_12: sparsenet::zoo::SeedV2Depth40<f32>, sparsenet::zoo::SeedV2Depth40<f64>, 16,
    tf32_seed_2018_01_30_notebook: sparsenet::zoo::SeedV1Notebook<f32>, sparsenet::zoo::SeedV1Notebook<f64>, 16,
    tf32_sparsenet_bc_100_growth_24: sparsenet::zoo::SparseNetBc100<f32>, sparsenet::zoo::SparseNetBc100<f64>, 16,
}

/// Issue 18's training bound for TF32: 200 SGD steps on CIFAR-10 images
/// ($SPARSENET_CIFAR10: the JPEG archive, or the subset of it that
/// scripts/gpu-check.sh carries; 640 training images per class, normalised
/// with their channel statistics, no augmentation, in a fixed shuffled
/// order, batch 64, the same batches in every run) with TF32 convolutions,
/// with bf16 activations and gradients, and with IEEE f32: the loss averaged
/// over each window of 20 steps within 2% (TF32, issue 18) and 3% (bf16,
/// issue 21) of the f32 run's.
#[test]
#[ignore = "needs an NVIDIA GPU and CIFAR-10 ($SPARSENET_CIFAR10): scripts/gpu-run.sh runs it"]
fn tf32_training_tracks_f32_on_cifar10() {
    let path = std::env::var_os("SPARSENET_CIFAR10")
        .expect("set SPARSENET_CIFAR10 to the CIFAR-10 JPEG archive (cifar10-jpeg.tar.gz)");
    let (train, _) =
        sparsenet::runtime::data::load_cifar10(path.as_ref()).unwrap_or_else(|e| panic!("{e}"));
    let data = train.take(6400);
    assert_eq!(data.len, 6400, "640 training images per class");
    tf32_training::<sparsenet::zoo::SeedV2Depth40>(&data);
    tf32_training::<sparsenet::zoo::SparseNetBc100>(&data);
}

fn tf32_training<M: GpuNetwork + Model<f32>>(data: &sparsenet::runtime::data::Dataset) {
    use sparsenet::runtime::ndarray::Array4;
    const BATCH: usize = 64;
    const STEPS: usize = 200;
    const WINDOW: usize = 20;
    let [c, h, w] = M::INPUT;
    assert_eq!([data.channels, data.height, data.width], [c, h, w]);
    // Channel statistics of the images used.
    let mut stats = vec![(0.0f64, 0.0f64); c];
    for i in 0..data.len {
        for (ch, plane) in data.image(i).chunks(h * w).enumerate() {
            for &p in plane {
                let v = p as f64 / 255.0;
                stats[ch].0 += v;
                stats[ch].1 += v * v;
            }
        }
    }
    let count = (data.len * h * w) as f64;
    let norm: Vec<(f32, f32)> = stats
        .iter()
        .map(|&(s, q)| {
            let mean = s / count;
            ((mean) as f32, ((q / count - mean * mean).sqrt()) as f32)
        })
        .collect();
    let batches = data.len / BATCH;
    // `take` keeps the archive's class-by-class order: visit the images in
    // a fixed shuffled order instead (997 is prime to 6,400).
    let at = |b: usize, i: usize| (b * BATCH + i) * 997 % data.len;
    let batch = |b: usize| {
        let x = Array4::from_shape_fn((BATCH, c, h, w), |(i, ch, y, xx)| {
            let p = data.image(at(b, i))[(ch * h + y) * w + xx] as f32 / 255.0;
            (p - norm[ch].0) / norm[ch].1
        });
        let labels: Vec<usize> = (0..BATCH).map(|i| data.label(at(b, i))).collect();
        (x, labels)
    };
    let opt = Sgd {
        momentum: 0.9,
        nesterov: true,
        weight_decay: 5e-4,
    };
    let model = M::new(1);
    let run = |precision: Precision| {
        let mut dev = GpuModel::new(CudaBackend::new(0).unwrap(), &model, BATCH, precision)
            .unwrap_or_else(|e| panic!("{e}"));
        let t = std::time::Instant::now();
        let losses: Vec<f64> = (0..STEPS)
            .map(|s| {
                let (x, labels) = batch(s % batches);
                dev.train_step(x.view(), &labels, &opt, 0.05, 0.0)
                    .unwrap()
                    .loss
            })
            .collect();
        (losses, t.elapsed().as_secs_f64())
    };
    let (f32_losses, f32_s) = run(Precision::F32);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    assert!(
        mean(&f32_losses[STEPS - WINDOW..]) < 0.9 * mean(&f32_losses[..WINDOW]),
        "the loss falls"
    );
    for (precision, bound) in [(Precision::Tf32, 0.02), (Precision::Bf16, 0.03)] {
        let (losses, secs) = run(precision);
        let mut worst = 0.0f64;
        for (a, b) in f32_losses.chunks(WINDOW).zip(losses.chunks(WINDOW)) {
            worst = worst.max((mean(b) - mean(a)).abs() / mean(a));
        }
        eprintln!(
            "{}: {STEPS} steps on CIFAR-10, loss {:.4} -> {:.4} (f32, {f32_s:.1} s) and {:.4} -> {:.4} \
             ({precision}, {secs:.1} s); windows of {WINDOW} steps differ by at most {:.2}%",
            M::NAME,
            mean(&f32_losses[..WINDOW]),
            mean(&f32_losses[STEPS - WINDOW..]),
            mean(&losses[..WINDOW]),
            mean(&losses[STEPS - WINDOW..]),
            100.0 * worst
        );
        assert!(
            worst < bound,
            "{}: {precision} losses are {:.2}% from the f32 run's (bound: {:.0}%)",
            M::NAME,
            100.0 * worst,
            100.0 * bound
        );
    }
}

/// Replaying captured graphs computes exactly what launching the kernels
/// one by one computes.
#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-run.sh runs it"]
fn graph_replay_equals_plain_launches() {
    type M = sparsenet::zoo::SeedV2Depth40;
    let m = M::new(3);
    let (x, labels) = input::<f32, M>(8, 5);
    let opt = Sgd {
        momentum: 0.9,
        nesterov: true,
        weight_decay: 1e-4,
    };
    let run = |graphs: bool| {
        let be = CudaBackend::with_graphs(0, graphs).unwrap();
        let mut dev = GpuModel::new(be, &m, 8, Precision::Tf32).unwrap();
        let mut losses = Vec::new();
        for _ in 0..3 {
            losses.push(
                dev.train_step(x.view(), &labels, &opt, 0.05, 0.0)
                    .unwrap()
                    .loss,
            );
        }
        (
            losses,
            dev.params().unwrap(),
            dev.forward(x.view(), Mode::Eval).unwrap(),
        )
    };
    let (a, b) = (run(true), run(false));
    assert_eq!(a.0, b.0, "losses");
    assert_eq!(a.1, b.1, "parameters");
    assert_eq!(a.2, b.2, "logits");
}

/// Fills the PTX cache (`$SPARSENET_PTX_CACHE`) for every program the GPU
/// run uses, for sm_90; `scripts/gpu-check.sh` runs this here (NVRTC needs
/// no GPU) so the GPU machine starts from cached PTX.
#[test]
#[ignore = "run by scripts/gpu-check.sh to fill the PTX cache"]
fn precompile_ptx_for_sm_90() {
    use sparsenet::runtime::gpu::{cuda::precompile, GpuNetwork, GpuProgram};
    // What scripts/gpu-run.sh runs: these tests and bench_gpu's networks.
    let programs: [&GpuProgram; 9] = [
        &<V2D16K6 as GpuNetwork>::GPU_PROGRAM,
        &<V2BcD28K6 as GpuNetwork>::GPU_PROGRAM,
        &<V1B2L5K6C5 as GpuNetwork>::GPU_PROGRAM,
        &<PaperDenseImagenet as GpuNetwork>::GPU_PROGRAM,
        &<TinySparse as GpuNetwork>::GPU_PROGRAM,
        &<sparsenet::zoo::SeedV2Depth40 as GpuNetwork>::GPU_PROGRAM,
        &<sparsenet::zoo::SeedV1Notebook as GpuNetwork>::GPU_PROGRAM,
        &<sparsenet::zoo::SparseNetBc100 as GpuNetwork>::GPU_PROGRAM,
        &<sparsenet::zoo::SeedV2Bc100 as GpuNetwork>::GPU_PROGRAM,
    ];
    // Every precision: the parity tests run each, the benchmark any.
    let jobs: Vec<(&GpuProgram, Precision)> = programs
        .iter()
        .flat_map(|&p| Precision::ALL.map(|precision| (p, precision)))
        .collect();
    // Two at a time: NVRTC is single-threaded per program.
    std::thread::scope(|s| {
        for chunk in jobs.chunks(jobs.len().div_ceil(2)) {
            s.spawn(move || {
                for &(p, precision) in chunk {
                    let t = std::time::Instant::now();
                    let (path, compiled) =
                        precompile(p, precision, "sm_90", true).unwrap_or_else(|e| panic!("{e}"));
                    eprintln!(
                        "{}: {} ({:.1} s)",
                        p.name,
                        path.display(),
                        t.elapsed().as_secs_f64()
                    );
                    let _ = compiled;
                }
            });
        }
    });
}
