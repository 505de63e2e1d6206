//! Run a trained detector on one image through the library's `Predictor` and print its
//! detections in the image's own pixels.
//!
//! ```sh
//! cargo run --release --bin train_net -- --config-file configs/synthetic_faces/ssdlite_mnv2_fpn.yaml
//! cargo run --release --example detect_image -- \
//!     output/synthetic_faces_ssdlite_mnv2_fpn/config.yaml \
//!     output/synthetic_faces_ssdlite_mnv2_fpn/model_final.safetensors photo.jpg
//! ```

use anyhow::{bail, Context, Result};
use candletron::config::Config;
use candletron::engine::{Predicted, Predictor};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [config, weights, image] = args.as_slice() else {
        bail!("usage: detect_image CONFIG.yaml WEIGHTS IMAGE");
    };
    // The config the model was trained with (train_net saves it as OUTPUT_DIR/config.yaml).
    let mut cfg = Config::from_file(config)?;
    cfg.model.weights = weights.clone();
    // Loads the weights (they must fit the model), folds the norms into the convolutions.
    let predictor = Predictor::from_config(&cfg)?.with_class_names(vec!["face".into()])?;

    let img = image::open(image).with_context(|| format!("cannot read {image}"))?;
    // Test-time resizing as in evaluation; boxes come back in the original image's pixels.
    let Predicted::Detections(dets) = predictor.predict(&img)? else {
        bail!("{} is not a detector", cfg.model.meta_architecture);
    };
    println!(
        "{image}: {} detections ({}x{})",
        dets.len(),
        img.width(),
        img.height()
    );
    for d in dets.iter().filter(|d| d.score >= 0.5) {
        let [x1, y1, x2, y2] = d.bbox;
        println!(
            "  {} {:.3}  [{x1:.1}, {y1:.1}, {x2:.1}, {y2:.1}]",
            d.class_name, d.score
        );
    }
    Ok(())
}
