//! Splits one classifier training step (batch 8, 224) into forward, backward and
//! optimizer time (by hand: `cargo bench --bench train_profile`).

// Reads tensor values directly; the library's reads go through `ops::host`.
#![allow(clippy::disallowed_methods)]
use candle_core::{Device, Tensor};
use candle_nn::{Optimizer, SGD};
use candletron::config::Config;
use candletron::modeling::build_model;
use candletron::structures::{Batch, Targets};
use std::time::Instant;

fn main() {
    candletron::utils::threads::configure();
    let mut cfg = Config::default();
    // `cargo bench` passes `--bench`; the rest are KEY VALUE overrides.
    let opts: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    cfg.merge_from_list(&opts).unwrap();
    let (model, _) = build_model(&cfg, 0).unwrap();
    let images = Tensor::randn(0f32, 1.0, (8, 3, 224, 224), &Device::Cpu).unwrap();
    let labels = Tensor::new(&[1u32, 2, 3, 4, 5, 6, 7, 8], &Device::Cpu).unwrap();
    let batch = Batch {
        images,
        targets: Some(Targets::Labels(labels)),
        image_sizes: Vec::new(),
        seeds: Vec::new(),
    };
    let mut opt = SGD::new(
        model.trainable_vars().into_iter().map(|(_, v)| v).collect(),
        0.01,
    )
    .unwrap();
    for i in 0..4 {
        let t = Instant::now();
        let out = model.arch.forward(&batch, true).unwrap();
        let loss = &out.losses["loss_cls"];
        loss.to_scalar::<f32>().unwrap();
        let f = t.elapsed().as_secs_f64() * 1000.0;
        let t = Instant::now();
        let grads = loss.backward().unwrap();
        let b = t.elapsed().as_secs_f64() * 1000.0;
        let t = Instant::now();
        opt.step(&grads).unwrap();
        let o = t.elapsed().as_secs_f64() * 1000.0;
        println!("step {i}: forward {f:.0} ms, backward {b:.0} ms, optimizer {o:.0} ms");
    }
}
