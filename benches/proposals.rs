//! Faster R-CNN's proposal selection (`find_top_rpn_proposals`) for a batch, the host
//! work between the two stages of a training step (by hand: `cargo bench --bench
//! proposals -- [--batch N] [--size S] [--iters K] [--json]`).
//!
//! Without inputs it draws random objectness and deltas over the anchors of
//! `configs/synthetic_faces/faster_rcnn_mnv2_fpn.yaml` (p3-p6, three square anchors per
//! cell, 1000 per level before NMS, 500 after). `--inputs F.safetensors` reads them
//! instead, with a reference's kept boxes (`tools/compare/compare_proposals.py`, which
//! times Detectron2's algorithm on PyTorch with the same inputs), and checks that every
//! image keeps the reference's boxes.

// Reads tensor values directly; the library's reads go through `ops::host`.
#![allow(clippy::disallowed_methods)]
use candle_core::{Device, Tensor};
use candletron::modeling::box_regression::Box2BoxTransform;
use candletron::modeling::proposal_generator::{
    find_top_rpn_proposals, ProposalLimits, Proposals, RpnOutputs,
};
use std::collections::HashMap;
use std::time::Instant;

struct Inputs {
    logits: Vec<f32>,
    deltas: Vec<f32>,
    anchors: Vec<[f32; 4]>,
    per_level: Vec<usize>,
    image_sizes: Vec<(usize, usize)>,
    limits: ProposalLimits,
    /// Per image, the reference's kept boxes.
    expected: Option<Vec<Vec<[f32; 4]>>>,
}

/// The default config's anchors at `size` px: strides 8-64, three square sizes per
/// level, centred on cell centres (offset 0.5).
fn anchors(size: usize) -> (Vec<[f32; 4]>, Vec<usize>) {
    let sizes = [
        [16.0, 24.0, 32.0],
        [48.0, 64.0, 96.0],
        [128.0, 160.0, 192.0],
        [256.0, 320.0, 400.0],
    ];
    let mut all = Vec::new();
    let mut per_level = Vec::new();
    for (l, level) in sizes.iter().enumerate() {
        let stride = 8usize << l;
        let cells = size.div_ceil(stride);
        for y in 0..cells {
            for x in 0..cells {
                let (cx, cy) = (
                    (x as f32 + 0.5) * stride as f32,
                    (y as f32 + 0.5) * stride as f32,
                );
                for &s in level {
                    all.push([cx - s / 2.0, cy - s / 2.0, cx + s / 2.0, cy + s / 2.0]);
                }
            }
        }
        per_level.push(cells * cells * level.len());
    }
    (all, per_level)
}

fn random_inputs(batch: usize, size: usize) -> Inputs {
    let (anchors, per_level) = anchors(size);
    let r = anchors.len();
    let dev = Device::Cpu;
    let logits = Tensor::randn(0f32, 2.0, batch * r, &dev).unwrap();
    let deltas = Tensor::randn(0f32, 0.3, batch * r * 4, &dev).unwrap();
    Inputs {
        logits: logits.to_vec1().unwrap(),
        deltas: deltas.to_vec1().unwrap(),
        anchors,
        per_level,
        image_sizes: vec![(size, size); batch],
        limits: ProposalLimits {
            pre_nms_topk: 1000,
            post_nms_topk: 500,
            nms_thresh: 0.7,
            min_box_size: 0.0,
        },
        expected: None,
    }
}

fn read_inputs(path: &str) -> Inputs {
    let t: HashMap<String, Tensor> = candle_core::safetensors::load(path, &Device::Cpu).unwrap();
    let f32s = |k: &str| -> Vec<f32> { t[k].flatten_all().unwrap().to_vec1().unwrap() };
    let ints = |k: &str| -> Vec<usize> {
        let v: Vec<i64> = t[k].flatten_all().unwrap().to_vec1().unwrap();
        v.into_iter().map(|x| x as usize).collect()
    };
    let boxes =
        |v: Vec<f32>| -> Vec<[f32; 4]> { v.chunks(4).map(|c| [c[0], c[1], c[2], c[3]]).collect() };
    let sizes = ints("image_sizes");
    let limits = f32s("limits");
    let counts = ints("kept_count");
    let kept = boxes(f32s("kept_boxes"));
    let per_image = kept.len() / counts.len();
    Inputs {
        logits: f32s("logits"),
        deltas: f32s("deltas"),
        anchors: boxes(f32s("anchors")),
        per_level: ints("per_level"),
        image_sizes: sizes.chunks(2).map(|c| (c[0], c[1])).collect(),
        limits: ProposalLimits {
            pre_nms_topk: limits[0] as usize,
            post_nms_topk: limits[1] as usize,
            nms_thresh: limits[2],
            min_box_size: limits[3],
        },
        expected: Some(
            counts
                .iter()
                .enumerate()
                .map(|(i, &c)| kept[i * per_image..i * per_image + c].to_vec())
                .collect(),
        ),
    }
}

/// Images whose kept boxes differ from the reference's: a different count, or a box
/// off by more than 1e-4 relative (the two decode with different `exp`s).
fn mismatches(got: &[Proposals], expected: &[Vec<[f32; 4]>]) -> usize {
    got.iter()
        .zip(expected)
        .filter(|(p, e)| {
            p.boxes.len() != e.len()
                || p.boxes.iter().zip(e.iter()).any(|(a, b)| {
                    a.iter()
                        .zip(b)
                        .any(|(x, y)| (x - y).abs() > 1e-4 * x.abs().max(y.abs()).max(1.0))
                })
        })
        .count()
}

fn main() {
    candletron::utils::threads::configure();
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .map(|i| args[i + 1].clone())
    };
    let iters: usize = value("--iters").map_or(10, |v| v.parse().unwrap());
    let inputs = match value("--inputs") {
        Some(path) => read_inputs(&path),
        None => random_inputs(
            value("--batch").map_or(32, |v| v.parse().unwrap()),
            value("--size").map_or(640, |v| v.parse().unwrap()),
        ),
    };
    let coder = Box2BoxTransform::new([1.0; 4]);
    let outputs = RpnOutputs {
        logits: &inputs.logits,
        deltas: &inputs.deltas,
        anchors: &inputs.anchors,
        per_level: &inputs.per_level,
    };
    let run = || find_top_rpn_proposals(&outputs, &inputs.image_sizes, &coder, &inputs.limits);
    let proposals = run();
    let mut times: Vec<f64> = (0..iters)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(run());
            t.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let kept: usize = proposals.iter().map(|p| p.boxes.len()).sum();
    let wrong = inputs.expected.as_ref().map(|e| mismatches(&proposals, e));
    if args.iter().any(|a| a == "--json") {
        println!(
            "{{\"median_ms\": {median:.3}, \"kept\": {kept}, \"mismatched_images\": {}}}",
            wrong.map_or("null".into(), |w| w.to_string())
        );
    } else {
        println!(
            "{} images, {} anchors each: {median:.2} ms (median of {iters}), {kept} proposals kept",
            inputs.image_sizes.len(),
            inputs.anchors.len()
        );
        if let Some(w) = wrong {
            println!("{w} images differ from the reference's proposals");
        }
    }
}
