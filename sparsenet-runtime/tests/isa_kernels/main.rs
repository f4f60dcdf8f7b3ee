//! The CPU kernel checks, run on every instruction set (issues 28 and 32).
//!
//! Each check is one trial per set, named `SET::check`: `avx512`, `avx2`,
//! `neon` where this CPU has them, and the portable sets (`portable16`,
//! `portable8`, `portable4`: the same generic kernels over plain arrays, at
//! AVX-512's, AVX2's and NEON's widths and tile shapes) everywhere; `scalar`
//! (no vector kernels) for the checks through the layers' full glue. A set
//! this CPU lacks is listed as ignored, with the reason in brackets, and
//! never passes silently (`--include-ignored` runs it, and it fails saying
//! why it cannot run). Winograd is switched on whatever
//! `SPARSENET_WINOGRAD` says.
//!
//! The instruction set is process-wide (`cpu::set_isa`), so the trials run
//! one after another unless `--test-threads` says otherwise.
//!
//! `cargo test --release -p sparsenet-runtime --test isa_kernels [-- FILTER]`

mod bitwise;
mod direct;
mod layers;
mod pointwise;
mod winograd;

use libtest_mimic::{Arguments, Failed, Trial};
use sparsenet_runtime::cpu::{self, Isa};

/// A check: its name, whether it needs the vector kernels (else it also
/// runs on `scalar`), and the function, which panics on a failure.
type Check = (&'static str, bool, fn());

const CHECKS: &[Check] = &[
    (
        "direct::forward_matches_the_definition",
        true,
        direct::forward_matches_the_definition,
    ),
    (
        "direct::input_gradient_is_the_adjoint_of_forward",
        true,
        direct::input_gradient_is_the_adjoint_of_forward,
    ),
    (
        "direct::weight_gradient_matches_the_definition",
        true,
        direct::weight_gradient_matches_the_definition,
    ),
    (
        "pointwise::transpose_matches_its_definition",
        true,
        pointwise::transpose_matches_its_definition,
    ),
    (
        "pointwise::weight_gradient_matches_the_definition",
        true,
        pointwise::weight_gradient_matches_the_definition,
    ),
    (
        "winograd::winograd_matches_the_definition",
        true,
        winograd::winograd_matches_the_definition,
    ),
    (
        "winograd::weight_gradient_matches_the_definition",
        true,
        winograd::weight_gradient_matches_the_definition,
    ),
    (
        "winograd::other_geometries_take_the_direct_kernel",
        true,
        winograd::other_geometries_take_the_direct_kernel,
    ),
    (
        "layers::direct_f32_convolution_matches_the_general_path",
        false,
        layers::direct_f32_convolution_matches_the_general_path,
    ),
    (
        "layers::conv_chain_matches_the_steps_one_after_the_other",
        false,
        layers::conv_chain_matches_the_steps_one_after_the_other,
    ),
    (
        "layers::pointwise_into_stores_inside_the_zero_border",
        true,
        layers::pointwise_into_stores_inside_the_zero_border,
    ),
    (
        "bitwise::direct_kernels_equal_portable8",
        true,
        bitwise::direct_kernels_equal_portable8,
    ),
    (
        "bitwise::winograd_equals_portable8",
        true,
        bitwise::winograd_equals_portable8,
    ),
    (
        "bitwise::layers_equal_portable8",
        true,
        bitwise::layers_equal_portable8,
    ),
    (
        "bitwise::batch1_splits_equal_one_image_per_thread",
        true,
        bitwise::batch1_splits_equal_one_image_per_thread,
    ),
];

/// The sets, widest hardware first.
const SETS: [Isa; 7] = [
    Isa::Avx512,
    Isa::Avx2,
    Isa::Neon,
    Isa::Portable16,
    Isa::Portable8,
    Isa::Portable4,
    Isa::Scalar,
];

fn main() {
    let mut args = Arguments::from_args();
    // One set at a time: the set is process-wide.
    args.test_threads.get_or_insert(1);
    sparsenet_runtime::__private::set_winograd(true);
    let mut trials = Vec::new();
    for isa in SETS {
        for &(name, kernels, check) in CHECKS {
            if kernels && !isa.has_kernels() {
                continue;
            }
            let trial = Trial::test(format!("{isa}::{name}"), move || {
                cpu::set_isa(isa).map_err(|e| Failed::from(e.to_string()))?;
                check();
                Ok(())
            });
            trials.push(match isa.unavailable_because() {
                Some(why) => trial
                    .with_ignored_flag(true)
                    .with_kind(format!("skipped: {why}")),
                None => trial,
            });
        }
    }
    libtest_mimic::run(&args, trials).exit();
}
