//! Add a backbone in one file: implement `Backbone`, register its builder by name, and
//! select it from the config. Here a small plain CNN replaces MobileNetV2 under SSDLite's
//! FPN, and trains a few iterations on the synthetic faces.
//!
//! ```sh
//! cargo run --release --example custom_backbone
//! ```

use std::collections::BTreeMap;

use anyhow::Result;
use candle_core::Tensor;
use candle_nn::VarBuilder;
use candletron::config::Config;
use candletron::engine::{DefaultTrainer, TrainOutcome};
use candletron::layers::{Activation, Conv2d, Conv2dConfig, NormKind, ShapeSpec};
use candletron::modeling::backbone::{register_builder, Backbone, BACKBONE_REGISTRY};

/// Five stride-2 conv-BN-ReLU stages; stages 3 to 5 are the outputs `res3..res5`
/// (strides 8, 16, 32), the names the FPN config reads.
struct TinyNet {
    stages: Vec<Conv2d>,
}

const CHANNELS: [usize; 5] = [16, 24, 32, 48, 64];

impl TinyNet {
    fn new(in_channels: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        let mut stages = Vec::new();
        let mut cin = in_channels;
        for (i, &cout) in CHANNELS.iter().enumerate() {
            let conv = Conv2dConfig::new(cin, cout, 3)
                .with_stride(2)
                .with_norm(Some(NormKind::BN))
                .with_activation(Activation::ReLU);
            stages.push(conv.init(vb.pp(format!("stage{}", i + 1)))?);
            cin = cout;
        }
        Ok(Self { stages })
    }
}

impl Backbone for TinyNet {
    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<BTreeMap<String, Tensor>> {
        let mut out = BTreeMap::new();
        let mut y = x.clone();
        for (i, stage) in self.stages.iter().enumerate() {
            y = stage.forward_t(&y, train)?;
            if i >= 2 {
                out.insert(format!("res{}", i + 1), y.clone());
            }
        }
        Ok(out)
    }

    fn output_shape(&self) -> BTreeMap<String, ShapeSpec> {
        (2..5)
            .map(|i| {
                let spec = ShapeSpec {
                    channels: CHANNELS[i],
                    stride: 1 << (i + 1),
                };
                (format!("res{}", i + 1), spec)
            })
            .collect()
    }

    fn size_divisibility(&self) -> usize {
        32
    }

    fn fused(&self) -> candle_core::Result<Box<dyn Backbone>> {
        let stages = self
            .stages
            .iter()
            .map(Conv2d::fused)
            .collect::<candle_core::Result<_>>()?;
        Ok(Box::new(Self { stages }))
    }
}

fn main() -> Result<()> {
    candletron::utils::logging::init();
    // Registered once, by name; any config can now select it.
    register_builder(
        &BACKBONE_REGISTRY,
        "build_tiny_backbone",
        |_cfg, vb, input| Ok(Box::new(TinyNet::new(input.channels, vb)?) as Box<dyn Backbone>),
    );

    let mut cfg = Config::from_file("configs/synthetic_faces/ssdlite_mnv2_fpn.yaml")?;
    cfg.merge_from_list(&[
        "MODEL.BACKBONE.BOTTOM_UP",
        "build_tiny_backbone",
        // No ImageNet weights for this network: it starts from its random init.
        "MODEL.WEIGHTS",
        "",
        "SOLVER.MAX_ITER",
        "10",
        "SOLVER.WARMUP_ITERS",
        "5",
        "SOLVER.STEPS",
        "[8]",
        "DATASETS.SYNTHETIC.NUM_TRAIN",
        "32",
        "DATASETS.SYNTHETIC.NUM_VAL",
        "8",
        "OUTPUT_DIR",
        "output/custom_backbone",
    ])?;
    // The example's folder is scratch: each run replaces the previous one's results
    // (without `with_overwrite`, a second run would refuse to touch them).
    let mut trainer = DefaultTrainer::from_config(&cfg)?
        .with_overwrite(true)
        .resume_or_load(false)?;
    if let TrainOutcome::Finished(metrics) = trainer.train()? {
        println!("{metrics:?}");
    }
    Ok(())
}
