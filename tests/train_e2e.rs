//! The detector end to end on a tiny synthetic set: training lowers the loss, a resumed
//! run continues exactly, evaluation writes its results, a diverging run stops cleanly.

mod common;

use std::path::Path;
use std::process::{Command, Output};

fn train_net(out: &Path, data_root: &Path, extra: &[&str]) -> Output {
    let mut args: Vec<String> = vec![
        "--config-file".into(),
        "configs/synthetic_faces/ssdlite_mnv2_fpn.yaml".into(),
    ];
    let base = [
        "OUTPUT_DIR",
        out.to_str().unwrap(),
        "DATASETS.ROOT",
        data_root.to_str().unwrap(),
        "DATASETS.SYNTHETIC.NUM_TRAIN",
        "6",
        "DATASETS.SYNTHETIC.NUM_VAL",
        "3",
        "DATASETS.SYNTHETIC.IMAGE_SIZE",
        "128",
        "MODEL.WEIGHTS",
        "",
        "MODEL.MOBILENET.NORM",
        "BN",
        "MODEL.MOBILENET.WIDTH_MULT",
        "0.35",
        "MODEL.BACKBONE.FREEZE_AT",
        "0",
        "MODEL.FPN.OUT_CHANNELS",
        "16",
        "INPUT.TRAIN_SIZE",
        "96",
        "SOLVER.IMS_PER_BATCH",
        "2",
        "SOLVER.BASE_LR",
        "0.01",
        "SOLVER.WARMUP_ITERS",
        "0",
        "SOLVER.STEPS",
        "[100]",
        "SOLVER.LOG_PERIOD",
        "1",
        "SOLVER.CHECKPOINT_PERIOD",
        "3",
        "DATALOADER.NUM_WORKERS",
        "1",
        "TEST.VIS_NUM",
        "2",
    ];
    args.extend(base.iter().map(|s| s.to_string()));
    args.extend(extra.iter().map(|s| s.to_string()));
    Command::new(env!("CARGO_BIN_EXE_train_net"))
        .args(&args)
        .output()
        .unwrap()
}

/// (iteration, total_loss) of every training line of `metrics.json`.
fn losses(out: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(out.join("metrics.json"))
        .unwrap()
        .lines()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            Some((v["iteration"].as_u64()?, v.get("total_loss")?.as_f64()?))
        })
        .collect()
}

fn ok(o: &Output) {
    assert!(
        o.status.success(),
        "train_net failed:\n{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn loss_falls_resume_is_exact_and_evaluation_runs() {
    let root = common::tmp_dir("e2e");
    let data = root.join("data");

    // Uninterrupted: 6 iterations.
    let full = root.join("full");
    let o = train_net(&full, &data, &["SOLVER.MAX_ITER", "6"]);
    ok(&o);
    let l_full = losses(&full);
    assert_eq!(
        l_full.iter().map(|x| x.0).collect::<Vec<_>>(),
        (0..6).collect::<Vec<_>>()
    );

    // Interrupted after 3 iterations, then resumed to 6.
    let part = root.join("part");
    ok(&train_net(&part, &data, &["SOLVER.MAX_ITER", "3"]));
    assert!(part.join("last_checkpoint").is_file());
    ok(&train_net(
        &part,
        &data,
        &["SOLVER.MAX_ITER", "6", "--resume"],
    ));
    let l_part = losses(&part);
    assert_eq!(l_part.len(), 6);
    for (a, b) in l_full.iter().zip(&l_part) {
        assert_eq!(a.0, b.0);
        assert!(
            (a.1 - b.1).abs() <= 1e-5 * a.1.abs().max(1.0),
            "iteration {}: uninterrupted {} vs resumed {}",
            a.0,
            a.1,
            b.1
        );
    }

    // Evaluation outputs: the WIDER protocol's three APs, predictions, curves, pictures.
    let res: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(full.join("eval_results.json")).unwrap())
            .unwrap();
    for k in ["easy", "medium", "hard"] {
        let ap = res[k].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&ap), "{k}: {ap}");
    }
    let inf = full.join("inference/synthetic_faces_val");
    assert!(inf.join("pr_curves.png").is_file());
    assert!(inf.join("predictions").is_dir());
    assert_eq!(std::fs::read_dir(inf.join("vis")).unwrap().count(), 2);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("easy"), "{stdout}");

    // Loss falls: without augmentation, a longer run on the same six images fits them.
    let long = root.join("long");
    ok(&train_net(
        &long,
        &data,
        &[
            "SOLVER.MAX_ITER",
            "150",
            "INPUT.AUGMENTATION",
            "resize_shortest_edge",
            "INPUT.MIN_SIZE_TRAIN",
            "[96]",
            "INPUT.RANDOM_FLIP",
            "none",
            "DATASETS.TEST",
            "[]",
        ],
    ));
    let l = losses(&long);
    let first: f64 = l[..4].iter().map(|x| x.1).sum::<f64>() / 4.0;
    let last: f64 = l[l.len() - 4..].iter().map(|x| x.1).sum::<f64>() / 4.0;
    assert!(last < 0.7 * first, "loss did not fall: {first} -> {last}");
}

#[test]
fn a_diverging_run_stops_naming_the_iteration_and_loss() {
    let root = common::tmp_dir("e2e-nan");
    let out = root.join("out");
    let o = train_net(
        &out,
        &root.join("data"),
        &[
            "SOLVER.MAX_ITER",
            "30",
            "SOLVER.BASE_LR",
            "1e8",
            "DATASETS.TEST",
            "[]",
        ],
    );
    assert!(!o.status.success(), "a learning rate of 1e8 should diverge");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("iteration") && err.contains("loss `"), "{err}");
    assert!(err.contains("last good checkpoint"), "{err}");
}
