//! Convert a checkpoint (.pth zip or legacy, or safetensors) to safetensors.

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;

#[derive(Parser)]
#[command(about = "Convert a PyTorch checkpoint (.pth, zip or legacy format) to safetensors")]
struct Args {
    /// Input checkpoint.
    input: PathBuf,
    /// Output .safetensors file (written atomically).
    output: PathBuf,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let tensors = candletron::checkpoint::read_checkpoint(&args.input)?;
    candletron::checkpoint::write_safetensors(&tensors, &args.output)?;
    let numel: usize = tensors.iter().map(|(_, t)| t.elem_count()).sum();
    println!(
        "wrote {} tensors ({numel} values) to {}",
        tensors.len(),
        args.output.display()
    );
    Ok(())
}
