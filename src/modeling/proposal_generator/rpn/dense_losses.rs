//! The RPN's losses with the targets built where its outputs are, for GPUs: the batch's
//! boxes go up once, [`Matcher::match_batch`] labels every anchor, and the balanced
//! sample is drawn by `ops::top_k_mask` over random keys drawn on the host from each
//! image's generator, the same keys the host sampler draws, so the same anchors are
//! sampled on both. The losses are masked sums over all anchors. On the CPU the host
//! form is faster and is used instead.
//!
//! [`Matcher::match_batch`]: crate::modeling::matcher::Matcher::match_batch

use candle_core::{DType, Result, Tensor};
use rand::rngs::StdRng;

use super::Rpn;
use crate::layers::losses::binary_cross_entropy_with_logits;
use crate::modeling::box_regression::masked_box_reg_loss;
use crate::modeling::matcher::{BACKGROUND, FOREGROUND};
use crate::modeling::sampling::random_keys;
use crate::structures::boxes::Box4;
use crate::structures::{Instances, LossMap};

impl Rpn {
    pub(super) fn dense_losses(
        &self,
        logits: &Tensor,
        deltas: &Tensor,
        anchors: &[Box4],
        targets: &[Instances],
        rngs: &mut [StdRng],
    ) -> Result<LossMap> {
        let (n, r) = logits.dims2()?;
        let dev = logits.device().clone();
        let matches = self.matcher.match_on_device(targets, anchors, &dev)?;
        let labels = &matches.labels;

        let keys: Vec<f32> = rngs.iter_mut().flat_map(|g| random_keys(r, g)).collect();
        let keys = Tensor::from_vec(keys, (n, r), &dev)?;
        let budget = self.params.batch_size_per_image;
        let max_fg = (budget as f64 * self.params.positive_fraction) as u32;
        let fg = crate::ops::top_k_mask(
            &keys,
            &labels.eq(FOREGROUND as f32)?,
            &Tensor::full(max_fg, n, &dev)?,
        )?;
        let num_bg = (Tensor::full(budget as f32, n, &dev)? - fg.sum(1)?)?.to_dtype(DType::U32)?;
        let bg = crate::ops::top_k_mask(&keys, &labels.eq(BACKGROUND as f32)?, &num_bg)?;

        // As on the host: both terms over the sampling budget, not over what was found.
        let scale = self.params.loss_weight / (budget * n).max(1) as f64;
        let sampled = (&fg + &bg)?.to_dtype(logits.dtype())?;
        let loss_cls = (binary_cross_entropy_with_logits(logits, &fg.to_dtype(logits.dtype())?)?
            .mul(&sampled)?
            .sum_all()?
            * scale)?;
        let (target, anchors) = matches.regression_targets(&fg)?;
        let loss_loc = (masked_box_reg_loss(
            &self.coder,
            self.params.box_loss,
            &deltas.reshape((n * r, 4))?,
            &anchors,
            &target,
            &fg.flatten_all()?,
        )? * scale)?;
        let mut out = LossMap::new();
        out.insert("loss_rpn_cls".into(), loss_cls);
        out.insert("loss_rpn_loc".into(), loss_loc);
        Ok(out)
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;
    use crate::modeling::box_regression::BoxLoss;
    use crate::modeling::test_support::{max_abs, Lcg};
    use candle_core::{Device, Var};
    use rand::SeedableRng;

    /// The dense (device) losses sample the host's anchors and equal its losses, value
    /// and gradient, with a budget small enough that sampling leaves most anchors out:
    /// images with ignored and duplicated boxes, without boxes and with only ignored ones.
    #[test]
    fn dense_losses_sample_and_equal_the_host_losses() {
        let dev = Device::Cpu;
        let mut rpn = super::super::test_rpn(vec![16.0, 32.0]);
        rpn.params.batch_size_per_image = 24;
        let anchors = rpn.anchors.grid_anchors(&[(12, 12)]);
        let r = anchors.len();
        let mut rng = Lcg(3);
        let mut random_boxes = |count| rng.boxes(count, 80, 8.0, 30);
        let mut first = random_boxes(5);
        first[1] = first[0];
        let targets = vec![
            Instances {
                classes: vec![0; 5],
                ignore: vec![false, false, true, false, false],
                boxes: first,
            },
            Instances::default(),
            Instances {
                boxes: random_boxes(2),
                classes: vec![0; 2],
                ignore: vec![true; 2],
            },
        ];
        let n = targets.len();
        for box_loss in [BoxLoss::SmoothL1(0.0), BoxLoss::GIoU] {
            rpn.params.box_loss = box_loss;
            let logits =
                Var::from_tensor(&Tensor::randn(0f32, 2.0, (n, r), &dev).unwrap()).unwrap();
            let deltas =
                Var::from_tensor(&Tensor::randn(0f32, 0.5, (n, r, 4), &dev).unwrap()).unwrap();
            let (lt, dt) = (logits.as_tensor(), deltas.as_tensor());
            let rngs = |seed: u64| -> Vec<StdRng> {
                (0..n as u64)
                    .map(|i| StdRng::seed_from_u64(seed + i))
                    .collect()
            };
            let host = rpn
                .losses(lt, dt, &anchors, &targets, &mut rngs(9))
                .unwrap();
            let reads = crate::ops::host::reads();
            let dense = rpn
                .dense_losses(lt, dt, &anchors, &targets, &mut rngs(9))
                .unwrap();
            assert_eq!(crate::ops::host::reads(), reads, "nothing read back");
            for (name, h) in &host {
                let d = &dense[name];
                let (hv, dv) = (h.to_scalar::<f32>().unwrap(), d.to_scalar::<f32>().unwrap());
                assert!(hv > 0.0, "{box_loss:?}: {name} is {hv}");
                assert!(
                    (hv - dv).abs() <= 1e-5 * hv,
                    "{box_loss:?}: {name} host {hv}, dense {dv}"
                );
                let (gh, gd) = (h.backward().unwrap(), d.backward().unwrap());
                let v = if name == "loss_rpn_cls" { lt } else { dt };
                let (a, b) = (gh.get(v).unwrap(), gd.get(v).unwrap());
                // The same anchors sampled: gradients in the same places, of the same size.
                let touched = |g: &Tensor| -> Vec<bool> {
                    g.abs()
                        .unwrap()
                        .reshape((n * r, ()))
                        .unwrap()
                        .sum(1)
                        .unwrap()
                        .to_vec1::<f32>()
                        .unwrap()
                        .iter()
                        .map(|&v| v > 0.0)
                        .collect()
                };
                let sampled = touched(a);
                assert_eq!(sampled, touched(b), "{box_loss:?}: {name}: sampled anchors");
                let count = sampled.iter().filter(|&&t| t).count();
                assert!(count > 0 && count < n * r / 2, "{name}: {count} sampled");
                let (scale, diff) = (max_abs(a), max_abs(&(a - b).unwrap()));
                assert!(
                    diff <= 1e-5 * scale,
                    "{box_loss:?}: {name}: gradients differ by {diff}"
                );
            }
            // Another seed, another sample.
            let other = rpn
                .losses(lt, dt, &anchors, &targets, &mut rngs(10))
                .unwrap();
            let v = other["loss_rpn_cls"].to_scalar::<f32>().unwrap();
            assert_ne!(v, host["loss_rpn_cls"].to_scalar::<f32>().unwrap());
        }
    }
}
