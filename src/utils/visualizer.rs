//! Pictures: detections drawn on images, precision/recall curves, confusion matrices and
//! captioned image grids, as PNG.
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

/// A confusion matrix as a heat map: rows are the true classes, columns the predicted
/// ones, each cell shaded by its share of the row (white to blue) and labelled with its
/// image count, so a class that is rare in the data is read as clearly as a common one.
pub fn plot_confusion_matrix(
    confusion: &[Vec<u64>],
    class_names: &[String],
    title: &str,
) -> RgbImage {
    let n = confusion.len().max(1);
    let cell = (480 / n as u32).clamp(28, 72);
    let px = (cell as f32 * 0.3).clamp(11.0, 18.0);
    let name_w = class_names
        .iter()
        .map(|c| text_size(c, px).0)
        .max()
        .unwrap_or(0);
    let (left, top) = (name_w as i32 + 40, 70i32);
    let (w, h) = (
        (left as u32 + cell * n as u32 + 20).max(360),
        top as u32 + cell * n as u32 + name_w + 40,
    );
    let mut img = RgbImage::from_pixel(w, h, WHITE);
    draw_text(&mut img, 10, 10, title, 18.0, BLACK);
    draw_text(&mut img, left, 40, "predicted", 14.0, BLACK);
    draw_text(&mut img, 10, 40, "true", 14.0, BLACK);
    for (r, row) in confusion.iter().enumerate() {
        let total: u64 = row.iter().sum();
        let y = top + (r as u32 * cell) as i32;
        let name = class_names.get(r).map(String::as_str).unwrap_or("?");
        let (tw, th) = text_size(name, px);
        draw_text(
            &mut img,
            left - 8 - tw as i32,
            y + (cell as i32 - th as i32) / 2,
            name,
            px,
            BLACK,
        );
        for (c, &v) in row.iter().enumerate() {
            let share = if total == 0 {
                0.0
            } else {
                v as f32 / total as f32
            };
            let shade = |full: f32| (255.0 - share * (255.0 - full)) as u8;
            let bg = Rgb([shade(31.0), shade(119.0), shade(180.0)]);
            let x = left + (c as u32 * cell) as i32;
            draw_filled_rect_mut(&mut img, Rect::at(x, y).of_size(cell, cell), bg);
            draw_hollow_rect_mut(&mut img, Rect::at(x, y).of_size(cell, cell), GRAY);
            let t = v.to_string();
            let (tw, th) = text_size(&t, px);
            draw_text(
                &mut img,
                x + (cell as i32 - tw as i32) / 2,
                y + (cell as i32 - th as i32) / 2,
                &t,
                px,
                text_color_on(bg),
            );
        }
    }
    // Column names below the matrix, one per line, under their column's left edge.
    for (c, name) in class_names.iter().enumerate().take(n) {
        let x = left + (c as u32 * cell) as i32;
        let y = top + (n as u32 * cell) as i32 + 6 + (c as i32 % 2) * (px as i32 + 4);
        draw_text(&mut img, x, y, name, px, BLACK);
    }
    img
}

/// Images as a grid of `tile` x `tile` thumbnails (aspect kept, letterboxed in grey), each
/// with a caption in its colour below: for looking at what a classifier got right and wrong.
pub fn image_grid(items: &[(RgbImage, String, Rgb<u8>)], cols: usize, tile: u32) -> RgbImage {
    let cols = cols.max(1);
    let rows = items.len().div_ceil(cols).max(1);
    let px = (tile as f32 / 9.0).clamp(10.0, 16.0);
    let caption = px as u32 + 8;
    let (cw, ch) = (tile + 8, tile + caption + 8);
    let mut img = RgbImage::from_pixel(cw * cols as u32, ch * rows as u32, WHITE);
    for (i, (thumb, text, color)) in items.iter().enumerate() {
        let (x0, y0) = ((i % cols) as u32 * cw + 4, (i / cols) as u32 * ch + 4);
        let scale = tile as f32 / thumb.width().max(thumb.height()).max(1) as f32;
        let (tw, th) = (
            ((thumb.width() as f32 * scale) as u32).max(1),
            ((thumb.height() as f32 * scale) as u32).max(1),
        );
        let small = image::imageops::resize(thumb, tw, th, image::imageops::FilterType::Triangle);
        draw_filled_rect_mut(
            &mut img,
            Rect::at(x0 as i32, y0 as i32).of_size(tile, tile),
            GRAY,
        );
        image::imageops::overlay(
            &mut img,
            &small,
            (x0 + (tile - tw) / 2) as i64,
            (y0 + (tile - th) / 2) as i64,
        );
        // The caption shrinks (down to 8 px) to fit under its thumbnail.
        let mut size = px;
        while size > 8.0 && text_size(text, size).0 + size as u32 / 2 > tile {
            size -= 1.0;
        }
        draw_label(
            &mut img,
            x0 as i32,
            (y0 + tile + 2) as i32,
            text,
            size,
            text_color_on(*color),
            *color,
        );
    }
    img
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confusion_cells_are_shaded_by_their_share_of_the_row() {
        let names = vec!["a".to_string(), "b".to_string()];
        let img = plot_confusion_matrix(&[vec![9, 1], vec![0, 4]], &names, "t");
        // Cells of 72 px (480 / 2, clamped) right of the names, 70 px from the top.
        let px = (72.0f32 * 0.3).clamp(11.0, 18.0);
        let left = text_size("a", px).0 + 40;
        let at = |r: u32, c: u32| *img.get_pixel(left + c * 72 + 3, 70 + r * 72 + 3);
        // A whole row's diagonal is the palette blue, an empty cell white, 1 of 10 light.
        assert_eq!(at(1, 1), Rgb([31, 119, 180]));
        assert_eq!(at(1, 0), WHITE);
        let light = at(0, 1);
        assert!(light.0[0] > 200 && light.0[0] < 255, "{light:?}");
        let grid = image_grid(&[(RgbImage::new(40, 20), "x".into(), BLACK)], 4, 32);
        assert_eq!(grid.dimensions(), (40 * 4, 32 + 18 + 8));
    }
}
