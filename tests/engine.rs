//! `DefaultTrainer` checks what it can before it writes or trains anything.

mod common;

use candletron::config::Config;
use candletron::engine::DefaultTrainer;

#[test]
fn an_unknown_dataset_is_reported_before_anything_runs() {
    let dir = common::tmp_dir("engine-unknown-dataset");
    let out = dir.join("out");
    for key in ["DATASETS.TEST", "DATASETS.TRAIN"] {
        let mut cfg = Config::from_file("configs/synthetic_faces/ssdlite_mnv2_fpn.yaml").unwrap();
        cfg.merge_from_list(&[
            key,
            "[synthetic_faces_vall]",
            "OUTPUT_DIR",
            out.to_str().unwrap(),
            "MODEL.WEIGHTS",
            "",
        ])
        .unwrap();
        let e = DefaultTrainer::from_config(&cfg).err().unwrap().to_string();
        assert!(e.contains(key) && e.contains("synthetic_faces_vall"), "{e}");
        assert!(
            e.contains("synthetic_faces_val,"),
            "lists the registered names: {e}"
        );
        assert!(
            !out.exists(),
            "nothing is written for a config that cannot run"
        );
    }
}
