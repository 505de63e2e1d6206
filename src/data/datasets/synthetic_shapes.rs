//! Synthetic shapes: the embedded classification dataset, generated on first use into an
//! image folder (`DATASETS.ROOT/synthetic_shapes/TAG/{train,val}/CLASS/*.png`) that the
//! image-folder loader reads like any other.
//!
//! Four classes, imbalanced like the 8.1k / 4.1k / 3.1k / 5.5k four-class fine-tuning
//! example (the same proportions, scaled): a disc, a square, a triangle and a star, each
//! in a random colour, size, position and rotation, on a noisy gradient with smaller
//! shapes of every class as clutter. The class is the largest shape's, so colour and
//! texture say nothing: the network must see shape, at several scales.

use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::generated::cached_dataset;
use super::record::DataError;
use super::root::dataset_root;
use super::synthetic::canvas::{splitmix, Canvas, Ellipse, Rgb, Xorshift};
use crate::config::Config;

/// Bumped whenever the drawing changes, so cached datasets are regenerated.
const GENERATOR_VERSION: u32 = 1;

/// Class names (folder names, so their sorted order is the class order) and shares.
pub const CLASSES: [(&str, f64); 4] = [
    ("disc", 8.1),
    ("square", 4.1),
    ("star", 3.1),
    ("triangle", 5.5),
];

/// What the generator draws: every parameter that changes its output.
#[derive(Debug, Clone, PartialEq)]
pub struct ShapesSpec {
    pub seed: u64,
    pub num_train: usize,
    pub num_val: usize,
    pub image_size: usize,
}

impl ShapesSpec {
    pub fn from_config(cfg: &Config) -> Result<Self, DataError> {
        let s = &cfg.datasets.synthetic_shapes;
        if s.image_size < 32 {
            return Err(DataError::new(format!(
                "DATASETS.SYNTHETIC_SHAPES.IMAGE_SIZE must be at least 32, got {}",
                s.image_size
            )));
        }
        Ok(Self {
            seed: s.seed as u64,
            num_train: s.num_train,
            num_val: s.num_val,
            image_size: s.image_size,
        })
    }

    /// Folder name under `synthetic_shapes/`: every parameter that changes the output.
    pub fn tag(&self) -> String {
        format!(
            "v{GENERATOR_VERSION}_seed{}_n{}-{}_s{}",
            self.seed, self.num_train, self.num_val, self.image_size
        )
    }

    /// Images of each class in `split`: the shares of [`CLASSES`], at least one each.
    pub fn per_class(&self, split: &str) -> Vec<usize> {
        let n = if split == "train" {
            self.num_train
        } else {
            self.num_val
        };
        let total: f64 = CLASSES.iter().map(|(_, w)| w).sum();
        CLASSES
            .iter()
            .map(|(_, w)| ((n as f64 * w / total).round() as usize).max(1))
            .collect()
    }
}

fn color(rng: &mut Xorshift) -> Rgb {
    [
        rng.uniform(0.0, 255.0),
        rng.uniform(0.0, 255.0),
        rng.uniform(0.0, 255.0),
    ]
}

/// Draws shape `class` centred at (cx, cy) with radius `r`, rotated by `angle`.
fn shape(cv: &mut Canvas, class: usize, cx: f32, cy: f32, r: f32, angle: f32, c: Rgb) {
    let at = |k: usize, n: usize, rr: f32| {
        let t = angle + k as f32 * std::f32::consts::TAU / n as f32;
        (cx + rr * t.cos(), cy + rr * t.sin())
    };
    match CLASSES[class].0 {
        "disc" => cv.ellipse(Ellipse::new(cx, cy, r, r * 0.85, angle), c, 1.0),
        "square" => cv.polygon(&(0..4).map(|k| at(k, 4, r)).collect::<Vec<_>>(), c, 1.0),
        "triangle" => cv.polygon(
            &(0..3).map(|k| at(k, 3, r * 1.1)).collect::<Vec<_>>(),
            c,
            1.0,
        ),
        _ => {
            let pts: Vec<_> = (0..10)
                .map(|k| at(k, 10, if k % 2 == 0 { r * 1.1 } else { r * 0.45 }))
                .collect();
            cv.polygon(&pts, c, 1.0)
        }
    }
}

/// Draws image `index` of `class` in `split`; the same arguments give the same pixels.
pub fn render(spec: &ShapesSpec, split: &str, class: usize, index: usize) -> image::RgbImage {
    let split_id = if split == "train" { 1u64 } else { 2 };
    let mut rng = Xorshift::new(
        splitmix(spec.seed ^ (split_id << 56) ^ ((class as u64) << 48)) ^ index as u64,
    );
    let s = spec.image_size;
    let sf = s as f32;
    let mut cv = Canvas::new(s, s, [0.0; 3]);
    let angle = rng.uniform(0.0, std::f32::consts::TAU);
    cv.gradient(color(&mut rng), color(&mut rng), angle);
    cv.value_noise((s / 8).max(2), rng.uniform(0.1, 0.4), &mut rng);
    let r = sf * rng.uniform(0.14, 0.32);
    // Clutter first: up to 6 shapes of any class, at most 0.6 of the main shape's size.
    for _ in 0..rng.int(0, 6) {
        let k = rng.int(0, CLASSES.len() - 1);
        let rr = r * rng.uniform(0.25, 0.6);
        let (x, y) = (rng.uniform(0.0, sf), rng.uniform(0.0, sf));
        let a = rng.uniform(0.0, std::f32::consts::TAU);
        shape(&mut cv, k, x, y, rr, a, color(&mut rng));
    }
    let (cx, cy) = (rng.uniform(r, sf - r), rng.uniform(r, sf - r));
    let a = rng.uniform(0.0, std::f32::consts::TAU);
    shape(&mut cv, class, cx, cy, r, a, color(&mut rng));
    let gain = [
        rng.uniform(0.8, 1.2),
        rng.uniform(0.8, 1.2),
        rng.uniform(0.8, 1.2),
    ];
    cv.develop(gain, rng.uniform(2.0, 10.0), &mut rng)
}

/// Writes both splits into `dir` (which must not exist yet, or be empty).
pub fn generate(spec: &ShapesSpec, dir: &Path) -> Result<(), DataError> {
    let io = |p: &Path, e: String| DataError::new(format!("{}: {e}", p.display()));
    for split in ["train", "val"] {
        let counts = spec.per_class(split);
        let jobs: Vec<(usize, usize)> = counts
            .iter()
            .enumerate()
            .flat_map(|(c, &n)| (0..n).map(move |i| (c, i)))
            .collect();
        for (name, _) in CLASSES {
            let d = dir.join(split).join(name);
            std::fs::create_dir_all(&d).map_err(|e| io(&d, e.to_string()))?;
        }
        jobs.into_par_iter().try_for_each(|(c, i)| {
            let p = dir
                .join(split)
                .join(CLASSES[c].0)
                .join(format!("{}_{split}_{i:05}.png", CLASSES[c].0));
            render(spec, split, c, i)
                .save(&p)
                .map_err(|e| io(&p, e.to_string()))
        })?;
    }
    let marker = dir.join("SPEC");
    std::fs::write(&marker, spec.tag()).map_err(|e| io(&marker, e.to_string()))
}

/// The dataset folder for the config's spec, generated first if missing or incomplete.
pub fn ensure_generated(cfg: &Config) -> Result<PathBuf, DataError> {
    let spec = ShapesSpec::from_config(cfg)?;
    let what = format!(
        "the synthetic shapes dataset ({} train + {} val images)",
        spec.num_train, spec.num_val
    );
    cached_dataset(
        &dataset_root(cfg).join("synthetic_shapes"),
        &spec.tag(),
        &what,
        |dir| generate(&spec, dir),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_keep_the_shares_and_images_are_deterministic() {
        let spec = ShapesSpec {
            seed: 0,
            num_train: 208,
            num_val: 4,
            image_size: 48,
        };
        assert_eq!(spec.per_class("train"), [81, 41, 31, 55]);
        assert_eq!(spec.per_class("val"), [2, 1, 1, 1]);
        let a = render(&spec, "train", 2, 7);
        assert_eq!(a, render(&spec, "train", 2, 7));
        assert_ne!(a, render(&spec, "train", 3, 7));
        assert_eq!(a.dimensions(), (48, 48));
    }
}
