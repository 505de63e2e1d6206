//! Multi-label classification metrics: average precision per class (scikit-learn's
//! `average_precision_score`: the sum of precision times recall increments over distinct
//! score thresholds) and their mean over the classes that have a positive image (`mAP`);
//! precision, recall and F1 per class at a probability threshold (predicted when
//! `p >= threshold`), their micro and macro averages, and the threshold of a 0.05 grid
//! with the best micro-F1. Fractions in 0..1.

use std::collections::BTreeMap;

use super::classification::{class_name, insert_per_class, ClassScores};

#[derive(Debug, Clone, PartialEq)]
pub struct MultiLabelMetrics {
    /// Per class; `None` for a class without positive images (left out of `map`).
    pub ap: Vec<Option<f64>>,
    pub map: f64,
    pub threshold: f64,
    /// Per class at `threshold`, 0 where undefined; `support` counts positive images.
    pub per_class: Vec<ClassScores>,
    pub micro_f1: f64,
    pub macro_f1: f64,
    pub best_threshold: f64,
    pub best_micro_f1: f64,
}

/// Average precision of one class: `scores` of every image, `positive` whether the
/// class is in it.
pub fn average_precision(scores: &[f32], positive: &[bool]) -> Option<f64> {
    let total = positive.iter().filter(|&&p| p).count();
    if total == 0 {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let (mut tp, mut seen, mut ap, mut last_recall) = (0usize, 0usize, 0.0, 0.0);
    let mut k = 0;
    while k < order.len() {
        // Tied scores form one threshold.
        let s = scores[order[k]];
        while k < order.len() && scores[order[k]] == s {
            tp += positive[order[k]] as usize;
            seen += 1;
            k += 1;
        }
        let recall = tp as f64 / total as f64;
        let precision = tp as f64 / seen as f64;
        ap += (recall - last_recall) * precision;
        last_recall = recall;
    }
    Some(ap)
}

/// (tp, fp, fn) per class at `threshold`.
fn counts(
    targets: &[Vec<bool>],
    probs: &[Vec<f32>],
    classes: usize,
    threshold: f64,
) -> Vec<(u64, u64, u64)> {
    let mut c = vec![(0u64, 0u64, 0u64); classes];
    for (t, p) in targets.iter().zip(probs) {
        for k in 0..classes {
            match (p[k] as f64 >= threshold, t[k]) {
                (true, true) => c[k].0 += 1,
                (true, false) => c[k].1 += 1,
                (false, true) => c[k].2 += 1,
                (false, false) => {}
            }
        }
    }
    c
}

fn f1(tp: u64, fp: u64, fn_: u64) -> f64 {
    if tp == 0 {
        0.0
    } else {
        2.0 * tp as f64 / (2 * tp + fp + fn_) as f64
    }
}

fn micro_f1(c: &[(u64, u64, u64)]) -> f64 {
    let (tp, fp, fn_) = c
        .iter()
        .fold((0, 0, 0), |a, x| (a.0 + x.0, a.1 + x.1, a.2 + x.2));
    f1(tp, fp, fn_)
}

/// `labels[i]`: the classes in image `i`; `probs[i]`: its per-class probabilities.
pub fn evaluate_multilabel(
    labels: &[Vec<usize>],
    probs: &[Vec<f32>],
    classes: usize,
    threshold: f64,
) -> MultiLabelMetrics {
    let targets: Vec<Vec<bool>> = labels
        .iter()
        .map(|l| (0..classes).map(|k| l.contains(&k)).collect())
        .collect();
    let ap: Vec<Option<f64>> = (0..classes)
        .map(|k| {
            let s: Vec<f32> = probs.iter().map(|p| p[k]).collect();
            let t: Vec<bool> = targets.iter().map(|t| t[k]).collect();
            average_precision(&s, &t)
        })
        .collect();
    let defined: Vec<f64> = ap.iter().flatten().copied().collect();
    let map = defined.iter().sum::<f64>() / defined.len().max(1) as f64;
    let c = counts(&targets, probs, classes, threshold);
    let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let per_class: Vec<ClassScores> = c
        .iter()
        .map(|&(tp, fp, fn_)| ClassScores {
            precision: ratio(tp, tp + fp),
            recall: ratio(tp, tp + fn_),
            f1: f1(tp, fp, fn_),
            support: tp + fn_,
        })
        .collect();
    let macro_f1 = per_class.iter().map(|x| x.f1).sum::<f64>() / classes.max(1) as f64;
    let (mut best_threshold, mut best_micro_f1) = (0.05, f64::NEG_INFINITY);
    for step in 1..20 {
        let t = step as f64 * 0.05;
        let f = micro_f1(&counts(&targets, probs, classes, t));
        if f > best_micro_f1 {
            (best_threshold, best_micro_f1) = (t, f);
        }
    }
    MultiLabelMetrics {
        ap,
        map,
        threshold,
        micro_f1: micro_f1(&c),
        per_class,
        macro_f1,
        best_threshold,
        best_micro_f1,
    }
}

impl MultiLabelMetrics {
    /// `mAP`, `micro_f1`, `macro_f1`, `best_threshold`, `best_micro_f1`, and per class
    /// `AP/NAME`, `precision/NAME`, `recall/NAME`, `f1/NAME`.
    pub fn to_map(&self, class_names: &[String]) -> BTreeMap<String, f64> {
        let mut m = BTreeMap::from([
            ("mAP".to_string(), self.map),
            ("micro_f1".to_string(), self.micro_f1),
            ("macro_f1".to_string(), self.macro_f1),
            ("best_threshold".to_string(), self.best_threshold),
            ("best_micro_f1".to_string(), self.best_micro_f1),
        ]);
        for (k, ap) in self.ap.iter().enumerate() {
            if let Some(ap) = ap {
                m.insert(format!("AP/{}", class_name(class_names, k)), *ap);
            }
        }
        insert_per_class(&mut m, class_names, &self.per_class);
        m
    }
}

/// The mean binary cross-entropy over images and classes of sigmoid `logits` against the
/// multi-hot targets (the validation loss of a multi-label run).
pub fn mean_binary_cross_entropy(labels: &[Vec<usize>], logits: &[Vec<f32>]) -> f64 {
    let mut sum = 0.0f64;
    let mut n = 0usize;
    for (l, x) in labels.iter().zip(logits) {
        for (k, &v) in x.iter().enumerate() {
            let (v, t) = (v as f64, l.contains(&k) as u8 as f64);
            sum += v.max(0.0) - v * t + (-v.abs()).exp().ln_1p();
            n += 1;
        }
    }
    sum / n.max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn average_precision_matches_scikit_learn() {
        // sklearn.metrics.average_precision_score([1, 0, 1, 1, 0], [.9, .8, .8, .3, .1])
        // = 0.8055555555555556 (the tie at 0.8 is one threshold).
        let ap = average_precision(
            &[0.9, 0.8, 0.8, 0.3, 0.1],
            &[true, false, true, true, false],
        );
        assert!((ap.unwrap() - 0.805_555_555_555_555_6).abs() < 1e-12);
        assert_eq!(average_precision(&[0.5], &[false]), None);
    }

    #[test]
    fn hand_computed_case() {
        // 3 images, 3 classes; class 2 never present.
        let labels = vec![vec![0], vec![0, 1], vec![]];
        let probs = vec![
            vec![0.9, 0.2, 0.6],
            vec![0.7, 0.8, 0.1],
            vec![0.6, 0.4, 0.2],
        ];
        let m = evaluate_multilabel(&labels, &probs, 3, 0.5);
        assert_eq!(m.ap[0], Some(1.0));
        assert_eq!(m.ap[1], Some(1.0));
        assert_eq!(m.ap[2], None);
        assert_eq!(m.map, 1.0);
        // At 0.5: class 0 tp 2 fp 1 -> F1 0.8; class 1 tp 1 -> 1; class 2 fp 1 -> 0.
        assert!((m.per_class[0].f1 - 0.8).abs() < 1e-12);
        assert_eq!(m.per_class[1].f1, 1.0);
        assert_eq!(m.per_class[2].f1, 0.0);
        assert!((m.macro_f1 - 0.6).abs() < 1e-12);
        // Micro: tp 3, fp 2, fn 0 -> 6 / 8.
        assert!((m.micro_f1 - 0.75).abs() < 1e-12);
        // 0.6 < t <= 0.7 keeps every positive and drops every negative: 0.65 on the grid.
        assert!((m.best_threshold - 0.65).abs() < 1e-12 && m.best_micro_f1 == 1.0);
        let bce = mean_binary_cross_entropy(&[vec![0]], &[vec![0.0, 0.0]]);
        assert!((bce - 2f64.ln()).abs() < 1e-12);
    }
}
