//! Data-parallel training under MPI (`--features mpi`; CI installs OpenMPI): `mpirun -np 2`
//! with a global batch of 8 trains exactly as one process with batch 8 (SSDLite and
//! Faster R-CNN), SyncBN on two ranks equals BN in one process, checkpoints move between
//! world sizes, and a dead or hanging rank ends the run with a clear message.
#![cfg(feature = "mpi")]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const SSDLITE: &str = "configs/synthetic_faces/ssdlite_mnv2_fpn.yaml";
const RCNN: &str = "configs/synthetic_faces/faster_rcnn_mnv2_fpn.yaml";

/// A tiny run: 8 images of 96 px in a global batch of 8, a narrow random network whose
/// norms have no batch statistics unless `extra` asks for them.
fn args(config: &str, out: &Path, data: &Path, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = vec!["--config-file".into(), config.into()];
    a.extend(
        [
            "OUTPUT_DIR",
            out.to_str().unwrap(),
            "DATASETS.ROOT",
            data.to_str().unwrap(),
            "DATASETS.SYNTHETIC.NUM_TRAIN",
            "8",
            "DATASETS.SYNTHETIC.NUM_VAL",
            "3",
            "DATASETS.SYNTHETIC.IMAGE_SIZE",
            "128",
            "MODEL.WEIGHTS",
            "",
            "MODEL.MOBILENET.NORM",
            "FrozenBN",
            "MODEL.MOBILENET.WIDTH_MULT",
            "0.35",
            "MODEL.BACKBONE.FREEZE_AT",
            "0",
            "MODEL.FPN.OUT_CHANNELS",
            "16",
            "INPUT.TRAIN_SIZE",
            "96",
            "SOLVER.IMS_PER_BATCH",
            "8",
            "SOLVER.BASE_LR",
            "0.01",
            "SOLVER.WARMUP_ITERS",
            "0",
            "SOLVER.MAX_ITER",
            "4",
            "SOLVER.LOG_PERIOD",
            "1",
            "DATALOADER.NUM_WORKERS",
            "1",
            "TEST.VIS_NUM",
            "1",
        ]
        .map(String::from),
    );
    if config == SSDLITE {
        a.extend(
            [
                "MODEL.FPN.NORM",
                "FrozenBN",
                "MODEL.SSDLITE.NORM",
                "FrozenBN",
            ]
            .map(String::from),
        );
    } else {
        a.extend(["MODEL.ROI_BOX_HEAD.FC_DIM", "32"].map(String::from));
    }
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn one_process(args: &[String]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_train_net"));
    c.args(args).env("RAYON_NUM_THREADS", "1");
    c
}

/// `mpirun -np N train_net ARGS` (OpenMPI; as root in CI containers, two ranks on
/// however many cores).
fn mpirun(np: usize, args: &[String]) -> Command {
    let mut c = Command::new("mpirun");
    c.args([
        "--allow-run-as-root",
        "--oversubscribe",
        "-np",
        &np.to_string(),
    ])
    .args(["-x", "RAYON_NUM_THREADS=1"])
    .arg(env!("CARGO_BIN_EXE_train_net"))
    .args(args)
    .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none");
    c
}

/// The longest one launch may take. The slowest (two ranks of Faster R-CNN sharing two
/// cores with the other tests' ranks) takes about a minute; past this the test fails with
/// what the processes printed, instead of holding CI until its own limit.
const LAUNCH_LIMIT: Duration = Duration::from_secs(600);

/// A launched `train_net` (alone or under `mpirun`). Its processes are told apart from
/// those of the tests running beside it by their OUTPUT_DIR; dropped unfinished (a failed
/// assertion), it kills them, so that no rank outlives its test.
struct Launch {
    run: Option<common::Captured>,
    output_dir: String,
}

fn launch(mut c: Command) -> Launch {
    let output_dir = c
        .get_args()
        .collect::<Vec<_>>()
        .windows(2)
        .find(|w| w[0] == "OUTPUT_DIR")
        .map(|w| w[1].to_string_lossy().into_owned())
        .expect("every launch names its OUTPUT_DIR");
    let child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    Launch {
        run: Some(common::Captured::new(child)),
        output_dir,
    }
}

impl Launch {
    /// The pid of this launch's `train_net` with OMPI_COMM_WORLD_RANK=`rank`.
    fn rank_pid(&self, rank: usize) -> Option<i32> {
        let want = format!("OMPI_COMM_WORLD_RANK={rank}");
        processes_of(&self.output_dir).into_iter().find(|&pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .map(|env| env.split(|&b| b == 0).any(|kv| kv == want.as_bytes()))
                .unwrap_or(false)
        })
    }

    fn pid(&self) -> i32 {
        self.run.as_ref().unwrap().child.id() as i32
    }

    /// Waits for the end (at most LAUNCH_LIMIT) and returns what was printed.
    fn wait(mut self) -> Output {
        let dir = self.output_dir.clone();
        self.run
            .take()
            .unwrap()
            .wait(LAUNCH_LIMIT.as_secs(), |child| kill_all(&dir, child))
    }
}

/// The `train_net` processes (mpirun's and the ranks) that write to `output_dir`.
fn processes_of(output_dir: &str) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            let mut args = cmd.split(|&b| b == 0);
            let is_ours = String::from_utf8_lossy(&cmd).contains("train_net")
                && args.any(|a| a == output_dir.as_bytes());
            is_ours.then_some(pid)
        })
        .collect()
}

fn kill_all(output_dir: &str, child: &mut Child) {
    for pid in processes_of(output_dir) {
        // SAFETY: a signal to a process this test started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let _ = child.kill();
}

impl Drop for Launch {
    fn drop(&mut self) {
        if let Some(mut run) = self.run.take() {
            kill_all(&self.output_dir, &mut run.child);
            let _ = run.child.wait();
        }
    }
}

/// Runs `c` to its end and asserts that it succeeded.
fn run(c: Command) -> Output {
    let description = format!("{c:?}");
    let o = launch(c).wait();
    assert!(
        o.status.success(),
        "{description} failed:\n{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// (iteration -> every loss term and the total) of `metrics.json`.
fn losses(out: &Path) -> BTreeMap<u64, BTreeMap<String, f64>> {
    std::fs::read_to_string(out.join("metrics.json"))
        .unwrap()
        .lines()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.get("total_loss")?;
            let terms = v
                .as_object()?
                .iter()
                .filter(|(k, _)| k.starts_with("loss") || *k == "total_loss")
                .map(|(k, x)| (k.clone(), x.as_f64().unwrap()))
                .collect();
            Some((v["iteration"].as_u64()?, terms))
        })
        .collect()
}

fn weights(out: &Path) -> BTreeMap<String, Vec<f64>> {
    let path = out.join("model_final.safetensors");
    candle_core::safetensors::load(&path, &candle_core::Device::Cpu)
        .unwrap()
        .into_iter()
        .filter(|(k, _)| !k.starts_with("optimizer."))
        .map(|(k, t)| (k, common::flat_f64(&t)))
        .collect()
}

/// Same iterations and loss terms within `loss_tol` relative; each final weight tensor
/// within `weight_tol` of max(its largest value, 0.1): zero-initialised biases that moved
/// by 1e-4 carry the rounding of a different summation order (per-rank partial sums) at
/// 1e-7, which a purely relative bound would call a difference.
fn same_run(a: &Path, b: &Path, loss_tol: f64, weight_tol: f64) {
    let (la, lb) = (losses(a), losses(b));
    assert_eq!(la.keys().collect::<Vec<_>>(), lb.keys().collect::<Vec<_>>());
    for (it, terms) in &la {
        assert_eq!(
            terms.keys().collect::<Vec<_>>(),
            lb[it].keys().collect::<Vec<_>>()
        );
        for (k, v) in terms {
            let w = lb[it][k];
            assert!(
                (v - w).abs() <= loss_tol * v.abs().max(1e-3),
                "iteration {it}: {k} {v} vs {w}"
            );
        }
    }
    let (wa, wb) = (weights(a), weights(b));
    assert_eq!(wa.keys().collect::<Vec<_>>(), wb.keys().collect::<Vec<_>>());
    let mut worst = (0f64, String::new());
    for (k, x) in &wa {
        let y = &wb[k];
        let scale = x.iter().fold(0.1f64, |m, v| m.max(v.abs()));
        let d = x.iter().zip(y).fold(0f64, |m, (p, q)| m.max((p - q).abs())) / scale;
        if d > worst.0 {
            worst = (d, k.clone());
        }
    }
    assert!(
        worst.0 <= weight_tol,
        "weights differ by {} in {}",
        worst.0,
        worst.1
    );
}

fn eval_results(out: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(out.join("eval_results.json")).unwrap()).unwrap()
}

/// Waits (at most 300 s) until a running job has written two complete `metrics.json`
/// records.
fn wait_for_two_records(out: &Path) {
    let started = Instant::now();
    let complete = || {
        std::fs::read_to_string(out.join("metrics.json"))
            .map(|s| s.lines().filter(|l| l.ends_with('}')).count())
            .unwrap_or(0)
    };
    while complete() < 2 {
        assert!(started.elapsed().as_secs() < 300, "no iterations in 300 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn two_ranks_train_as_one_process_with_the_global_batch() {
    let root = common::tmp_dir("dist-equal");
    let data = root.join("data");
    for (name, config) in [("ssdlite", SSDLITE), ("rcnn", RCNN)] {
        let single = root.join(format!("{name}-1"));
        let double = root.join(format!("{name}-2"));
        run(one_process(&args(config, &single, &data, &[])));
        let o = run(mpirun(2, &args(config, &double, &data, &[])));
        same_run(&single, &double, 1e-5, 1e-5);
        // One rank in a group runs every collective of the data-parallel path (the path a
        // one-GPU NCCL run takes) and changes nothing.
        let one_rank = root.join(format!("{name}-mpi-1"));
        run(mpirun(1, &args(config, &one_rank, &data, &[])));
        same_run(&single, &one_rank, 0.0, 0.0);
        // Rank 0 alone writes: one results table.
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert_eq!(stdout.matches("evaluation results").count(), 1, "{stdout}");
        // Evaluation sharded over two ranks and gathered gives one process's metrics
        // for the same weights.
        let sharded = root.join(format!("{name}-eval-2"));
        let weights = single.join("model_final.safetensors");
        run(mpirun(
            2,
            &args(
                config,
                &sharded,
                &data,
                &["--eval-only", "MODEL.WEIGHTS", weights.to_str().unwrap()],
            ),
        ));
        assert_eq!(eval_results(&single), eval_results(&sharded), "{name}");
        let predictions = |d: &Path| {
            std::fs::read_dir(d.join("inference/synthetic_faces_val/predictions"))
                .map(|r| r.count())
                .unwrap_or(0)
        };
        assert_eq!(predictions(&single), predictions(&sharded), "{name}");
    }
}

/// Mixed precision (float16, loss scaling) on two ranks. Each rank's loss is normalised by
/// the global count over the world size (so that averaging gives the global gradient):
/// its float16 gradients are twice one process's and overflow at a lower scale, as under
/// PyTorch's DDP, so the skip decisions differ from one process's. What must hold: the
/// first step (same weights) has one process's losses, and every step follows the
/// scaler's rule on the norm of the averaged gradients, which all ranks share.
#[test]
fn float16_loss_scaling_on_two_ranks_follows_the_scaler_rule() {
    let root = common::tmp_dir("dist-amp");
    let data = root.join("data");
    let f16 = [
        "SOLVER.AMP.ENABLED",
        "True",
        "SOLVER.AMP.DTYPE",
        "float16",
        "DATASETS.TEST",
        "[]",
    ];
    let single = root.join("amp-1");
    let double = root.join("amp-2");
    run(one_process(&args(SSDLITE, &single, &data, &f16)));
    run(mpirun(2, &args(SSDLITE, &double, &data, &f16)));
    // (loss scale, whether the step was skipped) per step.
    let steps = |out: &Path| -> Vec<(f64, bool)> {
        std::fs::read_to_string(out.join("metrics.json"))
            .unwrap()
            .lines()
            .filter_map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).ok()?;
                v.get("total_loss")?;
                Some((v["loss_scale"].as_f64()?, v["grad_norm"].is_null()))
            })
            .collect()
    };
    for out in [&single, &double] {
        let s = steps(out);
        assert_eq!(s.len(), 4, "{}", out.display());
        assert_eq!(s[0].0, 65536.0);
        for w in s.windows(2) {
            let expected = if w[0].1 { w[0].0 / 2.0 } else { w[0].0 };
            assert_eq!(w[1].0, expected, "{}: {s:?}", out.display());
        }
    }
    let (a, b) = (losses(&single), losses(&double));
    for (k, v) in &a[&0] {
        let w = b[&0][k];
        assert!(
            (v - w).abs() <= 1e-3 * v.abs().max(1e-3),
            "iteration 0: {k} {v} vs {w}"
        );
    }
    assert!(b.values().flat_map(|t| t.values()).all(|v| v.is_finite()));
}

/// The classifier: per-sample dropout, the class-balanced sampler, an evaluation every
/// two iterations watched by the plateau schedule and the best model, an odd-sized test
/// set over two shards.
#[test]
fn a_classifier_trains_and_evaluates_on_two_ranks_as_in_one_process() {
    let root = common::tmp_dir("dist-classifier");
    let data = root.join("data");
    let args = |out: &Path, extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = [
            "--config-file",
            "configs/classification/synthetic_mnv2.yaml",
            "OUTPUT_DIR",
            out.to_str().unwrap(),
            "DATASETS.ROOT",
            data.to_str().unwrap(),
            "DATASETS.SYNTHETIC_SHAPES.NUM_TRAIN",
            "24",
            "DATASETS.SYNTHETIC_SHAPES.NUM_VAL",
            "7",
            "DATASETS.SYNTHETIC_SHAPES.IMAGE_SIZE",
            "48",
            "INPUT.CROP_SIZE",
            "40",
            "INPUT.RESIZE_SHORT",
            "40",
            "MODEL.WEIGHTS",
            "",
            "MODEL.MOBILENET.WIDTH_MULT",
            "0.35",
            "SOLVER.IMS_PER_BATCH",
            "8",
            "SOLVER.MAX_ITER",
            "4",
            "SOLVER.WARMUP_ITERS",
            "0",
            "SOLVER.LOG_PERIOD",
            "1",
            "TEST.EVAL_PERIOD",
            "2",
            "TEST.EVAL_PERIOD_UNIT",
            "iterations",
            "TEST.VIS_NUM",
            "2",
        ]
        .map(String::from)
        .to_vec();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let (single, double) = (root.join("1"), root.join("2"));
    run(one_process(&args(&single, &[])));
    run(mpirun(2, &args(&double, &[])));
    same_run(&single, &double, 1e-5, 1e-5);
    assert!(double.join("model_best.safetensors").is_file());
    let weights = single.join("model_final.safetensors");
    let sharded = root.join("eval-2");
    run(mpirun(
        2,
        &args(
            &sharded,
            &["--eval-only", "MODEL.WEIGHTS", weights.to_str().unwrap()],
        ),
    ));
    assert_eq!(eval_results(&single), eval_results(&sharded));
    assert!(sharded
        .join("inference/synthetic_shapes_val/confusion_matrix.png")
        .is_file());
    // A rank that cannot start (rank 0 refuses an OUTPUT_DIR with another run's results)
    // ends the whole run at once, with its reason.
    let o = launch(mpirun(2, &args(&single, &[]))).wait();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("rank 0 of 2") && err.contains("another run's results"),
        "{err}"
    );
}

#[test]
fn sync_bn_on_two_ranks_equals_bn_in_one_process() {
    let root = common::tmp_dir("dist-syncbn");
    let data = root.join("data");
    let norm = |n: &'static str| {
        [
            "MODEL.MOBILENET.NORM",
            n,
            "MODEL.FPN.NORM",
            n,
            "MODEL.SSDLITE.NORM",
            n,
        ]
    };
    // ImageNet weights: with random ones, a deep stack of training BN amplifies the
    // rounding differences between any two implementations (the fused single-process
    // kernels and SyncBN's stock ops) to 1e-2 in the first layers' gradients.
    let with = |n: &'static str| {
        let mut a = norm(n).to_vec();
        a.extend([
            "MODEL.WEIGHTS",
            "weights/mobilenet_v2_imagenet_f16.safetensors",
            "MODEL.MOBILENET.WIDTH_MULT",
            "1.0",
            // No hard-negative mining: a rounding-level change of the scores would
            // swap which negatives are picked, a discrete change of the head's gradient.
            "MODEL.SSDLITE.CLS_LOSS",
            "focal",
        ]);
        a
    };
    let single = root.join("bn");
    let double = root.join("syncbn");
    run(one_process(&args(SSDLITE, &single, &data, &with("BN"))));
    run(mpirun(2, &args(SSDLITE, &double, &data, &with("SyncBN"))));
    // Running statistics included: they are checkpoint tensors like the weights. BN's
    // fused kernel and SyncBN's f64 stock ops differ by rounding (1.6e-7 of the gradient
    // norm); after four steps a BN bias is 2e-5 of 0.1 apart.
    same_run(&single, &double, 1e-5, 5e-5);
    // Without SyncBN each rank normalises by its half batch: the runs differ.
    let per_rank = root.join("bn-2");
    run(mpirun(2, &args(SSDLITE, &per_rank, &data, &with("BN"))));
    let (a, b) = (losses(&single), losses(&per_rank));
    assert!((a[&0]["total_loss"] - b[&0]["total_loss"]).abs() > 1e-4);
}

#[test]
fn checkpoints_resume_across_world_sizes() {
    let root = common::tmp_dir("dist-resume");
    let data = root.join("data");
    let full = root.join("full");
    run(one_process(&args(SSDLITE, &full, &data, &[])));
    // Two ranks for 2 iterations, then one process to 4; and the other way round.
    let half = ["SOLVER.MAX_ITER", "2", "DATASETS.TEST", "[]"];
    let (a, b) = (root.join("2-then-1"), root.join("1-then-2"));
    run(mpirun(2, &args(SSDLITE, &a, &data, &half)));
    run(one_process(&args(SSDLITE, &a, &data, &["--resume"])));
    run(one_process(&args(SSDLITE, &b, &data, &half)));
    run(mpirun(2, &args(SSDLITE, &b, &data, &["--resume"])));
    same_run(&full, &a, 1e-5, 1e-5);
    same_run(&full, &b, 1e-5, 1e-5);
}

/// Starts a long 2-rank run, waits for two logged iterations, then does `to_rank_1`
/// to rank 1's process; returns mpirun's output and how long it took to end.
fn disturb_rank_1(name: &str, signal: i32, timeout: &str) -> (Output, Duration) {
    let root = common::tmp_dir(name);
    let (data, out) = (root.join("data"), root.join("run"));
    let mut a = args(
        SSDLITE,
        &out,
        &data,
        &["SOLVER.MAX_ITER", "100000", "DATASETS.TEST", "[]"],
    );
    a.splice(0..0, ["--dist-timeout".to_string(), timeout.to_string()]);
    let job = launch(mpirun(2, &a));
    wait_for_two_records(&out);
    let rank1 = job.rank_pid(1).expect("rank 1's process");
    // SAFETY: a signal to a process this test started (through mpirun).
    assert_eq!(unsafe { libc::kill(rank1, signal) }, 0);
    let t = Instant::now();
    let o = job.wait();
    if signal == libc::SIGSTOP {
        // SAFETY: as above; lets a stopped process die if it is still there.
        unsafe { libc::kill(rank1, libc::SIGKILL) };
    }
    (o, t.elapsed())
}

#[test]
fn a_dead_or_hanging_rank_ends_the_run_with_a_clear_message() {
    // Killed: MPI's launcher sees the exit and ends the run, naming the rank.
    let (o, took) = disturb_rank_1("dist-kill", libc::SIGKILL, "60");
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("rank 1") && err.contains("signal 9"), "{err}");
    assert!(took < Duration::from_secs(60), "took {took:?}");
    // Hanging: rank 0 waits in its collective until --dist-timeout, then says so.
    let (o, took) = disturb_rank_1("dist-hang", libc::SIGSTOP, "5");
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("rank 0")
            && err.contains("waited")
            && err.contains("a rank has died or hangs"),
        "{err}"
    );
    assert!(took < Duration::from_secs(60), "took {took:?}");
}

/// Ctrl-C on `mpirun` reaches every rank; they stop at the same iteration, rank 0 writes
/// one checkpoint, and one process resumes from it.
#[test]
fn ctrl_c_on_mpirun_stops_every_rank_at_one_checkpoint() {
    let root = common::tmp_dir("dist-sigint");
    let (data, out) = (root.join("data"), root.join("run"));
    let long = [
        "SOLVER.MAX_ITER",
        "100000",
        "SOLVER.CHECKPOINT_PERIOD",
        "100000",
        "DATASETS.TEST",
        "[]",
    ];
    let job = launch(mpirun(2, &args(SSDLITE, &out, &data, &long)));
    wait_for_two_records(&out);
    // SAFETY: a signal to the mpirun this test started.
    assert_eq!(unsafe { libc::kill(job.pid(), libc::SIGINT) }, 0);
    let o = job.wait();
    let stdout = String::from_utf8_lossy(&o.stdout);
    // mpirun's own exit status after a signal is its business; the ranks' output is ours.
    let iter: usize = stdout
        .lines()
        .find_map(|l| l.strip_prefix("stopped at iteration "))
        .and_then(|l| l.split(';').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no stop message in:\n{stdout}"));
    assert_eq!(
        stdout.matches("stopped at iteration").count(),
        1,
        "{stdout}"
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.matches("interrupted: wrote").count(), 1, "{err}");
    let last = std::fs::read_to_string(out.join("last_checkpoint")).unwrap();
    assert!(last.contains(&format!("model_{iter:07}")), "{last}");
    let max = (iter + 3).to_string();
    run(one_process(&args(
        SSDLITE,
        &out,
        &data,
        &["SOLVER.MAX_ITER", &max, "DATASETS.TEST", "[]", "--resume"],
    )));
    let logged: Vec<u64> = losses(&out).keys().copied().collect();
    assert_eq!(logged, (0..iter as u64 + 3).collect::<Vec<_>>());
}
