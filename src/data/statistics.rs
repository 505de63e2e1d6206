//! Dataset statistics, as `visualize_data` prints them.

use std::fmt;

use super::catalog::DatasetRecord;

/// Upper edges (pixels, sqrt of box area) of the size histogram's bins; the last bin is open.
pub const SIZE_BINS: [f32; 7] = [8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

#[derive(Debug, Clone, PartialEq)]
pub struct DatasetStats {
    pub images: usize,
    /// Every annotated box (a 0-face WIDER image's all-zero line is not one).
    pub boxes: usize,
    /// Boxes that training ignores (crowd, invalid, too small, degenerate).
    pub ignored_boxes: usize,
    pub images_without_boxes: usize,
    /// Counts per size bin: `< 8`, `8-16`, ..., `256-512`, `>= 512` (sqrt of area).
    pub size_histogram: [usize; SIZE_BINS.len() + 1],
    pub max_boxes_per_image: usize,
}

impl DatasetStats {
    pub fn from_records(records: &[DatasetRecord]) -> Self {
        let mut s = Self {
            images: records.len(),
            boxes: 0,
            ignored_boxes: 0,
            images_without_boxes: 0,
            size_histogram: [0; SIZE_BINS.len() + 1],
            max_boxes_per_image: 0,
        };
        for r in records {
            s.boxes += r.annotations.len();
            s.max_boxes_per_image = s.max_boxes_per_image.max(r.annotations.len());
            if r.annotations.is_empty() {
                s.images_without_boxes += 1;
            }
            for a in &r.annotations {
                s.ignored_boxes += a.ignore as usize;
                let [x1, y1, x2, y2] = a.bbox;
                let size = ((x2 - x1).max(0.0) * (y2 - y1).max(0.0)).sqrt();
                let bin = SIZE_BINS
                    .iter()
                    .position(|&e| size < e)
                    .unwrap_or(SIZE_BINS.len());
                s.size_histogram[bin] += 1;
            }
        }
        s
    }

    pub fn bin_labels() -> Vec<String> {
        let mut out = Vec::new();
        let mut lo = 0.0;
        for e in SIZE_BINS {
            out.push(if lo == 0.0 {
                format!("<{e}")
            } else {
                format!("{lo}-{e}")
            });
            lo = e;
        }
        out.push(format!(">={lo}"));
        out
    }

    pub fn to_json(&self) -> serde_json::Value {
        let hist: serde_json::Map<String, serde_json::Value> = Self::bin_labels()
            .into_iter()
            .zip(self.size_histogram)
            .map(|(k, v)| (k, v.into()))
            .collect();
        serde_json::json!({
            "images": self.images,
            "boxes": self.boxes,
            "ignored_boxes": self.ignored_boxes,
            "images_without_boxes": self.images_without_boxes,
            "max_boxes_per_image": self.max_boxes_per_image,
            "size_histogram": hist,
        })
    }
}

impl fmt::Display for DatasetStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "images: {}  boxes: {}  ignored boxes: {}  images without boxes: {}  max boxes per image: {}",
            self.images, self.boxes, self.ignored_boxes, self.images_without_boxes, self.max_boxes_per_image
        )?;
        writeln!(f, "box size (sqrt of area, px) histogram:")?;
        let peak = self
            .size_histogram
            .iter()
            .copied()
            .max()
            .unwrap_or(0)
            .max(1);
        for (label, n) in Self::bin_labels().iter().zip(self.size_histogram) {
            let bar = "#".repeat((40 * n).div_ceil(peak));
            writeln!(f, "  {label:>9} {n:>8} {bar}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::catalog::ObjectAnnotation;
    use std::path::PathBuf;

    #[test]
    fn counts_and_bins() {
        let a = |b: [f32; 4], ignore| ObjectAnnotation {
            bbox: b,
            category_id: 0,
            ignore,
            attributes: Vec::new(),
        };
        let recs = vec![
            DatasetRecord {
                file_name: PathBuf::from("a"),
                image_id: "a".into(),
                width: 0,
                height: 0,
                annotations: vec![
                    a([0.0, 0.0, 4.0, 4.0], false),
                    a([0.0, 0.0, 20.0, 20.0], true),
                    a([0.0, 0.0, 600.0, 600.0], false),
                ],
                label: None,
                embedded: None,
            },
            DatasetRecord {
                file_name: PathBuf::from("b"),
                image_id: "b".into(),
                width: 0,
                height: 0,
                annotations: vec![],
                label: None,
                embedded: None,
            },
        ];
        let s = DatasetStats::from_records(&recs);
        assert_eq!(
            (s.images, s.boxes, s.ignored_boxes, s.images_without_boxes),
            (2, 3, 1, 1)
        );
        assert_eq!(s.size_histogram, [1, 0, 1, 0, 0, 0, 0, 1]);
        assert_eq!(DatasetStats::bin_labels()[0], "<8");
        assert_eq!(DatasetStats::bin_labels()[7], ">=512");
    }
}
