//! Edit distances, for suggesting the closest valid key or value.

/// Levenshtein distance, for suggesting the closest valid key.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The Levenshtein distance if it is at most `max`. The distance is at least the length
/// difference, so a candidate that difference rules out costs no quadratic work (a long
/// garbage key against every valid one).
pub fn edit_distance_within(a: &str, b: &str, max: usize) -> Option<usize> {
    if a.chars().count().abs_diff(b.chars().count()) > max {
        return None;
    }
    Some(edit_distance(a, b)).filter(|&d| d <= max)
}

/// The candidate closest to `text` (ignoring case), if it is close enough to be a typo:
/// at most a third of its length away, and at least 1 for short names.
pub fn closest<'a>(text: &str, candidates: impl Iterator<Item = &'a str>) -> Option<String> {
    let t = text.to_ascii_lowercase();
    candidates
        .filter_map(|c| {
            edit_distance_within(&t, &c.to_ascii_lowercase(), (c.len() / 3).max(1)).map(|d| (d, c))
        })
        .min_by_key(|&(d, _)| d)
        .map(|(_, c)| c.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances_and_bounds() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance_within("kitten", "sitting", 3), Some(3));
        assert_eq!(edit_distance_within("kitten", "sitting", 2), None);
        // Ruled out by the length difference alone.
        assert_eq!(edit_distance_within(&"x".repeat(4000), "ab", 5), None);
        assert_eq!(
            closest("Sgdd", ["SGD", "AdamW"].into_iter()).as_deref(),
            Some("SGD")
        );
        assert_eq!(
            closest(&"Q".repeat(4000), ["SGD", "AdamW"].into_iter()),
            None
        );
    }
}
