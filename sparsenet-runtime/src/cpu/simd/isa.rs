//! Which instruction set the CPU kernels run on: detected once, or forced
//! with `SPARSENET_ISA` or [`set_active`].

use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering};

/// An instruction set the CPU kernels can run on.
///
/// The vector kernels are one width-generic source ([`crate::cpu::simd`])
/// instantiated per set; every data layout they use is the same for all of
/// them (positions in groups of 8), so that switching sets changes the
/// speed and, where a reduction's order depends on the vector width, the
/// rounding, never the layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Isa {
    /// No vector kernels: im2col + GEMM for the convolutions, the
    /// element-wise loops as the baseline target compiles them (what a CPU
    /// without AVX2 or NEON gets).
    Scalar = 1,
    /// The generic kernels over plain arrays of 4 lanes: no intrinsics, runs
    /// on every CPU. It checks the generic core at NEON's width on a machine
    /// without NEON.
    Portable4 = 2,
    /// The generic kernels over arrays of 8 lanes (AVX2's width; its results
    /// equal AVX2's to the bit, which checks the arrays' model of the
    /// instructions).
    Portable8 = 3,
    /// The generic kernels over arrays of 16 lanes: AVX-512's width, and its
    /// tile shapes, on a machine without AVX-512.
    Portable16 = 4,
    /// x86-64-v3: AVX2 and FMA, 256-bit vectors, 16 registers.
    Avx2 = 5,
    /// x86-64-v4: AVX-512 F, VL and BW (with AVX2 and FMA), 512-bit vectors,
    /// 32 registers.
    Avx512 = 6,
    /// AArch64 Advanced SIMD: 128-bit vectors, 32 registers.
    Neon = 7,
}

impl Isa {
    /// Every set, narrowest first.
    pub const ALL: [Isa; 7] = [
        Isa::Scalar,
        Isa::Portable4,
        Isa::Portable8,
        Isa::Portable16,
        Isa::Avx2,
        Isa::Avx512,
        Isa::Neon,
    ];

    /// The name `SPARSENET_ISA` takes.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Portable4 => "portable4",
            Isa::Portable8 => "portable8",
            Isa::Portable16 => "portable16",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Neon => "neon",
        }
    }

    /// f32 lanes of the set's widest vector (1 for `Scalar`).
    pub fn lanes(self) -> usize {
        match self {
            Isa::Scalar => 1,
            Isa::Portable4 | Isa::Neon => 4,
            Isa::Portable8 | Isa::Avx2 => 8,
            Isa::Portable16 | Isa::Avx512 => 16,
        }
    }

    /// Whether the direct and Winograd convolution kernels run on this set
    /// (every set but `Scalar`).
    pub fn has_kernels(self) -> bool {
        self != Isa::Scalar
    }

    /// Why this CPU cannot run the set, or `None` when it can.
    pub fn unavailable_because(self) -> Option<&'static str> {
        match self {
            Isa::Scalar | Isa::Portable4 | Isa::Portable8 | Isa::Portable16 => None,
            Isa::Avx2 => (!cpu().avx2).then_some(if cfg!(target_arch = "x86_64") {
                "this CPU lacks AVX2 or FMA"
            } else {
                "not an x86-64 CPU"
            }),
            Isa::Avx512 => (!cpu().avx512).then_some(if cfg!(target_arch = "x86_64") {
                "this CPU lacks AVX-512 F, VL or BW"
            } else {
                "not an x86-64 CPU"
            }),
            Isa::Neon => (!cpu().neon).then_some("not an AArch64 CPU"),
        }
    }

    /// Whether this CPU can run the set.
    pub fn available(self) -> bool {
        self.unavailable_because().is_none()
    }

    /// The widest set this CPU runs: AVX-512, else AVX2, else NEON, else
    /// scalar.
    pub fn best() -> Isa {
        let c = cpu();
        if c.avx512 {
            Isa::Avx512
        } else if c.avx2 {
            Isa::Avx2
        } else if c.neon {
            Isa::Neon
        } else {
            Isa::Scalar
        }
    }

    fn from_u8(v: u8) -> Option<Isa> {
        Isa::ALL.into_iter().find(|i| *i as u8 == v)
    }
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Isa {
    type Err = IsaError;

    fn from_str(s: &str) -> Result<Isa, IsaError> {
        Isa::ALL
            .into_iter()
            .find(|i| i.name() == s.trim().to_ascii_lowercase())
            .ok_or_else(|| IsaError::Unknown(s.to_string()))
    }
}

/// Why an instruction set cannot be chosen.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IsaError {
    /// A name that is no instruction set's.
    #[error("unknown instruction set {0:?} (expected one of scalar, portable4, portable8, portable16, avx2, avx512, neon)")]
    Unknown(String),
    /// A set this CPU cannot run.
    #[error("instruction set {isa} cannot run here: {why}")]
    Unavailable {
        /// The set asked for.
        isa: Isa,
        /// What the CPU lacks.
        why: &'static str,
    },
}

/// What the CPU has, detected once.
struct Cpu {
    avx2: bool,
    avx512: bool,
    neon: bool,
}

fn cpu() -> &'static Cpu {
    static CPU: std::sync::OnceLock<Cpu> = std::sync::OnceLock::new();
    CPU.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
            let avx512 = avx2
                && is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx512bw");
            Cpu {
                avx2,
                avx512,
                neon: false,
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            Cpu {
                avx2: false,
                avx512: false,
                neon: std::arch::is_aarch64_feature_detected!("neon"),
            }
        }
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        {
            Cpu {
                avx2: false,
                avx512: false,
                neon: false,
            }
        }
    })
}

const UNSET: u8 = 0;
static ACTIVE: AtomicU8 = AtomicU8::new(UNSET);

/// The set the kernels run on now: as last [`set_active`], else
/// `SPARSENET_ISA`, else [`Isa::best`]. Read at every kernel call, so a
/// change takes effect from the next call (no layout depends on it).
///
/// # Panics
/// When `SPARSENET_ISA` names an unknown set or one this CPU cannot run: a
/// run asked to measure or test one set must not silently run another.
#[inline]
pub fn active() -> Isa {
    match Isa::from_u8(ACTIVE.load(Ordering::Relaxed)) {
        Some(isa) => isa,
        None => {
            let isa = match std::env::var("SPARSENET_ISA") {
                Ok(v) if !v.trim().is_empty() => match v.parse::<Isa>().and_then(check) {
                    Ok(isa) => isa,
                    Err(e) => panic!("SPARSENET_ISA: {e}"),
                },
                _ => Isa::best(),
            };
            // A concurrent `set_active` wins over the environment.
            let _ = ACTIVE.compare_exchange(UNSET, isa as u8, Ordering::Relaxed, Ordering::Relaxed);
            Isa::from_u8(ACTIVE.load(Ordering::Relaxed)).expect("set above")
        }
    }
}

fn check(isa: Isa) -> Result<Isa, IsaError> {
    match isa.unavailable_because() {
        None => Ok(isa),
        Some(why) => Err(IsaError::Unavailable { isa, why }),
    }
}

/// Makes the kernels run on `isa` from the next call on, for the whole
/// process (tests and measurements force a narrower set with it).
pub fn set_active(isa: Isa) -> Result<(), IsaError> {
    check(isa)?;
    ACTIVE.store(isa as u8, Ordering::Relaxed);
    Ok(())
}
