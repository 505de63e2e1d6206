//! Detectron2's `GeneralizedRCNN`: backbone -> proposal generator (RPN) -> ROI heads,
//! whose losses are summed in one map. Selected by `META_ARCHITECTURE: GeneralizedRCNN`.
//!
//! The random sampling of anchors and proposals is seeded per image (the loader's sample
//! seed), so an image always gets the same sample in whatever batch or rank it is: runs
//! repeat, a resumed run continues exactly, and data-parallel runs equal one process.

use candle_core::Result;
use candle_nn::VarBuilder;
use rand::rngs::StdRng;
use rand::SeedableRng;

use super::meta_arch::{MetaArch, Outputs};
use crate::config::Config;
use crate::modeling::backbone::{build_backbone, Backbone};
use crate::modeling::proposal_generator::Rpn;
use crate::modeling::roi_heads::StandardRoiHeads;
use crate::modeling::OnnxExportSpec;
use crate::onnx::OnnxGraph;
use crate::structures::Instances;
use crate::structures::{Batch, Targets};

pub struct GeneralizedRcnn {
    backbone: Box<dyn Backbone>,
    proposal_generator: Rpn,
    roi_heads: StandardRoiHeads,
}

impl GeneralizedRcnn {
    pub fn new(
        backbone: Box<dyn Backbone>,
        proposal_generator: Rpn,
        roi_heads: StandardRoiHeads,
    ) -> Self {
        Self {
            backbone,
            proposal_generator,
            roi_heads,
        }
    }

    pub fn from_config(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let backbone = build_backbone(cfg, vb.pp("backbone"))?;
        let shapes = backbone.output_shape();
        let rpn = Rpn::from_config(cfg, &shapes, vb.pp("proposal_generator"))?;
        let roi_heads = StandardRoiHeads::from_config(cfg, &shapes, vb.pp("roi_heads"))?;
        Ok(Self::new(backbone, rpn, roi_heads))
    }
}

fn image_sizes(batch: &Batch) -> Result<Vec<(usize, usize)>> {
    (0..batch.images.dim(0)?)
        .map(|i| batch.image_size(i))
        .collect()
}

/// FNV-1a over an image's boxes and size: the sampling seed of an image the loader gave
/// no seed.
fn image_seed(inst: &Instances, (y, x): (usize, usize)) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |v: u64| {
        h ^= v;
        h = h.wrapping_mul(0x0100_0000_01b3);
    };
    eat(y as u64);
    eat(x as u64);
    for b in &inst.boxes {
        for v in b {
            eat(v.to_bits() as u64);
        }
    }
    h
}

/// One generator per image for the anchor and proposal sampling, from the image's own
/// seed (the loader's per-sample seed, else its boxes): an image is sampled alike in any
/// batch, so the split of a global batch over ranks changes nothing.
fn image_rngs(
    batch: &Batch,
    targets: Option<&[Instances]>,
    sizes: &[(usize, usize)],
) -> Vec<StdRng> {
    (0..sizes.len())
        .map(|i| {
            let seed = match (batch.seeds.get(i), targets) {
                (Some(&s), _) => s ^ 0x5a3c_9e17_d4b2_6f01,
                (None, Some(t)) => image_seed(&t[i], sizes[i]),
                (None, None) => 0,
            };
            StdRng::seed_from_u64(seed)
        })
        .collect()
}

impl MetaArch for GeneralizedRcnn {
    fn forward(&self, batch: &Batch, train: bool) -> Result<Outputs> {
        let targets = match (&batch.targets, train) {
            (Some(Targets::Instances(t)), true) => Some(t.as_slice()),
            (_, true) => {
                candle_core::bail!(
                    "GeneralizedRCNN: training needs box targets (Targets::Instances)"
                )
            }
            (_, false) => None,
        };
        let sizes = image_sizes(batch)?;
        let mut rngs = image_rngs(batch, targets, &sizes);
        let feats = self.backbone.forward_t(&batch.images, train)?;
        let (proposals, mut losses) = self
            .proposal_generator
            .forward(&feats, &sizes, targets, &mut rngs)?;
        let boxes: Vec<_> = proposals.into_iter().map(|p| p.boxes).collect();
        let (detections, roi_losses) = self
            .roi_heads
            .forward(&feats, &boxes, &sizes, targets, &mut rngs)?;
        losses.extend(roi_losses);
        Ok(Outputs {
            losses,
            logits: None,
            detections,
            ..Default::default()
        })
    }

    fn frozen_prefixes(&self) -> Vec<String> {
        self.backbone.frozen_prefixes()
    }

    fn size_divisibility(&self) -> usize {
        self.backbone.size_divisibility()
    }

    fn export_onnx(&self, _g: &mut OnnxGraph, _x: &str, _spec: &OnnxExportSpec) -> Result<String> {
        // The backbone, FPN and RPN head export as SSDLite's do; the second stage does not
        // yet: proposals have data-dependent counts, each is pooled from the FPN level its
        // size assigns it (a gather per level), and tract, the pure-Rust runtime the
        // exports are verified with in CI, has no RoiAlign.
        candle_core::bail!(
            "GeneralizedRCNN (Faster R-CNN) has no ONNX export: its second stage (proposals \
             of data-dependent count, RoIAlign per FPN level) is not written yet; export an \
             SSDLite detector or a classifier"
        )
    }

    fn fused(&self) -> Result<Box<dyn MetaArch>> {
        Ok(Box::new(Self {
            backbone: self.backbone.fused()?,
            proposal_generator: self.proposal_generator.clone(),
            roi_heads: self.roi_heads.fused()?,
        }))
    }
}
