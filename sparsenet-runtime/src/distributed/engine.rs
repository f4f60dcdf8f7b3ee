//! [`DataParallel`]: the CPU path's training steps shared by the ranks of a
//! [`Collective`].

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use ndarray::{Array2, Array4, ArrayView4};

use super::collective::Collective;
use super::sync_bn::{with_sync, Gather};
use crate::data::build_images;
use crate::data::{Augment, Dataset, Transform};
use crate::train::engine::{mix, train_pass};
use crate::train::{Engine, SgdState, TrainConfig, TrainError};
use crate::{Float, Mode, Model, NetworkSpec};

/// A training [`Engine`] for the CPU path whose steps are shared by the
/// ranks of `C` (see the [module documentation](super) for what a step
/// computes). Give it to [`Trainer::new`](crate::train::Trainer::new) on
/// every rank, with [`TrainConfig::primary`] true on rank 0 only.
///
/// It keeps the datasets the trainer attaches and builds its share of each
/// batch from the picks the trainer hands it (the host loader's order and
/// augmentation), so every rank sees the one-process run's global batches.
/// Evaluation is shared too: each rank computes the logits of its share of
/// every evaluation batch and the ranks gather them.
///
/// BatchNorm is per rank by default; [`DataParallel::sync_batch_norm`]
/// synchronises it ([`super::sync_bn`]).
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

    fn all_gather(&self, local: &[f64], out: &mut [f64]) -> Result<(), TrainError> {
        self.comm
            .borrow_mut()
            .all_gather(local, out)
            .map_err(|e| TrainError::Config(e.to_string()))
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
    fn batch(&self, picks: &[(usize, Augment)]) -> (Array4<f32>, Vec<usize>) {
        let labels = picks.iter().map(|&(i, _)| self.data.label(i)).collect();
        (build_images(&self.data, &self.lut, picks), labels)
    }
}

impl<M: Model<f32>, C: Collective + 'static> Engine<M> for DataParallel<C> {
    fn step(
        &mut self,
        _: &mut M,
        _: &mut SgdState<f32>,
        _: &TrainConfig,
        _: ArrayView4<'_, f32>,
        _: &[usize],
        _: f64,
        _: u64,
    ) -> Result<(f64, usize), TrainError> {
        Err(TrainError::Config(
            "a data-parallel engine builds its share of each batch itself: attach the training data (step_picks)".into(),
        ))
    }

    fn logits(
        &mut self,
        model: &mut M,
        images: ArrayView4<'_, f32>,
    ) -> Result<Array2<f32>, TrainError> {
        Ok(model.forward(images, Mode::Eval)?)
    }

    fn sync(&mut self, _: &mut M, _: &mut SgdState<f32>) -> Result<(), TrainError> {
        Ok(())
    }

    fn attach_training_data(
        &mut self,
        data: &Arc<Dataset>,
        transform: &Transform,
    ) -> Result<(), TrainError> {
        self.train = Some(Kept::new(data, transform));
        Ok(())
    }

    fn attach_eval_data(
        &mut self,
        data: &Arc<Dataset>,
        transform: &Transform,
    ) -> Result<(), TrainError> {
        self.test = Some(Kept::new(data, transform));
        Ok(())
    }

    fn takes_picks(&self) -> bool {
        self.train.is_some()
    }

    fn eval_takes_picks(&self) -> bool {
        self.test.is_some()
    }

    fn step_picks(
        &mut self,
        model: &mut M,
        opt: &mut SgdState<f32>,
        cfg: &TrainConfig,
        picks: &[(usize, Augment)],
        lr: f64,
        global_step: u64,
    ) -> Result<(f64, usize), TrainError> {
        let (rank, size) = self.rank_and_size();
        let (begin, end) = self.share(picks.len());
        let p = M::PARAMETERS;
        let sync = self.sync_bn && size > 1;
        if sync && picks.len() < size {
            // Decided alike on every rank: none enters the exchange.
            return Err(TrainError::Config(format!(
                "synchronised BatchNorm over {size} ranks needs at least one image per rank; the batch has {}",
                picks.len()
            )));
        }
        self.local.clear();
        self.local.resize(HEADER + p, 0.0);
        let mut failure = None;
        if end > begin {
            let kept = self.train.as_ref().expect("takes_picks: data attached");
            let (x, labels) = kept.batch(&picks[begin..end]);
            // Dropout masks differ per rank (a rank's own stream).
            model.reseed(mix(mix(cfg.seed, global_step), rank as u64));
            let smoothing = cfg.label_smoothing;
            let grads = &mut self.grads;
            let mut pass = || train_pass(model, x.view(), &labels, smoothing, grads);
            let outcome = if sync {
                let comm = self.comm.clone();
                let gather: Box<Gather<'static>> =
                    Box::new(move |l: &[f64], o: &mut [f64]| comm.borrow_mut().all_gather(l, o));
                let weight = (end - begin) as f64 / picks.len() as f64;
                let (result, error) = with_sync(gather, size, weight, pass);
                if let Some(e) = error {
                    return Err(TrainError::Config(e.to_string()));
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
                Err(TrainError::Loss(e)) => {
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
            return Err(TrainError::Loss(e));
        }
        if let Some(r) = (0..size).find(|&r| self.gathered[r * (HEADER + p) + 3] != 0.0) {
            return Err(TrainError::Config(format!(
                "rank {r} could not compute its share's loss (it reports why); every rank stops"
            )));
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
        if !loss.is_finite() || self.grads.iter().any(|g| !g.is_finite()) {
            // Every rank sees the same values: all stop before updating.
            return Ok((if loss.is_finite() { f64::NAN } else { loss }, correct));
        }
        cfg.sgd.step(opt, model.params_mut(), &self.grads, lr);
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
        Ok((loss, correct))
    }

    fn logits_picks(
        &mut self,
        model: &mut M,
        picks: &[(usize, Augment)],
    ) -> Result<Array2<f32>, TrainError> {
        let (_, size) = self.rank_and_size();
        let (begin, end) = self.share(picks.len());
        let k = M::CLASSES;
        // Every rank sends as many rows as the largest share.
        let rows = picks.len().div_ceil(size);
        let mut local = vec![0.0f64; rows * k];
        if end > begin {
            let kept = self.test.as_ref().expect("eval_takes_picks: data attached");
            let (x, _) = kept.batch(&picks[begin..end]);
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
