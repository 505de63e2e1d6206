//! MobileNetV2 against PyTorch: the shared torchvision weights on the shared reference
//! input must give PyTorch's `features` outputs and logits.

mod common;

use std::sync::Arc;

use candle_core::{DType, Device};
use candletron::checkpoint::{load_state_dict, read_checkpoint};
use candletron::config::Config;
use candletron::layers::params::ParamStore;
use candletron::modeling::backbone::{Backbone, MobileNetV2};
use candletron::modeling::build_model;
use candletron::structures::Batch;

fn check(name: &str, ours: &candle_core::Tensor, reference: &candle_core::Tensor) {
    let (diff, scale) = common::max_abs_diff(ours, reference);
    eprintln!("{name}: max |diff| = {diff:.3e} (max |ref| = {scale:.3})");
    assert!(diff <= 1e-3, "{name}: max |diff| {diff} > 1e-3");
    assert!(
        diff <= 1e-4 * scale.max(1.0),
        "{name}: relative diff {} > 1e-4",
        diff / scale
    );
}

/// The MobileNetV2 backbone of `cfg` on RGB input, with its (freshly initialised) store.
fn rgb_backbone(cfg: &Config) -> (MobileNetV2, Arc<ParamStore>) {
    let store = Arc::new(ParamStore::new(0));
    let backbone = MobileNetV2::from_config(
        cfg,
        store.var_builder(DType::F32, &Device::Cpu),
        candletron::layers::ShapeSpec {
            channels: 3,
            stride: 1,
        },
    )
    .unwrap();
    (backbone, store)
}

#[test]
fn features_and_logits_match_pytorch() {
    let Some(shared) = common::shared("features_and_logits_match_pytorch") else {
        return;
    };
    let weights = shared.join("pretrained/mobilenet_v2-b0353104.pth");
    let reference = candle_core::safetensors::load(
        shared.join("reference/astronaut_mnv2.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let tensors = read_checkpoint(&weights).unwrap();

    // Backbone alone: every torchvision key but the classifier's is used.
    let mut cfg = Config::default();
    cfg.model.mobilenet.out_features = ["res2", "res3", "res4", "res5"].map(String::from).to_vec();
    let (backbone, store) = rgb_backbone(&cfg);
    let report = load_state_dict(&store, &tensors).unwrap();
    assert!(
        report.missing.is_empty() && report.mismatched.is_empty(),
        "{report}"
    );
    assert!(
        report
            .unexpected
            .iter()
            .all(|k| k.starts_with("features.18.") || k.starts_with("classifier.")),
        "{report}"
    );
    let input = &reference["input"];
    let outputs = backbone.forward_t(input, false).unwrap();
    for name in ["res2", "res3", "res4", "res5"] {
        check(name, &outputs[name], &reference[name]);
    }

    // The classifier loads the checkpoint exactly and gives PyTorch's logits.
    let mut cfg = Config::default();
    cfg.model.weights = weights.display().to_string();
    let (model, report) = build_model(&cfg, 0).unwrap();
    let report = report.unwrap();
    assert!(report.is_exact(), "{report}");
    // 52 convs, 52 BNs x 4 tensors, the classifier weight and bias.
    assert_eq!(report.loaded, 262, "{report}");
    let out = model
        .arch
        .forward(
            &Batch {
                images: input.clone(),
                targets: None,
                image_sizes: Vec::new(),
                seeds: Vec::new(),
            },
            false,
        )
        .unwrap();
    check("logits", out.logits.as_ref().unwrap(), &reference["logits"]);
}

/// The output-stride option against PyTorch: torchvision's network with the same
/// strides turned into dilations (`tools/compare/dilated_mnv2_reference.py`, on the
/// weights shipped in `weights/`), at output strides 16 and 8.
#[test]
fn output_stride_16_and_8_match_dilated_pytorch() {
    let reference =
        candle_core::safetensors::load("tests/data/mnv2_output_stride.safetensors", &Device::Cpu)
            .unwrap();
    let tensors = read_checkpoint(std::path::Path::new(
        "weights/mobilenet_v2_imagenet_f16.safetensors",
    ))
    .unwrap();
    for os in [16usize, 8] {
        let mut cfg = Config::default();
        cfg.model.mobilenet.out_features = ["res3", "res4", "res5"].map(String::from).to_vec();
        cfg.model.mobilenet.output_stride = os;
        let (backbone, store) = rgb_backbone(&cfg);
        load_state_dict(&store, &tensors).unwrap();
        let shapes = backbone.output_shape();
        let strides: Vec<usize> = ["res3", "res4", "res5"]
            .iter()
            .map(|n| shapes[*n].stride)
            .collect();
        assert_eq!(strides, [8, 16.min(os), os], "output stride {os}");
        let out = backbone.forward_t(&reference["input"], false).unwrap();
        for name in ["res4", "res5"] {
            check(
                &format!("os{os}.{name}"),
                &out[name],
                &reference[&format!("os{os}.{name}")],
            );
        }
        // The fused inference copy (BN folded, fused depthwise kernels) dilates alike.
        let fused = backbone
            .fused()
            .unwrap()
            .forward_t(&reference["input"], false)
            .unwrap();
        check(
            &format!("fused os{os}.res5"),
            &fused["res5"],
            &reference[&format!("os{os}.res5")],
        );
    }
    let mut cfg = Config::default();
    cfg.model.mobilenet.output_stride = 4;
    let store = Arc::new(ParamStore::new(0));
    let e = candletron::modeling::backbone::build_backbone(
        &cfg,
        store.var_builder(DType::F32, &Device::Cpu),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        e.contains("MODEL.MOBILENET.OUTPUT_STRIDE must be 8, 16 or 32"),
        "{e}"
    );
}
