//! The config tree and its defaults, in the spirit of Detectron2's `config/defaults.py`.
//!
//! Pixel values are RGB in 0..255; the default mean/std are torchvision's ImageNet
//! normalisation scaled by 255, so ImageNet-pretrained weights see the inputs they expect.

use super::choices::{
    AmpDtype, Augmentation, BoxLossType, ClassifierLoss, ClsLoss, InputFormat, LrSchedulerName,
    MetricMode, OptimizerName, PeriodUnit, PoolerType, RandomFlip, SamplerName, ThresholdMode,
    TopBlock, WarmupMethod,
};
use super::origins::Origins;
use crate::config_group;
use crate::layers::NormKind;
use crate::ops::Activation;

fn s(v: &str) -> String {
    v.to_string()
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

config_group! {
    /// The whole configuration.
    pub struct Config {
        model: ModelConfig = ModelConfig::default(),
        input: InputConfig = InputConfig::default(),
        datasets: DatasetsConfig = DatasetsConfig::default(),
        dataloader: DataLoaderConfig = DataLoaderConfig::default(),
        solver: SolverConfig = SolverConfig::default(),
        test: TestConfig = TestConfig::default(),
        /// Where every run writes its config, logs, checkpoints and results.
        output_dir: String = s("./output"),
        /// Global seed; negative picks one from the clock (as Detectron2).
        seed: i64 = -1,
        /// Where each value was set (not a key).
        origins: Origins = Origins::default(),
    }
}

config_group! {
    pub struct ModelConfig {
        /// Name in the meta-architecture registry.
        meta_architecture: String = s("Classifier"),
        /// `cpu`, `cuda`, `cuda:N` or `metal`.
        device: String = s("cpu"),
        /// A checkpoint to load: `.pth` (zip or legacy), `.safetensors`; empty for random init.
        weights: String = s(""),
        pixel_mean: Vec<f64> = vec![123.675, 116.28, 103.53],
        pixel_std: Vec<f64> = vec![58.395, 57.12, 57.375],
        backbone: BackboneConfig = BackboneConfig::default(),
        mobilenet: MobileNetConfig = MobileNetConfig::default(),
        classifier: ClassifierConfig = ClassifierConfig::default(),
        fpn: FpnConfig = FpnConfig::default(),
        anchor_generator: AnchorGeneratorConfig = AnchorGeneratorConfig::default(),
        ssdlite: SsdLiteConfig = SsdLiteConfig::default(),
        rpn: RpnConfig = RpnConfig::default(),
        roi_heads: RoiHeadsConfig = RoiHeadsConfig::default(),
        roi_box_head: RoiBoxHeadConfig = RoiBoxHeadConfig::default(),
    }
}

config_group! {
    /// Faster R-CNN's region proposal network (Detectron2's `MODEL.RPN`); its anchors
    /// come from `MODEL.ANCHOR_GENERATOR` and need the same count on every level.
    pub struct RpnConfig {
        in_features: Vec<String> = strings(&["p2", "p3", "p4", "p5", "p6"]),
        /// Anchors below the first IoU are negatives, at or above the last positives.
        iou_thresholds: Vec<f64> = vec![0.3, 0.7],
        /// Anchors sampled per image for the losses, and the positive share at most.
        batch_size_per_image: usize = 256,
        positive_fraction: f64 = 0.5,
        bbox_reg_weights: Vec<f64> = vec![1.0, 1.0, 1.0, 1.0],
        /// `smooth_l1` (0 beta is L1) or `giou`.
        bbox_reg_loss_type: BoxLossType = BoxLossType::SmoothL1,
        smooth_l1_beta: f64 = 0.0,
        loss_weight: f64 = 1.0,
        /// Proposals kept per level before NMS, and per image after it.
        pre_nms_topk_train: usize = 2000,
        pre_nms_topk_test: usize = 1000,
        post_nms_topk_train: usize = 1000,
        post_nms_topk_test: usize = 1000,
        nms_thresh: f64 = 0.7,
        /// Proposals with a side below this (input pixels) are dropped.
        min_box_size: f64 = 0.0,
    }
}

config_group! {
    /// Faster R-CNN's second stage (Detectron2's `MODEL.ROI_HEADS`).
    pub struct RoiHeadsConfig {
        num_classes: usize = 80,
        in_features: Vec<String> = strings(&["p2", "p3", "p4", "p5"]),
        /// Proposals at or above the IoU are foreground, below background.
        iou_thresholds: Vec<f64> = vec![0.5],
        /// Proposals sampled per image for the losses, and the foreground share at most.
        batch_size_per_image: usize = 512,
        positive_fraction: f64 = 0.25,
        /// Ground-truth boxes join the proposals in training.
        proposal_append_gt: bool = true,
        score_thresh_test: f64 = 0.05,
        nms_thresh_test: f64 = 0.5,
    }
}

config_group! {
    /// The box head on pooled ROI features (Detectron2's `MODEL.ROI_BOX_HEAD`).
    pub struct RoiBoxHeadConfig {
        num_conv: usize = 0,
        conv_dim: usize = 256,
        /// `""`, `BN` or `FrozenBN` after each conv.
        norm: Option<NormKind> = None,
        num_fc: usize = 2,
        fc_dim: usize = 1024,
        pooler_resolution: usize = 7,
        /// Samples per bin side; 0 adapts to the box size.
        pooler_sampling_ratio: usize = 0,
        /// `ROIAlignV2` (half-pixel aligned) or `ROIAlign`.
        pooler_type: PoolerType = PoolerType::RoiAlignV2,
        bbox_reg_weights: Vec<f64> = vec![10.0, 10.0, 5.0, 5.0],
        /// `smooth_l1` (0 beta is L1) or `giou`.
        bbox_reg_loss_type: BoxLossType = BoxLossType::SmoothL1,
        smooth_l1_beta: f64 = 0.0,
        /// One box per proposal instead of one per class.
        cls_agnostic_bbox_reg: bool = false,
    }
}

config_group! {
    /// Detectron2's FPN: lateral 1x1 + output 3x3 convs on `IN_FEATURES`, top-down sum.
    pub struct FpnConfig {
        in_features: Vec<String> = strings(&["res3", "res4", "res5"]),
        out_channels: usize = 64,
        /// `""` (convs with bias), `BN` or `FrozenBN`.
        norm: Option<NormKind> = None,
        /// `none`, `LastLevelMaxPool` (p6 by subsampling) or `P6P7` (two stride-2 convs on res5).
        top_block: TopBlock = TopBlock::None,
        /// Output convs as depthwise 3x3 + pointwise 1x1, for light models.
        depthwise: bool = false,
    }
}

config_group! {
    pub struct AnchorGeneratorConfig {
        /// Anchor sizes (pixels) per level; one list for all levels is repeated.
        sizes: Vec<Vec<f64>> = vec![vec![16.0, 32.0], vec![64.0, 128.0], vec![256.0, 512.0]],
        /// Aspect ratios (h / w) per level; one list for all levels is repeated.
        aspect_ratios: Vec<Vec<f64>> = vec![vec![1.0]],
        /// Anchor centres at `(i + OFFSET) * stride`.
        offset: f64 = 0.5,
    }
}

config_group! {
    /// The SSDLite detector: depthwise-separable heads on FPN levels.
    pub struct SsdLiteConfig {
        num_classes: usize = 1,
        in_features: Vec<String> = strings(&["p3", "p4", "p5"]),
        /// Depthwise-separable blocks before each predictor.
        num_convs: usize = 1,
        /// One head for all levels (needs equal channels) or one per level.
        share_heads: bool = true,
        /// `BN`, `FrozenBN` or `""` in the head's blocks.
        norm: Option<NormKind> = Some(NormKind::BN),
        /// Anchors with IoU below the first threshold are background, at or above the
        /// last foreground, in between ignored.
        iou_thresholds: Vec<f64> = vec![0.35, 0.35],
        /// Each ground truth also gets its best anchors, matched to it (SSD's and
        /// RetinaFace's low-quality matches; Detectron2's RPN keeps such an anchor on the
        /// box it overlaps most).
        allow_low_quality_matches: bool = true,
        /// `ce` (softmax cross-entropy with hard negative mining) or `focal` (sigmoid).
        cls_loss: ClsLoss = ClsLoss::CrossEntropy,
        /// Negatives kept per positive by hard negative mining.
        neg_pos_ratio: f64 = 3.0,
        focal_alpha: f64 = 0.25,
        focal_gamma: f64 = 2.0,
        /// `smooth_l1` on encoded deltas or `giou` on decoded boxes.
        box_loss: BoxLossType = BoxLossType::SmoothL1,
        smooth_l1_beta: f64 = 0.1,
        box_loss_weight: f64 = 2.0,
        bbox_reg_weights: Vec<f64> = vec![10.0, 10.0, 5.0, 5.0],
        score_thresh_test: f64 = 0.05,
        topk_candidates_test: usize = 1000,
        nms_thresh_test: f64 = 0.4,
    }
}

config_group! {
    pub struct BackboneConfig {
        /// Name in the backbone registry.
        name: String = s("build_mobilenet_v2_backbone"),
        /// The network a wrapping backbone (`build_fpn_backbone`) builds under `bottom_up`.
        bottom_up: String = s("build_mobilenet_v2_backbone"),
        /// Number of leading `features` modules to freeze (0 trains everything).
        freeze_at: usize = 0,
    }
}

config_group! {
    pub struct MobileNetConfig {
        width_mult: f64 = 1.0,
        /// `BN` or `FrozenBN`.
        norm: NormKind = NormKind::BN,
        /// `ReLU6`, `ReLU`, `Mish` or `Identity`.
        activation: Activation = Activation::ReLU6,
        out_features: Vec<String> = strings(&["res2", "res3", "res4", "res5"]),
        /// 32 (torchvision's), 16 or 8: the later strides become dilations (DeepLabV3's
        /// output stride), for denser features with the same weights.
        output_stride: usize = 32,
    }
}

config_group! {
    pub struct ClassifierConfig {
        num_classes: usize = 1000,
        dropout: f64 = 0.2,
        /// `ce` (single-label), `bce` or `focal` (multi-label).
        loss: ClassifierLoss = ClassifierLoss::CrossEntropy,
        /// `ce`: the target puts this much mass uniformly on all classes (PyTorch's
        /// `label_smoothing`).
        label_smoothing: f64 = 0.0,
        /// `focal`: torchvision's `sigmoid_focal_loss` alpha and gamma.
        focal_alpha: f64 = 0.25,
        focal_gamma: f64 = 2.0,
    }
}

config_group! {
    pub struct InputConfig {
        /// Channel order fed to the model: images are decoded to `RGB`, the only value.
        format: InputFormat = InputFormat::Rgb,
        min_size_train: Vec<usize> = vec![640],
        max_size_train: usize = 1333,
        min_size_test: usize = 640,
        max_size_test: usize = 1333,
        /// `horizontal` or `none`.
        random_flip: RandomFlip = RandomFlip::Horizontal,
        /// Classification preprocessing: resize the short side, then center-crop.
        resize_short: usize = 256,
        crop_size: usize = 224,
        /// Training pipeline: `ssd` (RetinaFace/SSD-style random square crop, photometric
        /// distortion, flip, resize to `TRAIN_SIZE`) or `resize_shortest_edge`
        /// (Detectron2's ResizeShortestEdge + RandomFlip).
        augmentation: Augmentation = Augmentation::ResizeShortestEdge,
        /// Side of the square training image for the `ssd` pipeline.
        train_size: usize = 640,
        /// Crop side as a fraction of the image's short side, for the `ssd` pipeline.
        crop_scales: Vec<f64> = vec![0.3, 0.45, 0.6, 0.8, 1.0],
        /// SSD's photometric distortion (brightness, contrast, saturation, hue).
        photometric: bool = true,
        /// `random_resized_crop`: the crop's area as a fraction of the image, [min, max].
        rrc_scale: Vec<f64> = vec![0.08, 1.0],
        /// `random_resized_crop`: the crop's aspect ratio (width / height), [min, max].
        rrc_ratio: Vec<f64> = vec![3.0 / 4.0, 4.0 / 3.0],
    }
}

config_group! {
    pub struct DatasetsConfig {
        train: Vec<String> = vec![],
        test: Vec<String> = vec![],
        /// Folder that holds real datasets and the synthetic cache; `CANDLETRON_DATASETS`
        /// overrides it when set.
        root: String = s("datasets"),
        face_filter: FaceFilterConfig = FaceFilterConfig::default(),
        synthetic: SyntheticConfig = SyntheticConfig::default(),
        /// The embedded classification dataset (`synthetic_shapes_{train,val}`).
        synthetic_shapes: SyntheticShapesConfig = SyntheticShapesConfig::default(),
        /// COCO instances datasets load as multi-label classification: each image is
        /// labelled with the categories of its boxes.
        multi_label: bool = false,
        /// `folder:PATH@train` / `folder:PATH@val`: this share of each class's images
        /// (seeded by `FOLDER_SPLIT_SEED`) is the validation part.
        folder_val_fraction: f64 = 0.2,
        folder_split_seed: usize = 0,
    }
}

config_group! {
    pub struct SyntheticShapesConfig {
        seed: usize = 0,
        /// Images over the four classes, shared 8.1 : 4.1 : 3.1 : 5.5.
        num_train: usize = 2080,
        num_val: usize = 416,
        /// Side of the square images.
        image_size: usize = 96,
    }
}

config_group! {
    /// Which annotated faces training uses. Faces that fail are kept in the records,
    /// flagged as ignored: anchors on them are neither positive nor negative.
    pub struct FaceFilterConfig {
        /// Faces whose width or height (pixels, original image) is below this are ignored.
        min_size: f64 = 0.0,
        /// Ignore faces marked `invalid` in the WIDER annotation.
        ignore_invalid: bool = true,
    }
}

config_group! {
    /// The generated face dataset that the default config trains on.
    pub struct SyntheticConfig {
        seed: usize = 0,
        num_train: usize = 2000,
        num_val: usize = 300,
        /// Image width; heights vary with a random aspect ratio.
        image_size: usize = 640,
        max_faces: usize = 60,
        min_face_size: f64 = 6.0,
        max_face_size: f64 = 400.0,
    }
}

config_group! {
    pub struct DataLoaderConfig {
        /// Worker threads that decode and augment; 0 loads on the calling thread.
        num_workers: usize = 2,
        /// Batches prepared ahead of the training loop.
        prefetch: usize = 4,
        /// Drop training images without any (non-ignored) box.
        filter_empty_annotations: bool = true,
        /// `TrainingSampler`, `ClassBalancedSampler` or `RepeatFactorTrainingSampler`.
        sampler_train: SamplerName = SamplerName::Training,
        /// `RepeatFactorTrainingSampler`: categories in fewer than this fraction of the
        /// images are repeated, by `sqrt(threshold / frequency)` (`REPEAT_SQRT`).
        repeat_threshold: f64 = 0.0,
        repeat_sqrt: bool = true,
    }
}

config_group! {
    pub struct SolverConfig {
        /// `SGD` or `AdamW`.
        optimizer: OptimizerName = OptimizerName::Sgd,
        /// `WarmupMultiStepLR`, `WarmupCosineLR` or `ReduceLROnPlateau`.
        lr_scheduler_name: LrSchedulerName = LrSchedulerName::WarmupMultiStep,
        base_lr: f64 = 0.01,
        momentum: f64 = 0.9,
        nesterov: bool = false,
        weight_decay: f64 = 1e-4,
        /// Weight decay of norm layers and biases.
        weight_decay_norm: f64 = 0.0,
        ims_per_batch: usize = 16,
        max_iter: usize = 40000,
        steps: Vec<usize> = vec![30000],
        gamma: f64 = 0.1,
        warmup_iters: usize = 1000,
        warmup_factor: f64 = 0.001,
        /// `linear` or `constant`.
        warmup_method: WarmupMethod = WarmupMethod::Linear,
        checkpoint_period: usize = 5000,
        /// How many periodic checkpoints (`model_NNNNNNN`) to keep, newest first; older
        /// ones are deleted after each save (`model_final` is always kept). 0 keeps all.
        checkpoint_max_keep: usize = 0,
        /// Iterations between `metrics.json` lines and console progress lines.
        log_period: usize = 20,
        /// Learning-rate multiplier of biases.
        bias_lr_factor: f64 = 1.0,
        /// AdamW betas.
        betas: Vec<f64> = vec![0.9, 0.999],
        clip_gradients: ClipGradientsConfig = ClipGradientsConfig::default(),
        plateau: PlateauConfig = PlateauConfig::default(),
        amp: AmpConfig = AmpConfig::default(),
    }
}

config_group! {
    /// Mixed-precision training (PyTorch's autocast and `GradScaler`, Detectron2's
    /// `AMPTrainer`): the training forward computes convolutions and linear layers in
    /// `DTYPE`, while the weights, the optimizer state, batch-norm statistics and the
    /// losses stay in f32. With `float16` the loss is scaled dynamically; a step whose
    /// gradients overflow is skipped and the scale halved.
    pub struct AmpConfig {
        enabled: bool = false,
        /// `float16` (Detectron2's precision, with loss scaling) or `bfloat16`.
        dtype: AmpDtype = AmpDtype::Float16,
    }
}

config_group! {
    /// `ReduceLROnPlateau` (PyTorch's semantics and defaults): after more than `PATIENCE`
    /// evaluations without an improvement of `TEST.VAL_METRIC` the rate is multiplied by
    /// `FACTOR` (not below `MIN_LR`), then `COOLDOWN` evaluations pass before counting again.
    pub struct PlateauConfig {
        factor: f64 = 0.1,
        patience: usize = 10,
        threshold: f64 = 1e-4,
        /// `rel` or `abs`.
        threshold_mode: ThresholdMode = ThresholdMode::Rel,
        cooldown: usize = 0,
        min_lr: f64 = 0.0,
    }
}

impl AmpConfig {
    /// The dtype the training forward computes in, when mixed precision is on.
    pub fn compute_dtype(&self) -> Option<candle_core::DType> {
        self.enabled.then(|| self.dtype.dtype())
    }
}

config_group! {
    pub struct ClipGradientsConfig {
        enabled: bool = false,
        /// Maximum global L2 norm of the gradients.
        clip_value: f64 = 1.0,
    }
}

config_group! {
    pub struct TestConfig {
        /// Evaluate every N iterations (or epochs) during training; 0 only at the end.
        eval_period: usize = 0,
        /// `iterations` or `epochs`.
        eval_period_unit: PeriodUnit = PeriodUnit::Iterations,
        /// The evaluation metric that `ReduceLROnPlateau`, `BEST_CHECKPOINT` and early
        /// stopping watch (a key of `eval_results.json`); empty: the task's headline metric
        /// (`top1`, `mAP`, `AP` or WIDER FACE's `easy`).
        val_metric: String = s(""),
        /// `max` or `min` (for a loss).
        val_metric_mode: MetricMode = MetricMode::Max,
        /// Keep the best evaluated model as `model_best` (Detectron2's `BestCheckpointer`).
        best_checkpoint: bool = false,
        /// Stop training after this many evaluations in a row without a better
        /// `VAL_METRIC`; 0 never stops early.
        early_stop_patience: usize = 0,
        detections_per_image: usize = 100,
        /// Validation images drawn with their detections into `OUTPUT_DIR/vis/`.
        vis_num: usize = 8,
        /// Score above which drawn detections are shown.
        vis_threshold: f64 = 0.5,
        /// Multi-label: a class is predicted when its probability is at least this.
        multi_label_threshold: f64 = 0.5,
    }
}
