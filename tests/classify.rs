//! The classify tool end to end on the shared reference image.

mod common;

use std::process::Command;

#[test]
fn classify_top5_and_dump_match_pytorch() {
    let Some(shared) = common::shared("classify_top5_and_dump_match_pytorch") else {
        return;
    };
    let weights = shared.join("pretrained/mobilenet_v2-b0353104.pth");
    let (stdout, ours, theirs, dir) = common::classify_reference(
        &shared,
        "classify",
        &["--weights".as_ref(), weights.as_os_str()],
    );
    let want = common::reference_top5(&shared);
    let got = common::classify_top5(&stdout);
    assert_eq!(got, want, "{stdout}");
    assert!(stdout.contains("bobsled"), "{stdout}");
    // The preprocessing reproduces PyTorch's input, and the dump holds every map.
    for name in ["input", "res2", "res3", "res4", "res5", "logits"] {
        let (diff, _) = common::max_abs_diff(&ours[name], &theirs[name]);
        assert!(diff <= 1e-3, "{name}: {diff}");
    }
    let (diff, _) = common::max_abs_diff(&ours["input"], &theirs["input"]);
    assert!(
        diff < 1e-5,
        "preprocessing differs from torchvision's: {diff}"
    );
    // Inference writes nothing into OUTPUT_DIR (it may be a training run's folder).
    assert!(!dir.join("out/config.yaml").exists());
}

#[test]
fn classify_reports_bad_inputs() {
    let dir = common::tmp_dir("classify-bad");
    let bad = dir.join("bad.pth");
    std::fs::write(&bad, b"\x80\x02garbage").unwrap();
    let img = dir.join("img.png");
    image::RgbImage::new(300, 260).save(&img).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_classify"))
        .arg("--weights")
        .arg(&bad)
        .arg(&img)
        .args(["--", "OUTPUT_DIR"])
        .arg(dir.join("out"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("bad.pth") && !stderr.contains("panicked"),
        "{stderr}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_classify"))
        .args(["--print-config", "--", "MODEL.MOBILENET.WIDTH", "2"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("did you mean MODEL.MOBILENET.WIDTH_MULT?"),
        "{stderr}"
    );
}

/// A folder is classified image by image; weights that leave parameters unloaded are an
/// error for inference unless explicitly allowed.
#[test]
fn classify_reads_folders_and_refuses_partial_weights() {
    let dir = common::tmp_dir("classify-folder");
    let images = dir.join("images");
    std::fs::create_dir_all(images.join("sub")).unwrap();
    for (p, shade) in [("a.png", 40u8), ("sub/b.jpg", 200u8)] {
        image::RgbImage::from_fn(260, 240, |x, y| image::Rgb([shade, x as u8, y as u8]))
            .save(images.join(p))
            .unwrap();
    }
    std::fs::write(images.join("notes.txt"), "not an image").unwrap();
    let config = "configs/imagenet/mobilenet_v2_classifier.yaml";
    let run = |extra: &[&std::ffi::OsStr]| {
        Command::new(env!("CARGO_BIN_EXE_classify"))
            .args(["--config-file", config, "--topk", "1"])
            .args(extra)
            .output()
            .unwrap()
    };
    let o = run(&[images.as_os_str()]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        stdout.contains("a.png:") && stdout.contains("b.jpg:") && !stdout.contains("notes"),
        "{stdout}"
    );

    // A checkpoint with one tensor of the model.
    let partial = dir.join("partial.safetensors");
    let w = candle_core::Tensor::zeros(1000, candle_core::DType::F32, &candle_core::Device::Cpu)
        .unwrap();
    candletron::checkpoint::write_safetensors(&[("classifier.1.bias".to_string(), w)], &partial)
        .unwrap();
    let img = images.join("a.png");
    let o = run(&["--weights".as_ref(), partial.as_os_str(), img.as_os_str()]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{stderr}");
    assert!(
        stderr.contains("does not fit") && stderr.contains("partial.safetensors"),
        "{stderr}"
    );
    let o = run(&[
        "--weights".as_ref(),
        partial.as_os_str(),
        "--allow-unmatched-weights".as_ref(),
        img.as_os_str(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}
