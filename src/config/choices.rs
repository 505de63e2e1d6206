//! The enumerated values of the config tree.

use super::choice::Choice;
use crate::layers::NormKind;
use crate::ops::Activation;
use crate::{config_choice, impl_choice};

impl Choice for Activation {
    const SPELLINGS: &'static [(&'static str, Self)] = &[
        ("ReLU", Self::ReLU),
        ("relu", Self::ReLU),
        ("ReLU6", Self::ReLU6),
        ("relu6", Self::ReLU6),
        ("Mish", Self::Mish),
        ("mish", Self::Mish),
        ("Identity", Self::Identity),
        ("none", Self::Identity),
    ];
}
impl_choice!(Activation);

impl Choice for NormKind {
    const SPELLINGS: &'static [(&'static str, Self)] = &[
        ("BN", Self::BN),
        ("FrozenBN", Self::FrozenBN),
        ("SyncBN", Self::SyncBN),
        ("NaiveSyncBN", Self::SyncBN),
    ];
}
impl_choice!(NormKind);

config_choice! {
    /// FPN levels above the last input feature.
    pub enum TopBlock {
        None = "none",
        /// p6 = p5 subsampled by 2 (Detectron2's `LastLevelMaxPool`).
        LastLevelMaxPool = "LastLevelMaxPool",
        /// p6 = conv3x3/2(res5), p7 = conv3x3/2(relu(p6)) (RetinaNet's `LastLevelP6P7`).
        P6P7 = "P6P7" | "LastLevelP6P7",
    }
}

config_choice! {
    /// SSDLite's classification loss.
    pub enum ClsLoss {
        /// Softmax cross-entropy with hard negative mining.
        CrossEntropy = "ce",
        /// Sigmoid focal loss.
        Focal = "focal",
    }
}

config_choice! {
    /// A box regression loss.
    pub enum BoxLossType {
        /// Smooth-L1 on encoded deltas (beta 0 is L1).
        SmoothL1 = "smooth_l1",
        /// 1 - GIoU of decoded boxes.
        GIoU = "giou",
    }
}

config_choice! {
    /// How ROI features are pooled.
    pub enum PoolerType {
        /// ROIAlign with half-pixel alignment (Detectron2's `ROIAlignV2`).
        RoiAlignV2 = "ROIAlignV2",
        /// The original ROIAlign, without the half-pixel shift.
        RoiAlign = "ROIAlign",
    }
}

config_choice! {
    pub enum OptimizerName {
        Sgd = "SGD",
        AdamW = "AdamW",
    }
}

config_choice! {
    pub enum LrSchedulerName {
        WarmupMultiStep = "WarmupMultiStepLR",
        WarmupCosine = "WarmupCosineLR",
        /// PyTorch's `ReduceLROnPlateau` on `TEST.VAL_METRIC` (with warmup), stepped at
        /// every evaluation.
        ReduceLrOnPlateau = "ReduceLROnPlateau",
    }
}

config_choice! {
    /// A classifier's training loss.
    pub enum ClassifierLoss {
        /// Softmax cross-entropy (one class per image), with `LABEL_SMOOTHING`.
        CrossEntropy = "ce",
        /// Binary cross-entropy on each class's logit (multi-label).
        Bce = "bce",
        /// Sigmoid focal loss on each class's logit (multi-label, many easy negatives).
        Focal = "focal",
    }
}

config_choice! {
    /// How training draws records (Detectron2's `DATALOADER.SAMPLER_TRAIN`).
    pub enum SamplerName {
        /// Every record once per epoch, reshuffled each epoch.
        Training = "TrainingSampler",
        /// Records drawn with replacement, weighted by 1 / their class's image count.
        ClassBalanced = "ClassBalancedSampler",
        /// Images of rare categories repeated (LVIS), `DATALOADER.REPEAT_THRESHOLD`.
        RepeatFactor = "RepeatFactorTrainingSampler",
    }
}

config_choice! {
    /// Whether a higher or a lower validation metric is better.
    pub enum MetricMode {
        Max = "max",
        Min = "min",
    }
}

config_choice! {
    /// How `ReduceLROnPlateau` measures an improvement (PyTorch's `threshold_mode`).
    pub enum ThresholdMode {
        /// Better than `best * (1 + threshold)` (max) or `best * (1 - threshold)` (min).
        Rel = "rel",
        /// Better than `best + threshold` (max) or `best - threshold` (min).
        Abs = "abs",
    }
}

config_choice! {
    /// The unit of `TEST.EVAL_PERIOD`.
    pub enum PeriodUnit {
        Iterations = "iterations",
        /// Passes over `DATASETS.TRAIN` (its image count over `SOLVER.IMS_PER_BATCH`,
        /// rounded down).
        Epochs = "epochs",
    }
}

config_choice! {
    pub enum WarmupMethod {
        Linear = "linear",
        Constant = "constant",
    }
}

config_choice! {
    pub enum RandomFlip {
        Horizontal = "horizontal",
        None = "none",
    }
}

config_choice! {
    /// The training augmentation pipeline.
    pub enum Augmentation {
        /// RetinaFace/SSD-style random square crop, photometric distortion, flip, resize
        /// to `INPUT.TRAIN_SIZE`.
        Ssd = "ssd",
        /// Detectron2's ResizeShortestEdge + RandomFlip.
        ResizeShortestEdge = "resize_shortest_edge",
        /// torchvision's classification training: RandomResizedCrop to `INPUT.CROP_SIZE`
        /// (area fraction in `RRC_SCALE`, aspect ratio in `RRC_RATIO`) + RandomFlip.
        RandomResizedCrop = "random_resized_crop",
    }
}

config_choice! {
    /// Channel order of the pixels the model gets; images are decoded to RGB.
    pub enum InputFormat {
        Rgb = "RGB",
    }
}

config_choice! {
    /// The compute dtype of mixed-precision training (`SOLVER.AMP.DTYPE`).
    pub enum AmpDtype {
        /// IEEE half: 10 mantissa bits, range to 65504; needs loss scaling.
        Float16 = "float16" | "f16" | "fp16" | "half",
        /// bfloat16: f32's range with 7 mantissa bits; trains without loss scaling.
        BFloat16 = "bfloat16" | "bf16",
    }
}

impl AmpDtype {
    pub fn dtype(self) -> candle_core::DType {
        match self {
            Self::Float16 => candle_core::DType::F16,
            Self::BFloat16 => candle_core::DType::BF16,
        }
    }
}
