//! torchvision's `ImageFolder`: one subfolder per class, class names (and ids, in sorted
//! order) from the folder names, every image at any depth below a class folder. Used
//! from a config as `folder:PATH` in `DATASETS.TRAIN` / `DATASETS.TEST`, or as
//! `folder:PATH@train` and `folder:PATH@val` for the two parts of one folder.

use std::path::Path;

use super::record::ClassLabel;
use super::record::{DataError, Dataset, DatasetMetadata, DatasetRecord, EvaluatorType};
use crate::utils::fs::image_files;

/// The dataset name prefix that loads an image folder.
pub const PREFIX: &str = "folder:";

/// One side of a seeded train/validation split of an image folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Train,
    Val,
}

/// `PATH@train` / `PATH@val` -> (PATH, part); any other name is the whole folder.
pub fn parse_part(spec: &str) -> (&str, Option<Part>) {
    match spec.rsplit_once('@') {
        Some((path, "train")) => (path, Some(Part::Train)),
        Some((path, "val")) => (path, Some(Part::Val)),
        _ => (spec, None),
    }
}

/// Keeps one part of a split made per class (stratified, as scikit-learn's
/// `train_test_split(stratify=...)`): each class's images are shuffled by `seed` and the
/// first `round(fraction * n)` of them (at most `n - 1`: training keeps one) are the
/// validation part. The same seed and fraction give complementary parts.
pub fn split(mut dataset: Dataset, part: Part, fraction: f64, seed: u64) -> Dataset {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    let classes = dataset.metadata.thing_classes.len();
    let mut keep = vec![false; dataset.records.len()];
    for c in 0..classes {
        let mut idx: Vec<usize> = (0..dataset.records.len())
            .filter(|&i| dataset.records[i].label == Some(ClassLabel::Single(c)))
            .collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ (c as u64).wrapping_mul(0x9E37));
        idx.shuffle(&mut rng);
        let n_val =
            ((fraction * idx.len() as f64).round() as usize).min(idx.len().saturating_sub(1));
        for (k, &i) in idx.iter().enumerate() {
            keep[i] = (k < n_val) == (part == Part::Val);
        }
    }
    let mut k = keep.into_iter();
    dataset.records.retain(|_| k.next().unwrap_or(false));
    dataset
}

/// Loads `root/CLASS/**/*.{jpg,jpeg,png}`. Hidden folders are not classes; a class folder
/// without images is an error (as in torchvision), as is a root without class folders.
/// Unreadable images are found, reported and skipped by the loader that reads them.
pub fn load_image_folder(name: &str, root: &Path) -> Result<Dataset, DataError> {
    let entries = std::fs::read_dir(root).map_err(|e| {
        DataError::new(format!(
            "dataset `{name}`: cannot read the image folder {}: {e}",
            root.display()
        ))
    })?;
    let mut classes: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| !n.starts_with('.'))
        .collect();
    classes.sort();
    if classes.is_empty() {
        return Err(DataError::new(format!(
            "dataset `{name}`: {} has no class folders (one subfolder of images per class)",
            root.display()
        )));
    }
    let mut records = Vec::new();
    for (label, class) in classes.iter().enumerate() {
        let dir = root.join(class);
        let files = image_files(&dir)
            .map_err(|e| DataError::new(format!("dataset `{name}`: {}: {e}", dir.display())))?;
        if files.is_empty() {
            return Err(DataError::new(format!(
                "dataset `{name}`: class folder {} holds no .jpg, .jpeg or .png image",
                dir.display()
            )));
        }
        for f in files {
            let image_id = f
                .strip_prefix(root)
                .unwrap_or(&f)
                .to_string_lossy()
                .replace('\\', "/");
            records.push(DatasetRecord {
                file_name: f,
                image_id,
                width: 0,
                height: 0,
                annotations: Vec::new(),
                label: Some(ClassLabel::Single(label)),
                embedded: None,
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

    #[test]
    fn classes_are_sorted_folders_and_images_are_found_at_any_depth() {
        let root = std::env::temp_dir().join(format!("candletron-folder-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for (dir, file) in [("dog", "a.png"), ("cat/deep", "b.JPG"), ("cat", "c.jpeg")] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
            std::fs::write(root.join(dir).join(file), b"x").unwrap();
        }
        std::fs::create_dir_all(root.join(".cache")).unwrap();
        std::fs::write(root.join("dog/notes.txt"), b"x").unwrap();
        let d = load_image_folder("pets", &root).unwrap();
        assert_eq!(d.metadata.thing_classes, ["cat", "dog"]);
        let got: Vec<(String, Option<usize>)> = d
            .records
            .iter()
            .map(|r| {
                (
                    r.image_id.clone(),
                    r.label.as_ref().and_then(|l| l.single()),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("cat/c.jpeg".to_string(), Some(0)),
                ("cat/deep/b.JPG".to_string(), Some(0)),
                ("dog/a.png".to_string(), Some(1))
            ]
        );
        // A seeded split: complementary parts, per class.
        let (path, part) = parse_part("data/pets@val");
        assert_eq!((path, part), ("data/pets", Some(Part::Val)));
        assert_eq!(parse_part("a@b"), ("a@b", None));
        let mut many = d.clone();
        many.records = (0..20)
            .map(|i| {
                let mut r = d.records[(i % 2) * 2].clone();
                r.image_id = format!("{i}");
                r
            })
            .collect();
        let val = split(many.clone(), Part::Val, 0.3, 5);
        let train = split(many.clone(), Part::Train, 0.3, 5);
        assert_eq!((val.records.len(), train.records.len()), (6, 14));
        let ids = |d: &Dataset| {
            d.records
                .iter()
                .map(|r| r.image_id.clone())
                .collect::<Vec<_>>()
        };
        assert!(ids(&val).iter().all(|i| !ids(&train).contains(i)));
        assert_eq!(ids(&val), ids(&split(many.clone(), Part::Val, 0.3, 5)));
        assert_ne!(ids(&val), ids(&split(many, Part::Val, 0.3, 6)));
        std::fs::create_dir_all(root.join("empty")).unwrap();
        let e = load_image_folder("pets", &root).unwrap_err().to_string();
        assert!(e.contains("empty") && e.contains("holds no"), "{e}");
        let e = load_image_folder("x", &root.join("missing"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot read the image folder"), "{e}");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
