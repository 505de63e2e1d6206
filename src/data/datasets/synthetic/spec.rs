//! What the generator draws: every parameter that changes its output.

use crate::config::Config;
use crate::data::datasets::record::DataError;

/// Bumped whenever the drawing changes, so cached datasets are regenerated.
const GENERATOR_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticSpec {
    pub seed: u64,
    pub num_train: usize,
    pub num_val: usize,
    pub image_size: usize,
    pub max_faces: usize,
    pub min_face_size: f32,
    pub max_face_size: f32,
}

impl SyntheticSpec {
    pub fn from_config(cfg: &Config) -> Result<Self, DataError> {
        let s = &cfg.datasets.synthetic;
        let spec = Self {
            seed: s.seed as u64,
            num_train: s.num_train,
            num_val: s.num_val,
            image_size: s.image_size,
            max_faces: s.max_faces,
            min_face_size: s.min_face_size as f32,
            max_face_size: s.max_face_size as f32,
        };
        if spec.image_size < 64 {
            return Err(DataError::new(format!(
                "DATASETS.SYNTHETIC.IMAGE_SIZE must be at least 64, got {}",
                spec.image_size
            )));
        }
        if !(spec.min_face_size >= 2.0 && spec.min_face_size < spec.max_face_size) {
            return Err(DataError::new(format!(
                "DATASETS.SYNTHETIC needs 2 <= MIN_FACE_SIZE < MAX_FACE_SIZE, got {} and {}",
                spec.min_face_size, spec.max_face_size
            )));
        }
        Ok(spec)
    }

    /// Folder name under `DATASETS.ROOT/synthetic_faces/`: every parameter that changes
    /// the output is in it, so different configs never share a cache.
    pub fn tag(&self) -> String {
        format!(
            "v{GENERATOR_VERSION}_seed{}_n{}-{}_w{}_f{}_{}-{}",
            self.seed,
            self.num_train,
            self.num_val,
            self.image_size,
            self.max_faces,
            self.min_face_size,
            self.max_face_size
        )
    }

    pub(super) fn count(&self, split: &str) -> usize {
        if split == "train" {
            self.num_train
        } else {
            self.num_val
        }
    }
}
