//! Detectron2's `subsample_labels`: a fixed-size random sample of foreground and
//! background indices, with at most a given share of foreground, so the losses of
//! two-stage detectors see a balanced set whatever the image holds.

use rand::seq::index::sample;
use rand::Rng;

/// `labels`: -1 ignored, `bg_label` background, anything else foreground. Returns
/// (foreground, background) indices: at most `num_samples * positive_fraction`
/// foreground, the rest background as far as there is any.
pub fn subsample_labels(
    labels: &[i64],
    num_samples: usize,
    positive_fraction: f64,
    bg_label: i64,
    rng: &mut impl Rng,
) -> (Vec<usize>, Vec<usize>) {
    let fg: Vec<usize> = (0..labels.len())
        .filter(|&i| labels[i] >= 0 && labels[i] != bg_label)
        .collect();
    let bg: Vec<usize> = (0..labels.len())
        .filter(|&i| labels[i] == bg_label)
        .collect();
    let num_fg = ((num_samples as f64 * positive_fraction) as usize).min(fg.len());
    let num_bg = (num_samples - num_fg).min(bg.len());
    let pick = |from: &[usize], n: usize, rng: &mut dyn rand::RngCore| -> Vec<usize> {
        let mut v: Vec<usize> = sample(rng, from.len(), n)
            .into_iter()
            .map(|i| from[i])
            .collect();
        v.sort_unstable();
        v
    };
    let f = pick(&fg, num_fg, rng);
    let b = pick(&bg, num_bg, rng);
    (f, b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn balanced_capped_and_edge_cases() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        // 10 foreground (class 0 or 1), 50 background (2), 5 ignored.
        let mut labels = vec![0i64; 5];
        labels.extend(vec![1; 5]);
        labels.extend(vec![2; 50]);
        labels.extend(vec![-1; 5]);
        let (f, b) = subsample_labels(&labels, 16, 0.25, 2, &mut rng);
        assert_eq!((f.len(), b.len()), (4, 12));
        assert!(f.iter().all(|&i| i < 10) && b.iter().all(|&i| (10..60).contains(&i)));
        // Too few foreground: the rest is filled with background.
        let (f, b) = subsample_labels(&labels, 40, 0.5, 2, &mut rng);
        assert_eq!((f.len(), b.len()), (10, 30));
        // No ground truth: all background.
        let (f, b) = subsample_labels(&[2; 8], 4, 0.5, 2, &mut rng);
        assert_eq!((f.len(), b.len()), (0, 4));
        // All ignored: nothing to sample.
        let (f, b) = subsample_labels(&[-1; 8], 4, 0.5, 2, &mut rng);
        assert!(f.is_empty() && b.is_empty());
        // Same seed, same sample.
        let a = subsample_labels(
            &labels,
            16,
            0.25,
            2,
            &mut rand::rngs::StdRng::seed_from_u64(3),
        );
        let c = subsample_labels(
            &labels,
            16,
            0.25,
            2,
            &mut rand::rngs::StdRng::seed_from_u64(3),
        );
        assert_eq!(a, c);
    }
}
