//! What a classification image is labelled with.

/// One class (single-label datasets: image folders, CIFAR-10) or a set of classes
/// (multi-label: the categories present in a COCO image, possibly none).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ClassLabel {
    Single(usize),
    /// Sorted, without repeats.
    Multi(Vec<usize>),
}

impl ClassLabel {
    /// The classes the image is an example of.
    pub fn classes(&self) -> Vec<usize> {
        match self {
            Self::Single(c) => vec![*c],
            Self::Multi(cs) => cs.clone(),
        }
    }

    /// The single class, if this is a single label.
    pub fn single(&self) -> Option<usize> {
        match self {
            Self::Single(c) => Some(*c),
            Self::Multi(_) => None,
        }
    }
}
