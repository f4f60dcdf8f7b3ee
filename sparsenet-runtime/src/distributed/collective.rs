//! What data-parallel ranks need from a communication layer, and an
//! in-process implementation.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A failure of the communication between ranks. Messages name the rank
/// that saw it and, where known, the rank that failed.
#[derive(Debug, thiserror::Error)]
pub enum DistError {
    /// A collective did not complete in time: a rank died or hangs.
    #[error("rank {rank}: {what} did not complete within {seconds} s: ranks {missing:?} never arrived (died or hung?)")]
    Timeout {
        /// The rank reporting it.
        rank: usize,
        /// The collective.
        what: &'static str,
        /// The ranks that had not arrived.
        missing: Vec<usize>,
        /// The timeout.
        seconds: u64,
    },
    /// Ranks called a collective with different lengths.
    #[error("rank {rank}: {what}: rank {other} gave {other_len} values, this rank {len}")]
    Mismatch {
        /// The rank reporting it.
        rank: usize,
        /// The collective.
        what: &'static str,
        /// A rank whose length differs.
        other: usize,
        /// That rank's length.
        other_len: usize,
        /// This rank's length.
        len: usize,
    },
    /// The underlying layer reported an error.
    #[error("rank {rank}: {message}")]
    Backend {
        /// The rank reporting it.
        rank: usize,
        /// What the layer said.
        message: String,
    },
}

/// The collectives a data-parallel run uses. Every rank calls the same
/// collectives in the same order with the same lengths.
pub trait Collective {
    /// This process's rank, `0..size`.
    fn rank(&self) -> usize;
    /// The number of ranks.
    fn size(&self) -> usize;
    /// Gathers every rank's `local` (all of the same length) into `out`
    /// (`size * local.len()` values), rank after rank, on every rank.
    fn all_gather(&mut self, local: &[f64], out: &mut [f64]) -> Result<(), DistError>;
}

/// One process alone: rank 0 of 1 (the gather copies).
#[derive(Clone, Copy, Debug, Default)]
pub struct SingleProcess;

impl Collective for SingleProcess {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn all_gather(&mut self, local: &[f64], out: &mut [f64]) -> Result<(), DistError> {
        out.copy_from_slice(local);
        Ok(())
    }
}

/// Ranks that are threads of one process, meeting in shared memory. Each
/// collective waits at most `timeout` for the others, then fails naming the
/// ranks that never arrived (a rank whose thread ended or hangs).
pub struct ThreadGroup {
    rank: usize,
    shared: Arc<Shared>,
    timeout: Duration,
}

struct Shared {
    size: usize,
    state: Mutex<GatherState>,
    changed: Condvar,
}

struct GatherState {
    /// Each rank's contribution to the current collective.
    slots: Vec<Option<Vec<f64>>>,
    /// Ranks that have copied the current result out.
    done: Vec<bool>,
    /// Counts completed collectives, so that a waiting rank knows its own
    /// finished even if the next one has started.
    generation: u64,
}

impl ThreadGroup {
    /// `size` connected ranks, one to move into each thread; collectives
    /// wait at most `timeout` for every rank.
    pub fn new(size: usize, timeout: Duration) -> Vec<ThreadGroup> {
        let shared = Arc::new(Shared {
            size,
            state: Mutex::new(GatherState {
                slots: vec![None; size],
                done: vec![false; size],
                generation: 0,
            }),
            changed: Condvar::new(),
        });
        (0..size)
            .map(|rank| ThreadGroup {
                rank,
                shared: shared.clone(),
                timeout,
            })
            .collect()
    }
}

impl ThreadGroup {
    /// Waits on the group's condition until `done` holds (`Ok`) or
    /// `deadline` passes (`Err`, with the state as it was then).
    fn wait_until<'a>(
        &self,
        mut state: MutexGuard<'a, GatherState>,
        deadline: Instant,
        done: impl Fn(&GatherState) -> bool,
    ) -> Result<MutexGuard<'a, GatherState>, MutexGuard<'a, GatherState>> {
        while !done(&state) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(state);
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, left)
                .expect("lock")
                .0;
        }
        Ok(state)
    }
}

impl Collective for ThreadGroup {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.shared.size
    }

    fn all_gather(&mut self, local: &[f64], out: &mut [f64]) -> Result<(), DistError> {
        const WHAT: &str = "all-gather";
        let (rank, size) = (self.rank, self.shared.size);
        if out.len() != size * local.len() {
            return Err(DistError::Backend {
                rank,
                message: format!(
                    "{WHAT}: an output of {} values for {size} ranks of {}",
                    out.len(),
                    local.len()
                ),
            });
        }
        let deadline = Instant::now() + self.timeout;
        let timeout = |state: &GatherState, waiting_for_slots: bool| DistError::Timeout {
            rank,
            what: WHAT,
            missing: (0..size)
                .filter(|&r| {
                    if waiting_for_slots {
                        state.slots[r].is_none()
                    } else {
                        !state.done[r]
                    }
                })
                .collect(),
            seconds: self.timeout.as_secs(),
        };
        let state = self
            .shared
            .state
            .lock()
            .expect("a rank panicked holding the lock");
        // Wait until the previous collective's result has been copied out by
        // every rank (its slots are then cleared).
        let mut state = self
            .wait_until(state, deadline, |s| s.slots[rank].is_none())
            .map_err(|s| timeout(&s, false))?;
        state.slots[rank] = Some(local.to_vec());
        let generation = state.generation;
        self.shared.changed.notify_all();
        // Wait for every rank's contribution.
        let mut state = self
            .wait_until(state, deadline, |s| {
                s.generation != generation || s.slots.iter().all(Option::is_some)
            })
            .map_err(|s| timeout(&s, true))?;
        if state.generation == generation {
            for (r, slot) in state.slots.iter().enumerate() {
                let v = slot.as_ref().expect("every rank contributed");
                if v.len() != local.len() {
                    return Err(DistError::Mismatch {
                        rank,
                        what: WHAT,
                        other: r,
                        other_len: v.len(),
                        len: local.len(),
                    });
                }
                out[r * v.len()..(r + 1) * v.len()].copy_from_slice(v);
            }
            state.done[rank] = true;
            if state.done.iter().all(|&d| d) {
                // The last rank out clears the round and opens the next.
                state.slots.iter_mut().for_each(|s| *s = None);
                state.done.iter_mut().for_each(|d| *d = false);
                state.generation += 1;
                self.shared.changed.notify_all();
            }
        }
        Ok(())
    }
}
