//! Pictures: detections drawn on images, and precision/recall curves, as PNG.
//!
//! Text is drawn with an embedded TrueType font (DejaVu Sans Bold, licence in
//! `assets/fonts/`), anti-aliased and readable at any size.

use std::sync::LazyLock;

use ab_glyph::{FontRef, PxScale};
use image::{Rgb, RgbImage};
use imageproc::drawing::{
    draw_filled_rect_mut, draw_hollow_rect_mut, draw_line_segment_mut, draw_text_mut,
};
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

/// The label font, compiled into the binary so that drawing needs no file at run time.
static FONT_BYTES: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans-Bold.ttf");

fn font() -> &'static FontRef<'static> {
    static FONT: LazyLock<FontRef<'static>> = LazyLock::new(|| {
        FontRef::try_from_slice(FONT_BYTES).expect("the embedded DejaVu Sans Bold parses")
    });
    &FONT
}

/// Pixel size (width, line height) of `text` drawn `px` pixels high.
pub fn text_size(text: &str, px: f32) -> (u32, u32) {
    imageproc::drawing::text_size(PxScale::from(px), font(), text)
}

/// Anti-aliased text whose line box starts at (x, y); `px` is the font size in pixels.
pub fn draw_text(img: &mut RgbImage, x: i32, y: i32, text: &str, px: f32, color: Rgb<u8>) {
    draw_text_mut(img, color, x, y, PxScale::from(px), font(), text);
}

/// Text on a filled background box, kept inside the image.
pub fn draw_label(
    img: &mut RgbImage,
    x: i32,
    y: i32,
    text: &str,
    px: f32,
    fg: Rgb<u8>,
    bg: Rgb<u8>,
) {
    let (w, h) = text_size(text, px);
    let pad = (px / 8.0).ceil() as u32;
    let (bw, bh) = (w + 2 * pad, h + 2 * pad);
    let x = x.clamp(0, (img.width() as i32 - bw as i32).max(0));
    let y = y.clamp(0, (img.height() as i32 - bh as i32).max(0));
    draw_filled_rect_mut(img, Rect::at(x, y).of_size(bw, bh), bg);
    draw_text(img, x + pad as i32, y + pad as i32, text, px, fg);
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

/// Black or white, whichever reads better on `bg` (by its luma, ITU-R BT.601).
pub fn text_color_on(bg: Rgb<u8>) -> Rgb<u8> {
    let [r, g, b] = bg.0.map(f32::from);
    if 0.299 * r + 0.587 * g + 0.114 * b > 140.0 {
        BLACK
    } else {
        WHITE
    }
}

/// The label size for an image: about 1/40 of the short side, at least 14 px so that it
/// stays legible on small images and at most 40 px so that it does not hide the objects.
pub fn label_px(img: &RgbImage) -> f32 {
    (img.width().min(img.height()) as f32 / 40.0).clamp(14.0, 40.0)
}

/// Draws the boxes scoring at least `threshold`, lowest first so that the most confident
/// boxes and labels end up on top; line width and text size grow with the image.
pub fn draw_labeled_boxes(img: &mut RgbImage, boxes: &[LabeledBox], threshold: f64) {
    let short = img.width().min(img.height());
    let thickness = (short / 250).clamp(2, 6);
    let px = label_px(img);
    let mut sorted: Vec<&LabeledBox> = boxes.iter().filter(|d| d.score >= threshold).collect();
    sorted.sort_by(|a, b| a.score.total_cmp(&b.score));
    for d in sorted {
        let [x, y, _, _] = d.xywh;
        draw_box(img, d.xywh, d.color, thickness);
        let (_, th) = text_size(&d.label, px);
        let pad = (px / 8.0).ceil() as i32;
        draw_label(
            img,
            x as i32,
            y as i32 - th as i32 - 2 * pad,
            &d.label,
            px,
            text_color_on(d.color),
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
        let (tw, th) = text_size(&tick, 14.0);
        draw_text(
            &mut img,
            x as i32 - tw as i32 / 2,
            top + ph + 6,
            &tick,
            14.0,
            BLACK,
        );
        draw_text(
            &mut img,
            left - tw as i32 - 6,
            y as i32 - th as i32 / 2,
            &tick,
            14.0,
            BLACK,
        );
    }
    draw_hollow_rect_mut(
        &mut img,
        Rect::at(left, top).of_size(pw as u32, ph as u32),
        BLACK,
    );
    let (rw, _) = text_size("Recall", 18.0);
    draw_text(
        &mut img,
        left + pw / 2 - rw as i32 / 2,
        top + ph + 30,
        "Recall",
        18.0,
        BLACK,
    );
    for (i, ch) in "Precision".chars().enumerate() {
        let (cw, _) = text_size(&ch.to_string(), 18.0);
        draw_text(
            &mut img,
            18 - cw as i32 / 2,
            top + ph / 2 - 90 + i as i32 * 20,
            &ch.to_string(),
            18.0,
            BLACK,
        );
    }
    let (tw, _) = text_size(title, 20.0);
    draw_text(&mut img, (w as i32 - tw as i32) / 2, 14, title, 20.0, BLACK);
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
        draw_text(&mut img, lx + 32, ly - 3, &s.label, 16.0, BLACK);
    }
    img
}
