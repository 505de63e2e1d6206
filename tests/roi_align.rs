//! ROIAlign against a direct bilinear-sampling reference, a hand-computed case, its
//! portable path, and finite differences of its backward (f64).

// Tests read tensor values directly; the library's reads go through `ops::host`.
#![allow(clippy::disallowed_methods)]

mod common;

use candle_core::{DType, Device, Tensor, Var};
use candletron::ops::{roi_align, roi_align_portable, RoiAlignParams};
use rand::{Rng, SeedableRng};

/// torchvision's sampling written out sample by sample, independent of the op's plan.
fn reference(
    x: &[f64],
    (c, h, w): (usize, usize, usize),
    rois: &[(usize, [f32; 4])],
    p: &RoiAlignParams,
) -> Vec<f64> {
    let bilinear = |plane: &[f64], y: f64, xx: f64| -> f64 {
        if y < -1.0 || y > h as f64 || xx < -1.0 || xx > w as f64 {
            return 0.0;
        }
        let y = y.max(0.0).min((h - 1) as f64);
        let xx = xx.max(0.0).min((w - 1) as f64);
        let (y0, x0) = (y.floor() as usize, xx.floor() as usize);
        let (y1, x1) = ((y0 + 1).min(h - 1), (x0 + 1).min(w - 1));
        let (ly, lx) = (y - y0 as f64, xx - x0 as f64);
        plane[y0 * w + x0] * (1.0 - ly) * (1.0 - lx)
            + plane[y0 * w + x1] * (1.0 - ly) * lx
            + plane[y1 * w + x0] * ly * (1.0 - lx)
            + plane[y1 * w + x1] * ly * lx
    };
    let (ph, pw) = p.output_size;
    let off = if p.aligned { 0.5 } else { 0.0 };
    let mut out = Vec::new();
    for &(b, bx) in rois {
        let s = p.spatial_scale as f64;
        let (x0, y0) = (bx[0] as f64 * s - off, bx[1] as f64 * s - off);
        let (mut rw, mut rh) = (bx[2] as f64 * s - off - x0, bx[3] as f64 * s - off - y0);
        if !p.aligned {
            rw = rw.max(1.0);
            rh = rh.max(1.0);
        }
        let gh = if p.sampling_ratio > 0 {
            p.sampling_ratio
        } else {
            (rh / ph as f64).ceil() as usize
        };
        let gw = if p.sampling_ratio > 0 {
            p.sampling_ratio
        } else {
            (rw / pw as f64).ceil() as usize
        };
        for ch in 0..c {
            let plane = &x[(b * c + ch) * h * w..][..h * w];
            for i in 0..ph {
                for j in 0..pw {
                    let mut acc = 0.0;
                    for iy in 0..gh {
                        for ix in 0..gw {
                            let y =
                                y0 + (i as f64 + (iy as f64 + 0.5) / gh as f64) * rh / ph as f64;
                            let xx =
                                x0 + (j as f64 + (ix as f64 + 0.5) / gw as f64) * rw / pw as f64;
                            acc += bilinear(plane, y, xx);
                        }
                    }
                    out.push(acc / (gh * gw).max(1) as f64);
                }
            }
        }
    }
    out
}

fn params(out: usize, scale: f32, sr: usize, aligned: bool) -> RoiAlignParams {
    RoiAlignParams {
        output_size: (out, out),
        spatial_scale: scale,
        sampling_ratio: sr,
        aligned,
    }
}

#[test]
fn linear_map_by_hand() {
    // f(y, x) = 2x + 3y + 1 is reproduced exactly by bilinear sampling, so each bin is
    // f at the bin's centre. Box (2, 1)-(6, 5) at scale 1, aligned: shifted by -0.5,
    // 2x2 bins of 2 pixels; bin (0, 0) is centred at (x, y) = (2.5, 1.5) - 0.5 + ...
    let (h, w) = (8usize, 10usize);
    let data: Vec<f32> = (0..h * w)
        .map(|i| 2.0 * (i % w) as f32 + 3.0 * (i / w) as f32 + 1.0)
        .collect();
    let x = Tensor::from_vec(data, (1, 1, h, w), &Device::Cpu).unwrap();
    let p = params(2, 1.0, 2, true);
    let out = common::flat_f64(&roi_align(&x, &[(0, [2.0, 1.0, 6.0, 5.0])], &p).unwrap());
    let f = |x: f64, y: f64| 2.0 * x + 3.0 * y + 1.0;
    // Bin centres: x0 = 1.5, y0 = 0.5, bins 2 wide -> centres 2.5/4.5 and 1.5/3.5.
    let want = [f(2.5, 1.5), f(4.5, 1.5), f(2.5, 3.5), f(4.5, 3.5)];
    for (a, b) in out.iter().zip(want) {
        assert!((a - b).abs() < 1e-5, "{out:?} vs {want:?}");
    }
    // Not aligned: no shift, so every centre moves by +0.5 in x and y.
    let p = params(2, 1.0, 2, false);
    let out = common::flat_f64(&roi_align(&x, &[(0, [2.0, 1.0, 6.0, 5.0])], &p).unwrap());
    let want = [f(3.0, 2.0), f(5.0, 2.0), f(3.0, 4.0), f(5.0, 4.0)];
    for (a, b) in out.iter().zip(want) {
        assert!((a - b).abs() < 1e-5, "{out:?} vs {want:?}");
    }
    // A box entirely more than one pixel outside the map pools zeros.
    let out = common::flat_f64(&roi_align(&x, &[(0, [30.0, 30.0, 40.0, 40.0])], &p).unwrap());
    assert!(out.iter().all(|&v| v == 0.0), "{out:?}");
}

/// Features, their (N, C, H, W), and ROIs.
type Case = (
    Vec<f64>,
    (usize, usize, usize, usize),
    Vec<(usize, [f32; 4])>,
);

fn random_case(seed: u64) -> Case {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (n, c, h, w) = (2, 3, 9, 13);
    let x: Vec<f64> = (0..n * c * h * w)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let mut rois = vec![
        // Across the borders, outside, degenerate, and the whole map.
        (0, [-6.0, -4.0, 10.0, 7.0]),
        (1, [40.0, 20.0, 60.0, 44.0]),
        (1, [60.0, 40.0, 70.0, 50.0]),
        (0, [5.0, 5.0, 5.0, 9.0]),
        (1, [0.0, 0.0, 26.0, 18.0]),
    ];
    for _ in 0..12 {
        let x0 = rng.random_range(-8.0..28.0f32);
        let y0 = rng.random_range(-8.0..20.0f32);
        rois.push((
            rng.random_range(0..n),
            [
                x0,
                y0,
                x0 + rng.random_range(0.5..20.0),
                y0 + rng.random_range(0.5..16.0),
            ],
        ));
    }
    (x, (n, c, h, w), rois)
}

#[test]
fn random_cases_match_reference_and_portable() {
    for seed in 0..4 {
        let (x, (n, c, h, w), rois) = random_case(seed);
        for p in [
            params(3, 0.5, 0, true),
            params(2, 0.5, 2, true),
            params(4, 0.5, 0, false),
            params(3, 0.5, 1, false),
        ] {
            let want = reference(&x, (c, h, w), &rois, &p);
            for dtype in [DType::F32, DType::F64] {
                let t = Tensor::from_vec(x.clone(), (n, c, h, w), &Device::Cpu)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap();
                let got = roi_align(&t, &rois, &p).unwrap();
                assert_eq!(
                    got.dims(),
                    &[rois.len(), c, p.output_size.0, p.output_size.1]
                );
                let port = roi_align_portable(&t, &rois, &p).unwrap();
                let tol = if dtype == DType::F32 { 1e-5 } else { 1e-12 };
                for ((a, b), r) in common::flat_f64(&got)
                    .iter()
                    .zip(common::flat_f64(&port))
                    .zip(&want)
                {
                    assert!((a - r).abs() < tol, "seed {seed} {p:?}: {a} vs {r}");
                    assert!(
                        (b - r).abs() < tol,
                        "portable, seed {seed} {p:?}: {b} vs {r}"
                    );
                }
            }
        }
    }
}

#[test]
fn backward_matches_finite_differences_and_portable() {
    let (x, (n, c, h, w), rois) = random_case(7);
    let p = params(3, 0.5, 0, true);
    let dev = Device::Cpu;
    let v = Var::from_tensor(&Tensor::from_vec(x.clone(), (n, c, h, w), &dev).unwrap()).unwrap();
    // A fixed random projection of the output makes a scalar with non-uniform gradients.
    let r = rois.len() * c * 9;
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let proj: Vec<f64> = (0..r).map(|_| rng.random_range(-1.0..1.0)).collect();
    let proj = Tensor::from_vec(proj, (rois.len(), c, 3, 3), &dev).unwrap();
    let loss = |t: &Tensor, portable: bool| {
        let out = if portable {
            roi_align_portable(t, &rois, &p)
        } else {
            roi_align(t, &rois, &p)
        }
        .unwrap();
        (out * &proj).unwrap().sum_all().unwrap()
    };
    let grad = common::flat_f64(
        loss(v.as_tensor(), false)
            .backward()
            .unwrap()
            .get(v.as_tensor())
            .unwrap(),
    );
    let grad_portable = common::flat_f64(
        loss(v.as_tensor(), true)
            .backward()
            .unwrap()
            .get(v.as_tensor())
            .unwrap(),
    );
    for (a, b) in grad.iter().zip(&grad_portable) {
        assert!((a - b).abs() < 1e-10, "{a} vs {b}");
    }
    assert!(grad.iter().any(|&g| g != 0.0));
    // The op is linear in the features, so central differences are exact up to rounding;
    // check a spread of elements, including untouched ones (gradient 0).
    for k in (0..x.len()).step_by(7) {
        let f = |e: f64| {
            let mut y = x.clone();
            y[k] += e;
            loss(&Tensor::from_vec(y, (n, c, h, w), &dev).unwrap(), false)
                .to_scalar::<f64>()
                .unwrap()
        };
        let num = (f(1e-4) - f(-1e-4)) / 2e-4;
        assert!(
            (num - grad[k]).abs() < 1e-8,
            "element {k}: {num} vs {}",
            grad[k]
        );
    }
}

#[test]
fn no_rois_and_bad_batch_index() {
    let x = Tensor::zeros((1, 2, 4, 4), DType::F32, &Device::Cpu).unwrap();
    let p = params(2, 1.0, 0, true);
    assert_eq!(roi_align(&x, &[], &p).unwrap().dims(), &[0, 2, 2, 2]);
    let err = roi_align(&x, &[(3, [0.0, 0.0, 2.0, 2.0])], &p).unwrap_err();
    assert!(err.to_string().contains("image 3"), "{err}");
}
