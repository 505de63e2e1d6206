//! Turns a dataset record into a model-ready sample: read the image, apply the configured
//! pipeline, carry the boxes along (Detectron2's `DatasetMapper`).

use std::path::PathBuf;

use image::RgbImage;

use super::augmentation::{
    crop, hflip, pad_to_square, photometric_distort, random_resized_crop_roi, random_square_crop,
    resize, shortest_edge_size, Instances,
};
use super::catalog::{ClassLabel, DataError, DatasetRecord};
use super::rng::SampleRng;
use super::transforms::resize_short_center_crop;
use crate::config::{Augmentation, Config, RandomFlip};

#[derive(Debug, Clone, PartialEq)]
pub enum Pipeline {
    /// RetinaFace/SSD: random square crop, photometric distortion, flip, resize to `size`.
    Ssd {
        size: u32,
        crop_scales: Vec<f64>,
        photometric: bool,
        flip: bool,
    },
    /// Detectron2: ResizeShortestEdge (short side drawn from `short_sizes`) + RandomFlip.
    ShortestEdge {
        short_sizes: Vec<usize>,
        max_size: usize,
        flip: bool,
    },
    /// Evaluation: ResizeShortestEdge to one size; `short == 0` keeps the original size.
    Test { short: usize, max_size: usize },
    /// torchvision's classification training: RandomResizedCrop to `size` + RandomFlip.
    RandomResizedCrop {
        size: u32,
        scale: [f64; 2],
        ratio: [f64; 2],
        flip: bool,
    },
    /// torchvision's classification evaluation: Resize(`short`) + CenterCrop(`crop`).
    CenterCrop { short: usize, crop: usize },
}

/// A mapped image with its boxes in the mapped image's pixels.
#[derive(Debug, Clone)]
pub struct Sample {
    pub image: RgbImage,
    pub instances: Instances,
    pub image_id: String,
    pub file_name: PathBuf,
    /// (width, height) of the image as stored.
    pub original_size: (u32, u32),
    /// Mapped size / original size per axis: divide predictions by it to get back to the
    /// original image (meaningful for the test pipeline; crops make it local in training).
    pub scale: (f32, f32),
    /// The class (or classes), for classification.
    pub label: Option<ClassLabel>,
    /// The sample's seed in the training stream (0 in evaluation), for the model's own
    /// randomness (dropout).
    pub seed: u64,
}

#[derive(Debug, Clone)]
pub struct DatasetMapper {
    pub pipeline: Pipeline,
    /// Fill of pixels that a pad adds (the pixel mean, so it normalises to 0).
    pub fill: [u8; 3],
    /// Evaluation's pipeline for images with a class label (classification datasets):
    /// torchvision's Resize + CenterCrop, whatever the detection test sizes say.
    pub classify_test: Option<Pipeline>,
}

impl DatasetMapper {
    pub fn from_config(cfg: &Config, is_train: bool) -> Result<Self, DataError> {
        let i = &cfg.input;
        let flip = i.random_flip == RandomFlip::Horizontal;
        let pipeline = if !is_train {
            Pipeline::Test {
                short: i.min_size_test,
                max_size: i.max_size_test,
            }
        } else {
            match i.augmentation {
                Augmentation::Ssd => {
                    if i.crop_scales.is_empty()
                        || i.crop_scales.iter().any(|&s| !(s > 0.0 && s <= 1.0))
                    {
                        return Err(DataError::new(format!(
                            "INPUT.CROP_SCALES must be fractions in (0, 1], got {:?}",
                            i.crop_scales
                        )));
                    }
                    Pipeline::Ssd {
                        size: i.train_size as u32,
                        crop_scales: i.crop_scales.clone(),
                        photometric: i.photometric,
                        flip,
                    }
                }
                Augmentation::RandomResizedCrop => {
                    let pair = |key: &str, v: &[f64]| -> Result<[f64; 2], DataError> {
                        match v {
                            [lo, hi] if lo <= hi => Ok([*lo, *hi]),
                            _ => Err(DataError::new(format!(
                                "INPUT.{key} must be [min, max] with min <= max, got {v:?}"
                            ))),
                        }
                    };
                    Pipeline::RandomResizedCrop {
                        size: i.crop_size as u32,
                        scale: pair("RRC_SCALE", &i.rrc_scale)?,
                        ratio: pair("RRC_RATIO", &i.rrc_ratio)?,
                        flip,
                    }
                }
                Augmentation::ResizeShortestEdge => {
                    if i.min_size_train.is_empty() {
                        return Err(DataError::new("INPUT.MIN_SIZE_TRAIN must not be empty"));
                    }
                    Pipeline::ShortestEdge {
                        short_sizes: i.min_size_train.clone(),
                        max_size: i.max_size_train,
                        flip,
                    }
                }
            }
        };
        let fill = [0, 1, 2].map(|k| {
            cfg.model
                .pixel_mean
                .get(k)
                .copied()
                .unwrap_or(0.0)
                .round()
                .clamp(0.0, 255.0) as u8
        });
        let classify_test = if is_train {
            None
        } else if i.crop_size <= i.resize_short {
            Some(Pipeline::CenterCrop {
                short: i.resize_short,
                crop: i.crop_size,
            })
        } else if cfg.model.meta_architecture == "Classifier" {
            return Err(DataError::new(format!(
                "INPUT.CROP_SIZE {} is larger than INPUT.RESIZE_SHORT {}: the center crop \
                 would not fit",
                i.crop_size, i.resize_short
            )));
        } else {
            None
        };
        Ok(Self {
            pipeline,
            fill,
            classify_test,
        })
    }

    /// Reads and decodes the record's image; the error names the file.
    pub fn read_image(rec: &DatasetRecord) -> Result<RgbImage, DataError> {
        if let Some(e) = rec.embedded {
            return crate::data::image_io::read_embedded(&rec.file_name, e);
        }
        let img = crate::data::image_io::read_image(&rec.file_name)?.into_rgb8();
        if rec.width > 0 && (rec.width, rec.height) != img.dimensions() {
            return Err(DataError::new(format!(
                "{} is {}x{} but its annotation says {}x{}",
                rec.file_name.display(),
                img.width(),
                img.height(),
                rec.width,
                rec.height
            )));
        }
        Ok(img)
    }

    pub fn map(&self, rec: &DatasetRecord, rng: &mut SampleRng) -> Result<Sample, DataError> {
        let img = Self::read_image(rec)?;
        Ok(self.apply(img, rec, rng))
    }

    /// The pipeline on an already decoded image.
    pub fn apply(&self, img: RgbImage, rec: &DatasetRecord, rng: &mut SampleRng) -> Sample {
        let original_size = img.dimensions();
        let mut inst = Instances {
            boxes: rec.annotations.iter().map(|a| a.bbox).collect(),
            classes: rec.annotations.iter().map(|a| a.category_id).collect(),
            ignore: rec.annotations.iter().map(|a| a.ignore).collect(),
        };
        let pipeline = match (&self.classify_test, &rec.label) {
            (Some(p), Some(_)) => p,
            _ => &self.pipeline,
        };
        let img = match pipeline {
            Pipeline::Ssd {
                size,
                crop_scales,
                photometric,
                flip,
            } => {
                let (w, h) = img.dimensions();
                let mut img = match random_square_crop(w, h, &inst, crop_scales, rng) {
                    Some(roi) => crop(&img, &mut inst, roi),
                    None => pad_to_square(&img, self.fill),
                };
                if *photometric {
                    photometric_distort(&mut img, rng);
                }
                if *flip && rng.coin() {
                    img = hflip(&img, &mut inst);
                }
                resize(&img, &mut inst, *size, *size)
            }
            Pipeline::ShortestEdge {
                short_sizes,
                max_size,
                flip,
            } => {
                let short = short_sizes[rng.below(short_sizes.len())];
                let (nw, nh) = shortest_edge_size(img.width(), img.height(), short, *max_size);
                let mut img = resize(&img, &mut inst, nw, nh);
                if *flip && rng.coin() {
                    img = hflip(&img, &mut inst);
                }
                img
            }
            Pipeline::RandomResizedCrop {
                size,
                scale,
                ratio,
                flip,
            } => {
                let (w, h) = img.dimensions();
                let roi = random_resized_crop_roi(w, h, *scale, *ratio, rng);
                let img = crop(&img, &mut inst, roi);
                let img = resize(&img, &mut inst, *size, *size);
                if *flip && rng.coin() {
                    hflip(&img, &mut inst)
                } else {
                    img
                }
            }
            Pipeline::CenterCrop { short, crop: side } => {
                // Cannot fail: `from_config` checked that the crop fits the resized image.
                resize_short_center_crop(&img, *short, *side)
                    .unwrap_or_else(|_| resize(&img, &mut inst, *side as u32, *side as u32))
            }
            Pipeline::Test { short, max_size } => {
                if *short == 0 {
                    img
                } else {
                    let (nw, nh) = shortest_edge_size(img.width(), img.height(), *short, *max_size);
                    resize(&img, &mut inst, nw, nh)
                }
            }
        };
        let scale = (
            img.width() as f32 / original_size.0 as f32,
            img.height() as f32 / original_size.1 as f32,
        );
        Sample {
            image: img,
            instances: inst,
            image_id: rec.image_id.clone(),
            file_name: rec.file_name.clone(),
            original_size,
            scale,
            label: rec.label.clone(),
            seed: 0,
        }
    }
}
