//! The CUDA kernels' sources (the NVRTC strings of `src/ops/*_cuda.rs`) run on the CPU and
//! compared with the CPU ops, so that their logic is checked on machines without a GPU.
//!
//! `tests/cuda_on_cpu/cuda_on_cpu.h` gives each CUDA thread an OS thread, makes
//! `__syncthreads` a barrier of the block and the warp intrinsics barriers of the warp, and
//! fills fresh buffers with NaN bytes, so a missed element, a barrier not every thread
//! reaches or a warp intrinsic after a lane returned shows here. The launches below repeat
//! those of `src/ops/*_cuda.rs` (grid, block, arguments in order); the launcher refuses an
//! argument list that does not match the kernel's parameter types. Out of reach here: speed
//! and the GPU's memory model; `tests/cuda_parity.rs` and `tests/depthwise.rs`, built with
//! `--features cuda`, run the same kernels on a GPU.

// Tests read tensor values directly; the library's reads go through `ops::host`.
#![allow(clippy::disallowed_methods)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

mod common;

use candle_core::{DType, Device, Tensor, Var};
use candletron::ops::{
    batch_norm_train, bias_act, depthwise_conv2d, im2col, nms_segments, relu6, roi_align,
    top_k_indices, top_k_mask, Activation, ConvGeometry, RoiAlignParams, RoiGrid,
};

/// Threads per block of the element-wise and reduction kernels (`cuda_kernels::THREADS`).
const THREADS: usize = 256;

fn blocks(total: usize) -> usize {
    total.div_ceil(THREADS).clamp(1, 1 << 20)
}

/// The inline PTX of the sources and what the emulator runs instead.
const PTX: [(&str, &str); 2] = [
    (
        r#"asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(v));"#,
        "f = cuda_on_cpu_f16_to_f32(v);",
    ),
    (
        r#"asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));"#,
        "h = cuda_on_cpu_f32_to_f16(v);",
    ),
];

fn cxx() -> String {
    std::env::var("CXX").unwrap_or_else(|_| "c++".into())
}

/// The raw strings (`r#"..."#`) of a Rust file.
fn kernel_raw_strings(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("r#\"") {
        let after = &rest[start + 3..];
        let Some(end) = after.find("\"#") else { break };
        out.push(after[..end].to_string());
        rest = &after[end + 2..];
    }
    out
}

/// The kernel sources of a Rust file: its raw strings that define a `__global__` function.
fn kernel_sources(text: &str) -> Vec<String> {
    kernel_raw_strings(text)
        .into_iter()
        .filter(|s| s.contains("__global__"))
        .collect()
}

/// Each `__global__` function of `source` as (name, parameter types), read from the
/// preprocessed source so that kernels stamped out by macros are found too.
fn signatures(source: &str) -> Vec<(String, Vec<String>)> {
    let mut child = Command::new(cxx())
        .args([
            "-E",
            "-P",
            "-x",
            "c++",
            "-D__global__=CUDA_ON_CPU_GLOBAL",
            "-",
        ])
        .args(["-D__device__=", "-D__forceinline__=", "-D__shared__="])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run the C++ preprocessor");
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), source.as_bytes()).unwrap();
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "preprocessing a kernel source failed");
    let text = String::from_utf8(out.stdout).unwrap();
    let mut found = Vec::new();
    for part in text.split("CUDA_ON_CPU_GLOBAL").skip(1) {
        let decl = part
            .trim_start()
            .strip_prefix("void")
            .expect("kernels return void");
        let open = decl.find('(').unwrap();
        let close = open + decl[open..].find(')').unwrap();
        let name = decl[..open].trim().to_string();
        let params = decl[open + 1..close]
            .split(',')
            .map(|p| {
                let p = p.replace("__restrict__", "");
                let p = p.trim();
                let cut = p.trim_end_matches(|c: char| c.is_alphanumeric() || c == '_');
                cut.trim().to_string()
            })
            .collect();
        found.push((name, params));
    }
    found
}

struct Emulator {
    exe: PathBuf,
    dir: PathBuf,
}

static RUNS: AtomicUsize = AtomicUsize::new(0);

impl Emulator {
    /// Built once per test process from every `src/ops/*_cuda.rs`; `None` (the tests say
    /// skipped) without a C++20 compiler.
    fn get() -> Option<&'static Emulator> {
        static EMU: OnceLock<Option<Emulator>> = OnceLock::new();
        EMU.get_or_init(Self::build).as_ref()
    }

    fn build() -> Option<Emulator> {
        if Command::new(cxx()).arg("--version").output().is_err() {
            eprintln!(
                "skipped: no C++ compiler ({}) to emulate the CUDA kernels",
                cxx()
            );
            return None;
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cuda_on_cpu");
        std::fs::create_dir_all(&dir).unwrap();
        let mut files: Vec<PathBuf> = std::fs::read_dir(root.join("src/ops"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().ends_with("_cuda.rs"))
            .collect();
        files.sort();
        let mut unit = String::from("#include \"cuda_on_cpu.h\"\n#include \"launcher.h\"\n");
        let mut table = String::new();
        let mut count = 0;
        // What `cuda_kernels::ptx` compiles before every source.
        let prelude = kernel_raw_strings(
            &std::fs::read_to_string(root.join("src/ops/cuda_kernels.rs")).unwrap(),
        )
        .concat();
        // The kernels of the ops, and faults the emulator must report.
        let faults = std::fs::read_to_string(root.join("tests/cuda_on_cpu/faults.cu")).unwrap();
        for (i, src) in files
            .iter()
            .flat_map(|f| kernel_sources(&std::fs::read_to_string(f).unwrap()))
            .chain([faults])
            .enumerate()
        {
            let mut src = format!("{prelude}{src}");
            for (ptx, cpu) in PTX {
                src = src.replace(ptx, cpu);
            }
            assert!(
                !src.contains("asm("),
                "inline PTX the emulator does not know"
            );
            writeln!(unit, "namespace source{i} {{\n{src}").unwrap();
            for (name, params) in signatures(&src) {
                let args: Vec<String> = params
                    .iter()
                    .enumerate()
                    .map(|(j, t)| format!("*({t}*)a[{j}]"))
                    .collect();
                writeln!(
                    unit,
                    "void call_{name}(void** a) {{ {name}({}); }}",
                    args.join(", ")
                )
                .unwrap();
                writeln!(
                    unit,
                    "std::string signature_{name}() {{ return cuda_on_cpu::signature<{}>(); }}",
                    params.join(", ")
                )
                .unwrap();
                writeln!(
                    table,
                    "  {{\"{name}\", source{i}::signature_{name}, source{i}::call_{name}}},"
                )
                .unwrap();
                count += 1;
            }
            writeln!(unit, "}}").unwrap();
        }
        writeln!(
            unit,
            "const Entry kernels[] = {{\n{table}}};\nconst size_t kernel_count = {count};"
        )
        .unwrap();
        let cpp = dir.join("kernels.cpp");
        std::fs::write(&cpp, unit).unwrap();
        let exe = dir.join("kernels");
        let out = Command::new(cxx())
            .args(["-std=c++20", "-O1", "-pthread", "-o"])
            .arg(&exe)
            .arg("-I")
            .arg(root.join("tests/cuda_on_cpu"))
            .arg(&cpp)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "compiling the emulated kernels failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(Emulator { exe, dir })
    }

    /// Loads `inputs`, runs `script` (allocations and launches), returns `outputs`' bytes.
    fn run(&self, inputs: &[(&str, Vec<u8>)], script: &str, outputs: &[&str]) -> Vec<Vec<u8>> {
        self.try_run(inputs, script, outputs)
            .unwrap_or_else(|e| panic!("emulated kernels failed:\n{e}"))
    }

    /// As `run`, with the emulator's report when it stops.
    fn try_run(
        &self,
        inputs: &[(&str, Vec<u8>)],
        script: &str,
        outputs: &[&str],
    ) -> Result<Vec<Vec<u8>>, String> {
        let dir = self.dir.join(format!(
            "run-{}-{}",
            std::process::id(),
            RUNS.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut full = String::new();
        for (name, bytes) in inputs {
            let path = dir.join(name);
            std::fs::write(&path, bytes).unwrap();
            writeln!(full, "load {name} {}", path.display()).unwrap();
        }
        full.push_str(script);
        for name in outputs {
            writeln!(
                full,
                "save {name} {}",
                dir.join(format!("{name}.out")).display()
            )
            .unwrap();
        }
        let path = dir.join("script");
        std::fs::write(&path, full).unwrap();
        // A barrier some thread never reaches deadlocks the emulation, as it hangs a GPU:
        // the run fails after two minutes.
        let child = Command::new(&self.exe)
            .arg(&path)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = common::wait_with_deadline(child, 120);
        let result = if out.status.success() {
            Ok(outputs
                .iter()
                .map(|n| std::fs::read(dir.join(format!("{n}.out"))).unwrap())
                .collect())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        };
        std::fs::remove_dir_all(&dir).unwrap();
        result
    }
}

/// Deterministic values in [-1, 1).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// A tensor's elements as the kernels store them.
fn bytes(t: &Tensor) -> Vec<u8> {
    let t = t.flatten_all().unwrap();
    match t.dtype() {
        DType::F32 => t
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DType::F64 => t
            .to_vec1::<f64>()
            .unwrap()
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DType::BF16 => t
            .to_vec1::<half::bf16>()
            .unwrap()
            .iter()
            .flat_map(|v| v.to_bits().to_le_bytes())
            .collect(),
        DType::F16 => t
            .to_vec1::<half::f16>()
            .unwrap()
            .iter()
            .flat_map(|v| v.to_bits().to_le_bytes())
            .collect(),
        DType::U8 => t.to_vec1::<u8>().unwrap(),
        DType::U32 => t
            .to_vec1::<u32>()
            .unwrap()
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        other => panic!("no bytes for {other:?}"),
    }
}

/// Kernel output bytes of `dtype` as f64.
fn decode(b: &[u8], dtype: DType) -> Vec<f64> {
    match dtype {
        DType::F32 => b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
            .collect(),
        DType::F64 => b
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        DType::BF16 => b
            .chunks_exact(2)
            .map(|c| half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f64())
            .collect(),
        DType::F16 => b
            .chunks_exact(2)
            .map(|c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f64())
            .collect(),
        other => panic!("no decoding for {other:?}"),
    }
}

/// Every element within `rel` of the reference's own size plus `scale` of its largest
/// element (reductions in the kernels' accumulator cancel to small values); NaN only where
/// the reference has NaN.
fn assert_close(what: &str, got: &[f64], want: &[f64], rel: f64, scale: f64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let max = want.iter().fold(0f64, |m, v| m.max(v.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        if g.is_nan() && w.is_nan() {
            continue;
        }
        let tol = rel * w.abs() + scale * max;
        assert!(
            (g - w).abs() <= tol,
            "{what}[{i}]: kernel {g}, CPU {w} (tolerance {tol})"
        );
    }
}

fn suffix(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "f32",
        DType::F64 => "f64",
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        other => panic!("{other:?}"),
    }
}

/// (element-wise tolerance, tolerance in units of the largest element) of a dtype's results.
fn tolerance(dtype: DType) -> (f64, f64) {
    match dtype {
        DType::F64 => (1e-12, 1e-13),
        DType::F32 => (1e-6, 1e-6),
        // One rounding of an f32 sum to the storage type.
        DType::BF16 => (2f64.powi(-8), 1e-5),
        _ => (2f64.powi(-11), 1e-5),
    }
}

#[test]
fn depthwise_kernels_equal_the_cpu_op_in_every_dtype() {
    let Some(emu) = Emulator::get() else { return };
    let cpu = Device::Cpu;
    // (k, stride, padding, dilation): the models' 3x3 convs, stride 2, 5x5, dilation 2.
    let geometries = [(3, 1, 1, 1), (3, 2, 1, 1), (5, 2, 2, 1), (3, 1, 2, 2)];
    let (n, c, h, w) = (2, 3, 11, 9);
    for dtype in [DType::F32, DType::F64, DType::BF16, DType::F16] {
        let sfx = suffix(dtype);
        let size = dtype.size_in_bytes();
        let acc = if size == 2 { 4 } else { size };
        for (gi, &(k, s, p, d)) in geometries.iter().enumerate() {
            let geo = ConvGeometry::new(s, p, d);
            let (ho, wo) = (
                (h + 2 * p - d * (k - 1) - 1) / s + 1,
                (w + 2 * p - d * (k - 1) - 1) / s + 1,
            );
            let seed = gi as u64 * 10;
            let narrow = |v: Vec<f32>, shape: (usize, usize, usize, usize)| {
                Tensor::from_vec(v, shape, &cpu)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap()
            };
            let x = narrow(values(n * c * h * w, seed), (n, c, h, w));
            let wt = narrow(values(c * k * k, seed + 1), (c, 1, k, k));
            let g = narrow(values(n * c * ho * wo, seed + 2), (n, c, ho, wo));
            // The reference in f64 from the same (rounded) values, with its gradients.
            let x64 = Var::from_tensor(&x.to_dtype(DType::F64).unwrap()).unwrap();
            let w64 = Var::from_tensor(&wt.to_dtype(DType::F64).unwrap()).unwrap();
            let y64 = depthwise_conv2d(x64.as_tensor(), w64.as_tensor(), geo).unwrap();
            let loss = (&y64 * g.to_dtype(DType::F64).unwrap())
                .unwrap()
                .sum_all()
                .unwrap();
            let grads = loss.backward().unwrap();

            let geo_args = format!(
                "i32={c} i32={h} i32={w} i32={k} i32={ho} i32={wo} i32={s} i32={p} i32={d}"
            );
            let (total_y, total_x, len) = (n * c * ho * wo, n * c * h * w, c * k * k);
            let script = format!(
                "alloc y {}\n\
                 launch dw_forward_{sfx} {} 1 1 {THREADS} 1 1 @x @w @y i64={total_y} {geo_args}\n\
                 alloc gx {}\n\
                 launch dw_input_grad_{sfx} {} 1 1 {THREADS} 1 1 @g @w @gx i64={total_x} {geo_args}\n\
                 alloc part {}\n\
                 launch dw_weight_grad_partial_{sfx} {len} {n} 1 {THREADS} 1 1 @x @g @part {geo_args}\n\
                 alloc gw {}\n\
                 launch dw_sum_images_{sfx} {} 1 1 {THREADS} 1 1 @part @gw i32={n} i32={len}\n\
                 alloc yw {}\n\
                 launch dw_forward_wide_{sfx} {} 1 1 {THREADS} 1 1 @x @w @yw i64={total_y} {geo_args}\n\
                 alloc gxw {}\n\
                 launch dw_input_grad_wide_{sfx} {} 1 1 {THREADS} 1 1 @g @w @gxw i64={total_x} {geo_args}\n",
                total_y * size,
                blocks(total_y),
                total_x * size,
                blocks(total_x),
                n * len * acc,
                len * size,
                blocks(len),
                total_y * size,
                blocks(total_y),
                total_x * size,
                blocks(total_x),
            );
            let out = emu.run(
                &[("x", bytes(&x)), ("w", bytes(&wt)), ("g", bytes(&g))],
                &script,
                &["y", "gx", "gw", "yw", "gxw"],
            );
            // The 64-bit index kernels (for more than 2^31 elements) compute the same.
            assert!(
                out[3] == out[0] && out[4] == out[1],
                "wide kernels {dtype:?} k{k} s{s}"
            );
            let (rel, scale) = tolerance(dtype);
            let what = |t: &str| format!("{t} {dtype:?} k{k} s{s} p{p} d{d}");
            assert_close(
                &what("forward"),
                &decode(&out[0], dtype),
                &common::flat_f64(&y64),
                rel,
                scale,
            );
            let gx = grads.get(x64.as_tensor()).unwrap();
            assert_close(
                &what("input grad"),
                &decode(&out[1], dtype),
                &common::flat_f64(gx),
                rel,
                scale,
            );
            let gw = grads.get(w64.as_tensor()).unwrap();
            assert_close(
                &what("weight grad"),
                &decode(&out[2], dtype),
                &common::flat_f64(gw),
                rel,
                scale,
            );
        }
    }
}

/// The training BN kernels' forward and backward as `batch_norm_train_cuda.rs` launches them:
/// (output, stats, input gradient, coefficients) as bytes. `x` and `g` are in the activation
/// dtype, `w` and `b` in its compute dtype (f32 for bf16/f16).
fn run_batch_norm(
    emu: &Emulator,
    [x, g, w, b]: [&Tensor; 4],
    act: Activation,
    eps: f64,
) -> Vec<Vec<u8>> {
    let (n, c, h, wd) = x.dims4().unwrap();
    let sfx = suffix(x.dtype());
    let (hw, m, planes) = (h * wd, n * h * wd, n * c);
    // `chunks` and the grids of batch_norm_train_cuda.rs.
    let k = 1024usize.div_ceil(c).min(m.div_ceil(4096)).max(1);
    let len = m.div_ceil(k);
    let pixel_blocks = hw.div_ceil(THREADS);
    let (flag, lo, hi) = match act {
        Activation::Identity => (0, "0", "0"),
        Activation::ReLU => (1, "0", "inf"),
        Activation::ReLU6 => (1, "0", "6"),
        Activation::Mish => panic!("the kernels do not fuse Mish"),
    };
    let ak = suffix(w.dtype());
    let clip = format!("i32={flag} {ak}={lo} {ak}={hi}");
    let script = format!(
        "alloc part {part}\n\
         launch bn_moments_partial_{sfx} {c} {k} 1 {THREADS} 1 1 @x @part i32={c} i32={hw} i32={m} i32={len}\n\
         alloc stats {per_channel}\n\
         launch bn_moments_finish_{sfx} {cb} 1 1 {THREADS} 1 1 @x @part @w @b @stats i32={c} i32={hw} i32={k} f64={m} f64={eps}\n\
         alloc y {values}\n\
         launch bn_affine_{sfx} {planes} {pixel_blocks} 1 {THREADS} 1 1 @x @stats @y i32={c} i32={hw} {clip}\n\
         alloc part2 {part}\n\
         launch bn_grad_partial_{sfx} {c} {k} 1 {THREADS} 1 1 @x @g @stats @part2 i32={c} i32={hw} i32={m} i32={len} {clip}\n\
         alloc coef {per_channel}\n\
         launch bn_grad_finish_{sfx} {cb} 1 1 {THREADS} 1 1 @part2 @w @stats @coef i32={c} i32={k} f64={m}\n\
         alloc gx {values}\n\
         launch bn_input_grad_{sfx} {planes} {pixel_blocks} 1 {THREADS} 1 1 @x @g @stats @coef @gx i32={c} i32={hw} {clip}\n",
        part = c * k * 2 * 8,
        per_channel = 5 * c * 8,
        cb = blocks(c),
        values = n * c * hw * x.dtype().size_in_bytes(),
    );
    emu.run(
        &[
            ("x", bytes(x)),
            ("g", bytes(g)),
            ("w", bytes(w)),
            ("b", bytes(b)),
        ],
        &script,
        &["y", "stats", "gx", "coef"],
    )
}

/// (x, output gradient, weight, bias) in f32: channels far from zero mean, so the moments
/// must not cancel. The first shape has one chunk per channel; the second (4,608 values per
/// channel) two chunks per channel over planes of nine pixel blocks.
fn batch_norm_inputs() -> Vec<[Tensor; 4]> {
    let cpu = Device::Cpu;
    [(2, 5, 7, 7), (2, 3, 48, 48)]
        .iter()
        .enumerate()
        .map(|(si, &(n, c, h, w))| {
            let hw = h * w;
            let xv: Vec<f32> = values(n * c * hw, si as u64)
                .iter()
                .enumerate()
                .map(|(i, v)| 3.0 * v + ((i / hw) % c) as f32 * 2.5 - 2.0)
                .collect();
            [
                Tensor::from_vec(xv, (n, c, h, w), &cpu).unwrap(),
                Tensor::from_vec(values(n * c * hw, si as u64 + 7), (n, c, h, w), &cpu).unwrap(),
                Tensor::from_vec(values(c, 3), c, &cpu).unwrap(),
                Tensor::from_vec(values(c, 4), c, &cpu).unwrap(),
            ]
        })
        .collect()
}

const FUSED: [Activation; 3] = [Activation::Identity, Activation::ReLU, Activation::ReLU6];

#[test]
fn batch_norm_kernels_equal_the_cpu_op() {
    let Some(emu) = Emulator::get() else { return };
    let eps = 1e-5;
    for dtype in [DType::F32, DType::F64] {
        for inputs in batch_norm_inputs() {
            let [x, g, wt, b] = inputs.map(|t| t.to_dtype(dtype).unwrap());
            let c = wt.dim(0).unwrap();
            for act in FUSED {
                let (xv, wv, bv) = (
                    Var::from_tensor(&x).unwrap(),
                    Var::from_tensor(&wt).unwrap(),
                    Var::from_tensor(&b).unwrap(),
                );
                let (y, stats) =
                    batch_norm_train(xv.as_tensor(), wv.as_tensor(), bv.as_tensor(), eps, act)
                        .unwrap();
                let grads = (&y * &g).unwrap().sum_all().unwrap().backward().unwrap();
                let out = run_batch_norm(emu, [&x, &g, &wt, &b], act, eps);
                let what = |t: &str| format!("{t} {dtype:?} {:?} {act:?}", x.dims());
                let (rel, scale) = tolerance(dtype);
                // The kernels sum in f64 throughout; the CPU op sums f32 input in f32 over
                // blocks of 256 values, then in f64: its statistics are good to ~1e-6 there.
                let st = decode(&out[1], DType::F64);
                assert_close(&what("mean"), &st[..c], &stats.mean, rel, scale);
                assert_close(&what("variance"), &st[c..2 * c], &stats.var, rel, scale);
                assert_close(
                    &what("invstd"),
                    &st[2 * c..3 * c],
                    &stats.invstd,
                    rel,
                    scale,
                );
                assert_close(
                    &what("output"),
                    &decode(&out[0], dtype),
                    &common::flat_f64(&y),
                    rel,
                    scale,
                );
                let coef = decode(&out[3], DType::F64);
                let gx = grads.get(xv.as_tensor()).unwrap();
                // The input gradient's three terms cancel to a small result: in f32 it is
                // good to the rounding of the terms, about 1e-6 of the output gradient.
                assert_close(
                    &what("input grad"),
                    &decode(&out[2], dtype),
                    &common::flat_f64(gx),
                    rel,
                    scale * 4.0,
                );
                let gw = grads.get(wv.as_tensor()).unwrap();
                assert_close(
                    &what("weight grad"),
                    &coef[3 * c..4 * c],
                    &common::flat_f64(gw),
                    rel,
                    scale,
                );
                let gb = grads.get(bv.as_tensor()).unwrap();
                assert_close(
                    &what("bias grad"),
                    &coef[4 * c..],
                    &common::flat_f64(gb),
                    rel,
                    scale,
                );
            }
        }
    }
}

/// bf16/f16 activations with f32 weight and bias: the f32 kernels' statistics and
/// coefficients exactly, and their output and input gradient rounded once, which is what
/// the f32 norm between two conversions gave.
#[test]
fn narrow_batch_norm_kernels_round_the_f32_kernels_once() {
    let Some(emu) = Emulator::get() else { return };
    let eps = 1e-5;
    for dtype in [DType::BF16, DType::F16] {
        for [x, g, wt, b] in batch_norm_inputs() {
            let (xn, gn) = (x.to_dtype(dtype).unwrap(), g.to_dtype(dtype).unwrap());
            let widen = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
            for act in FUSED {
                let narrow = run_batch_norm(emu, [&xn, &gn, &wt, &b], act, eps);
                let wide = run_batch_norm(emu, [&widen(&xn), &widen(&gn), &wt, &b], act, eps);
                let what = |t: &str| format!("{t} {dtype:?} {:?} {act:?}", x.dims());
                let round = |bytes: &[u8]| {
                    let v: Vec<f32> = decode(bytes, DType::F32)
                        .iter()
                        .map(|v| *v as f32)
                        .collect();
                    let t = Tensor::from_vec(v, xn.dims(), &Device::Cpu).unwrap();
                    common::flat_f64(&t.to_dtype(dtype).unwrap())
                };
                assert_same(
                    &what("output"),
                    &decode(&narrow[0], dtype),
                    &round(&wide[0]),
                );
                assert_same(
                    &what("input grad"),
                    &decode(&narrow[2], dtype),
                    &round(&wide[2]),
                );
                for (i, part) in [(1, "stats"), (3, "coefficients")] {
                    assert_eq!(narrow[i], wide[i], "{}", what(part));
                }
            }
        }
    }
}

/// ROIAlign forward and backward (the gather over each image's ROIs) against the planned
/// CPU op and its gradient: boxes inside, across and beyond the border (a sample exactly on
/// it), inverted, tiny and large, a NaN only zero-weight taps reach,
/// adaptive and fixed sampling, with and without the half-pixel shift.
#[test]
fn roi_align_kernels_equal_the_cpu_op() {
    let Some(emu) = Emulator::get() else { return };
    let cpu = Device::Cpu;
    let (n, c, h, w) = (4, 2, 13, 11);
    let rois: Vec<(usize, [f32; 4])> = vec![
        // Inverted: with the shift and fixed sampling its bins have negative sizes.
        (0, [30.0, 40.0, 10.0, 12.0]),
        (0, [4.0, 6.0, 30.0, 40.0]),
        (0, [-10.0, -6.0, 12.0, 9.0]),
        (2, [30.0, 35.0, 60.0, 70.0]),
        (2, [5.5, 5.5, 6.0, 6.2]),
        (0, [0.0, 0.0, 44.0, 52.0]),
        (2, [40.0, -3.0, 47.0, 20.0]),
        // Without the shift and with two bins, samples fall exactly on x = w and y = h.
        (0, [42.0, 50.0, 58.0, 66.0]),
        // Without the shift, sampling 2 and three bins: samples on pixel centres (integer
        // coordinates), whose far neighbour has weight 0; one of those is NaN below.
        (3, [4.0, 4.0, 52.0, 52.0]),
    ];
    let nan_at = ((3 * c) * h + 11) * w + 9;
    for dtype in [DType::F32, DType::F64] {
        let sfx = suffix(dtype);
        let mut xs = values(n * c * h * w, 31);
        xs[nan_at] = f32::NAN;
        let x = Tensor::from_vec(xs, (n, c, h, w), &cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        let cases = [(0, true, 7), (2, false, 3), (0, false, 2), (2, true, 2)];
        for (sampling, aligned, out) in cases {
            let p = RoiAlignParams {
                output_size: (out, out),
                spatial_scale: 0.25,
                sampling_ratio: sampling,
                aligned,
            };
            let xv = Var::from_tensor(&x).unwrap();
            let y = roi_align(xv.as_tensor(), &rois, &p).unwrap();
            let g = Tensor::from_vec(values(y.elem_count(), 32), y.dims(), &cpu)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let grads = (&y * &g).unwrap().sum_all().unwrap().backward().unwrap();
            if (sampling, aligned) == (2, false) {
                // The NaN pixel sends the last ROI nothing on the CPU: the kernel must not
                // read it either.
                let last = common::flat_f64(&y.get(rois.len() - 1).unwrap());
                assert!(last.iter().all(|v| v.is_finite()));
            }
            // The grids and per-image ROI ranges as roi_align_cuda.rs uploads them.
            let boxes: Vec<f64> = rois
                .iter()
                .flat_map(|(b, r)| {
                    let g = RoiGrid::new(r, &p);
                    [*b as f64, g.x0, g.y0, g.bw, g.bh, g.gw as f64, g.gh as f64]
                })
                .collect();
            let (mut first, mut last) = (vec![0u32; n], vec![0u32; n]);
            for (i, (b, _)) in rois.iter().enumerate() {
                if first[*b] == last[*b] {
                    first[*b] = i as u32;
                }
                last[*b] = i as u32 + 1;
            }
            let le = |v: &[u32]| v.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>();
            let (total_y, total_x) = (rois.len() * c * out * out, n * c * h * w);
            let geo = format!("i32={c} i32={h} i32={w} i32={out} i32={out}");
            let script = format!(
                "alloc y {}\n\
                 launch roi_align_forward_{sfx} {} 1 1 {THREADS} 1 1 @x @rois @y i64={total_y} {geo}\n\
                 alloc gx {}\n\
                 launch roi_align_backward_{sfx} {} 1 1 {THREADS} 1 1 @g @rois @first @last @gx i64={total_x} {geo}\n",
                total_y * dtype.size_in_bytes(),
                blocks(total_y),
                total_x * dtype.size_in_bytes(),
                blocks(total_x),
            );
            let out_bytes = emu.run(
                &[
                    ("x", bytes(&x)),
                    ("g", bytes(&g)),
                    ("rois", boxes.iter().flat_map(|v| v.to_le_bytes()).collect()),
                    ("first", le(&first)),
                    ("last", le(&last)),
                ],
                &script,
                &["y", "gx"],
            );
            let what = |t: &str| format!("{t} {dtype:?} sampling {sampling} aligned {aligned}");
            let (rel, scale) = tolerance(dtype);
            assert_close(
                &what("forward"),
                &decode(&out_bytes[0], dtype),
                &common::flat_f64(&y),
                rel,
                scale,
            );
            let gx = grads.get(xv.as_tensor()).unwrap();
            assert_close(
                &what("backward"),
                &decode(&out_bytes[1], dtype),
                &common::flat_f64(gx),
                rel,
                scale,
            );
            // Image 1 has no ROIs: no gradient.
            let gx_host = decode(&out_bytes[1], dtype);
            assert!(gx_host[c * h * w..2 * c * h * w].iter().all(|v| *v == 0.0));
        }
    }
}

/// Equal element for element, NaN where the reference has NaN.
fn assert_same(what: &str, got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let same = g == w || (g.is_nan() && w.is_nan());
        assert!(same, "{what}[{i}]: kernel {g}, CPU {w}");
    }
}

/// An activation in f64, NaN passing through ReLU and ReLU6 as in the kernels.
fn act64(a: Activation, v: f64) -> f64 {
    let relu = |v: f64| if v < 0.0 { 0.0 } else { v };
    match a {
        Activation::Identity => v,
        Activation::ReLU => relu(v),
        Activation::ReLU6 => {
            let r = relu(v);
            if r > 6.0 {
                6.0
            } else {
                r
            }
        }
        Activation::Mish => v * (v.max(0.0) + (-v.abs()).exp().ln_1p()).tanh(),
    }
}

#[test]
fn activation_kernels_equal_the_cpu_ops() {
    let Some(emu) = Emulator::get() else { return };
    let cpu = Device::Cpu;
    let (n, c, h, w) = (2, 3, 17, 19);
    let len = n * c * h * w;
    // Around both kinks, on them, and special values.
    let special = [
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        -0.0,
        0.0,
        6.0,
        5.999,
        6.001,
    ];
    let xv: Vec<f32> = values(len, 21)
        .iter()
        .enumerate()
        .map(|(i, v)| {
            if i % 13 == 0 {
                special[i / 13 % special.len()]
            } else {
                4.0 * v + 3.0
            }
        })
        .collect();
    let x32 = Tensor::from_vec(xv, (n, c, h, w), &cpu).unwrap();
    let g32 = Tensor::from_vec(values(len, 22), (n, c, h, w), &cpu).unwrap();
    let b32 = Tensor::from_vec(values(c, 23), c, &cpu).unwrap();
    let round = |t: &Tensor, d: DType| t.to_dtype(d).unwrap().to_dtype(DType::F32).unwrap();
    for dtype in [DType::F32, DType::F64, DType::BF16, DType::F16] {
        let sfx = suffix(dtype);
        let size = dtype.size_in_bytes();
        let (x, g, b) = (
            x32.to_dtype(dtype).unwrap(),
            g32.to_dtype(dtype).unwrap(),
            b32.to_dtype(dtype).unwrap(),
        );
        // The CPU ops (f32) on the same values, rounded to the dtype: ReLU6 and its gradient
        // select values, bias + activation rounds once.
        let xr = Var::from_tensor(&round(&x32, dtype)).unwrap();
        let y = relu6(xr.as_tensor()).unwrap();
        let grads = (&y * round(&g32, dtype))
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let gx = grads.get(xr.as_tensor()).unwrap();
        let kinds = [
            (Activation::Identity, 0),
            (Activation::ReLU, 1),
            (Activation::ReLU6, 2),
            (Activation::Mish, 3),
        ];
        let mut script = format!(
            "alloc y {bytes}\n\
             launch relu6_forward_{sfx} {bl} 1 1 {THREADS} 1 1 @x @y i64={len}\n\
             alloc gx {bytes}\n\
             launch relu6_backward_{sfx} {bl} 1 1 {THREADS} 1 1 @x @g @gx i64={len}\n",
            bytes = len * size,
            bl = blocks(len),
        );
        for (_, k) in kinds {
            writeln!(
                script,
                "alloc act{k} {}\nlaunch bias_act_{sfx} {} {} 1 {THREADS} 1 1 @x @b @act{k} i32={c} i32={} i32={k}",
                len * size,
                n * c,
                (h * w).div_ceil(THREADS),
                h * w,
            )
            .unwrap();
        }
        // One pixel block per plane: the stride that covers planes of over 65535 blocks.
        writeln!(
            script,
            "alloc strided {}\nlaunch bias_act_{sfx} {} 1 1 {THREADS} 1 1 @x @b @strided i32={c} i32={} i32=2",
            len * size,
            n * c,
            h * w,
        )
        .unwrap();
        let out = emu.run(
            &[("x", bytes(&x)), ("g", bytes(&g)), ("b", bytes(&b))],
            &script,
            &["y", "gx", "act0", "act1", "act2", "act3", "strided"],
        );
        assert!(
            out[6] == out[4],
            "bias + ReLU6 {dtype:?} with a pixel stride"
        );
        assert_same(
            &format!("relu6 {dtype:?}"),
            &decode(&out[0], dtype),
            &common::flat_f64(&round(&y, dtype)),
        );
        assert_same(
            &format!("relu6 grad {dtype:?}"),
            &decode(&out[1], dtype),
            &common::flat_f64(&round(gx, dtype)),
        );
        for (i, (a, _)) in kinds.iter().enumerate() {
            // In f32 (the CPU op) and rounded once, or in f64 by hand for f64: the kernels
            // add and activate in the accumulator type.
            let want = if dtype == DType::F64 {
                let (xs, bs) = (common::flat_f64(&x), common::flat_f64(&b));
                let v: Vec<f64> = (0..len)
                    .map(|j| act64(*a, xs[j] + bs[j / (h * w) % c]))
                    .collect();
                Tensor::new(v, &cpu).unwrap()
            } else {
                round(
                    &bias_act(&round(&x32, dtype), &round(&b32, dtype), *a).unwrap(),
                    dtype,
                )
            };
            let got = decode(&out[2 + i], dtype);
            let what = format!("bias + {a:?} {dtype:?}");
            if *a == Activation::Mish {
                // exp, log1p and tanh of the host's libm against Rust's: a few ulps in f32.
                let rel = if size == 2 { tolerance(dtype).0 } else { 1e-6 };
                let want = common::flat_f64(&want);
                let finite: Vec<usize> = (0..len).filter(|&j| want[j].is_finite()).collect();
                let pick = |v: &[f64]| finite.iter().map(|&j| v[j]).collect::<Vec<f64>>();
                assert_close(&what, &pick(&got), &pick(&want), rel, 1e-7);
                assert!(
                    (0..len).all(|j| want[j].is_finite() || got[j].is_nan() == want[j].is_nan())
                );
            } else {
                assert_same(&what, &got, &common::flat_f64(&want));
            }
        }
    }
}

#[test]
fn top_k_mask_kernel_picks_what_the_cpu_op_picks() {
    let Some(emu) = Emulator::get() else { return };
    let cpu = Device::Cpu;
    // Rows of three tiles of 1024: distinct scores, few distinct values (ties across
    // tiles), special values (NaN, infinities, signed zeros), and every kind of k.
    let r = 2500;
    let base = values(r, 11);
    let rows: Vec<(Vec<f32>, u32)> = vec![
        (base.clone(), 700),
        (base.iter().map(|v| (v * 4.0).round()).collect(), 1300),
        (
            base.iter()
                .enumerate()
                .map(|(i, v)| match i % 9 {
                    0 => f32::NAN,
                    1 => f32::INFINITY,
                    2 => f32::NEG_INFINITY,
                    3 => -0.0,
                    4 => 0.0,
                    _ => *v,
                })
                .collect(),
            900,
        ),
        (base.clone(), 0),
        (base.clone(), 1),
        (base.clone(), 5000),
    ];
    let n = rows.len();
    let scores: Vec<f32> = rows.iter().flat_map(|(s, _)| s.clone()).collect();
    // A third of the entries are not candidates; the last row's k exceeds them all.
    let candidates: Vec<u8> = (0..n * r).map(|i| u8::from(i % 3 != 1)).collect();
    let ks: Vec<u32> = rows.iter().map(|(_, k)| *k).collect();
    let scores = Tensor::from_vec(scores, (n, r), &cpu).unwrap();
    let candidates = Tensor::from_vec(candidates, (n, r), &cpu).unwrap();
    let ks = Tensor::from_vec(ks, n, &cpu).unwrap();
    let want = common::flat_f64(&top_k_mask(&scores, &candidates, &ks).unwrap());
    let script = format!(
        "alloc out {}\nlaunch top_k_mask {n} 1 1 1024 1 1 @scores @cand @k @out i32={r}\n",
        n * r * 4
    );
    let out = emu.run(
        &[
            ("scores", bytes(&scores)),
            ("cand", bytes(&candidates)),
            ("k", bytes(&ks)),
        ],
        &script,
        &["out"],
    );
    let got = decode(&out[0], DType::F32);
    for row in 0..n {
        let (g, w) = (&got[row * r..(row + 1) * r], &want[row * r..(row + 1) * r]);
        let picked = w.iter().filter(|v| **v == 1.0).count();
        assert_eq!(g, w, "row {row} (k {}, CPU picks {picked})", rows[row].1);
    }
    // The rows pick what their k asks: none, one, k, and every candidate.
    let count = |row: usize| {
        want[row * r..(row + 1) * r]
            .iter()
            .filter(|v| **v == 1.0)
            .count()
    };
    assert_eq!(
        [count(0), count(3), count(4), count(5)],
        [700, 0, 1, (0..r).filter(|j| (5 * r + j) % 3 != 1).count()]
    );
}

/// Rows of 2,500 scores (three tiles of the 1024-thread block): distinct values, few
/// distinct values (ties across tiles) and special values, a third not candidates.
fn top_k_rows() -> (Tensor, Tensor) {
    let r = 2500;
    let base = values(r, 11);
    let rows: Vec<Vec<f32>> = vec![
        base.clone(),
        base.iter().map(|v| (v * 4.0).round()).collect(),
        base.iter()
            .enumerate()
            .map(|(i, v)| match i % 9 {
                0 => f32::NAN,
                1 => f32::INFINITY,
                2 => f32::NEG_INFINITY,
                3 => -0.0,
                4 => 0.0,
                _ => *v,
            })
            .collect(),
    ];
    let n = rows.len();
    let mut candidates: Vec<u8> = (0..n * r).map(|i| u8::from(i % 3 != 1)).collect();
    // The last row has 40 candidates.
    for (j, c) in candidates[(n - 1) * r..].iter_mut().enumerate() {
        *c = u8::from(j % 61 == 0 && j / 61 < 40);
    }
    let cpu = Device::Cpu;
    (
        Tensor::from_vec(rows.concat(), (n, r), &cpu).unwrap(),
        Tensor::from_vec(candidates, (n, r), &cpu).unwrap(),
    )
}

#[test]
fn top_k_indices_kernel_lists_what_the_cpu_op_lists() {
    let Some(emu) = Emulator::get() else { return };
    let (scores, candidates) = top_k_rows();
    let (n, r) = scores.dims2().unwrap();
    // One, a few hundred (a sort of 1024), past a tile, and the most the kernel takes
    // (more than any row's candidates: padded).
    for k in [1usize, 300, 1300, 4096] {
        let want = common::flat_f64(
            &top_k_indices(&scores, &candidates, k)
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap(),
        );
        let script = format!(
            "alloc out {}\nlaunch top_k_indices {n} 1 1 1024 1 1 @scores @cand @out i32={r} i32={k}\n",
            n * k * 4
        );
        let out = emu.run(
            &[("scores", bytes(&scores)), ("cand", bytes(&candidates))],
            &script,
            &["out"],
        );
        let got: Vec<f64> = out[0]
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap()) as f64)
            .collect();
        assert_eq!(got, want, "k {k}");
        // The last row pads after its 40 candidates.
        let last = &want[(n - 1) * k..];
        assert_eq!(
            last.iter().filter(|&&j| j < r as f64).count(),
            k.min(40),
            "k {k}"
        );
    }
}

#[test]
fn nms_kernel_keeps_what_the_cpu_op_keeps() {
    let Some(emu) = Emulator::get() else { return };
    // Boxes clustered on a coarse grid, in rank order per segment; some not candidates,
    // some empty or inverted; an empty segment among them.
    let (n, s) = (2, 700);
    let offsets = [0usize, 300, 300, 620, 700];
    let v = values(n * s * 4, 5);
    let boxes: Vec<f32> = v
        .chunks(4)
        .flat_map(|c| {
            let (x, y) = ((c[0] * 5.0).round() * 4.0, (c[1] * 5.0).round() * 4.0);
            [x, y, x + 4.0 + c[2] * 30.0, y + 4.0 + c[3] * 30.0]
        })
        .collect();
    let candidates: Vec<u8> = (0..n * s).map(|i| u8::from(i % 11 != 4)).collect();
    let cpu = Device::Cpu;
    let boxes = Tensor::from_vec(boxes, (n, s, 4), &cpu).unwrap();
    let candidates = Tensor::from_vec(candidates, (n, s), &cpu).unwrap();
    for threshold in [0.3f32, 0.7] {
        let want = common::flat_f64(
            &nms_segments(&boxes, &candidates, &offsets, threshold)
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap(),
        );
        let mut script = format!("alloc alive {}\n", n * s);
        for w in offsets.windows(2).filter(|w| w[0] < w[1]) {
            writeln!(
                script,
                "launch nms_segment {n} 1 1 256 1 1 @boxes @cand @alive i32={s} i32={} i32={} f32={threshold}",
                w[0], w[1]
            )
            .unwrap();
        }
        let out = emu.run(
            &[("boxes", bytes(&boxes)), ("cand", bytes(&candidates))],
            &script,
            &["alive"],
        );
        let got: Vec<f64> = out[0].iter().map(|&b| b as f64).collect();
        assert_eq!(got, want, "threshold {threshold}");
        let kept = want.iter().filter(|&&k| k == 1.0).count();
        assert!(kept > 50 && kept < n * s * 9 / 10, "{kept} kept");
    }
}

/// im2col (a copy) and col2im (each input cell's sum over the taps that read it) against
/// the CPU op and its gradient: f32 and f64 bit for bit, bf16 and f16 the f32 kernels'
/// result on the widened values rounded once; strides, padding, dilation, a 1x1 kernel
/// with stride 2 (cells no tap reads) and a non-square input.
#[test]
fn im2col_kernels_equal_the_cpu_op() {
    let Some(emu) = Emulator::get() else { return };
    let cpu = Device::Cpu;
    let (n, c, h, w) = (2, 3, 9, 7);
    let x = Tensor::from_vec(values(n * c * h * w, 21), (n, c, h, w), &cpu).unwrap();
    for (k, g) in [
        (3, ConvGeometry::new(1, 1, 1)),
        (3, ConvGeometry::new(2, 1, 1)),
        (3, ConvGeometry::new(1, 2, 2)),
        (1, ConvGeometry::new(2, 0, 1)),
        (5, ConvGeometry::new(3, 2, 1)),
    ] {
        let (ho, wo) = (g.out_size(h, k).unwrap(), g.out_size(w, k).unwrap());
        let geo = format!(
            "i32={c} i32={h} i32={w} i32={k} i32={} i32={} i32={} i32={ho} i32={wo}",
            g.stride, g.padding, g.dilation
        );
        let cols_len = n * c * k * k * ho * wo;
        let x_len = n * c * h * w;
        let dy = Tensor::from_vec(values(cols_len, 22), (n, c * k * k, ho * wo), &cpu).unwrap();
        // The CPU op's forward, and its gradient for `dy`.
        let reference = |dtype: DType| {
            let xv = Var::from_tensor(&x.to_dtype(dtype).unwrap()).unwrap();
            let cols = im2col(xv.as_tensor(), k, g).unwrap();
            let grads = (&cols * dy.to_dtype(dtype).unwrap())
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            (cols, grads.get(&xv).unwrap().clone())
        };
        let run = |suf: &str, xb: Vec<u8>, dyb: Vec<u8>, size: usize| {
            let script = format!(
                "alloc cols {}\nlaunch im2col_{suf} {} 1 1 {THREADS} 1 1 @x @cols i64={cols_len} {geo}\n\
                 alloc gx {}\nlaunch col2im_{suf} {} 1 1 {THREADS} 1 1 @dy @gx i64={x_len} {geo}\n",
                cols_len * size,
                blocks(cols_len),
                x_len * size,
                blocks(x_len)
            );
            emu.run(&[("x", xb), ("dy", dyb)], &script, &["cols", "gx"])
        };
        for dtype in [DType::F32, DType::F64] {
            let (cols, gx) = reference(dtype);
            let size = dtype.size_in_bytes();
            let out = run(
                suffix(dtype),
                bytes(&x.to_dtype(dtype).unwrap()),
                bytes(&dy.to_dtype(dtype).unwrap()),
                size,
            );
            let what = format!("{dtype:?} k {k} {g:?}");
            assert_same(
                &format!("im2col {what}"),
                &decode(&out[0], dtype),
                &common::flat_f64(&cols),
            );
            assert_same(
                &format!("col2im {what}"),
                &decode(&out[1], dtype),
                &common::flat_f64(&gx),
            );
        }
        let (cols32, gx32) = reference(DType::F32);
        for dtype in [DType::BF16, DType::F16] {
            // The narrow inputs, and the f32 results on their widened values, rounded.
            let (xn, dyn_) = (x.to_dtype(dtype).unwrap(), dy.to_dtype(dtype).unwrap());
            let widen = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
            let out = run(suffix(dtype), bytes(&xn), bytes(&dyn_), 2);
            let wide = run("f32", bytes(&widen(&xn)), bytes(&widen(&dyn_)), 4);
            let round = |b: &[u8], dims: &[usize]| {
                let v: Vec<f32> = decode(b, DType::F32).iter().map(|v| *v as f32).collect();
                let t = Tensor::from_vec(v, dims, &cpu).unwrap();
                common::flat_f64(&t.to_dtype(dtype).unwrap())
            };
            let what = format!("{dtype:?} k {k} {g:?}");
            assert_same(
                &format!("im2col {what}"),
                &decode(&out[0], dtype),
                &round(&wide[0], cols32.dims()),
            );
            assert_same(
                &format!("col2im {what}"),
                &decode(&out[1], dtype),
                &round(&wide[1], gx32.dims()),
            );
        }
    }
}

/// The emulator reports what it exists to catch: an argument list that does not fit the
/// kernel, an element never written, a warp intrinsic after a lane returned.
#[test]
fn the_emulator_reports_faulty_launches_and_kernels() {
    let Some(emu) = Emulator::get() else { return };
    let err = emu
        .try_run(
            &[],
            "alloc a 16\nalloc b 16\nlaunch dw_sum_images_f32 1 1 1 256 1 1 @a @b i64=1 i32=4\n",
            &[],
        )
        .unwrap_err();
    assert!(
        err.contains("dw_sum_images_f32 takes (p p i32 i32), the script gives (p p i64 i32)"),
        "{err}"
    );
    let out = emu.run(
        &[],
        "alloc out 400\nlaunch fault_skips_elements 2 1 1 64 1 1 @out i32=100\n",
        &["out"],
    );
    let out = decode(&out[0], DType::F32);
    assert!(out.iter().step_by(2).all(|v| *v == 1.0));
    assert!(out.iter().skip(1).step_by(2).all(|v| v.is_nan()));
    // Lanes 40-63 of the second warp return before it shuffles.
    let err = emu
        .try_run(
            &[],
            "alloc out 256\nlaunch fault_shuffle_after_return 1 1 1 64 1 1 @out i32=40\n",
            &[],
        )
        .unwrap_err();
    assert!(
        err.contains("full-mask warp intrinsic after a lane returned"),
        "{err}"
    );
}
