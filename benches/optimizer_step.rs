//! The optimizer update of a model's parameters (the default MobileNetV2 classifier, or
//! `KEY VALUE` overrides): candletron's update one tensor at a time (its CPU mode) and in
//! flat groups (its GPU mode), beside Candle's per-tensor AdamW, on the same gradients
//! (by hand: `cargo bench --bench optimizer_step [KEY VALUE ...]`).

use candle_core::{DType, Device, Tensor};
use candle_nn::Optimizer as _;
use candletron::config::{Config, OptimizerName};
use candletron::modeling::build_model;
use candletron::solver::Optimizer;
use std::time::Instant;

const STEPS: usize = 20;

fn main() {
    candletron::utils::threads::configure();
    let mut cfg = Config::default();
    let opts: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    cfg.merge_from_list(&opts).unwrap();
    let (model, _) = build_model(&cfg, 0).unwrap();
    let vars = model.trainable_vars();
    let count: usize = vars.iter().map(|(_, v)| v.elem_count()).sum();
    // d/dv sum(v * r) = r: fixed random gradients for every parameter.
    let mut total = Tensor::zeros((), DType::F32, &Device::Cpu).unwrap();
    for (_, v) in &vars {
        let r = Tensor::randn(0f32, 1e-3, v.shape(), &Device::Cpu).unwrap();
        total = (total + (v.as_tensor() * r).unwrap().sum_all().unwrap()).unwrap();
    }
    let grads = total.backward().unwrap();
    println!(
        "{} parameter tensors, {count} values; ms per update, mean of {STEPS} after 2 warm-up steps",
        vars.len()
    );
    let time = |f: &mut dyn FnMut()| {
        f();
        f();
        let t = Instant::now();
        for _ in 0..STEPS {
            f();
        }
        t.elapsed().as_secs_f64() * 1000.0 / STEPS as f64
    };
    for name in [OptimizerName::Sgd, OptimizerName::AdamW] {
        cfg.solver.optimizer = name;
        for grouped in [false, true] {
            let mut ours = Optimizer::from_config(&cfg, vars.clone()).unwrap();
            ours.set_grouped(grouped);
            let ms = time(&mut || {
                ours.step(&grads, 1e-3).unwrap();
            });
            let mode = if grouped { "flat groups" } else { "per tensor" };
            println!("candletron {name:?}, {mode}: {ms:.2}");
        }
    }
    let mut candle = candle_nn::AdamW::new(
        vars.iter().map(|(_, v)| v.clone()).collect(),
        candle_nn::ParamsAdamW {
            lr: 1e-3,
            ..Default::default()
        },
    )
    .unwrap();
    let ms = time(&mut || candle.step(&grads).unwrap());
    println!("candle_nn AdamW (per tensor, no clipping): {ms:.2}");
}
