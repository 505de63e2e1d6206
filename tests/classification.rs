//! Classification through the same engine as detection: an image folder (`folder:PATH`)
//! trains the ImageNet MobileNetV2 with a new head (RandomResizedCrop + flip), evaluates
//! with Resize + CenterCrop, and writes top-1 / top-5 / F1 to `eval_results.json`.

mod common;

use std::path::Path;

use candletron::config::Config;
use candletron::engine::{DefaultTrainer, TrainOutcome};

/// `root/{train,val}/{red,green,blue}/*.png`: noisy pictures whose dominant colour is the
/// class, with a random darker rectangle, at a few sizes and aspect ratios.
fn write_folder(root: &Path) {
    for (split, per_class) in [("train", 10u32), ("val", 4)] {
        for (c, class) in ["blue", "green", "red"].iter().enumerate() {
            let dir = root.join(split).join(class);
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..per_class {
                let (w, h) = (48 + 8 * (i % 3), 40 + 6 * (i % 4));
                let mut seed = (c as u32 + 1) * 7919 + i * 104_729 + (split == "val") as u32;
                let mut noise = move || {
                    seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                    (seed >> 16) % 60
                };
                let img = image::RgbImage::from_fn(w, h, |x, y| {
                    let dark = x > w / 3 && x < w / 2 + i && y > h / 4 && y < h / 2;
                    let mut px = [noise() as u8 + 40, noise() as u8 + 40, noise() as u8 + 40];
                    px[2 - c] = if dark { 140 } else { 230 };
                    image::Rgb(px)
                });
                img.save(dir.join(format!("{i}.png"))).unwrap();
            }
        }
    }
}

#[test]
fn an_image_folder_fine_tunes_the_imagenet_classifier_and_reports_accuracy() {
    let root = common::tmp_dir("classification-folder");
    write_folder(&root.join("colours"));
    let out = root.join("out");
    let mut cfg = Config::from_file("configs/imagenet/mobilenet_v2_classifier.yaml").unwrap();
    cfg.merge_from_list(&[
        "DATASETS.ROOT",
        root.to_str().unwrap(),
        "DATASETS.TRAIN",
        "[folder:colours/train]",
        "DATASETS.TEST",
        "[folder:colours/val]",
        "MODEL.CLASSIFIER.NUM_CLASSES",
        "3",
        // Frozen BN statistics: batches of 6 would make poor ones.
        "MODEL.MOBILENET.NORM",
        "FrozenBN",
        "INPUT.AUGMENTATION",
        "random_resized_crop",
        "INPUT.RRC_SCALE",
        "[0.5, 1.0]",
        "INPUT.CROP_SIZE",
        "64",
        "INPUT.RESIZE_SHORT",
        "72",
        "SOLVER.IMS_PER_BATCH",
        "6",
        "SOLVER.BASE_LR",
        "0.001",
        "SOLVER.MAX_ITER",
        "30",
        "SOLVER.STEPS",
        "[]",
        "SOLVER.WARMUP_ITERS",
        "0",
        "SOLVER.CHECKPOINT_PERIOD",
        "1000",
        "DATALOADER.NUM_WORKERS",
        "1",
        "SEED",
        "0",
        "OUTPUT_DIR",
        out.to_str().unwrap(),
    ])
    .unwrap();
    let outcome = DefaultTrainer::from_config(&cfg)
        .unwrap()
        .resume_or_load(false)
        .unwrap()
        .train()
        .unwrap();
    assert!(matches!(outcome, TrainOutcome::Finished(_)), "{outcome:?}");
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("eval_results.json")).unwrap())
            .unwrap();
    let top1 = results["top1"].as_f64().unwrap();
    // 12 validation images, 3 classes (chance: 1/3): the colour is easy with ImageNet features.
    assert!(top1 >= 0.75, "{results}");
    assert_eq!(
        results["top5"].as_f64(),
        Some(1.0),
        "3 classes: always in the top 3"
    );
    for key in ["macro_f1", "f1/blue", "precision/green", "recall/red"] {
        let v = results[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key} in {results}"));
        assert!((0.0..=1.0).contains(&v), "{key}: {v}");
    }
    // Pictures: the confusion matrix and a grid of correctly classified images.
    let pictures = out.join("inference/folder_colours_val");
    let cm = image::open(pictures.join("confusion_matrix.png")).unwrap();
    assert!(cm.width() > 200 && cm.height() > 200);
    assert!(image::open(pictures.join("correct.png")).is_ok());
    // The checkpoint names the classes, in folder order.
    let stored = candletron::checkpoint::read_trained_with(&out.join("model_final.safetensors"))
        .unwrap()
        .unwrap();
    assert_eq!(stored.class_names, ["blue", "green", "red"]);
}

#[test]
fn a_class_count_that_does_not_match_the_folder_names_its_key() {
    let root = common::tmp_dir("classification-count");
    write_folder(&root.join("colours"));
    let mut cfg = Config::from_file("configs/imagenet/mobilenet_v2_classifier.yaml").unwrap();
    cfg.merge_from_list(&[
        "DATASETS.TRAIN",
        &format!("[folder:{}]", root.join("colours/train").display()),
        "INPUT.AUGMENTATION",
        "random_resized_crop",
        "SOLVER.MAX_ITER",
        "1",
        "OUTPUT_DIR",
        root.join("out").to_str().unwrap(),
    ])
    .unwrap();
    let e = DefaultTrainer::from_config(&cfg)
        .unwrap()
        .resume_or_load(false)
        .unwrap()
        .train()
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("MODEL.CLASSIFIER.NUM_CLASSES") && e.contains("blue, green, red"),
        "{e}"
    );
}

#[test]
fn the_synthetic_shapes_are_generated_once_as_an_imbalanced_image_folder() {
    let root = common::tmp_dir("classification-shapes");
    let mut cfg = Config::from_file("configs/classification/synthetic_mnv2.yaml").unwrap();
    cfg.merge_from_list(&[
        "DATASETS.ROOT",
        root.to_str().unwrap(),
        "DATASETS.SYNTHETIC_SHAPES.NUM_TRAIN",
        "42",
        "DATASETS.SYNTHETIC_SHAPES.NUM_VAL",
        "8",
        "DATASETS.SYNTHETIC_SHAPES.IMAGE_SIZE",
        "40",
    ])
    .unwrap();
    let train = candletron::data::catalog::get_dataset("synthetic_shapes_train", &cfg).unwrap();
    assert_eq!(
        train.metadata.thing_classes,
        ["disc", "square", "star", "triangle"]
    );
    let count = |c: usize| train.records.iter().filter(|r| r.label == Some(c)).count();
    // 42 images shared 8.1 : 4.1 : 3.1 : 5.5.
    assert_eq!([count(0), count(1), count(2), count(3)], [16, 8, 6, 11]);
    let first = std::fs::read(&train.records[0].file_name).unwrap();
    let val = candletron::data::catalog::get_dataset("synthetic_shapes_val", &cfg).unwrap();
    assert_eq!(val.records.len(), 8);
    // A second load reuses the cache: the same file, byte for byte.
    let again = candletron::data::catalog::get_dataset("synthetic_shapes_train", &cfg).unwrap();
    assert_eq!(std::fs::read(&again.records[0].file_name).unwrap(), first);
}
