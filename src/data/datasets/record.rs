//! The common form every dataset loader returns, as Detectron2's dataset dicts.

use std::path::PathBuf;

pub use crate::structures::ClassLabel;

/// Named per-object attributes of a particular dataset.
pub type Attributes = Vec<(&'static str, i64)>;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DataError(pub String);

impl From<String> for DataError {
    fn from(msg: String) -> Self {
        Self(msg)
    }
}

impl From<&str> for DataError {
    fn from(msg: &str) -> Self {
        Self(msg.to_string())
    }
}

impl From<DataError> for String {
    fn from(e: DataError) -> Self {
        e.0
    }
}

impl DataError {
    pub fn new(msg: impl Into<String>) -> Self {
        Self(msg.into())
    }
}

/// One annotated object; boxes are absolute pixel XYXY in the original image.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectAnnotation {
    pub bbox: [f32; 4],
    /// Contiguous class index in `0..thing_classes.len()`.
    pub category_id: usize,
    /// Kept for evaluation and statistics, but neither positive nor negative in training
    /// (crowd regions, invalid or too-small faces).
    pub ignore: bool,
    /// The dataset's own per-object attributes by name (WIDER FACE: `blur`,
    /// `expression`, `illumination`, `invalid`, `occlusion`, `pose`), for statistics and
    /// evaluation; the generic code never interprets them.
    pub attributes: Attributes,
}

/// One image and its annotations.
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetRecord {
    pub file_name: PathBuf,
    /// WIDER: `EVENT/STEM` (the submission layout's path); COCO: the numeric image id.
    pub image_id: String,
    /// 0 where the annotation file does not say (WIDER); the loader reads the image.
    pub width: u32,
    pub height: u32,
    pub annotations: Vec<ObjectAnnotation>,
    /// The class (or classes) of a classification dataset's image.
    pub label: Option<ClassLabel>,
    /// The image is raw pixels inside `file_name` (CIFAR's binary batches), not an
    /// image file.
    pub embedded: Option<EmbeddedImage>,
}

/// Planar 8-bit RGB pixels (all red, then green, then blue, rows top to bottom) at a
/// byte offset of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmbeddedImage {
    pub offset: u64,
    pub width: u32,
    pub height: u32,
}

impl DatasetRecord {
    pub fn num_trainable(&self) -> usize {
        self.annotations.iter().filter(|a| !a.ignore).count()
    }

    /// The categories of the image's boxes (ignored ones included), sorted, once each.
    pub fn box_categories(&self) -> Vec<usize> {
        let mut c: Vec<usize> = self.annotations.iter().map(|a| a.category_id).collect();
        c.sort_unstable();
        c.dedup();
        c
    }
}

/// How a dataset is evaluated.
#[derive(Debug, Clone, PartialEq)]
pub enum EvaluatorType {
    /// The WIDER FACE protocol; `gt` is a folder of official `.mat` files or a `*_bbx_gt.txt`.
    WiderFace { gt: PathBuf },
    /// COCO-style box AP against the dataset's own records.
    Coco,
    /// Single-label classification: accuracy, per-class precision / recall / F1.
    Classification,
    /// Multi-label classification: mAP over classes, F1 at a threshold.
    MultiLabel,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DatasetMetadata {
    pub thing_classes: Vec<String>,
    pub evaluator_type: EvaluatorType,
}

#[derive(Debug, Clone)]
pub struct Dataset {
    pub name: String,
    pub records: Vec<DatasetRecord>,
    pub metadata: DatasetMetadata,
}
