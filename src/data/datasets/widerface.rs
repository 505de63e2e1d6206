//! The official WIDER FACE annotation file, `wider_face_{train,val}_bbx_gt.txt`:
//!
//! ```text
//! 0--Parade/0_Parade_marchingband_1_849.jpg
//! 1
//! 449 330 122 149 0 0 0 0 0 0
//! ```
//!
//! An image path, the number of faces, then one line per face with
//! `x1 y1 w h blur expression illumination invalid occlusion pose`. An image with no
//! face is followed by a single all-zero line that is not a face.

use std::path::Path;

use super::record::{Attributes, DataError, DatasetRecord, ObjectAnnotation};
use crate::config::Config;
use crate::data::image_io::{xywh_within_range, MAX_BOX_COORDINATE};

/// One face with its attributes as the file gives them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FaceAnnotation {
    /// x, y, w, h in pixels.
    pub bbox: [f64; 4],
    /// 0 clear, 1 normal, 2 heavy.
    pub blur: u8,
    /// 0 typical, 1 exaggerated.
    pub expression: u8,
    /// 0 normal, 1 extreme.
    pub illumination: u8,
    /// 0 valid, 1 invalid.
    pub invalid: u8,
    /// 0 none, 1 partial, 2 heavy.
    pub occlusion: u8,
    /// 0 typical, 1 atypical.
    pub pose: u8,
}

impl FaceAnnotation {
    /// The WIDER attributes as a generic record carries them.
    pub fn attributes(&self) -> Attributes {
        vec![
            ("blur", self.blur.into()),
            ("expression", self.expression.into()),
            ("illumination", self.illumination.into()),
            ("invalid", self.invalid.into()),
            ("occlusion", self.occlusion.into()),
            ("pose", self.pose.into()),
        ]
    }

    /// Whether training and evaluation should use this face at all.
    pub fn is_valid(&self) -> bool {
        self.invalid == 0 && self.bbox[2] > 0.0 && self.bbox[3] > 0.0
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct WiderRecord {
    /// Relative to the `images/` folder, e.g. `0--Parade/0_Parade_marchingband_1_849.jpg`.
    pub file_name: String,
    pub faces: Vec<FaceAnnotation>,
}

impl WiderRecord {
    /// The event folder (`0--Parade`).
    pub fn event(&self) -> &str {
        self.file_name.split('/').next().unwrap_or("")
    }

    /// The image name without folder and extension, as submission files use it.
    pub fn stem(&self) -> &str {
        let base = self.file_name.rsplit('/').next().unwrap_or(&self.file_name);
        base.rsplit_once('.').map(|(s, _)| s).unwrap_or(base)
    }
}

/// Parses the annotation text; errors give the line number and the text found.
pub fn parse_bbx_gt(text: &str, source: &Path) -> Result<Vec<WiderRecord>, DataError> {
    let err = |line: usize, msg: String| format!("{}:{line}: {msg}", source.display());
    let lines: Vec<&str> = text.lines().collect();
    let mut records = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let name = lines[i].trim();
        if name.is_empty() {
            i += 1;
            continue;
        }
        // The whole line is the path (spaces are legal in file names); what tells it from
        // a face or count line is its image extension.
        let lower = name.to_ascii_lowercase();
        if ![".jpg", ".jpeg", ".png"].iter().any(|e| lower.ends_with(e)) {
            return Err(err(
                i + 1,
                format!("expected an image path (.jpg, .jpeg or .png), found `{name}`"),
            )
            .into());
        }
        let count_line = lines
            .get(i + 1)
            .ok_or_else(|| err(i + 2, "missing the face count".into()))?;
        let count: usize = count_line.trim().parse().map_err(|_| {
            err(
                i + 2,
                format!("expected the face count, found `{}`", count_line.trim()),
            )
        })?;
        // A 0-face image still has one (all-zero) line.
        let rows = count.max(1);
        // The count is untrusted: reserve no more than the lines that are there.
        let mut faces = Vec::with_capacity(count.min(lines.len().saturating_sub(i + 2)));
        for r in 0..rows {
            let ln = i + 2 + r;
            let line = lines.get(ln).ok_or_else(|| {
                err(
                    ln + 1,
                    format!("file ends inside `{name}`: expected {rows} face line(s)"),
                )
            })?;
            let vals: Vec<f64> = line
                .split_whitespace()
                .map(|v| v.parse::<f64>().ok().filter(|x| x.is_finite()))
                .collect::<Option<_>>()
                .ok_or_else(|| {
                    err(
                        ln + 1,
                        format!("expected 10 numbers, found `{}`", line.trim()),
                    )
                })?;
            if vals.len() != 10 {
                return Err(err(
                    ln + 1,
                    format!(
                        "expected 10 numbers, found {} in `{}`",
                        vals.len(),
                        line.trim()
                    ),
                )
                .into());
            }
            let [x, y, w, h] = [vals[0], vals[1], vals[2], vals[3]];
            if !xywh_within_range([x, y, w, h]) {
                return Err(err(
                    ln + 1,
                    format!(
                        "the box `{x} {y} {w} {h}` reaches beyond ±{MAX_BOX_COORDINATE} pixels"
                    ),
                )
                .into());
            }
            if count == 0 {
                continue;
            }
            let attr = |k: usize, max: f64, what: &str| -> Result<u8, DataError> {
                let v = vals[k];
                if v < 0.0 || v > max || v.fract() != 0.0 {
                    Err(err(
                        ln + 1,
                        format!("{what} must be an integer in 0..={max}, found {v}"),
                    )
                    .into())
                } else {
                    Ok(v as u8)
                }
            };
            faces.push(FaceAnnotation {
                bbox: [vals[0], vals[1], vals[2], vals[3]],
                blur: attr(4, 2.0, "blur")?,
                expression: attr(5, 1.0, "expression")?,
                illumination: attr(6, 1.0, "illumination")?,
                invalid: attr(7, 1.0, "invalid")?,
                occlusion: attr(8, 2.0, "occlusion")?,
                pose: attr(9, 1.0, "pose")?,
            });
        }
        records.push(WiderRecord {
            file_name: name.to_string(),
            faces,
        });
        i += 2 + rows;
    }
    Ok(records)
}

pub fn read_bbx_gt(path: &Path) -> Result<Vec<WiderRecord>, DataError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read annotation file {}: {e}", path.display()))?;
    parse_bbx_gt(&text, path)
}

/// Which faces training ignores (see `DATASETS.FACE_FILTER`). Degenerate boxes (w or
/// h <= 0) are always ignored: there is nothing to regress to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FaceFilter {
    pub min_size: f64,
    pub ignore_invalid: bool,
}

impl Default for FaceFilter {
    fn default() -> Self {
        Self {
            min_size: 0.0,
            ignore_invalid: true,
        }
    }
}

impl FaceFilter {
    pub fn from_config(cfg: &Config) -> Self {
        let f = &cfg.datasets.face_filter;
        Self {
            min_size: f.min_size,
            ignore_invalid: f.ignore_invalid,
        }
    }

    pub fn ignores(&self, f: &FaceAnnotation) -> bool {
        let [_, _, w, h] = f.bbox;
        w <= 0.0 || h <= 0.0 || (self.ignore_invalid && f.invalid != 0) || w.min(h) < self.min_size
    }
}

/// Converts parsed WIDER records into catalog records (XYXY boxes, class 0, ignore flags).
pub fn to_dataset_records(
    records: &[WiderRecord],
    image_root: &Path,
    filter: &FaceFilter,
) -> Vec<DatasetRecord> {
    records
        .iter()
        .map(|r| DatasetRecord {
            file_name: image_root.join(&r.file_name),
            image_id: format!("{}/{}", r.event(), r.stem()),
            width: 0,
            height: 0,
            label: None,
            embedded: None,
            annotations: r
                .faces
                .iter()
                .map(|f| {
                    let [x, y, w, h] = f.bbox;
                    ObjectAnnotation {
                        bbox: [x as f32, y as f32, (x + w) as f32, (y + h) as f32],
                        category_id: 0,
                        ignore: filter.ignores(f),
                        attributes: f.attributes(),
                    }
                })
                .collect(),
        })
        .collect()
}

/// Reads `*_bbx_gt.txt`; a missing or malformed file is an error naming it. Images are
/// not opened here: a missing image is the loader's business (skipped and reported).
pub fn load_records(
    txt: &Path,
    image_root: &Path,
    filter: &FaceFilter,
) -> Result<Vec<DatasetRecord>, DataError> {
    if !txt.is_file() {
        return Err(DataError::new(format!(
            "WIDER FACE annotation file not found: {}",
            txt.display()
        )));
    }
    let recs = read_bbx_gt(txt).map_err(DataError::new)?;
    Ok(to_dataset_records(&recs, image_root, filter))
}

/// Writes records in the official format (0-face images get their all-zero line).
pub fn format_bbx_gt(records: &[WiderRecord]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for r in records {
        let _ = writeln!(out, "{}\n{}", r.file_name, r.faces.len());
        if r.faces.is_empty() {
            out.push_str("0 0 0 0 0 0 0 0 0 0 \n");
        }
        for f in &r.faces {
            let b = f.bbox;
            let _ = writeln!(
                out,
                "{} {} {} {} {} {} {} {} {} {} ",
                b[0],
                b[1],
                b[2],
                b[3],
                f.blur,
                f.expression,
                f.illumination,
                f.invalid,
                f.occlusion,
                f.pose
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str =
        "0--Parade/0_Parade_marchingband_1_849.jpg\n1\n449 330 122 149 0 0 0 0 0 0 \n\
        0--Parade/empty.jpg\n0\n0 0 0 0 0 0 0 0 0 0 \n\
        1--Handshaking/x.jpg\n2\n10 20 30 40 2 1 1 0 1 1\n5 5 0 9 0 0 0 1 2 0\n";

    #[test]
    fn parses_columns_in_the_official_order() {
        let recs = parse_bbx_gt(SAMPLE, Path::new("gt.txt")).unwrap();
        assert_eq!(recs.len(), 3);
        assert!(
            recs[1].faces.is_empty(),
            "the zero line of a 0-face image is not a face"
        );
        let f = recs[2].faces[0];
        assert_eq!(f.bbox, [10.0, 20.0, 30.0, 40.0]);
        assert_eq!(
            (
                f.blur,
                f.expression,
                f.illumination,
                f.invalid,
                f.occlusion,
                f.pose
            ),
            (2, 1, 1, 0, 1, 1)
        );
        let g = recs[2].faces[1];
        assert_eq!((g.invalid, g.occlusion), (1, 2));
        assert!(!g.is_valid());
        assert_eq!(recs[2].event(), "1--Handshaking");
        assert_eq!(recs[0].stem(), "0_Parade_marchingband_1_849");
        assert_eq!(
            parse_bbx_gt(&format_bbx_gt(&recs), Path::new("x")).unwrap(),
            recs
        );
    }

    #[test]
    fn malformed_lines_name_line_and_text() {
        let bad = "a/b.jpg\n1\n1 2 3 4 0 0 0 0 0\n";
        let e = parse_bbx_gt(bad, Path::new("gt.txt"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("gt.txt:3") && e.contains("1 2 3 4 0 0 0 0 0"),
            "{e}"
        );
        let e = parse_bbx_gt("a/b.jpg\nx\n", Path::new("gt.txt"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("gt.txt:2") && e.contains("`x`"), "{e}");
        let e = parse_bbx_gt("a/b.jpg\n2\n1 2 3 4 0 0 0 0 0 0\n", Path::new("gt.txt"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("gt.txt:4") && e.contains("file ends"), "{e}");
        let e = parse_bbx_gt("a/b.jpg\n1\n1 2 3 4 7 0 0 0 0 0\n", Path::new("gt.txt"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("blur"), "{e}");
        for line in ["1e39 2 3 4", "1 2 3 1e39", "-3e38 0 6e38 4", "0 0 2e8 1"] {
            let text = format!("a/b.jpg\n1\n{line} 0 0 0 0 0 0\n");
            let e = parse_bbx_gt(&text, Path::new("gt.txt"))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("gt.txt:3") && e.contains("beyond"),
                "{line}: {e}"
            );
        }
    }
}
