//! `Predictor`: the same detections as evaluation (`--eval-only`) on a dataset, in the
//! original images' pixels; a batch of equal-size images equals single calls.

mod common;

use candletron::checkpoint::{read_trained_with, write_safetensors};
use candletron::config::Config;
use candletron::data::catalog::get_dataset;
use candletron::engine::{inference_config, DefaultTrainer, Predicted, Predictor, TrainOutcome};
use candletron::evaluation::predictions::parse_prediction_file;

#[test]
fn predictor_gives_the_detections_of_evaluation() {
    let root = common::tmp_dir("predictor");
    let out = root.join("out");
    let mut cfg = Config::from_file("configs/synthetic_faces/ssdlite_mnv2_fpn.yaml").unwrap();
    cfg.merge_from_list(&[
        "DATASETS.ROOT",
        root.to_str().unwrap(),
        "DATASETS.SYNTHETIC.NUM_TRAIN",
        "4",
        "DATASETS.SYNTHETIC.NUM_VAL",
        "3",
        "DATASETS.SYNTHETIC.IMAGE_SIZE",
        "160",
        // A test-time resize, so that boxes are mapped back to the original pixels.
        "INPUT.MIN_SIZE_TEST",
        "96",
        "MODEL.WEIGHTS",
        "",
        "SEED",
        "5",
        "SOLVER.MAX_ITER",
        "0",
        "TEST.VIS_NUM",
        "0",
        "OUTPUT_DIR",
        out.to_str().unwrap(),
    ])
    .unwrap();
    // Evaluation of a (randomly initialised, seeded) model, as --eval-only runs it.
    let mut trainer = DefaultTrainer::from_config(&cfg).unwrap();
    let TrainOutcome::Finished(_) = trainer.train().unwrap() else {
        panic!("nothing to interrupt");
    };
    let weights = root.join("weights.safetensors");
    let tensors: Vec<_> = trainer
        .model()
        .params
        .vars()
        .into_iter()
        .map(|(n, v)| (n, v.as_tensor().clone()))
        .collect();
    write_safetensors(&tensors, &weights).unwrap();

    cfg.model.weights = weights.display().to_string();
    let predictor = Predictor::from_config(&cfg)
        .unwrap()
        .with_class_names(vec!["face".into()])
        .unwrap();
    let records = get_dataset("synthetic_faces_val", &cfg).unwrap().records;
    let images: Vec<_> = records
        .iter()
        .map(|r| image::open(&r.file_name).unwrap())
        .collect();
    // Images of different sizes batch together: one prediction each.
    assert_eq!(
        predictor.predict_batch(&images).unwrap().len(),
        images.len()
    );
    let mut compared = 0;
    for (rec, img) in records.iter().zip(&images) {
        let single = predictor.predict(img).unwrap();
        // A batch of images of one size (no padding between them) gives the single result.
        let pair = predictor
            .predict_batch(&[img.clone(), img.clone()])
            .unwrap();
        assert_eq!(pair[0], single);
        assert_eq!(pair[1], single);
        let Predicted::Detections(dets) = single else {
            panic!("a detector gives detections");
        };
        // Evaluation's submission file: x y w h (1 decimal) and score (6 decimals).
        let (event, stem) = rec.image_id.split_once('/').unwrap();
        let file = out
            .join("inference/synthetic_faces_val/predictions")
            .join(event)
            .join(format!("{stem}.txt"));
        let text = std::fs::read_to_string(&file).unwrap();
        let want = parse_prediction_file(&text, &file).unwrap();
        assert_eq!(dets.len(), want.len(), "{}", rec.image_id);
        assert!(!dets.is_empty());
        let (w, h) = image::image_dimensions(&rec.file_name).unwrap();
        for (d, p) in dets.iter().zip(&want) {
            assert_eq!(d.class_name, "face");
            let [x1, y1, x2, y2] = d.bbox.map(|v| v as f64);
            assert!(
                x2 <= w as f64 && y2 <= h as f64,
                "inside the original image: {d:?}"
            );
            for (got, file_value) in [x1, y1, x2 - x1, y2 - y1].iter().zip(&p[..4]) {
                assert!((got - file_value).abs() <= 0.051, "{d:?} vs {p:?}");
            }
            assert!((d.score as f64 - p[4]).abs() <= 1e-6, "{d:?} vs {p:?}");
            compared += 1;
        }
    }
    assert!(compared > 0);

    // RGBA and 16-bit versions of an image are read as its 8-bit RGB pixels, as the loader
    // reads files; a grey image as its grey value in all three channels.
    let rgb = images[0].to_rgb8();
    let want = predictor
        .predict(&image::DynamicImage::ImageRgb8(rgb.clone()))
        .unwrap();
    let rgba =
        image::DynamicImage::ImageRgba8(image::DynamicImage::ImageRgb8(rgb.clone()).to_rgba8());
    assert_eq!(predictor.predict(&rgba).unwrap(), want);
    let rgb16 = image::DynamicImage::ImageRgb8(rgb.clone()).to_rgb16();
    assert_eq!(
        predictor
            .predict(&image::DynamicImage::ImageRgb16(rgb16))
            .unwrap(),
        want
    );
    let grey = image::DynamicImage::ImageRgb8(rgb).to_luma8();
    let grey_as_rgb = image::DynamicImage::ImageLuma8(grey.clone()).to_rgb8();
    assert_eq!(
        predictor
            .predict(&image::DynamicImage::ImageLuma8(grey))
            .unwrap(),
        predictor
            .predict(&image::DynamicImage::ImageRgb8(grey_as_rgb))
            .unwrap()
    );
}

#[test]
fn predictor_refuses_missing_or_unfitting_weights() {
    let mut cfg = Config::from_file("configs/synthetic_faces/ssdlite_mnv2_fpn.yaml").unwrap();
    cfg.model.weights = String::new();
    assert!(Predictor::from_config(&cfg).is_err());
    // ImageNet backbone weights leave the detector's heads missing.
    cfg.model.weights = "weights/mobilenet_v2_imagenet_f16.safetensors".into();
    let e = Predictor::from_config(&cfg).err().unwrap().to_string();
    assert!(e.contains("does not fit") && e.contains("missing"), "{e}");
}

/// A checkpoint written by training carries its config and the dataset's class names:
/// `--weights model_final.safetensors` alone rebuilds the model and names its classes.
#[test]
fn a_trained_checkpoint_alone_rebuilds_the_predictor() {
    let root = common::tmp_dir("predictor-stored-config");
    let out = root.join("out");
    let mut cfg = Config::from_file("configs/synthetic_faces/ssdlite_mnv2_fpn.yaml").unwrap();
    cfg.merge_from_list(&common::tiny_run_overrides(&root, &out))
        .unwrap();
    cfg.merge_from_list(&["DATASETS.TEST", "[]", "SOLVER.MAX_ITER", "1"])
        .unwrap();
    let mut trainer = DefaultTrainer::from_config(&cfg).unwrap();
    trainer.train().unwrap();
    let weights = out.join("model_final.safetensors");

    let stored = read_trained_with(&weights)
        .unwrap()
        .expect("training stores its run");
    assert_eq!(stored.class_names, vec!["face".to_string()]);
    let rebuilt = inference_config(None, Some(&weights), &[]).unwrap();
    assert_eq!(rebuilt.model.weights, weights.display().to_string());
    let mut expected = cfg.clone();
    expected.model.weights = rebuilt.model.weights.clone();
    assert_eq!(rebuilt.to_yaml(), expected.to_yaml());
    // An explicit config file still wins over the stored one.
    let explicit = inference_config(
        Some(std::path::Path::new(
            "configs/synthetic_faces/ssdlite_mnv2_fpn.yaml",
        )),
        Some(&weights),
        &[],
    )
    .unwrap();
    assert_ne!(explicit.output_dir, cfg.output_dir);

    let predictor = Predictor::from_config(&rebuilt).unwrap();
    assert_eq!(predictor.class_names(), ["face".to_string()]);

    // The demo with nothing but the weights.
    let img = root.join("in.png");
    image::RgbImage::from_fn(64, 48, |x, y| {
        image::Rgb([(x * 4) as u8, (y * 5) as u8, 90])
    })
    .save(&img)
    .unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_demo"))
        .arg("--weights")
        .arg(&weights)
        .arg("--input")
        .arg(&img)
        .arg("--output")
        .arg(root.join("drawn"))
        .arg("--json")
        .arg(root.join("d.json"))
        .args(["--confidence-threshold", "0"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(root.join("drawn/in.png").is_file());

    // Weights without a stored run (a converted checkpoint) and no config: the defaults.
    assert!(read_trained_with(std::path::Path::new(
        "weights/mobilenet_v2_imagenet_f16.safetensors"
    ))
    .unwrap()
    .is_none());
}
