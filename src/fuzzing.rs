//! One entry point per parser of outside input, fed arbitrary bytes: by the cargo-fuzz
//! targets in `fuzz/`, and by the test that replays their corpora
//! (`tests/fuzz_corpora.rs`). Each must return (an error is fine) without panicking,
//! aborting or allocating beyond what the input backs. The entry points also walk what a
//! parser returns, as its callers would, so that malformed results are caught too.

use std::path::Path;

use crate::config::Config;

/// A WIDER FACE annotation file (`wider_face_*_bbx_gt.txt`).
pub fn wider_bbx_gt(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(records) =
            crate::data::datasets::widerface::parse_bbx_gt(text, Path::new("fuzz_bbx_gt.txt"))
        {
            for r in &records {
                let _ = (r.event(), r.faces.len());
            }
        }
    }
}

/// A WIDER FACE prediction file (`EVENT/IMAGE.txt`).
pub fn prediction_file(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::evaluation::predictions::parse_prediction_file(text, Path::new("fuzz.txt"));
    }
}

fn walk_mat(v: &crate::evaluation::matfile::MatValue, depth: usize) {
    if depth > 8 {
        return;
    }
    let _ = (v.dims(), v.as_text(), v.rows(), v.values());
    if let Ok(cells) = v.as_cell() {
        for c in cells {
            walk_mat(c, depth + 1);
        }
    }
}

/// A MATLAB 5 MAT-file (the official WIDER FACE ground truth).
pub fn mat_file(data: &[u8]) {
    if let Ok(vars) = crate::evaluation::matfile::read_mat(data) {
        for (_, v) in &vars {
            walk_mat(v, 0);
        }
    }
}

/// A checkpoint: PyTorch zip or legacy pickle, or safetensors (with the training
/// metadata a checkpoint may carry).
pub fn checkpoint(data: &[u8]) {
    if let Ok(tensors) = crate::checkpoint::read_checkpoint_bytes(data) {
        for (_, t) in &tensors {
            let _ = t.dims();
        }
    }
    let _ = crate::checkpoint::parse_trained_with(data);
}

/// A YAML config, then `KEY VALUE` overrides: the input's first line holds the
/// overrides (whitespace-separated), the rest is the YAML text.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (first, yaml) = text.split_once('\n').unwrap_or((text, ""));
    let mut cfg = Config::default();
    if cfg.merge_from_str(yaml, "fuzz.yaml").is_ok() {
        let opts: Vec<&str> = first.split_whitespace().collect();
        if cfg.merge_from_list(&opts).is_ok() {
            let _ = cfg.to_yaml();
        }
    }
}

/// A COCO instances JSON file.
pub fn coco_json(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::data::datasets::coco::parse_coco_json(
            text,
            Path::new("fuzz.json"),
            Path::new("images"),
        );
    }
}

/// An image file (JPEG, PNG, and whatever else the decoder recognises); the decoder's
/// allocation limit (512 MiB) bounds what a header's claimed size can cost.
pub fn image(data: &[u8]) {
    let _ = crate::data::image_io::decode_image(data, Path::new("fuzz.img"));
}

/// A prediction request's query string, as `/v1/detect` and `/v1/classify` read it.
pub fn serve_query(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(uri) = format!("/v1/detect?{text}").parse::<axum::http::Uri>() {
        let _ = crate::serve::request::DetectParams::from_uri(&uri);
        let _ = crate::serve::request::classify_topk(&uri, 1000);
    }
}
