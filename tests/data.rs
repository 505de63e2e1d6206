//! Datasets, the synthetic generator, the mapper and the loader.

// Tests read tensor values directly; the library's reads go through `ops::host`.
#![allow(clippy::disallowed_methods)]

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use candletron::config::Config;
use candletron::data::catalog::{get_dataset, register_widerface, registered_datasets};
use candletron::data::datasets::synthetic::{render, SyntheticSpec};
use candletron::data::loader::{DataLoader, LoaderOptions};
use candletron::data::mapper::DatasetMapper;
use candletron::data::rng::SampleRng;

/// A small synthetic set under its own root (no env var: tests share the process).
fn tiny_cfg(root: &Path) -> Config {
    let mut cfg = Config::default();
    cfg.merge_from_file(Path::new("configs/synthetic_faces/data.yaml"))
        .unwrap();
    let root = root.display().to_string();
    cfg.merge_from_list(&[
        "DATASETS.ROOT",
        root.as_str(),
        "DATASETS.SYNTHETIC.NUM_TRAIN",
        "10",
        "DATASETS.SYNTHETIC.NUM_VAL",
        "4",
        "DATASETS.SYNTHETIC.IMAGE_SIZE",
        "192",
        "INPUT.TRAIN_SIZE",
        "128",
    ])
    .unwrap();
    cfg
}

fn loader_opts(workers: usize, train: bool) -> LoaderOptions {
    LoaderOptions {
        batch_size: 3,
        num_workers: workers,
        prefetch: 2,
        seed: 7,
        train,
        start: 0,
        sampler: candletron::data::samplers::SamplerSpec::Shuffle,
        shard: Default::default(),
    }
}

#[test]
fn synthetic_dataset_is_generated_once_deterministically_and_read_by_the_wider_loader() {
    let a = common::tmp_dir("synth-a");
    let b = common::tmp_dir("synth-b");
    let da = get_dataset("synthetic_faces_train", &tiny_cfg(&a)).unwrap();
    let db = get_dataset("synthetic_faces_train", &tiny_cfg(&b)).unwrap();
    assert_eq!(da.records.len(), 10);
    assert_eq!(da.metadata.thing_classes, ["face"]);
    for (ra, rb) in da.records.iter().zip(&db.records) {
        assert_eq!(ra.annotations, rb.annotations);
        assert_eq!(
            std::fs::read(&ra.file_name).unwrap(),
            std::fs::read(&rb.file_name).unwrap(),
            "same seed, same bytes"
        );
        assert!(ra.file_name.starts_with(&a));
    }
    // Cached: the second call does not regenerate (the files keep their mtime).
    let t0 = std::fs::metadata(&da.records[0].file_name)
        .unwrap()
        .modified()
        .unwrap();
    let again = get_dataset("synthetic_faces_train", &tiny_cfg(&a)).unwrap();
    let t1 = std::fs::metadata(&again.records[0].file_name)
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(t0, t1);
    // Another seed gives other images.
    let mut other = tiny_cfg(&a);
    other
        .merge_from_list(&["DATASETS.SYNTHETIC.SEED", "1"])
        .unwrap();
    let dc = get_dataset("synthetic_faces_train", &other).unwrap();
    assert_ne!(
        da.records
            .iter()
            .map(|r| r.annotations.len())
            .collect::<Vec<_>>(),
        dc.records
            .iter()
            .map(|r| r.annotations.len())
            .collect::<Vec<_>>()
    );
    let val = get_dataset("synthetic_faces_val", &tiny_cfg(&a)).unwrap();
    assert_eq!(val.records.len(), 4);
    // Every image decodes and every box lies inside it.
    for r in &da.records {
        let img = image::open(&r.file_name).unwrap();
        for ann in &r.annotations {
            let [x1, y1, x2, y2] = ann.bbox;
            assert!(
                x1 >= 0.0 && y1 >= 0.0 && x2 <= img.width() as f32 && y2 <= img.height() as f32
            );
        }
    }
}

#[test]
fn synthetic_scenes_look_like_a_hard_face_problem() {
    let spec = SyntheticSpec {
        seed: 3,
        num_train: 40,
        num_val: 0,
        image_size: 640,
        max_faces: 60,
        min_face_size: 6.0,
        max_face_size: 400.0,
    };
    let mut heights = Vec::new();
    let mut counts = Vec::new();
    let mut attrs = [[0usize; 3]; 6];
    for i in 0..40 {
        let s = render(&spec, "train", i);
        counts.push(s.faces.len());
        for f in &s.faces {
            heights.push(f.bbox[3]);
            for (k, v) in [
                f.blur,
                f.expression,
                f.illumination,
                f.invalid,
                f.occlusion,
                f.pose,
            ]
            .into_iter()
            .enumerate()
            {
                attrs[k][v as usize] += 1;
            }
        }
    }
    assert!(counts.iter().all(|&c| c <= 60));
    assert!(*counts.iter().max().unwrap() >= 40, "crowds: {counts:?}");
    assert!(counts.iter().any(|&c| c <= 3), "sparse scenes: {counts:?}");
    let n = heights.len() as f64;
    let small = heights.iter().filter(|&&h| h < 32.0).count() as f64;
    assert!(small / n > 0.5, "most faces are small: {}", small / n);
    assert!(heights.iter().any(|&h| h <= 9.0), "tiny faces");
    assert!(heights.iter().any(|&h| h >= 150.0), "large faces");
    // Every attribute takes more than one value: blur 0/1/2, expression, illumination,
    // invalid, occlusion 0/1/2, pose.
    for (k, name) in [
        "blur",
        "expression",
        "illumination",
        "invalid",
        "occlusion",
        "pose",
    ]
    .iter()
    .enumerate()
    {
        assert!(attrs[k][1] > 0, "{name} never 1: {:?}", attrs[k]);
    }
    assert!(
        attrs[0][2] > 0 && attrs[4][2] > 0,
        "heavy blur and occlusion"
    );
    assert!(
        (attrs[3][1] as f64) < 0.1 * n,
        "few invalid faces: {:?}",
        attrs[3]
    );
}

#[test]
fn wider_loader_applies_the_face_filter_and_reports_missing_files() {
    let dir = common::tmp_dir("wider-filter");
    let txt = dir.join("gt.txt");
    std::fs::write(
        &txt,
        "0--E/a.jpg\n3\n10 10 20 20 0 0 0 0 0 0\n5 5 4 4 0 0 0 0 0 0\n50 50 30 30 0 0 0 1 0 0\n\
         0--E/empty.jpg\n0\n0 0 0 0 0 0 0 0 0 0\n",
    )
    .unwrap();
    register_widerface("test_filter_set", txt.clone(), dir.join("images"));
    let mut cfg = Config::default();
    cfg.merge_from_list(&["DATASETS.FACE_FILTER.MIN_SIZE", "8"])
        .unwrap();
    let d = get_dataset("test_filter_set", &cfg).unwrap();
    assert_eq!(d.records.len(), 2);
    let ign: Vec<bool> = d.records[0].annotations.iter().map(|a| a.ignore).collect();
    assert_eq!(
        ign,
        [false, true, true],
        "small and invalid faces are ignored"
    );
    assert_eq!(d.records[0].annotations[0].bbox, [10.0, 10.0, 30.0, 30.0]);
    assert_eq!(d.records[0].image_id, "0--E/a");
    assert!(
        d.records[1].annotations.is_empty(),
        "the zero line is not a face"
    );
    cfg.merge_from_list(&["DATASETS.FACE_FILTER.IGNORE_INVALID", "false"])
        .unwrap();
    let d = get_dataset("test_filter_set", &cfg).unwrap();
    assert!(!d.records[0].annotations[2].ignore);

    register_widerface("test_missing_set", dir.join("nope.txt"), dir.join("images"));
    let e = get_dataset("test_missing_set", &cfg)
        .unwrap_err()
        .to_string();
    assert!(e.contains("nope.txt") && e.contains("not found"), "{e}");
    let e = get_dataset("no_such_dataset", &cfg)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no_such_dataset") && e.contains("widerface_val"),
        "{e}"
    );
    assert!(registered_datasets().contains(&"coco_2017_train".to_string()));
}

#[test]
fn mapper_pipelines_produce_the_configured_sizes_with_boxes_inside() {
    let root = common::tmp_dir("mapper");
    let cfg = tiny_cfg(&root);
    let d = get_dataset("synthetic_faces_train", &cfg).unwrap();
    let train = DatasetMapper::from_config(&cfg, true).unwrap();
    let test = DatasetMapper::from_config(&cfg, false).unwrap();
    for (i, rec) in d.records.iter().enumerate() {
        let mut rng = SampleRng::new(i as u64);
        let s = train.map(rec, &mut rng).unwrap();
        assert_eq!(s.image.dimensions(), (128, 128));
        for b in &s.instances.boxes {
            assert!(
                b[0] >= 0.0 && b[1] >= 0.0 && b[2] <= 128.0 && b[3] <= 128.0,
                "{b:?}"
            );
            assert!(b[2] - b[0] > 0.0 && b[3] - b[1] > 0.0);
        }
        let t = test.map(rec, &mut rng).unwrap();
        assert_eq!(t.scale, (1.0, 1.0), "MIN_SIZE_TEST 0 keeps the size");
        assert_eq!(t.instances.boxes.len(), rec.annotations.len());
    }
    let mut cfg2 = cfg.clone();
    cfg2.merge_from_list(&[
        "INPUT.AUGMENTATION",
        "resize_shortest_edge",
        "INPUT.MIN_SIZE_TRAIN",
        "[96]",
    ])
    .unwrap();
    let m = DatasetMapper::from_config(&cfg2, true).unwrap();
    let s = m.map(&d.records[0], &mut SampleRng::new(0)).unwrap();
    assert_eq!(s.image.width().min(s.image.height()), 96);
    // An unknown pipeline fails when the config is loaded, naming the key and value.
    let e = cfg2
        .merge_from_list(&["INPUT.AUGMENTATION", "mosaic"])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("INPUT.AUGMENTATION") && e.contains("mosaic"),
        "{e}"
    );
}

/// Pixels, boxes and image ids of each batch.
type BatchContent = (Vec<f32>, Vec<Vec<[f32; 4]>>, Vec<String>);

fn collect(loader: DataLoader, n: usize) -> Vec<BatchContent> {
    loader
        .take(n)
        .map(|b| {
            let b = b.unwrap();
            (
                b.inputs
                    .iter()
                    .flat_map(|i| i.image.flatten_all().unwrap().to_vec1::<f32>().unwrap())
                    .collect(),
                b.inputs
                    .iter()
                    .map(|i| i.instances.as_ref().unwrap().boxes.clone())
                    .collect(),
                b.samples.iter().map(|s| s.image_id.clone()).collect(),
            )
        })
        .collect()
}

/// Data-parallel shards: the ranks' training batches, side by side, are the global
/// batches of one process (pixels, boxes, order), from the start and resumed; evaluation
/// shards interleave to the whole dataset.
#[test]
fn shards_of_the_stream_make_up_the_global_batches() {
    use candletron::data::loader::Shard;
    let root = common::tmp_dir("loader-shards");
    let cfg = tiny_cfg(&root);
    let d = get_dataset("synthetic_faces_train", &cfg).unwrap();
    let records = Arc::new(d.records.clone());
    let mapper = DatasetMapper::from_config(&cfg, true).unwrap();
    let run = |rank, world, start, batch| {
        let opts = LoaderOptions {
            batch_size: batch,
            start,
            shard: Shard { rank, world },
            ..loader_opts(1, true)
        };
        collect(
            DataLoader::new(records.clone(), mapper.clone(), opts).unwrap(),
            5,
        )
    };
    for start in [0, 8] {
        let whole = run(0, 1, start, 4);
        let (a, b) = (run(0, 2, start, 4), run(1, 2, start, 4));
        for ((w, a), b) in whole.iter().zip(&a).zip(&b) {
            let mut joined = a.clone();
            joined.0.extend(b.0.iter().copied());
            joined.1.extend(b.1.iter().cloned());
            joined.2.extend(b.2.iter().cloned());
            assert_eq!(w, &joined);
        }
    }
    // A global batch that does not split evenly is refused.
    let opts = LoaderOptions {
        batch_size: 3,
        shard: Shard { rank: 0, world: 2 },
        ..loader_opts(0, true)
    };
    let e = DataLoader::new(records.clone(), mapper.clone(), opts)
        .err()
        .unwrap();
    assert!(e.to_string().contains("3 images"), "{e}");
    // Evaluation: rank r reads records r, r + world, ...
    let test_mapper = DatasetMapper::from_config(&cfg, false).unwrap();
    let ids = |rank, world| -> Vec<String> {
        let opts = LoaderOptions {
            batch_size: 1,
            shard: Shard { rank, world },
            ..loader_opts(0, false)
        };
        DataLoader::new(records.clone(), test_mapper.clone(), opts)
            .unwrap()
            .flat_map(|b| b.unwrap().samples.into_iter().map(|s| s.image_id))
            .collect()
    };
    let all = ids(0, 1);
    let (r0, r1, r2) = (ids(0, 3), ids(1, 3), ids(2, 3));
    assert_eq!(r0.len() + r1.len() + r2.len(), all.len());
    for (i, id) in all.iter().enumerate() {
        let shard = [&r0, &r1, &r2][i % 3];
        assert_eq!(&shard[i / 3], id);
    }
}

/// The class-balanced and repeat-factor samplers keep the loader's promises: the same
/// batches for any worker count, and a resumed stream is the tail of the whole one.
#[test]
fn weighted_samplers_are_deterministic_and_resume_mid_stream() {
    use candletron::data::samplers::SamplerSpec;
    use candletron::structures::ClassLabel;
    let root = common::tmp_dir("loader-samplers");
    let cfg = tiny_cfg(&root);
    let d = get_dataset("synthetic_faces_train", &cfg).unwrap();
    // Labels 0 for the first 8 images, 1 for the last 2: balanced draws favour the two.
    let mut labelled = d.records.clone();
    for (i, r) in labelled.iter_mut().enumerate() {
        r.label = Some(ClassLabel::Single((i >= 8) as usize));
    }
    let mapper = DatasetMapper::from_config(&cfg, true).unwrap();
    for (records, sampler) in [
        (labelled, SamplerSpec::ClassBalanced),
        (
            d.records.clone(),
            SamplerSpec::RepeatFactor {
                threshold: 1.0,
                sqrt: false,
            },
        ),
    ] {
        let records = Arc::new(records);
        let run = |workers, start| {
            let opts = LoaderOptions {
                start,
                sampler,
                ..loader_opts(workers, true)
            };
            collect(
                DataLoader::new(records.clone(), mapper.clone(), opts).unwrap(),
                8 - start / 3,
            )
        };
        let whole = run(0, 0);
        assert_eq!(whole, run(2, 0), "{sampler:?}");
        assert_eq!(whole[3..], run(2, 9)[..], "{sampler:?}");
        if sampler == SamplerSpec::ClassBalanced {
            let ids: Vec<&String> = whole.iter().flat_map(|b| &b.2).collect();
            let rare = ids
                .iter()
                .filter(|id| records[8..].iter().any(|r| &r.image_id == **id))
                .count();
            // 24 draws, half expected from the 2 rare images (vs 24 * 2/10 unweighted).
            assert!(
                rare >= 8,
                "{rare} of {} draws from the rare class",
                ids.len()
            );
        }
    }
}

#[test]
fn loader_is_deterministic_for_any_worker_count_and_leaves_padding_to_the_model() {
    let root = common::tmp_dir("loader");
    let cfg = tiny_cfg(&root);
    let d = get_dataset("synthetic_faces_train", &cfg).unwrap();
    let records = Arc::new(d.records);
    let mapper = DatasetMapper::from_config(&cfg, true).unwrap();
    let run = |workers| {
        collect(
            DataLoader::new(records.clone(), mapper.clone(), loader_opts(workers, true)).unwrap(),
            7, // more than two epochs of 10 images in batches of 3
        )
    };
    let inline = run(0);
    assert_eq!(inline, run(2));
    assert_eq!(inline, run(3));
    // Epochs are reshuffled: the first 9 ids are not all the first 9 of the next epoch.
    let ids: Vec<String> = inline.iter().flat_map(|b| b.2.clone()).collect();
    assert_eq!(ids.len(), 21);
    assert_ne!(ids[0..10], ids[10..20]);

    let eval = DataLoader::new(
        records.clone(),
        DatasetMapper::from_config(&cfg, false).unwrap(),
        loader_opts(2, false),
    )
    .unwrap();
    assert_eq!(eval.batches_per_epoch(), 4);
    let mut seen = 0;
    for b in eval {
        let b = b.unwrap();
        // Unpadded pixels in 0..255 (the model normalises and pads), and detections
        // asked for in the original image's pixels.
        for (input, info) in b.inputs.iter().zip(&b.samples) {
            let (c, h, w) = input.image.dims3().unwrap();
            assert_eq!(c, 3);
            let (ow, oh) = info.original_size;
            assert_eq!(input.output_size, Some((oh as usize, ow as usize)));
            // ResizeShortestEdge(MIN_SIZE_TEST, MAX_SIZE_TEST), 0 keeping the size, and
            // nothing else: no padding.
            let (short, long) = (cfg.input.min_size_test, cfg.input.max_size_test);
            if short == 0 {
                assert_eq!((h, w), (oh as usize, ow as usize));
            } else {
                assert!(h.min(w) == short || h.max(w) == long, "{h}x{w}");
            }
            let max = input.image.max_all().unwrap().to_scalar::<f32>().unwrap();
            let min = input.image.min_all().unwrap().to_scalar::<f32>().unwrap();
            assert!((0.0..=255.0).contains(&min) && max <= 255.0 && max > 1.0);
        }
        seen += b.samples.len();
    }
    assert_eq!(seen, 10, "evaluation sees every image once");
}

#[test]
fn corrupt_and_missing_images_are_skipped_and_reported() {
    let root = common::tmp_dir("corrupt");
    let cfg = tiny_cfg(&root);
    let d = get_dataset("synthetic_faces_train", &cfg).unwrap();
    let mut records = d.records.clone();
    std::fs::write(&records[1].file_name, b"not a jpeg").unwrap();
    records[4].file_name = root.join("gone.jpg");
    let records = Arc::new(records);
    let mapper = DatasetMapper::from_config(&cfg, true).unwrap();
    let mut train = DataLoader::new(records.clone(), mapper.clone(), loader_opts(2, true)).unwrap();
    for _ in 0..8 {
        let b = train.next().unwrap().unwrap();
        assert_eq!(b.samples.len(), 3, "bad images are replaced in training");
    }
    let failures = train.failures();
    let names: Vec<String> = failures
        .iter()
        .map(|(p, _)| p.display().to_string())
        .collect();
    assert_eq!(failures.len(), 2, "{names:?}");
    assert!(names.iter().any(|n| n.ends_with("gone.jpg")));
    assert!(failures
        .iter()
        .any(|(p, e)| p == &records[1].file_name && e.contains("decode")));

    let eval = DataLoader::new(
        records.clone(),
        DatasetMapper::from_config(&cfg, false).unwrap(),
        loader_opts(1, false),
    )
    .unwrap();
    let n: usize = eval.map(|b| b.unwrap().samples.len()).sum();
    assert_eq!(n, 8, "evaluation drops the two bad images");
}

#[test]
fn visualize_data_prints_widerface_stats_as_json_and_draws_samples() {
    let dir = common::tmp_dir("visualize");
    let txt = dir.join("gt.txt");
    std::fs::write(
        &txt,
        "0--E/a.jpg\n2\n10 10 20 20 0 0 0 0 0 0\n5 5 4 4 0 0 0 1 0 0\n\
         0--E/empty.jpg\n0\n0 0 0 0 0 0 0 0 0 0\n1--F/b.jpg\n1\n1 1 100 120 0 0 0 0 0 0\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_visualize_data"))
        .args([
            "--widerface-txt",
            txt.to_str().unwrap(),
            "--stats",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let last = stdout.lines().last().unwrap();
    let v: serde_json::Value = serde_json::from_str(last).unwrap();
    assert_eq!(v["images"], 3);
    assert_eq!(v["boxes"], 3);
    assert_eq!(v["ignored_boxes"], 1);
    assert_eq!(v["images_without_boxes"], 1);
    assert_eq!(v["size_histogram"]["<8"], 1);

    let root = common::tmp_dir("visualize-root");
    let pics = dir.join("pics");
    let out = Command::new(env!("CARGO_BIN_EXE_visualize_data"))
        .args([
            "--config",
            "configs/synthetic_faces/data.yaml",
            "--num",
            "3",
            "--output",
            pics.to_str().unwrap(),
            "--",
            "DATASETS.ROOT",
            root.to_str().unwrap(),
            "DATASETS.SYNTHETIC.NUM_TRAIN",
            "4",
            "DATASETS.SYNTHETIC.NUM_VAL",
            "2",
            "DATASETS.SYNTHETIC.IMAGE_SIZE",
            "160",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read_dir(&pics).unwrap().count(), 3);
    assert!(String::from_utf8_lossy(&out.stdout).contains("images: 4"));
}
