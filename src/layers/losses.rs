//! Loss functions shared by the detectors, written with stock differentiable ops.

use candle_core::{Result, Tensor, D};

/// 0.5 d^2 / beta below beta, |d| - beta / 2 above: written with `minimum` so it is
/// differentiable with stock ops.
pub fn smooth_l1(diff: &Tensor, beta: f32) -> Result<Tensor> {
    let d = diff.abs()?;
    if beta <= 0.0 {
        return Ok(d);
    }
    let m = d.minimum(beta)?;
    (m.sqr()? * (0.5 / beta as f64))? + (d - m)?
}

/// Sigmoid focal loss per element (Lin et al.), with logits `x` and 0/1 targets `t`.
pub fn sigmoid_focal_loss(x: &Tensor, t: &Tensor, alpha: f32, gamma: f32) -> Result<Tensor> {
    let p = candle_nn::ops::sigmoid(x)?;
    let ce = binary_cross_entropy_with_logits(x, t)?;
    let one_minus_t = (t.neg()? + 1.0)?;
    let p_t = ((&p * t)? + ((p.neg()? + 1.0)? * &one_minus_t)?)?;
    let modulator = (p_t.neg()? + 1.0)?.powf(gamma as f64)?;
    let loss = (ce * modulator)?;
    if alpha >= 0.0 {
        let a_t = ((t * alpha as f64)? + (one_minus_t * (1.0 - alpha as f64))?)?;
        loss * a_t
    } else {
        Ok(loss)
    }
}

/// Binary cross-entropy on logits `x` with 0/1 targets `t`, per element, in the stable
/// form max(x, 0) - x t + log(1 + exp(-|x|)).
pub fn binary_cross_entropy_with_logits(x: &Tensor, t: &Tensor) -> Result<Tensor> {
    (x.relu()? - (x * t)?)? + ((x.abs()?.neg()?.exp()? + 1.0)?.log()?)
}

/// Softmax cross-entropy of (N, C) `logits` against (N,) u32 `labels`, averaged over N,
/// with PyTorch's `label_smoothing` `eps`: the target is `1 - eps` on the label plus
/// `eps / C` on every class.
pub fn cross_entropy_smoothed(logits: &Tensor, labels: &Tensor, eps: f64) -> Result<Tensor> {
    let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let nll = candle_nn::loss::nll(&logp, labels)?;
    if eps <= 0.0 {
        return Ok(nll);
    }
    let uniform = logp.mean(D::Minus1)?.mean_all()?.neg()?;
    (nll * (1.0 - eps))? + (uniform * eps)?
}

/// 1 - GIoU of (P, 4) XYXY boxes.
pub fn giou_loss(pred: &Tensor, gt: &Tensor) -> Result<Tensor> {
    let col = |t: &Tensor, i: usize| t.narrow(D::Minus1, i, 1);
    let (px1, py1, px2, py2) = (col(pred, 0)?, col(pred, 1)?, col(pred, 2)?, col(pred, 3)?);
    let (gx1, gy1, gx2, gy2) = (col(gt, 0)?, col(gt, 1)?, col(gt, 2)?, col(gt, 3)?);
    let area_p = ((&px2 - &px1)? * (&py2 - &py1)?)?;
    let area_g = ((&gx2 - &gx1)? * (&gy2 - &gy1)?)?;
    let iw = (px2.minimum(&gx2)? - px1.maximum(&gx1)?)?.relu()?;
    let ih = (py2.minimum(&gy2)? - py1.maximum(&gy1)?)?.relu()?;
    let inter = (iw * ih)?;
    let union = ((area_p + area_g)? - &inter)?;
    let iou = (&inter / (&union + 1e-7)?)?;
    let cw = (px2.maximum(&gx2)? - px1.minimum(&gx1)?)?;
    let ch = (py2.maximum(&gy2)? - py1.minimum(&gy1)?)?;
    let enclosing = ((cw * ch)? + 1e-7)?;
    let giou = (iou - ((&enclosing - &union)? / &enclosing)?)?;
    (giou.neg()? + 1.0)?.squeeze(D::Minus1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn t(v: &[f32], shape: (usize, usize)) -> Tensor {
        Tensor::from_vec(v.to_vec(), shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn smooth_l1_and_focal_by_hand() {
        let d = t(&[0.05, -0.3, 0.0, 2.0], (1, 4));
        let v: Vec<f32> = smooth_l1(&d, 0.1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let want = [0.5 * 0.05 * 0.05 / 0.1, 0.3 - 0.05, 0.0, 2.0 - 0.05];
        for (a, b) in v.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{v:?}");
        }
        // x = 0: p = 0.5, ce = ln 2, (1 - p_t)^2 = 0.25; alpha 0.25 for t = 1, 0.75 for t = 0.
        let x = t(&[0.0, 0.0], (1, 2));
        let tt = t(&[1.0, 0.0], (1, 2));
        let v: Vec<f32> = sigmoid_focal_loss(&x, &tt, 0.25, 2.0)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let ln2 = std::f32::consts::LN_2;
        assert!((v[0] - 0.25 * 0.25 * ln2).abs() < 1e-6);
        assert!((v[1] - 0.75 * 0.25 * ln2).abs() < 1e-6);
        // BCE: x = 2, t = 1 -> ln(1 + e^-2); x = -30, t = 0 -> ~e^-30 (no overflow).
        let v: Vec<f32> =
            binary_cross_entropy_with_logits(&t(&[2.0, -30.0], (1, 2)), &t(&[1.0, 0.0], (1, 2)))
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
        assert!((v[0] - (1.0 + (-2f32).exp()).ln()).abs() < 1e-6, "{v:?}");
        assert!(v[1] >= 0.0 && v[1] < 1e-12, "{v:?}");
    }

    #[test]
    fn giou_by_hand_and_gradient_by_finite_differences() {
        // Disjoint unit squares 1 apart: IoU 0, enclosing 3, union 2 -> GIoU = -1/3.
        let p = t(&[0.0, 0.0, 1.0, 1.0], (1, 4));
        let g = t(&[2.0, 0.0, 3.0, 1.0], (1, 4));
        let l: Vec<f32> = giou_loss(&p, &g).unwrap().to_vec1().unwrap();
        assert!((l[0] - (1.0 + 1.0 / 3.0)).abs() < 1e-5, "{l:?}");
        // Overlapping boxes: the analytic gradient equals central differences (f64).
        let dev = Device::Cpu;
        let base = [0.2f64, 0.1, 1.7, 1.3];
        let gt = Tensor::new(&[[0.5f64, 0.4, 2.0, 1.9]], &dev).unwrap();
        let v = Var::new(&[base], &dev).unwrap();
        let loss = giou_loss(v.as_tensor(), &gt).unwrap().sum_all().unwrap();
        let grad: Vec<f64> = loss
            .backward()
            .unwrap()
            .get(v.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        for k in 0..4 {
            let f = |e: f64| {
                let mut b = base;
                b[k] += e;
                giou_loss(&Tensor::new(&[b], &dev).unwrap(), &gt)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f64>()
                    .unwrap()
            };
            let num = (f(1e-6) - f(-1e-6)) / 2e-6;
            assert!(
                (num - grad[k]).abs() < 1e-6,
                "coordinate {k}: {num} vs {}",
                grad[k]
            );
        }
    }
}
