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
use sparsenet::runtime::gpu::{GpuModel, Precision};
use sparsenet::runtime::train::Sgd;
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
    let programs: [&GpuProgram; 11] = [
        &<V2D16K6 as GpuNetwork>::GPU_PROGRAM,
        &<V2BcD28K6 as GpuNetwork>::GPU_PROGRAM,
        &<V1B2L5K6C5 as GpuNetwork>::GPU_PROGRAM,
        &<PaperDenseImagenet as GpuNetwork>::GPU_PROGRAM,
        &<TinySparse as GpuNetwork>::GPU_PROGRAM,
        &<sparsenet::zoo::SeedV2Depth40 as GpuNetwork>::GPU_PROGRAM,
        &<sparsenet::zoo::SeedV1Notebook as GpuNetwork>::GPU_PROGRAM,
        &<sparsenet::zoo::SparseNetBc100 as GpuNetwork>::GPU_PROGRAM,
        &<sparsenet::zoo::SeedV2Bc100 as GpuNetwork>::GPU_PROGRAM,
        &<sparsenet::zoo::FashionSparseNet as GpuNetwork>::GPU_PROGRAM,
        &<sparsenet::zoo::SparseNet40 as GpuNetwork>::GPU_PROGRAM,
    ];
    // Both precisions: the parity tests run each, the benchmark either.
    let jobs: Vec<(&GpuProgram, Precision)> = programs
        .iter()
        .flat_map(|&p| [(p, Precision::F32), (p, Precision::Tf32)])
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
