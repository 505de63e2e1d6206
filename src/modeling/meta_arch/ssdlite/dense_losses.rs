//! SSDLite's losses with the targets built where the head's outputs are, for GPUs: the
//! batch's boxes go up once (padded to the largest count), [`Matcher::match_batch`]
//! matches them to the anchors, and each loss is a masked sum over every anchor, so a
//! step neither waits for host matching nor reads a value back (in a data-parallel group
//! the positive count is read once, to be summed over ranks). On the CPU the host form,
//! over the positives' rows only, is faster and is used instead; the two give the same
//! losses and gradients.
//!
//! [`Matcher::match_batch`]: crate::modeling::matcher::Matcher::match_batch

use candle_core::{DType, Result, Tensor, D};

use super::{ClsLoss, SsdLite};
use crate::layers::losses::sigmoid_focal_loss;
use crate::modeling::box_regression::masked_box_reg_loss;
use crate::modeling::matcher::{BACKGROUND, FOREGROUND, IGNORE};
use crate::structures::boxes::Box4;
use crate::structures::{Instances, LossMap};

/// The loss normaliser: the positives of the global batch, at least one.
enum Normaliser {
    /// Summed over data-parallel ranks (and divided by their number, whose gradients
    /// are averaged), on the host.
    Host(f64),
    /// One process: the count stays on the device.
    Device(Tensor),
}

impl Normaliser {
    fn apply(&self, loss: Tensor) -> Result<Tensor> {
        match self {
            Self::Host(v) => loss / *v,
            Self::Device(t) => loss.broadcast_div(&t.to_dtype(loss.dtype())?),
        }
    }
}

impl SsdLite {
    pub(super) fn dense_losses(
        &self,
        scores: &Tensor,
        deltas: &Tensor,
        anchors: &[Box4],
        targets: &[Instances],
    ) -> Result<LossMap> {
        let (n, r, c) = scores.dims3()?;
        let dev = scores.device().clone();
        let matches = self.matcher.match_on_device(targets, anchors, &dev)?;
        let labels = &matches.labels;
        let fg = labels.eq(FOREGROUND as f32)?;
        let bg = labels.eq(BACKGROUND as f32)?;
        let fg_f32 = fg.to_dtype(DType::F32)?;
        let class = matches.gt.classes.gather(&matches.matched, 1)?;

        let norm = if crate::distributed::in_group() {
            let local = crate::ops::host::to_scalar::<f32>(&fg_f32.sum_all()?)? as usize;
            let total = crate::distributed::global_count(local, "SSDLite positive anchors")?;
            Normaliser::Host(total.max(1) as f64 / crate::distributed::world_size() as f64)
        } else {
            Normaliser::Device(fg_f32.sum_all()?.maximum(1f32)?)
        };

        let flat_scores = scores.reshape((n * r, c))?;
        let fg_scores = fg.to_dtype(scores.dtype())?;
        let loss_cls = match self.params.cls_loss {
            ClsLoss::CrossEntropy => {
                let log_p = candle_nn::ops::log_softmax(&flat_scores, D::Minus1)?;
                let bg_loss = log_p.narrow(1, c - 1, 1)?.neg()?.reshape((n, r))?;
                let num_pos = fg_f32.sum(1)?;
                let num_neg = bg.to_dtype(DType::F32)?.sum(1)?;
                let keep = (num_pos.maximum(1f32)? * self.params.neg_pos_ratio as f64)?
                    .floor()?
                    .minimum(&num_neg)?
                    .to_dtype(DType::U32)?;
                let hard = crate::ops::top_k_mask(&bg_loss.detach(), &bg, &keep)?;
                let neg_loss = (bg_loss * hard)?.sum_all()?;
                let class_index = fg
                    .where_cond(&class, &class.zeros_like()?)?
                    .to_dtype(DType::U32)?
                    .reshape((n * r, 1))?;
                let pos_loss = log_p
                    .gather(&class_index, 1)?
                    .reshape((n, r))?
                    .mul(&fg_scores)?
                    .sum_all()?
                    .neg()?;
                norm.apply((pos_loss + neg_loss)?)?
            }
            ClsLoss::Focal => {
                // Background anchors have no class column: an all-zero one-hot row.
                let none = Tensor::full(c as f32, (n, r), &dev)?;
                let target_class = fg.where_cond(&class, &none)?.reshape((n * r, 1))?;
                let onehot = Tensor::arange(0f32, c as f32, &dev)?
                    .reshape((1, c))?
                    .broadcast_eq(&target_class)?
                    .to_dtype(flat_scores.dtype())?;
                let valid = labels
                    .ne(IGNORE as f32)?
                    .to_dtype(flat_scores.dtype())?
                    .reshape((n * r, 1))?;
                let loss = sigmoid_focal_loss(
                    &flat_scores,
                    &onehot,
                    self.params.focal_alpha,
                    self.params.focal_gamma,
                )?;
                norm.apply(loss.broadcast_mul(&valid)?.sum_all()?)?
            }
        };

        let (target, anchors) = matches.regression_targets(&fg)?;
        let loss_box = masked_box_reg_loss(
            &self.coder,
            self.params.box_loss,
            &deltas.reshape((n * r, 4))?,
            &anchors,
            &target,
            &fg.flatten_all()?,
        )?;
        let loss_box = (norm.apply(loss_box)? * self.params.box_loss_weight as f64)?;
        let mut out = LossMap::new();
        out.insert("loss_cls".to_string(), loss_cls);
        out.insert("loss_box_reg".to_string(), loss_box);
        Ok(out)
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;
    use crate::modeling::box_regression::BoxLoss;
    use crate::modeling::matcher::LowQualityMatches;
    use crate::modeling::test_support::{max_abs, Lcg};
    use candle_core::{Device, Var};

    /// The dense (device) losses equal the host's, value and gradient, for both class
    /// losses, both box losses and with or without low-quality matches: images with
    /// ignored boxes, duplicated boxes, a box on an anchor, only ignored boxes and none;
    /// scores quantised so that mined negatives tie at the cut.
    #[test]
    fn dense_losses_are_the_host_losses() {
        let dev = Device::Cpu;
        let mut model = super::super::small_test_model();
        let images = Tensor::zeros((4, 3, 96, 96), DType::F32, &dev).unwrap();
        let (_, _, anchors, _) = model.run(&images, true).unwrap();
        let r = anchors.len();
        let mut rng = Lcg(5);
        let mut random_boxes = |count| rng.boxes(count, 80, 4.0, 40);
        let mut first = random_boxes(6);
        first[1] = first[0];
        first[2] = anchors[r / 3];
        let targets = vec![
            Instances {
                classes: vec![0; 6],
                ignore: vec![false, false, false, true, false, false],
                boxes: first,
            },
            Instances {
                boxes: vec![],
                classes: vec![],
                ignore: vec![],
            },
            Instances {
                boxes: random_boxes(2),
                classes: vec![0; 2],
                ignore: vec![true; 2],
            },
            Instances {
                boxes: random_boxes(3),
                classes: vec![0; 3],
                ignore: vec![false; 3],
            },
        ];
        let k = model.params.num_classes;
        // A ratio of 2.5 makes the number of mined negatives round down.
        for (cls_loss, box_loss, low_quality, ratio) in [
            (
                ClsLoss::CrossEntropy,
                BoxLoss::SmoothL1(0.0),
                LowQualityMatches::Assign,
                3.0,
            ),
            (
                ClsLoss::CrossEntropy,
                BoxLoss::SmoothL1(0.11),
                LowQualityMatches::Off,
                2.5,
            ),
            (
                ClsLoss::Focal,
                BoxLoss::GIoU,
                LowQualityMatches::Assign,
                3.0,
            ),
        ] {
            model.params.neg_pos_ratio = ratio;
            model.params.cls_loss = cls_loss;
            model.params.box_loss = box_loss;
            model.matcher.low_quality = low_quality;
            let c = match cls_loss {
                ClsLoss::CrossEntropy => k + 1,
                ClsLoss::Focal => k,
            };
            let scores = Var::from_tensor(
                &(Tensor::randn(0f32, 1.0, (4, r, c), &dev).unwrap() * 2.0)
                    .unwrap()
                    .round()
                    .unwrap(),
            )
            .unwrap();
            let deltas =
                Var::from_tensor(&Tensor::randn(0f32, 0.5, (4, r, 4), &dev).unwrap()).unwrap();
            let (st, dt) = (scores.as_tensor(), deltas.as_tensor());
            let host = model.losses(st, dt, &anchors, &targets).unwrap();
            let reads = crate::ops::host::reads();
            let dense = model.dense_losses(st, dt, &anchors, &targets).unwrap();
            assert_eq!(
                crate::ops::host::reads(),
                reads,
                "the dense losses read nothing back"
            );
            let case = format!("{cls_loss:?}, {box_loss:?}, {low_quality:?}");
            for (name, h) in &host {
                let d = &dense[name];
                let (hv, dv) = (h.to_scalar::<f32>().unwrap(), d.to_scalar::<f32>().unwrap());
                assert!(hv > 0.0, "{case}: {name} is {hv}");
                assert!(
                    (hv - dv).abs() <= 1e-5 * hv.abs(),
                    "{case}: {name} host {hv}, dense {dv}"
                );
                let (gh, gd) = (h.backward().unwrap(), d.backward().unwrap());
                for (what, v) in [("scores", st), ("deltas", dt)] {
                    let zero = v.zeros_like().unwrap();
                    let a = gh.get(v).unwrap_or(&zero);
                    let b = gd.get(v).unwrap_or(&zero);
                    let (scale, diff) = (max_abs(a), max_abs(&(a - b).unwrap()));
                    assert!(
                        diff <= 1e-5 * scale.max(1e-3),
                        "{case}: d {name} / d {what} differs by {diff} (largest {scale})"
                    );
                }
            }
        }
    }
}
