//! Which records a training epoch visits, as Detectron2's samplers: a fresh shuffle
//! (`TrainingSampler`), draws weighted by 1 / class frequency (torch's
//! `WeightedRandomSampler` as the class-imbalance recipe uses it), or LVIS's repeat
//! factors (`RepeatFactorTrainingSampler`). Each epoch's order is a function of (seed,
//! epoch) alone and is computed by the loader's consumer, so it is the same for any
//! number of workers and for a resumed run.

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::catalog::{DataError, DatasetRecord};
use super::rng::mix_seed;
use crate::config::SamplerName;

/// How records are drawn in training.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SamplerSpec {
    Shuffle,
    ClassBalanced,
    /// Repeat factors from category frequencies; the threshold `t` of
    /// `r(c) = max(1, sqrt(t / f(c)))`.
    RepeatFactor {
        threshold: f64,
        sqrt: bool,
    },
}

impl SamplerSpec {
    pub fn from_config(cfg: &crate::config::Config) -> Self {
        match cfg.dataloader.sampler_train {
            SamplerName::Training => Self::Shuffle,
            SamplerName::ClassBalanced => Self::ClassBalanced,
            SamplerName::RepeatFactor => Self::RepeatFactor {
                threshold: cfg.dataloader.repeat_threshold,
                sqrt: cfg.dataloader.repeat_sqrt,
            },
        }
    }
}

#[derive(Debug, Clone)]
pub enum EpochSampler {
    Shuffle {
        n: usize,
    },
    /// Cumulative record weights; an epoch is `n` draws with replacement.
    Weighted {
        cumulative: Vec<f64>,
    },
    RepeatFactor {
        factors: Vec<f64>,
    },
}

/// The classes an image is an example of: its label, or its boxes' categories.
fn classes_of(r: &DatasetRecord) -> Vec<usize> {
    match &r.label {
        Some(l) => l.classes(),
        None => r.box_categories(),
    }
}

impl EpochSampler {
    pub fn new(spec: SamplerSpec, records: &[DatasetRecord]) -> Result<Self, DataError> {
        let n = records.len();
        let classes: Vec<Vec<usize>> = records.iter().map(classes_of).collect();
        let num_classes = classes.iter().flatten().max().map_or(0, |m| m + 1);
        // Images per class.
        let mut count = vec![0usize; num_classes];
        for cs in &classes {
            for &c in cs {
                count[c] += 1;
            }
        }
        Ok(match spec {
            SamplerSpec::Shuffle => Self::Shuffle { n },
            SamplerSpec::ClassBalanced => {
                if let Some(i) = records.iter().position(|r| r.label.is_none()) {
                    return Err(DataError::new(format!(
                        "DATALOADER.SAMPLER_TRAIN ClassBalancedSampler needs class labels, but \
                         {} has none (a detection dataset: use RepeatFactorTrainingSampler)",
                        records[i].file_name.display()
                    )));
                }
                // A multi-label image weighs as its rarest class.
                let mut acc = 0.0;
                let cumulative = classes
                    .iter()
                    .map(|cs| {
                        acc += cs
                            .iter()
                            .map(|&c| 1.0 / count[c] as f64)
                            .fold(0.0, f64::max);
                        acc
                    })
                    .collect::<Vec<_>>();
                if acc <= 0.0 {
                    return Err(DataError::new(
                        "ClassBalancedSampler: no image has a class to balance",
                    ));
                }
                Self::Weighted { cumulative }
            }
            SamplerSpec::RepeatFactor { threshold, sqrt } => {
                let per_class: Vec<f64> = count
                    .iter()
                    .map(|&k| {
                        let f = k as f64 / n.max(1) as f64;
                        let r = if f > 0.0 { threshold / f } else { 1.0 };
                        (if sqrt { r.sqrt() } else { r }).max(1.0)
                    })
                    .collect();
                let factors = classes
                    .iter()
                    .map(|cs| cs.iter().map(|&c| per_class[c]).fold(1.0, f64::max))
                    .collect();
                Self::RepeatFactor { factors }
            }
        })
    }

    /// Records per epoch (on average, for repeat factors).
    pub fn epoch_len(&self) -> usize {
        match self {
            Self::Shuffle { n } => *n,
            Self::Weighted { cumulative } => cumulative.len(),
            Self::RepeatFactor { factors } => factors.iter().sum::<f64>().round() as usize,
        }
    }

    /// The record indices of epoch `epoch`, in order; never empty for a non-empty dataset.
    pub fn epoch(&self, seed: u64, epoch: usize) -> Vec<usize> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(mix_seed(seed, epoch as u64));
        match self {
            Self::Shuffle { n } => {
                let mut order: Vec<usize> = (0..*n).collect();
                order.shuffle(&mut rng);
                order
            }
            Self::Weighted { cumulative } => {
                let total = *cumulative.last().unwrap_or(&0.0);
                (0..cumulative.len())
                    .map(|_| {
                        let u = rng.random::<f64>() * total;
                        cumulative
                            .partition_point(|&c| c <= u)
                            .min(cumulative.len() - 1)
                    })
                    .collect()
            }
            Self::RepeatFactor { factors } => {
                // Stochastic rounding, then a shuffle (Detectron2's `_get_epoch_indices`).
                let mut order = Vec::new();
                for (i, &r) in factors.iter().enumerate() {
                    let whole = r.floor();
                    let extra = rng.random::<f64>() < r - whole;
                    for _ in 0..whole as usize + extra as usize {
                        order.push(i);
                    }
                }
                order.shuffle(&mut rng);
                order
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::catalog::{ClassLabel, ObjectAnnotation};

    fn labelled(label: usize) -> DatasetRecord {
        DatasetRecord {
            file_name: format!("{label}.png").into(),
            image_id: String::new(),
            width: 8,
            height: 8,
            annotations: Vec::new(),
            label: Some(ClassLabel::Single(label)),
            embedded: None,
        }
    }

    #[test]
    fn class_balanced_draws_classes_evenly_and_is_seeded() {
        // 90 images of class 0, 10 of class 1.
        let records: Vec<DatasetRecord> = (0..100).map(|i| labelled((i >= 90) as usize)).collect();
        let s = EpochSampler::new(SamplerSpec::ClassBalanced, &records).unwrap();
        let mut ones = 0;
        for e in 0..50 {
            let order = s.epoch(7, e);
            assert_eq!(order.len(), 100);
            ones += order.iter().filter(|&&i| i >= 90).count();
        }
        let share = ones as f64 / 5000.0;
        assert!((share - 0.5).abs() < 0.03, "class 1 drawn {share}");
        assert_eq!(s.epoch(7, 3), s.epoch(7, 3));
        assert_ne!(s.epoch(7, 3), s.epoch(8, 3));
        let mut det = labelled(0);
        det.label = None;
        let e = EpochSampler::new(SamplerSpec::ClassBalanced, &[det]).unwrap_err();
        assert!(e.to_string().contains("RepeatFactorTrainingSampler"), "{e}");
    }

    #[test]
    fn repeat_factors_follow_detectron2() {
        // Category 1 is in 1 of 10 images: f = 0.1, t = 0.4 -> r = sqrt(4) = 2; category 0
        // (in all) keeps 1.
        let ann = |c| ObjectAnnotation {
            bbox: [0.0, 0.0, 4.0, 4.0],
            category_id: c,
            ignore: false,
            attributes: Vec::new(),
        };
        let mut records: Vec<DatasetRecord> = (0..10)
            .map(|_| {
                let mut r = labelled(0);
                r.label = None;
                r.annotations = vec![ann(0)];
                r
            })
            .collect();
        records[3].annotations.push(ann(1));
        let spec = SamplerSpec::RepeatFactor {
            threshold: 0.4,
            sqrt: true,
        };
        let s = EpochSampler::new(spec, &records).unwrap();
        let EpochSampler::RepeatFactor { factors } = &s else {
            unreachable!()
        };
        assert_eq!(factors[3], 2.0);
        assert!(factors.iter().enumerate().all(|(i, &f)| i == 3 || f == 1.0));
        let order = s.epoch(0, 0);
        assert_eq!(order.len(), 11);
        assert_eq!(order.iter().filter(|&&i| i == 3).count(), 2);
        // A fractional factor rounds stochastically: 1.5 repeats 1.5 times on average.
        let spec = SamplerSpec::RepeatFactor {
            threshold: 0.225,
            sqrt: true,
        };
        let s = EpochSampler::new(spec, &records).unwrap();
        let extra: usize = (0..400).map(|e| s.epoch(1, e).len() - 10).sum();
        assert!((extra as f64 / 400.0 - 0.5).abs() < 0.08, "{extra}");
    }
}
