//! FPN and SSDLite built from configs: shapes, names, fusion, inference limits, frozen
//! stages and pretrained-backbone loading.

// Tests read tensor values directly; the library's reads go through `ops::host`.
#![allow(clippy::disallowed_methods)]

mod common;

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candletron::config::Config;
use candletron::layers::params::ParamStore;
use candletron::layers::NormKind;
use candletron::modeling::backbone::build_backbone;
use candletron::modeling::build_model;
use candletron::structures::Instances;
use candletron::structures::{Batch, InstanceDetections, ModelInput, Targets};

fn fpn_cfg(top: &str, depthwise: bool) -> Config {
    let mut cfg = Config::default();
    cfg.merge_from_file(std::path::Path::new("configs/Base-SSDLite-MNV2-FPN.yaml"))
        .unwrap();
    cfg.model.mobilenet.width_mult = 0.35;
    cfg.model.fpn.out_channels = 24;
    cfg.merge_from_list(&["MODEL.FPN.TOP_BLOCK", top]).unwrap();
    cfg.model.fpn.depthwise = depthwise;
    cfg
}

#[test]
fn fpn_shapes_names_and_fused_forward() {
    for (top, levels) in [("none", 3), ("LastLevelMaxPool", 4), ("P6P7", 5)] {
        for depthwise in [false, true] {
            let cfg = fpn_cfg(top, depthwise);
            let store = Arc::new(ParamStore::new(3));
            let fpn = build_backbone(
                &cfg,
                store.var_builder(DType::F32, &Device::Cpu).pp("backbone"),
            )
            .unwrap();
            let shapes = fpn.output_shape();
            assert_eq!(shapes.len(), levels, "{top}");
            assert_eq!(shapes["p3"].stride, 8);
            assert_eq!(shapes["p5"].stride, 32);
            assert!(shapes.values().all(|s| s.channels == 24));
            let x = Tensor::randn(0f32, 1.0, (2, 3, 128, 96), &Device::Cpu).unwrap();
            let out = fpn.forward_t(&x, false).unwrap();
            for (name, s) in &shapes {
                // Levels coarser than the input's divisibility round up, as PyTorch's
                // strided ops do.
                assert_eq!(
                    out[name].dims(),
                    &[
                        2,
                        24,
                        128usize.div_ceil(s.stride),
                        96usize.div_ceil(s.stride)
                    ],
                    "{top} {name}"
                );
            }
            // Norms folded into the convs give the same features.
            let fused = fpn.fused().unwrap().forward_t(&x, false).unwrap();
            for name in shapes.keys() {
                let (d, scale) = common::max_abs_diff(&fused[name], &out[name]);
                assert!(d <= 1e-4 * scale.max(1.0), "{top} {name}: {d}");
            }
            let names: Vec<String> = store.vars().into_iter().map(|(n, _)| n).collect();
            assert!(names.contains(&"backbone.bottom_up.features.0.0.weight".to_string()));
            assert!(names.contains(&"backbone.fpn_lateral3.weight".to_string()));
            assert!(names.contains(&"backbone.fpn_lateral5.norm.running_var".to_string()));
            let out_conv = if depthwise {
                "backbone.fpn_output4.pointwise.weight"
            } else {
                "backbone.fpn_output4.weight"
            };
            assert!(names.contains(&out_conv.to_string()), "{names:?}");
            if top == "P6P7" {
                assert!(names.contains(&"backbone.top_block.p7.bias".to_string()));
            }
        }
    }
    let mut bad = fpn_cfg("none", false);
    bad.model.fpn.in_features = vec!["res3".into(), "res5".into()];
    let store = Arc::new(ParamStore::new(3));
    let e = build_backbone(&bad, store.var_builder(DType::F32, &Device::Cpu))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("consecutive"), "{e}");
}

/// Some detections, at most `cap`, best first, known classes, inside the (h, w) image.
fn check_detections(d: &InstanceDetections, (h, w): (usize, usize), cap: usize, k: usize) {
    assert!(
        !d.boxes.is_empty() && d.boxes.len() <= cap,
        "{}",
        d.boxes.len()
    );
    assert!(d.scores.windows(2).all(|s| s[0] >= s[1]), "best first");
    assert!(d.classes.iter().all(|&c| c < k));
    for b in &d.boxes {
        assert!(
            b[0] >= 0.0 && b[1] >= 0.0 && b[2] <= w as f32 && b[3] <= h as f32,
            "{b:?}"
        );
    }
}

fn ssdlite_cfg() -> Config {
    let mut cfg = fpn_cfg("none", true);
    cfg.model.fpn.out_channels = 16;
    cfg.test.detections_per_image = 7;
    cfg.model.ssdlite.score_thresh_test = 0.0;
    cfg
}

/// Two images of different sizes (90x120 and 96x100), pixels in 0..255.
fn two_images() -> Vec<Tensor> {
    [(90, 120), (96, 100)]
        .iter()
        .map(|&(h, w)| Tensor::rand(0f32, 255.0, (3, h, w), &Device::Cpu).unwrap())
        .collect()
}

/// The model normalises with its pixel mean and std, then pads each image bottom and
/// right with zeros to a shared size divisible by the backbone's size divisibility.
#[test]
fn preprocess_normalises_then_pads_with_zeros_to_the_size_divisibility() {
    let (model, _) = build_model(&ssdlite_cfg(), 0).unwrap();
    let mean = [123.675f32, 116.28, 103.53];
    let std = [58.395f32, 57.12, 57.375];
    // Image 0 holds the pixel mean everywhere: it normalises to exactly 0.
    let flat = Tensor::new(&mean, &Device::Cpu)
        .unwrap()
        .reshape((3, 1, 1))
        .unwrap()
        .broadcast_as((3, 40, 50))
        .unwrap()
        .contiguous()
        .unwrap();
    let other = Tensor::rand(0f32, 255.0, (3, 70, 33), &Device::Cpu).unwrap();
    let (x, sizes) = model.preprocess_image(&[flat, other.clone()]).unwrap();
    assert_eq!(sizes, vec![(40, 50), (70, 33)]);
    assert_eq!(x.dims(), [2, 3, 96, 64], "padded to multiples of 32");
    let v: Vec<Vec<Vec<f32>>> = x.get(0).unwrap().to_vec3().unwrap();
    assert!(v.iter().flatten().flatten().all(|&p| p == 0.0));
    let v: Vec<Vec<Vec<f32>>> = x.get(1).unwrap().to_vec3().unwrap();
    let o: Vec<Vec<Vec<f32>>> = other.to_vec3().unwrap();
    for c in 0..3 {
        for y in 0..96 {
            for xx in 0..64 {
                let want = if y < 70 && xx < 33 {
                    (o[c][y][xx] - mean[c]) / std[c]
                } else {
                    0.0
                };
                assert_eq!(v[c][y][xx], want, "({c}, {y}, {xx})");
            }
        }
    }
    assert!(model.preprocess_image(&[]).is_err());
    let grey = Tensor::zeros((1, 8, 8), candle_core::DType::F32, &Device::Cpu).unwrap();
    let e = model.preprocess_image(&[grey]).unwrap_err().to_string();
    assert!(e.contains("1 channels"), "{e}");
}

/// Inference maps detections from the network's input pixels to each input's output
/// size: the same image at a scale of 2 gives the same boxes times 2 (clipped).
#[test]
fn inference_reports_detections_in_each_inputs_output_pixels() {
    use candletron::modeling::Prediction;
    use candletron::structures::ModelInput;
    let (model, _) = build_model(&ssdlite_cfg(), 0).unwrap();
    let model = model.fused().unwrap();
    let img = Tensor::rand(0f32, 255.0, (3, 64, 96), &Device::Cpu).unwrap();
    let plain = model.inference(&[ModelInput::new(img.clone())]).unwrap();
    let scaled = model
        .inference(&[ModelInput::new(img).with_output_size(128, 192)])
        .unwrap();
    let (Prediction::Detections(a), Prediction::Detections(b)) = (&plain[0], &scaled[0]) else {
        panic!("a detector returns detections");
    };
    assert!(!a.boxes.is_empty());
    assert_eq!(a.scores, b.scores);
    assert_eq!(a.classes, b.classes);
    for (p, q) in a.boxes.iter().zip(&b.boxes) {
        let want = [
            (p[0] * 2.0).clamp(0.0, 192.0),
            (p[1] * 2.0).clamp(0.0, 128.0),
            (p[2] * 2.0).clamp(0.0, 192.0),
            (p[3] * 2.0).clamp(0.0, 128.0),
        ];
        assert_eq!(*q, want);
    }
}

#[test]
fn ssdlite_inference_respects_limits_and_training_returns_named_losses() {
    // Faces are the one-class case; three classes check the multi-class paths.
    for (cls, boxl, k) in [
        ("ce", "smooth_l1", 1),
        ("focal", "giou", 1),
        ("ce", "giou", 3),
        ("focal", "smooth_l1", 3),
    ] {
        let mut cfg = ssdlite_cfg();
        cfg.model.ssdlite.num_classes = k;
        cfg.merge_from_list(&[
            "MODEL.SSDLITE.CLS_LOSS",
            cls,
            "MODEL.SSDLITE.BOX_LOSS",
            boxl,
        ])
        .unwrap();
        let (model, _) = build_model(&cfg, 0).unwrap();
        let (images, image_sizes) = model.preprocess_image(&two_images()).unwrap();
        assert_eq!(images.dims(), [2, 3, 96, 128]);
        let batch = Batch {
            images,
            targets: None,
            image_sizes,
            seeds: Vec::new(),
        };
        let out = model.arch.fused().unwrap().forward(&batch, false).unwrap();
        let dets = out.detections.unwrap();
        assert_eq!(dets.len(), 2);
        for (d, &size) in dets.iter().zip(&batch.image_sizes) {
            check_detections(d, size, 7, k);
        }
        let targets = vec![
            Instances {
                boxes: vec![[10.0, 10.0, 40.0, 50.0], [50.0, 20.0, 90.0, 60.0]],
                classes: vec![0, k - 1],
                ignore: vec![false, false],
            },
            Instances::default(),
        ];
        let batch = Batch {
            targets: Some(Targets::Instances(targets)),
            ..batch
        };
        let out = model.arch.forward(&batch, true).unwrap();
        let keys: Vec<&String> = out.losses.keys().collect();
        assert_eq!(keys, ["loss_box_reg", "loss_cls"]);
        for (k, l) in &out.losses {
            let v = l.to_scalar::<f32>().unwrap();
            assert!(v.is_finite() && v > 0.0, "{cls}/{boxl} {k} = {v}");
        }
    }
}

#[test]
fn imagenet_weights_load_into_the_detector_backbone_by_suffix() {
    let Some(shared) = common::shared("imagenet_weights_load_into_the_detector_backbone_by_suffix")
    else {
        return;
    };
    let mut cfg = ssdlite_cfg();
    cfg.model.mobilenet.width_mult = 1.0;
    cfg.model.mobilenet.norm = NormKind::FrozenBN;
    cfg.model.backbone.freeze_at = 2;
    cfg.model.weights = shared
        .join("pretrained/mobilenet_v2-b0353104.pth")
        .display()
        .to_string();
    let (model, report) = build_model(&cfg, 0).unwrap();
    let report = report.unwrap();
    // features.0..17 (everything the FPN uses) come from the checkpoint; features.18 and
    // the classifier are unused; FPN and head stay initialised.
    assert!(report.mismatched.is_empty(), "{report}");
    assert!(
        report.missing.iter().all(|n| !n.contains("bottom_up")),
        "{report}"
    );
    assert_eq!(report.unexpected.len(), 7, "{report}");
    let trainable: Vec<String> = model.trainable_vars().into_iter().map(|(n, _)| n).collect();
    assert!(!trainable
        .iter()
        .any(|n| n.starts_with("backbone.bottom_up.features.0.")
            || n.starts_with("backbone.bottom_up.features.1.")));
    assert!(trainable
        .iter()
        .any(|n| n.starts_with("backbone.bottom_up.features.2.")));
    assert!(trainable.iter().any(|n| n.starts_with("head.")));
}

fn rcnn_cfg() -> Config {
    let mut cfg = Config::default();
    cfg.merge_from_file(std::path::Path::new("configs/Base-RCNN-MNV2-FPN.yaml"))
        .unwrap();
    cfg.model.mobilenet.width_mult = 0.35;
    cfg.model.mobilenet.norm = NormKind::BN;
    cfg.model.backbone.freeze_at = 0;
    cfg.model.fpn.out_channels = 16;
    cfg.model.roi_box_head.fc_dim = 32;
    cfg.model.anchor_generator.sizes =
        vec![vec![16.0], vec![32.0], vec![64.0], vec![128.0], vec![256.0]];
    cfg.model.rpn.post_nms_topk_test = 50;
    cfg.model.roi_heads.score_thresh_test = 0.0;
    cfg.test.detections_per_image = 9;
    cfg
}

fn rcnn_targets(k: usize) -> Vec<Instances> {
    vec![
        Instances {
            boxes: vec![
                [10.0, 10.0, 40.0, 50.0],
                [50.0, 20.0, 90.0, 60.0],
                [60.0, 60.0, 70.0, 70.0],
            ],
            classes: vec![0, k - 1, 0],
            ignore: vec![false, false, true],
        },
        // No ground truth: every anchor and proposal is background.
        Instances::default(),
    ]
}

#[test]
fn faster_rcnn_names_losses_gradients_and_inference_limits() {
    for (k, agnostic, boxl) in [
        (1, false, "smooth_l1"),
        (3, false, "giou"),
        (3, true, "smooth_l1"),
    ] {
        let mut cfg = rcnn_cfg();
        cfg.model.roi_heads.num_classes = k;
        cfg.model.roi_box_head.cls_agnostic_bbox_reg = agnostic;
        cfg.merge_from_list(&[
            "MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE",
            boxl,
            "MODEL.RPN.BBOX_REG_LOSS_TYPE",
            boxl,
        ])
        .unwrap();
        let (model, _) = build_model(&cfg, 0).unwrap();
        // Detectron2's parameter names and the class-specific predictor's shapes.
        let shapes: std::collections::BTreeMap<String, Vec<usize>> = model
            .params
            .vars()
            .into_iter()
            .map(|(n, v)| (n, v.dims().to_vec()))
            .collect();
        assert_eq!(
            shapes["proposal_generator.rpn_head.conv.weight"],
            [16, 16, 3, 3]
        );
        assert_eq!(
            shapes["proposal_generator.rpn_head.objectness_logits.weight"],
            [3, 16, 1, 1]
        );
        assert_eq!(
            shapes["proposal_generator.rpn_head.anchor_deltas.weight"],
            [12, 16, 1, 1]
        );
        assert_eq!(shapes["roi_heads.box_head.fc1.weight"], [32, 16 * 49]);
        assert_eq!(
            shapes["roi_heads.box_predictor.cls_score.weight"],
            [k + 1, 32]
        );
        let boxes = if agnostic { 4 } else { 4 * k };
        assert_eq!(
            shapes["roi_heads.box_predictor.bbox_pred.weight"],
            [boxes, 32]
        );

        let (images, image_sizes) = model.preprocess_image(&two_images()).unwrap();
        let batch = Batch {
            images,
            targets: Some(Targets::Instances(rcnn_targets(k))),
            image_sizes,
            seeds: Vec::new(),
        };
        let out = model.arch.forward(&batch, true).unwrap();
        let keys: Vec<&String> = out.losses.keys().collect();
        assert_eq!(
            keys,
            ["loss_box_reg", "loss_cls", "loss_rpn_cls", "loss_rpn_loc"]
        );
        let mut total = None::<Tensor>;
        for (name, l) in &out.losses {
            let v = l.to_scalar::<f32>().unwrap();
            assert!(v.is_finite() && v > 0.0, "{k} {boxl} {name} = {v}");
            total = Some(match total {
                None => l.clone(),
                Some(t) => (t + l).unwrap(),
            });
        }
        // Gradients reach both heads and, through ROIAlign, the pyramid.
        let grads = total.unwrap().backward().unwrap();
        for name in [
            "proposal_generator.rpn_head.conv.weight",
            "roi_heads.box_head.fc1.weight",
            "roi_heads.box_predictor.bbox_pred.weight",
            "backbone.fpn_output3.weight",
            "backbone.fpn_lateral2.weight",
        ] {
            let var = model.params.get(name).unwrap();
            let g = grads.get(var.as_tensor()).unwrap();
            let n = g
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(n > 0.0 && n.is_finite(), "{name}: {n}");
        }
        // Same sample for the same batch: repeatable losses.
        let again = model.arch.forward(&batch, true).unwrap();
        for (name, l) in &out.losses {
            assert_eq!(
                l.to_scalar::<f32>().unwrap(),
                again.losses[name].to_scalar::<f32>().unwrap(),
                "{name}"
            );
        }

        let batch = Batch {
            targets: None,
            ..batch
        };
        let plain = model
            .arch
            .forward(&batch, false)
            .unwrap()
            .detections
            .unwrap();
        let fused = model
            .arch
            .fused()
            .unwrap()
            .forward(&batch, false)
            .unwrap()
            .detections
            .unwrap();
        assert_eq!(plain.len(), 2);
        for ((d, f), &size) in plain.iter().zip(&fused).zip(&batch.image_sizes) {
            check_detections(d, size, 9, k);
            // Norms folded into convs: same detections up to rounding.
            assert_eq!(d.boxes.len(), f.boxes.len());
            for (a, b) in d.scores.iter().zip(&f.scores) {
                assert!((a - b).abs() < 1e-4, "{a} vs {b}");
            }
        }
    }
}

#[test]
fn faster_rcnn_config_errors_name_the_key() {
    let mut cfg = rcnn_cfg();
    cfg.model.rpn.in_features = vec!["p9".into()];
    let e = build_model(&cfg, 0).err().unwrap().to_string();
    assert!(
        e.contains("MODEL.RPN.IN_FEATURES") && e.contains("p9"),
        "{e}"
    );
    let mut cfg = rcnn_cfg();
    cfg.model.anchor_generator.sizes = vec![
        vec![16.0],
        vec![32.0, 48.0],
        vec![64.0],
        vec![128.0],
        vec![256.0],
    ];
    let e = build_model(&cfg, 0).err().unwrap().to_string();
    assert!(e.contains("same number of anchors"), "{e}");
    let mut cfg = rcnn_cfg();
    // An unknown pooler fails when the config is loaded, naming the key.
    let e = cfg
        .merge_from_list(&["MODEL.ROI_BOX_HEAD.POOLER_TYPE", "ROIPool"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("MODEL.ROI_BOX_HEAD.POOLER_TYPE"), "{e}");
    let mut cfg = rcnn_cfg();
    cfg.model.roi_heads.in_features = vec!["p2".into(), "p4".into()];
    let e = build_model(&cfg, 0).err().unwrap().to_string();
    assert!(e.contains("consecutive"), "{e}");
}

/// An output-stride-16 backbone under the FPN: res4 and res5 share stride 16, so the
/// top-down path adds without upsampling, the levels keep their names and parameters,
/// and both detectors train and detect (the ONNX export too, checked elsewhere on the
/// same graph code).
#[test]
fn detectors_run_on_a_dilated_backbone_under_the_fpn() {
    for mut cfg in [ssdlite_cfg(), rcnn_cfg()] {
        cfg.model.mobilenet.output_stride = 16;
        let (model, _) = build_model(&cfg, 0).unwrap();
        let (plain, _) = {
            let mut c = cfg.clone();
            c.model.mobilenet.output_stride = 32;
            build_model(&c, 0).unwrap()
        };
        // The same parameter names and shapes as the undilated model.
        let names = |m: &candletron::modeling::Model| {
            m.params
                .vars()
                .into_iter()
                .map(|(n, v)| (n, v.as_tensor().dims().to_vec()))
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&model), names(&plain));
        let (images, image_sizes) = model.preprocess_image(&two_images()).unwrap();
        let k = 1;
        let targets = if cfg.model.meta_architecture == "SSDLite" {
            vec![
                Instances {
                    boxes: vec![[10.0, 10.0, 40.0, 50.0]],
                    classes: vec![0],
                    ignore: vec![false],
                },
                Instances::default(),
            ]
        } else {
            rcnn_targets(k)
        };
        let mut rcfg = cfg.clone();
        rcfg.model.roi_heads.num_classes = k;
        let (model, _) = build_model(&rcfg, 0).unwrap();
        let batch = Batch {
            images: images.clone(),
            targets: Some(Targets::Instances(targets)),
            image_sizes: image_sizes.clone(),
            seeds: Vec::new(),
        };
        let out = model.arch.forward(&batch, true).unwrap();
        let mut total = None::<Tensor>;
        for l in out.losses.values() {
            assert!(l.to_scalar::<f32>().unwrap().is_finite());
            total = Some(match total {
                None => l.clone(),
                Some(t) => (t + l).unwrap(),
            });
        }
        let grads = total.unwrap().backward().unwrap();
        let w = model
            .params
            .vars()
            .into_iter()
            .find(|(n, _)| n.contains("features.16.conv.1.0.weight"))
            .unwrap()
            .1;
        let g = grads
            .get(w.as_tensor())
            .expect("a dilated depthwise weight gets a gradient");
        assert!(
            g.abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                > 0.0
        );
        let inputs: Vec<ModelInput> = two_images().into_iter().map(ModelInput::new).collect();
        let preds = model.fused().unwrap().inference(&inputs).unwrap();
        assert_eq!(preds.len(), 2, "{}", cfg.model.meta_architecture);
    }
}
