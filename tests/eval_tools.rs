//! The evaluation and drawing tools end to end.

mod common;

use std::process::Command;

use candletron::data::datasets::widerface::{format_bbx_gt, FaceAnnotation, WiderRecord};

#[test]
fn widerface_eval_json_and_plot_on_case_a() {
    let Some(shared) = common::shared("widerface_eval_json_and_plot_on_case_a") else {
        return;
    };
    let dir = common::tmp_dir("wider-tool");
    let png = dir.join("pr.png");
    let out = Command::new(env!("CARGO_BIN_EXE_widerface_eval"))
        .arg("--pred")
        .arg(shared.join("widerface/eval_case_a/predictions"))
        .arg("--gt")
        .arg(shared.join("widerface/ground_truth"))
        .arg("--json")
        .arg("--plot")
        .arg(&png)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(shared.join("widerface/eval_case_a/expected_ap.json")).unwrap(),
    )
    .unwrap();
    for k in ["easy", "medium", "hard"] {
        assert!(
            (last[k].as_f64().unwrap() - expected[k].as_f64().unwrap()).abs() <= 1e-9,
            "{k}"
        );
    }
    let img = image::open(&png).unwrap();
    assert_eq!((img.width(), img.height()), (800, 640));
}

fn face(x: f64, y: f64, w: f64, h: f64) -> FaceAnnotation {
    FaceAnnotation {
        bbox: [x, y, w, h],
        blur: 0,
        expression: 0,
        illumination: 0,
        invalid: 0,
        occlusion: 0,
        pose: 0,
    }
}

#[test]
fn widerface_eval_on_a_bbx_gt_file_reports_missing_files() {
    let dir = common::tmp_dir("wider-txt");
    let records = vec![
        WiderRecord {
            file_name: "0--Synth/a.jpg".into(),
            faces: vec![face(10., 10., 60., 60.), face(100., 100., 12., 12.)],
        },
        WiderRecord {
            file_name: "0--Synth/b.jpg".into(),
            faces: vec![face(5., 5., 30., 30.)],
        },
    ];
    std::fs::write(dir.join("gt.txt"), format_bbx_gt(&records)).unwrap();
    std::fs::create_dir_all(dir.join("pred/0--Synth")).unwrap();
    // Finds the 60 px face (easy) and the 12 px one (hard only); b has no file.
    std::fs::write(
        dir.join("pred/0--Synth/a.txt"),
        "a\n2\n10 10 60 60 0.9\n100 100 12 12 0.8\n",
    )
    .unwrap();
    let eval = |pred: &std::path::Path, extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_widerface_eval"))
            .arg("--pred")
            .arg(pred)
            .arg("--gt")
            .arg(dir.join("gt.txt"))
            .args(extra)
            .output()
            .unwrap()
    };
    let out = eval(&dir.join("pred"), &["--json"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stderr.contains("1 of 2 images have no prediction file") && stderr.contains("0--Synth/b"),
        "{stderr}"
    );
    let v: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    // easy: 1 face, found -> 1. medium: a's 60 px and b's 30 px; 12 px ignored -> 0.5.
    // hard: 3 faces, 2 found, no false positive -> 2/3.
    assert!((v["easy"].as_f64().unwrap() - 1.0).abs() < 1e-12, "{v}");
    assert!((v["medium"].as_f64().unwrap() - 0.5).abs() < 1e-12, "{v}");
    assert!(
        (v["hard"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-12,
        "{v}"
    );

    // A malformed prediction file is an error naming file and line.
    std::fs::write(dir.join("pred/0--Synth/b.txt"), "b\n1\n5 5 30 zz 0.5\n").unwrap();
    let out = eval(&dir.join("pred"), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("b.txt:3") && stderr.contains("`zz`"),
        "{stderr}"
    );

    // Predictions with a negative width or height (x2 written for w) are counted and
    // reported; they still evaluate.
    std::fs::write(
        dir.join("pred/0--Synth/b.txt"),
        "b\n2\n5 5 30 30 0.5\n35 35 -30 -30 0.4\n",
    )
    .unwrap();
    let out = eval(&dir.join("pred"), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.contains("1 predictions") && stderr.contains("negative"),
        "{stderr}"
    );

    // `--pred` naming a file, or nothing, says which.
    for (pred, says) in [
        (dir.join("gt.txt"), "is not a folder"),
        (dir.join("nothing"), "does not exist"),
    ] {
        let out = eval(&pred, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(&format!("{} {says}", pred.display())),
            "{stderr}"
        );
    }
}

#[test]
fn demo_draws_prediction_boxes() {
    let dir = common::tmp_dir("demo");
    std::fs::create_dir_all(dir.join("images/0--Synth")).unwrap();
    std::fs::create_dir_all(dir.join("pred/0--Synth")).unwrap();
    image::RgbImage::from_pixel(320, 240, image::Rgb([90, 90, 90]))
        .save(dir.join("images/0--Synth/a.png"))
        .unwrap();
    std::fs::write(dir.join("images/0--Synth/broken.jpg"), b"not a jpeg").unwrap();
    std::fs::write(
        dir.join("pred/0--Synth/a.txt"),
        "a\n2\n40 40 100 80 0.93\n200 100 50 50 0.2\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_demo"))
        .arg("--input")
        .arg(dir.join("images"))
        .arg("--predictions")
        .arg(dir.join("pred"))
        .arg("--output")
        .arg(dir.join("out"))
        .args(["--confidence-threshold", "0.5"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("1 of 2 detections"), "{stdout}");
    assert!(
        stderr.contains("broken.jpg"),
        "a corrupt image is reported: {stderr}"
    );
    // The output keeps the image's path under --input.
    let img = image::open(dir.join("out/0--Synth/a.png"))
        .unwrap()
        .to_rgb8();
    let bg = image::Rgb([90, 90, 90]);
    // The kept box's left edge is drawn, the low-score box is not.
    assert_ne!(*img.get_pixel(40, 100), bg);
    assert_eq!(*img.get_pixel(200, 125), bg);
    // The score label sits above the box.
    assert!((0..40).any(|y| (40..80).any(|x| *img.get_pixel(x, y) != bg)));
}
