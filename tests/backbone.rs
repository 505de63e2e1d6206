//! MobileNetV2 structure, norms, activations and freezing, without external data.

// Tests read tensor values directly; the library's reads go through `ops::host`.
#![allow(clippy::disallowed_methods)]

mod common;

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candle_nn::{Optimizer, SGD};
use candletron::config::Config;
use candletron::layers::params::ParamStore;
use candletron::layers::BatchNorm2d;
use candletron::modeling::backbone::{build_backbone, BACKBONE_REGISTRY};
use candletron::modeling::build_model;
use candletron::structures::{Batch, Targets};

#[test]
fn classifier_has_torchvision_parameter_count() {
    let (model, _) = build_model(&Config::default(), 0).unwrap();
    assert_eq!(model.params.num_parameters(), 3_504_872);
    let names: Vec<String> = model.params.vars().into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names.first().map(String::as_str),
        Some("features.0.0.weight")
    );
    assert!(names.contains(&"features.17.conv.3.running_var".to_string()));
    assert!(names.contains(&"features.18.1.bias".to_string()));
    assert_eq!(names.last().map(String::as_str), Some("classifier.1.bias"));
}

#[test]
fn output_shapes_match_forward() {
    for width in [1.0, 0.5, 0.35, 1.4] {
        let mut cfg = Config::default();
        cfg.model.mobilenet.width_mult = width;
        let store = Arc::new(ParamStore::new(1));
        let backbone = build_backbone(&cfg, store.var_builder(DType::F32, &Device::Cpu)).unwrap();
        let shapes = backbone.output_shape();
        let x = Tensor::randn(0f32, 1.0, (1, 3, 96, 128), &Device::Cpu).unwrap();
        let out = backbone.forward_t(&x, false).unwrap();
        assert_eq!(out.len(), 4);
        for (name, spec) in &shapes {
            let dims = out[name].dims();
            assert_eq!(
                dims,
                [1, spec.channels, 96 / spec.stride, 128 / spec.stride],
                "{name} at width {width}"
            );
        }
        if width == 1.0 {
            let c: Vec<(usize, usize)> = ["res2", "res3", "res4", "res5"]
                .iter()
                .map(|n| (shapes[*n].channels, shapes[*n].stride))
                .collect();
            assert_eq!(c, vec![(24, 4), (32, 8), (96, 16), (320, 32)]);
        }
        if width == 0.5 {
            // _make_divisible(c * 0.5, 8) for c = 24, 32, 96, 320.
            let c: Vec<usize> = ["res2", "res3", "res4", "res5"]
                .iter()
                .map(|n| shapes[*n].channels)
                .collect();
            assert_eq!(c, vec![16, 16, 48, 160]);
        }
        assert_eq!(backbone.size_divisibility(), 32);
    }
}

#[test]
fn out_features_select_outputs_and_unknown_ones_fail() {
    let mut cfg = Config::default();
    cfg.merge_from_list(&["MODEL.MOBILENET.OUT_FEATURES", "[res4,res5]"])
        .unwrap();
    let store = Arc::new(ParamStore::new(1));
    let backbone = build_backbone(&cfg, store.var_builder(DType::F32, &Device::Cpu)).unwrap();
    assert_eq!(
        backbone.output_shape().keys().cloned().collect::<Vec<_>>(),
        ["res4", "res5"]
    );
    // Detectors do not carry the classifier's last conv.
    assert!(store
        .vars()
        .iter()
        .all(|(n, _)| !n.starts_with("features.18.")));

    cfg.model.mobilenet.out_features = vec!["res6".into()];
    let err = build_backbone(&cfg, store.var_builder(DType::F32, &Device::Cpu))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("res6") && err.contains("res2, res3, res4, res5"),
        "{err}"
    );
    cfg.model.backbone.name = "build_resnet_backbone".into();
    let err = build_backbone(&cfg, store.var_builder(DType::F32, &Device::Cpu))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("build_mobilenet_v2_backbone"), "{err}");
    assert!(BACKBONE_REGISTRY
        .names()
        .contains(&"build_mobilenet_v2_backbone".to_string()));
}

#[test]
fn init_follows_torchvision_and_is_seeded() {
    let (a, _) = build_model(&Config::default(), 7).unwrap();
    let (b, _) = build_model(&Config::default(), 7).unwrap();
    let (c, _) = build_model(&Config::default(), 8).unwrap();
    let get = |m: &candletron::modeling::Model, n: &str| {
        m.params
            .get(n)
            .unwrap()
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    assert_eq!(
        get(&a, "features.5.conv.0.0.weight"),
        get(&b, "features.5.conv.0.0.weight")
    );
    assert_ne!(
        get(&a, "features.5.conv.0.0.weight"),
        get(&c, "features.5.conv.0.0.weight")
    );
    // Kaiming normal, fan_out: std = sqrt(2 / (out * k * k)); features.5's expand conv is 192x32x1x1.
    let w = get(&a, "features.5.conv.0.0.weight");
    let std = (w.iter().map(|v| v * v).sum::<f32>() / w.len() as f32).sqrt();
    let want = (2.0f32 / 192.0).sqrt();
    assert!((std / want - 1.0).abs() < 0.1, "std {std} vs {want}");
    let lin = get(&a, "classifier.1.weight");
    let std = (lin.iter().map(|v| v * v).sum::<f32>() / lin.len() as f32).sqrt();
    assert!((std / 0.01 - 1.0).abs() < 0.02, "linear std {std}");
    assert!(get(&a, "classifier.1.bias").iter().all(|&v| v == 0.0));
    assert!(get(&a, "features.3.conv.1.1.weight")
        .iter()
        .all(|&v| v == 1.0));
    assert!(get(&a, "features.3.conv.1.1.bias")
        .iter()
        .all(|&v| v == 0.0));
}

#[test]
fn batch_norm_train_and_eval_semantics() {
    let store = Arc::new(ParamStore::new(0));
    let bn = BatchNorm2d::new(1, store.var_builder(DType::F32, &Device::Cpu)).unwrap();
    // One channel, values 1..4: mean 2.5, biased var 1.25, unbiased var 5/3.
    let x = Tensor::new(&[1f32, 2.0, 3.0, 4.0], &Device::Cpu)
        .unwrap()
        .reshape((2, 1, 1, 2))
        .unwrap();
    let y: Vec<f32> = bn
        .forward_t(&x, true)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let s = (1.25f32 + 1e-5).sqrt();
    for (a, b) in y.iter().zip([-1.5 / s, -0.5 / s, 0.5 / s, 1.5 / s]) {
        assert!((a - b).abs() < 1e-6);
    }
    let rm = store.get("running_mean").unwrap().to_vec1::<f32>().unwrap()[0];
    let rv = store.get("running_var").unwrap().to_vec1::<f32>().unwrap()[0];
    assert!((rm - 0.25).abs() < 1e-6, "running mean {rm}");
    assert!(
        (rv - (0.9 + 0.1 * 5.0 / 3.0)).abs() < 1e-6,
        "running var {rv}"
    );
    // Eval uses the running statistics.
    let y: Vec<f32> = bn
        .forward_t(&x, false)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert!((y[0] - (1.0 - rm) / (rv + 1e-5).sqrt()).abs() < 1e-6);
}

#[test]
fn frozen_bn_equals_bn_in_eval_and_mish_runs() {
    let x = Tensor::randn(0f32, 1.0, (1, 3, 64, 64), &Device::Cpu).unwrap();
    let outputs = |norm: &str, act: &str| {
        let mut cfg = Config::default();
        cfg.merge_from_list(&[
            "MODEL.MOBILENET.NORM",
            norm,
            "MODEL.MOBILENET.ACTIVATION",
            act,
        ])
        .unwrap();
        let store = Arc::new(ParamStore::new(3));
        let backbone = build_backbone(&cfg, store.var_builder(DType::F32, &Device::Cpu)).unwrap();
        // Non-trivial running statistics, the same in both models.
        for (n, v) in store.vars() {
            if n.ends_with("running_var") || n.ends_with("running_mean") {
                let base = if n.ends_with("var") { 1.5 } else { 0.1 };
                v.set(&(v.ones_like().unwrap() * base).unwrap()).unwrap();
            }
        }
        backbone.forward_t(&x, false).unwrap()
    };
    let bn = outputs("BN", "ReLU6");
    let frozen = outputs("FrozenBN", "ReLU6");
    let (diff, _) = common::max_abs_diff(&bn["res5"], &frozen["res5"]);
    assert!(diff < 1e-5, "{diff}");
    let mish = outputs("BN", "Mish");
    let (diff, _) = common::max_abs_diff(&bn["res5"], &mish["res5"]);
    assert!(diff > 1e-3, "Mish must change the network");
    let v: Vec<f32> = mish["res5"].flatten_all().unwrap().to_vec1().unwrap();
    assert!(v.iter().all(|x| x.is_finite()));

    // An unknown activation fails when the config is loaded, naming the key and value.
    let mut cfg = Config::default();
    let err = cfg
        .merge_from_list(&["MODEL.MOBILENET.ACTIVATION", "GELU"])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("MODEL.MOBILENET.ACTIVATION") && err.contains("GELU"),
        "{err}"
    );
}

#[test]
fn freeze_at_keeps_frozen_weights_bit_identical_after_a_step() {
    let mut cfg = Config::default();
    cfg.model.backbone.freeze_at = 5;
    cfg.model.classifier.num_classes = 10;
    let (model, _) = build_model(&cfg, 0).unwrap();
    let trainable = model.trainable_vars();
    assert!(trainable
        .iter()
        .all(|(n, _)| !(0..5).any(|i| n.starts_with(&format!("features.{i}.")))));
    assert!(trainable.iter().any(|(n, _)| n.starts_with("features.5.")));
    assert!(trainable.iter().all(|(n, _)| !n.contains("running_")));

    let snapshot = |m: &candletron::modeling::Model| -> Vec<(String, Vec<f32>)> {
        m.params
            .vars()
            .into_iter()
            .map(|(n, v)| (n, v.as_tensor().flatten_all().unwrap().to_vec1().unwrap()))
            .collect()
    };
    let before = snapshot(&model);
    let images = Tensor::randn(0f32, 1.0, (4, 3, 64, 64), &Device::Cpu).unwrap();
    let labels = Tensor::new(&[1u32, 2, 3, 4], &Device::Cpu).unwrap();
    let batch = Batch {
        images,
        targets: Some(Targets::Labels(labels)),
        image_sizes: Vec::new(),
        seeds: Vec::new(),
    };
    let mut opt = SGD::new(trainable.into_iter().map(|(_, v)| v).collect(), 0.1).unwrap();
    let out = model.arch.forward(&batch, true).unwrap();
    let loss = &out.losses["loss_cls"];
    let grads = loss.backward().unwrap();
    // Frozen weights receive no gradient at all.
    let frozen_w = model.params.get("features.2.conv.1.0.weight").unwrap();
    assert!(grads.get(frozen_w.as_tensor()).is_none());
    opt.step(&grads).unwrap();
    let after = snapshot(&model);
    for ((name, a), (_, b)) in before.iter().zip(&after) {
        let frozen = (0..5).any(|i| name.starts_with(&format!("features.{i}.")));
        if frozen {
            assert!(
                a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()),
                "{name} changed"
            );
        } else if !name.contains("running_") && (name.ends_with("weight") || name.ends_with("bias"))
        {
            assert!(a != b, "{name} did not change");
        }
    }
    // Unfrozen BN layers updated their running statistics in training mode.
    let idx = before
        .iter()
        .position(|(n, _)| n == "features.6.conv.0.1.running_mean")
        .unwrap();
    assert_ne!(before[idx].1, after[idx].1);
}
