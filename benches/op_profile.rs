//! Times the individual ops MobileNetV2 is made of, at its layer shapes (by hand:
//! `cargo bench --bench op_profile`).
use candle_core::{Device, Tensor};
use candletron::ops::{depthwise_conv2d, ConvGeometry};
use std::time::Instant;

fn time<F: FnMut()>(name: &str, mut f: F) {
    for _ in 0..3 {
        f();
    }
    let n = 20;
    let t = Instant::now();
    for _ in 0..n {
        f();
    }
    println!(
        "{name:<50} {:8.3} ms",
        t.elapsed().as_secs_f64() * 1000.0 / n as f64
    );
}

fn main() {
    candletron::utils::threads::configure();
    let dev = Device::Cpu;
    for &(c, h, cout) in &[
        (96usize, 112usize, 24usize),
        (144, 56, 24),
        (192, 28, 64),
        (384, 14, 64),
        (960, 7, 320),
    ] {
        let x = Tensor::randn(0f32, 1.0, (1, c, h, h), &dev).unwrap();
        let w = Tensor::randn(0f32, 1.0, (cout, c, 1, 1), &dev).unwrap();
        let dw = Tensor::randn(0f32, 1.0, (c, 1, 3, 3), &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, (1, c, 1, 1), &dev).unwrap();
        let macs = (c * cout * h * h) as f64;
        let w2 = w.reshape((cout, c)).unwrap();
        let xr = x.reshape((1, c, h * h)).unwrap();
        let t = Instant::now();
        for _ in 0..20 {
            w2.broadcast_left(1).unwrap().matmul(&xr).unwrap();
        }
        let ms = t.elapsed().as_secs_f64() * 1000.0 / 20.0;
        println!(
            "{:<50} {:8.3} ms  {:.1} GMAC/s",
            format!("1x1 matmul {c}->{cout} @{h}"),
            ms,
            macs / ms / 1e6
        );
        time(&format!("candle conv2d 1x1 {c}->{cout} @{h}"), || {
            x.conv2d(&w, 0, 1, 1, 1).unwrap();
        });
        time(&format!("depthwise s1 {c} @{h}"), || {
            depthwise_conv2d(
                &x,
                &dw,
                ConvGeometry {
                    stride: 1,
                    padding: 1,
                    dilation: 1,
                },
            )
            .unwrap();
        });
        time(&format!("bias add {c} @{h}"), || {
            x.broadcast_add(&b).unwrap();
        });
        time(&format!("clamp relu6 {c} @{h}"), || {
            x.clamp(0f32, 6f32).unwrap();
        });
        time(&format!("add {c} @{h}"), || {
            (&x + &x).unwrap();
        });
        let bb = b.flatten_all().unwrap();
        time(&format!("bias_act relu6 {c} @{h}"), || {
            candletron::ops::bias_act(&x, &bb, candletron::layers::Activation::ReLU6).unwrap();
        });
        time(&format!("bias_act identity {c} @{h}"), || {
            candletron::ops::bias_act(&x, &bb, candletron::layers::Activation::Identity).unwrap();
        });
    }
}
