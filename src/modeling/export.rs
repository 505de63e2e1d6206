//! A model as an ONNX file: one input `image` (RGB pixels 0..255, float, NCHW, at a fixed
//! size), normalised inside the graph so that any runtime can feed it pixels, then the
//! meta-architecture's own export (a classifier's logits; a detector's boxes, scores and
//! classes after NMS, or its raw head outputs). The file's metadata names the classes,
//! the input size and the output layout.

use crate::error::{Error, Result};
use crate::onnx::{DataType, Dim, OnnxGraph};

use super::Model;

/// The batch dimension of an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportBatch {
    Fixed(usize),
    /// Any batch size at run time (`N` in the file).
    Dynamic,
}

impl ExportBatch {
    pub fn dim(&self) -> Dim {
        match self {
            Self::Fixed(n) => Dim::Fixed(*n),
            Self::Dynamic => Dim::Named("N".into()),
        }
    }
}

/// What to export.
#[derive(Debug, Clone, PartialEq)]
pub struct OnnxExportSpec {
    pub height: usize,
    pub width: usize,
    pub batch: ExportBatch,
    /// A detector's head outputs and anchors instead of its decoded, NMS-ed detections.
    pub raw: bool,
}

impl OnnxExportSpec {
    /// Batch 1 with decoded detections.
    pub fn new(height: usize, width: usize) -> Self {
        Self {
            height,
            width,
            batch: ExportBatch::Fixed(1),
            raw: false,
        }
    }
}

impl Model {
    /// The ONNX model file (opset [`crate::onnx::OPSET`]) of this model's inference at
    /// `spec`'s size. `class_names` go into the metadata.
    pub fn export_onnx(&self, spec: &OnnxExportSpec, class_names: &[String]) -> Result<Vec<u8>> {
        let div = self.arch.size_divisibility().max(1);
        if spec.height == 0
            || spec.width == 0
            || !spec.height.is_multiple_of(div)
            || !spec.width.is_multiple_of(div)
        {
            return Err(Error::run(format!(
                "the export size {}x{} must be positive multiples of {div} (this model's size \
                 divisibility)",
                spec.height, spec.width
            )));
        }
        if spec.batch == ExportBatch::Fixed(0) {
            return Err(Error::run("the export batch size must be at least 1"));
        }
        let mut g = OnnxGraph::new("candletron");
        let channels = self.pixel_mean.dim(1)?;
        let image = g.input(
            "image",
            DataType::Float,
            vec![
                spec.batch.dim(),
                Dim::Fixed(channels),
                Dim::Fixed(spec.height),
                Dim::Fixed(spec.width),
            ],
        );
        let mean = g.tensor("pixel_mean", &self.pixel_mean)?;
        let std = g.tensor("pixel_std", &self.pixel_std)?;
        let centred = g.node("Sub", &[&image, &mean], vec![]);
        let x = g.node("Div", &[&centred, &std], vec![]);
        let layout = self.arch.export_onnx(&mut g, &x, spec)?;
        g.metadata(
            "class_names",
            &serde_json::to_string(class_names).unwrap_or_default(),
        );
        g.metadata(
            "input",
            &format!(
                "image: float32 RGB pixels 0..255, NCHW ({}, {channels}, {}, {}); normalised \
                 inside the model",
                match spec.batch {
                    ExportBatch::Fixed(n) => n.to_string(),
                    ExportBatch::Dynamic => "N".into(),
                },
                spec.height,
                spec.width
            ),
        );
        g.metadata("input_size", &format!("{}x{}", spec.height, spec.width));
        g.metadata("output_layout", &layout);
        Ok(g.to_model_bytes(env!("CARGO_PKG_VERSION")))
    }
}
