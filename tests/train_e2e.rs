//! The detector end to end on a tiny synthetic set: training lowers the loss, a resumed
//! run continues exactly, evaluation writes its results, a diverging run stops cleanly.

mod common;

use std::path::Path;
use std::process::{Command, Output};

fn train_net(out: &Path, data_root: &Path, extra: &[&str]) -> Output {
    train_net_with(
        "configs/synthetic_faces/ssdlite_mnv2_fpn.yaml",
        out,
        data_root,
        extra,
    )
}

/// `train_net` on a tiny network and dataset (6 + 3 images of 128 px).
fn train_net_command(config: &str, out: &Path, data_root: &Path, extra: &[&str]) -> Command {
    let mut args: Vec<String> = vec!["--config-file".into(), config.into()];
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
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_train_net"));
    cmd.args(&args);
    cmd
}

fn train_net_with(config: &str, out: &Path, data_root: &Path, extra: &[&str]) -> Output {
    train_net_command(config, out, data_root, extra)
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

/// `host_reads` of every training line of `metrics.json`: the reads of tensor values into
/// host memory per step, each a device sync on a GPU. Pinned per model, so that a new read
/// in the step is a deliberate change.
fn host_reads(out: &Path) -> Vec<u64> {
    std::fs::read_to_string(out.join("metrics.json"))
        .unwrap()
        .lines()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.get("host_reads")?.as_u64()
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
    // The step's one read of losses, statistics and gradient norm (the hard-negative
    // mining stays on the device).
    assert_eq!(host_reads(&full), [1; 6]);

    // Interrupted after 3 iterations, then resumed to 6.
    let part = root.join("part");
    ok(&train_net(&part, &data, &["SOLVER.MAX_ITER", "3"]));
    assert!(part.join("last_checkpoint").is_file());
    ok(&train_net(
        &part,
        &data,
        &["SOLVER.MAX_ITER", "6", "--resume"],
    ));
    same_losses(&l_full, &losses(&part));

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
    // The table's columns in the protocol's order, as README and widerface_eval give them.
    assert!(stdout.contains("| easy | medium | hard |"), "{stdout}");

    // Loss falls: without augmentation, a longer run on the same six images fits them.
    let long = root.join("long");
    ok(&train_net(&long, &data, &fit_args("150")));
    loss_fell(&losses(&long));
}

/// Overrides for fitting the six training images: no augmentation, no evaluation.
fn fit_args(iters: &str) -> [&str; 10] {
    [
        "SOLVER.MAX_ITER",
        iters,
        "INPUT.AUGMENTATION",
        "resize_shortest_edge",
        "INPUT.MIN_SIZE_TRAIN",
        "[96]",
        "INPUT.RANDOM_FLIP",
        "none",
        "DATASETS.TEST",
        "[]",
    ]
}

/// The mean of the last four losses is below 0.7 x the mean of the first four.
fn loss_fell(l: &[(u64, f64)]) {
    let first: f64 = l[..4].iter().map(|x| x.1).sum::<f64>() / 4.0;
    let last: f64 = l[l.len() - 4..].iter().map(|x| x.1).sum::<f64>() / 4.0;
    assert!(last < 0.7 * first, "loss did not fall: {first} -> {last}");
}

/// Asserts that two runs logged the same iterations with the same total losses.
fn same_losses(a: &[(u64, f64)], b: &[(u64, f64)]) {
    assert_eq!(a.len(), b.len(), "{a:?} vs {b:?}");
    for (a, b) in a.iter().zip(b) {
        assert_eq!(a.0, b.0);
        assert!(
            (a.1 - b.1).abs() <= 1e-5 * a.1.abs().max(1.0),
            "iteration {}: uninterrupted {} vs resumed {}",
            a.0,
            a.1,
            b.1
        );
    }
}

#[test]
fn faster_rcnn_trains_resumes_exactly_and_evaluates() {
    const CFG: &str = "configs/synthetic_faces/faster_rcnn_mnv2_fpn.yaml";
    let root = common::tmp_dir("e2e-rcnn");
    let data = root.join("data");
    let small = ["MODEL.ROI_BOX_HEAD.FC_DIM", "32"];
    let run = |out: &Path, extra: &[&str]| {
        let mut args = small.to_vec();
        args.extend_from_slice(extra);
        let o = train_net_with(CFG, out, &data, &args);
        ok(&o);
        o
    };
    let full = root.join("full");
    run(&full, &["SOLVER.MAX_ITER", "4"]);
    // The RPN's one read of its objectness and deltas (proposal selection on the host) and
    // the step's one read of losses, statistics and gradient norm.
    assert_eq!(host_reads(&full), [2; 4]);
    let part = root.join("part");
    run(&part, &["SOLVER.MAX_ITER", "2", "DATASETS.TEST", "[]"]);
    run(&part, &["SOLVER.MAX_ITER", "4", "--resume"]);
    same_losses(&losses(&full), &losses(&part));
    let res: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(full.join("eval_results.json")).unwrap())
            .unwrap();
    for k in ["easy", "medium", "hard"] {
        let ap = res[k].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&ap), "{k}: {ap}");
    }
    // Loss falls on the six images without augmentation.
    let long = root.join("long");
    run(&long, &fit_args("100"));
    loss_fell(&losses(&long));
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

#[test]
fn a_multi_class_coco_dataset_trains_and_gets_coco_ap() {
    // A COCO instances file over generated images: faces split into two classes by size,
    // with category ids that are not contiguous (3 and 7), one crowd box.
    let root = common::tmp_dir("e2e-coco");
    let data = root.join("data");
    let synth = root.join("synth");
    // Generate a few images through the synthetic dataset, then describe them as COCO.
    let o = train_net(
        &root.join("gen"),
        &synth,
        &["SOLVER.MAX_ITER", "1", "DATASETS.TEST", "[]"],
    );
    ok(&o);
    let dir = std::fs::read_dir(synth.join("synthetic_faces"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.join("SPEC").is_file())
        .unwrap();
    let gt =
        std::fs::read_to_string(dir.join("wider_face_split/wider_face_train_bbx_gt.txt")).unwrap();
    let recs = candletron::data::datasets::widerface::parse_bbx_gt(&gt, Path::new("gt")).unwrap();
    let img_dir = data.join("coco/val2017");
    std::fs::create_dir_all(&img_dir).unwrap();
    std::fs::create_dir_all(data.join("coco/annotations")).unwrap();
    let mut images = Vec::new();
    let mut anns = Vec::new();
    for (i, r) in recs.iter().enumerate() {
        let src = dir.join("WIDER_train/images").join(&r.file_name);
        let name = format!("{i:03}.jpg");
        std::fs::copy(&src, img_dir.join(&name)).unwrap();
        let (w, h) = image::image_dimensions(&src).unwrap();
        images.push(serde_json::json!({"id": i + 1, "file_name": name, "width": w, "height": h}));
        for (k, f) in r.faces.iter().enumerate() {
            let [x, y, bw, bh] = f.bbox;
            anns.push(serde_json::json!({
                "id": anns.len() + 1, "image_id": i + 1, "bbox": [x, y, bw, bh],
                "category_id": if bh >= 20.0 { 7 } else { 3 }, "area": bw * bh,
                "iscrowd": (i == 0 && k == 0) as u8
            }));
        }
    }
    let json = serde_json::json!({
        "images": images, "annotations": anns,
        "categories": [{"id": 3, "name": "small"}, {"id": 7, "name": "large"}]
    });
    std::fs::write(
        data.join("coco/annotations/instances_val2017.json"),
        json.to_string(),
    )
    .unwrap();

    let out = root.join("out");
    let o = train_net(
        &out,
        &data,
        &[
            "SOLVER.MAX_ITER",
            "4",
            "DATASETS.TRAIN",
            "[coco_2017_val]",
            "DATASETS.TEST",
            "[coco_2017_val]",
            "MODEL.SSDLITE.NUM_CLASSES",
            "2",
        ],
    );
    ok(&o);
    let res: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("eval_results.json")).unwrap())
            .unwrap();
    for k in ["AP", "AP50", "AP75", "APs", "APm", "APl"] {
        assert!(res.get(k).is_some(), "{k} missing in {res}");
    }
}

/// Ctrl-C (SIGINT) mid-run: the step in flight finishes, a checkpoint is written and named,
/// the process exits cleanly, and `--resume` continues from the next iteration.
#[test]
fn ctrl_c_writes_a_checkpoint_that_resumes() {
    let root = common::tmp_dir("e2e_sigint");
    let (data, out) = (root.join("data"), root.join("run"));
    let child = train_net_command(
        "configs/synthetic_faces/ssdlite_mnv2_fpn.yaml",
        &out,
        &data,
        &[
            "SOLVER.MAX_ITER",
            "100000",
            "SOLVER.CHECKPOINT_PERIOD",
            "100000",
        ],
    )
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    // Wait for two logged iterations (the dataset is generated first on a fresh root).
    let started = std::time::Instant::now();
    // Complete lines only: the file is being appended to.
    let logged = || {
        std::fs::read_to_string(out.join("metrics.json"))
            .map(|s| {
                s.lines()
                    .filter(|l| l.contains("total_loss") && l.ends_with('}'))
                    .count()
            })
            .unwrap_or(0)
    };
    while logged() < 2 {
        assert!(
            started.elapsed().as_secs() < 300,
            "train_net logged no iterations in 300 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // SAFETY: sends a signal to our own child process.
    assert_eq!(
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) },
        0
    );
    let o = common::wait_with_deadline(child, 300);
    ok(&o);
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stopped = stdout
        .lines()
        .find_map(|l| l.strip_prefix("stopped at iteration "))
        .unwrap_or_else(|| panic!("no stop message in:\n{stdout}"));
    let iter: u64 = stopped.split(';').next().unwrap().parse().unwrap();
    assert!(iter < 1000, "stopped only at iteration {iter}");
    let last = std::fs::read_to_string(out.join("last_checkpoint")).unwrap();
    assert!(
        last.contains(&format!("model_{iter:07}")),
        "last_checkpoint {last:?} is not iteration {iter}'s"
    );
    // Every iteration up to the stop is logged once; the resumed run takes the next two.
    let before = losses(&out);
    assert_eq!(
        before.iter().map(|x| x.0).collect::<Vec<_>>(),
        (0..=iter).collect::<Vec<_>>()
    );
    let max = (iter + 3).to_string();
    ok(&train_net(
        &out,
        &data,
        &[
            "SOLVER.MAX_ITER",
            max.as_str(),
            "DATASETS.TEST",
            "[]",
            "--resume",
        ],
    ));
    assert_eq!(
        losses(&out).iter().map(|x| x.0).collect::<Vec<_>>(),
        (0..iter + 3).collect::<Vec<_>>()
    );
}

/// Mixed precision through the command line, for both detectors: float16 (loss scaling)
/// resumes exactly, the loss scale coming back from the checkpoint, and neither dtype
/// adds a host read to the step (the overflow check and the skip stay on the device).
#[test]
fn mixed_precision_detectors_train_resume_exactly_and_keep_the_host_reads() {
    let root = common::tmp_dir("e2e-amp");
    let data = root.join("data");
    let f16 = ["SOLVER.AMP.ENABLED", "True", "SOLVER.AMP.DTYPE", "float16"];
    let with = |extra: &[&'static str]| {
        let mut args = f16.to_vec();
        args.extend_from_slice(extra);
        args
    };
    let full = root.join("full");
    ok(&train_net(&full, &data, &with(&["SOLVER.MAX_ITER", "6"])));
    assert_eq!(host_reads(&full), [1; 6]);
    let scales: Vec<f64> = std::fs::read_to_string(full.join("metrics.json"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["loss_scale"].as_f64())
        .collect();
    assert_eq!(scales.len(), 6, "every step records its loss scale");
    let part = root.join("part");
    let first = with(&["SOLVER.MAX_ITER", "3", "DATASETS.TEST", "[]"]);
    ok(&train_net(&part, &data, &first));
    ok(&train_net(
        &part,
        &data,
        &with(&["SOLVER.MAX_ITER", "6", "--resume"]),
    ));
    same_losses(&losses(&full), &losses(&part));

    const RCNN: &str = "configs/synthetic_faces/faster_rcnn_mnv2_fpn.yaml";
    let rcnn = root.join("rcnn");
    let args = [
        "MODEL.ROI_BOX_HEAD.FC_DIM",
        "32",
        "SOLVER.MAX_ITER",
        "3",
        "DATASETS.TEST",
        "[]",
        "SOLVER.AMP.ENABLED",
        "True",
        "SOLVER.AMP.DTYPE",
        "bfloat16",
    ];
    ok(&train_net_with(RCNN, &rcnn, &data, &args));
    assert_eq!(host_reads(&rcnn), [2; 3]);
    assert!(losses(&rcnn).iter().all(|l| l.1.is_finite()));
}
