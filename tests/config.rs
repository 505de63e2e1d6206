//! Config files: `_BASE_` inheritance, overrides, and errors that name the file, line and key.

mod common;

use std::fs;

use candletron::config::Choice;
use candletron::config::Config;

fn write(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(&p, text).unwrap();
    p
}

#[test]
fn base_chain_deep_merges_relative_to_the_file() {
    let dir = common::tmp_dir("cfg-base");
    write(&dir, "Base.yaml", "MODEL:\n  MOBILENET:\n    WIDTH_MULT: 0.5\n    NORM: FrozenBN\nSOLVER:\n  BASE_LR: 0.1\n  STEPS: [10, 20]\n");
    write(
        &dir,
        "sub/Mid.yaml",
        "_BASE_: ../Base.yaml\nMODEL:\n  MOBILENET:\n    WIDTH_MULT: 0.75\n",
    );
    let leaf = write(
        &dir,
        "sub/deeper/leaf.yaml",
        "_BASE_: \"../Mid.yaml\"\nSOLVER:\n  STEPS: [5]\nSEED: 3\n",
    );
    let cfg = Config::from_file(&leaf).unwrap();
    assert_eq!(cfg.model.mobilenet.width_mult, 0.75);
    assert_eq!(cfg.model.mobilenet.norm.name(), "FrozenBN");
    assert_eq!(
        cfg.model.mobilenet.activation.name(),
        "ReLU6",
        "untouched keys keep defaults"
    );
    assert_eq!(cfg.solver.base_lr, 0.1);
    assert_eq!(cfg.solver.steps, vec![5]);
    assert_eq!(cfg.seed, 3);

    // Overrides come last and are typed by the key.
    let mut cfg = cfg;
    cfg.merge_from_list(&[
        "SOLVER.STEPS",
        "[1,2,3]",
        "MODEL.MOBILENET.OUT_FEATURES",
        "[res4,res5]",
        "SOLVER.BASE_LR",
        "2",
    ])
    .unwrap();
    assert_eq!(cfg.solver.steps, vec![1, 2, 3]);
    assert_eq!(cfg.solver.base_lr, 2.0);

    // The saved config loads back to the same config.
    let saved = dir.join("out/config.yaml");
    cfg.save(&saved).unwrap();
    assert_eq!(Config::from_file(&saved).unwrap(), cfg);
}

#[test]
fn unknown_key_names_path_line_and_suggestion() {
    let dir = common::tmp_dir("cfg-unknown");
    let f = write(
        &dir,
        "a.yaml",
        "MODEL:\n  BACKBONE:\n    NAME: build_mobilenet_v2_backbone\n    FREZE_AT: 2\n",
    );
    let err = Config::from_file(&f).unwrap_err().to_string();
    assert!(err.contains("a.yaml:4"), "{err}");
    assert!(
        err.contains("unknown config key MODEL.BACKBONE.FREZE_AT"),
        "{err}"
    );
    assert!(
        err.contains("did you mean MODEL.BACKBONE.FREEZE_AT?"),
        "{err}"
    );

    let mut cfg = Config::default();
    let err = cfg
        .merge_from_list(&["MODEL.BACKBONE.WIDTH_MULT", "0.5"])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("command line") && err.contains("did you mean MODEL.MOBILENET.WIDTH_MULT?"),
        "{err}"
    );
    let err = cfg
        .merge_from_list(&["model.device", "cpu"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown config key model"), "{err}");
}

#[test]
fn wrong_type_names_file_line_and_expected_type() {
    let dir = common::tmp_dir("cfg-type");
    let f = write(
        &dir,
        "t.yaml",
        "SOLVER:\n  BASE_LR: 0.1\n  MAX_ITER: lots\n",
    );
    let err = Config::from_file(&f).unwrap_err().to_string();
    assert!(
        err.contains("t.yaml:3")
            && err.contains("SOLVER.MAX_ITER expects a non-negative integer, found `lots`"),
        "{err}"
    );
    let f = write(
        &dir,
        "u.yaml",
        "MODEL:\n  MOBILENET:\n    OUT_FEATURES: res5\n",
    );
    let err = Config::from_file(&f).unwrap_err().to_string();
    assert!(
        err.contains("u.yaml:3") && err.contains("expects a list of string"),
        "{err}"
    );
    let f = write(&dir, "v.yaml", "MODEL: 3\n");
    let err = Config::from_file(&f).unwrap_err().to_string();
    assert!(
        err.contains("v.yaml:1") && err.contains("MODEL expects a mapping"),
        "{err}"
    );
    let f = write(&dir, "w.yaml", "MODEL:\n  DEVICE: [cpu\n");
    let err = Config::from_file(&f).unwrap_err().to_string();
    assert!(
        err.contains("w.yaml") && err.contains("invalid YAML"),
        "{err}"
    );
}

#[test]
fn base_errors_missing_and_cycles() {
    let dir = common::tmp_dir("cfg-cycle");
    let f = write(&dir, "m.yaml", "_BASE_: nowhere/Base.yaml\n");
    let err = Config::from_file(&f).unwrap_err().to_string();
    assert!(
        err.contains("nowhere/Base.yaml")
            && err.contains("does not exist")
            && err.contains("m.yaml:1"),
        "{err}"
    );
    write(&dir, "a.yaml", "_BASE_: b.yaml\n");
    write(&dir, "b.yaml", "_BASE_: c.yaml\n");
    let c = write(&dir, "c.yaml", "_BASE_: a.yaml\n");
    let err = Config::from_file(&c).unwrap_err().to_string();
    assert!(
        err.contains("_BASE_ cycle") && err.contains("a.yaml -> ") && err.contains("c.yaml"),
        "{err}"
    );
    let err = Config::from_file(dir.join("absent.yaml"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("absent.yaml"), "{err}");
}

#[test]
fn shipped_configs_load() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let mut n = 0;
    let mut stack = vec![root];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "yaml") {
                Config::from_file(&p).unwrap_or_else(|e| panic!("{e}"));
                n += 1;
            }
        }
    }
    assert!(n > 0);
}

#[test]
fn every_shipped_config_loads_and_builds_its_model() {
    let mut files = Vec::new();
    let mut dirs = vec![std::path::PathBuf::from("configs")];
    while let Some(d) = dirs.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "yaml") {
                files.push(p);
            }
        }
    }
    assert!(files.len() >= 9, "{files:?}");
    for f in files {
        let mut cfg = Config::default();
        cfg.merge_from_file(&f)
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        if f.file_name().unwrap() == "data.yaml" {
            continue;
        }
        // Built on CPU without the shared weights: the architecture is what is checked.
        cfg.model.device = "cpu".into();
        cfg.model.weights = String::new();
        if let Err(e) = candletron::modeling::build_model(&cfg, 0) {
            panic!("{}: {e}", f.display());
        }
    }
}

#[test]
fn enumerated_values_are_typed_at_load_with_the_closest_valid_value() {
    use candletron::config::{OptimizerName, TopBlock};
    use candletron::layers::NormKind;
    let dir = common::tmp_dir("cfg-choice");
    let f = write(&dir, "c.yaml", "MODEL:\n  MOBILENET:\n    NORM: bn\n");
    let err = Config::from_file(&f).unwrap_err().to_string();
    assert!(err.contains("c.yaml:3"), "{err}");
    assert!(
        err.contains("MODEL.MOBILENET.NORM") && err.contains("`bn`"),
        "{err}"
    );
    assert!(err.contains("\"BN\", \"FrozenBN\""), "{err}");
    assert!(err.contains("did you mean \"BN\"?"), "{err}");

    let mut cfg = Config::default();
    let err = cfg
        .merge_from_list(&["SOLVER.OPTIMIZER", "adamw"])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("SOLVER.OPTIMIZER") && err.contains("did you mean \"AdamW\"?"),
        "{err}"
    );
    let err = cfg
        .merge_from_list(&["MODEL.FPN.TOP_BLOCK", "P7"])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("\"none\", \"LastLevelMaxPool\", \"P6P7\""),
        "{err}"
    );
    // BGR was accepted and ignored; images are RGB, the only value now.
    assert!(cfg.merge_from_list(&["INPUT.FORMAT", "BGR"]).is_err());

    // Aliases map to the value; an empty norm is no norm; the saved config reads back.
    cfg.merge_from_list(&[
        "SOLVER.OPTIMIZER",
        "AdamW",
        "MODEL.FPN.TOP_BLOCK",
        "LastLevelP6P7",
        "MODEL.SSDLITE.NORM",
        "",
        "MODEL.FPN.NORM",
        "FrozenBN",
    ])
    .unwrap();
    assert_eq!(cfg.solver.optimizer, OptimizerName::AdamW);
    assert_eq!(cfg.model.fpn.top_block, TopBlock::P6P7);
    assert_eq!(cfg.model.ssdlite.norm, None);
    assert_eq!(cfg.model.fpn.norm, Some(NormKind::FrozenBN));
    let saved = dir.join("saved.yaml");
    cfg.save(&saved).unwrap();
    let text = fs::read_to_string(&saved).unwrap();
    assert!(text.contains("TOP_BLOCK: \"P6P7\""), "{text}");
    assert_eq!(Config::from_file(&saved).unwrap(), cfg);
}
