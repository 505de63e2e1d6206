//! Ground-truth boxes of one image, as training consumes them.

/// The boxes of one image, with their classes and ignore flags kept in step.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Instances {
    pub boxes: Vec<[f32; 4]>,
    pub classes: Vec<usize>,
    pub ignore: Vec<bool>,
}

impl Instances {
    pub fn len(&self) -> usize {
        self.boxes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.boxes.is_empty()
    }

    pub fn num_trainable(&self) -> usize {
        self.ignore.iter().filter(|&&i| !i).count()
    }

    /// Keeps the instances whose `keep` flag is set.
    pub fn retain(&mut self, keep: &[bool]) {
        let mut i = 0;
        self.boxes.retain(|_| {
            i += 1;
            keep[i - 1]
        });
        let mut i = 0;
        self.classes.retain(|_| {
            i += 1;
            keep[i - 1]
        });
        let mut i = 0;
        self.ignore.retain(|_| {
            i += 1;
            keep[i - 1]
        });
    }
}
