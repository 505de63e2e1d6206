//! Evaluation: the official WIDER FACE protocol, COCO-style box AP, classification
//! accuracy and F1, and the
//! `DatasetEvaluator` interface training calls on a schedule.

pub mod classification;
pub mod matfile;
pub mod predictions;
pub mod widerface;

pub use evaluator::{
    CocoEvaluator, DatasetEvaluator, Detection, ImageDetections, WiderFaceEvaluator,
};
pub use widerface::{GroundTruth, WiderResult};
pub mod coco;
pub mod evaluator;
pub mod inference;
pub mod multilabel;
