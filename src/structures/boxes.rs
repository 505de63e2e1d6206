//! XYXY boxes in continuous pixel coordinates (Detectron2's convention: no +1).

use candle_core::{Result, Tensor, D};

pub type Box4 = [f32; 4];

pub fn area(b: &Box4) -> f32 {
    (b[2] - b[0]).max(0.0) * (b[3] - b[1]).max(0.0)
}

pub fn iou(a: &Box4, b: &Box4) -> f32 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = w * h;
    let union = area(a) + area(b) - inter;
    if union > 0.0 {
        inter / union
    } else {
        0.0
    }
}

/// IoU of every `a` with every `b`, row-major `(a.len(), b.len())`.
pub fn pairwise_iou(a: &[Box4], b: &[Box4]) -> Vec<f32> {
    let mut out = Vec::with_capacity(a.len() * b.len());
    for x in a {
        for y in b {
            out.push(iou(x, y));
        }
    }
    out
}

/// [`pairwise_iou`] on tensors, for targets built where the boxes are: `a` (..., N, 4)
/// and `b` (..., M, 4), batch dimensions broadcast, give (..., N, M). The f32 arithmetic
/// is the host's, in the same order, so on the CPU the two agree bit for bit.
pub fn pairwise_iou_tensor(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let col = |t: &Tensor, i: usize| t.narrow(D::Minus1, i, 1);
    let row = |t: &Tensor, i: usize| col(t, i)?.transpose(D::Minus1, D::Minus2);
    let (ax0, ay0, ax1, ay1) = (col(a, 0)?, col(a, 1)?, col(a, 2)?, col(a, 3)?);
    let (bx0, by0, bx1, by1) = (row(b, 0)?, row(b, 1)?, row(b, 2)?, row(b, 3)?);
    let w = ax1
        .broadcast_minimum(&bx1)?
        .sub(&ax0.broadcast_maximum(&bx0)?)?
        .maximum(0f32)?;
    let h = ay1
        .broadcast_minimum(&by1)?
        .sub(&ay0.broadcast_maximum(&by0)?)?
        .maximum(0f32)?;
    let inter = (w * h)?;
    let area = |x0: &Tensor, y0: &Tensor, x1: &Tensor, y1: &Tensor| {
        (x1 - x0)?.maximum(0f32)?.mul(&(y1 - y0)?.maximum(0f32)?)
    };
    let union = area(&ax0, &ay0, &ax1, &ay1)?
        .broadcast_add(&area(&bx0, &by0, &bx1, &by1)?)?
        .sub(&inter)?;
    // 0/0 where the union is empty is computed and then not selected.
    let iou = inter.div(&union)?;
    union.gt(0f32)?.where_cond(&iou, &iou.zeros_like()?)
}

pub fn clip(b: &mut Box4, width: f32, height: f32) {
    b[0] = b[0].clamp(0.0, width);
    b[1] = b[1].clamp(0.0, height);
    b[2] = b[2].clamp(0.0, width);
    b[3] = b[3].clamp(0.0, height);
}

/// Greedy non-maximum suppression: indices kept, by decreasing score (ties keep the
/// lower index first, as torchvision's stable sort does). Each IoU is [`iou`]'s.
pub fn nms(boxes: &[Box4], scores: &[f32], iou_threshold: f32) -> Vec<usize> {
    let mut order: Vec<usize> = (0..boxes.len()).collect();
    order.sort_by(|&i, &j| scores[j].total_cmp(&scores[i]).then(i.cmp(&j)));
    let ranked: Vec<Box4> = order.iter().map(|&i| boxes[i]).collect();
    let keep = crate::ops::nms::greedy_nms(&ranked, &vec![true; ranked.len()], iou_threshold);
    order
        .into_iter()
        .zip(keep)
        .filter_map(|(i, k)| k.then_some(i))
        .collect()
}

/// NMS within each class only (torchvision's `batched_nms`), kept indices by score.
pub fn batched_nms(
    boxes: &[Box4],
    scores: &[f32],
    classes: &[usize],
    iou_threshold: f32,
) -> Vec<usize> {
    let mut by_class: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
    for (i, &c) in classes.iter().enumerate() {
        by_class.entry(c).or_default().push(i);
    }
    let mut keep = Vec::new();
    for idx in by_class.values() {
        let b: Vec<Box4> = idx.iter().map(|&i| boxes[i]).collect();
        let s: Vec<f32> = idx.iter().map(|&i| scores[i]).collect();
        keep.extend(nms(&b, &s, iou_threshold).into_iter().map(|k| idx[k]));
    }
    keep.sort_by(|&i, &j| scores[j].total_cmp(&scores[i]).then(i.cmp(&j)));
    keep
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bit for bit the host's IoU, with empty, inverted and disjoint boxes among them,
    /// and over a batch dimension.
    #[test]
    fn tensor_iou_is_the_host_iou() {
        use candle_core::Device;
        let mut s = 7u32;
        let mut rnd = || {
            s = s.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            ((s >> 8) % 64) as f32 * 0.5
        };
        let mut boxes = |n: usize| -> Vec<Box4> {
            (0..n)
                .map(|_| {
                    let (x, y) = (rnd(), rnd());
                    [x, y, x + rnd() - 4.0, y + rnd() - 4.0]
                })
                .collect()
        };
        let (a, b) = (boxes(12), boxes(30));
        let a2 = boxes(12);
        let t = |v: &[Box4]| Tensor::from_vec(v.concat(), (v.len(), 4), &Device::Cpu).unwrap();
        let a_t = Tensor::stack(&[t(&a), t(&a2)], 0).unwrap();
        let got: Vec<Vec<Vec<f32>>> = pairwise_iou_tensor(&a_t, &t(&b))
            .unwrap()
            .to_vec3()
            .unwrap();
        for (i, a) in [&a, &a2].into_iter().enumerate() {
            let want = pairwise_iou(a, &b);
            let flat: Vec<f32> = got[i].concat();
            assert_eq!(
                flat.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                want.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            );
        }
        assert!(got[0].concat().contains(&0.0));
        assert!(got[0].concat().iter().any(|&v| v > 0.0 && v < 1.0));
    }

    #[test]
    fn iou_by_hand() {
        let a = [0.0, 0.0, 10.0, 10.0];
        let b = [5.0, 0.0, 15.0, 10.0];
        assert!((iou(&a, &b) - 50.0 / 150.0).abs() < 1e-6);
        assert_eq!(iou(&a, &[20.0, 20.0, 30.0, 30.0]), 0.0);
        assert_eq!(iou(&a, &a), 1.0);
    }

    /// Greedy NMS as written down: each box in score order, suppressed when an earlier
    /// kept box overlaps it by more than the threshold.
    fn nms_reference(boxes: &[Box4], scores: &[f32], t: f32) -> Vec<usize> {
        let mut order: Vec<usize> = (0..boxes.len()).collect();
        order.sort_by(|&i, &j| scores[j].total_cmp(&scores[i]).then(i.cmp(&j)));
        let mut keep: Vec<usize> = Vec::new();
        for &i in &order {
            if !keep.iter().any(|&k| iou(&boxes[k], &boxes[i]) > t) {
                keep.push(i);
            }
        }
        keep
    }

    /// The column-wise NMS keeps exactly the reference's boxes: clustered boxes on a
    /// coarse grid (duplicates, tied scores), empty and inverted boxes, a NaN score and
    /// a NaN coordinate, at thresholds from 0 to 1.
    #[test]
    fn nms_equals_the_greedy_reference() {
        let mut s = 11u32;
        let mut rnd = |m: u32| {
            s = s.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            ((s >> 8) % m) as f32
        };
        for case in 0..20 {
            let n = 1 + case * 37;
            let mut boxes: Vec<Box4> = (0..n)
                .map(|_| {
                    let (x, y) = (rnd(40) * 2.0, rnd(40) * 2.0);
                    [x, y, x + rnd(24) - 2.0, y + rnd(24) - 2.0]
                })
                .collect();
            let mut scores: Vec<f32> = (0..n).map(|_| rnd(8) * 0.125).collect();
            if n > 3 {
                scores[1] = f32::NAN;
                boxes[2][3] = f32::NAN;
                boxes[3] = boxes[0];
            }
            for t in [0.0, 0.3, 0.5, 0.7, 1.0] {
                assert_eq!(
                    nms(&boxes, &scores, t),
                    nms_reference(&boxes, &scores, t),
                    "{n} boxes, threshold {t}"
                );
            }
        }
    }

    #[test]
    fn nms_keeps_best_of_overlapping_and_classes_separately() {
        let boxes = [
            [0.0, 0.0, 10.0, 10.0],
            [1.0, 0.0, 11.0, 10.0], // IoU 9/11 with the first
            [20.0, 20.0, 30.0, 30.0],
            [0.0, 0.0, 10.0, 10.0],
        ];
        let scores = [0.9, 0.95, 0.5, 0.3];
        assert_eq!(nms(&boxes, &scores, 0.5), vec![1, 2]);
        assert_eq!(nms(&boxes, &scores, 0.85), vec![1, 0, 2]);
        // The last box is another class: it survives.
        assert_eq!(
            batched_nms(&boxes, &scores, &[0, 0, 0, 1], 0.5),
            vec![1, 2, 3]
        );
    }
}
