//! Detectron2's `DefaultAnchorGenerator`: per level, `sizes x aspect_ratios` cell anchors
//! shifted over the feature map. Anchor order is (y, x, cell anchor), matching a head's
//! output laid out as (N, H, W, A, ...).

use crate::config::Config;
use crate::config::ConfigError;
use crate::structures::boxes::Box4;

#[derive(Debug, Clone, PartialEq)]
pub struct AnchorGenerator {
    /// Per level: cell anchors centred at the origin.
    cell_anchors: Vec<Vec<Box4>>,
    strides: Vec<usize>,
    offset: f32,
}

fn broadcast_levels(
    v: &[Vec<f64>],
    levels: usize,
    what: &str,
) -> Result<Vec<Vec<f64>>, ConfigError> {
    match v.len() {
        1 => Ok(vec![v[0].clone(); levels]),
        n if n == levels => Ok(v.to_vec()),
        n => Err(format!(
            "MODEL.ANCHOR_GENERATOR.{what} has {n} lists for {levels} feature levels"
        )
        .into()),
    }
}

impl AnchorGenerator {
    pub fn new(
        sizes: &[Vec<f64>],
        aspect_ratios: &[Vec<f64>],
        strides: &[usize],
        offset: f64,
    ) -> Result<Self, ConfigError> {
        let sizes = broadcast_levels(sizes, strides.len(), "SIZES")?;
        let ratios = broadcast_levels(aspect_ratios, strides.len(), "ASPECT_RATIOS")?;
        let cell_anchors = sizes
            .iter()
            .zip(&ratios)
            .map(|(ss, rr)| {
                let mut cells = Vec::new();
                for &size in ss {
                    for &r in rr {
                        // Area size^2, h / w = r.
                        let w = (size * size / r).sqrt();
                        let h = r * w;
                        cells.push([
                            (-w / 2.0) as f32,
                            (-h / 2.0) as f32,
                            (w / 2.0) as f32,
                            (h / 2.0) as f32,
                        ]);
                    }
                }
                cells
            })
            .collect();
        Ok(Self {
            cell_anchors,
            strides: strides.to_vec(),
            offset: offset as f32,
        })
    }

    pub fn from_config(cfg: &Config, strides: &[usize]) -> Result<Self, ConfigError> {
        let a = &cfg.model.anchor_generator;
        Self::new(&a.sizes, &a.aspect_ratios, strides, a.offset)
    }

    /// Anchors per position on each level.
    pub fn num_cell_anchors(&self) -> Vec<usize> {
        self.cell_anchors.iter().map(|c| c.len()).collect()
    }

    /// All anchors for feature maps of the given (H, W) per level, concatenated by level.
    pub fn grid_anchors(&self, sizes: &[(usize, usize)]) -> Vec<Box4> {
        let mut out = Vec::new();
        for ((cells, &stride), &(h, w)) in self.cell_anchors.iter().zip(&self.strides).zip(sizes) {
            let s = stride as f32;
            for y in 0..h {
                for x in 0..w {
                    let (cx, cy) = ((x as f32 + self.offset) * s, (y as f32 + self.offset) * s);
                    for c in cells {
                        out.push([c[0] + cx, c[1] + cy, c[2] + cx, c[3] + cy]);
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anchors_by_hand() {
        let g =
            AnchorGenerator::new(&[vec![16.0, 32.0]], &[vec![1.0, 4.0]], &[8, 16], 0.5).unwrap();
        assert_eq!(g.num_cell_anchors(), vec![4, 4]);
        let a = g.grid_anchors(&[(2, 3), (1, 1)]);
        assert_eq!(a.len(), 2 * 3 * 4 + 4);
        // First position of level 0: centre (4, 4), size 16 square.
        assert_eq!(a[0], [-4.0, -4.0, 12.0, 12.0]);
        // Ratio 4 (h = 4 w) with area 16^2: w = 8, h = 32.
        assert_eq!(a[1], [0.0, -12.0, 8.0, 20.0]);
        // Second position (x = 1): shifted by the stride.
        assert_eq!(a[4], [4.0, -4.0, 20.0, 12.0]);
        // Level 1 starts after 24 anchors, centre (8, 8).
        assert_eq!(a[24], [0.0, 0.0, 16.0, 16.0]);
        assert!(
            AnchorGenerator::new(&[vec![1.0], vec![2.0]], &[vec![1.0]], &[8, 16, 32], 0.5).is_err()
        );
    }
}
