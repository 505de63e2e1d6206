//! A built model: a meta-architecture with its parameters, and the model's own input and
//! output handling (Detectron2's `preprocess_image` and `_postprocess`), so that
//! training, evaluation and every tool go from pixels to detections in original-image
//! pixels through one path.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor, Var};

use super::device::parse_device;
use super::meta_arch::{MetaArch, Outputs, META_ARCH_REGISTRY};
use crate::checkpoint::{self, LoadReport};
use crate::config::Config;
use crate::config::ConfigError;
use crate::error::{Error, Result};
use crate::layers::params::{is_buffer, ParamStore};
use crate::run_bail as bail;
use crate::structures::{Batch, InstanceDetections, LossMap, ModelInput, Targets};

/// What inference gives for one image.
#[derive(Debug, Clone)]
pub enum Prediction {
    /// A detector's boxes (XYXY), scores and classes, in the image's output pixels.
    Detections(InstanceDetections),
    /// A classifier's class scores before softmax.
    Logits(Vec<f32>),
}

/// A built model with its parameters.
pub struct Model {
    pub arch: Box<dyn MetaArch>,
    pub params: Arc<ParamStore>,
    pub device: Device,
    pub(super) pixel_mean: Tensor,
    pub(super) pixel_std: Tensor,
}

impl Model {
    /// Parameters the optimizer updates: not buffers, not under a frozen prefix.
    pub fn trainable_vars(&self) -> Vec<(String, Var)> {
        let frozen = self.arch.frozen_prefixes();
        self.params
            .vars()
            .into_iter()
            .filter(|(n, _)| !is_buffer(n) && !frozen.iter().any(|p| n.starts_with(p.as_str())))
            .collect()
    }

    /// Loads the checkpoint `spec` (a path or an `https://` URL) into the parameters,
    /// reporting what did not match.
    pub fn load_weights(&self, spec: &str) -> Result<LoadReport> {
        let path = checkpoint::resolve(spec)?;
        let tensors = checkpoint::read_checkpoint(&path)?;
        Ok(checkpoint::load_state_dict(&self.params, &tensors)?)
    }

    /// The inference copy: norms folded into the convolutions, fused kernels, the same
    /// parameters. Fuse again after the weights change.
    pub fn fused(&self) -> Result<Model> {
        Ok(Model {
            arch: self.arch.fused()?,
            params: self.params.clone(),
            device: self.device.clone(),
            pixel_mean: self.pixel_mean.clone(),
            pixel_std: self.pixel_std.clone(),
        })
    }

    /// Images (3, H, W) in 0..255 to the network's input: each normalised with
    /// `(x - PIXEL_MEAN) / PIXEL_STD` on the model's device, then padded bottom and
    /// right with zeros to a common size that is a multiple of the size divisibility,
    /// and stacked. Returns the batch tensor and each image's unpadded (height, width).
    pub fn preprocess_image(&self, images: &[Tensor]) -> Result<(Tensor, Vec<(usize, usize)>)> {
        if images.is_empty() {
            bail!("no images to preprocess");
        }
        let channels = self.pixel_mean.dim(1)?;
        let mut sizes = Vec::with_capacity(images.len());
        for (i, img) in images.iter().enumerate() {
            let (c, h, w) = img.dims3().map_err(|_| {
                Error::run(format!(
                    "image {i}: expected (channels, height, width), got {:?}",
                    img.dims()
                ))
            })?;
            if c != channels {
                bail!("image {i}: {c} channels, but MODEL.PIXEL_MEAN has {channels} values");
            }
            if h == 0 || w == 0 {
                bail!("image {i}: empty ({h}x{w})");
            }
            sizes.push((h, w));
        }
        let div = self.arch.size_divisibility().max(1);
        let hp = sizes.iter().map(|s| s.0).max().unwrap_or(0).div_ceil(div) * div;
        let wp = sizes.iter().map(|s| s.1).max().unwrap_or(0).div_ceil(div) * div;
        let (mean, std) = (self.pixel_mean.squeeze(0)?, self.pixel_std.squeeze(0)?);
        let padded = images
            .iter()
            .zip(&sizes)
            .map(|(img, &(h, w))| {
                img.to_device(&self.device)?
                    .to_dtype(DType::F32)?
                    .broadcast_sub(&mean)?
                    .broadcast_div(&std)?
                    .pad_with_zeros(1, 0, hp - h)?
                    .pad_with_zeros(2, 0, wp - w)
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok((Tensor::stack(&padded, 0)?, sizes))
    }

    fn preprocess_inputs(&self, inputs: &[ModelInput]) -> Result<(Tensor, Vec<(usize, usize)>)> {
        let images: Vec<Tensor> = inputs.iter().map(|i| i.image.clone()).collect();
        self.preprocess_image(&images)
    }

    /// The network's batch for `inputs`, with their targets when every input has them.
    pub fn batch(&self, inputs: &[ModelInput]) -> Result<Batch> {
        let (images, image_sizes) = self.preprocess_inputs(inputs)?;
        // Labels first: a classification input carries no boxes, but an empty box list.
        let singles: Option<Vec<u32>> = inputs
            .iter()
            .map(|i| i.label.as_ref()?.single().map(|l| l as u32))
            .collect();
        let multis: Option<Vec<Vec<usize>>> = inputs
            .iter()
            .map(|i| i.label.as_ref().map(|l| l.classes()))
            .collect();
        let targets = if let Some(labels) = singles {
            Some(Targets::Labels(Tensor::new(
                labels.as_slice(),
                &self.device,
            )?))
        } else if let Some(sets) = multis {
            Some(Targets::MultiLabels(sets))
        } else if inputs.iter().all(|i| i.instances.is_some()) {
            Some(Targets::Instances(
                inputs.iter().filter_map(|i| i.instances.clone()).collect(),
            ))
        } else {
            None
        };
        let seeds = inputs.iter().map(|i| i.seed).collect::<Option<Vec<_>>>();
        Ok(Batch {
            images,
            targets,
            image_sizes,
            seeds: seeds.unwrap_or_default(),
        })
    }

    /// Training: the named losses of a batch of inputs that all carry targets.
    pub fn losses(&self, inputs: &[ModelInput]) -> Result<LossMap> {
        Ok(self.forward_train(inputs)?.losses)
    }

    /// Training: the losses and the training statistics (`Outputs::scalars`).
    pub fn forward_train(&self, inputs: &[ModelInput]) -> Result<Outputs> {
        let batch = self.batch(inputs)?;
        if batch.targets.is_none() {
            bail!("training needs targets (instances or labels) on every input");
        }
        Ok(self.arch.forward(&batch, true)?)
    }

    /// Inference on a batch of inputs: per image, detections rescaled to its
    /// `output_size`, or a classifier's logits. Call it on the [`fused`](Self::fused) copy
    /// for speed; it gives the same results up to rounding.
    pub fn inference(&self, inputs: &[ModelInput]) -> Result<Vec<Prediction>> {
        let (images, image_sizes) = self.preprocess_inputs(inputs)?;
        let batch = Batch {
            images,
            targets: None,
            image_sizes,
            seeds: Vec::new(),
        };
        let out = self.arch.forward(&batch, false)?;
        postprocess(out, inputs, &batch.image_sizes)
    }
}

impl Model {
    /// The network's outputs before post-processing (see `MetaArch::raw_outputs`) for a
    /// batch of inputs, as a raw ONNX export computes them.
    pub fn raw_outputs(&self, inputs: &[ModelInput]) -> Result<Vec<(String, Tensor)>> {
        let (images, _) = self.preprocess_inputs(inputs)?;
        Ok(self.arch.raw_outputs(&images)?)
    }
}

/// The network's outputs per image, detections mapped from the batch's input pixels to
/// each input's output size.
fn postprocess(
    out: Outputs,
    inputs: &[ModelInput],
    input_sizes: &[(usize, usize)],
) -> Result<Vec<Prediction>> {
    if let Some(dets) = out.detections {
        if dets.len() != inputs.len() {
            bail!("{} detection sets for {} images", dets.len(), inputs.len());
        }
        return Ok(dets
            .into_iter()
            .zip(inputs.iter().zip(input_sizes))
            .map(|(mut d, (input, &size))| {
                if let Some(output) = input.output_size {
                    d.rescale(size, output);
                }
                Prediction::Detections(d)
            })
            .collect());
    }
    if let Some(logits) = out.logits {
        let rows: Vec<Vec<f32>> = crate::ops::host::to_vec2(&logits.to_dtype(DType::F32)?)?;
        return Ok(rows.into_iter().map(Prediction::Logits).collect());
    }
    bail!("the model returned neither detections nor logits")
}

/// Builds `MODEL.META_ARCHITECTURE` on `MODEL.DEVICE` with initial weights drawn from
/// `seed`, then loads `MODEL.WEIGHTS` if set (the report says what did not match).
pub fn build_model(cfg: &Config, seed: u64) -> Result<(Model, Option<LoadReport>)> {
    let device = parse_device(&cfg.model.device)?;
    if cfg.model.pixel_mean.len() != cfg.model.pixel_std.len() {
        return Err(ConfigError::Invalid(
            "MODEL.PIXEL_MEAN and MODEL.PIXEL_STD must have the same length".into(),
        )
        .into());
    }
    if cfg.model.pixel_std.iter().any(|&s| s <= 0.0) {
        return Err(ConfigError::Invalid("MODEL.PIXEL_STD values must be positive".into()).into());
    }
    let params = Arc::new(ParamStore::new(seed));
    let vb = params.var_builder(DType::F32, &device);
    let builder = META_ARCH_REGISTRY.get_for(
        &cfg.located("MODEL.META_ARCHITECTURE"),
        &cfg.model.meta_architecture,
    )?;
    let arch = builder(cfg, vb)?;
    let channels = cfg.model.pixel_mean.len();
    let to_t = |v: &[f64]| -> candle_core::Result<Tensor> {
        Tensor::from_vec(
            v.iter().map(|&x| x as f32).collect::<Vec<_>>(),
            (1, channels, 1, 1),
            &device,
        )
    };
    let model = Model {
        arch,
        params,
        pixel_mean: to_t(&cfg.model.pixel_mean)?,
        pixel_std: to_t(&cfg.model.pixel_std)?,
        device,
    };
    let report = if cfg.model.weights.is_empty() {
        None
    } else {
        Some(model.load_weights(&cfg.model.weights)?)
    };
    Ok((model, report))
}
