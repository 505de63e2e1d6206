//! Helpers shared by the integration tests.

// Tests read tensor values directly; the library's reads go through `ops::host`.
#![allow(clippy::disallowed_methods)]
#![allow(dead_code)]

use std::path::PathBuf;

/// `$CANDLETRON_SHARED` (the read-only `../shared` folder), or `None` after printing
/// that the calling test is skipped.
pub fn shared(test: &str) -> Option<PathBuf> {
    match std::env::var_os("CANDLETRON_SHARED") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            assert!(
                dir.is_dir(),
                "CANDLETRON_SHARED={} is not a folder",
                dir.display()
            );
            Some(dir)
        }
        _ => {
            eprintln!("SKIPPED {test}: set CANDLETRON_SHARED to the shared data folder to run it");
            None
        }
    }
}

/// Largest absolute difference and largest reference magnitude.
pub fn max_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> (f32, f32) {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
    let b: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
    let diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    let scale = b.iter().map(|y| y.abs()).fold(0f32, f32::max);
    (diff, scale)
}

/// The folders `tmp_dir` made in this test process, removed when it exits.
static TMP_DIRS: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());
/// Whether any test of this process panicked: its folders are then kept to look into.
static PANICKED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn remove_tmp_dirs() {
    let dirs = TMP_DIRS.lock().map(|d| d.clone()).unwrap_or_default();
    if PANICKED.load(std::sync::atomic::Ordering::SeqCst) {
        eprintln!("a test failed; its folders are kept under {:?}", dirs);
    } else {
        for d in dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// A fresh folder for test `name` (runs write hundreds of MiB): removed when the test
/// process exits, unless a test panicked. Tests hand paths inside it to helpers and
/// child processes, so it lives as long as the process rather than a scope.
pub fn tmp_dir(name: &str) -> PathBuf {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICKED.store(true, std::sync::atomic::Ordering::SeqCst);
            previous(info)
        }));
        // SAFETY: registers a function that only touches this module's statics.
        unsafe { libc::atexit(remove_tmp_dirs) };
    });
    let dir = std::env::temp_dir().join(format!("candletron-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    TMP_DIRS.lock().unwrap().push(dir.clone());
    dir
}

/// Overrides for a tiny synthetic-faces SSDLite run in `root` writing to `out`: two
/// 96-pixel training images (two validation images), batch 2, random initialisation, a
/// metrics line per iteration. Runs in well under a second per iteration.
pub fn tiny_run_overrides(root: &std::path::Path, out: &std::path::Path) -> Vec<String> {
    [
        "DATASETS.ROOT",
        root.to_str().unwrap(),
        "DATASETS.SYNTHETIC.NUM_TRAIN",
        "2",
        "DATASETS.SYNTHETIC.NUM_VAL",
        "2",
        "DATASETS.SYNTHETIC.IMAGE_SIZE",
        "96",
        "INPUT.TRAIN_SIZE",
        "96",
        "SOLVER.IMS_PER_BATCH",
        "2",
        "SOLVER.LOG_PERIOD",
        "1",
        "MODEL.WEIGHTS",
        "",
        "TEST.VIS_NUM",
        "0",
        "OUTPUT_DIR",
        out.to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec()
}

/// Writes the seeded random initial weights of the model `config` describes to `path`
/// (a checkpoint that fits the model exactly, for tools that refuse partial weights).
pub fn save_random_weights(config: &str, seed: u64, path: &std::path::Path) {
    let mut cfg = candletron::config::Config::from_file(config).unwrap();
    cfg.model.weights = String::new();
    let (model, _) = candletron::modeling::build_model(&cfg, seed).unwrap();
    let tensors: Vec<_> = model
        .params
        .vars()
        .into_iter()
        .map(|(n, v)| (n, v.as_tensor().clone()))
        .collect();
    candletron::checkpoint::write_safetensors(&tensors, path).unwrap();
}

/// The first CUDA device, or `None` after printing that the calling test is skipped.
#[cfg(feature = "cuda")]
pub fn cuda_device() -> Option<candle_core::Device> {
    match candle_core::Device::new_cuda(0) {
        Ok(d) => Some(d),
        Err(e) => {
            eprintln!("skipped: no CUDA device ({e})");
            None
        }
    }
}

/// Every value of `t`, flattened, as f64.
pub fn flat_f64(t: &candle_core::Tensor) -> Vec<f64> {
    t.to_dtype(candle_core::DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// PyTorch's top-5 class ids for the reference image (`reference/astronaut_mnv2.json`).
pub fn reference_top5(shared: &std::path::Path) -> Vec<u64> {
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(shared.join("reference/astronaut_mnv2.json")).unwrap(),
    )
    .unwrap();
    reference["top5"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect()
}

/// The class ids `classify` printed for its first image, best first.
pub fn classify_top5(stdout: &str) -> Vec<u64> {
    stdout
        .lines()
        .skip(1)
        .take(5)
        .map(|l| l.split_whitespace().next().unwrap().parse().unwrap())
        .collect()
}

/// Runs `classify` from the repository root on the reference image with `args` (weights or
/// a config) and `--dump`, with `OUTPUT_DIR` under `tmp_dir(name)`; asserts it succeeded and
/// returns its stdout, its dump, PyTorch's reference tensors and the folder.
pub fn classify_reference(
    shared: &std::path::Path,
    name: &str,
    args: &[&std::ffi::OsStr],
) -> (
    String,
    std::collections::HashMap<String, candle_core::Tensor>,
    std::collections::HashMap<String, candle_core::Tensor>,
    PathBuf,
) {
    let dir = tmp_dir(name);
    let dump = dir.join("dump.safetensors");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_classify"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(args)
        .arg(shared.join("reference/astronaut.png"))
        .arg("--dump")
        .arg(&dump)
        .args(["--", "OUTPUT_DIR"])
        .arg(dir.join("out"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cpu = candle_core::Device::Cpu;
    let ours = candle_core::safetensors::load(&dump, &cpu).unwrap();
    let theirs =
        candle_core::safetensors::load(shared.join("reference/astronaut_mnv2.safetensors"), &cpu)
            .unwrap();
    (stdout, ours, theirs, dir)
}

/// A child process whose stdout and stderr are drained by threads from the start, so that
/// it never blocks on a full pipe while the test waits for something else.
pub struct Captured {
    pub child: std::process::Child,
    readers: Vec<std::thread::JoinHandle<Vec<u8>>>,
}

impl Captured {
    /// Takes over `child`'s piped stdout and stderr (either may be absent).
    pub fn new(mut child: std::process::Child) -> Self {
        use std::io::Read;
        let pipes: [Option<Box<dyn Read + Send>>; 2] = [
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ];
        let readers = pipes
            .into_iter()
            .map(|pipe| {
                std::thread::spawn(move || {
                    let mut buf = Vec::new();
                    if let Some(mut p) = pipe {
                        let _ = p.read_to_end(&mut buf);
                    }
                    buf
                })
            })
            .collect();
        Self { child, readers }
    }

    /// Waits at most `secs` seconds for the end. Past that, `on_timeout` ends the child
    /// (and whatever it started) and the test fails with what was printed, instead of a
    /// run that missed its signal holding the test binary, and CI, until an outer limit.
    pub fn wait(
        mut self,
        secs: u64,
        on_timeout: impl FnOnce(&mut std::process::Child),
    ) -> std::process::Output {
        let started = std::time::Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break Some(status);
            }
            if started.elapsed().as_secs() >= secs {
                on_timeout(&mut self.child);
                let _ = self.child.wait();
                break None;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        let mut out = self.readers.into_iter().map(|r| r.join().unwrap());
        let (stdout, stderr) = (out.next().unwrap(), out.next().unwrap());
        let Some(status) = status else {
            panic!(
                "still running after {secs} s; killed. Output:\n{}\n{}",
                String::from_utf8_lossy(&stdout),
                String::from_utf8_lossy(&stderr)
            );
        };
        std::process::Output {
            status,
            stdout,
            stderr,
        }
    }
}

/// `child.wait_with_output()` for at most `secs` seconds (see [`Captured::wait`]).
pub fn wait_with_deadline(child: std::process::Child, secs: u64) -> std::process::Output {
    Captured::new(child).wait(secs, |c| {
        let _ = c.kill();
    })
}
