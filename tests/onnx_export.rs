//! ONNX export checked with a second runtime (tract, pure Rust): the exported classifier
//! gives candletron's logits, and the exported SSDLite its raw head outputs (max |diff|
//! <= 1e-4) and the same detections after NMS.

// Tests read tensor values directly; the library's reads go through `ops::host`.
#![allow(clippy::disallowed_methods)]

mod common;

use candle_core::Device;
use candletron::config::Config;
use candletron::data::transforms::image_to_tensor;
use candletron::modeling::{build_model, ExportBatch, Model, OnnxExportSpec, Prediction};
use candletron::structures::ModelInput;
use tract_onnx::prelude::*;

/// A picture with edges, gradients and some hashed noise, so that no two anchors see
/// the same features (equal scores would make the order of ties, and so NMS, arbitrary).
fn picture(w: u32, h: u32, seed: u32) -> image::RgbImage {
    image::RgbImage::from_fn(w, h, |x, y| {
        let noise = (x.wrapping_mul(2_654_435_761) ^ y.wrapping_mul(40_503) ^ seed) % 61;
        let r = ((x * 3 + seed * 40 + noise) % 256) as u8;
        let g = ((y * 5 + x * y / 7) % 256) as u8;
        let in_disc = (x as i64 - w as i64 / 3).pow(2) + (y as i64 - h as i64 / 2).pow(2)
            < (h as i64 / 4).pow(2);
        image::Rgb([r, g, if in_disc { 230 } else { 40 }])
    })
}

fn model(config: &str, opts: &[&str]) -> Model {
    let mut cfg = Config::from_file(config).unwrap();
    cfg.merge_from_list(opts).unwrap();
    let (m, _) = build_model(&cfg, 7).unwrap();
    // A freshly initialised head scores every anchor within 0.03 of its prior, where float
    // rounding decides the order; larger class-predictor weights (and no prior bias)
    // spread the scores as a trained model's are.
    for (name, var) in m.params.vars() {
        if name.contains("cls_pred.pointwise.weight") {
            var.set(&(var.as_tensor() * 3000.0).unwrap()).unwrap();
        }
        if name.contains("cls_pred.pointwise.bias") {
            var.set(&var.as_tensor().zeros_like().unwrap()).unwrap();
        }
    }
    m.fused().unwrap()
}

/// Runs an ONNX file in tract on (N, 3, H, W) pixels.
fn run_tract(bytes: &[u8], images: &[image::RgbImage]) -> Vec<tract_onnx::prelude::Tensor> {
    let (w, h) = images[0].dimensions();
    let mut data = Vec::new();
    for img in images {
        for c in 0..3 {
            for p in img.pixels() {
                data.push(p[c] as f32);
            }
        }
    }
    let shape = [images.len(), 3, h as usize, w as usize];
    let model = tract_onnx::onnx()
        .model_for_read(&mut &bytes[..])
        .unwrap()
        .with_input_fact(0, f32::fact(shape).into())
        .unwrap()
        .into_optimized()
        .unwrap()
        .into_runnable()
        .unwrap();
    let input = tract_ndarray::ArrayD::from_shape_vec(&shape[..], data).unwrap();
    model
        .run(tvec!(Tensor::from(input).into()))
        .unwrap()
        .into_iter()
        .map(|v| v.into_tensor())
        .collect()
}

fn inputs(images: &[image::RgbImage]) -> Vec<ModelInput> {
    images
        .iter()
        .map(|i| ModelInput::new(image_to_tensor(i, &Device::Cpu).unwrap()))
        .collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn floats(t: &tract_onnx::prelude::Tensor) -> Vec<f32> {
    t.as_slice::<f32>().unwrap().to_vec()
}

#[test]
fn exported_classifier_gives_candletrons_logits() {
    // The shipped ImageNet weights, a dynamic batch of two different pictures.
    let m = model("configs/imagenet/mobilenet_v2_classifier.yaml", &[]);
    let mut spec = OnnxExportSpec::new(224, 224);
    spec.batch = ExportBatch::Dynamic;
    let names: Vec<String> = (0..1000).map(|i| format!("c{i}")).collect();
    let bytes = m.export_onnx(&spec, &names).unwrap();
    let images = [picture(224, 224, 1), picture(224, 224, 2)];
    let out = run_tract(&bytes, &images);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].shape(), &[2, 1000]);
    let got = floats(&out[0]);
    for (i, p) in m.inference(&inputs(&images)).unwrap().iter().enumerate() {
        let Prediction::Logits(want) = p else {
            panic!("a classifier gives logits")
        };
        let d = max_abs_diff(&got[i * 1000..(i + 1) * 1000], want);
        assert!(d <= 1e-4, "image {i}: logits differ by {d}");
    }
    // A size the model cannot take is refused with the reason.
    let e = m
        .export_onnx(&OnnxExportSpec::new(100, 224), &names)
        .unwrap_err();
    assert!(e.to_string().contains("multiples of 32"), "{e}");
}

/// Raw outputs within 1e-4 and identical detections, for the default one-class softmax
/// SSDLite (ImageNet backbone, random FPN and head) and a three-class sigmoid one (the
/// per-class NMS path).
#[test]
fn exported_ssdlite_gives_candletrons_detections() {
    for opts in [
        &["MODEL.SSDLITE.SCORE_THRESH_TEST", "0.3"][..],
        &[
            "MODEL.SSDLITE.NUM_CLASSES",
            "3",
            "MODEL.SSDLITE.CLS_LOSS",
            "focal",
            "MODEL.SSDLITE.SCORE_THRESH_TEST",
            "0.5",
            "MODEL.SSDLITE.NMS_THRESH_TEST",
            "0.3",
            "TEST.DETECTIONS_PER_IMAGE",
            "40",
        ][..],
    ] {
        let m = model("configs/synthetic_faces/ssdlite_mnv2_fpn.yaml", opts);
        let images = [picture(256, 192, 3)];
        let native_raw = m.raw_outputs(&inputs(&images)).unwrap();
        let mut spec = OnnxExportSpec::new(192, 256);
        spec.raw = true;
        let raw = run_tract(&m.export_onnx(&spec, &[]).unwrap(), &images);
        for (i, (name, want)) in native_raw.iter().enumerate() {
            let want: Vec<f32> = want.flatten_all().unwrap().to_vec1().unwrap();
            let d = max_abs_diff(&floats(&raw[i]), &want);
            assert!(d <= 1e-4, "{opts:?}: raw {name} differs by {d}");
        }

        let out = run_tract(
            &m.export_onnx(&OnnxExportSpec::new(192, 256), &[]).unwrap(),
            &images,
        );
        let Some(Prediction::Detections(want)) = m.inference(&inputs(&images)).unwrap().pop()
        else {
            panic!("a detector gives detections")
        };
        let (boxes, scores) = (floats(&out[0]), floats(&out[1]));
        let classes = out[2].as_slice::<i64>().unwrap();
        assert!(
            want.boxes.len() >= 5,
            "{opts:?}: too few detections to compare"
        );
        eprintln!("{opts:?}: {} detections", want.boxes.len());
        assert_eq!(scores.len(), want.scores.len(), "{opts:?}");
        // Best first in both; detections whose scores tie to float rounding may swap, so
        // each is matched to an unused equal one (score, class, box) nearby in the order.
        let mut used = vec![false; scores.len()];
        for i in 0..scores.len() {
            assert!(
                i == 0 || scores[i] <= scores[i - 1],
                "{opts:?}: not sorted at {i}"
            );
            let found = (i.saturating_sub(3)..(i + 4).min(scores.len())).find(|&j| {
                !used[j]
                    && (scores[i] - want.scores[j]).abs() <= 1e-5
                    && classes[i] as usize == want.classes[j]
                    && max_abs_diff(&boxes[i * 4..i * 4 + 4], &want.boxes[j]) <= 1e-3
            });
            let Some(j) = found else {
                panic!(
                    "{opts:?}: detection {i} ({:?}, {}, class {}) has no equal in candletron's",
                    &boxes[i * 4..i * 4 + 4],
                    scores[i],
                    classes[i]
                );
            };
            used[j] = true;
        }
        // A batch of two: each image's detections, marked by `batch_index`, are its own
        // (here under the per-class cap, so all of them).
        if !opts.contains(&"3") {
            let pair = [picture(256, 192, 3), picture(256, 192, 9)];
            let mut spec = OnnxExportSpec::new(192, 256);
            spec.batch = ExportBatch::Fixed(2);
            let out = run_tract(&m.export_onnx(&spec, &[]).unwrap(), &pair);
            assert_eq!(out.len(), 4, "boxes, scores, classes, batch_index");
            let batch_index = out[3].as_slice::<i64>().unwrap();
            let scores = floats(&out[1]);
            for (i, p) in m.inference(&inputs(&pair)).unwrap().iter().enumerate() {
                let Prediction::Detections(d) = p else {
                    panic!("a detector gives detections")
                };
                let mut got: Vec<f32> = scores
                    .iter()
                    .zip(batch_index)
                    .filter(|(_, &b)| b == i as i64)
                    .map(|(s, _)| *s)
                    .collect();
                got.sort_by(|a, b| b.total_cmp(a));
                assert_eq!(got.len(), d.scores.len(), "image {i} of the batch");
                let d = max_abs_diff(&got, &d.scores);
                assert!(d <= 1e-5, "image {i} of the batch: scores differ by {d}");
            }
        }
        if opts.contains(&"3") {
            let distinct: std::collections::BTreeSet<_> = want.classes.iter().collect();
            assert!(distinct.len() > 1, "only classes {distinct:?}");
        }
    }
}

/// The `export` tool: a classifier file with its metadata and a reference input/output
/// pair; clear errors for what it cannot export.
#[test]
fn export_tool_writes_onnx_with_metadata_and_refuses_what_it_cannot_export() {
    let dir = std::env::temp_dir().join(format!("candletron-export-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let onnx = dir.join("cls.onnx");
    let reference = dir.join("ref.safetensors");
    let run = |args: &[&std::ffi::OsStr]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_export"))
            .args(args)
            .output()
            .unwrap()
    };
    let refused = |args: &[&std::ffi::OsStr], cause: &str| {
        let o = run(args);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && stderr.contains(cause), "{stderr}");
    };
    let o = run(&[
        "--config-file".as_ref(),
        "configs/imagenet/mobilenet_v2_classifier.yaml".as_ref(),
        "--output".as_ref(),
        onnx.as_os_str(),
        "--reference".as_ref(),
        reference.as_os_str(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let bytes = std::fs::read(&onnx).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    for needle in [
        "class_names",
        "\"tench\"",
        "input_size",
        "224x224",
        "output_layout",
    ] {
        assert!(text.contains(needle), "metadata lacks {needle}");
    }
    // The reference pair: tract on the stored input gives the stored logits.
    let r = candle_core::safetensors::load(&reference, &Device::Cpu).unwrap();
    let x = &r["image"];
    assert_eq!(x.dims(), [1, 3, 224, 224]);
    let pixels: Vec<u8> = x
        .squeeze(0)
        .unwrap()
        .permute((1, 2, 0))
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_dtype(candle_core::DType::U8)
        .unwrap()
        .to_vec1()
        .unwrap();
    let img = image::RgbImage::from_raw(224, 224, pixels).unwrap();
    let out = run_tract(&bytes, &[img]);
    let want: Vec<f32> = r["logits"].flatten_all().unwrap().to_vec1().unwrap();
    let d = max_abs_diff(&floats(&out[0]), &want);
    assert!(d <= 1e-4, "logits differ by {d}");

    // Faster R-CNN (random weights that fit it) is not exported, and says so.
    let frcnn = "configs/synthetic_faces/faster_rcnn_mnv2_fpn.yaml";
    let weights = dir.join("frcnn.safetensors");
    common::save_random_weights(frcnn, 1, &weights);
    let frcnn_args: [&std::ffi::OsStr; 4] = [
        "--config-file".as_ref(),
        frcnn.as_ref(),
        "--weights".as_ref(),
        weights.as_os_str(),
    ];
    let output = dir.join("frcnn.onnx");
    let size: [&std::ffi::OsStr; 3] = ["--size".as_ref(), "320".as_ref(), "320".as_ref()];
    refused(
        &[
            &frcnn_args[..],
            &["--output".as_ref(), output.as_os_str()],
            &size,
        ]
        .concat(),
        "no ONNX export",
    );
    assert!(!output.exists());
    // Exporting over the weights (here through `./`) would lose them: refused first.
    let before = std::fs::read(&weights).unwrap();
    let over_weights = dir.join(".").join("frcnn.safetensors");
    refused(
        &[
            &frcnn_args[..],
            &["--output".as_ref(), over_weights.as_os_str()],
        ]
        .concat(),
        "would replace the input",
    );
    assert_eq!(std::fs::read(&weights).unwrap(), before);
    refused(
        &[
            "--config-file".as_ref(),
            "configs/imagenet/mobilenet_v2_classifier.yaml".as_ref(),
            "--output".as_ref(),
            onnx.as_os_str(),
            "--batch".as_ref(),
            "many".as_ref(),
        ],
        "--batch many",
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
