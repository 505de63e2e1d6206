//! Pictures: detections drawn on images, and precision/recall curves, as PNG.
//!
//! Text uses an embedded 8x8 bitmap font scaled up, so no font file is needed at run time.

use font8x8::{UnicodeFonts, BASIC_FONTS};
use image::{Rgb, RgbImage};
use imageproc::drawing::{draw_filled_rect_mut, draw_hollow_rect_mut, draw_line_segment_mut};
use imageproc::rect::Rect;

pub const WHITE: Rgb<u8> = Rgb([255, 255, 255]);
pub const BLACK: Rgb<u8> = Rgb([0, 0, 0]);
pub const GRAY: Rgb<u8> = Rgb([200, 200, 200]);
/// Colours for curves and classes (matplotlib's first four).
pub const PALETTE: [Rgb<u8>; 4] = [
    Rgb([31, 119, 180]),
    Rgb([255, 127, 14]),
    Rgb([44, 160, 44]),
    Rgb([214, 39, 40]),
];

/// Pixel size of `text` at `scale` (each font pixel becomes `scale` x `scale`).
pub fn text_size(text: &str, scale: u32) -> (u32, u32) {
    (text.chars().count() as u32 * 8 * scale, 8 * scale)
}

pub fn draw_text(img: &mut RgbImage, x: i32, y: i32, text: &str, scale: u32, color: Rgb<u8>) {
    let scale = scale.max(1) as i32;
    for (i, ch) in text.chars().enumerate() {
        let Some(glyph) = BASIC_FONTS.get(ch).or_else(|| BASIC_FONTS.get('?')) else {
            continue;
        };
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..8 {
                if bits & (1 << col) == 0 {
                    continue;
                }
                let px = x + (i as i32 * 8 + col) * scale;
                let py = y + row as i32 * scale;
                for dy in 0..scale {
                    for dx in 0..scale {
                        let (qx, qy) = (px + dx, py + dy);
                        if qx >= 0
                            && qy >= 0
                            && (qx as u32) < img.width()
                            && (qy as u32) < img.height()
                        {
                            img.put_pixel(qx as u32, qy as u32, color);
                        }
                    }
                }
            }
        }
    }
}

/// Text on a filled background box, kept inside the image.
pub fn draw_label(
    img: &mut RgbImage,
    x: i32,
    y: i32,
    text: &str,
    scale: u32,
    fg: Rgb<u8>,
    bg: Rgb<u8>,
) {
    let (w, h) = text_size(text, scale);
    let x = x.clamp(0, (img.width() as i32 - w as i32 - 2).max(0));
    let y = y.clamp(0, (img.height() as i32 - h as i32 - 2).max(0));
    draw_filled_rect_mut(img, Rect::at(x, y).of_size(w + 2, h + 2), bg);
    draw_text(img, x + 1, y + 1, text, scale, fg);
}

/// A box outline `thickness` pixels wide; (x, y, w, h) in pixels.
pub fn draw_box(img: &mut RgbImage, b: [f64; 4], color: Rgb<u8>, thickness: u32) {
    for t in 0..thickness as i32 {
        let (w, h) = (
            (b[2].round() as i32 - 2 * t).max(1),
            (b[3].round() as i32 - 2 * t).max(1),
        );
        draw_hollow_rect_mut(
            img,
            Rect::at(b[0].round() as i32 + t, b[1].round() as i32 + t).of_size(w as u32, h as u32),
            color,
        );
    }
}

/// Draws detections (x, y, w, h, score) at or above `threshold`, each with its score.
pub fn draw_detections(img: &mut RgbImage, dets: &[[f64; 5]], threshold: f64, color: Rgb<u8>) {
    let labeled: Vec<LabeledBox> = dets
        .iter()
        .map(|d| LabeledBox {
            xywh: [d[0], d[1], d[2], d[3]],
            score: d[4],
            label: format!("{:.2}", d[4]),
            color,
        })
        .collect();
    draw_labeled_boxes(img, &labeled, threshold);
}

/// A box (x, y, w, h) to draw with its label text and colour.
pub struct LabeledBox {
    pub xywh: [f64; 4],
    pub score: f64,
    pub label: String,
    pub color: Rgb<u8>,
}

/// Draws the boxes scoring at least `threshold`, lowest first so that the most confident
/// boxes and labels end up on top; line width and text size grow with the image.
pub fn draw_labeled_boxes(img: &mut RgbImage, boxes: &[LabeledBox], threshold: f64) {
    let short = img.width().min(img.height());
    let thickness = (short / 250).clamp(2, 6);
    let scale = (short / 256).clamp(2, 4);
    let mut sorted: Vec<&LabeledBox> = boxes.iter().filter(|d| d.score >= threshold).collect();
    sorted.sort_by(|a, b| a.score.total_cmp(&b.score));
    for d in sorted {
        let [x, y, _, _] = d.xywh;
        draw_box(img, d.xywh, d.color, thickness);
        let (_, th) = text_size(&d.label, scale);
        draw_label(
            img,
            x as i32,
            y as i32 - th as i32 - 2,
            &d.label,
            scale,
            BLACK,
            d.color,
        );
    }
}

/// One curve of a precision/recall plot.
pub struct Series<'a> {
    pub label: String,
    pub recall: &'a [f64],
    pub precision: &'a [f64],
}

/// Precision (y) against recall (x) on [0, 1]^2 with grid, axis labels, title and a
/// legend, as the official WIDER FACE plots show them.
pub fn plot_pr_curves(series: &[Series], title: &str) -> RgbImage {
    let (w, h) = (800u32, 640u32);
    let (left, right, top, bottom) = (80i32, 30i32, 50i32, 70i32);
    let (pw, ph) = (w as i32 - left - right, h as i32 - top - bottom);
    let mut img = RgbImage::from_pixel(w, h, WHITE);
    let to_px = |r: f64, p: f64| -> (f32, f32) {
        (
            left as f32 + (r.clamp(0.0, 1.0) * pw as f64) as f32,
            (top + ph) as f32 - (p.clamp(0.0, 1.0) * ph as f64) as f32,
        )
    };
    for i in 0..=10 {
        let v = i as f64 / 10.0;
        let (x, _) = to_px(v, 0.0);
        let (_, y) = to_px(0.0, v);
        draw_line_segment_mut(&mut img, (x, top as f32), (x, (top + ph) as f32), GRAY);
        draw_line_segment_mut(&mut img, (left as f32, y), ((left + pw) as f32, y), GRAY);
        let tick = format!("{v:.1}");
        draw_text(&mut img, x as i32 - 12, top + ph + 8, &tick, 1, BLACK);
        draw_text(&mut img, left - 32, y as i32 - 4, &tick, 1, BLACK);
    }
    draw_hollow_rect_mut(
        &mut img,
        Rect::at(left, top).of_size(pw as u32, ph as u32),
        BLACK,
    );
    draw_text(
        &mut img,
        left + pw / 2 - 48,
        top + ph + 30,
        "Recall",
        2,
        BLACK,
    );
    for (i, ch) in "Precision".chars().enumerate() {
        draw_text(
            &mut img,
            8,
            top + ph / 2 - 72 + i as i32 * 16,
            &ch.to_string(),
            2,
            BLACK,
        );
    }
    let (tw, _) = text_size(title, 2);
    draw_text(&mut img, (w as i32 - tw as i32) / 2, 14, title, 2, BLACK);
    for (si, s) in series.iter().enumerate() {
        let color = PALETTE[si % PALETTE.len()];
        let mut pts: Vec<(f64, f64)> = s
            .recall
            .iter()
            .copied()
            .zip(s.precision.iter().copied())
            .filter(|(r, _)| *r > 0.0)
            .collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        for pair in pts.windows(2) {
            let (a, b) = (to_px(pair[0].0, pair[0].1), to_px(pair[1].0, pair[1].1));
            for off in [-1.0f32, 0.0, 1.0] {
                draw_line_segment_mut(&mut img, (a.0, a.1 + off), (b.0, b.1 + off), color);
            }
        }
        // Bottom left: PR curves rarely pass there.
        let ly = top + ph - 14 - (series.len() - si) as i32 * 24;
        let lx = left + 14;
        draw_filled_rect_mut(&mut img, Rect::at(lx, ly + 4).of_size(24, 6), color);
        draw_text(&mut img, lx + 32, ly, &s.label, 2, BLACK);
    }
    img
}
