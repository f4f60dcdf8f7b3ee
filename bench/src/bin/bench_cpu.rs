//! Our half of the CPU benchmark against PyTorch (`scripts/bench-cpu.sh`
//! runs both halves and prints the comparison).
//!
//! For one network it writes its weights (safetensors, PyTorch names and
//! layouts), their ONNX export (`model.onnx`, as `train --export-onnx`
//! writes it), a random input and our eval-mode logits for it, so that the
//! PyTorch and onnxruntime scripts can check they compute the same
//! function; then it times
//! training steps (forward, backward, SGD update), eval-mode inference and
//! batch-1 latency, and prints one JSON line with medians, the process's
//! peak resident memory after the training steps and the instruction set
//! the kernels ran on (`SPARSENET_ISA` forces one).
//!
//! `cargo run --release -p sparsenet-bench --bin bench_cpu -- --net seed40 --out DIR`
use clap::{Parser, ValueEnum};
use sparsenet::prelude::*;
use sparsenet::runtime::loss::softmax_cross_entropy;
use sparsenet::runtime::optim::Sgd;
use sparsenet_bench::{median_ms, write_io};
use std::path::PathBuf;

use sparsenet::zoo::{SeedV2Bc100, SeedV2Depth40};

#[derive(Clone, Copy, ValueEnum)]
enum Net {
    Seed40,
    Bc100,
}

#[derive(Parser)]
#[command(about = "Times one network's CPU training step, inference and batch-1 latency")]
struct Args {
    #[arg(long, value_enum)]
    net: Net,
    /// Folder for weights.safetensors and io.safetensors (input and our logits).
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Timed training steps (after 2 warm-up steps); the median is reported.
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Timed inference batches (after 2 warm-up batches).
    #[arg(long, default_value_t = 10)]
    evals: usize,
    /// Timed batch-1 forward passes (after 5 warm-up passes).
    #[arg(long, default_value_t = 50)]
    latency_reps: usize,
}

/// Peak resident set size of this process so far, in MiB (Linux's VmHWM).
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// A reproducible input in [-1, 1) and labels (SplitMix64; no RNG state shared
/// with the model).
fn input(batch: usize, shape: [usize; 3], seed: u64) -> (Array4<f32>, Vec<usize>) {
    let mut s = seed;
    let mut next = move || {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let [c, h, w] = shape;
    let x = Array4::from_shape_simple_fn((batch, c, h, w), || {
        (next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    });
    let labels = (0..batch).map(|_| (next() % 10) as usize).collect();
    (x, labels)
}

fn run<M: Model<f32>>(args: &Args) -> Result<(), String> {
    std::fs::create_dir_all(&args.out).map_err(|e| format!("{}: {e}", args.out.display()))?;
    let mut model = M::new(1);
    // Non-trivial BN running statistics, so the parity check covers them.
    for t in M::tensors() {
        if t.name.ends_with("running_mean") || t.name.ends_with("running_var") {
            let state = model.state_mut();
            for (i, v) in state[t.offset..t.offset + t.len()].iter_mut().enumerate() {
                let u = ((i * 7919 + t.offset) % 97) as f32 / 97.0;
                *v = if t.name.ends_with("mean") {
                    0.2 * (u - 0.5)
                } else {
                    0.5 + u
                };
            }
        }
    }
    model
        .save(&args.out.join("weights.safetensors"))
        .map_err(|e| e.to_string())?;
    sparsenet::runtime::onnx::save_onnx(&model, &args.out.join("model.onnx"))
        .map_err(|e| e.to_string())?;
    let (x, labels) = input(args.batch, M::INPUT, 7);
    let logits = model
        .forward(x.view(), Mode::Eval)
        .map_err(|e| e.to_string())?;
    write_io(&args.out.join("io.safetensors"), &x, &logits)?;

    // Training steps: forward and backward in training mode, loss, SGD update.
    let sgd = Sgd {
        momentum: 0.9,
        nesterov: true,
        weight_decay: 1e-4,
    };
    let mut opt = sgd.init::<f32>(M::PARAMETERS);
    let mut grads = vec![0.0f32; M::PARAMETERS];
    let mut loss = 0.0f32;
    let train_ms = median_ms(2, args.steps, || {
        model
            .forward_backward(x.view(), Mode::Train, &mut grads, &mut |l| {
                let (v, d, _) =
                    softmax_cross_entropy(l.view(), &labels, 0.0).expect("labels match the batch");
                loss = v;
                d
            })
            .map_err(|e| e.to_string())?;
        sgd.step(&mut opt, model.params_mut(), &grads, 0.01);
        Ok::<(), String>(())
    })?;
    let peak_train = peak_rss_mib();

    let mut infer = |input: &Array4<f32>| {
        std::hint::black_box(
            model
                .forward(input.view(), Mode::Eval)
                .map_err(|e| e.to_string())?,
        );
        Ok::<(), String>(())
    };
    let eval_ms = median_ms(2, args.evals, || infer(&x))?;
    let one = x.slice(ndarray::s![0..1, .., .., ..]).to_owned();
    let latency_ms = median_ms(5, args.latency_reps, || infer(&one))?;
    println!(
        "{{\"side\": \"sparsenet\", \"net\": \"{}\", \"params\": {}, \"macs_per_image\": {}, \"batch\": {}, \
         \"threads\": {}, \"train_step_ms\": {:.3}, \"eval_ms\": {:.3}, \"latency1_ms\": {:.4}, \
         \"peak_rss_train_mib\": {:.1}, \"peak_rss_mib\": {:.1}, \"last_loss\": {}, \"isa\": \"{}\"}}",
        M::NAME,
        M::PARAMETERS,
        M::MACS_PER_IMAGE,
        args.batch,
        rayon::current_num_threads(),
        train_ms,
        eval_ms,
        latency_ms,
        peak_train,
        peak_rss_mib(),
        loss,
        sparsenet::runtime::cpu::isa()
    );
    Ok(())
}

fn main() {
    let args = Args::parse();
    let r = match args.net {
        Net::Seed40 => run::<SeedV2Depth40>(&args),
        Net::Bc100 => run::<SeedV2Bc100>(&args),
    };
    if let Err(e) = r {
        eprintln!("bench_cpu: {e}");
        std::process::exit(1);
    }
}
