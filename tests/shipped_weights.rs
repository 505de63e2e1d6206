//! The ImageNet weights shipped in `weights/`: complete, loadable into the models, equal
//! to torchvision's `.pth` up to f16 rounding, and classifying the reference image as
//! PyTorch does.

// Tests read tensor values directly; the library's reads go through `ops::host`.
#![allow(clippy::disallowed_methods)]

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Tensor};
use candletron::checkpoint::read_checkpoint;
use candletron::config::Config;

fn shipped() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("weights/mobilenet_v2_imagenet_f16.safetensors")
}

#[test]
fn shipped_weights_load_into_the_classifier_and_the_detectors() {
    let tensors = read_checkpoint(&shipped()).unwrap();
    assert_eq!(tensors.len(), 314);
    let values: usize = tensors.iter().map(|(_, t)| t.elem_count()).sum();
    assert_eq!(values, 3_539_036);
    for (name, t) in &tensors {
        // BN counters stay integers; every float is f16.
        if !name.ends_with("num_batches_tracked") {
            assert_eq!(t.dtype(), DType::F16, "{name}");
        }
    }
    // The classifier takes every tensor; the default configs' detectors take the backbone.
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    for (config, full) in [
        ("configs/imagenet/mobilenet_v2_classifier.yaml", true),
        ("configs/synthetic_faces/ssdlite_mnv2_fpn.yaml", false),
        ("configs/synthetic_faces/faster_rcnn_mnv2_fpn.yaml", false),
    ] {
        let mut cfg = Config::from_file(root.join(config)).unwrap();
        cfg.model.weights = shipped().display().to_string();
        let (model, report) = candletron::modeling::build_model(&cfg, 0).unwrap();
        let report = report.unwrap();
        assert!(report.mismatched.is_empty(), "{config}: {report}");
        let backbone_missing: Vec<_> = report
            .missing
            .iter()
            .filter(|n| n.contains("bottom_up") || n.starts_with("features"))
            .collect();
        assert!(
            backbone_missing.is_empty(),
            "{config}: {backbone_missing:?}"
        );
        if full {
            assert!(report.missing.is_empty(), "{config}: {report}");
            assert!(report.unexpected.is_empty(), "{config}: {report}");
        }
        drop(model);
    }
}

#[test]
fn shipped_weights_equal_torchvision_up_to_f16_rounding() {
    let Some(shared) = common::shared("shipped_weights_equal_torchvision_up_to_f16_rounding")
    else {
        return;
    };
    let ours: HashMap<String, Tensor> = read_checkpoint(&shipped()).unwrap().into_iter().collect();
    let theirs = read_checkpoint(&shared.join("pretrained/mobilenet_v2-b0353104.pth")).unwrap();
    assert_eq!(ours.len(), theirs.len());
    for (name, t) in &theirs {
        let o = &ours[name];
        assert_eq!(o.dims(), t.dims(), "{name}");
        if !t.dtype().is_float() {
            continue;
        }
        let a: Vec<f64> = o
            .to_dtype(DType::F64)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let b: Vec<f64> = t
            .to_dtype(DType::F64)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        for (x, y) in a.iter().zip(&b) {
            // Round to nearest: half an f16 ulp relative (2^-11), or half the smallest
            // subnormal step (2^-25) near zero.
            let tol = y.abs() * 2f64.powi(-11) + 2f64.powi(-25);
            assert!((x - y).abs() <= tol, "{name}: {x} vs {y}");
        }
    }
}

#[test]
fn classify_with_the_shipped_weights_matches_pytorch_top5() {
    let Some(shared) = common::shared("classify_with_the_shipped_weights_matches_pytorch_top5")
    else {
        return;
    };
    // The config names the shipped file relative to the repository root.
    let (stdout, ours, theirs, _) = common::classify_reference(
        &shared,
        "shipped-classify",
        &[
            "--config-file".as_ref(),
            "configs/imagenet/mobilenet_v2_classifier.yaml".as_ref(),
        ],
    );
    let want = common::reference_top5(&shared);
    let got = common::classify_top5(&stdout);
    assert_eq!(got, want, "{stdout}");
    let (diff, scale) = common::max_abs_diff(&ours["logits"], &theirs["logits"]);
    eprintln!("logits with f16 weights: max |diff| {diff:.3e} (max |ref| {scale:.2})");
    assert!(diff <= 1e-2 * scale, "logits: {diff} of {scale}");
}
