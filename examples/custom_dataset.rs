//! Train on your own data: register a COCO-format dataset (an instances JSON and its
//! image folder) under a name, point `DATASETS.TRAIN`/`TEST` at it, and train with the
//! library's `DefaultTrainer`.
//!
//! ```sh
//! cargo run --release --example custom_dataset -- instances.json images/ [KEY VALUE ...]
//! ```

use std::path::PathBuf;

use anyhow::{bail, Result};
use candletron::config::Config;
use candletron::data::catalog::register_coco_instances;
use candletron::engine::{DefaultTrainer, TrainOutcome};

fn main() -> Result<()> {
    candletron::utils::logging::init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [json, images, overrides @ ..] = args.as_slice() else {
        bail!("usage: custom_dataset INSTANCES.json IMAGE_DIR [KEY VALUE ...]");
    };
    // The dataset is known by this name to every config from here on.
    register_coco_instances("my_dataset", PathBuf::from(json), PathBuf::from(images));

    let mut cfg = Config::from_file("configs/synthetic_faces/ssdlite_mnv2_fpn.yaml")?;
    cfg.merge_from_list(&[
        "DATASETS.TRAIN",
        "[my_dataset]",
        "DATASETS.TEST",
        "[my_dataset]",
        "SOLVER.MAX_ITER",
        "20",
        "OUTPUT_DIR",
        "output/my_dataset",
    ])?;
    // Class count, schedule and the rest as `KEY VALUE` pairs, e.g. MODEL.SSDLITE.NUM_CLASSES 3.
    cfg.merge_from_list(overrides)?;

    // The example's folder is scratch: each run replaces the previous one's results
    // (without `with_overwrite`, a second run would refuse to touch them).
    let mut trainer = DefaultTrainer::from_config(&cfg)?
        .with_overwrite(true)
        .resume_or_load(false)?;
    match trainer.train()? {
        TrainOutcome::Finished(metrics) => println!("{metrics:?}"),
        TrainOutcome::Interrupted { checkpoint, .. } => {
            println!("interrupted; resume from {}", checkpoint.display())
        }
    }
    Ok(())
}
