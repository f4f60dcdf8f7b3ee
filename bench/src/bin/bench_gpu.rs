//! Our half of the GPU benchmark against PyTorch (`scripts/gpu-run.sh` runs
//! both halves on the GPU machine and `scripts/bench_torch_gpu.py` the other).
//!
//! For one network at one batch size: writes the weights, a random input and
//! the CPU path's eval logits (so the PyTorch script can check it computes
//! the same function); checks the GPU path against the CPU path (eval and
//! training logits, loss, every gradient); then times, with CUDA graphs,
//! training steps (upload of the batch, forward, loss, backward, SGD update,
//! loss back to the host), eval-mode inference and batch-1 latency; prints
//! one JSON line with medians, the PTX compile time and device memory.
//!
//! `cargo run --release -p sparsenet-bench --features cuda --bin bench_gpu -- --net bc100 --out DIR`
use clap::{Parser, ValueEnum};
use std::path::PathBuf;

#[derive(Clone, Copy, ValueEnum, Debug)]
enum Net {
    /// The seed's 2018-02-20 version, depth 40, growth 12.
    Seed40,
    /// SparseNet-BC-100, growth 24, seed-style stem of k channels.
    Bc100,
}

#[derive(Parser, Debug)]
#[command(about = "Time sparsenet's GPU path (CUDA) on one network")]
struct Args {
    #[arg(long, value_enum)]
    net: Net,
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Timed training steps (after 3 warm-up steps).
    #[arg(long, default_value_t = 50)]
    steps: usize,
    #[arg(long, default_value_t = 50)]
    evals: usize,
    #[arg(long, default_value_t = 200)]
    latency_reps: usize,
    /// After timing, profile one training step and one inference kernel by
    /// kernel (no graphs; events between kernels) and print the kernels
    /// that take the most time to stderr.
    #[arg(long)]
    profile: bool,
    /// Folder for weights.safetensors and io.safetensors.
    #[arg(long)]
    out: PathBuf,
    /// Arithmetic of the convolutions: tf32 (tensor cores) or f32.
    #[arg(long, default_value = "tf32")]
    precision: sparsenet::runtime::gpu::Precision,
    /// The machine's matrix rate in this precision (TFLOP/s, measured in the
    /// same run): the profile prints each kernel's share of it.
    #[arg(long)]
    ceiling_tflops: Option<f64>,
    /// The machine's copy bandwidth (TB/s, read + written, same run).
    #[arg(long)]
    ceiling_tbps: Option<f64>,
}

#[cfg(feature = "cuda")]
mod bench {
    use super::Args;
    use sparsenet::prelude::*;
    use sparsenet::runtime::gpu::cuda::{CudaBackend, PtxOrigin};
    use sparsenet::runtime::gpu::{GpuModel, GpuNetwork};
    use sparsenet::runtime::loss::softmax_cross_entropy;
    use sparsenet::runtime::optim::Sgd;
    use sparsenet_bench::{median_ms, write_io};
    use std::time::Instant;

    fn rel(a: &[f32], b: &[f32]) -> f64 {
        let d = a
            .iter()
            .zip(b)
            .fold(0.0f64, |m, (x, y)| m.max((x - y).abs() as f64));
        d / b.iter().fold(1e-30f64, |m, x| m.max(x.abs() as f64))
    }

    pub fn run<M: Model<f32> + GpuNetwork + Clone>(args: &Args) -> Result<(), String> {
        let e = |e: &dyn std::fmt::Display| e.to_string();
        std::fs::create_dir_all(&args.out).map_err(|er| format!("{}: {er}", args.out.display()))?;
        let model = M::new(1);
        model
            .save(&args.out.join("weights.safetensors"))
            .map_err(|er| e(&er))?;
        let n = args.batch;
        let [c, h, w] = M::INPUT;
        let mut seed = 7u64;
        let mut next = move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            seed >> 33
        };
        let x =
            Array4::from_shape_simple_fn((n, c, h, w), || (next() % 2000) as f32 / 1000.0 - 1.0);
        let labels: Vec<usize> = (0..n)
            .map(|_| (next() % M::CLASSES as u64) as usize)
            .collect();

        // CPU references: eval logits (for PyTorch too) and training gradients.
        let mut cpu = model.clone();
        let cpu_logits = cpu.forward(x.view(), Mode::Eval).map_err(|er| e(&er))?;
        write_io(&args.out.join("io.safetensors"), &x, &cpu_logits)?;
        let mut cpu_train = model.clone();
        let mut grads = vec![0.0f32; M::PARAMETERS];
        let mut cpu_loss = 0.0f32;
        cpu_train
            .forward_backward(x.view(), Mode::Train, &mut grads, &mut |l| {
                let (v, d, _) = softmax_cross_entropy(l.view(), &labels, 0.0).expect("labels");
                cpu_loss = v;
                d
            })
            .map_err(|er| e(&er))?;

        let t = Instant::now();
        let backend = CudaBackend::new(0).map_err(|er| e(&er))?;
        let device = backend.device_name();
        let (free0, total) = backend.memory().map_err(|er| e(&er))?;
        let mut gpu = GpuModel::new(backend, &model, n, args.precision).map_err(|er| e(&er))?;
        let setup_s = t.elapsed().as_secs_f64();
        let ptx = match gpu.backend().ptx_origin.clone() {
            Some(PtxOrigin::Compiled { seconds }) => format!("compiled in {seconds:.1} s"),
            Some(PtxOrigin::Cache) => "from the cache".to_string(),
            Some(PtxOrigin::Cubin) => "machine code from the cache".to_string(),
            None => "unknown".to_string(),
        };

        // Parity with the CPU path.
        let g_eval = gpu.forward(x.view(), Mode::Eval).map_err(|er| e(&er))?;
        let eval_err = rel(g_eval.as_slice().unwrap(), cpu_logits.as_slice().unwrap());
        let out = gpu
            .forward_backward(x.view(), &labels, 0.0)
            .map_err(|er| e(&er))?;
        let loss_err = (out.loss - cpu_loss as f64).abs() / (cpu_loss as f64).abs();
        let g = gpu.gradients().map_err(|er| e(&er))?;
        let floor = 1e-2 * grads.iter().fold(0.0f32, |m, v| m.max(v.abs())) as f64;
        let mut grad_err = 0.0f64;
        for t in M::tensors()
            .iter()
            .filter(|t| t.store == sparsenet::runtime::Store::Param)
        {
            let r = t.offset..t.offset + t.len();
            let scale = grads[r.clone()]
                .iter()
                .fold(floor, |m, v| m.max(v.abs() as f64));
            let d = g[r.clone()]
                .iter()
                .zip(&grads[r])
                .fold(0.0f64, |m, (a, b)| m.max((a - b).abs() as f64));
            grad_err = grad_err.max(d / scale);
        }

        // Timing.
        let sgd = Sgd {
            momentum: 0.9,
            nesterov: true,
            weight_decay: 1e-4,
        };
        let train_ms = median_ms(3, args.steps, || {
            gpu.train_step(x.view(), &labels, &sgd, 0.01, 0.0)
                .map(|_| ())
                .map_err(|er| e(&er))
        })?;
        let eval_ms = median_ms(3, args.evals, || {
            gpu.forward(x.view(), Mode::Eval)
                .map(|_| ())
                .map_err(|er| e(&er))
        })?;
        let one = x.slice(ndarray::s![0..1, .., .., ..]).to_owned();
        let latency_ms = median_ms(5, args.latency_reps, || {
            gpu.forward(one.view(), Mode::Eval)
                .map(|_| ())
                .map_err(|er| e(&er))
        })?;
        let (free1, _) = gpu.backend().memory().map_err(|er| e(&er))?;
        if args.profile {
            let names = M::GPU_PROGRAM.kernels;
            for what in ["training step", "inference"] {
                gpu.backend_mut().profiling(true);
                const REPS: u32 = 3;
                for _ in 0..REPS {
                    if what == "inference" {
                        gpu.forward(x.view(), Mode::Eval).map_err(|er| e(&er))?;
                    } else {
                        gpu.train_step(x.view(), &labels, &sgd, 0.01, 0.0)
                            .map_err(|er| e(&er))?;
                    }
                }
                let times = gpu.backend().kernel_times();
                gpu.backend_mut().profiling(false);
                let total: f64 = times.iter().map(|t| t.ms).sum::<f64>() / REPS as f64;
                eprintln!(
                    "profile of one {what} ({}, batch {n}; kernel by kernel, no graph): \
                     {total:.3} ms in {} kernels",
                    M::NAME,
                    times.len()
                );
                // Achieved rates from the emitter's per-kernel counts (the
                // convolutions'), against the ceilings when given.
                let costs = M::GPU_PROGRAM.costs;
                let rates = |kernel: usize, ms_per_launch: f64| {
                    let c = costs.get(kernel).copied().unwrap_or_default();
                    if c.flops_per_image == 0 {
                        return String::new();
                    }
                    let secs = ms_per_launch * 1e-3;
                    let tflops = (c.flops_per_image * n as u64) as f64 / secs / 1e12;
                    let tbps = (c.bytes_per_image * n as u64) as f64 / secs / 1e12;
                    let share = |v: f64, ceiling: Option<f64>| {
                        ceiling.map_or(String::new(), |m| format!(" ({:.1}%)", 100.0 * v / m))
                    };
                    format!(
                        "{tflops:>7.2} TFLOP/s{} {:>6.0} GB/s{}",
                        share(tflops, args.ceiling_tflops),
                        tbps * 1e3,
                        share(tbps, args.ceiling_tbps)
                    )
                };
                let mut shown = 0.0;
                for t in times.iter().take(40) {
                    let ms = t.ms / REPS as f64;
                    shown += ms;
                    eprintln!(
                        "  {:>8.3} ms {:>5.1}% {:>3}x  {:<12} {}",
                        ms,
                        100.0 * ms / total,
                        t.launches / REPS,
                        names.get(t.kernel).copied().unwrap_or("?"),
                        rates(t.kernel, t.ms / t.launches.max(1) as f64)
                    );
                }
                eprintln!("  {:>8.3} ms in the other kernels", total - shown);
                // The convolutions together.
                let (mut conv_ms, mut conv_flops) = (0.0, 0.0);
                for t in &times {
                    let c = costs.get(t.kernel).copied().unwrap_or_default();
                    if c.flops_per_image > 0 {
                        conv_ms += t.ms / REPS as f64;
                        conv_flops +=
                            (c.flops_per_image * n as u64) as f64 * (t.launches / REPS) as f64;
                    }
                }
                if conv_ms > 0.0 {
                    let tflops = conv_flops / (conv_ms * 1e-3) / 1e12;
                    eprintln!(
                        "  convolutions: {conv_ms:.3} ms ({:.1}% of the pass), {tflops:.2} TFLOP/s{}",
                        100.0 * conv_ms / total,
                        args.ceiling_tflops
                            .map_or(String::new(), |m| format!(" ({:.1}% of {m} TFLOP/s)", 100.0 * tflops / m))
                    );
                }
            }
        }
        let p = &M::GPU_PROGRAM;
        let planned = GpuModel::<M, CudaBackend>::planned_bytes(n, args.precision);
        let flops = 3.0 * 2.0 * M::MACS_PER_IMAGE as f64 * n as f64;
        println!(
            "{{\"side\": \"sparsenet\", \"net\": \"{}\", \"device\": \"{device}\", \"batch\": {n}, \
             \"precision\": \"{}\", \
             \"params\": {}, \"kernels\": {}, \"ptx\": \"{ptx}\", \"setup_s\": {setup_s:.2}, \
             \"eval_logits_rel_err\": {eval_err:.2e}, \"loss_rel_err\": {loss_err:.2e}, \
             \"grad_rel_err\": {grad_err:.2e}, \"train_step_ms\": {train_ms:.3}, \"eval_ms\": {eval_ms:.3}, \
             \"latency1_ms\": {latency_ms:.4}, \"train_tflops\": {:.3}, \"planned_mib\": {:.1}, \
             \"device_used_mib\": {:.1}, \"device_total_mib\": {:.0}}}",
            M::NAME,
            args.precision,
            M::PARAMETERS,
            p.kernels.len(),
            flops / (train_ms * 1e-3) / 1e12,
            planned as f64 / 1048576.0,
            free0.saturating_sub(free1) as f64 / 1048576.0,
            total as f64 / 1048576.0,
        );
        Ok(())
    }
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    #[cfg(feature = "cuda")]
    let result = match args.net {
        Net::Seed40 => bench::run::<sparsenet::zoo::SeedV2Depth40>(&args),
        Net::Bc100 => bench::run::<sparsenet::zoo::SeedV2Bc100>(&args),
    };
    #[cfg(not(feature = "cuda"))]
    let result: Result<(), String> = Err(format!(
        "bench_gpu ({:?}, batch {}): built without the CUDA backend; \
         run `cargo run --release -p sparsenet-bench --features cuda --bin bench_gpu -- ...`",
        args.net, args.batch
    ));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
