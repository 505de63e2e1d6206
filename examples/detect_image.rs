//! Run a trained detector on one image through the library API and print its detections
//! in the image's own pixels.
//!
//! ```sh
//! cargo run --release --bin train_net -- --config-file configs/synthetic_faces/ssdlite_mnv2_fpn.yaml
//! cargo run --release --example detect_image -- \
//!     output/synthetic_faces_ssdlite_mnv2_fpn/config.yaml \
//!     output/synthetic_faces_ssdlite_mnv2_fpn/model_final.safetensors photo.jpg
//! ```

use anyhow::{bail, Context, Result};
use candle_core::Device;
use candletron::config::Config;
use candletron::data::augmentation::{resize, shortest_edge_size};
use candletron::data::transforms::image_to_tensor;
use candletron::modeling::{build_model, Prediction};
use candletron::structures::{Instances, ModelInput};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [config, weights, image] = args.as_slice() else {
        bail!("usage: detect_image CONFIG.yaml WEIGHTS IMAGE");
    };
    // The config the model was trained with (train_net saves it as OUTPUT_DIR/config.yaml).
    let mut cfg = Config::from_file(config)?;
    cfg.model.weights = weights.clone();
    let (model, _) = build_model(&cfg, 0)?;
    // Norms folded into the convolutions: the fast inference path.
    let model = model.fused()?;

    let img = image::open(image)
        .with_context(|| format!("cannot read {image}"))?
        .to_rgb8();
    let (w, h) = img.dimensions();
    // Test-time resizing as in evaluation: the short side to INPUT.MIN_SIZE_TEST (0 keeps
    // the size), the long side at most INPUT.MAX_SIZE_TEST.
    let img = if cfg.input.min_size_test > 0 {
        let (nw, nh) = shortest_edge_size(w, h, cfg.input.min_size_test, cfg.input.max_size_test);
        resize(&img, &mut Instances::default(), nw, nh)
    } else {
        img
    };
    // The model normalises, pads and maps its boxes back to the original size itself.
    let input = ModelInput::new(image_to_tensor(&img, &Device::Cpu)?)
        .with_output_size(h as usize, w as usize);
    let Some(Prediction::Detections(dets)) = model.inference(&[input])?.pop() else {
        bail!("{} is not a detector", cfg.model.meta_architecture);
    };
    println!("{image}: {} detections ({w}x{h})", dets.boxes.len());
    for ((b, s), c) in dets.boxes.iter().zip(&dets.scores).zip(&dets.classes) {
        println!(
            "  class {c}  score {s:.3}  box [{:.1}, {:.1}, {:.1}, {:.1}]",
            b[0], b[1], b[2], b[3]
        );
    }
    Ok(())
}
