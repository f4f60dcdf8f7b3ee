//! A dataset in device memory ([`DeviceDataset`]) and the input batch built
//! from it on the device ([`GpuModel::stage_batch`]): a step then uploads
//! only its picks (image index, crop shift, flip), and the generated
//! staging kernel makes the batch exactly as the CPU pipeline does.

use super::{Backend, GpuError, GpuModel, GpuNetwork};
use crate::data::{Augment, Dataset, Transform};
use crate::model::Model;
use crate::{Float, Mode};
use ndarray::Array2;

/// Entries of the normalisation table per channel: one per `u8` value, as
/// `Transform::lut` lays it out and `kernels/augment.cuh` reads it
/// (`lut[c * 256 + v]`).
const LUT_PER_CHANNEL: usize = 256;

/// A dataset in device memory ([`GpuModel::upload_dataset`]): its images as
/// stored (u8), its labels and the normalisation table.
pub struct DeviceDataset<Buf> {
    images: Buf,
    labels: Buf,
    lut: Buf,
    len: usize,
}

impl<Buf> DeviceDataset<Buf> {
    /// Images in the dataset.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds no image.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl<T: Float, M: GpuNetwork + Model<T>, B: Backend<T>> GpuModel<M, B, T> {
    /// Puts `ds` in device memory (its images as stored, u8, and its
    /// labels) with `transform`'s normalisation, so that each training
    /// batch is then built on the device ([`GpuModel::stage_batch`]): a
    /// step uploads only its picks. 50,000 CIFAR images take 150 MiB.
    pub fn upload_dataset(
        &mut self,
        ds: &Dataset,
        transform: &Transform,
    ) -> Result<DeviceDataset<B::Buffer>, GpuError> {
        let shape = [ds.channels, ds.height, ds.width];
        let bad = |reason: String| GpuError::Dataset {
            network: M::NAME,
            reason,
        };
        if shape != M::INPUT {
            let [c, h, w] = M::INPUT;
            return Err(bad(format!(
                "the images of {} are {}x{}x{}, the network takes {c}x{h}x{w}",
                ds.source.display(),
                shape[0],
                shape[1],
                shape[2]
            )));
        }
        if let Some(&l) = ds.labels.iter().find(|&&l| l as usize >= M::CLASSES) {
            return Err(bad(format!(
                "{} has label {l}, the network has {} classes",
                ds.source.display(),
                M::CLASSES
            )));
        }
        let lut = transform.lut();
        if lut.len() != LUT_PER_CHANNEL * ds.channels {
            return Err(bad(format!(
                "the normalisation has {} channel(s), the images {}",
                lut.len() / LUT_PER_CHANNEL,
                ds.channels
            )));
        }
        let size = std::mem::size_of::<T>();
        let mut images = self.backend.alloc(ds.pixels.len().div_ceil(size).max(1))?;
        self.backend.upload_bytes(&mut images, &ds.pixels)?;
        let ints: Vec<i32> = ds.labels.iter().map(|&l| l as i32).collect();
        let mut labels = self.backend.alloc((4 * ints.len()).div_ceil(size).max(1))?;
        self.backend.upload_i32(&mut labels, &ints)?;
        let mut table = self.backend.alloc(lut.len())?;
        let lut_t: Vec<T> = lut.iter().map(|&v| T::from_f64c(v as f64)).collect();
        self.backend.upload(&mut table, 0, &lut_t)?;
        Ok(DeviceDataset {
            images,
            labels,
            lut: table,
            len: ds.len,
        })
    }

    /// Builds the next input batch and its labels on the device from
    /// `data`: image `i` is `data`'s image `picks[i].0` with the crop shift
    /// and flip `picks[i].1`, normalised, exactly as the CPU pipeline
    /// (`Transform::apply`) makes it. [`GpuModel::train_step_staged`] then
    /// trains on it.
    pub fn stage_batch(
        &mut self,
        data: &DeviceDataset<B::Buffer>,
        picks: &[(usize, Augment)],
    ) -> Result<(), GpuError> {
        let n = picks.len();
        if n == 0 || n > self.capacity {
            return Err(GpuError::Batch {
                network: M::NAME,
                capacity: self.capacity,
                found: n,
            });
        }
        let mut ints = Vec::with_capacity(4 * n);
        for &(index, aug) in picks {
            if index >= data.len {
                return Err(GpuError::Dataset {
                    network: M::NAME,
                    reason: format!("pick {index} is outside the dataset of {} images", data.len),
                });
            }
            // Shifts beyond the image read only padding; clamped to keep
            // the kernel's index arithmetic in range.
            let [_, h, w] = M::INPUT;
            let dy = aug.dy.clamp(-(h as isize), h as isize) as i32;
            let dx = aug.dx.clamp(-(w as isize), w as isize) as i32;
            ints.extend([index as i32, dy, dx, aug.flip as i32]);
        }
        self.backend.upload_i32(&mut self.picks, &ints)?;
        let mut args = self.args(n, Mode::Train);
        args.images = self.backend.address(&data.images);
        args.dataset_labels = self.backend.address(&data.labels);
        args.lut = self.backend.address(&data.lut);
        // The program's own launch (GpuProgram::stage_input, checked in
        // GpuModel::new): its kernel, block and item count as the emitter
        // chose them.
        let l = self.stage_input;
        self.backend.launch(l.kernel, l.blocks(n), l.block, &args)?;
        self.staged = Some(n);
        Ok(())
    }

    /// Inference-mode logits `[n, classes]` of the batch
    /// [`GpuModel::stage_batch`] built (used once, as by
    /// [`GpuModel::train_step_staged`]).
    pub fn infer_staged(&mut self) -> Result<Array2<T>, GpuError> {
        let n = self.staged.take().ok_or(GpuError::Dataset {
            network: M::NAME,
            reason: "no batch is staged: call stage_batch first".into(),
        })?;
        self.forward_on_device(n, Mode::Eval)
    }
}
