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
    // Every run saves its resolved config.
    assert!(dir.join("out/config.yaml").is_file());
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
