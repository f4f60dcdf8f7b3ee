//! What `sparsenet!` generates for the GPU: the program ([`GpuProgram`]:
//! CUDA C source, kernel names, launch tables, device memory sizes), its
//! launches ([`Launch`]), the convolutions' arithmetic ([`Precision`]), and
//! the assembly of the full translation unit from the kernel headers in
//! `gpu/kernels/` and the generated part.

use crate::model::NetworkSpec;

/// The kernel templates every generated program instantiates, one header per
/// op family, in the order [`GpuProgram::full_source`] concatenates them:
/// each builds on those before it (`emulate.cuh` first: the two builds'
/// shims and `real`; `common.cuh`: `Args`, storage, indexing; then the
/// families).
pub(crate) const KERNEL_HEADERS: &[(&str, &str)] = &[
    ("emulate.cuh", include_str!("kernels/emulate.cuh")),
    ("common.cuh", include_str!("kernels/common.cuh")),
    ("augment.cuh", include_str!("kernels/augment.cuh")),
    ("concat.cuh", include_str!("kernels/concat.cuh")),
    ("conv_tiled.cuh", include_str!("kernels/conv_tiled.cuh")),
    ("conv.cuh", include_str!("kernels/conv.cuh")),
    ("batchnorm.cuh", include_str!("kernels/batchnorm.cuh")),
    ("pool.cuh", include_str!("kernels/pool.cuh")),
    ("dense_loss.cuh", include_str!("kernels/dense_loss.cuh")),
    ("sgd.cuh", include_str!("kernels/sgd.cuh")),
];

/// One kernel launch of a sequence: `per_image * n + fixed` work items, in
/// blocks of [`Launch::block`] threads that take [`Launch::per_block`]
/// items each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Launch {
    /// Index into [`GpuProgram::kernels`].
    pub kernel: usize,
    /// Work items per image of the batch.
    pub per_image: usize,
    /// Work items whatever the batch size (e.g. one per channel).
    pub fixed: usize,
    /// Threads per block.
    pub block: u32,
    /// Work items one block takes: [`Launch::block`] for the element-wise
    /// kernels (a thread per item), the tile's rows for the tiled ones.
    pub per_block: usize,
}

impl Launch {
    /// Work items the launch covers for a batch of `n` images:
    /// `per_image * n + fixed`.
    pub fn threads(&self, n: usize) -> usize {
        self.per_image * n + self.fixed
    }

    /// Blocks to launch; kernels loop grid-stride over their items or tiles,
    /// so capping the grid only changes how much work each block takes.
    pub fn blocks(&self, n: usize) -> u32 {
        self.threads(n)
            .div_ceil(self.per_block.max(1))
            .clamp(1, 1 << 20) as u32
    }
}

/// The arithmetic of the convolutions' matrix products on the device, and
/// how activations are stored.
///
/// Accumulation is f32 in all three, parameters (the master weights), their
/// gradients, the SGD velocity, BatchNorm statistics and the logits are f32
/// in all three; BatchNorm, the loss, reductions and the optimiser compute in
/// f32 with f64 partial sums. What differs is how the tensor cores round the
/// products' inputs, and (`Bf16`) the width of the activations and their
/// gradients in device memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Precision {
    /// IEEE single precision: every product an f32 FMA.
    F32,
    /// TF32 tensor cores (`mma.sync` m16n8k8): the convolutions' inputs
    /// rounded to 10 mantissa bits (to nearest, ties away), products
    /// accumulated in f32. cuDNN's default for convolutions; the default
    /// for training on a GPU.
    #[default]
    Tf32,
    /// bfloat16 activations and activation gradients in memory (half the
    /// bytes of the arenas, which dominate a step's memory traffic): each
    /// value rounded to bf16 (to nearest, ties to even) when a kernel stores
    /// it and widened to f32 when one loads it. The convolutions run on the
    /// TF32 tensor cores, which read a bf16 value exactly; everything else
    /// is as in `Tf32`. bf16 keeps f32's exponent range, so no loss scaling
    /// is needed.
    Bf16,
}

impl Precision {
    /// The name `--precision` takes: `f32`, `tf32` or `bf16`.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Tf32 => "tf32",
            Precision::Bf16 => "bf16",
        }
    }

    /// Every precision, in the order `--precision` lists them.
    pub const ALL: [Precision; 3] = [Precision::F32, Precision::Tf32, Precision::Bf16];

    /// Whether the convolutions run on the TF32 tensor cores.
    pub fn tensor_cores(self) -> bool {
        self != Precision::F32
    }

    /// Bytes of one element of the activation and gradient arenas when the
    /// model computes in an element type of `elem_bytes` bytes.
    pub fn stored_bytes(self, elem_bytes: usize) -> usize {
        match self {
            Precision::Bf16 => 2,
            _ => elem_bytes,
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(Precision::F32),
            "tf32" => Ok(Precision::Tf32),
            "bf16" => Ok(Precision::Bf16),
            _ => Err(format!(
                "unknown precision `{s}` (expected `f32`, `tf32` or `bf16`)"
            )),
        }
    }
}

/// A kernel's work per image of the batch, as the emitter counts it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelCost {
    /// Floating-point operations (a multiply-add counts 2).
    pub flops_per_image: u64,
    /// Bytes it must read or write at least (each input and output
    /// activation once; weights and re-reads not counted).
    pub bytes_per_image: u64,
}

impl KernelCost {
    /// A kernel's FLOPs and compulsory bytes per image.
    pub const fn new(flops_per_image: u64, bytes_per_image: u64) -> Self {
        KernelCost {
            flops_per_image,
            bytes_per_image,
        }
    }
}

/// A network's GPU program, generated by `sparsenet!` from its plan.
#[derive(Debug)]
pub struct GpuProgram {
    /// The network's [`NetworkSpec::NAME`]; it names compiled files and
    /// errors.
    pub name: &'static str,
    /// The generated part of the CUDA C source (see [`GpuProgram::full_source`]).
    pub source: &'static str,
    /// Kernel names, indexed by [`Launch::kernel`].
    pub kernels: &'static [&'static str],
    /// What each kernel computes and moves per image, indexed like
    /// [`GpuProgram::kernels`] (empty, or zeros, where not estimated): the
    /// profile's achieved rates.
    pub costs: &'static [KernelCost],
    /// Floats per image of the activation arena.
    pub act_per_image: usize,
    /// Floats per image of the gradient arena (with each node's dz scratch).
    pub grad_per_image: usize,
    /// Floats of batch statistics and folded BatchNorms.
    pub aux_len: usize,
    /// Doubles of partial sums for the split reductions (reused by each).
    pub partials_len: usize,
    /// Inference: BatchNorm folded with the running statistics, from the
    /// input (the first buffer of the activation arena) to the logits.
    pub forward_eval: &'static [Launch],
    /// Training-mode forward: batch statistics (which also update the
    /// running statistics), every activation kept for backward, the logits.
    pub forward_train: &'static [Launch],
    /// Loss and the backward pass, ending with every parameter gradient.
    pub backward: &'static [Launch],
    /// The SGD update of the parameters and velocity from the gradients,
    /// with the hyper-parameters in [`KernelArgs::hyper`](super::KernelArgs::hyper).
    pub optimizer: &'static [Launch],
    /// The launch that builds the input batch and its labels on the device
    /// from a dataset there ([`GpuModel::stage_batch`](super::GpuModel::stage_batch)):
    /// one thread per element of the input, its kernel, block size and item
    /// count as the emitter chose them (the runtime copies none of them).
    /// `None` in a program without that kernel (a hand-written test
    /// program), which [`GpuModel::new`](super::GpuModel::new) refuses.
    pub stage_input: Option<Launch>,
    /// Why this network cannot run on the GPU yet, if it cannot.
    pub unsupported: Option<&'static str>,
}

impl GpuProgram {
    /// The complete CUDA C translation unit for `precision`: the switch
    /// that selects the matrix products' arithmetic, the kernel headers
    /// (`gpu/kernels/`, each after a `// ---- kernels/<name> ----` line so
    /// that a compiler's line numbers can be traced to a header), then the
    /// network's constants and kernels.
    pub fn full_source(&self, precision: Precision) -> String {
        let headers: usize = KERNEL_HEADERS.iter().map(|(_, h)| h.len() + 64).sum();
        let mut s = String::with_capacity(headers + self.source.len() + 192);
        s.push_str(&format!(
            "// sparsenet program `{}`, precision {precision}\n#define SN_TF32 {}\n#define SN_BF16 {}\n",
            self.name,
            u8::from(precision.tensor_cores()),
            u8::from(precision == Precision::Bf16)
        ));
        for (name, text) in KERNEL_HEADERS {
            s.push_str(&format!("// ---- kernels/{name} ----\n"));
            s.push_str(text);
        }
        s.push_str(&format!("// ---- generated: {} ----\n", self.name));
        s.push_str(self.source);
        s
    }

    /// What the runtime relies on in a program, checked before anything is
    /// launched: every launch names one of [`GpuProgram::kernels`] and has
    /// threads, the costs (if any) are one per kernel, and the input-staging
    /// launch is there and covers `input`'s elements (`[C, H, W]`, the
    /// network's [`NetworkSpec::INPUT`]). Returns that launch; the error
    /// says which launch is wrong and how.
    pub(crate) fn check(&self, input: [usize; 3]) -> Result<Launch, String> {
        let kernels = self.kernels.len();
        if !self.costs.is_empty() && self.costs.len() != kernels {
            return Err(format!(
                "{} kernel costs for {kernels} kernels",
                self.costs.len()
            ));
        }
        let sequences = [
            ("forward_eval", self.forward_eval),
            ("forward_train", self.forward_train),
            ("backward", self.backward),
            ("optimizer", self.optimizer),
        ];
        for (what, seq) in sequences {
            for (i, l) in seq.iter().enumerate() {
                check_launch(l, kernels).map_err(|e| format!("launch {i} of `{what}` {e}"))?;
            }
        }
        let stage = self.stage_input.ok_or(
            "the program has no input-staging launch (`stage_input`; generated by an older sparsenet?)",
        )?;
        check_launch(&stage, kernels).map_err(|e| format!("the input-staging launch {e}"))?;
        let [c, h, w] = input;
        if (stage.per_image, stage.fixed) != (c * h * w, 0) {
            return Err(format!(
                "the input-staging launch covers {} items per image and {} more, the input is {c}x{h}x{w} = {} per image",
                stage.per_image,
                stage.fixed,
                c * h * w
            ));
        }
        Ok(stage)
    }
}

/// A launch's kernel index and block shape: a kernel of the `kernels`
/// there are, 1..=1024 threads per block (CUDA's limit), items per block.
fn check_launch(l: &Launch, kernels: usize) -> Result<(), String> {
    if l.kernel >= kernels {
        return Err(format!(
            "names kernel {} of a program of {kernels}",
            l.kernel
        ));
    }
    if !(1..=1024).contains(&l.block) || l.per_block == 0 {
        return Err(format!(
            "has {} threads per block taking {} items (expected 1..=1024 threads, at least 1 item)",
            l.block, l.per_block
        ));
    }
    Ok(())
}

/// Implemented by every `sparsenet!` type: its GPU program.
pub trait GpuNetwork: NetworkSpec {
    /// The program: CUDA C source, kernel names, launch sequences and the
    /// sizes of the device memory, all fixed at compile time.
    const GPU_PROGRAM: GpuProgram;
}

#[cfg(test)]
mod tests {
    use super::*;

    const ELEMENTWISE: Launch = Launch {
        kernel: 1,
        per_image: 3 * 4 * 4,
        fixed: 0,
        block: 256,
        per_block: 256,
    };

    fn program(stage_input: Option<Launch>, optimizer: &'static [Launch]) -> GpuProgram {
        GpuProgram {
            name: "Tiny",
            source: "",
            kernels: &["sgd", "augment"],
            costs: &[],
            act_per_image: 0,
            grad_per_image: 0,
            aux_len: 0,
            partials_len: 0,
            forward_eval: &[],
            forward_train: &[],
            backward: &[],
            optimizer,
            stage_input,
            unsupported: None,
        }
    }

    #[test]
    fn a_program_that_agrees_with_the_runtime_passes() {
        let p = program(Some(ELEMENTWISE), &[]);
        assert_eq!(p.check([3, 4, 4]), Ok(ELEMENTWISE));
    }

    /// The values the emitter chose are carried in the program; where the
    /// runtime depends on them agreeing with the network, a program that
    /// disagrees is refused, naming the launch.
    #[test]
    fn a_program_that_disagrees_with_the_runtime_is_refused_naming_the_launch() {
        let err = program(None, &[]).check([3, 4, 4]).unwrap_err();
        assert!(err.contains("no input-staging launch"), "{err}");

        // Staging sized for another input (3x4x4 = 48 per image).
        let err = program(Some(ELEMENTWISE), &[])
            .check([1, 4, 4])
            .unwrap_err();
        assert!(
            err.contains("covers 48 items per image") && err.contains("1x4x4 = 16"),
            "{err}"
        );

        let wrong_kernel = Launch {
            kernel: 2,
            ..ELEMENTWISE
        };
        let err = program(Some(wrong_kernel), &[])
            .check([3, 4, 4])
            .unwrap_err();
        assert!(
            err.contains("input-staging launch names kernel 2 of a program of 2"),
            "{err}"
        );

        const NO_THREADS: &[Launch] = &[Launch {
            kernel: 0,
            per_image: 0,
            fixed: 10,
            block: 0,
            per_block: 256,
        }];
        let err = program(Some(ELEMENTWISE), NO_THREADS)
            .check([3, 4, 4])
            .unwrap_err();
        assert!(
            err.contains("launch 0 of `optimizer` has 0 threads per block"),
            "{err}"
        );
    }

    /// Every header is in the full source once, in the listed order, after
    /// its marker line, and the generated part comes last.
    #[test]
    fn the_full_source_is_the_headers_in_order_then_the_generated_part() {
        let mut p = program(Some(ELEMENTWISE), &[]);
        p.source = "// the generated part\n";
        let s = p.full_source(Precision::Bf16);
        assert!(s.starts_with(
            "// sparsenet program `Tiny`, precision bf16\n#define SN_TF32 1\n#define SN_BF16 1\n"
        ));
        let mut at = 0;
        for (name, text) in KERNEL_HEADERS {
            assert!(text.ends_with('\n'), "{name} ends its last line");
            let marked = format!("// ---- kernels/{name} ----\n{text}");
            let found = s[at..].find(&marked).unwrap_or_else(|| panic!("{name}"));
            at += found + marked.len();
        }
        assert_eq!(
            &s[at..],
            "// ---- generated: Tiny ----\n// the generated part\n"
        );
        // The two builds' differences are only in their header.
        for (name, text) in KERNEL_HEADERS {
            let target_specific = [
                "#ifdef SPARSENET_EMULATE",
                "#ifndef SPARSENET_EMULATE",
                "asm(",
            ]
            .iter()
            .any(|d| text.contains(d));
            assert_eq!(target_specific, *name == "emulate.cuh", "{name}");
        }
    }
}
