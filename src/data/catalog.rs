//! Dataset catalog: names in `DATASETS.TRAIN` / `DATASETS.TEST` mapped to loaders that
//! return records in one common form, as Detectron2's `DatasetCatalog` does.
//!
//! Built-in names resolve paths under `DATASETS.ROOT` (or `CANDLETRON_DATASETS`):
//! - `widerface_{train,val}`: `widerface/WIDER_{split}/images/` and
//!   `widerface/wider_face_split/wider_face_{split}_bbx_gt.txt`;
//! - `synthetic_faces_{train,val}`: generated on first use under `synthetic_faces/`;
//! - `synthetic_shapes_{train,val}`: four shape classes, generated under `synthetic_shapes/`;
//! - `coco_2017_{train,val}`: `coco/{split}2017/` and `coco/annotations/instances_{split}2017.json`;
//! - `folder:PATH`: an image folder (one subfolder per class), PATH absolute or under the root.
//!
//! Other datasets are registered from code with [`register_widerface`] or
//! [`register_coco_instances`] before the model or loader is built.

use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

pub use super::datasets::record::{
    ClassLabel, DataError, Dataset, DatasetMetadata, DatasetRecord, EvaluatorType, ObjectAnnotation,
};
pub use super::datasets::root::dataset_root;

use super::datasets::{cifar, coco, image_folder, synthetic, synthetic_shapes, widerface};
use crate::config::Config;
use crate::utils::registry::Registry;

pub type DatasetBuilder = dyn Fn(&Config) -> Result<Dataset, DataError> + Send + Sync;

static DATASET_CATALOG: LazyLock<Registry<DatasetBuilder>> = LazyLock::new(|| {
    let reg: Registry<DatasetBuilder> = Registry::new("dataset");
    for split in ["train", "test"] {
        reg.register(
            &format!("cifar10_{split}"),
            Arc::new(move |cfg: &Config| {
                let dir = dataset_root(cfg).join("cifar-10-batches-bin");
                cifar::load_cifar(
                    &format!("cifar10_{split}"),
                    &dir,
                    &cifar::split_files(split),
                )
            }),
        );
    }
    for split in ["train", "val"] {
        reg.register(
            &format!("widerface_{split}"),
            Arc::new(move |cfg: &Config| {
                let root = dataset_root(cfg).join("widerface");
                let name = format!("widerface_{split}");
                load_widerface(
                    &name,
                    &root.join(format!("wider_face_split/wider_face_{split}_bbx_gt.txt")),
                    &root.join(format!("WIDER_{split}/images")),
                    cfg,
                )
            }),
        );
        reg.register(
            &format!("synthetic_faces_{split}"),
            Arc::new(move |cfg: &Config| {
                let dir = synthetic::ensure_generated(cfg)?;
                let name = format!("synthetic_faces_{split}");
                load_widerface(
                    &name,
                    &dir.join(format!("wider_face_split/wider_face_{split}_bbx_gt.txt")),
                    &dir.join(format!("WIDER_{split}/images")),
                    cfg,
                )
            }),
        );
        reg.register(
            &format!("synthetic_shapes_{split}"),
            Arc::new(move |cfg: &Config| {
                let dir = synthetic_shapes::ensure_generated(cfg)?;
                image_folder::load_image_folder(
                    &format!("synthetic_shapes_{split}"),
                    &dir.join(split),
                )
            }),
        );
        reg.register(
            &format!("coco_2017_{split}"),
            Arc::new(move |cfg: &Config| {
                let root = dataset_root(cfg).join("coco");
                let name = format!("coco_2017_{split}");
                load_coco(
                    &name,
                    &root.join(format!("annotations/instances_{split}2017.json")),
                    &root.join(format!("{split}2017")),
                )
            }),
        );
    }
    reg
});

fn load_widerface(
    name: &str,
    txt: &Path,
    image_root: &Path,
    cfg: &Config,
) -> Result<Dataset, DataError> {
    let filter = widerface::FaceFilter::from_config(cfg);
    let records = widerface::load_records(txt, image_root, &filter)?;
    Ok(Dataset {
        name: name.to_string(),
        records,
        metadata: DatasetMetadata {
            thing_classes: vec!["face".to_string()],
            evaluator_type: EvaluatorType::WiderFace {
                gt: txt.to_path_buf(),
            },
        },
    })
}

fn load_coco(name: &str, json: &Path, image_root: &Path) -> Result<Dataset, DataError> {
    let (records, thing_classes) = coco::load_coco_json(json, image_root)?;
    Ok(Dataset {
        name: name.to_string(),
        records,
        metadata: DatasetMetadata {
            thing_classes,
            evaluator_type: EvaluatorType::Coco,
        },
    })
}

/// Registers a dataset in the WIDER FACE layout (an annotation text file and its image folder).
pub fn register_widerface(name: &str, txt: PathBuf, image_root: PathBuf) {
    let n = name.to_string();
    DATASET_CATALOG.register(
        name,
        Arc::new(move |cfg: &Config| load_widerface(&n, &txt, &image_root, cfg)),
    );
}

/// Registers a COCO instances JSON file and its image folder, like Detectron2's
/// `register_coco_instances`.
pub fn register_coco_instances(name: &str, json: PathBuf, image_root: PathBuf) {
    let n = name.to_string();
    DATASET_CATALOG.register(
        name,
        Arc::new(move |_: &Config| load_coco(&n, &json, &image_root)),
    );
}

pub fn registered_datasets() -> Vec<String> {
    DATASET_CATALOG.names()
}

/// Loads a registered dataset by name.
pub fn get_dataset(name: &str, cfg: &Config) -> Result<Dataset, DataError> {
    let dataset = if let Some(spec) = name.strip_prefix(image_folder::PREFIX) {
        let (path, part) = image_folder::parse_part(spec);
        let path = Path::new(path);
        let root = if path.is_absolute() {
            path.to_path_buf()
        } else {
            dataset_root(cfg).join(path)
        };
        let whole = image_folder::load_image_folder(name, &root)?;
        match part {
            None => whole,
            Some(p) => {
                let d = &cfg.datasets;
                let (fraction, seed) = (d.folder_val_fraction, d.folder_split_seed as u64);
                image_folder::split(whole, p, fraction, seed)
            }
        }
    } else {
        let builder = DATASET_CATALOG
            .get(name)
            .map_err(|e| DataError::new(e.to_string()))?;
        builder(cfg)?
    };
    if cfg.datasets.multi_label {
        return as_multi_label(dataset);
    }
    Ok(dataset)
}

/// A COCO instances dataset as multi-label classification: each image labelled with the
/// categories of its boxes (crowd regions included: the category is in the picture;
/// an image without boxes is a valid all-negative example), the boxes dropped.
pub fn as_multi_label(mut dataset: Dataset) -> Result<Dataset, DataError> {
    if dataset.metadata.evaluator_type != EvaluatorType::Coco {
        return Err(DataError::new(format!(
            "DATASETS.MULTI_LABEL reads COCO instances datasets, but `{}` is not one",
            dataset.name
        )));
    }
    for r in &mut dataset.records {
        r.label = Some(ClassLabel::Multi(r.box_categories()));
        r.annotations.clear();
    }
    dataset.metadata.evaluator_type = EvaluatorType::MultiLabel;
    Ok(dataset)
}

/// Loads and concatenates several datasets; they must share their classes.
pub fn get_datasets(names: &[String], cfg: &Config) -> Result<Dataset, DataError> {
    let mut out: Option<Dataset> = None;
    for name in names {
        let d = get_dataset(name, cfg)?;
        match &mut out {
            None => out = Some(d),
            Some(o) => {
                if o.metadata.thing_classes != d.metadata.thing_classes {
                    return Err(DataError::new(format!(
                        "datasets `{}` and `{name}` have different classes ({:?} vs {:?})",
                        o.name, o.metadata.thing_classes, d.metadata.thing_classes
                    )));
                }
                o.name = format!("{}+{name}", o.name);
                o.records.extend(d.records);
            }
        }
    }
    out.ok_or_else(|| DataError::new("no dataset given (the list of names is empty)"))
}
