//! [`find_top_rpn_proposals`] where the RPN's outputs are: the per-level top-k
//! (`ops::top_k_indices`), the decoding, clipping and size filter (tensor ops) and the
//! NMS per level (`ops::nms_segments`) run on the device, and only the kept proposals
//! (post-NMS, a few thousand numbers per image) are read back, in the one read the host
//! form makes of every anchor's objectness and deltas (tens of MB for a batch of 32 at
//! 640 px). The host then has nothing left to compute while the device waits.
//!
//! The same proposals as the host form, in the same order: the top-k, the NMS order and
//! the final cut all rank by objectness, then by position (level, then anchor), and each
//! IoU is the host's. On the CPU the two agree bit for bit; on a GPU the decoding's `exp`
//! may differ in the last bit.
//!
//! [`find_top_rpn_proposals`]: super::find_top_rpn_proposals

use candle_core::{DType, Device, Result, Tensor, D};

use super::proposal_utils::{ProposalLimits, Proposals};
use crate::modeling::box_regression::Box2BoxTransform;
use crate::ops::{nms_segments, top_k_indices};
use crate::structures::boxes::Box4;

/// Non-zero (u8) where every element along the last dimension of `t` is finite.
fn all_finite(t: &Tensor) -> Result<Tensor> {
    // 0 x is 0 for finite x and NaN for NaN and infinities; NaN survives the sum.
    (t * 0.0)?.sum(D::Minus1)?.eq(0f32)
}

/// Non-zero (u8) where neither size delta of `deltas` (..., 4) is NaN. The host clamps
/// them from above keeping NaN (`Box2BoxTransform::apply_deltas`), which the tensor
/// clamp need not do on every backend; an infinite delta decodes alike on both.
fn size_deltas_not_nan(deltas: &Tensor) -> Result<Tensor> {
    // |x| <= inf holds for every number but NaN.
    let ok = deltas.narrow(D::Minus1, 2, 2)?.abs()?.le(f32::INFINITY)?;
    ok.narrow(D::Minus1, 0, 1)?
        .mul(&ok.narrow(D::Minus1, 1, 1)?)?
        .squeeze(D::Minus1)
}

/// `t` (N, R, ...) at `idx` (N, K) u32 along dimension 1, with indices at or past R (the
/// padding of `top_k_indices`) reading element R - 1 instead.
fn take(t: &Tensor, idx: &Tensor) -> Result<Tensor> {
    let r = t.dim(1)?;
    let safe = idx.minimum(r.saturating_sub(1) as u32)?;
    let mut dims = safe.dims().to_vec();
    let mut index = safe;
    for &d in &t.dims()[2..] {
        index = index.unsqueeze(index.rank())?;
        dims.push(d);
        index = index.broadcast_as(dims.as_slice())?;
    }
    t.contiguous()?.gather(&index.contiguous()?, 1)
}

/// Proposals per image of `image_sizes` ((height, width)) from `logits` (N, R) and
/// `deltas` (N, R, 4) over `anchors` (R, level by level, `per_level` each). On CUDA,
/// both topk limits are at most 4096.
pub fn find_top_rpn_proposals_on_device(
    logits: &Tensor,
    deltas: &Tensor,
    anchors: &[Box4],
    per_level: &[usize],
    image_sizes: &[(usize, usize)],
    coder: &Box2BoxTransform,
    limits: &ProposalLimits,
) -> Result<Vec<Proposals>> {
    let (n, r) = logits.dims2()?;
    if anchors.len() != r || per_level.iter().sum::<usize>() != r || image_sizes.len() != n {
        candle_core::bail!(
            "RPN proposals: {n} x {r} logits, {} anchors in levels of {per_level:?}, {} images",
            anchors.len(),
            image_sizes.len()
        );
    }
    let dev = logits.device();
    let logits = logits.detach().to_dtype(DType::F32)?;
    let deltas = deltas.detach().to_dtype(DType::F32)?.reshape((n, r, 4))?;
    let anchors = Tensor::from_vec(anchors.concat(), (r, 4), dev)?;
    let bounds: Vec<f32> = image_sizes
        .iter()
        .flat_map(|&(h, w)| [w as f32, h as f32, w as f32, h as f32])
        .collect();
    let bounds = Tensor::from_vec(bounds, (n, 1, 4), dev)?;

    let (mut boxes, mut scores, mut valid) = (Vec::new(), Vec::new(), Vec::new());
    let mut offsets = vec![0];
    let mut start = 0;
    for &len in per_level {
        let k = limits.pre_nms_topk.min(len);
        if k > 0 && n > 0 {
            let s = logits.narrow(1, start, len)?.contiguous()?;
            let idx = top_k_indices(&s, &all_finite(&s.unsqueeze(2)?)?, k)?;
            let picked_anchors = anchors
                .narrow(0, start, len)?
                .index_select(&idx.minimum(len as u32 - 1)?.flatten_all()?, 0)?
                .reshape((n, k, 4))?;
            let level_deltas = take(&deltas.narrow(1, start, len)?, &idx)?;
            let decoded = coder.apply_deltas_tensor(&level_deltas, &picked_anchors)?;
            let clipped = decoded.maximum(0f32)?.broadcast_minimum(&bounds)?;
            let side = |a: usize, b: usize| -> Result<Tensor> {
                let extent = (clipped.narrow(2, b, 1)? - clipped.narrow(2, a, 1)?)?;
                extent.squeeze(2)?.gt(limits.min_box_size)
            };
            let ok = idx
                .lt(len as u32)?
                .mul(&size_deltas_not_nan(&level_deltas)?)?
                .mul(&all_finite(&decoded)?)?
                .mul(&side(0, 2)?)?
                .mul(&side(1, 3)?)?;
            boxes.push(clipped);
            scores.push(take(&s, &idx)?);
            valid.push(ok);
            offsets.push(offsets[offsets.len() - 1] + k);
        }
        start += len;
    }
    let total = offsets[offsets.len() - 1];
    let post = limits.post_nms_topk.min(total);
    if post == 0 {
        return Ok(vec![Proposals::default(); n]);
    }
    let boxes = Tensor::cat(&boxes, 1)?;
    let scores = Tensor::cat(&scores, 1)?;
    let keep = nms_segments(
        &boxes,
        &Tensor::cat(&valid, 1)?,
        &offsets,
        limits.nms_thresh,
    )?;
    let order = top_k_indices(&scores, &keep, post)?;
    // One read: the kept boxes, their objectness and positions (exact in f32 below 2^24).
    let flat = Tensor::cat(
        &[
            take(&boxes, &order)?.flatten_all()?,
            take(&scores, &order)?.flatten_all()?,
            order.to_dtype(DType::F32)?.flatten_all()?,
        ],
        0,
    )?;
    let values = crate::ops::host::to_vec1::<f32>(&flat.to_device(&Device::Cpu)?)?;
    let (kept_boxes, rest) = values.split_at(n * post * 4);
    let (kept_scores, positions) = rest.split_at(n * post);
    Ok((0..n)
        .map(|i| {
            let mut p = Proposals::default();
            for t in i * post..(i + 1) * post {
                if positions[t] < total as f32 {
                    let b = &kept_boxes[t * 4..t * 4 + 4];
                    p.boxes.push([b[0], b[1], b[2], b[3]]);
                    p.logits.push(kept_scores[t]);
                }
            }
            p
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modeling::proposal_generator::{find_top_rpn_proposals, RpnOutputs};
    use crate::modeling::test_support::Lcg;

    /// On the CPU the device form finds the host form's proposals, bit for bit and in
    /// order: objectness on a coarse scale (ties within and across levels), non-finite
    /// logits, boxes clipped away or below the minimum size, a level smaller than the
    /// top-k, images of different sizes, and cuts both before and after the NMS.
    #[test]
    fn device_form_finds_the_host_forms_proposals() {
        let dev = Device::Cpu;
        let mut rng = Lcg(17);
        let grid = |cells: usize, stride: f32, sizes: &[f32]| -> Vec<Box4> {
            let mut out = Vec::new();
            for y in 0..cells {
                for x in 0..cells {
                    let (cx, cy) = ((x as f32 + 0.5) * stride, (y as f32 + 0.5) * stride);
                    for &s in sizes {
                        out.push([cx - s / 2.0, cy - s / 2.0, cx + s / 2.0, cy + s / 2.0]);
                    }
                }
            }
            out
        };
        let levels = [
            grid(16, 8.0, &[16.0, 32.0]),
            grid(8, 16.0, &[48.0, 64.0]),
            grid(2, 64.0, &[128.0]),
        ];
        let per_level: Vec<usize> = levels.iter().map(Vec::len).collect();
        let anchors: Vec<Box4> = levels.concat();
        let (n, r) = (3, anchors.len());
        let mut logits: Vec<f32> = (0..n * r).map(|_| rng.below(13) as f32 / 4.0).collect();
        // The anchors with non-finite deltas (below) rank first.
        for a in [0, 11, r + 5] {
            logits[a] = 5.0;
        }
        logits[7] = f32::NAN;
        logits[9] = f32::INFINITY;
        logits[r + 3] = f32::NEG_INFINITY;
        let deltas: Vec<f32> = (0..n * r * 4)
            .map(|_| (rng.below(1000) as f32 / 1000.0 - 0.5) * 1.5)
            .collect();
        // Non-finite size deltas on anchors the top-k keeps: NaN drops the box, +inf is
        // clamped, -inf gives an empty box.
        let mut deltas = deltas;
        for (i, v) in [
            (2, f32::NAN),
            (4 * (r + 5) + 3, f32::INFINITY),
            (4 * 11 + 2, f32::NEG_INFINITY),
        ] {
            deltas[i] = v;
        }
        let image_sizes = [(128, 128), (100, 90), (64, 128)];
        let coder = Box2BoxTransform::new([1.0, 1.0, 1.0, 1.0]);
        let outputs = RpnOutputs {
            logits: &logits,
            deltas: &deltas,
            anchors: &anchors,
            per_level: &per_level,
        };
        let lt = Tensor::from_slice(&logits, (n, r), &dev).unwrap();
        let dt = Tensor::from_slice(&deltas, (n, r, 4), &dev).unwrap();
        for (pre, post, min_size, nms) in [
            (100, 60, 2.0, 0.5),
            (1000, 1000, 0.0, 0.7),
            (5, 3, 0.0, 0.3),
        ] {
            let limits = ProposalLimits {
                pre_nms_topk: pre,
                post_nms_topk: post,
                nms_thresh: nms,
                min_box_size: min_size,
            };
            let host = find_top_rpn_proposals(&outputs, &image_sizes, &coder, &limits);
            let reads = crate::ops::host::reads();
            let device = find_top_rpn_proposals_on_device(
                &lt,
                &dt,
                &anchors,
                &per_level,
                &image_sizes,
                &coder,
                &limits,
            )
            .unwrap();
            assert_eq!(crate::ops::host::reads(), reads + 1, "one read");
            assert_eq!(device, host, "pre {pre}, post {post}");
            let kept: usize = host.iter().map(|p| p.boxes.len()).sum();
            assert!(kept > 0, "pre {pre}: nothing kept");
        }
        // With everything kept before the NMS, some images lose boxes to it and to the
        // clip: the comparison above covered both.
        let all = ProposalLimits {
            pre_nms_topk: r,
            post_nms_topk: r,
            nms_thresh: 0.5,
            min_box_size: 2.0,
        };
        let host = find_top_rpn_proposals(&outputs, &image_sizes, &coder, &all);
        assert!(host.iter().all(|p| p.boxes.len() < r - 2));
    }
}
