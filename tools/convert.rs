//! Convert a checkpoint (.pth zip or legacy, or safetensors) to safetensors.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Result};
use candle_core::DType;
use clap::{Parser, ValueEnum};

#[derive(Clone, Copy, ValueEnum)]
enum Precision {
    /// Keep each tensor's dtype.
    Keep,
    /// Floating-point tensors to f32.
    F32,
    /// Floating-point tensors to f16 (half the size; loading converts back to the model's dtype).
    F16,
    /// Floating-point tensors to bf16.
    Bf16,
}

#[derive(Parser)]
#[command(about = "Convert a PyTorch checkpoint (.pth, zip or legacy format) to safetensors")]
struct Args {
    /// Input checkpoint (a path, or an https:// URL fetched into the cache).
    input: String,
    /// Output .safetensors file (written atomically; never the input).
    output: PathBuf,
    /// Precision of the floating-point tensors in the output.
    #[arg(long, value_enum, default_value = "keep")]
    dtype: Precision,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.output.extension().and_then(|e| e.to_str()) != Some("safetensors") {
        bail!(
            "{}: the output is a safetensors file; name it *.safetensors (PyTorch would not \
             read it as {})",
            args.output.display(),
            args.output
                .extension()
                .map_or("a file without an extension".into(), |e| format!(
                    "a .{}",
                    e.to_string_lossy()
                ))
        );
    }
    let path = candletron::checkpoint::resolve(&args.input)?;
    candletron::utils::fs::check_replaces_no_input(&args.output, &[&path])
        .map_err(|e| anyhow!(e))?;
    let mut tensors = candletron::checkpoint::read_checkpoint(&path)?;
    let target = match args.dtype {
        Precision::Keep => None,
        Precision::F32 => Some(DType::F32),
        Precision::F16 => Some(DType::F16),
        Precision::Bf16 => Some(DType::BF16),
    };
    if let Some(dt) = target {
        for (_, t) in tensors.iter_mut() {
            if t.dtype().is_float() {
                *t = t.to_dtype(dt)?;
            }
        }
    }
    candletron::checkpoint::write_safetensors(&tensors, &args.output)?;
    let numel: usize = tensors.iter().map(|(_, t)| t.elem_count()).sum();
    println!(
        "wrote {} tensors ({numel} values) to {}",
        tensors.len(),
        args.output.display()
    );
    Ok(())
}
