//! A team of threads held for the length of one batch-1 inference pass.
//!
//! A batch-1 pass splits each convolution's output channels over the
//! threads, about a hundred times in a BC-100 pass of ~12 ms, and between
//! the splits the calling thread works alone (gathering the next layer's
//! input). Through rayon every split wakes the other threads, which fell
//! asleep during the gather, and waits for them again: two wake-ups through
//! the kernel per split, measured as 15% of the pass's samples in the
//! scheduler and a median pass only 1.3-1.5x faster on 2 threads than on 1.
//!
//! [`run`] instead holds the other rayon workers for the whole pass: each
//! spins on its own mailbox, takes a part of a split the moment it is
//! posted and reports it done through the same mailbox, so a split costs a
//! few cache-line transfers. The spinning is bounded by the pass, which
//! keeps the cores it runs on busy anyway.

use std::cell::Cell;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

/// A part of a split, lifetime erased: a `&(dyn Fn(usize) + Sync)` that
/// outlives the post (the poster waits for it) and the part's index.
#[derive(Clone, Copy)]
struct Job {
    f: *const (dyn Fn(usize) + Sync + 'static),
    part: usize,
}

const EMPTY: u8 = 0;
const POSTED: u8 = 1;
const DONE: u8 = 2;
const FINISHED: u8 = 3;
/// A helper took the posted part (the poster can no longer take it back).
const TAKEN: u8 = 4;

/// One helper's mailbox, on its own cache line.
#[repr(align(128))]
struct Mailbox {
    state: AtomicU8,
    /// Set by the helper once it spins on this mailbox: only then are
    /// parts posted to it (a helper rayon has not started yet gets none).
    serving: AtomicBool,
    panicked: AtomicBool,
    job: std::cell::UnsafeCell<Option<Job>>,
}

// SAFETY: `job` is written only by the poster while `state` is EMPTY and
// read only by the helper after it sees POSTED (release/acquire on state).
unsafe impl Sync for Mailbox {}

thread_local! {
    /// The helpers of the pass this thread is running, if any.
    static TEAM: Cell<Option<*const [Mailbox]>> = const { Cell::new(None) };
}

/// Whether `SPARSENET_BATCH1_TEAM=0` turned the team off (for A/B timing).
fn disabled() -> bool {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OFF.get_or_init(|| std::env::var("SPARSENET_BATCH1_TEAM").is_ok_and(|v| v == "0"))
}

/// Runs `pass` on one rayon worker with the pool's other workers spinning
/// as its helpers; [`for_each_part`] calls inside it use them. Without a
/// pool of at least two threads, or when turned off, runs `pass` as is.
pub fn run<R: Send>(pass: impl FnOnce() -> R + Send) -> R {
    let threads = rayon::current_num_threads();
    if threads < 2 || disabled() || TEAM.get().is_some() {
        return pass();
    }
    let boxes: Vec<Mailbox> = (1..threads)
        .map(|_| Mailbox {
            state: AtomicU8::new(EMPTY),
            serving: AtomicBool::new(false),
            panicked: AtomicBool::new(false),
            job: std::cell::UnsafeCell::new(None),
        })
        .collect();
    let boxes = &boxes[..];
    let mut out = None;
    rayon::scope(|s| {
        for b in boxes {
            s.spawn(move |_| serve(b));
        }
        // The pass runs here, on the worker that runs the scope's body; the
        // helpers are stolen by the others meanwhile.
        TEAM.set(Some(boxes as *const [Mailbox]));
        let r = catch_unwind(AssertUnwindSafe(pass));
        TEAM.set(None);
        for b in boxes {
            b.state.store(FINISHED, Ordering::Release);
        }
        out = Some(r);
    });
    match out.expect("the scope ran its body") {
        Ok(r) => r,
        Err(p) => resume_unwind(p),
    }
}

/// A helper's loop: run what is posted until the pass is finished.
fn serve(b: &Mailbox) {
    b.serving.store(true, Ordering::Release);
    let mut idle = 0u32;
    loop {
        match b.state.load(Ordering::Acquire) {
            POSTED => {
                // Take it, unless the poster took it back meanwhile.
                if b.state
                    .compare_exchange(POSTED, TAKEN, Ordering::Acquire, Ordering::Relaxed)
                    .is_err()
                {
                    continue;
                }
                // SAFETY: the poster wrote `job` before POSTED and keeps the
                // closure alive until it sees DONE.
                let job = unsafe { (*b.job.get()).expect("a posted job") };
                let f = unsafe { &*job.f };
                if catch_unwind(AssertUnwindSafe(|| f(job.part))).is_err() {
                    b.panicked.store(true, Ordering::Relaxed);
                }
                b.state.store(DONE, Ordering::Release);
                idle = 0;
            }
            FINISHED => return,
            _ => {
                idle += 1;
                // Give the core away now and then, in case the machine is
                // oversubscribed and the poster waits for it.
                if idle.is_multiple_of(4096) {
                    std::thread::yield_now();
                } else {
                    std::hint::spin_loop();
                }
            }
        }
    }
}

/// Whether this thread runs a batch-1 pass with its team (see [`run`]).
pub(crate) fn in_pass() -> bool {
    TEAM.get().is_some()
}

/// Runs `f(0)`, ..., `f(parts - 1)`, spread over the team of the pass this
/// thread runs (see [`run`]) or, outside one, over rayon's threads.
pub fn for_each_part(parts: usize, f: &(dyn Fn(usize) + Sync)) {
    let Some(team) = TEAM.get() else {
        use rayon::prelude::*;
        (0..parts).into_par_iter().for_each(f);
        return;
    };
    // SAFETY: the mailboxes live until `run` returns, which is after the
    // pass (and so this call) ends.
    let team = unsafe { &*team };
    // SAFETY (lifetime erasure): every part posted below is waited for
    // before this function returns, so `f` outlives its use by the helpers.
    let erased: *const (dyn Fn(usize) + Sync + 'static) =
        unsafe { std::mem::transmute(f as *const (dyn Fn(usize) + Sync)) };
    let mut posted = Vec::with_capacity(team.len());
    let mut next = 1;
    for b in team {
        if next >= parts {
            break;
        }
        // Only idle helpers: a part that splits again (nested) finds its
        // own helper busy and runs the inner parts itself.
        if b.serving.load(Ordering::Acquire) && b.state.load(Ordering::Acquire) == EMPTY {
            // SAFETY: state is EMPTY and only this thread posts, so the
            // helper does not read `job` now.
            unsafe {
                *b.job.get() = Some(Job {
                    f: erased,
                    part: next,
                })
            };
            b.state.store(POSTED, Ordering::Release);
            posted.push((b, next));
            next += 1;
        }
    }
    let mine = catch_unwind(AssertUnwindSafe(|| {
        if parts > 0 {
            f(0);
        }
        // Parts no helper took (fewer helpers serving than parts).
        for p in next..parts {
            f(p);
        }
    }));
    let mut helper_panicked = false;
    let mut mine = mine;
    for (b, part) in posted {
        // A part no helper has started (a helper the OS has not run since
        // the post, on a busy machine): taken back and run here, rather
        // than spinning until that helper gets a core again (under load,
        // 83% of a batch-1 pass's samples were that spin).
        if b.state
            .compare_exchange(POSTED, EMPTY, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            let r = catch_unwind(AssertUnwindSafe(|| f(part)));
            if mine.is_ok() {
                mine = r;
            }
            continue;
        }
        while b.state.load(Ordering::Acquire) != DONE {
            std::hint::spin_loop();
        }
        helper_panicked |= b.panicked.swap(false, Ordering::Relaxed);
        b.state.store(EMPTY, Ordering::Relaxed);
    }
    if let Err(p) = mine {
        resume_unwind(p);
    }
    if helper_panicked {
        panic!("a part of a split panicked on a helper thread");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn every_part_runs_once_inside_and_outside_a_team() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        for parts in [0, 1, 2, 3, 7] {
            let hits: Vec<AtomicU64> = (0..parts).map(|_| AtomicU64::new(0)).collect();
            let f = |p: usize| {
                hits[p].fetch_add(1, Ordering::Relaxed);
            };
            for_each_part(parts, &f);
            pool.install(|| {
                run(|| {
                    for _ in 0..100 {
                        for_each_part(parts, &f);
                    }
                })
            });
            for h in &hits {
                assert_eq!(h.load(Ordering::Relaxed), 101, "{parts} parts");
            }
        }
    }

    #[test]
    fn helpers_take_parts_and_the_results_are_complete() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let sum = pool.install(|| {
            run(|| {
                let total = AtomicU64::new(0);
                for round in 0..1000u64 {
                    for_each_part(2, &|p| {
                        total.fetch_add(round * 2 + p as u64, Ordering::Relaxed);
                    });
                }
                total.load(Ordering::Relaxed)
            })
        });
        assert_eq!(sum, (0..2000u64).sum::<u64>());
        // And the helper does take parts (once rayon has started it), given
        // parts long enough (a few microseconds) that the poster, done with
        // its own, does not take the helper's back first.
        let elsewhere = pool.install(|| {
            run(|| {
                let me = std::thread::current().id();
                let away = AtomicU64::new(0);
                for _ in 0..1_000_000 {
                    for_each_part(2, &|_| {
                        let mut x = 0u64;
                        for i in 0..5_000u64 {
                            x = std::hint::black_box(x.wrapping_add(i));
                        }
                        if std::thread::current().id() != me {
                            away.fetch_add(1, Ordering::Relaxed);
                        }
                    });
                    if away.load(Ordering::Relaxed) > 10 {
                        break;
                    }
                }
                away.load(Ordering::Relaxed)
            })
        });
        assert!(elsewhere > 10, "parts ran on the helper {elsewhere} times");
    }

    #[test]
    fn a_part_that_splits_again_runs_every_inner_part() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        let hits: Vec<AtomicU64> = (0..12).map(|_| AtomicU64::new(0)).collect();
        pool.install(|| {
            run(|| {
                for _ in 0..200 {
                    for_each_part(3, &|outer| {
                        for_each_part(4, &|inner| {
                            hits[outer * 4 + inner].fetch_add(1, Ordering::Relaxed);
                        })
                    });
                }
            })
        });
        for h in &hits {
            assert_eq!(h.load(Ordering::Relaxed), 200);
        }
    }

    #[test]
    fn a_panicking_part_reaches_the_caller_and_the_team_ends() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        for bad in [0, 1] {
            let r = catch_unwind(AssertUnwindSafe(|| {
                pool.install(|| {
                    run(|| {
                        for _ in 0..50 {
                            for_each_part(2, &|p| assert_ne!(p, bad, "part {bad} fails"));
                        }
                    })
                })
            }));
            assert!(r.is_err(), "part {bad}'s panic is reported");
            // The pool is usable afterwards: the helper returned.
            assert_eq!(pool.install(|| run(|| 5)), 5);
        }
    }
}
