//! Geometric and photometric augmentations that move boxes with the pixels.
//!
//! Boxes are continuous XYXY pixel coordinates (a pixel spans [x, x+1)), as in
//! Detectron2: a horizontal flip maps x to `W - x`, a resize scales by `new / old`.

use image::RgbImage;

use super::rng::SampleRng;
use super::transforms::resize_bilinear;
pub use crate::structures::Instances;

/// Crops to `roi = [x0, y0, x1, y1]` (integers inside the image). Boxes whose centre is
/// not strictly inside the roi are dropped, the others clipped to it and shifted;
/// boxes left less than 1 px wide or high are dropped.
pub fn crop(img: &RgbImage, inst: &mut Instances, roi: [u32; 4]) -> RgbImage {
    let [x0, y0, x1, y1] = roi;
    let out = image::imageops::crop_imm(img, x0, y0, x1 - x0, y1 - y0).to_image();
    let (fx0, fy0, fx1, fy1) = (x0 as f32, y0 as f32, x1 as f32, y1 as f32);
    let keep: Vec<bool> = inst
        .boxes
        .iter_mut()
        .map(|b| {
            let cx = 0.5 * (b[0] + b[2]);
            let cy = 0.5 * (b[1] + b[3]);
            if !(cx > fx0 && cx < fx1 && cy > fy0 && cy < fy1) {
                return false;
            }
            *b = [
                b[0].clamp(fx0, fx1) - fx0,
                b[1].clamp(fy0, fy1) - fy0,
                b[2].clamp(fx0, fx1) - fx0,
                b[3].clamp(fy0, fy1) - fy0,
            ];
            b[2] - b[0] >= 1.0 && b[3] - b[1] >= 1.0
        })
        .collect();
    inst.retain(&keep);
    out
}

pub fn hflip(img: &RgbImage, inst: &mut Instances) -> RgbImage {
    let w = img.width() as f32;
    for b in inst.boxes.iter_mut() {
        *b = [w - b[2], b[1], w - b[0], b[3]];
    }
    image::imageops::flip_horizontal(img)
}

pub fn resize(img: &RgbImage, inst: &mut Instances, new_w: u32, new_h: u32) -> RgbImage {
    let sx = new_w as f32 / img.width() as f32;
    let sy = new_h as f32 / img.height() as f32;
    for b in inst.boxes.iter_mut() {
        *b = [b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy];
    }
    if (new_w, new_h) == img.dimensions() {
        return img.clone();
    }
    resize_bilinear(img, new_w as usize, new_h as usize)
}

/// torchvision's `RandomResizedCrop.get_params`: up to 10 tries of an area fraction
/// uniform in `scale` and an aspect ratio log-uniform in `ratio`, sides rounded
/// (`int(round(...))`), kept when the crop fits; else the center crop of the image clamped
/// to the ratio range. Returns `[x0, y0, x1, y1]`.
pub fn random_resized_crop_roi(
    w: u32,
    h: u32,
    scale: [f64; 2],
    ratio: [f64; 2],
    rng: &mut SampleRng,
) -> [u32; 4] {
    let uniform = |rng: &mut SampleRng, lo: f64, hi: f64| {
        if hi > lo {
            rng.uniform(lo as f32, hi as f32) as f64
        } else {
            lo
        }
    };
    let area = w as f64 * h as f64;
    let (log_lo, log_hi) = (ratio[0].ln(), ratio[1].ln());
    for _ in 0..10 {
        let target = area * uniform(rng, scale[0], scale[1]);
        let aspect = uniform(rng, log_lo, log_hi).exp();
        let cw = (target * aspect).sqrt().round() as u32;
        let ch = (target / aspect).sqrt().round() as u32;
        if cw > 0 && ch > 0 && cw <= w && ch <= h {
            let y0 = rng.below((h - ch + 1) as usize) as u32;
            let x0 = rng.below((w - cw + 1) as usize) as u32;
            return [x0, y0, x0 + cw, y0 + ch];
        }
    }
    let in_ratio = w as f64 / h as f64;
    let (cw, ch) = if in_ratio < ratio[0] {
        (w, ((w as f64 / ratio[0]).round() as u32).clamp(1, h))
    } else if in_ratio > ratio[1] {
        (((h as f64 * ratio[1]).round() as u32).clamp(1, w), h)
    } else {
        (w, h)
    };
    let (x0, y0) = ((w - cw) / 2, (h - ch) / 2);
    [x0, y0, x0 + cw, y0 + ch]
}

/// Pads right and bottom to a square filled with `fill`; boxes are unchanged.
pub fn pad_to_square(img: &RgbImage, fill: [u8; 3]) -> RgbImage {
    let (w, h) = img.dimensions();
    let s = w.max(h);
    if w == h {
        return img.clone();
    }
    let mut out = RgbImage::from_pixel(s, s, image::Rgb(fill));
    image::imageops::replace(&mut out, img, 0, 0);
    out
}

/// Detectron2's `ResizeShortestEdge` output size: the short side becomes `short`, unless
/// the long side would then exceed `max_size` (0: no limit).
pub fn shortest_edge_size(w: u32, h: u32, short: usize, max_size: usize) -> (u32, u32) {
    let (w, h) = (w as f64, h as f64);
    let mut scale = short as f64 / w.min(h);
    if max_size > 0 && w.max(h) * scale > max_size as f64 {
        scale = max_size as f64 / w.max(h);
    }
    ((w * scale + 0.5) as u32, (h * scale + 0.5) as u32)
}

/// RetinaFace's random square crop: up to 250 tries of a square whose side is a random
/// `scales` fraction of the short side, accepted when at least one trainable box lies
/// fully inside and some trainable box keeps its centre inside. `None` when every try
/// failed (the caller then pads the whole image to a square instead).
pub fn random_square_crop(
    w: u32,
    h: u32,
    inst: &Instances,
    scales: &[f64],
    rng: &mut SampleRng,
) -> Option<[u32; 4]> {
    let short = w.min(h);
    let trainable: Vec<&[f32; 4]> = inst
        .boxes
        .iter()
        .zip(&inst.ignore)
        .filter(|(_, &ig)| !ig)
        .map(|(b, _)| b)
        .collect();
    for _ in 0..250 {
        let s = scales[rng.below(scales.len())];
        let side = ((s * short as f64) as u32).max(1);
        let l = if w > side {
            rng.below((w - side) as usize) as u32
        } else {
            0
        };
        let t = if h > side {
            rng.below((h - side) as usize) as u32
        } else {
            0
        };
        let roi = [l, t, l + side, t + side];
        if trainable.is_empty() {
            return Some(roi);
        }
        let r = roi.map(|v| v as f32);
        let fully_inside = trainable
            .iter()
            .any(|b| b[0] >= r[0] && b[1] >= r[1] && b[2] <= r[2] && b[3] <= r[3]);
        if !fully_inside {
            continue;
        }
        let centre_inside = trainable.iter().any(|b| {
            let cx = 0.5 * (b[0] + b[2]);
            let cy = 0.5 * (b[1] + b[3]);
            cx > r[0] && cx < r[2] && cy > r[1] && cy < r[3]
        });
        if centre_inside {
            return Some(roi);
        }
    }
    None
}

/// SSD's photometric distortion: random brightness, then contrast before or after a
/// random saturation and hue shift (each applied with probability 1/2).
pub fn photometric_distort(img: &mut RgbImage, rng: &mut SampleRng) {
    let brightness = rng.coin().then(|| rng.uniform(-32.0, 32.0));
    let contrast_first = rng.coin();
    let contrast = rng.coin().then(|| rng.uniform(0.5, 1.5));
    let saturation = rng.coin().then(|| rng.uniform(0.5, 1.5));
    let hue = rng.coin().then(|| rng.uniform(-36.0, 36.0));
    for p in img.pixels_mut() {
        let mut c = [p[0] as f32, p[1] as f32, p[2] as f32];
        if let Some(b) = brightness {
            c = c.map(|v| (v + b).clamp(0.0, 255.0));
        }
        if contrast_first {
            if let Some(a) = contrast {
                c = c.map(|v| (v * a).clamp(0.0, 255.0));
            }
        }
        if saturation.is_some() || hue.is_some() {
            let (mut hh, mut s, v) = rgb_to_hsv(c);
            if let Some(k) = saturation {
                s = (s * k).clamp(0.0, 1.0);
            }
            if let Some(d) = hue {
                hh += d;
                if hh < 0.0 {
                    hh += 360.0;
                } else if hh >= 360.0 {
                    hh -= 360.0;
                }
            }
            c = hsv_to_rgb(hh, s, v);
        }
        if !contrast_first {
            if let Some(a) = contrast {
                c = c.map(|v| (v * a).clamp(0.0, 255.0));
            }
        }
        *p = image::Rgb(c.map(|v| (v.clamp(0.0, 255.0) + 0.5) as u8));
    }
}

fn rgb_to_hsv(c: [f32; 3]) -> (f32, f32, f32) {
    let [r, g, b] = c;
    let max = r.max(g).max(b);
    let min = r.min(g).min(b);
    let d = max - min;
    let h = if d == 0.0 {
        0.0
    } else if max == r {
        let t = (g - b) / d;
        60.0 * if t < 0.0 { t + 6.0 } else { t }
    } else if max == g {
        60.0 * ((b - r) / d + 2.0)
    } else {
        60.0 * ((r - g) / d + 4.0)
    };
    let s = if max == 0.0 { 0.0 } else { d / max };
    (h, s, max)
}

fn hsv_to_rgb(h: f32, s: f32, v: f32) -> [f32; 3] {
    let c = v * s;
    let hp = h / 60.0;
    let x = c * (1.0 - ((hp - 2.0 * (hp * 0.5).floor()) - 1.0).abs());
    let (r, g, b) = match hp as u32 {
        0 => (c, x, 0.0),
        1 => (x, c, 0.0),
        2 => (0.0, c, x),
        3 => (0.0, x, c),
        4 => (x, 0.0, c),
        _ => (c, 0.0, x),
    };
    let m = v - c;
    [r + m, g + m, b + m]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_resized_crop_follows_torchvision_bounds_and_fallback() {
        let mut rng = SampleRng::new(3);
        let (w, h) = (200u32, 120u32);
        for _ in 0..500 {
            let [x0, y0, x1, y1] =
                random_resized_crop_roi(w, h, [0.08, 1.0], [0.75, 4.0 / 3.0], &mut rng);
            assert!(x1 <= w && y1 <= h && x0 < x1 && y0 < y1);
            let (cw, ch) = ((x1 - x0) as f64, (y1 - y0) as f64);
            // Sides are rounded: area and ratio within the ranges up to a pixel.
            let area = cw * ch / (w as f64 * h as f64);
            assert!(area > 0.08 * 0.9 && area <= 1.0, "{area}");
            let ratio = cw / ch;
            assert!(ratio > 0.75 * 0.95 && ratio < 4.0 / 3.0 * 1.05, "{ratio}");
        }
        // A ratio no crop of the whole area can have: torchvision's fallback, the center
        // crop clamped to the ratio range (200 x 120 is 1.67 > 4/3: height kept, width 160).
        let roi = random_resized_crop_roi(w, h, [1.0, 1.0], [0.75, 4.0 / 3.0], &mut rng);
        assert_eq!(roi, [20, 0, 180, 120]);
        // Inside the range, the whole image up to the rounding of a drawn ratio.
        let [x0, y0, x1, y1] =
            random_resized_crop_roi(120, 100, [1.0, 1.0], [0.75, 4.0 / 3.0], &mut rng);
        assert!((x1 - x0) * (y1 - y0) >= 118 * 100, "{:?}", [x0, y0, x1, y1]);
    }

    fn inst(boxes: &[[f32; 4]]) -> Instances {
        Instances {
            boxes: boxes.to_vec(),
            classes: (0..boxes.len()).collect(),
            ignore: vec![false; boxes.len()],
        }
    }

    #[test]
    fn crop_clips_shifts_and_drops_by_centre() {
        let img = RgbImage::new(100, 80);
        let mut i = inst(&[
            [10.0, 10.0, 30.0, 30.0], // centre (20, 20): inside, fully
            [45.0, 5.0, 75.0, 25.0],  // centre (60, 15): inside, clipped at x=70
            [0.0, 0.0, 12.0, 12.0],   // centre (6, 6): outside -> dropped
            [60.0, 60.0, 90.0, 79.0], // centre (75, 69.5): outside -> dropped
        ]);
        let out = crop(&img, &mut i, [8, 4, 70, 60]);
        assert_eq!(out.dimensions(), (62, 56));
        assert_eq!(
            i.boxes,
            vec![[2.0, 6.0, 22.0, 26.0], [37.0, 1.0, 62.0, 21.0]]
        );
        assert_eq!(i.classes, vec![0, 1]);
    }

    #[test]
    fn flip_and_resize_move_boxes_with_pixels() {
        let mut img = RgbImage::new(10, 4);
        img.put_pixel(1, 2, image::Rgb([255, 0, 0]));
        let mut i = inst(&[[1.0, 2.0, 2.0, 3.0]]);
        let f = hflip(&img, &mut i);
        assert_eq!(i.boxes[0], [8.0, 2.0, 9.0, 3.0]);
        assert_eq!(
            f.get_pixel(8, 2)[0],
            255,
            "the box still covers the red pixel"
        );
        let r = resize(&f, &mut i, 20, 2);
        assert_eq!(r.dimensions(), (20, 2));
        assert_eq!(i.boxes[0], [16.0, 1.0, 18.0, 1.5]);
    }

    #[test]
    fn shortest_edge_follows_detectron2() {
        assert_eq!(shortest_edge_size(1024, 768, 640, 1333), (853, 640));
        assert_eq!(shortest_edge_size(2000, 500, 640, 1333), (1333, 333));
        assert_eq!(shortest_edge_size(500, 2000, 800, 0), (800, 3200));
    }

    #[test]
    fn square_crop_keeps_a_whole_face() {
        let mut rng = SampleRng::new(3);
        let i = inst(&[[300.0, 200.0, 340.0, 250.0]]);
        for _ in 0..50 {
            let roi =
                random_square_crop(640, 480, &i, &[0.3, 0.45, 0.6, 0.8, 1.0], &mut rng).unwrap();
            assert_eq!(roi[2] - roi[0], roi[3] - roi[1]);
            assert!(roi[0] <= 300 && roi[1] <= 200 && roi[2] >= 340 && roi[3] >= 250);
            assert!(roi[2] <= 640 && roi[3] <= 480);
        }
        // A face larger than any crop: no crop can hold it whole.
        let big = inst(&[[0.0, 0.0, 640.0, 480.0]]);
        assert!(random_square_crop(640, 480, &big, &[0.3], &mut rng).is_none());
    }

    #[test]
    fn hsv_round_trip() {
        for c in [
            [10.0, 200.0, 30.0],
            [255.0, 255.0, 255.0],
            [0.0, 0.0, 0.0],
            [120.0, 40.0, 250.0],
        ] {
            let (h, s, v) = rgb_to_hsv(c);
            let back = hsv_to_rgb(h, s, v);
            for k in 0..3 {
                assert!((back[k] - c[k]).abs() < 1e-3, "{c:?} -> {back:?}");
            }
        }
    }
}
