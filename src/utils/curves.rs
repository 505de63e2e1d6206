//! Line plots of training curves: panels side by side, each with its own y range, train
//! and validation series in the palette's colours, dots on every point (an epoch is a
//! point, and a short run has few).

use image::{Rgb, RgbImage};
use imageproc::drawing::{draw_filled_rect_mut, draw_hollow_rect_mut, draw_line_segment_mut};
use imageproc::rect::Rect;

use super::visualizer::{draw_text, text_size, BLACK, GRAY, PALETTE, WHITE};

/// One series: (x, y) points in x order.
#[derive(Debug, Clone)]
pub struct Curve {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

impl Curve {
    pub fn new(label: &str, points: Vec<(f64, f64)>) -> Self {
        Self {
            label: label.to_string(),
            points: points.into_iter().filter(|p| p.1.is_finite()).collect(),
        }
    }
}

const PANEL: (u32, u32) = (560, 420);

/// `panels`: (y-axis title, curves). Empty curves are left out; a panel without points
/// shows its axes only.
pub fn plot_training_curves(panels: &[(String, Vec<Curve>)], x_label: &str) -> RgbImage {
    let n = panels.len().max(1) as u32;
    let mut img = RgbImage::from_pixel(PANEL.0 * n, PANEL.1, WHITE);
    let x_max = panels
        .iter()
        .flat_map(|(_, cs)| cs.iter().flat_map(|c| c.points.iter().map(|p| p.0)))
        .fold(0.0f64, f64::max)
        .max(1.0);
    for (i, (title, curves)) in panels.iter().enumerate() {
        draw_panel(
            &mut img,
            i as i32 * PANEL.0 as i32,
            title,
            curves,
            x_label,
            x_max,
        );
    }
    img
}

/// A y range that shows every point with a margin, never empty.
fn y_range(curves: &[Curve]) -> (f64, f64) {
    let ys = curves.iter().flat_map(|c| c.points.iter().map(|p| p.1));
    let (lo, hi) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), y| {
        (l.min(y), h.max(y))
    });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.08).max(1e-3 * hi.abs().max(1.0));
    let lo = if lo >= 0.0 && lo - pad < 0.0 {
        0.0
    } else {
        lo - pad
    };
    (lo, hi + pad)
}

/// Round tick positions in `[lo, hi]`: multiples of 1, 2 or 5 times a power of ten,
/// about five of them, with the decimals their step needs.
fn ticks(lo: f64, hi: f64) -> Vec<(f64, String)> {
    let raw = ((hi - lo) / 5.0).max(1e-12);
    let mag = 10f64.powf(raw.log10().floor());
    let span = (hi - lo).max(1e-12);
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .min_by(|a, b| (span / a - 5.0).abs().total_cmp(&(span / b - 5.0).abs()))
        .unwrap_or(mag);
    let decimals = (-step.log10().floor()).max(0.0) as usize;
    let mut out = Vec::new();
    let mut k = (lo / step).ceil();
    while k * step <= hi + step * 1e-9 {
        let v = k * step;
        out.push((v, format!("{v:.decimals$}")));
        k += 1.0;
    }
    out
}

fn draw_panel(
    img: &mut RgbImage,
    x0: i32,
    title: &str,
    curves: &[Curve],
    x_label: &str,
    x_max: f64,
) {
    let (left, right, top, bottom) = (70i32, 20i32, 40i32, 56i32);
    let (pw, ph) = (PANEL.0 as i32 - left - right, PANEL.1 as i32 - top - bottom);
    let (y_lo, y_hi) = y_range(curves);
    let to_px = |x: f64, y: f64| -> (f32, f32) {
        (
            (x0 + left) as f32 + (x / x_max).clamp(0.0, 1.0) as f32 * pw as f32,
            (top + ph) as f32 - ((y - y_lo) / (y_hi - y_lo)).clamp(0.0, 1.0) as f32 * ph as f32,
        )
    };
    for (xv, xt) in ticks(0.0, x_max) {
        let (x, _) = to_px(xv, y_lo);
        draw_line_segment_mut(img, (x, top as f32), (x, (top + ph) as f32), GRAY);
        let (tw, _) = text_size(&xt, 13.0);
        draw_text(
            img,
            x as i32 - tw as i32 / 2,
            top + ph + 5,
            &xt,
            13.0,
            BLACK,
        );
    }
    for (yv, yt) in ticks(y_lo, y_hi) {
        let (_, y) = to_px(0.0, yv);
        let (l, r) = ((x0 + left) as f32, (x0 + left + pw) as f32);
        draw_line_segment_mut(img, (l, y), (r, y), GRAY);
        let (tw, th) = text_size(&yt, 13.0);
        let (tx, ty) = (x0 + left - tw as i32 - 5, y as i32 - th as i32 / 2);
        draw_text(img, tx, ty, &yt, 13.0, BLACK);
    }
    draw_hollow_rect_mut(
        img,
        Rect::at(x0 + left, top).of_size(pw as u32, ph as u32),
        BLACK,
    );
    let (tw, _) = text_size(title, 18.0);
    draw_text(
        img,
        x0 + (PANEL.0 as i32 - tw as i32) / 2,
        10,
        title,
        18.0,
        BLACK,
    );
    let (xw, _) = text_size(x_label, 15.0);
    draw_text(
        img,
        x0 + left + pw / 2 - xw as i32 / 2,
        top + ph + 26,
        x_label,
        15.0,
        BLACK,
    );
    let mut legend = 0;
    for (ci, c) in curves.iter().enumerate() {
        if c.points.is_empty() {
            continue;
        }
        let color: Rgb<u8> = PALETTE[ci % PALETTE.len()];
        for pair in c.points.windows(2) {
            let (a, b) = (to_px(pair[0].0, pair[0].1), to_px(pair[1].0, pair[1].1));
            for off in [-1.0f32, 0.0, 1.0] {
                draw_line_segment_mut(img, (a.0, a.1 + off), (b.0, b.1 + off), color);
            }
        }
        for &(x, y) in &c.points {
            let (px, py) = to_px(x, y);
            draw_filled_rect_mut(
                img,
                Rect::at(px as i32 - 3, py as i32 - 3).of_size(7, 7),
                color,
            );
        }
        let (lx, ly) = (x0 + left + pw - 110, top + 10 + legend * 22);
        draw_filled_rect_mut(img, Rect::at(lx, ly + 5).of_size(22, 6), color);
        draw_text(img, lx + 28, ly - 2, &c.label, 15.0, BLACK);
        legend += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_land_where_their_values_say() {
        let train = Curve::new("train", vec![(1.0, 0.0), (2.0, 1.0)]);
        let img = plot_training_curves(&[("loss".into(), vec![train])], "epoch");
        assert_eq!(img.dimensions(), (560, 420));
        // y range [0, 1.08]: the point (2, 1) is at the right edge, 1/1.08 of the height up.
        let (x, y) = (70.0 + 470.0, 40.0 + 324.0 - 324.0 / 1.08);
        assert_eq!(*img.get_pixel(x as u32 - 1, y as u32), PALETTE[0]);
        // The (1, 0) point sits on the bottom axis, half way.
        assert_eq!(*img.get_pixel(70 + 235, 40 + 324 - 2), PALETTE[0]);
        assert_eq!(y_range(&[]), (0.0, 1.0));
        assert_eq!(Curve::new("x", vec![(1.0, f64::NAN)]).points.len(), 0);
        let t: Vec<String> = ticks(0.0, 1.08).into_iter().map(|t| t.1).collect();
        assert_eq!(t, ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"]);
        let t: Vec<String> = ticks(0.35, 1.05).into_iter().map(|t| t.1).collect();
        assert_eq!(t, ["0.4", "0.6", "0.8", "1.0"]);
        assert_eq!(ticks(0.0, 4.0).len(), 5);
    }
}
