//! MPI as the ranks' communication layer (feature `mpi`): Open MPI or MPICH,
//! through the `mpi` crate. `mpirun -np N` starts the processes; each
//! creates one [`MpiCollective`].

use std::time::{Duration, Instant};

use mpi::topology::SimpleCommunicator;
use mpi::traits::*;

use super::collective::{Collective, DistError};

/// The world communicator of an MPI job. Collectives are non-blocking
/// underneath and polled, so that one that does not complete within the
/// timeout (a rank hangs) ends the whole job with a message instead of
/// waiting forever; a rank that dies is reported by the launcher
/// (`mpirun` stops the others).
pub struct MpiCollective {
    world: SimpleCommunicator,
    timeout: Duration,
    // Finalises MPI when dropped; last, so the communicator goes first.
    _universe: mpi::environment::Universe,
}

impl MpiCollective {
    /// Initialises MPI (once per process) with collectives timing out after
    /// `timeout`.
    pub fn init(timeout: Duration) -> Result<Self, DistError> {
        let universe = mpi::initialize().ok_or_else(|| DistError::Backend {
            rank: 0,
            message: "MPI is already initialised in this process".into(),
        })?;
        Ok(MpiCollective {
            world: universe.world(),
            timeout,
            _universe: universe,
        })
    }
}

impl Collective for MpiCollective {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    fn size(&self) -> usize {
        self.world.size() as usize
    }

    fn all_gather(&mut self, local: &[f64], out: &mut [f64]) -> Result<(), DistError> {
        let (rank, size) = (self.rank(), self.size());
        if out.len() != size * local.len() {
            return Err(DistError::Backend {
                rank,
                message: format!(
                    "all-gather: an output of {} values for {size} ranks of {}",
                    out.len(),
                    local.len()
                ),
            });
        }
        let start = Instant::now();
        let deadline = start + self.timeout;
        let world = &self.world;
        mpi::request::scope(|scope| {
            let mut request = world.immediate_all_gather_into(scope, local, out);
            loop {
                match request.test() {
                    Ok(_) => return,
                    Err(pending) => request = pending,
                }
                if Instant::now() > deadline {
                    // A collective cannot be cancelled: end the job, naming
                    // what waited (the launcher stops the other ranks).
                    eprintln!(
                        "sparsenet rank {rank}: an all-gather did not complete within {} s (a rank died or hangs); aborting the MPI job",
                        self.timeout.as_secs()
                    );
                    world.abort(3);
                }
                // Synchronised BatchNorm exchanges a few hundred bytes
                // dozens of times a step: yield (keeping the core) for the
                // first 10 ms of a wait, sleep only in a long one.
                if start.elapsed() < Duration::from_millis(10) {
                    std::thread::yield_now();
                } else {
                    std::thread::sleep(Duration::from_micros(50));
                }
            }
        });
        Ok(())
    }
}
