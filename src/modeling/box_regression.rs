//! Detectron2's `Box2BoxTransform`: boxes as deltas (dx, dy, dw, dh) from a reference
//! box, scaled by weights (10, 10, 5, 5 by default, RetinaFace's variances 0.1/0.2).

use crate::config::BoxLossType;
use candle_core::{Device, Result, Tensor, D};

use crate::layers::losses::{giou_loss, smooth_l1};
use crate::structures::boxes::Box4;

/// How predicted deltas are compared with their targets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BoxLoss {
    /// Smooth-L1 with this beta on encoded deltas (beta 0 is L1).
    SmoothL1(f32),
    /// 1 - GIoU of the decoded box with the target box.
    GIoU,
}

impl BoxLoss {
    /// The config's loss type; `smooth_l1_beta` is used by smooth-L1 only.
    pub fn new(kind: BoxLossType, smooth_l1_beta: f64) -> Self {
        match kind {
            BoxLossType::SmoothL1 => Self::SmoothL1(smooth_l1_beta as f32),
            BoxLossType::GIoU => Self::GIoU,
        }
    }
}

/// exp() input cap: boxes at most 1000/16 times their anchor.
pub const SCALE_CLAMP: f32 = 4.135_166_6; // ln(1000 / 16)

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Box2BoxTransform {
    pub weights: [f32; 4],
}

impl Box2BoxTransform {
    pub fn new(weights: [f32; 4]) -> Self {
        Self { weights }
    }

    pub fn get_deltas(&self, src: &Box4, target: &Box4) -> [f32; 4] {
        let [wx, wy, ww, wh] = self.weights;
        let (sw, sh) = (src[2] - src[0], src[3] - src[1]);
        let (sx, sy) = (src[0] + 0.5 * sw, src[1] + 0.5 * sh);
        let (tw, th) = (target[2] - target[0], target[3] - target[1]);
        let (tx, ty) = (target[0] + 0.5 * tw, target[1] + 0.5 * th);
        [
            wx * (tx - sx) / sw,
            wy * (ty - sy) / sh,
            ww * (tw / sw).ln(),
            wh * (th / sh).ln(),
        ]
    }

    pub fn apply_deltas(&self, d: &[f32; 4], src: &Box4) -> Box4 {
        let [wx, wy, ww, wh] = self.weights;
        let (sw, sh) = (src[2] - src[0], src[3] - src[1]);
        let (sx, sy) = (src[0] + 0.5 * sw, src[1] + 0.5 * sh);
        let cx = d[0] / wx * sw + sx;
        let cy = d[1] / wy * sh + sy;
        // Clamped from above as `torch.clamp(max=)` does: a NaN stays NaN (`f32::min`
        // would turn it into the clamp), so the box comes out non-finite and is dropped.
        let clamp = |v: f32| if v > SCALE_CLAMP { SCALE_CLAMP } else { v };
        let w = clamp(d[2] / ww).exp() * sw;
        let h = clamp(d[3] / wh).exp() * sh;
        [cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h]
    }

    /// [`Self::get_deltas`] for (..., 4) tensors of sources and targets, in the host's f32
    /// arithmetic, for regression targets built on the device.
    pub fn get_deltas_tensor(&self, src: &Tensor, target: &Tensor) -> Result<Tensor> {
        let [wx, wy, ww, wh] = self.weights.map(|v| v as f64);
        let col = |t: &Tensor, i: usize| t.narrow(D::Minus1, i, 1);
        let centre_size = |b: &Tensor| -> Result<[Tensor; 4]> {
            let w = (col(b, 2)? - col(b, 0)?)?;
            let h = (col(b, 3)? - col(b, 1)?)?;
            let x = (col(b, 0)? + (&w * 0.5)?)?;
            let y = (col(b, 1)? + (&h * 0.5)?)?;
            Ok([x, y, w, h])
        };
        let [sx, sy, sw, sh] = centre_size(src)?;
        let [tx, ty, tw, th] = centre_size(target)?;
        Tensor::cat(
            &[
                ((tx - sx)? * wx)?.div(&sw)?,
                ((ty - sy)? * wy)?.div(&sh)?,
                (tw.div(&sw)?.log()? * ww)?,
                (th.div(&sh)?.log()? * wh)?,
            ],
            D::Minus1,
        )
    }

    /// The differentiable version for (P, 4) deltas and anchors, for box losses on
    /// decoded boxes (GIoU).
    pub fn apply_deltas_tensor(&self, deltas: &Tensor, anchors: &Tensor) -> Result<Tensor> {
        let [wx, wy, ww, wh] = self.weights.map(|v| v as f64);
        let col = |t: &Tensor, i: usize| t.narrow(D::Minus1, i, 1);
        let sw = (col(anchors, 2)? - col(anchors, 0)?)?;
        let sh = (col(anchors, 3)? - col(anchors, 1)?)?;
        let sx = (col(anchors, 0)? + (&sw * 0.5)?)?;
        let sy = (col(anchors, 1)? + (&sh * 0.5)?)?;
        let cx = ((col(deltas, 0)? / wx)?.mul(&sw)? + sx)?;
        let cy = ((col(deltas, 1)? / wy)?.mul(&sh)? + sy)?;
        let w = (col(deltas, 2)? / ww)?
            .clamp(-1e4f32, SCALE_CLAMP)?
            .exp()?
            .mul(&sw)?;
        let h = (col(deltas, 3)? / wh)?
            .clamp(-1e4f32, SCALE_CLAMP)?
            .exp()?
            .mul(&sh)?;
        Tensor::cat(
            &[
                (&cx - (&w * 0.5)?)?,
                (&cy - (&h * 0.5)?)?,
                (&cx + (&w * 0.5)?)?,
                (&cy + (&h * 0.5)?)?,
            ],
            D::Minus1,
        )
    }
}

/// Summed box loss of predicted `deltas` (P, 4) from `src` boxes towards `targets`
/// (host values, one per row), as Detectron2's `_dense_box_regression_loss`.
pub fn box_reg_loss(
    coder: &Box2BoxTransform,
    kind: BoxLoss,
    deltas: &Tensor,
    src: &[Box4],
    targets: &[Box4],
) -> Result<Tensor> {
    let p = src.len();
    let dev = deltas.device();
    let host = |v: Vec<f32>, dev: &Device| {
        Tensor::from_vec(v, (p, 4), dev).and_then(|t| t.to_dtype(deltas.dtype()))
    };
    match kind {
        BoxLoss::SmoothL1(beta) => {
            let t: Vec<f32> = src
                .iter()
                .zip(targets)
                .flat_map(|(s, t)| coder.get_deltas(s, t))
                .collect();
            smooth_l1(&(deltas - host(t, dev)?)?, beta)?.sum_all()
        }
        BoxLoss::GIoU => {
            let a = host(src.iter().flatten().copied().collect(), dev)?;
            let g = host(targets.iter().flatten().copied().collect(), dev)?;
            giou_loss(&coder.apply_deltas_tensor(deltas, &a)?, &g)?.sum_all()
        }
    }
}

/// [`box_reg_loss`] over every row, summed where `mask` (P) is 1: the form for targets
/// built on the device, where selecting the positives' rows would need their count on
/// the host. `src` and `targets` are (P, 4) f32; rows outside the mask must still hold
/// boxes of positive size (the source box itself will do), so that no 0/0 reaches the
/// gradient.
pub fn masked_box_reg_loss(
    coder: &Box2BoxTransform,
    kind: BoxLoss,
    deltas: &Tensor,
    src: &Tensor,
    targets: &Tensor,
    mask: &Tensor,
) -> Result<Tensor> {
    let dtype = deltas.dtype();
    let mask = mask.to_dtype(dtype)?;
    match kind {
        BoxLoss::SmoothL1(beta) => {
            let t = coder.get_deltas_tensor(src, targets)?.to_dtype(dtype)?;
            smooth_l1(&(deltas - t)?, beta)?
                .broadcast_mul(&mask.unsqueeze(1)?)?
                .sum_all()
        }
        BoxLoss::GIoU => {
            let decoded = coder.apply_deltas_tensor(deltas, &src.to_dtype(dtype)?)?;
            giou_loss(&decoded, &targets.to_dtype(dtype)?)?
                .mul(&mask)?
                .sum_all()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn encode_decode_round_trip() {
        let t = Box2BoxTransform::new([10.0, 10.0, 5.0, 5.0]);
        let anchor = [10.0, 20.0, 42.0, 52.0];
        for target in [[12.0, 18.0, 40.0, 60.0], [0.0, 0.0, 5.0, 300.0], anchor] {
            let d = t.get_deltas(&anchor, &target);
            let back = t.apply_deltas(&d, &anchor);
            for k in 0..4 {
                assert!((back[k] - target[k]).abs() < 1e-3, "{target:?} -> {back:?}");
            }
        }
        // By hand: same size, centre moved by a quarter width -> dx = 10 * 0.25.
        let d = t.get_deltas(&[0.0, 0.0, 8.0, 8.0], &[2.0, 0.0, 10.0, 8.0]);
        assert_eq!(d, [2.5, 0.0, 0.0, 0.0]);
        let dt = Tensor::new(&[[2.5f32, 0.0, 0.0, 0.0]], &Device::Cpu).unwrap();
        let at = Tensor::new(&[[0.0f32, 0.0, 8.0, 8.0]], &Device::Cpu).unwrap();
        let b: Vec<Vec<f32>> = t.apply_deltas_tensor(&dt, &at).unwrap().to_vec2().unwrap();
        assert_eq!(b[0], [2.0, 0.0, 10.0, 8.0]);
    }

    #[test]
    fn tensor_deltas_are_the_host_deltas() {
        let t = Box2BoxTransform::new([10.0, 10.0, 5.0, 5.0]);
        let src = [
            [10.0f32, 20.0, 42.0, 52.0],
            [0.0, 0.0, 8.0, 8.0],
            [3.5, 1.0, 4.0, 90.0],
        ];
        let dst = [
            [12.0f32, 18.0, 40.0, 60.0],
            [2.0, 0.0, 10.0, 8.0],
            [0.0, 0.0, 5.0, 300.0],
        ];
        let dev = Device::Cpu;
        let got: Vec<Vec<f32>> = t
            .get_deltas_tensor(
                &Tensor::new(&src, &dev).unwrap(),
                &Tensor::new(&dst, &dev).unwrap(),
            )
            .unwrap()
            .to_vec2()
            .unwrap();
        for i in 0..3 {
            let want = t.get_deltas(&src[i], &dst[i]);
            for k in 0..4 {
                assert!(
                    (got[i][k] - want[k]).abs() <= 1e-6 * want[k].abs().max(1.0),
                    "box {i}: {:?} vs {want:?}",
                    got[i]
                );
            }
        }
    }
}
