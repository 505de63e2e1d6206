//! Single-label classification metrics: top-1 and top-5 accuracy, per-class precision,
//! recall and F1, macro-F1 (scikit-learn's `average="macro"`: the mean of the per-class
//! F1), and the confusion matrix. Fractions in 0..1, as the detection APs.

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq)]
pub struct ClassificationMetrics {
    pub top1: f64,
    /// Top-k accuracy with k = min(5, classes).
    pub top5: f64,
    /// Per class: precision, recall, F1 (0 where undefined, as scikit-learn's
    /// `zero_division=0`) and the number of images of that class.
    pub per_class: Vec<ClassScores>,
    pub macro_f1: f64,
    /// `confusion[true][predicted]` image counts.
    pub confusion: Vec<Vec<u64>>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClassScores {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: u64,
}

/// `scores[i]` are image `i`'s class scores (logits or probabilities), `labels[i]` its class.
/// The prediction is the highest score (the lowest class id among equals); an image is in
/// the top k when fewer than k classes score strictly higher than its class.
pub fn evaluate_classification(
    labels: &[usize],
    scores: &[Vec<f32>],
    num_classes: usize,
) -> ClassificationMetrics {
    let mut confusion = vec![vec![0u64; num_classes]; num_classes];
    let k = 5.min(num_classes);
    let (mut top1, mut topk) = (0usize, 0usize);
    for (&label, s) in labels.iter().zip(scores) {
        let pred = s
            .iter()
            .enumerate()
            .fold(0, |best, (c, &v)| if v > s[best] { c } else { best });
        let higher = s.iter().filter(|&&v| v > s[label]).count();
        top1 += (pred == label) as usize;
        topk += (higher < k) as usize;
        if label < num_classes && pred < num_classes {
            confusion[label][pred] += 1;
        }
    }
    let n = labels.len().max(1) as f64;
    let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let per_class: Vec<ClassScores> = (0..num_classes)
        .map(|c| {
            let tp = confusion[c][c];
            let support: u64 = confusion[c].iter().sum();
            let predicted: u64 = confusion.iter().map(|row| row[c]).sum();
            let (precision, recall) = (ratio(tp, predicted), ratio(tp, support));
            let f1 = if precision + recall > 0.0 {
                2.0 * precision * recall / (precision + recall)
            } else {
                0.0
            };
            ClassScores {
                precision,
                recall,
                f1,
                support,
            }
        })
        .collect();
    let macro_f1 = per_class.iter().map(|c| c.f1).sum::<f64>() / num_classes.max(1) as f64;
    ClassificationMetrics {
        top1: top1 as f64 / n,
        top5: topk as f64 / n,
        per_class,
        macro_f1,
        confusion,
    }
}

impl ClassificationMetrics {
    /// `top1`, `top5`, `macro_f1`, and `precision/NAME`, `recall/NAME`, `f1/NAME` per class.
    pub fn to_map(&self, class_names: &[String]) -> BTreeMap<String, f64> {
        let mut m = BTreeMap::from([
            ("top1".to_string(), self.top1),
            ("top5".to_string(), self.top5),
            ("macro_f1".to_string(), self.macro_f1),
        ]);
        insert_per_class(&mut m, class_names, &self.per_class);
        m
    }
}

/// Class `k`'s name (`class K` past the names).
pub fn class_name(class_names: &[String], k: usize) -> String {
    class_names
        .get(k)
        .cloned()
        .unwrap_or_else(|| format!("class {k}"))
}

/// `precision/NAME`, `recall/NAME` and `f1/NAME` of every class, into `m`.
pub fn insert_per_class(
    m: &mut BTreeMap<String, f64>,
    class_names: &[String],
    per_class: &[ClassScores],
) {
    for (c, s) in per_class.iter().enumerate() {
        let name = class_name(class_names, c);
        m.insert(format!("precision/{name}"), s.precision);
        m.insert(format!("recall/{name}"), s.recall);
        m.insert(format!("f1/{name}"), s.f1);
    }
}

/// The mean softmax cross-entropy of `logits[i]` against class `labels[i]` (the
/// validation loss that training curves compare with the training loss; no smoothing).
pub fn mean_cross_entropy(labels: &[usize], logits: &[Vec<f32>]) -> f64 {
    let mut sum = 0.0f64;
    for (&label, s) in labels.iter().zip(logits) {
        let max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let lse = max + s.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln();
        sum += lse - s.get(label).copied().unwrap_or(f32::NAN) as f64;
    }
    sum / labels.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cross_entropy_by_hand() {
        assert!((mean_cross_entropy(&[0], &[vec![0.0, 0.0]]) - 2f64.ln()).abs() < 1e-12);
        // -log softmax([1000, 0])[1] = 1000 without overflow.
        let ce = mean_cross_entropy(&[1, 0], &[vec![1000.0, 0.0], vec![1000.0, 0.0]]);
        assert!((ce - 500.0).abs() < 1e-9, "{ce}");
    }

    #[test]
    fn hand_computed_case() {
        // Three classes; true labels and argmax predictions:
        //   0->0, 0->1, 1->1, 1->1, 2->0, 2->2
        let s = |p: usize| {
            let mut v = vec![0.1f32; 3];
            v[p] = 0.9;
            v
        };
        let labels = [0, 0, 1, 1, 2, 2];
        let scores = vec![s(0), s(1), s(1), s(1), s(0), s(2)];
        let m = evaluate_classification(&labels, &scores, 3);
        assert_eq!(
            m.confusion,
            vec![vec![1, 1, 0], vec![0, 2, 0], vec![1, 0, 1]]
        );
        assert!((m.top1 - 4.0 / 6.0).abs() < 1e-12);
        assert_eq!(m.top5, 1.0);
        // Class 0: P 1/2, R 1/2, F1 1/2. Class 1: P 2/3, R 1, F1 0.8. Class 2: P 1, R 1/2, F1 2/3.
        let f1: Vec<f64> = m.per_class.iter().map(|c| c.f1).collect();
        for (got, want) in f1.iter().zip([0.5, 0.8, 2.0 / 3.0]) {
            assert!((got - want).abs() < 1e-12, "{f1:?}");
        }
        assert!((m.macro_f1 - (0.5 + 0.8 + 2.0 / 3.0) / 3.0).abs() < 1e-12);
        assert_eq!(m.per_class[1].support, 2);
        let map = m.to_map(&["a".into(), "b".into(), "c".into()]);
        assert_eq!(map["recall/b"], 1.0);
    }

    #[test]
    fn top_k_counts_strictly_higher_classes_and_a_never_predicted_class_scores_zero() {
        // Six classes: the true class 5 is 6th: outside the top 5.
        let scores = vec![vec![0.6, 0.5, 0.4, 0.3, 0.2, 0.1]];
        let m = evaluate_classification(&[5], &scores, 6);
        assert_eq!((m.top1, m.top5), (0.0, 0.0));
        let m = evaluate_classification(&[4], &scores, 6);
        assert_eq!((m.top1, m.top5), (0.0, 1.0));
        assert_eq!(m.per_class[4].precision, 0.0);
        assert_eq!(m.per_class[4].f1, 0.0);
    }
}
