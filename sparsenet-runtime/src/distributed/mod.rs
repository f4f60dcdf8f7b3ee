//! Data-parallel training: one model trained by several processes (ranks),
//! each on its share of every global batch, equal to the one-process run
//! up to where the two must differ (see below).
//!
//! * what the ranks need from a communication layer ([`Collective`]: rank,
//!   size, all-gather) and [`DistError`]. A cluster's own engine (MPI, NCCL)
//!   implements it; [`ThreadGroup`] runs the ranks as threads of one process
//!   (tests, and a reference for the others);
//! * [`DataParallel`], a training [`Engine`](crate::engine::Engine) for the
//!   CPU path over any [`Collective`], each rank on its [`share`] of a batch;
//! * [`SyncBatchNorm`], BatchNorm statistics over all ranks' images;
//! * `MpiCollective` (feature `mpi`): MPI's world communicator (Open MPI or
//!   MPICH through the `mpi` crate), for `mpirun -np N`.
//!
//! What a data-parallel step computes: the trainer on every rank draws the
//! same global batch (the same order and augmentation as the one-process
//! run with the same seed) and hands it to the engine as picks; rank `r` of
//! `R` takes images `[r n / R, (r+1) n / R)` of the `n`, runs the forward
//! and backward pass on them, and the ranks exchange their gradients, loss
//! and counts. Every rank sums the gradients in rank order, in `f64`, each
//! weighted by its share of the batch (`n_r / n`: each rank's loss is its
//! images' mean), so every rank applies the same SGD update to the same
//! parameters. The one thing that differs from the one-process step is
//! BatchNorm's batch statistics: each rank normalises its images with its
//! own images' statistics (PyTorch DDP's default), and the running
//! statistics every rank keeps are rank 0's (DDP broadcasts rank 0's
//! buffers). A step of R ranks is therefore, to the bit, the one-process
//! step that splits the batch into R "ghost batches" this way
//! (`tests/distributed.rs` checks it).

mod collective;
mod engine;
#[cfg(feature = "mpi")]
mod mpi;
mod sync_bn;

pub use collective::{Collective, DistError, SingleProcess, ThreadGroup};
pub use engine::{share, DataParallel};
#[cfg(feature = "mpi")]
pub use mpi::MpiCollective;
pub use sync_bn::{Gather, SyncBatchNorm};

/// Whether this process was started by an MPI launcher (`mpirun`,
/// `mpiexec`, `srun`), from the variables they set; built with or without
/// the `mpi` feature, so that a binary without it can refuse such a start
/// instead of training N independent copies.
pub fn launched_by_mpi() -> bool {
    [
        "OMPI_COMM_WORLD_SIZE",
        "PMI_SIZE",
        "PMIX_RANK",
        "MPI_LOCALNRANKS",
    ]
    .iter()
    .any(|v| std::env::var_os(v).is_some())
}

/// Processes of this job on this machine, as the MPI launcher says (1 when
/// it does not): how many share its cores.
pub fn local_ranks() -> usize {
    ["OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS"]
        .iter()
        .find_map(|v| std::env::var(v).ok()?.parse().ok())
        .unwrap_or(1)
}
