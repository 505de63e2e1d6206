//! `demo` runs a detector through `Predictor`: drawn images that keep the inputs' relative
//! paths, and the detections as COCO results JSON.

mod common;

use std::process::Command;

#[test]
fn demo_draws_a_detector_keeps_relative_paths_and_writes_coco_json() {
    let root = common::tmp_dir("demo-detector");
    // Random (seeded) weights for the default detector, saved as a checkpoint.
    let weights = root.join("w.safetensors");
    common::save_random_weights("configs/synthetic_faces/ssdlite_mnv2_fpn.yaml", 3, &weights);
    // Two images with the same file name in two folders.
    let input = root.join("in");
    for (dir, shade) in [("A", 90u8), ("B", 200u8)] {
        std::fs::create_dir_all(input.join(dir)).unwrap();
        let img = image::RgbImage::from_fn(80, 60, |x, y| {
            image::Rgb([shade, (x * 3) as u8, (y * 4) as u8])
        });
        img.save(input.join(dir).join("x.png")).unwrap();
    }
    let out = root.join("out");
    let json = root.join("dets.json");
    let o = Command::new(env!("CARGO_BIN_EXE_demo"))
        .args([
            "--config-file",
            "configs/synthetic_faces/ssdlite_mnv2_fpn.yaml",
        ])
        .arg("--weights")
        .arg(&weights)
        .arg("--input")
        .arg(&input)
        .arg("--output")
        .arg(&out)
        .arg("--json")
        .arg(&json)
        .args(["--class-names", "face", "--confidence-threshold", "0.0"])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.join("A/x.png").is_file() && out.join("B/x.png").is_file());
    let dets: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let dets = dets.as_array().unwrap();
    assert!(!dets.is_empty());
    for d in dets {
        let id = d["image_id"].as_str().unwrap();
        assert!(id == "A/x.png" || id == "B/x.png", "{id}");
        assert_eq!(d["category_id"].as_u64(), Some(0));
        let b: Vec<f64> = d["bbox"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        // x, y, w, h inside the 80x60 image.
        assert!(
            b[0] >= 0.0 && b[1] >= 0.0 && b[0] + b[2] <= 80.01 && b[1] + b[3] <= 60.01,
            "{b:?}"
        );
        assert!((0.0..=1.0).contains(&d["score"].as_f64().unwrap()));
    }

    // A prediction folder that does not exist is an error, not an empty drawing.
    let o = Command::new(env!("CARGO_BIN_EXE_demo"))
        .arg("--input")
        .arg(&input)
        .arg("--output")
        .arg(root.join("out2"))
        .arg("--predictions")
        .arg(root.join("nowhere"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("is not a folder"));
}

/// `demo` into its own input folder would replace the input PNGs with drawings: refused
/// before anything is written. An output folder inside the input folder is fine, and a
/// second run there does not draw the first run's drawings.
#[test]
fn demo_never_replaces_an_input_or_redraws_its_drawings() {
    let root = common::tmp_dir("demo-inputs");
    let input = root.join("in");
    std::fs::create_dir_all(&input).unwrap();
    let img = image::RgbImage::from_fn(40, 30, |x, y| {
        image::Rgb([(x * 6) as u8, (y * 8) as u8, 77])
    });
    img.save(input.join("x.png")).unwrap();
    img.save(input.join("x.jpg")).unwrap();
    let original = std::fs::read(input.join("x.png")).unwrap();
    // Drawing the WIDER prediction folder needs no model; its boxes are beside the point.
    let pred = root.join("pred");
    std::fs::create_dir_all(pred.join("in")).unwrap();
    std::fs::write(pred.join("in/x.txt"), "x\n1\n2 3 10 12 0.9\n").unwrap();
    let demo = |output: &std::path::Path| {
        Command::new(env!("CARGO_BIN_EXE_demo"))
            .arg("--input")
            .arg(&input)
            .arg("--output")
            .arg(output)
            .arg("--predictions")
            .arg(&pred)
            .output()
            .unwrap()
    };
    let o = demo(&input);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(stderr.contains("would replace the input image"), "{stderr}");
    assert_eq!(std::fs::read(input.join("x.png")).unwrap(), original);
    assert!(!input.join("x.jpg.png").exists());

    let inner = input.join("drawn");
    for run in 0..2 {
        let o = demo(&inner);
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!(
            stdout.contains("not drawing the 2 image(s)"),
            run == 1,
            "{stdout}"
        );
        assert!(inner.join("x.png").is_file() && inner.join("x.jpg.png").is_file());
        assert!(!inner.join("drawn").exists());
    }
    assert_eq!(std::fs::read(input.join("x.png")).unwrap(), original);

    // Nor does --json.
    let o = Command::new(env!("CARGO_BIN_EXE_demo"))
        .arg("--input")
        .arg(&input)
        .arg("--output")
        .arg(root.join("out"))
        .arg("--predictions")
        .arg(&pred)
        .arg("--json")
        .arg(input.join("x.png"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && stderr.contains("--json: writing"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(input.join("x.png")).unwrap(), original);
    assert!(!root.join("out").exists());
}
