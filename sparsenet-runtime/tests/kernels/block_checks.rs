// The program of `block_checks.cu`, for the tests that compile it (the
// emulator's in this crate, NVRTC's in the root crate's tests/gpu_nvrtc.rs).
// Included with `include!` where `GpuProgram` is in scope.
const BLOCK_CHECKS: GpuProgram = GpuProgram {
    name: "block_checks",
    source: include_str!("block_checks.cu"),
    kernels: &[
        "check_reverse",
        "check_reverse_without_barrier",
        "check_warp",
        "check_mma",
        "check_mma_mismapped",
        "check_mma_tiles",
        "check_deadlock",
        "check_barrier_not_cooperative",
    ],
    costs: &[],
    act_per_image: 0,
    grad_per_image: 0,
    aux_len: 0,
    partials_len: 0,
    forward_eval: &[],
    forward_train: &[],
    backward: &[],
    optimizer: &[],
    stage_input: None,
    unsupported: None,
};
