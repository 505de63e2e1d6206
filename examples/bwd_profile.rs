//! Backward cost of each primitive at one MobileNetV2 shape, batch 8 (by hand).
use candle_core::{Device, Tensor, Var};
use candletron::layers::depthwise::{depthwise_conv2d, DwParams};
use std::time::Instant;

fn time(name: &str, f: &dyn Fn() -> Tensor, v: &[&Var]) {
    let mut best = f64::INFINITY;
    for _ in 0..4 {
        let y = f();
        let r = Tensor::ones_like(&y).unwrap();
        let t = Instant::now();
        let g = (y * r).unwrap().sum_all().unwrap().backward().unwrap();
        for v in v { g.get(v.as_tensor()).unwrap(); }
        best = best.min(t.elapsed().as_secs_f64() * 1000.0);
    }
    println!("{name:<40} backward {best:8.1} ms");
}

fn main() {
    candletron::utils::threads::configure();
    let dev = Device::Cpu;
    let (n, c, h, co) = (8, 144, 56, 24);
    let x = Var::randn(0f32, 1.0, (n, c, h, h), &dev).unwrap();
    let w = Var::randn(0f32, 1.0, (co, c), &dev).unwrap();
    let dw = Var::randn(0f32, 1.0, (c, 1, 3, 3), &dev).unwrap();
    let s = Var::randn(0f32, 1.0, (1, c, 1, 1), &dev).unwrap();
    time("1x1 matmul broadcast_left", &|| w.as_tensor().broadcast_left(n).unwrap().matmul(&x.as_tensor().reshape((n, c, h * h)).unwrap()).unwrap(), &[&x, &w]);
    time("depthwise", &|| depthwise_conv2d(x.as_tensor(), dw.as_tensor(), DwParams { stride: 1, padding: 1, dilation: 1 }).unwrap(), &[&x, &dw]);
    time("broadcast_mul per-channel", &|| x.as_tensor().broadcast_mul(s.as_tensor()).unwrap(), &[&x, &s]);
    time("relu6", &|| candletron::layers::fused::relu6(x.as_tensor()).unwrap(), &[&x]);
    time("add", &|| (x.as_tensor() + x.as_tensor()).unwrap(), &[&x]);
    time("transpose(0,1).contiguous", &|| x.as_tensor().transpose(0, 1).unwrap().contiguous().unwrap(), &[&x]);
    time("mean over last (c, n*h*w)", &|| x.as_tensor().transpose(0, 1).unwrap().reshape((c, n * h * h)).unwrap().mean_keepdim(1).unwrap(), &[&x]);
}
