//! The project's measuring tools, not a user library: the binaries in
//! `src/bin/` (`bench_cpu`, `bench_gpu`, `bench_direct`, `step_time`,
//! `compile_bc100`; run one with
//! `cargo run --release -p sparsenet-bench --bin NAME -- ...`), and here what
//! the benchmarks against PyTorch (bench_cpu, bench_gpu) share: the median
//! timer and the file of input and logits the PyTorch scripts check against.

use safetensors::tensor::{Dtype, TensorView};
use sparsenet::runtime::ndarray::{Array2, Array4};
use std::time::Instant;

/// Runs `f` `warmup` times untimed, then `reps` times, and returns the median
/// time in milliseconds (the mean of the middle two for an even count).
pub fn median_ms<E>(
    warmup: usize,
    reps: usize,
    mut f: impl FnMut() -> Result<(), E>,
) -> Result<f64, E> {
    for _ in 0..warmup {
        f()?;
    }
    let mut v = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        f()?;
        v.push(t.elapsed().as_secs_f64() * 1e3);
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Ok(match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => v[n / 2],
        _ => 0.5 * (v[n / 2 - 1] + v[n / 2]),
    })
}

/// Writes `input` and our eval-mode `logits` for it (safetensors, f32).
pub fn write_io(
    path: &std::path::Path,
    x: &Array4<f32>,
    logits: &Array2<f32>,
) -> Result<(), String> {
    let bytes = |a: &[f32]| a.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>();
    let xb = bytes(x.as_slice().ok_or("input not contiguous")?);
    let lb = bytes(
        logits
            .as_standard_layout()
            .as_slice()
            .ok_or("logits not contiguous")?,
    );
    let views = vec![
        (
            "input",
            TensorView::new(Dtype::F32, x.shape().to_vec(), &xb).map_err(|e| e.to_string())?,
        ),
        (
            "logits",
            TensorView::new(Dtype::F32, logits.shape().to_vec(), &lb).map_err(|e| e.to_string())?,
        ),
    ];
    safetensors::serialize_to_file(views, &None, path)
        .map_err(|e| format!("{}: {e}", path.display()))
}
