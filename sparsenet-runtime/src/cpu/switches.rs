//! Process-wide switches of the CPU backend that measurements and tests
//! flip (the A/B runs of `docs/benchmarks.md`, the soak check). Re-exported
//! through `__private` only: they are not part of the API.

/// Whether the 3x3 convolutions may take the Winograd path (default on;
/// the environment variable `SPARSENET_WINOGRAD=0` switches it off).
pub fn winograd_enabled() -> bool {
    super::conv::winograd::enabled()
}

/// Switches the Winograd convolutions on or off for the whole process (to
/// measure what they gain; results differ by rounding only).
pub fn set_winograd(on: bool) {
    super::conv::winograd::set_enabled(on)
}

/// Switches the F(4x4, 3x3) Winograd tiles on or off for the whole process;
/// off keeps F(2x2, 3x3) everywhere (`SPARSENET_WINOGRAD=2` does the same).
pub fn set_large_winograd_tiles(on: bool) {
    super::conv::winograd::set_large_tiles(on)
}

/// Bytes the CPU backend keeps for reuse across passes (every thread's
/// buffer store together). Flat over a steady run once its first steps and
/// evaluation are done: a long run's memory check.
pub fn kept_buffer_bytes() -> usize {
    super::parallel::scratch::kept_bytes()
}
