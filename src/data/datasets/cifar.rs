//! CIFAR-10 in its binary form (`cifar-10-batches-bin/`: `data_batch_1.bin` ..
//! `data_batch_5.bin`, `test_batch.bin`, `batches.meta.txt`): each record is a label byte
//! and a 32x32 image as 1024 red, 1024 green and 1024 blue bytes. Records point into the
//! batch files (no copy, no cache); a file that is not a whole number of records, or a
//! label outside the classes, is an error naming the file and the record.

use std::path::Path;

use super::record::{
    ClassLabel, DataError, Dataset, DatasetMetadata, DatasetRecord, EmbeddedImage, EvaluatorType,
};

pub const SIDE: u32 = 32;
pub const RECORD_BYTES: u64 = 1 + 3 * (SIDE as u64) * (SIDE as u64);

/// The class names when `batches.meta.txt` is absent.
pub const CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// The batch files of a split: `train` (the five data batches) or `test`.
pub fn split_files(split: &str) -> Vec<String> {
    match split {
        "train" => (1..=5).map(|i| format!("data_batch_{i}.bin")).collect(),
        _ => vec!["test_batch.bin".to_string()],
    }
}

/// The class names: `batches.meta.txt`'s non-empty lines, else CIFAR-10's ten.
fn class_names(dir: &Path) -> Result<Vec<String>, DataError> {
    let meta = dir.join("batches.meta.txt");
    let Ok(text) = std::fs::read_to_string(&meta) else {
        return Ok(CLASSES.iter().map(|c| c.to_string()).collect());
    };
    let names: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    if names.is_empty() || names.len() > 256 {
        return Err(DataError::new(format!(
            "{}: expected one class name per line, found {}",
            meta.display(),
            names.len()
        )));
    }
    Ok(names)
}

/// Loads the records of `files` (names under `dir`).
pub fn load_cifar(name: &str, dir: &Path, files: &[String]) -> Result<Dataset, DataError> {
    let classes = class_names(dir)?;
    let mut records = Vec::new();
    for file in files {
        let path = dir.join(file);
        let bytes = std::fs::read(&path).map_err(|e| {
            DataError::new(format!(
                "dataset `{name}`: cannot read {}: {e}",
                path.display()
            ))
        })?;
        let len = bytes.len() as u64;
        if len == 0 || !len.is_multiple_of(RECORD_BYTES) {
            return Err(DataError::new(format!(
                "dataset `{name}`: {} is {len} bytes, not a whole number of {RECORD_BYTES}-byte \
                 records (truncated after record {}?)",
                path.display(),
                len / RECORD_BYTES
            )));
        }
        for (i, record) in bytes.chunks_exact(RECORD_BYTES as usize).enumerate() {
            let label = record[0] as usize;
            if label >= classes.len() {
                return Err(DataError::new(format!(
                    "dataset `{name}`: {} record {i} has label {label}, but there are {} classes",
                    path.display(),
                    classes.len()
                )));
            }
            records.push(DatasetRecord {
                file_name: path.clone(),
                image_id: format!("{file}/{i}"),
                width: SIDE,
                height: SIDE,
                annotations: Vec::new(),
                label: Some(ClassLabel::Single(label)),
                embedded: Some(EmbeddedImage {
                    offset: i as u64 * RECORD_BYTES + 1,
                    width: SIDE,
                    height: SIDE,
                }),
            });
        }
    }
    Ok(Dataset {
        name: name.to_string(),
        records,
        metadata: DatasetMetadata {
            thing_classes: classes,
            evaluator_type: EvaluatorType::Classification,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::mapper::DatasetMapper;

    #[test]
    fn records_point_at_their_pixels_and_truncation_is_an_error() {
        let dir = std::env::temp_dir().join(format!("candletron-cifar-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // Two records: label 3 with red = 10, green = 20, blue = 30 except pixel (1, 0)
        // red 255; label 9 all zero.
        let mut bytes = vec![3u8];
        let mut planes = [vec![10u8; 1024], vec![20u8; 1024], vec![30u8; 1024]];
        planes[0][1] = 255;
        for p in &planes {
            bytes.extend(p);
        }
        bytes.push(9);
        bytes.extend(vec![0u8; 3072]);
        std::fs::write(dir.join("test_batch.bin"), &bytes).unwrap();
        let d = load_cifar("c", &dir, &split_files("test")).unwrap();
        assert_eq!(d.records.len(), 2);
        assert_eq!(d.metadata.thing_classes[3], "cat");
        assert_eq!(d.records[1].label, Some(ClassLabel::Single(9)));
        let img = DatasetMapper::read_image(&d.records[0]).unwrap();
        assert_eq!(img.dimensions(), (32, 32));
        assert_eq!(img.get_pixel(0, 0).0, [10, 20, 30]);
        assert_eq!(img.get_pixel(1, 0).0, [255, 20, 30]);
        // Cut in the second record.
        std::fs::write(dir.join("test_batch.bin"), &bytes[..4000]).unwrap();
        let e = load_cifar("c", &dir, &split_files("test"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("test_batch.bin is 4000 bytes") && e.contains("3073"),
            "{e}"
        );
        bytes[0] = 10;
        std::fs::write(dir.join("test_batch.bin"), &bytes).unwrap();
        let e = load_cifar("c", &dir, &split_files("test"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("record 0 has label 10"), "{e}");
        let e = load_cifar("c", &dir, &split_files("train"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("data_batch_1.bin"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
