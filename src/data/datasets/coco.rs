//! COCO instances JSON (boxes only) for general multi-class detection.
//!
//! Category ids are mapped to contiguous indices in increasing id order, as Detectron2's
//! `load_coco_json` does, so COCO's 80 ids in 1..=90 become 0..80. Crowd annotations and
//! degenerate boxes are kept as ignored.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::record::{DataError, DatasetRecord, ObjectAnnotation};
use crate::data::image_io::{xywh_within_range, MAX_BOX_COORDINATE};

#[derive(Deserialize)]
struct CocoFile {
    images: Vec<CocoImage>,
    #[serde(default)]
    annotations: Vec<CocoAnnotation>,
    categories: Vec<CocoCategory>,
}

#[derive(Deserialize)]
struct CocoImage {
    id: u64,
    file_name: String,
    width: u32,
    height: u32,
}

#[derive(Deserialize)]
struct CocoAnnotation {
    #[serde(default)]
    id: u64,
    image_id: u64,
    bbox: [f64; 4],
    category_id: u64,
    #[serde(default)]
    iscrowd: u8,
}

#[derive(Deserialize)]
struct CocoCategory {
    id: u64,
    name: String,
}

/// Records (in the file's image order) and class names (in contiguous index order).
pub fn load_coco_json(
    json: &Path,
    image_root: &Path,
) -> Result<(Vec<DatasetRecord>, Vec<String>), DataError> {
    let text = std::fs::read_to_string(json).map_err(|e| {
        DataError::new(format!(
            "cannot read COCO annotation file {}: {e}",
            json.display()
        ))
    })?;
    parse_coco_json(&text, json, image_root)
}

pub fn parse_coco_json(
    text: &str,
    source: &Path,
    image_root: &Path,
) -> Result<(Vec<DatasetRecord>, Vec<String>), DataError> {
    let err = |m: String| DataError::new(format!("{}: {m}", source.display()));
    let file: CocoFile = serde_json::from_str(text).map_err(|e| {
        err(format!(
            "not a COCO instances file (line {}, column {}): {e}",
            e.line(),
            e.column()
        ))
    })?;
    let mut cats: BTreeMap<u64, String> = BTreeMap::new();
    for c in &file.categories {
        if cats.insert(c.id, c.name.clone()).is_some() {
            return Err(err(format!("category id {} appears twice", c.id)));
        }
    }
    let contiguous: HashMap<u64, usize> = cats.keys().enumerate().map(|(i, &id)| (id, i)).collect();
    let mut index: HashMap<u64, usize> = HashMap::new();
    let mut records: Vec<DatasetRecord> = Vec::with_capacity(file.images.len());
    for im in &file.images {
        if index.insert(im.id, records.len()).is_some() {
            return Err(err(format!("image id {} appears twice", im.id)));
        }
        records.push(DatasetRecord {
            file_name: PathBuf::from(image_root).join(&im.file_name),
            image_id: im.id.to_string(),
            width: im.width,
            height: im.height,
            annotations: Vec::new(),
            label: None,
            embedded: None,
        });
    }
    for a in &file.annotations {
        let &r = index.get(&a.image_id).ok_or_else(|| {
            err(format!(
                "annotation {} refers to image id {}, which is not in `images`",
                a.id, a.image_id
            ))
        })?;
        let &category_id = contiguous.get(&a.category_id).ok_or_else(|| {
            err(format!(
                "annotation {} has category_id {}, which is not in `categories`",
                a.id, a.category_id
            ))
        })?;
        let [x, y, w, h] = a.bbox;
        if !xywh_within_range(a.bbox) {
            return Err(err(format!(
                "annotation {} has a bbox {:?} beyond ±{MAX_BOX_COORDINATE} pixels",
                a.id, a.bbox
            )));
        }
        records[r].annotations.push(ObjectAnnotation {
            bbox: [x as f32, y as f32, (x + w) as f32, (y + h) as f32],
            category_id,
            ignore: a.iscrowd != 0 || w <= 0.0 || h <= 0.0,
            attributes: Vec::new(),
        });
    }
    Ok((records, cats.into_values().collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"{
      "images": [{"id": 7, "file_name": "a.jpg", "width": 100, "height": 80},
                 {"id": 3, "file_name": "b.jpg", "width": 50, "height": 50}],
      "annotations": [
        {"id": 1, "image_id": 7, "bbox": [10, 20, 30, 40], "category_id": 18, "iscrowd": 0},
        {"id": 2, "image_id": 7, "bbox": [0, 0, 100, 80], "category_id": 1, "iscrowd": 1},
        {"id": 3, "image_id": 3, "bbox": [5, 5, 0, 10], "category_id": 90}
      ],
      "categories": [{"id": 90, "name": "toothbrush"}, {"id": 1, "name": "person"},
                     {"id": 18, "name": "dog"}]
    }"#;

    #[test]
    fn maps_categories_and_marks_crowd_ignored() {
        let (recs, classes) =
            parse_coco_json(SAMPLE, Path::new("x.json"), Path::new("img")).unwrap();
        assert_eq!(classes, ["person", "dog", "toothbrush"]);
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0].file_name, Path::new("img/a.jpg"));
        assert_eq!((recs[0].width, recs[0].height), (100, 80));
        let a = &recs[0].annotations;
        assert_eq!(a[0].bbox, [10.0, 20.0, 40.0, 60.0]);
        assert_eq!(a[0].category_id, 1);
        assert!(!a[0].ignore);
        assert!(a[1].ignore, "crowd");
        assert_eq!(recs[1].annotations[0].category_id, 2);
        assert!(recs[1].annotations[0].ignore, "zero width");
    }

    #[test]
    fn bad_files_name_the_problem() {
        let e = parse_coco_json("{\"images\": [", Path::new("x.json"), Path::new(""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("x.json") && e.contains("line 1"), "{e}");
        let bad = SAMPLE.replace("\"category_id\": 90", "\"category_id\": 91");
        let e = parse_coco_json(&bad, Path::new("x.json"), Path::new(""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("annotation 3") && e.contains("91"), "{e}");
        for bbox in [
            "[1e39, 0, 5, 5]",
            "[-3e38, 0, 6e38, 0]",
            "[0, 1e308, 1, 1e308]",
            "[0, 0, 2e8, 1]",
        ] {
            let bad = SAMPLE.replace("[5, 5, 0, 10]", bbox);
            let e = parse_coco_json(&bad, Path::new("x.json"), Path::new(""))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("annotation 3") && e.contains("beyond"),
                "{bbox}: {e}"
            );
        }
    }
}
