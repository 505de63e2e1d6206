//! Loaders built from the config, as Detectron2's `build_detection_{train,test}_loader`.

use std::sync::Arc;

use super::catalog::{get_dataset, get_datasets, DataError, Dataset, DatasetMetadata};
use super::loader::{DataLoader, LoaderOptions, Shard};
use super::mapper::DatasetMapper;
use super::samplers::SamplerSpec;
use crate::config::Config;

/// The endless, shuffled, augmented stream over `DATASETS.TRAIN` in batches of
/// `SOLVER.IMS_PER_BATCH`. Detection images without any trainable box are dropped first
/// when `DATALOADER.FILTER_EMPTY_ANNOTATIONS` is set.
pub fn build_detection_train_loader(
    cfg: &Config,
    seed: u64,
    start_iter: usize,
) -> Result<(DataLoader, DatasetMetadata), DataError> {
    let mut dataset = get_datasets(&cfg.datasets.train, cfg)?;
    if cfg.dataloader.filter_empty_annotations {
        let before = dataset.records.len();
        // A classification image has a label and no boxes: it is never empty.
        dataset
            .records
            .retain(|r| r.label.is_some() || r.num_trainable() > 0);
        let dropped = before - dataset.records.len();
        if dropped > 0 {
            tracing::info!("removed {dropped} of {before} training images without trainable boxes");
        }
    }
    if cfg.solver.ims_per_batch > dataset.records.len() {
        // Allowed, as in Detectron2 (the sampler cycles), but rarely meant: a batch of
        // 100000 on 2,000 images decodes each image 50 times and runs out of memory.
        tracing::warn!(
            "{} is {}, more than the {} training images: every batch holds some images \
             several times",
            cfg.located("SOLVER.IMS_PER_BATCH"),
            cfg.solver.ims_per_batch,
            dataset.records.len()
        );
    }
    let mapper = DatasetMapper::from_config(cfg, true)?;
    let loader = DataLoader::new(
        Arc::new(dataset.records),
        mapper,
        LoaderOptions {
            batch_size: cfg.solver.ims_per_batch,
            num_workers: cfg.dataloader.num_workers,
            prefetch: cfg.dataloader.prefetch,
            seed,
            train: true,
            start: start_iter * cfg.solver.ims_per_batch,
            sampler: SamplerSpec::from_config(cfg),
            shard: Shard::of_process(),
        },
    )?;
    Ok((loader, dataset.metadata))
}

/// One pass over the test dataset `name`, in order, one image per batch, unaugmented;
/// in a process group, over this rank's shard (every `world`-th image).
pub fn build_detection_test_loader(
    cfg: &Config,
    name: &str,
) -> Result<(DataLoader, Dataset), DataError> {
    let dataset = get_dataset(name, cfg)?;
    let mapper = DatasetMapper::from_config(cfg, false)?;
    let loader = DataLoader::new(
        Arc::new(dataset.records.clone()),
        mapper,
        LoaderOptions {
            batch_size: 1,
            num_workers: cfg.dataloader.num_workers,
            prefetch: cfg.dataloader.prefetch,
            seed: 0,
            train: false,
            start: 0,
            sampler: SamplerSpec::Shuffle,
            shard: Shard::of_process(),
        },
    )?;
    Ok((loader, dataset))
}
