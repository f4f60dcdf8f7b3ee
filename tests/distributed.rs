//! Data-parallel training (`sparsenet::runtime::distributed`): ranks as
//! threads of this process (`ThreadGroup`) against references computed in
//! one thread. What the ranks must equal, to the bit:
//!
//! * one rank: the one-process run (`CpuEngine`);
//! * two ranks: the one-process run that splits every batch into two ghost
//!   batches, each normalised by its own BatchNorm statistics, gradients
//!   weighted by their share and summed in rank order in f64, the running
//!   statistics the first half's (what the module documents as the only
//!   difference from one process).

use sparsenet::prelude::*;
use sparsenet::runtime::data::{load_fashion_mnist, Augment, Dataset, Transform};
use sparsenet::runtime::distributed::{share, Collective, DataParallel, ThreadGroup};
use sparsenet::runtime::engine::{Engine, EngineData, EngineError, StepOutcome, StepSpec};
use sparsenet::runtime::loss::softmax_cross_entropy;
use sparsenet::runtime::optim::SgdState;
use sparsenet::runtime::train::{load_checkpoint_for, train, TrainConfig, Trainer};
use sparsenet::runtime::{ndarray, Model, NetworkSpec};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

const FASHION: &str = "/usr/share/datasets/fashion-mnist";

sparsenet! {
    /// Small enough for a few epochs in seconds; BatchNorm everywhere.
    struct Small { input: [1, 28, 28], classes: 10, units: [2, 2], growth: [6, 8] }
}

fn data() -> (Arc<Dataset>, Arc<Dataset>, Transform) {
    let (tr, te) = load_fashion_mnist(Path::new(FASHION)).unwrap_or_else(|e| {
        panic!("{e}\n(the tests need Fashion-MNIST: `bash .ci/run` installs it)")
    });
    let (tr, te) = (tr.take(640), te.take(200));
    let t = Transform::from_dataset_stats(&tr);
    (Arc::new(tr), Arc::new(te), t)
}

fn config(out: &Path) -> TrainConfig {
    let mut cfg = TrainConfig::new(2, out);
    cfg.batch_size = 32;
    cfg.eval_batch_size = 90; // uneven shares: 45 + 45, and 20 left over
    cfg.pad_crop = 2;
    cfg.hflip = true;
    cfg.seed = 3;
    cfg.max_steps_per_epoch = Some(10); // 20 steps in all
    cfg.workers = 1;
    cfg
}

type Checkpoint = (Vec<f32>, Vec<f32>, Vec<f32>);

fn checkpoint(dir: &Path) -> Checkpoint {
    let mut m = Small::<f32>::new(0);
    let mut v = vec![0.0f32; Small::<f32>::PARAMETERS];
    let (p, s) = m.stores_mut();
    load_checkpoint_for(
        &dir.join("checkpoint.safetensors"),
        Small::<f32>::NAME,
        Small::<f32>::tensors(),
        p,
        s,
        &mut v,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    (m.params().to_vec(), m.state().to_vec(), v)
}

/// Asserts `got` equals `want` bit for bit, naming the first difference.
fn same_bits(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    if let Some(i) = (0..got.len()).find(|&i| got[i].to_bits() != want[i].to_bits()) {
        let differ = (0..got.len())
            .filter(|&i| got[i].to_bits() != want[i].to_bits())
            .count();
        panic!(
            "{what}: {differ} of {} values differ, the first at {i}: {} against {}",
            got.len(),
            got[i],
            want[i]
        );
    }
}

/// Per-epoch (train loss, train accuracy, test loss, test accuracy).
fn curve(t: &Trainer<Small, impl Engine<Small>>) -> Vec<[f64; 4]> {
    t.metrics()
        .records()
        .iter()
        .map(|r| [r.train_loss, r.train_acc, r.test_loss, r.test_acc])
        .collect()
}

/// Trains `size` thread ranks to the end; returns rank 0's curve and what
/// each rank's folder holds.
fn run_ranks(size: usize, sync_bn: bool, out: &Path) -> (Vec<[f64; 4]>, Vec<usize>) {
    run_ranks_with(size, sync_bn, out, 32)
}

/// `run_ranks` with global batches of `batch`.
fn run_ranks_with(
    size: usize,
    sync_bn: bool,
    out: &Path,
    batch: usize,
) -> (Vec<[f64; 4]>, Vec<usize>) {
    let (tr, te, t) = data();
    let ranks = ThreadGroup::new(size, Duration::from_secs(120));
    let results: Vec<(Vec<[f64; 4]>, usize)> = std::thread::scope(|s| {
        let handles: Vec<_> = ranks
            .into_iter()
            .map(|comm| {
                let (tr, te, t) = (tr.clone(), te.clone(), t.clone());
                s.spawn(move || {
                    let rank = comm.rank();
                    let dir = out.join(format!("rank{rank}"));
                    let mut cfg = config(&dir);
                    cfg.batch_size = batch;
                    cfg.primary = rank == 0;
                    let mut trainer =
                        Trainer::new(cfg, tr, te, t, |_: &Small, _: &SgdState<f32>| {
                            Ok(DataParallel::new::<Small>(comm).sync_batch_norm(sync_bn))
                        })
                        .unwrap_or_else(|e| panic!("rank {rank}: {e}"));
                    while !trainer.is_finished() {
                        trainer
                            .run_epoch()
                            .unwrap_or_else(|e| panic!("rank {rank}: {e}"));
                    }
                    let files = std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0);
                    (curve(&trainer), files)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    (results[0].0.clone(), results.iter().map(|r| r.1).collect())
}

/// The reference: one thread, every batch split into `ghosts` ghost
/// batches, each run on a copy of the model (so that only the first one's
/// running statistics stay), combined as the ranks combine them.
struct GhostBatches {
    ghosts: usize,
    train: Option<(Arc<Dataset>, Transform)>,
    test: Option<(Arc<Dataset>, Transform)>,
}

fn batch(
    data: &Dataset,
    t: &Transform,
    picks: &[(usize, Augment)],
) -> (ndarray::Array4<f32>, Vec<usize>) {
    let chw = data.image_size();
    let mut x =
        ndarray::Array4::<f32>::zeros((picks.len(), data.channels, data.height, data.width));
    let flat = x.as_slice_mut().unwrap();
    for (i, &(idx, a)) in picks.iter().enumerate() {
        t.apply(
            data.image(idx),
            (data.channels, data.height, data.width),
            a,
            &mut flat[i * chw..(i + 1) * chw],
        );
    }
    (x, picks.iter().map(|&(i, _)| data.label(i)).collect())
}

impl Engine<Small> for GhostBatches {
    fn attach(&mut self, d: &EngineData) -> Result<(), EngineError> {
        self.train = Some((d.train.clone(), (*d.train_transform).clone()));
        self.test = Some((d.test.clone(), (*d.eval_transform).clone()));
        Ok(())
    }
    fn sync(&mut self, _: &mut Small, _: &mut SgdState<f32>) -> Result<(), EngineError> {
        Ok(())
    }
    fn step(
        &mut self,
        model: &mut Small,
        opt: &mut SgdState<f32>,
        spec: &StepSpec,
        picks: &[(usize, Augment)],
    ) -> Result<StepOutcome, EngineError> {
        let (data, t) = self.train.as_ref().unwrap();
        let n = picks.len() as f64;
        let p = Small::<f32>::PARAMETERS;
        let mut parts = Vec::new();
        let first = model.clone();
        for r in 0..self.ghosts {
            let (b, e) = share(picks.len(), r, self.ghosts);
            let (x, labels) = batch(data, t, &picks[b..e]);
            let mut m = if r == 0 { model.clone() } else { first.clone() };
            let mut g = vec![0.0f32; p];
            let mut out = (0.0f32, 0usize);
            m.forward_backward(x.view(), Mode::Train, &mut g, &mut |logits| {
                let (l, d, c) =
                    softmax_cross_entropy(logits.view(), &labels, spec.label_smoothing).unwrap();
                out = (l, c);
                d
            })?;
            if r == 0 {
                model.state_mut().copy_from_slice(m.state());
            }
            parts.push(((e - b) as f64, out, g));
        }
        let loss: f64 = parts.iter().map(|(k, (l, _), _)| k / n * *l as f64).sum();
        let correct: usize = parts.iter().map(|(_, (_, c), _)| c).sum();
        let grads: Vec<f32> = (0..p)
            .map(|i| {
                let mut s = 0.0f64;
                for (k, _, g) in &parts {
                    s += k / n * g[i] as f64;
                }
                s as f32
            })
            .collect();
        spec.sgd.step(opt, model.params_mut(), &grads, spec.lr);
        Ok(StepOutcome { loss, correct })
    }
    fn logits(
        &mut self,
        m: &mut Small,
        picks: &[(usize, Augment)],
    ) -> Result<ndarray::Array2<f32>, EngineError> {
        let (data, t) = self.test.as_ref().unwrap();
        let mut rows = Vec::new();
        for r in 0..self.ghosts {
            let (b, e) = share(picks.len(), r, self.ghosts);
            if e > b {
                rows.push(m.forward(batch(data, t, &picks[b..e]).0.view(), Mode::Eval)?);
            }
        }
        let views: Vec<_> = rows.iter().map(|a| a.view()).collect();
        Ok(ndarray::concatenate(ndarray::Axis(0), &views).unwrap())
    }
}

fn reference(ghosts: usize, out: &Path) -> Vec<[f64; 4]> {
    let (tr, te, t) = data();
    let mut trainer = Trainer::new(config(out), tr, te, t, |_: &Small, _: &SgdState<f32>| {
        Ok(GhostBatches {
            ghosts,
            train: None,
            test: None,
        })
    })
    .unwrap();
    while !trainer.is_finished() {
        trainer.run_epoch().unwrap();
    }
    curve(&trainer)
}

#[test]
fn two_ranks_equal_one_process_with_two_ghost_batches() {
    let ranks = tempfile::tempdir().unwrap();
    let (got, files) = run_ranks(2, false, ranks.path());
    let one = tempfile::tempdir().unwrap();
    let want = reference(2, one.path());
    eprintln!("two ranks: {got:?}\nghost batches: {want:?}");
    assert_eq!(got, want, "per-epoch losses and accuracies");
    let (gp, gs, gv) = checkpoint(&ranks.path().join("rank0"));
    let (wp, ws, wv) = checkpoint(one.path());
    same_bits(&gp, &wp, "parameters");
    same_bits(&gs, &ws, "running statistics");
    same_bits(&gv, &wv, "velocity");
    // Rank 0 alone writes: checkpoint, metrics.csv, metrics.png, the lock.
    assert!(
        files[0] >= 3,
        "rank 0 wrote its outputs ({} files)",
        files[0]
    );
    assert_eq!(files[1], 0, "rank 1 writes nothing");
}

#[test]
fn one_rank_equals_the_one_process_run() {
    let ranks = tempfile::tempdir().unwrap();
    let (got, _) = run_ranks(1, false, ranks.path());
    let (tr, te, t) = data();
    let one = tempfile::tempdir().unwrap();
    let (_, report) = train::<Small>(&config(one.path()), tr, te, t).unwrap();
    let want: Vec<[f64; 4]> = report
        .metrics
        .records()
        .iter()
        .map(|r| [r.train_loss, r.train_acc, r.test_loss, r.test_acc])
        .collect();
    assert_eq!(got, want);
    let (gp, gs, gv) = checkpoint(&ranks.path().join("rank0"));
    let (wp, ws, wv) = checkpoint(one.path());
    same_bits(&gp, &wp, "parameters");
    same_bits(&gs, &ws, "running statistics");
    same_bits(&gv, &wv, "velocity");
}

#[test]
fn a_rank_that_never_arrives_is_named_not_waited_for() {
    let mut ranks = ThreadGroup::new(3, Duration::from_millis(200));
    let mut r0 = ranks.remove(0);
    let r2 = ranks.remove(1);
    let t = std::thread::spawn(move || {
        let mut r2 = r2;
        let mut out = vec![0.0; 6];
        r2.all_gather(&[2.0, 2.5], &mut out)
    });
    let mut out = vec![0.0; 6];
    let e = r0
        .all_gather(&[0.0, 0.5], &mut out)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("ranks [1] never arrived") && e.contains("rank 0"),
        "{e}"
    );
    let e2 = t.join().unwrap().unwrap_err().to_string();
    assert!(e2.contains("ranks [1] never arrived"), "{e2}");
    drop(ranks);
}

/// Under `mpirun` (feature `mpi`): two MPI processes train exactly what two
/// thread ranks train, to the bit, with synchronised BatchNorm (its
/// exchanges are most of a step's collectives).
/// `.ci/run` installs Open MPI; this test launches this test binary under
/// `mpirun -np 2`, running `mpi_rank` in each process.
#[cfg(feature = "mpi")]
#[test]
fn two_mpi_processes_equal_two_thread_ranks() {
    let mpi = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new("mpirun")
        // Unbound, so each process computes with as many threads as this
        // one (the CPU kernels' rounding follows the thread count).
        .args(["--oversubscribe", "--bind-to", "none", "-np", "2"])
        .arg(&exe)
        .args([
            "--exact",
            "mpi_rank",
            "--ignored",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("SPARSENET_MPI_TEST_OUT", mpi.path())
        // CI runs as root, which Open MPI refuses unless told.
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .output()
        .expect("mpirun runs (Debian: openmpi-bin)");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "mpirun failed:\n{log}");
    // Each process's harness ran its rank (their output interleaves).
    assert_eq!(log.matches("1 passed; 0 failed").count(), 2, "{log}");
    let threads = tempfile::tempdir().unwrap();
    run_ranks(2, true, threads.path());
    let (mp, ms, mv) = checkpoint(&mpi.path().join("rank0"));
    let (tp, ts, tv) = checkpoint(&threads.path().join("rank0"));
    same_bits(&mp, &tp, "parameters");
    same_bits(&ms, &ts, "running statistics");
    same_bits(&mv, &tv, "velocity");
    assert!(!mpi.path().join("rank1").exists(), "rank 1 writes nothing");
}

/// One MPI rank of `two_mpi_processes_equal_two_thread_ranks` (run by it
/// under mpirun; ignored otherwise).
#[cfg(feature = "mpi")]
#[test]
#[ignore = "run under mpirun by two_mpi_processes_equal_two_thread_ranks"]
fn mpi_rank() {
    use sparsenet::runtime::distributed::MpiCollective;
    let out = std::path::PathBuf::from(
        std::env::var_os("SPARSENET_MPI_TEST_OUT").expect("set by the launching test"),
    );
    let comm = MpiCollective::init(Duration::from_secs(120)).unwrap();
    let rank = comm.rank();
    let (tr, te, t) = data();
    let mut cfg = config(&out.join(format!("rank{rank}")));
    cfg.primary = rank == 0;
    let mut trainer = Trainer::new(cfg, tr, te, t, |_: &Small, _: &SgdState<f32>| {
        Ok(DataParallel::new::<Small>(comm).sync_batch_norm(true))
    })
    .unwrap_or_else(|e| panic!("rank {rank}: {e}"));
    while !trainer.is_finished() {
        trainer
            .run_epoch()
            .unwrap_or_else(|e| panic!("rank {rank}: {e}"));
    }
}

/// Synchronised BatchNorm (issue 22's check): two ranks of 32 images compute
/// the one-process step on the 64 to rounding. "To rounding" is measured,
/// not guessed: the same one-process run on one thread instead of two (the
/// CPU kernels then sum in another order) drifts from it by some amount over
/// 20 SGD steps; the synchronised ranks must stay within 10x that (they
/// change more summation orders at once: statistics combined from two
/// halves, gradients summed across ranks in f64; measured 3.5-7x on
/// 2026-12-05; the f64 test above shows the logic itself is exact), and
/// per-rank BatchNorm (the documented difference) lands far outside.
#[test]
fn two_ranks_with_synchronised_batch_norm_track_one_process() {
    let (tr, te, t) = data();
    let mut cfg = config(Path::new("unused"));
    cfg.batch_size = 64; // 10 steps an epoch, 20 in all
    let one_process = |threads: Option<usize>| {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = cfg.clone();
        cfg.out_dir = dir.path().to_path_buf();
        let (tr, te, t) = (tr.clone(), te.clone(), t.clone());
        let report = match threads {
            None => train::<Small>(&cfg, tr, te, t).unwrap().1,
            Some(n) => rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .unwrap()
                .install(|| train::<Small>(&cfg, tr, te, t).unwrap().1),
        };
        let curve: Vec<[f64; 4]> = report
            .metrics
            .records()
            .iter()
            .map(|r| [r.train_loss, r.train_acc, r.test_loss, r.test_acc])
            .collect();
        let (p, s, _) = checkpoint(dir.path());
        (curve, p, s)
    };
    let (want, wp, ws) = one_process(None);
    let rel = |a: &[f32], b: &[f32]| {
        let d = a
            .iter()
            .zip(b)
            .fold(0.0f64, |m, (x, y)| m.max((x - y).abs() as f64));
        d / b.iter().fold(0.0f64, |m, x| m.max(x.abs() as f64))
    };
    let losses = |got: &[[f64; 4]]| {
        got.iter()
            .zip(&want)
            .map(|(g, w)| {
                ((g[0] - w[0]) / w[0])
                    .abs()
                    .max(((g[2] - w[2]) / w[2]).abs())
            })
            .fold(0.0f64, f64::max)
    };
    // Another thread count than the global pool's.
    let other = if rayon::current_num_threads() == 1 {
        2
    } else {
        1
    };
    let (nc, np, ns) = one_process(Some(other));
    let noise = (losses(&nc), rel(&np, &wp), rel(&ns, &ws));
    eprintln!(
        "1 x 64 on {other} thread(s) against {}, after 20 steps: losses {:.1e}, parameters {:.1e}, running statistics {:.1e}",
        rayon::current_num_threads(),
        noise.0, noise.1, noise.2
    );
    assert!(noise.1 > 0.0, "the thread count changes the rounding");
    let mut errs = Vec::new();
    for sync in [true, false] {
        let ranks = tempfile::tempdir().unwrap();
        let (got, _) = run_ranks_with(2, sync, ranks.path(), 64);
        assert_eq!(got.len(), 2);
        let (gp, gs, _) = checkpoint(&ranks.path().join("rank0"));
        let e = (losses(&got), rel(&gp, &wp), rel(&gs, &ws));
        eprintln!(
            "2 ranks x 32, {} BatchNorm, against 1 x 64 after 20 steps: losses {:.1e}, parameters {:.1e}, running statistics {:.1e}",
            if sync { "synchronised" } else { "per-rank" },
            e.0,
            e.1,
            e.2
        );
        errs.push(e);
    }
    let (s, u) = (errs[0], errs[1]);
    let within = |e: f64, n: f64| e <= 10.0 * n.max(1e-7);
    assert!(
        within(s.0, noise.0) && within(s.1, noise.1) && within(s.2, noise.2),
        "synchronised BatchNorm {s:?} is not within 10x of rounding {noise:?}"
    );
    assert!(
        u.1 > 10.0 * s.1.max(noise.1) && u.2 > 10.0 * s.2.max(noise.2),
        "per-rank BatchNorm {u:?} should differ far more than rounding {noise:?}"
    );
}

/// The logic of synchronised BatchNorm, free of f32 noise: in f64, two ranks
/// of 4 images each, their gradients weighted by their share, equal the
/// one-process pass on the 8 (loss, every gradient, running statistics) to
/// 1e-10.
#[test]
fn synchronised_batch_norm_is_the_whole_batch_pass_in_f64() {
    use rand::{Rng, SeedableRng};
    use sparsenet::runtime::cpu::bn_hook::with_batch_norm_hook;
    use sparsenet::runtime::distributed::SyncBatchNorm;
    use sparsenet::runtime::loss::softmax_cross_entropy_into;
    let model = Small::<f64>::new(5);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
    let x = ndarray::Array4::<f64>::from_shape_fn((8, 1, 28, 28), |_| rng.gen_range(-1.0..1.0));
    let labels: Vec<usize> = (0..8).map(|i| (i * 3) % 10).collect();
    let pass = |m: &mut Small<f64>, x: ndarray::ArrayView4<'_, f64>, labels: &[usize]| {
        let mut g = vec![0.0f64; Small::<f64>::PARAMETERS];
        let mut loss = 0.0;
        m.forward_backward(x, Mode::Train, &mut g, &mut |logits| {
            let mut d = ndarray::Array2::zeros(logits.raw_dim());
            loss = softmax_cross_entropy_into(logits.view(), labels, 0.0, d.view_mut())
                .unwrap()
                .0;
            d
        })
        .unwrap();
        (loss, g)
    };
    let mut one = model.clone();
    let (loss, grads) = pass(&mut one, x.view(), &labels);
    let ranks = ThreadGroup::new(2, Duration::from_secs(60));
    let parts: Vec<(f64, Vec<f64>, Vec<f64>)> = std::thread::scope(|s| {
        let handles: Vec<_> = ranks
            .into_iter()
            .map(|mut comm| {
                let (mut m, x, labels) = (model.clone(), &x, &labels);
                s.spawn(move || {
                    let r = comm.rank();
                    let xs = x.slice(ndarray::s![4 * r..4 * r + 4, .., .., ..]);
                    let gather = Box::new(move |l: &[f64], o: &mut [f64]| comm.all_gather(l, o));
                    let ((l, g), hook) =
                        with_batch_norm_hook(SyncBatchNorm::new(gather, 2, 0.5), || {
                            pass(&mut m, xs, &labels[4 * r..4 * r + 4])
                        });
                    assert!(hook.error.is_none(), "{:?}", hook.error);
                    (l, g, m.state().to_vec())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let loss2 = 0.5 * (parts[0].0 + parts[1].0);
    let grads2: Vec<f64> = (0..grads.len())
        .map(|i| 0.5 * parts[0].1[i] + 0.5 * parts[1].1[i])
        .collect();
    let rel = |a: &[f64], b: &[f64]| {
        let d = a
            .iter()
            .zip(b)
            .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()));
        d / b.iter().fold(0.0f64, |m, x| m.max(x.abs()))
    };
    let (eg, es0, es1) = (
        rel(&grads2, &grads),
        rel(&parts[0].2, one.state()),
        rel(&parts[1].2, one.state()),
    );
    eprintln!("f64, 2 synchronised ranks against 1: loss {:.1e}, gradients {eg:.1e}, running statistics {es0:.1e} / {es1:.1e}", (loss2 - loss).abs() / loss);
    assert!(
        (loss2 - loss).abs() < 1e-12 * loss,
        "loss {loss2} against {loss}"
    );
    assert!(eg < 1e-10, "gradients {eg:e}");
    assert!(
        es0 < 1e-12 && es1 < 1e-12,
        "running statistics {es0:e} {es1:e}"
    );
}

/// A data-parallel run resumes with another number of ranks: two ranks
/// train the first epoch and stop; four resume from rank 0's checkpoint and
/// train the second (each rank then takes 8 of the 32), continuing the same
/// schedule, data order and step count.
#[test]
fn a_run_resumes_with_another_rank_count() {
    let (tr, te, t) = data();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_path_buf();
    let run = |size: usize, stop_after: Option<u64>| -> Vec<(u64, u64)> {
        let ranks = ThreadGroup::new(size, Duration::from_secs(120));
        std::thread::scope(|s| {
            let handles: Vec<_> = ranks
                .into_iter()
                .map(|comm| {
                    let (tr, te, t, out) = (tr.clone(), te.clone(), t.clone(), out.clone());
                    s.spawn(move || {
                        let rank = comm.rank();
                        let mut cfg = config(&out);
                        cfg.primary = rank == 0;
                        cfg.resume = true;
                        cfg.stop_after_epoch = stop_after;
                        let mut trainer =
                            Trainer::new(cfg, tr, te, t, |_: &Small, _: &SgdState<f32>| {
                                Ok(DataParallel::new::<Small>(comm))
                            })
                            .unwrap_or_else(|e| panic!("rank {rank}: {e}"));
                        while trainer.epoch() < stop_after.unwrap_or(2) {
                            trainer
                                .run_epoch()
                                .unwrap_or_else(|e| panic!("rank {rank}: {e}"));
                        }
                        (trainer.epoch(), trainer.step())
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    };
    assert_eq!(run(2, Some(1)), vec![(1, 10); 2]);
    assert_eq!(run(4, None), vec![(2, 20); 4]);
    let log = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
    assert_eq!(log.lines().count(), 3, "a header and both epochs:\n{log}");
}

/// A rank whose share cannot be trained (a label outside the classes) stops
/// every rank with an error, none waits for it: the ranks' exchange carries
/// the failure.
#[test]
fn a_bad_label_on_one_rank_stops_every_rank() {
    let (tr, _, t) = data();
    let mut bad = (*tr).clone();
    bad.labels[5] = 12; // in rank 1's half of the picks below
    let bad = Arc::new(bad);
    let picks: Vec<(usize, Augment)> = (0..8).map(|i| (i, Augment::default())).collect();
    let cfg = config(Path::new("unused"));
    let ranks = ThreadGroup::new(2, Duration::from_secs(20));
    let errors: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = ranks
            .into_iter()
            .map(|comm| {
                let (bad, t, picks, cfg) = (bad.clone(), t.clone(), &picks, &cfg);
                s.spawn(move || {
                    let mut model = Small::<f32>::new(0);
                    let mut opt = SgdState {
                        velocity: vec![0.0; Small::<f32>::PARAMETERS],
                    };
                    let mut engine = DataParallel::new::<Small>(comm);
                    let t = Arc::new(t);
                    let data = EngineData {
                        train: bad.clone(),
                        train_transform: t.clone(),
                        test: bad,
                        eval_transform: t,
                    };
                    Engine::<Small>::attach(&mut engine, &data).unwrap();
                    let spec = StepSpec {
                        lr: 0.1,
                        step: 0,
                        seed: cfg.seed,
                        label_smoothing: cfg.label_smoothing,
                        sgd: cfg.sgd,
                    };
                    engine
                        .step(&mut model, &mut opt, &spec, picks)
                        .unwrap_err()
                        .to_string()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(errors[0].contains("rank 1"), "rank 0: {}", errors[0]);
    assert!(errors[1].contains("12"), "rank 1: {}", errors[1]);
}

/// A rank that dies mid-run ends the MPI job instead of leaving the others
/// waiting: rank 1 aborts before its first exchange, rank 0 is then inside
/// one; `mpirun` stops the job, names the rank, and exits non-zero, long
/// before the collectives' timeout (120 s here).
#[cfg(feature = "mpi")]
#[test]
fn a_dying_mpi_rank_ends_the_job_naming_it() {
    let exe = std::env::current_exe().unwrap();
    let t = std::time::Instant::now();
    let out = std::process::Command::new("mpirun")
        .args(["--oversubscribe", "--bind-to", "none", "-np", "2"])
        .arg(&exe)
        .args([
            "--exact",
            "mpi_rank_that_dies",
            "--ignored",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .output()
        .expect("mpirun runs (Debian: openmpi-bin)");
    let secs = t.elapsed().as_secs_f64();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "mpirun ended after {secs:.1} s, status {:?}",
        out.status.code()
    );
    assert!(!out.status.success(), "the job failed:\n{log}");
    assert!(
        secs < 60.0,
        "ended in {secs:.1} s, not at the timeout:\n{log}"
    );
    assert!(log.contains("rank 1"), "mpirun names the rank:\n{log}");
}

/// The two ranks of `a_dying_mpi_rank_ends_the_job_naming_it` (ignored
/// otherwise): rank 1 aborts, rank 0 waits in an all-gather.
#[cfg(feature = "mpi")]
#[test]
#[ignore = "run under mpirun by a_dying_mpi_rank_ends_the_job_naming_it"]
fn mpi_rank_that_dies() {
    use sparsenet::runtime::distributed::MpiCollective;
    let mut comm = MpiCollective::init(Duration::from_secs(120)).unwrap();
    if comm.rank() == 1 {
        std::process::abort();
    }
    let mut out = vec![0.0; 2];
    let _ = comm.all_gather(&[1.0], &mut out);
    panic!("rank 0's all-gather returned without rank 1");
}
