//! Bad input: values out of range stop the load with where they came from; a run never
//! replaces another run's results; resuming survives a broken newest checkpoint without
//! duplicating metrics; SIGTERM stops training cleanly; evaluation refuses nonsense.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use candletron::config::Config;
use candletron::engine::DefaultTrainer;

#[test]
fn out_of_range_values_name_their_key_origin_and_range() {
    for (key, value, allowed) in [
        ("SOLVER.BASE_LR", "-1", "> 0"),
        ("SOLVER.BASE_LR", "inf", "> 0"),
        ("SOLVER.BASE_LR", "NaN", "> 0"),
        ("SOLVER.MOMENTUM", "-5", "[0, 1)"),
        ("INPUT.TRAIN_SIZE", "0", ">= 16"),
        ("INPUT.TRAIN_SIZE", "1", ">= 16"),
        ("INPUT.MIN_SIZE_TRAIN", "[0]", ">= 16"),
        (
            "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS",
            "[[1.0, 0.0]]",
            "> 0",
        ),
        ("MODEL.SSDLITE.SCORE_THRESH_TEST", "2", "[0, 1)"),
        ("MODEL.SSDLITE.NMS_THRESH_TEST", "-1", "[0, 1]"),
        ("TEST.DETECTIONS_PER_IMAGE", "0", ">= 1"),
        ("SOLVER.IMS_PER_BATCH", "0", ">= 1"),
    ] {
        let e = Config::default()
            .merge_from_list(&[key, value])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(key) && e.contains(&format!("command line ({key} {value})")),
            "{e}"
        );
        assert!(e.contains(allowed) && e.contains("out of range"), "{e}");
    }
    // From a file: its path and line.
    let dir = common::tmp_dir("ranges");
    let file = dir.join("bad.yaml");
    std::fs::write(&file, "SOLVER:\n  BASE_LR: 0.01\n  MOMENTUM: -5\n").unwrap();
    let e = Config::from_file(&file).unwrap_err().to_string();
    assert!(
        e.contains("bad.yaml:3") && e.contains("SOLVER.MOMENTUM"),
        "{e}"
    );
    // 0 where it means "off" is fine.
    Config::default()
        .merge_from_list(&["INPUT.MIN_SIZE_TEST", "0", "TEST.EVAL_PERIOD", "0"])
        .unwrap();
}

#[test]
fn an_override_missing_its_value_blames_its_key() {
    let e = Config::default()
        .merge_from_list(&["MODEL.WEIGHTS", "SOLVER.MAX_ITER", "10"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("`MODEL.WEIGHTS` has no value"), "{e}");
}

/// A tiny synthetic-faces run: 96-pixel images, two training images.
fn tiny(root: &Path, out: &Path, extra: &[&str]) -> Config {
    let mut cfg = Config::from_file("configs/synthetic_faces/ssdlite_mnv2_fpn.yaml").unwrap();
    cfg.merge_from_list(&common::tiny_run_overrides(root, out))
        .unwrap();
    cfg.merge_from_list(&["SEED", "3"]).unwrap();
    cfg.merge_from_list(extra).unwrap();
    cfg
}

fn iterations(metrics: &Path) -> Vec<u64> {
    std::fs::read_to_string(metrics)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("total_loss").is_some())
        .map(|v| v["iteration"].as_u64().unwrap())
        .collect()
}

fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn results_are_never_replaced_and_resume_falls_back_to_a_valid_checkpoint() {
    let root = common::tmp_dir("reliability-runs");
    let out = root.join("out");
    let no_test = ["DATASETS.TEST", "[]", "SOLVER.CHECKPOINT_PERIOD", "1"];
    let cfg = tiny(
        &root,
        &out,
        &[&no_test[..], &["SOLVER.MAX_ITER", "3"]].concat(),
    );
    DefaultTrainer::from_config(&cfg)
        .unwrap()
        .resume_or_load(false)
        .unwrap()
        .train()
        .unwrap();
    assert!(out.join("model_final.safetensors").is_file());
    let before = std::fs::read(out.join("metrics.json")).unwrap();

    // A new run into the same folder is refused, and nothing is touched.
    let e = DefaultTrainer::from_config(&cfg)
        .unwrap()
        .resume_or_load(false)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains(out.to_str().unwrap()) && e.contains("--resume") && e.contains("--overwrite"),
        "{e}"
    );
    assert_eq!(std::fs::read(out.join("metrics.json")).unwrap(), before);

    // The newest checkpoint truncated (a crash while copying) and a temporary file left
    // by a killed write: --resume goes back to the newest checkpoint that loads.
    let last = std::fs::read_to_string(out.join("last_checkpoint")).unwrap();
    assert_eq!(last.trim(), "model_final.safetensors");
    let f = out.join("model_final.safetensors");
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() / 2]).unwrap();
    let temp = out.join(".model_0000001.safetensors.tmp999999");
    std::fs::write(&temp, b"partial").unwrap();
    let cfg4 = tiny(
        &root,
        &out,
        &[&no_test[..], &["SOLVER.MAX_ITER", "4"]].concat(),
    );
    let mut t = DefaultTrainer::from_config(&cfg4)
        .unwrap()
        .resume_or_load(true)
        .unwrap();
    assert_eq!(
        t.start_iter(),
        2,
        "resumed from model_0000001 (iteration 1)"
    );
    assert!(!temp.exists());
    t.train().unwrap();
    // One record per iteration: the ones after the checkpoint were dropped, then redone.
    assert_eq!(iterations(&out.join("metrics.json")), vec![0, 1, 2, 3]);

    // --overwrite replaces the old run; CHECKPOINT_MAX_KEEP 1 keeps one periodic file.
    let cfg_keep = tiny(
        &root,
        &out,
        &[
            &no_test[..],
            &["SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_MAX_KEEP", "1"],
        ]
        .concat(),
    );
    DefaultTrainer::from_config(&cfg_keep)
        .unwrap()
        .with_overwrite(true)
        .resume_or_load(false)
        .unwrap()
        .train()
        .unwrap();
    let models: Vec<String> = files(&out)
        .into_iter()
        .filter(|f| f.starts_with("model_"))
        .collect();
    assert_eq!(
        models,
        ["model_0000002.safetensors", "model_final.safetensors"]
    );
    assert_eq!(iterations(&out.join("metrics.json")), vec![0, 1, 2, 3]);

    // Evaluating the run's newest checkpoint (`--eval-only --resume`) writes no config.
    let config_before = std::fs::read(out.join("config.yaml")).unwrap();
    let mut eval_cfg = cfg_keep.clone();
    eval_cfg
        .merge_from_list(&["DATASETS.TEST", "[synthetic_faces_val]"])
        .unwrap();
    let t = DefaultTrainer::from_config(&eval_cfg)
        .unwrap()
        .load_newest_checkpoint()
        .unwrap();
    assert_eq!(t.start_iter(), 4);
    assert!(t.eval_only(false).unwrap().contains_key("easy"));
    assert_eq!(
        std::fs::read(out.join("config.yaml")).unwrap(),
        config_before
    );
}

#[test]
fn evaluation_refuses_unfitting_weights_and_zero_images() {
    let root = common::tmp_dir("reliability-eval");
    let out = root.join("out");
    // The shipped backbone weights leave the FPN and heads random.
    let cfg = tiny(
        &root,
        &out,
        &[
            "MODEL.WEIGHTS",
            "weights/mobilenet_v2_imagenet_f16.safetensors",
        ],
    );
    let e = DefaultTrainer::from_config(&cfg)
        .unwrap()
        .eval_only(false)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("does not fit") && e.contains("--allow-unmatched-weights"),
        "{e}"
    );
    DefaultTrainer::from_config(&cfg)
        .unwrap()
        .eval_only(true)
        .unwrap();
    // Every val image gone: an error, not AP 0.
    let val: Vec<PathBuf> = walk(&root)
        .into_iter()
        .filter(|p| {
            p.to_string_lossy().contains("WIDER_val")
                && p.extension().is_some_and(|e| e == "jpg" || e == "png")
        })
        .collect();
    assert!(!val.is_empty());
    for p in &val {
        std::fs::remove_file(p).unwrap();
    }
    let e = DefaultTrainer::from_config(&cfg)
        .unwrap()
        .eval_only(true)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no image could be evaluated"), "{e}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Command-line numbers outside their range are refused by name before anything runs.
#[test]
fn tool_options_outside_their_range_are_refused() {
    for (bin, args, says) in [
        (
            env!("CARGO_BIN_EXE_demo"),
            &[
                "--input",
                "x.png",
                "--output",
                "o",
                "--confidence-threshold",
                "NaN",
            ][..],
            "--confidence-threshold",
        ),
        (
            env!("CARGO_BIN_EXE_demo"),
            &[
                "--input",
                "x.png",
                "--output",
                "o",
                "--confidence-threshold=1.5",
            ][..],
            "not in [0, 1]",
        ),
        (
            env!("CARGO_BIN_EXE_classify"),
            &["--topk", "0", "x.png"][..],
            "--topk",
        ),
        (
            env!("CARGO_BIN_EXE_benchmark"),
            &["--task", "inference", "--iters", "0"][..],
            "--iters",
        ),
    ] {
        let o = Command::new(bin).args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && stderr.contains(says) && stderr.contains("invalid value"),
            "{args:?}: {stderr}"
        );
    }
}

/// SIGTERM (what schedulers send before a kill) checkpoints and exits 0, like Ctrl-C.
#[test]
fn sigterm_checkpoints_and_exits_cleanly() {
    let root = common::tmp_dir("reliability-sigterm");
    let out = root.join("out");
    let child = Command::new(env!("CARGO_BIN_EXE_train_net"))
        .args([
            "--config-file",
            "configs/synthetic_faces/ssdlite_mnv2_fpn.yaml",
        ])
        .args(common::tiny_run_overrides(&root, &out))
        // A batch larger than the 2 training images is allowed, with a warning.
        .args(["SOLVER.MAX_ITER", "100000", "SOLVER.IMS_PER_BATCH", "3"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until training has written its first metrics record.
    let metrics = out.join("metrics.json");
    let start = std::time::Instant::now();
    while !metrics.is_file() {
        assert!(start.elapsed().as_secs() < 120, "training never started");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let o = common::wait_with_deadline(child, 300);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{:?}: {stdout}", o.status);
    assert!(
        stdout.contains("stopped at iteration") && stdout.contains("--resume"),
        "{stdout}"
    );
    let last = std::fs::read_to_string(out.join("last_checkpoint")).unwrap();
    assert!(out.join(last.trim()).is_file());
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains(
            "SOLVER.IMS_PER_BATCH 3): SOLVER.IMS_PER_BATCH is 3, more than the 2 training images"
        ),
        "{stderr}"
    );
}

/// Parsers never allocate from a count the data does not back, and take legal paths.
#[test]
fn annotation_parsers_survive_lying_counts_and_take_paths_with_spaces() {
    use candletron::data::datasets::widerface::parse_bbx_gt;
    use candletron::evaluation::predictions::parse_prediction_file;
    let gt = Path::new("wider_face_val_bbx_gt.txt");
    let r = parse_bbx_gt("0--Parade/my photo 1.jpg\n1\n10 20 30 40 0 0 0 0 0 0\n", gt).unwrap();
    assert_eq!(r[0].file_name, "0--Parade/my photo 1.jpg");
    assert_eq!(r[0].faces.len(), 1);
    let e = parse_bbx_gt("0--Parade/a.jpg\n999999999\n1 2 3 4 0 0 0 0 0 0\n", gt)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("wider_face_val_bbx_gt.txt:") && e.contains("file ends inside"),
        "{e}"
    );
    let p = Path::new("pred/0--Parade/a.txt");
    let e = parse_prediction_file("a\n999999999\n1 2 3 4 0.9\n", p).unwrap_err();
    assert!(e.to_string().contains("a.txt"), "{e}");
}
