//! Synthetic faces: a deterministic generator that writes a dataset in the WIDER FACE
//! layout (`WIDER_{split}/images/EVENT/*.jpg` + `wider_face_split/wider_face_{split}_bbx_gt.txt`),
//! so the one WIDER loader and evaluator serve both.
//!
//! It is meant to be a hard detection problem, not a toy: scenes range from crowds of
//! small, often blurred faces to portraits; faces vary in skin tone, hair, yaw and roll,
//! expression and lighting, get glasses, sunglasses, masks, hands or other people in front
//! of them, and sit on cluttered backgrounds with face-like distractors (skin-coloured
//! blobs and hands, shaded balls, ring targets, two-dot patterns). Every WIDER attribute is
//! written from how the face was drawn: `blur` from the blur radius, `occlusion` from the
//! covered fraction of the face box, `pose` from yaw/roll, `invalid` when more than 3/4 is
//! hidden.
//!
//! Each image is drawn from its own seed (global seed, split, index), so the output does
//! not depend on the number of threads.

pub(crate) mod canvas;
mod face;
mod spec;

pub use spec::SyntheticSpec;

use std::io::BufWriter;
use std::path::{Path, PathBuf};

use image::codecs::jpeg::JpegEncoder;
use image::RgbImage;
use rayon::prelude::*;

use super::generated::cached_dataset;
use super::record::DataError;
use super::root::dataset_root;
use super::widerface::{format_bbx_gt, FaceAnnotation, WiderRecord};
use crate::config::Config;
use canvas::{splitmix, Canvas, Xorshift};

/// Scene types, written as WIDER-style events, with their sampling weights.
const EVENTS: [(&str, f32); 5] = [
    ("0--Crowd", 0.25),
    ("1--Group", 0.30),
    ("2--Portrait", 0.15),
    ("3--Street", 0.25),
    ("4--Empty", 0.05),
];

/// One generated image and its faces.
pub struct SyntheticImage {
    pub image: RgbImage,
    /// Relative to `images/`: `EVENT/NAME.jpg`.
    pub file_name: String,
    pub faces: Vec<FaceAnnotation>,
}

/// Draws image `index` of `split`; the same arguments always give the same pixels.
pub fn render(spec: &SyntheticSpec, split: &str, index: usize) -> SyntheticImage {
    let split_id = if split == "train" { 1u64 } else { 2 };
    let mut rng = Xorshift::new(splitmix(spec.seed ^ (split_id << 56)) ^ index as u64);
    let mut pick = rng.f();
    let mut event = EVENTS.len() - 1;
    for (i, (_, w)) in EVENTS.iter().enumerate() {
        if pick < *w {
            event = i;
            break;
        }
        pick -= w;
    }
    let w = spec.image_size;
    let aspect = [0.5625f32, 0.75, 1.0, 1.25][rng.int(0, 3)];
    let h = ((w as f32 * aspect) as usize).max(32);
    let mut cv = Canvas::new(w, h, [0.0; 3]);
    face::background(&mut cv, &mut rng);
    face::distractors(&mut cv, &mut rng, spec, event);
    let faces = face::people(&mut cv, &mut rng, spec, event);
    let image = face::develop(&cv, &mut rng);
    let (ev, _) = EVENTS[event];
    let name = ev.split("--").nth(1).unwrap_or(ev);
    SyntheticImage {
        image,
        file_name: format!("{ev}/{event}_{name}_{split}_{index:05}.jpg"),
        faces,
    }
}

fn write_jpeg(img: &RgbImage, path: &Path, quality: u8) -> Result<(), DataError> {
    let f = std::fs::File::create(path)
        .map_err(|e| DataError::new(format!("cannot create {}: {e}", path.display())))?;
    let mut enc = JpegEncoder::new_with_quality(BufWriter::new(f), quality);
    enc.encode_image(img)
        .map_err(|e| DataError::new(format!("cannot write {}: {e}", path.display())))
}

/// Writes both splits into `dir` (which must not exist yet, or be empty).
pub fn generate(spec: &SyntheticSpec, dir: &Path) -> Result<(), DataError> {
    let io = |p: &Path, e: std::io::Error| DataError::new(format!("{}: {e}", p.display()));
    std::fs::create_dir_all(dir.join("wider_face_split")).map_err(|e| io(dir, e))?;
    for split in ["train", "val"] {
        let images = dir.join(format!("WIDER_{split}/images"));
        for (ev, _) in EVENTS {
            let d = images.join(ev);
            std::fs::create_dir_all(&d).map_err(|e| io(&d, e))?;
        }
        let records = (0..spec.count(split))
            .into_par_iter()
            .map(|i| {
                let s = render(spec, split, i);
                let quality = 75 + (splitmix(spec.seed ^ i as u64) % 21) as u8;
                write_jpeg(&s.image, &images.join(&s.file_name), quality)?;
                Ok(WiderRecord {
                    file_name: s.file_name,
                    faces: s.faces,
                })
            })
            .collect::<Result<Vec<_>, DataError>>()?;
        let txt = dir.join(format!("wider_face_split/wider_face_{split}_bbx_gt.txt"));
        std::fs::write(&txt, format_bbx_gt(&records)).map_err(|e| io(&txt, e))?;
    }
    let marker = dir.join("SPEC");
    std::fs::write(&marker, spec.tag()).map_err(|e| io(&marker, e))
}

/// The dataset folder for the config's spec, generated first if missing or incomplete.
/// Generation goes to a temporary folder renamed into place, so an interrupted run never
/// leaves a half-written dataset that looks complete.
pub fn ensure_generated(cfg: &Config) -> Result<PathBuf, DataError> {
    let spec = SyntheticSpec::from_config(cfg)?;
    let what = format!(
        "the synthetic face dataset ({} train + {} val images)",
        spec.num_train, spec.num_val
    );
    cached_dataset(
        &dataset_root(cfg).join("synthetic_faces"),
        &spec.tag(),
        &what,
        |dir| generate(&spec, dir),
    )
}
