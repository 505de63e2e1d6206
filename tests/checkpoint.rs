//! Checkpoint reading: zip and legacy .pth, safetensors, corrupt files, the convert tool.

// Tests read tensor values directly; the library's reads go through `ops::host`.
#![allow(clippy::disallowed_methods)]

mod common;

use std::process::Command;

use candletron::checkpoint::{read_checkpoint, read_checkpoint_bytes, write_safetensors};

#[test]
fn zip_pth_with_strides_offsets_and_wrapper() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tiny_zip.pth");
    let tensors = read_checkpoint(&path).unwrap();
    let names: Vec<&str> = tensors.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["layer.weight", "layer.bias", "layer.num_batches_tracked"]
    );
    let w: Vec<Vec<f32>> = tensors[0].1.to_vec2().unwrap();
    assert_eq!(w, vec![vec![1.0, 2.0, 3.0], vec![4.0, 5.0, 6.0]]);
    assert_eq!(tensors[1].1.dtype(), candle_core::DType::F64);
    assert_eq!(
        tensors[1].1.to_vec1::<f64>().unwrap(),
        vec![0.5, -1.5, 2.25]
    );
    assert_eq!(tensors[2].1.to_scalar::<i64>().unwrap(), 7);
}

#[test]
fn legacy_pth_reads_every_tensor() {
    let Some(shared) = common::shared("legacy_pth_reads_every_tensor") else {
        return;
    };
    let tensors = read_checkpoint(&shared.join("pretrained/mobilenet_v2-b0353104.pth")).unwrap();
    // 262 parameters and running statistics, plus 52 BN `num_batches_tracked` counters.
    assert_eq!(tensors.len(), 314);
    assert_eq!(
        tensors
            .iter()
            .filter(|(n, _)| n.ends_with("num_batches_tracked"))
            .count(),
        52
    );
    assert_eq!(tensors[0].0, "features.0.0.weight");
    assert_eq!(tensors[0].1.dims(), [32, 3, 3, 3]);
    let numel: usize = tensors
        .iter()
        .filter(|(n, _)| !n.contains("running_") && !n.ends_with("num_batches_tracked"))
        .map(|(_, t)| t.elem_count())
        .sum();
    assert_eq!(numel, 3_504_872);
}

#[test]
fn truncated_and_corrupt_files_are_errors_not_panics() {
    let Some(shared) = common::shared("truncated_and_corrupt_files_are_errors_not_panics") else {
        return;
    };
    let data = std::fs::read(shared.join("pretrained/mobilenet_v2-b0353104.pth")).unwrap();
    for cut in [
        0,
        5,
        16,
        140,
        1000,
        47_329,
        54_108,
        54_200,
        data.len() / 2,
        data.len() - 1,
    ] {
        let err = read_checkpoint_bytes(&data[..cut])
            .expect_err("truncated file must not load")
            .to_string();
        assert!(!err.is_empty());
    }
    let err = read_checkpoint_bytes(&data[..data.len() - 1])
        .unwrap_err()
        .to_string();
    assert!(err.contains("truncated"), "{err}");
    // Flipped bytes in the pickles: any outcome but a panic.
    let mut state = 12345u64;
    for _ in 0..200 {
        let mut bad = data[..60_000].to_vec();
        for _ in 0..4 {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let i = (state >> 33) as usize % 54_108;
            bad[i] ^= (state >> 20) as u8 | 1;
        }
        let _ = read_checkpoint_bytes(&bad);
    }
    let zip = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tiny_zip.pth"),
    )
    .unwrap();
    for cut in [4, 100, zip.len() / 2, zip.len() - 10] {
        assert!(read_checkpoint_bytes(&zip[..cut]).is_err());
    }
    assert!(read_checkpoint_bytes(b"hello world, not a checkpoint").is_err());
}

#[test]
fn missing_file_names_the_path() {
    let err = read_checkpoint(std::path::Path::new("/nonexistent/w.pth"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("/nonexistent/w.pth"), "{err}");
}

#[test]
fn convert_writes_equal_safetensors() {
    let dir = common::tmp_dir("convert");
    let input = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tiny_zip.pth");
    let out = dir.join("w.safetensors");
    let status = Command::new(env!("CARGO_BIN_EXE_convert"))
        .arg(&input)
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    let a = read_checkpoint(&input).unwrap();
    let mut b = read_checkpoint(&out).unwrap();
    b.sort_by_key(|(n, _)| a.iter().position(|(m, _)| m == n));
    assert_eq!(a.len(), b.len());
    for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        assert_eq!(ta.dtype(), tb.dtype());
        let diff = (ta.to_dtype(candle_core::DType::F64).unwrap()
            - tb.to_dtype(candle_core::DType::F64).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap_or(0.0);
        assert_eq!(diff, 0.0, "{na}");
    }
    // Converting onto the input (through `./`), or to a name that is not .safetensors, is
    // refused and leaves the input as it was.
    let before = std::fs::read(&out).unwrap();
    for (input, output, says) in [
        (
            out.clone(),
            dir.join(".").join("w.safetensors"),
            "would replace the input",
        ),
        (
            input.to_path_buf(),
            dir.join("w2.pth"),
            "name it *.safetensors",
        ),
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_convert"))
            .arg(&input)
            .arg(&output)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && stderr.contains(says), "{stderr}");
    }
    assert_eq!(std::fs::read(&out).unwrap(), before);
    assert!(!dir.join("w2.pth").exists());
    // Round trip through the library writer too.
    write_safetensors(&a, &dir.join("x.safetensors")).unwrap();
    assert_eq!(
        read_checkpoint(&dir.join("x.safetensors")).unwrap().len(),
        3
    );
}
