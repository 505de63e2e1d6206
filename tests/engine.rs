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

#[test]
fn an_empty_training_set_is_reported_before_anything_is_written() {
    let dir = common::tmp_dir("engine-empty-train");
    let out = dir.join("out");
    let f = dir.join("empty.yaml");
    std::fs::write(
        &f,
        format!("DATASETS:\n  TRAIN: []\nOUTPUT_DIR: {}\n", out.display()),
    )
    .unwrap();
    let mut cfg = Config::from_file(&f).unwrap();
    cfg.merge_from_list(&["MODEL.WEIGHTS", ""]).unwrap();
    // Evaluation alone needs no training set.
    let mut trainer = DefaultTrainer::from_config(&cfg).unwrap();
    let e = trainer.train().err().unwrap().to_string();
    assert!(
        e.contains(&format!("{}:2: DATASETS.TRAIN is empty", f.display())),
        "{e}"
    );
    assert!(
        !out.exists(),
        "nothing is written for a run that cannot train"
    );

    // An OUTPUT_DIR that is a file is named as one, and left alone.
    std::fs::write(&out, b"notes").unwrap();
    let mut cfg = Config::from_file("configs/synthetic_faces/ssdlite_mnv2_fpn.yaml").unwrap();
    cfg.merge_from_list(&["OUTPUT_DIR", out.to_str().unwrap(), "MODEL.WEIGHTS", ""])
        .unwrap();
    let e = DefaultTrainer::from_config(&cfg)
        .unwrap()
        .train()
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("is a file, not a folder"), "{e}");
    assert_eq!(std::fs::read(&out).unwrap(), b"notes");
}

/// A registry name is checked before the run writes anything, and the error points at the
/// line that set it and at the closest registered name.
#[test]
fn an_unknown_registry_name_points_at_its_line_and_the_closest_name() {
    let dir = common::tmp_dir("engine-unknown-arch");
    let out = dir.join("out");
    let f = dir.join("bad.yaml");
    std::fs::write(
        &f,
        format!(
            "_BASE_: {}\nMODEL:\n  META_ARCHITECTURE: SSDLte\nOUTPUT_DIR: {}\n",
            std::fs::canonicalize("configs/synthetic_faces/ssdlite_mnv2_fpn.yaml")
                .unwrap()
                .display(),
            out.display()
        ),
    )
    .unwrap();
    let cfg = Config::from_file(&f).unwrap();
    assert_eq!(
        cfg.located("MODEL.META_ARCHITECTURE"),
        format!("{}:3: MODEL.META_ARCHITECTURE", f.display())
    );
    let e = DefaultTrainer::from_config(&cfg).err().unwrap().to_string();
    assert!(
        e.contains(&format!("{}:3: MODEL.META_ARCHITECTURE", f.display())),
        "{e}"
    );
    assert!(
        e.contains("`SSDLte`") && e.contains("did you mean `SSDLite`?"),
        "{e}"
    );
    assert!(
        !out.exists(),
        "nothing is written for a config that cannot run"
    );
    // The same through build_model, and for an override.
    let mut cfg = Config::default();
    cfg.merge_from_list(&["MODEL.BACKBONE.NAME", "build_mobilenet_v3_backbone"])
        .unwrap();
    let e = candletron::modeling::build_model(&cfg, 0)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains(
            "command line (MODEL.BACKBONE.NAME build_mobilenet_v3_backbone): MODEL.BACKBONE.NAME"
        ),
        "{e}"
    );
    assert!(
        e.contains("did you mean `build_mobilenet_v2_backbone`?"),
        "{e}"
    );
}
