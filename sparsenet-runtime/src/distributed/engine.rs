//! [`DataParallel`]: the CPU path's training steps shared by the ranks of a
//! [`Collective`].

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use ndarray::{Array2, Array4};

use super::collective::{Collective, DistError};
use super::sync_bn::{Gather, SyncBatchNorm};
use crate::cpu::bn_hook::with_batch_norm_hook;
use crate::data::{build_images, Dataset, Pick, Transform};
use crate::engine::{stream_seed, Engine, EngineData, EngineError, Split, StepOutcome, StepSpec};
use crate::optim::SgdState;
use crate::train::{train_pass, update_if_finite};
use crate::{Float, Mode, Model, NetworkSpec};

/// A training [`Engine`] for the CPU path whose steps are shared by the
/// ranks of `C` (see the [module documentation](super) for what a step
/// computes). Give it to [`Trainer::new`](crate::train::Trainer::new) on
/// every rank, with [`TrainConfig::primary`](crate::train::TrainConfig::primary)
/// true on rank 0 only.
///
/// It keeps the datasets the trainer attaches and builds its share of each
/// batch from the picks the trainer hands it (the host loader's order and
/// augmentation), so every rank sees the one-process run's global batches.
/// Evaluation is shared too: each rank computes the logits of its share of
/// every evaluation batch and the ranks gather them.
///
/// BatchNorm is per rank by default; [`DataParallel::sync_batch_norm`]
/// synchronises it ([`SyncBatchNorm`](super::SyncBatchNorm)).
pub struct DataParallel<C: Collective> {
    /// Shared with the synchronised BatchNorm's hook during a pass.
    comm: Rc<RefCell<C>>,
    sync_bn: bool,
    grads: Vec<f32>,
    train: Option<Kept>,
    test: Option<Kept>,
    /// This rank's contribution to a step: count, loss, correct, failed,
    /// gradients.
    local: Vec<f64>,
    /// Every rank's, rank after rank.
    gathered: Vec<f64>,
}

/// Values before the gradients in a step's contribution: images, mean
/// loss, correct predictions, and 1 if its loss could not be computed.
const HEADER: usize = 4;

impl<C: Collective + 'static> DataParallel<C> {
    /// An engine for models of type `M` on the ranks of `comm`.
    pub fn new<M: NetworkSpec>(comm: C) -> Self {
        DataParallel {
            comm: Rc::new(RefCell::new(comm)),
            sync_bn: false,
            grads: vec![0.0; M::PARAMETERS],
            train: None,
            test: None,
            local: Vec::new(),
            gathered: Vec::new(),
        }
    }

    /// Synchronised BatchNorm (`on`): training-mode BatchNorm normalises
    /// with the statistics of the whole global batch and its backward uses
    /// the whole batch's sums, so that the ranks compute the one-process
    /// step to rounding; each BatchNorm then exchanges per-channel values
    /// twice a step. Every share of a batch must hold an image.
    pub fn sync_batch_norm(mut self, on: bool) -> Self {
        self.sync_bn = on;
        self
    }

    /// This rank and the number of ranks.
    pub fn rank_and_size(&self) -> (usize, usize) {
        let c = self.comm.borrow();
        (c.rank(), c.size())
    }

    /// This rank's share `[begin, end)` of a batch of `n`.
    pub fn share(&self, n: usize) -> (usize, usize) {
        let (rank, size) = self.rank_and_size();
        share(n, rank, size)
    }

    fn all_gather(&self, local: &[f64], out: &mut [f64]) -> Result<(), EngineError> {
        self.comm
            .borrow_mut()
            .all_gather(local, out)
            .map_err(EngineError::backend)
    }

    /// The attached data of `split`.
    fn kept(&self, split: Split) -> Result<&Kept, EngineError> {
        match split {
            Split::Train => self.train.as_ref(),
            Split::Test => self.test.as_ref(),
        }
        .ok_or(EngineError::NotAttached(split))
    }
}

/// Rank `rank`'s share `[begin, end)` of `n` images over `size` ranks:
/// contiguous, in rank order, sizes differing by at most one.
pub fn share(n: usize, rank: usize, size: usize) -> (usize, usize) {
    (rank * n / size, (rank + 1) * n / size)
}

/// A dataset the engine keeps, with its transform's lookup table.
struct Kept {
    data: Arc<Dataset>,
    lut: Vec<f32>,
}

impl Kept {
    fn new(data: &Arc<Dataset>, transform: &Transform) -> Self {
        Kept {
            data: data.clone(),
            lut: transform.lut(),
        }
    }

    /// The images and labels `picks` names, built as the host loader
    /// builds them.
    fn batch(&self, picks: &[Pick]) -> Result<(Array4<f32>, Vec<usize>), EngineError> {
        if let Some(&(i, _)) = picks.iter().find(|&&(i, _)| i >= self.data.len) {
            return Err(EngineError::Unsupported(format!(
                "image {i} picked from a set of {} images",
                self.data.len
            )));
        }
        let labels = picks.iter().map(|&(i, _)| self.data.label(i)).collect();
        Ok((build_images(&self.data, &self.lut, picks), labels))
    }
}

impl<M: Model<f32>, C: Collective + 'static> Engine<M> for DataParallel<C> {
    fn attach(&mut self, data: &EngineData) -> Result<(), EngineError> {
        self.train = Some(Kept::new(&data.train, &data.train_transform));
        self.test = Some(Kept::new(&data.test, &data.eval_transform));
        Ok(())
    }

    fn sync(&mut self, _: &mut M, _: &mut SgdState<f32>) -> Result<(), EngineError> {
        Ok(())
    }

    fn step(
        &mut self,
        model: &mut M,
        opt: &mut SgdState<f32>,
        spec: &StepSpec,
        picks: &[Pick],
    ) -> Result<StepOutcome, EngineError> {
        let (rank, size) = self.rank_and_size();
        let (begin, end) = self.share(picks.len());
        let p = M::PARAMETERS;
        let sync = self.sync_bn && size > 1;
        if sync && picks.len() < size {
            // Decided alike on every rank: none enters the exchange.
            return Err(EngineError::Unsupported(format!(
                "synchronised BatchNorm over {size} ranks needs at least one image per rank; the batch has {}",
                picks.len()
            )));
        }
        self.local.clear();
        self.local.resize(HEADER + p, 0.0);
        let mut failure = None;
        if end > begin {
            let (x, labels) = self.kept(Split::Train)?.batch(&picks[begin..end])?;
            // Dropout masks differ per rank (a rank's own stream).
            model.reseed(stream_seed(spec.dropout_seed(), rank as u64));
            let smoothing = spec.label_smoothing;
            let grads = &mut self.grads;
            let mut pass = || train_pass(model, x.view(), &labels, smoothing, grads);
            let outcome = if sync {
                let comm = self.comm.clone();
                let gather: Box<Gather<'static>> =
                    Box::new(move |l: &[f64], o: &mut [f64]| comm.borrow_mut().all_gather(l, o));
                let weight = (end - begin) as f64 / picks.len() as f64;
                let hook = SyncBatchNorm::new(gather, size, weight);
                let (result, hook) = with_batch_norm_hook(hook, pass);
                if let Some(e) = hook.error {
                    return Err(EngineError::backend(e));
                }
                result
            } else {
                pass()
            };
            match outcome {
                Ok((loss, correct)) => {
                    self.local[0] = (end - begin) as f64;
                    self.local[1] = loss.to_f64c();
                    self.local[2] = correct as f64;
                    for (d, &g) in self.local[HEADER..].iter_mut().zip(&self.grads) {
                        *d = g as f64;
                    }
                }
                // A bad label: still take part in the exchange, so the
                // others do not wait for this rank, and tell them; every
                // rank then stops with an error after it.
                Err(EngineError::Loss(e)) => {
                    self.local[3] = 1.0;
                    failure = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        let mut gathered = std::mem::take(&mut self.gathered);
        gathered.resize(size * (HEADER + p), 0.0);
        self.all_gather(&self.local, &mut gathered)?;
        self.gathered = gathered;
        if let Some(e) = failure {
            return Err(EngineError::Loss(e));
        }
        if let Some(r) = (0..size).find(|&r| self.gathered[r * (HEADER + p) + 3] != 0.0) {
            return Err(EngineError::backend(DistError::Backend {
                rank,
                message: format!(
                    "rank {r} could not compute its share's loss (it reports why); every rank stops"
                ),
            }));
        }
        let n: f64 = (0..size).map(|r| self.gathered[r * (HEADER + p)]).sum();
        let (mut loss, mut correct) = (0.0f64, 0.0f64);
        for r in 0..size {
            let c = &self.gathered[r * (HEADER + p)..(r + 1) * (HEADER + p)];
            loss += c[0] / n * c[1];
            correct += c[2];
        }
        // The global gradient, in rank order, in f64: the same on every rank.
        for (i, g) in self.grads.iter_mut().enumerate() {
            let mut sum = 0.0f64;
            for r in 0..size {
                let c = &self.gathered[r * (HEADER + p)..(r + 1) * (HEADER + p)];
                if c[0] > 0.0 {
                    sum += c[0] / n * c[HEADER + i];
                }
            }
            *g = sum as f32;
        }
        let correct = correct as usize;
        // Every rank sees the same values: all update, or all stop before.
        let loss = update_if_finite(
            &spec.sgd,
            opt,
            model.params_mut(),
            &self.grads,
            spec.lr,
            loss,
        );
        if !loss.is_finite() {
            return Ok(StepOutcome { loss, correct });
        }
        if size > 1 && !sync {
            // Rank 0's running statistics on every rank (DDP's buffers);
            // synchronised BatchNorm updated them alike on every rank.
            let state: Vec<f64> = model.state().iter().map(|&v| v as f64).collect();
            let mut all = vec![0.0; size * state.len()];
            self.all_gather(&state, &mut all)?;
            for (s, &v) in model.state_mut().iter_mut().zip(&all[..state.len()]) {
                *s = v as f32;
            }
        }
        Ok(StepOutcome { loss, correct })
    }

    fn logits(&mut self, model: &mut M, picks: &[Pick]) -> Result<Array2<f32>, EngineError> {
        let (_, size) = self.rank_and_size();
        let (begin, end) = self.share(picks.len());
        let k = M::CLASSES;
        // Every rank sends as many rows as the largest share.
        let rows = picks.len().div_ceil(size);
        let mut local = vec![0.0f64; rows * k];
        if end > begin {
            let (x, _) = self.kept(Split::Test)?.batch(&picks[begin..end])?;
            let logits = model.forward(x.view(), Mode::Eval)?;
            for (d, &v) in local.iter_mut().zip(logits.iter()) {
                *d = v as f64;
            }
        }
        let mut all = vec![0.0f64; size * rows * k];
        self.all_gather(&local, &mut all)?;
        let mut out = Array2::<f32>::zeros((picks.len(), k));
        for r in 0..size {
            let (b, e) = share(picks.len(), r, size);
            for (i, row) in (b..e).enumerate() {
                for j in 0..k {
                    out[[row, j]] = all[(r * rows + i) * k + j] as f32;
                }
            }
        }
        Ok(out)
    }
}
