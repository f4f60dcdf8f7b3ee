//! Every generated GPU program compiles with NVRTC (CUDA 13.0) for Hopper
//! (`sm_90`), on a machine without a GPU: a kernel that does not compile
//! fails here, not on the GPU machine. Needs the `cuda` feature and
//! libnvrtc on `LD_LIBRARY_PATH` (`.ci/run` installs it from PyPI).
#![cfg(feature = "cuda")]

use sparsenet::prelude::*;
use sparsenet::runtime::gpu::cuda::{compile_cubin, compile_ptx};
use sparsenet::runtime::gpu::{GpuNetwork, GpuProgram, Precision};
use sparsenet::zoo::*;

sparsenet! {
    struct PaperDenseImagenet {
        style: paper, input: [2, 15, 13], classes: 3, units: [2, 3], growth: [3, 4],
        bottleneck: true, aggregation: dense, stem: imagenet(4),
    }
    struct Offsets { classes: 10, input: [3, 16, 16], units: [5, 5], growth: 4, aggregation: offsets(1, 3) }
}

// The emulator's block checks (their CUDA source and kernel names).
include!("../sparsenet-runtime/tests/kernels/block_checks.rs");

fn check(p: &GpuProgram, precision: Precision) {
    let t = std::time::Instant::now();
    let ptx = compile_ptx(p, precision, "sm_90").unwrap_or_else(|e| panic!("{e}"));
    for k in p.kernels {
        assert!(
            ptx.contains(&format!(".entry {k}(")),
            "{}: kernel {k} missing from the PTX",
            p.name
        );
    }
    eprintln!(
        "{} ({precision}): {} kernels, {} KiB of CUDA C -> {} KiB of PTX in {:.1} s",
        p.name,
        p.kernels.len(),
        p.full_source(precision).len() / 1024,
        ptx.len() / 1024,
        t.elapsed().as_secs_f64()
    );
}

#[test]
fn zoo_programs_compile_for_sm_90() {
    // In TF32, the default: the precisions differ only in the tiled GEMMs'
    // inner step and (bf16) the arenas' loads and stores, which the two
    // small networks below compile all three ways.
    for p in [
        &<FashionSparseNet as GpuNetwork>::GPU_PROGRAM,
        &<SeedV2Depth40 as GpuNetwork>::GPU_PROGRAM,
        &<SeedV1Notebook as GpuNetwork>::GPU_PROGRAM,
        &<SparseNetBc100 as GpuNetwork>::GPU_PROGRAM,
    ] {
        check(p, Precision::Tf32);
    }
}

#[test]
fn imagenet_stem_dense_and_explicit_offsets_compile_for_sm_90() {
    for precision in Precision::ALL {
        check(&<PaperDenseImagenet as GpuNetwork>::GPU_PROGRAM, precision);
        check(&<Offsets as GpuNetwork>::GPU_PROGRAM, precision);
    }
}

/// The machine code `scripts/gpu-check.sh` caches so that a GPU machine
/// skips the driver's PTX compilation: an sm_90 ELF image naming every
/// kernel.
#[test]
fn a_program_compiles_to_sm_90_machine_code() {
    let p = &<PaperDenseImagenet as GpuNetwork>::GPU_PROGRAM;
    let bin = compile_cubin(p, Precision::Tf32, "sm_90").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(&bin[..4], b"\x7fELF", "a cubin is an ELF image");
    for k in p.kernels {
        assert!(
            bin.windows(k.len() + 1)
                .any(|w| &w[..k.len()] == k.as_bytes() && w[k.len()] == 0),
            "{}: kernel {k} missing from the cubin",
            p.name
        );
    }
    let err = compile_cubin(p, Precision::Tf32, "compute_90")
        .unwrap_err()
        .to_string();
    assert!(err.contains("no machine code"), "{err}");
}

#[test]
fn a_kernel_that_does_not_compile_is_an_error_naming_the_network() {
    const BROKEN: GpuProgram = GpuProgram {
        name: "Broken",
        source: "SN_KERNEL(k) { this_is_not_cuda(a); }\nSN_EMU(k)\n",
        kernels: &["k"],
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
    for err in [
        compile_ptx(&BROKEN, Precision::F32, "sm_90")
            .unwrap_err()
            .to_string(),
        compile_cubin(&BROKEN, Precision::F32, "sm_90")
            .unwrap_err()
            .to_string(),
    ] {
        assert!(
            err.contains("Broken") && err.contains("this_is_not_cuda"),
            "{err}"
        );
    }
}

/// The emulator's block checks (shared memory, barriers, warp shuffles and
/// votes, `mma.sync` m16n8k8 TF32) are CUDA as NVRTC and ptxas take it: the
/// tensor-core instruction and the TF32 conversion assemble to sm_90
/// machine code, so what the emulator proves is what the device runs.
#[test]
fn the_emulators_block_checks_compile_to_sm_90_machine_code() {
    const CHECKS: GpuProgram = BLOCK_CHECKS;
    check(&CHECKS, Precision::Tf32);
    let ptx = compile_ptx(&CHECKS, Precision::Tf32, "sm_90").unwrap();
    assert!(ptx.contains("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32"));
    assert!(ptx.contains("cvt.rna.tf32.f32"));
    assert!(ptx.contains("bar.sync"));
    assert!(ptx.contains("shfl.sync"));
    let bin = compile_cubin(&CHECKS, Precision::Tf32, "sm_90").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(&bin[..4], b"\x7fELF");
}
