//! Detectron2's `subsample_labels`: a fixed-size random sample of foreground and
//! background indices, with at most a given share of foreground, so the losses of
//! two-stage detectors see a balanced set whatever the image holds.

use rand::Rng;

/// One random key per label, uniform in [0, 1) on a 2^-24 grid (exact in f32, so the
/// same keys select the same sample on the host and, through `ops::top_k_mask`, on a
/// device). A sample of k is the k candidates of highest key: uniformly random, and
/// drawing as many keys whatever the labels keeps the generator's stream independent
/// of the image's content.
pub fn random_keys(len: usize, rng: &mut impl Rng) -> Vec<f32> {
    (0..len)
        .map(|_| (rng.next_u32() >> 8) as f32 * (1.0 / (1u32 << 24) as f32))
        .collect()
}

/// The `n` of `from` with the highest keys (ties: the lower index, as the device op's
/// stable sort), in increasing index order.
pub fn highest_keys(from: &[usize], keys: &[f32], n: usize) -> Vec<usize> {
    let mut v = from.to_vec();
    let order = |a: &usize, b: &usize| keys[*b].total_cmp(&keys[*a]).then(a.cmp(b));
    if n == 0 {
        return Vec::new();
    }
    if n < v.len() {
        v.select_nth_unstable_by(n - 1, order);
        v.truncate(n);
    }
    v.sort_unstable();
    v
}

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
    let keys = random_keys(labels.len(), rng);
    let fg: Vec<usize> = (0..labels.len())
        .filter(|&i| labels[i] >= 0 && labels[i] != bg_label)
        .collect();
    let bg: Vec<usize> = (0..labels.len())
        .filter(|&i| labels[i] == bg_label)
        .collect();
    let num_fg = ((num_samples as f64 * positive_fraction) as usize).min(fg.len());
    let num_bg = (num_samples - num_fg).min(bg.len());
    (
        highest_keys(&fg, &keys, num_fg),
        highest_keys(&bg, &keys, num_bg),
    )
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

    #[test]
    fn highest_keys_by_hand() {
        let keys = [0.5, 0.9, 0.1, 0.9, 0.7];
        assert_eq!(highest_keys(&[0, 1, 2, 3, 4], &keys, 3), vec![1, 3, 4]);
        // A tie at the cut goes to the lower index.
        assert_eq!(highest_keys(&[0, 1, 2, 3, 4], &keys, 1), vec![1]);
        assert_eq!(highest_keys(&[0, 2, 4], &keys, 2), vec![0, 4]);
        assert_eq!(highest_keys(&[0, 2], &keys, 5), vec![0, 2]);
        assert!(highest_keys(&[0, 2], &keys, 0).is_empty());
        let k = random_keys(1000, &mut rand::rngs::StdRng::seed_from_u64(1));
        assert!(k.iter().all(|&v| (0.0..1.0).contains(&v)));
        let mean = k.iter().sum::<f32>() / 1000.0;
        assert!((mean - 0.5).abs() < 0.05, "mean key {mean}");
    }
}
