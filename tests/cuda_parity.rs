//! With `--features cuda` on a machine with a GPU: the same weights and batch give the
//! same training-mode features, gradients and detector losses on CUDA as on the CPU
//! (which the other tests check against PyTorch and finite differences). Elsewhere the
//! tests say they are skipped.

// Tests read tensor values directly; the library's reads go through `ops::host`.
#![allow(clippy::disallowed_methods)]
#![cfg(feature = "cuda")]

use std::path::Path;
use std::sync::Arc;

mod common;

use candle_core::{DType, Device, Tensor, Var};
use candletron::checkpoint::load_state_dict;
use candletron::config::Config;
use candletron::layers::params::ParamStore;
use candletron::modeling::backbone::build_backbone;
use candletron::modeling::meta_arch::Outputs;
use candletron::modeling::{build_model, Model};
use candletron::structures::Instances;
use candletron::structures::{Batch, Targets};

fn gpu() -> Option<Device> {
    common::cuda_device()
}

fn config(file: &str, extra: &[&str]) -> Config {
    let mut opts = vec!["MODEL.WEIGHTS", ""];
    opts.extend_from_slice(extra);
    Config::from_args(Some(Path::new(file)), &opts).unwrap()
}

/// ||a - b|| / ||b||, computed on the CPU in f64.
fn rel_diff(a: &Tensor, b: &Tensor) -> f64 {
    let f = |t: &Tensor| {
        t.to_device(&Device::Cpu)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
    };
    let (a, b) = (f(a), f(b));
    let num = (&a - &b).unwrap().sqr().unwrap().sum_all().unwrap();
    let den = b.sqr().unwrap().sum_all().unwrap();
    (num.to_scalar::<f64>().unwrap() / den.to_scalar::<f64>().unwrap().max(1e-300)).sqrt()
}

fn copy_store(from: &ParamStore, to: &ParamStore) {
    let tensors: Vec<(String, Tensor)> = from
        .vars()
        .into_iter()
        .map(|(k, v)| (k, v.as_tensor().clone()))
        .collect();
    let report = load_state_dict(to, &tensors).unwrap();
    assert!(
        report.missing.is_empty() && report.mismatched.is_empty(),
        "{report}"
    );
}

/// MobileNetV2 + FPN in training mode (batch-statistics BN, depthwise convs, upsampling):
/// a fixed projection of every level, and the gradient of every parameter. Both devices
/// run f32 against a CPU f64 reference. Features must agree to 1e-4. Gradients of the
/// early layers pass through many batch-statistics BNs whose backward cancels, so f32
/// rounding is amplified: on CUDA with BN composed from stock ops (f32 sums) they were
/// measured up to 6.7e-3 from the reference; the CPU's fused op, accumulating in f64,
/// stays near 1e-3, and so should the CUDA op, which accumulates in f64 as well. A real error is O(1), so gradients must be within 2e-2, or no
/// further than 3x the CPU's own distance.
#[test]
fn backbone_train_step_matches_cpu() {
    let Some(gpu) = gpu() else { return };
    let cfg = config(
        "configs/synthetic_faces/ssdlite_mnv2_fpn.yaml",
        &[
            "MODEL.MOBILENET.NORM",
            "BN",
            "MODEL.BACKBONE.FREEZE_AT",
            "0",
        ],
    );
    let images = Tensor::randn(0f32, 1.0, (2, 3, 160, 192), &Device::Cpu).unwrap();
    let run = |dev: &Device, dt: DType, init: Option<&ParamStore>| {
        let store = Arc::new(ParamStore::new(0));
        let backbone = build_backbone(&cfg, store.var_builder(dt, dev)).unwrap();
        if let Some(init) = init {
            copy_store(init, &store);
        }
        let x = images.to_dtype(dt).unwrap().to_device(dev).unwrap();
        let feats = backbone.forward_t(&x, true).unwrap();
        let mut loss = Tensor::zeros((), dt, dev).unwrap();
        let mut outs = Vec::new();
        for (name, f) in &feats {
            // A projection that differs per position, so every output value matters.
            let r = Tensor::ones(f.dims(), dt, &Device::Cpu)
                .unwrap()
                .cumsum(3)
                .unwrap()
                .sin()
                .unwrap()
                .to_device(dev)
                .unwrap();
            loss = (loss + (f * r).unwrap().sum_all().unwrap()).unwrap();
            outs.push((name.clone(), f.clone()));
        }
        let grads = loss.backward().unwrap();
        let g: Vec<(String, Tensor)> = store
            .vars()
            .into_iter()
            .filter_map(|(k, v): (String, Var)| grads.get(v.as_tensor()).map(|g| (k, g.clone())))
            .collect();
        (store, outs, g)
    };
    let (init, ref_out, ref_grads) = run(&Device::Cpu, DType::F64, None);
    let (_, cpu_out, cpu_grads) = run(&Device::Cpu, DType::F32, Some(&init));
    let (_, gpu_out, gpu_grads) = run(&gpu, DType::F32, Some(&init));
    assert_eq!(gpu_grads.len(), ref_grads.len());
    assert_eq!(cpu_grads.len(), ref_grads.len());
    assert!(ref_grads.len() > 100, "{} gradients", ref_grads.len());
    let mut worst = Vec::new();
    let pairs = ref_out.iter().zip(&cpu_out).zip(&gpu_out);
    let grad_pairs = ref_grads.iter().zip(&cpu_grads).zip(&gpu_grads);
    for (((name, r), (_, c)), (_, g)) in pairs.chain(grad_pairs) {
        let (dc, dg) = (rel_diff(c, r), rel_diff(g, r));
        let is_output = ref_out.iter().any(|(n, _)| n == name);
        let bound = if is_output { 1e-4 } else { 2e-2 };
        if dg > (3.0 * dc).max(bound) {
            worst.push(format!("{name}: CUDA {dg:.2e} vs CPU {dc:.2e} from f64"));
        }
    }
    assert!(worst.is_empty(), "{}", worst.join("\n"));
}

/// The detector of `file` on `device` (with `init`'s weights when given) in training
/// mode on `images`, with `inst` on every image.
fn detector_forward(
    file: &str,
    device: &str,
    init: Option<&ParamStore>,
    images: &Tensor,
    inst: &Instances,
) -> (Model, Outputs) {
    let cfg = config(file, &["MODEL.DEVICE", device]);
    let (model, _) = build_model(&cfg, 0).unwrap();
    if let Some(init) = init {
        copy_store(init, &model.params);
    }
    let batch = Batch {
        images: images.to_device(&model.device).unwrap(),
        targets: Some(Targets::Instances(vec![
            inst.clone();
            images.dim(0).unwrap()
        ])),
        image_sizes: Vec::new(),
        seeds: Vec::new(),
    };
    let out = model.arch.forward(&batch, true).unwrap();
    (model, out)
}

/// Every named loss, read to the host.
fn loss_values(out: &Outputs) -> Vec<(String, f32)> {
    out.losses
        .iter()
        .map(|(k, v)| (k.clone(), v.to_scalar::<f32>().unwrap()))
        .collect()
}

/// Whole detectors in training mode: the same losses on both devices. For Faster R-CNN
/// only the RPN's (the ROI head samples proposals by rank, which rounding may reorder).
#[test]
fn detector_losses_match_cpu() {
    let Some(gpu) = gpu() else { return };
    let s = 256f32;
    let boxes: Vec<[f32; 4]> = (1..=5)
        .map(|k| {
            let side = s * k as f32 / 10.0;
            let o = s * 0.05 * k as f32;
            [o, o, (o + side).min(s), (o + side).min(s)]
        })
        .collect();
    let inst = Instances {
        classes: vec![0; boxes.len()],
        ignore: vec![false; boxes.len()],
        boxes,
    };
    let images = Tensor::randn(0f32, 1.0, (2, 3, 256, 256), &Device::Cpu).unwrap();
    for (file, compared) in [
        (
            "configs/synthetic_faces/ssdlite_mnv2_fpn.yaml",
            &["loss_cls", "loss_box_reg"][..],
        ),
        (
            "configs/synthetic_faces/faster_rcnn_mnv2_fpn.yaml",
            &["loss_rpn_cls", "loss_rpn_loc"][..],
        ),
    ] {
        let losses = |device: &str, init: Option<&ParamStore>| {
            let (model, out) = detector_forward(file, device, init, &images, &inst);
            (model.params.clone(), loss_values(&out))
        };
        let (cpu_store, cpu) = losses("cpu", None);
        let (_, cuda) = losses("cuda", Some(&cpu_store));
        assert!(gpu.is_cuda());
        for name in compared {
            let get = |v: &[(String, f32)]| v.iter().find(|(k, _)| k == name).unwrap().1;
            let (a, b) = (get(&cuda), get(&cpu));
            assert!(
                (a - b).abs() <= 1e-3 * b.abs().max(1e-3),
                "{file} {name}: CUDA {a} vs CPU {b}"
            );
        }
        eprintln!("{file}: CUDA {cuda:?}, CPU {cpu:?}");
    }
}

/// The optimizer updates a GPU's parameters in flat groups and a CPU's one by one: three
/// SGD (Nesterov, weight decay, clipping) and three AdamW steps over the same parameters
/// and gradients leave the same weights, to f32 rounding (sqrt and division may round
/// differently on the GPU), and the same gradient norm.
#[test]
fn grouped_optimizer_steps_match_cpu() {
    use candletron::solver::optimizer::{Kind, Optimizer, Param};
    let Some(gpu) = gpu() else { return };
    let shapes: [&[usize]; 4] = [&[32, 16, 3, 3], &[32], &[32], &[10, 32]];
    let init: Vec<Tensor> = shapes
        .iter()
        .map(|s| Tensor::randn(0f32, 1.0, *s, &Device::Cpu).unwrap())
        .collect();
    let grads: Vec<Vec<Tensor>> = (0..3)
        .map(|_| {
            shapes
                .iter()
                .map(|s| Tensor::randn(0f32, 1.0, *s, &Device::Cpu).unwrap())
                .collect()
        })
        .collect();
    let kinds = [
        Kind::Sgd {
            momentum: 0.9,
            nesterov: true,
        },
        Kind::AdamW {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        },
    ];
    for kind in kinds {
        let run = |dev: &Device| {
            let vars: Vec<Var> = init
                .iter()
                .map(|t| Var::from_tensor(&t.to_device(dev).unwrap()).unwrap())
                .collect();
            let params = vars
                .iter()
                .enumerate()
                .map(|(i, v)| Param {
                    name: format!("p{i}"),
                    var: v.clone(),
                    weight_decay: if v.rank() > 1 { 1e-2 } else { 0.0 },
                    lr_factor: if i == 2 { 2.0 } else { 1.0 },
                })
                .collect();
            let mut o = Optimizer::new(kind, params, Some(5.0));
            let mut norms = Vec::new();
            for step in &grads {
                let mut total = Tensor::zeros((), DType::F32, dev).unwrap();
                for (v, g) in vars.iter().zip(step) {
                    let term = (v.as_tensor() * g.to_device(dev).unwrap()).unwrap();
                    total = (total + term.sum_all().unwrap()).unwrap();
                }
                let norm = o.step(&total.backward().unwrap(), 0.05).unwrap();
                norms.push(
                    norm.to_device(&Device::Cpu)
                        .unwrap()
                        .to_scalar::<f64>()
                        .unwrap(),
                );
            }
            (vars, norms)
        };
        let (cpu, cpu_norms) = run(&Device::Cpu);
        let (cuda, cuda_norms) = run(&gpu);
        for (a, b) in cpu_norms.iter().zip(&cuda_norms) {
            assert!(
                (a - b).abs() <= 1e-9 * a.abs(),
                "{kind:?} norm: CPU {a} vs CUDA {b}"
            );
        }
        for (i, (c, g)) in cpu.iter().zip(&cuda).enumerate() {
            let d = rel_diff(g.as_tensor(), c.as_tensor());
            assert!(d < 1e-6, "{kind:?} parameter {i}: {d:.2e}");
        }
    }
}

/// Mixed precision on the GPU: under a bf16 or f16 autocast scope the detectors' training
/// losses agree with the CPU's (which computes the same narrow roundings in f32 arithmetic)
/// to the narrow dtype's rounding, and every gradient is finite. Then float16 loss scaling:
/// an overflowing step on the GPU leaves the weights as they were, with no host read.
#[test]
fn mixed_precision_losses_match_cpu_and_overflow_skips_on_the_device() {
    use candletron::layers::autocast::Scope;
    use candletron::solver::optimizer::{Kind, Optimizer, Param};
    use candletron::solver::GradScaler;
    let Some(gpu) = gpu() else { return };
    let s = 256f32;
    let inst = Instances {
        classes: vec![0; 3],
        ignore: vec![false; 3],
        boxes: vec![
            [20.0, 20.0, 120.0, 140.0],
            [150.0, 30.0, 240.0, 100.0],
            [60.0, 160.0, s, s],
        ],
    };
    let images = Tensor::randn(0f32, 1.0, (2, 3, 256, 256), &Device::Cpu).unwrap();
    for (file, compared) in [
        (
            "configs/synthetic_faces/ssdlite_mnv2_fpn.yaml",
            &["loss_cls", "loss_box_reg"][..],
        ),
        (
            "configs/synthetic_faces/faster_rcnn_mnv2_fpn.yaml",
            &["loss_rpn_cls", "loss_rpn_loc"][..],
        ),
    ] {
        for (dt, tol) in [(DType::BF16, 2e-2f32), (DType::F16, 5e-3)] {
            let losses = |device: &str, init: Option<&ParamStore>| {
                let (model, out) = {
                    let _scope = Scope::new(Some(dt)).unwrap();
                    detector_forward(file, device, init, &images, &inst)
                };
                let mut total = Tensor::zeros((), DType::F32, &model.device).unwrap();
                for l in out.losses.values() {
                    assert_eq!(l.dtype(), DType::F32, "{file}: losses in f32");
                    total = (total + l).unwrap();
                }
                let grads = total.backward().unwrap();
                for (name, v) in model.params.vars() {
                    if let Some(g) = grads.get(v.as_tensor()) {
                        let sum = g.abs().unwrap().sum_all().unwrap();
                        let sum = sum
                            .to_dtype(DType::F64)
                            .unwrap()
                            .to_scalar::<f64>()
                            .unwrap();
                        assert!(
                            sum.is_finite(),
                            "{file} {dt:?} {device}: gradient of {name}"
                        );
                    }
                }
                (model.params.clone(), loss_values(&out))
            };
            let (cpu_store, cpu) = losses("cpu", None);
            let (_, cuda) = losses("cuda", Some(&cpu_store));
            for name in compared {
                let get = |v: &[(String, f32)]| v.iter().find(|(k, _)| k == name).unwrap().1;
                let (a, b) = (get(&cuda), get(&cpu));
                assert!(
                    (a - b).abs() <= tol * b.abs().max(1e-3),
                    "{file} {dt:?} {name}: CUDA {a} vs CPU {b}"
                );
            }
            eprintln!("{file} {dt:?}: CUDA {cuda:?}, CPU {cpu:?}");
        }
    }

    let w = Var::from_tensor(&Tensor::new(&[1.0f32, -2.0, 3.0], &gpu).unwrap()).unwrap();
    let param = Param {
        name: "w".into(),
        var: w.clone(),
        weight_decay: 0.0,
        lr_factor: 1.0,
    };
    let kind = Kind::AdamW {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
    };
    let mut o = Optimizer::new(kind, vec![param], Some(1.0))
        .with_grad_scaler(Some(GradScaler::new(1024.0, 2.0, 0.5, 2000)));
    let g = Tensor::new(&[f32::INFINITY, 1.0, 1.0], &gpu).unwrap();
    let grads = (w.as_tensor() * g)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let reads = candletron::ops::host::reads();
    let norm = o.step(&grads, 0.1).unwrap();
    assert_eq!(
        candletron::ops::host::reads(),
        reads,
        "the step read nothing"
    );
    let norm = norm
        .to_device(&Device::Cpu)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    assert!(o.finish_step(norm));
    assert_eq!(
        w.as_tensor().to_vec1::<f32>().unwrap(),
        vec![1.0, -2.0, 3.0]
    );
    assert_eq!(o.loss_scale(), Some(512.0));
}

/// What [`batch_norm_run`] returns, in order.
const BN_RESULTS: [&str; 6] = [
    "output",
    "input grad",
    "weight grad",
    "bias grad",
    "mean",
    "var",
];

/// Output, input/weight/bias gradients and batch statistics of a training batch norm on
/// `dev`: the CUDA op there, the CPU op on the CPU, or (`reference`) the CUDA op without
/// activation followed by the stock activation, whose gradient mask comes from the same
/// pre-activation bits.
fn batch_norm_run(
    dev: &Device,
    [x, w, b, r]: [&Tensor; 4],
    activation: candletron::ops::Activation,
    reference: bool,
) -> [Tensor; 6] {
    use candletron::ops::batch_norm_train_cuda::batch_norm_train_cuda;
    use candletron::ops::{batch_norm_train, Activation};
    let vars = [x, w, b].map(|t| Var::from_tensor(&t.to_device(dev).unwrap()).unwrap());
    let [xv, wv, bv] = vars.each_ref().map(|v| v.as_tensor());
    let (y, mean, var) = if dev.is_cpu() {
        let (y, s) = batch_norm_train(xv, wv, bv, 1e-5, activation).unwrap();
        (
            y,
            Tensor::new(s.mean, dev).unwrap(),
            Tensor::new(s.var, dev).unwrap(),
        )
    } else if reference {
        let (y, m, v) = batch_norm_train_cuda(xv, wv, bv, 1e-5, Activation::Identity).unwrap();
        (activation.apply(&y).unwrap(), m, v)
    } else {
        batch_norm_train_cuda(xv, wv, bv, 1e-5, activation).unwrap()
    };
    let loss = (&y * r.to_device(dev).unwrap()).unwrap().sum_all().unwrap();
    let g = loss.backward().unwrap();
    let grad = |t: &Tensor| g.get(t).unwrap().clone();
    [y.clone(), grad(xv), grad(wv), grad(bv), mean, var]
}

/// The fused training batch norm on CUDA: against the CPU op (itself checked against
/// stock ops and finite differences) in f64 with every fusable activation and in f32
/// without one; in f32 with ReLU/ReLU6 against its own identity output through the stock
/// activation. (The GPU forms the pre-activation with a fused multiply-add, the CPU
/// without: in f32 an element within a rounding of 0 or 6 may take the other side of the
/// mask on the two devices, an O(1) change of its gradient; in f64 that band is too thin
/// to be hit.) One case has a mean of 100 against a spread of 2, which the moments about
/// each channel's first value keep exact.
#[test]
fn batch_norm_training_kernels_match_the_cpu_op() {
    use candletron::ops::Activation;
    let Some(gpu) = gpu() else { return };
    let shapes = [
        ([2, 3, 5, 7], 0.0),
        ([4, 32, 28, 28], 100.0),
        ([1, 96, 7, 7], 0.5),
        ([8, 16, 33, 31], 0.0),
    ];
    for (dtype, tol) in [(DType::F64, 1e-11), (DType::F32, 2e-5)] {
        for (dims, offset) in shapes {
            let c = dims[1];
            let data = |d: &[usize], mean: f64, std: f64| {
                Tensor::randn(mean, std, d, &Device::Cpu)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap()
            };
            let x = data(&dims, offset, 2.0);
            // Biases near 1 so that ReLU6 cuts at both ends.
            let (w, b) = (data(&[c], 1.0, 0.5), data(&[c], 1.0, 1.0));
            let r = data(&dims, 0.0, 1.0);
            let inputs = [&x, &w, &b, &r];
            for act in [Activation::Identity, Activation::ReLU, Activation::ReLU6] {
                let on_gpu = batch_norm_run(&gpu, inputs, act, false);
                let against_cpu = dtype == DType::F64 || act == Activation::Identity;
                let expected = if against_cpu {
                    batch_norm_run(&Device::Cpu, inputs, act, false)
                } else {
                    batch_norm_run(&gpu, inputs, act, true)
                };
                for ((name, a), e) in BN_RESULTS.iter().zip(&on_gpu).zip(&expected) {
                    assert!(a.device().is_cuda());
                    let d = rel_diff(a, e);
                    assert!(
                        d <= tol,
                        "{dtype:?} {dims:?} {act:?} ({}): {name} differs by {d:e}",
                        if against_cpu {
                            "vs CPU"
                        } else {
                            "vs stock activation"
                        }
                    );
                }
            }
        }
    }
}

/// bf16/f16 activations through the fused CUDA op (f32 weight and bias): the f32 op's
/// statistics and weight/bias gradients on the widened input, and its output and input
/// gradient rounded once, bit for bit (both compute in f32 from the same values).
#[test]
fn narrow_batch_norm_kernels_round_the_f32_op_once() {
    use candletron::ops::Activation;
    let Some(gpu) = gpu() else { return };
    let dims = [4, 24, 19, 17];
    let c = dims[1];
    let on_gpu = |t: Tensor| t.to_device(&gpu).unwrap();
    let x = on_gpu(Tensor::randn(0.5f32, 2.0, &dims[..], &Device::Cpu).unwrap());
    let r = on_gpu(Tensor::randn(0f32, 1.0, &dims[..], &Device::Cpu).unwrap());
    let w = on_gpu(Tensor::randn(1f32, 0.5, c, &Device::Cpu).unwrap());
    let b = on_gpu(Tensor::randn(1f32, 1.0, c, &Device::Cpu).unwrap());
    let bits = |t: &Tensor| -> Vec<u64> {
        let t = t
            .to_device(&Device::Cpu)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap();
        t.flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap()
            .iter()
            .map(|v| v.to_bits())
            .collect()
    };
    for dtype in [DType::BF16, DType::F16] {
        let (xn, rn) = (x.to_dtype(dtype).unwrap(), r.to_dtype(dtype).unwrap());
        for act in [Activation::Identity, Activation::ReLU, Activation::ReLU6] {
            let narrow = batch_norm_run(&gpu, [&xn, &w, &b, &rn], act, false);
            let (xw, rw) = (
                xn.to_dtype(DType::F32).unwrap(),
                rn.to_dtype(DType::F32).unwrap(),
            );
            let wide = batch_norm_run(&gpu, [&xw, &w, &b, &rw], act, false);
            assert_eq!(narrow[0].dtype(), dtype);
            assert_eq!(narrow[1].dtype(), dtype);
            for (i, name) in BN_RESULTS.iter().enumerate() {
                let want = if i < 2 {
                    wide[i].to_dtype(dtype).unwrap()
                } else {
                    wide[i].clone()
                };
                assert!(
                    bits(&narrow[i]) == bits(&want),
                    "{dtype:?} {act:?}: {name} differs"
                );
            }
        }
    }
}

/// A MobileNet-style training BN layer on CUDA takes the fused op (its output is the op's,
/// bit for bit) and moves its running statistics as on the CPU (unbiased variance,
/// momentum 0.1).
#[test]
fn batch_norm_layer_running_statistics_match_the_cpu() {
    use candletron::layers::batch_norm::BatchNorm2d;
    use candletron::ops::batch_norm_train_cuda::batch_norm_train_cuda;
    use candletron::ops::Activation;
    let Some(gpu) = gpu() else { return };
    let x = Tensor::randn(3f32, 2.0, (4, 8, 9, 9), &Device::Cpu).unwrap();
    let layer_on = |dev: &Device| {
        let store = Arc::new(ParamStore::new(0));
        let bn = BatchNorm2d::new(8, store.var_builder(DType::F32, dev)).unwrap();
        let y = bn
            .forward_act(&x.to_device(dev).unwrap(), true, Activation::ReLU6)
            .unwrap();
        let state: Vec<(String, Tensor)> = store
            .vars()
            .into_iter()
            .map(|(k, v)| (k, v.as_tensor().clone()))
            .collect();
        (y, state)
    };
    let (y_cpu, cpu) = layer_on(&Device::Cpu);
    let (y_gpu, gpu_state) = layer_on(&gpu);
    assert!(rel_diff(&y_gpu, &y_cpu) <= 2e-5);
    let ones = Tensor::ones(8, DType::F32, &gpu).unwrap();
    let (y_op, _, _) = batch_norm_train_cuda(
        &x.to_device(&gpu).unwrap(),
        &ones,
        &ones.zeros_like().unwrap(),
        1e-5,
        Activation::ReLU6,
    )
    .unwrap();
    assert_eq!(
        rel_diff(&y_gpu, &y_op),
        0.0,
        "the layer did not run the fused op"
    );
    assert_eq!(cpu.len(), gpu_state.len());
    for ((k, a), (_, b)) in gpu_state.iter().zip(&cpu) {
        let d = rel_diff(a, b);
        assert!(d <= 1e-6, "{k}: {d:e}");
    }
}

/// Hard-negative mining's op on CUDA picks exactly the CPU's anchors: per row the `k`
/// highest candidates in `f32::total_cmp` order, ties to the lower index, on rows longer
/// than a block (SSDLite at 640 px has ~50k anchors), with heavy ties, NaN, infinities
/// and signed zeros, and k from 0 to past the candidates.
#[test]
fn top_k_mask_kernel_picks_the_cpu_anchors() {
    use candletron::ops::top_k_mask;
    use rand::{Rng, SeedableRng};
    let Some(gpu) = gpu() else { return };
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    for (n, r, tied) in [
        (3, 7, true),
        (4, 1000, true),
        (8, 3234, false),
        (2, 51_150, true),
    ] {
        let scores: Vec<f32> = (0..n * r)
            .map(|_| match rng.random_range(0..100) {
                0 => f32::NAN,
                1 => f32::INFINITY,
                2 => f32::NEG_INFINITY,
                3 => -0.0,
                4 => 0.0,
                _ if tied => rng.random_range(0..30) as f32 / 4.0,
                _ => rng.random::<f32>() * 20.0,
            })
            .collect();
        let candidates: Vec<u8> = (0..n * r).map(|_| rng.random_bool(0.8) as u8).collect();
        let k: Vec<u32> = (0..n)
            .map(|i| match i % 4 {
                0 => 0,
                1 => (r + 3) as u32,
                _ => rng.random_range(1..=r as u32),
            })
            .collect();
        let on = |dev: &Device| {
            top_k_mask(
                &Tensor::from_slice(&scores, (n, r), dev).unwrap(),
                &Tensor::from_slice(&candidates, (n, r), dev).unwrap(),
                &Tensor::from_slice(&k, n, dev).unwrap(),
            )
            .unwrap()
            .to_device(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
        };
        let (cpu, cuda) = (on(&Device::Cpu), on(&gpu));
        let differ = cpu.iter().zip(&cuda).filter(|(a, b)| a != b).count();
        assert_eq!(
            differ, 0,
            "{n} x {r} (ties {tied}): {differ} anchors differ"
        );
    }
}

/// ReLU6 (forward and gradient) and bias + activation on CUDA: f32 bit for bit the CPU op
/// (NaN passing through, the gradient where 0 < x < 6), bf16/f16 the CPU's f32 result
/// rounded once (Mish to a few ulps: the GPU's exp/log1p/tanh are not the host's).
#[test]
fn activation_kernels_match_the_cpu_ops() {
    use candletron::ops::{bias_act, relu6, Activation};
    let Some(gpu) = gpu() else { return };
    let (n, c, h, w) = (2, 5, 33, 31);
    let len = n * c * h * w;
    let special = [f32::NAN, f32::INFINITY, -0.0, 0.0, 6.0, 5.999, 6.001];
    let xs: Vec<f32> = (0..len)
        .map(|i| match i % 11 {
            0 => special[i / 11 % special.len()],
            _ => ((i * 7919) % 1000) as f32 / 100.0 - 2.0,
        })
        .collect();
    let gs: Vec<f32> = (0..len)
        .map(|i| ((i * 104_729) % 997) as f32 / 500.0 - 1.0)
        .collect();
    let bs: Vec<f32> = (0..c).map(|i| i as f32 * 0.7 - 1.5).collect();
    let cpu = Device::Cpu;
    let host = |t: &Tensor| common::flat_f64(&t.to_device(&cpu).unwrap());
    let same = |what: &str, a: &[f64], b: &[f64]| {
        let differ = a
            .iter()
            .zip(b)
            .filter(|(x, y)| !(x == y || x.is_nan() && y.is_nan()))
            .count();
        assert_eq!(differ, 0, "{what}: {differ} of {} differ", a.len());
    };
    for dtype in [DType::F32, DType::BF16, DType::F16] {
        let on = |dev: &Device, v: &[f32], shape: &[usize]| {
            Tensor::from_slice(v, shape, dev)
                .unwrap()
                .to_dtype(dtype)
                .unwrap()
        };
        // The CPU ops in f32 on the dtype's values, rounded to the dtype.
        let rounded = |v: &[f32], shape: &[usize]| on(&cpu, v, shape).to_dtype(DType::F32).unwrap();
        let round = |t: &Tensor| t.to_dtype(dtype).unwrap();
        let shape = [n, c, h, w];
        let xv = Var::from_tensor(&on(&gpu, &xs, &shape)).unwrap();
        let y = relu6(xv.as_tensor()).unwrap();
        let g = on(&gpu, &gs, &shape);
        let gx = (&y * &g).unwrap().sum_all().unwrap().backward().unwrap();
        let xc = Var::from_tensor(&rounded(&xs, &shape)).unwrap();
        let yc = relu6(xc.as_tensor()).unwrap();
        let gc = (&yc * rounded(&gs, &shape))
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        same(&format!("relu6 {dtype:?}"), &host(&y), &host(&round(&yc)));
        same(
            &format!("relu6 grad {dtype:?}"),
            &host(gx.get(xv.as_tensor()).unwrap()),
            &host(&round(gc.get(xc.as_tensor()).unwrap())),
        );
        for a in [
            Activation::Identity,
            Activation::ReLU,
            Activation::ReLU6,
            Activation::Mish,
        ] {
            let got = host(&bias_act(&on(&gpu, &xs, &shape), &on(&gpu, &bs, &[c]), a).unwrap());
            let want = host(&round(
                &bias_act(&rounded(&xs, &shape), &rounded(&bs, &[c]), a).unwrap(),
            ));
            if a == Activation::Mish {
                let ulp = if dtype == DType::F32 { 1e-6 } else { 1e-2 };
                for (i, (x, y)) in got.iter().zip(&want).enumerate() {
                    let ok = (x - y).abs() <= ulp * y.abs().max(1.0) || x.is_nan() && y.is_nan();
                    assert!(ok, "bias + Mish {dtype:?} [{i}]: CUDA {x}, CPU {y}");
                }
            } else {
                same(&format!("bias + {a:?} {dtype:?}"), &got, &want);
            }
        }
    }
}

/// ROIAlign on CUDA (each ROI's grid uploaded, the samples placed on the device, a gather
/// for the backward): the planned CPU op's output and feature gradient, and the same gradient bit
/// for bit when run twice (no atomics).
#[test]
fn roi_align_kernels_match_the_cpu_op_and_repeat_exactly() {
    use candletron::ops::{roi_align, RoiAlignParams};
    let Some(gpu) = gpu() else { return };
    let (n, c, h, w) = (4, 16, 40, 36);
    let x = Tensor::randn(0f32, 1.0, (n, c, h, w), &Device::Cpu).unwrap();
    let rois: Vec<(usize, [f32; 4])> = (0..300)
        .map(|i| {
            let f = i as f32;
            let (x1, y1) = ((f * 37.0) % 300.0 - 20.0, (f * 53.0) % 330.0 - 20.0);
            let size = 4.0 + (f * 11.0) % 120.0;
            (
                i % 3 + usize::from(i % 7 == 0),
                [x1, y1, x1 + size, y1 + size * 0.8],
            )
        })
        .collect();
    for (sampling, aligned) in [(0, true), (2, false)] {
        let p = RoiAlignParams {
            output_size: (7, 7),
            spatial_scale: 0.125,
            sampling_ratio: sampling,
            aligned,
        };
        let run = |dev: &Device| {
            let xv = Var::from_tensor(&x.to_device(dev).unwrap()).unwrap();
            let y = roi_align(xv.as_tensor(), &rois, &p).unwrap();
            let r = Tensor::ones(y.dims(), DType::F32, dev).unwrap();
            let g = (&y * r).unwrap().sum_all().unwrap().backward().unwrap();
            (y.clone(), g.get(xv.as_tensor()).unwrap().clone())
        };
        let (yc, gc) = run(&Device::Cpu);
        let (y1, g1) = run(&gpu);
        let (_, g2) = run(&gpu);
        assert!(rel_diff(&y1, &yc) < 1e-6, "forward {sampling} {aligned}");
        assert!(rel_diff(&g1, &gc) < 1e-6, "backward {sampling} {aligned}");
        let bits = |t: &Tensor| -> Vec<u32> {
            let v = t.to_device(&Device::Cpu).unwrap().flatten_all().unwrap();
            v.to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect()
        };
        assert!(bits(&g1) == bits(&g2), "the backward repeats exactly");
    }
}

/// The RPN's proposal ops on CUDA: `top_k_indices` and `nms_segments` give the CPU op's
/// result exactly (ties, special values, k past a row's candidates, empty segments), and
/// the proposals found on the GPU are the host's (the decoding's `exp` may differ in the
/// last bit, so boxes agree to 1e-5 relative and the NMS may differ at a threshold: at
/// most one image of 16 may keep other boxes).
#[test]
fn rpn_proposal_ops_and_proposals_match_the_cpu() {
    use candletron::modeling::box_regression::Box2BoxTransform;
    use candletron::modeling::proposal_generator::{
        find_top_rpn_proposals, find_top_rpn_proposals_on_device, ProposalLimits, RpnOutputs,
    };
    use candletron::ops::{nms_segments, top_k_indices};
    use rand::{Rng, SeedableRng};
    let Some(gpu) = gpu() else { return };
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let (n, r) = (4, 19_200);
    let scores: Vec<f32> = (0..n * r)
        .map(|_| match rng.random_range(0..200) {
            0 => f32::NAN,
            1 => f32::INFINITY,
            2 => -0.0,
            _ => rng.random_range(0..400) as f32 / 16.0,
        })
        .collect();
    let candidates: Vec<u8> = (0..n * r).map(|_| rng.random_bool(0.9) as u8).collect();
    for k in [1, 1000, 4096] {
        let on = |dev: &Device| {
            top_k_indices(
                &Tensor::from_slice(&scores, (n, r), dev).unwrap(),
                &Tensor::from_slice(&candidates, (n, r), dev).unwrap(),
                k,
            )
            .unwrap()
            .to_device(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<u32>()
            .unwrap()
        };
        assert_eq!(on(&gpu), on(&Device::Cpu), "top_k_indices, k {k}");
    }
    let s = 3000;
    let boxes: Vec<f32> = (0..n * s)
        .flat_map(|_| {
            let (x, y) = (
                rng.random_range(0..40) as f32 * 8.0,
                rng.random_range(0..40) as f32 * 8.0,
            );
            [
                x,
                y,
                x + rng.random_range(4.0..60.0f32),
                y + rng.random_range(4.0..60.0f32),
            ]
        })
        .collect();
    let offsets = [0, 1000, 1000, 2400, 3000];
    for t in [0.5f32, 0.7] {
        let on = |dev: &Device| {
            nms_segments(
                &Tensor::from_slice(&boxes, (n, s, 4), dev).unwrap(),
                &Tensor::from_slice(&candidates[..n * s], (n, s), dev).unwrap(),
                &offsets,
                t,
            )
            .unwrap()
            .to_device(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<u8>()
            .unwrap()
        };
        assert_eq!(on(&gpu), on(&Device::Cpu), "nms_segments at {t}");
    }

    // Proposals of a batch of 16 at 640 px (p3-p6, three anchors per cell).
    let mut anchors = Vec::new();
    let mut per_level = Vec::new();
    for (l, sizes) in [
        [16.0f32, 24.0, 32.0],
        [48.0, 64.0, 96.0],
        [128.0, 160.0, 192.0],
        [256.0, 320.0, 400.0],
    ]
    .iter()
    .enumerate()
    {
        let stride = (8 << l) as f32;
        let cells = 640 / (8 << l);
        for y in 0..cells {
            for x in 0..cells {
                let (cx, cy) = ((x as f32 + 0.5) * stride, (y as f32 + 0.5) * stride);
                for &z in sizes {
                    anchors.push([cx - z / 2.0, cy - z / 2.0, cx + z / 2.0, cy + z / 2.0]);
                }
            }
        }
        per_level.push(cells * cells * 3);
    }
    let (n, r) = (16, anchors.len());
    let logits: Vec<f32> = (0..n * r).map(|_| rng.random_range(-4.0..4.0f32)).collect();
    let deltas: Vec<f32> = (0..n * r * 4)
        .map(|_| rng.random_range(-0.5..0.5f32))
        .collect();
    let sizes = vec![(640, 640); n];
    let coder = Box2BoxTransform::new([1.0; 4]);
    let limits = ProposalLimits {
        pre_nms_topk: 1000,
        post_nms_topk: 500,
        nms_thresh: 0.7,
        min_box_size: 0.0,
    };
    let host = find_top_rpn_proposals(
        &RpnOutputs {
            logits: &logits,
            deltas: &deltas,
            anchors: &anchors,
            per_level: &per_level,
        },
        &sizes,
        &coder,
        &limits,
    );
    let device = find_top_rpn_proposals_on_device(
        &Tensor::from_slice(&logits, (n, r), &gpu).unwrap(),
        &Tensor::from_slice(&deltas, (n, r, 4), &gpu).unwrap(),
        &anchors,
        &per_level,
        &sizes,
        &coder,
        &limits,
    )
    .unwrap();
    let close = |a: &[f32; 4], b: &[f32; 4]| {
        a.iter()
            .zip(b)
            .all(|(x, y)| (x - y).abs() <= 1e-5 * x.abs().max(y.abs()).max(1.0))
    };
    let differ = host
        .iter()
        .zip(&device)
        .filter(|(h, d)| {
            h.boxes.len() != d.boxes.len()
                || h.logits != d.logits
                || h.boxes.iter().zip(&d.boxes).any(|(a, b)| !close(a, b))
        })
        .count();
    assert!(differ <= 1, "{differ} of {n} images keep other proposals");
}

/// Dense convolutions on CUDA (a cuBLAS matmul over the im2col op): the CPU's output and
/// both gradients, f32 to 1e-5 relative (TF32 is off in candle's cuBLAS calls) and bf16 to
/// 2e-2, with stride 2 on a non-square input (where Candle's own conv2d backward fails).
#[test]
fn dense_conv_on_cuda_matches_the_cpu() {
    use candletron::ops::{conv2d, ConvGeometry};
    let Some(gpu) = gpu() else { return };
    let cpu = Device::Cpu;
    let x = Tensor::randn(0f32, 1.0, (4, 16, 33, 24), &cpu).unwrap();
    let w = Tensor::randn(0f32, 0.2, (32, 16, 3, 3), &cpu).unwrap();
    for (g, dtype, tol) in [
        (ConvGeometry::new(2, 1, 1), DType::F32, 1e-5),
        (ConvGeometry::new(1, 2, 2), DType::F32, 1e-5),
        (ConvGeometry::new(2, 1, 1), DType::BF16, 2e-2),
    ] {
        let run = |dev: &Device, dt: DType| {
            let xv = Var::from_tensor(&x.to_dtype(dt).unwrap().to_device(dev).unwrap()).unwrap();
            let wv = Var::from_tensor(&w.to_dtype(dt).unwrap().to_device(dev).unwrap()).unwrap();
            let y = conv2d(xv.as_tensor(), wv.as_tensor(), g, 1).unwrap();
            let grads = y.sum_all().unwrap().backward().unwrap();
            [
                y,
                grads.get(&xv).unwrap().clone(),
                grads.get(&wv).unwrap().clone(),
            ]
        };
        // The reference: f32 on the CPU (bf16's tolerance covers its rounded operands).
        let cpu_out = run(&cpu, DType::F32);
        let gpu_out = run(&gpu, dtype);
        for (name, (a, b)) in ["output", "input grad", "weight grad"]
            .iter()
            .zip(gpu_out.iter().zip(&cpu_out))
        {
            let d = rel_diff(&a.to_dtype(DType::F32).unwrap(), b);
            assert!(d < tol, "{name} {g:?} {dtype:?}: {d}");
        }
    }
}
