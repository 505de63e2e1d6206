//! A small float RGB canvas with the few primitives the face generator needs: shaded,
//! rotated ellipses with anti-aliased edges, rectangles, value noise and box blur.

use std::ops::Add;

use image::RgbImage;

pub type Rgb = [f32; 3];

/// An ellipse centred at (cx, cy) with semi-axes (a, b), rotated by `angle` (radians).
#[derive(Debug, Clone, Copy)]
pub struct Ellipse {
    pub cx: f32,
    pub cy: f32,
    pub a: f32,
    pub b: f32,
    pub angle: f32,
}

impl Ellipse {
    pub fn new(cx: f32, cy: f32, a: f32, b: f32, angle: f32) -> Self {
        Self {
            cx,
            cy,
            a,
            b,
            angle,
        }
    }
}

pub struct Canvas {
    pub w: usize,
    pub h: usize,
    pub px: Vec<Rgb>,
}

impl Canvas {
    pub fn new(w: usize, h: usize, c: Rgb) -> Self {
        Self {
            w,
            h,
            px: vec![c; w * h],
        }
    }

    #[inline]
    pub fn blend(&mut self, x: usize, y: usize, c: Rgb, alpha: f32) {
        let p = &mut self.px[y * self.w + x];
        for k in 0..3 {
            p[k] += (c[k] - p[k]) * alpha;
        }
    }

    /// Linear gradient from `c0` to `c1` along the direction `angle` (radians).
    pub fn gradient(&mut self, c0: Rgb, c1: Rgb, angle: f32) {
        let (dx, dy) = (angle.cos(), angle.sin());
        let span = (self.w as f32 * dx.abs() + self.h as f32 * dy.abs()).max(1.0);
        let off = (if dx < 0.0 { -dx * self.w as f32 } else { 0.0 })
            + (if dy < 0.0 { -dy * self.h as f32 } else { 0.0 });
        for y in 0..self.h {
            for x in 0..self.w {
                let t = ((x as f32 * dx + y as f32 * dy + off) / span).clamp(0.0, 1.0);
                self.px[y * self.w + x] = mix(c0, c1, t);
            }
        }
    }

    /// Multiplies brightness by smooth noise: a random grid of `cell` pixels, bilinearly
    /// interpolated, in `1 - amp ..= 1 + amp`.
    pub fn value_noise(&mut self, cell: usize, amp: f32, rng: &mut Xorshift) {
        let gw = self.w / cell + 2;
        let gh = self.h / cell + 2;
        let grid: Vec<f32> = (0..gw * gh).map(|_| rng.uniform(-amp, amp)).collect();
        let inv = 1.0 / cell as f32;
        for y in 0..self.h {
            let gy = y as f32 * inv;
            let (iy, fy) = (gy as usize, gy.fract());
            for x in 0..self.w {
                let gx = x as f32 * inv;
                let (ix, fx) = (gx as usize, gx.fract());
                let a = grid[iy * gw + ix] * (1.0 - fx) + grid[iy * gw + ix + 1] * fx;
                let b = grid[(iy + 1) * gw + ix] * (1.0 - fx) + grid[(iy + 1) * gw + ix + 1] * fx;
                let m = 1.0 + a * (1.0 - fy) + b * fy;
                let p = &mut self.px[y * self.w + x];
                for c in p.iter_mut() {
                    *c *= m;
                }
            }
        }
    }

    /// Calls `shader(u, v)` for every pixel whose centre lies within `extent` of the
    /// ellipse centred at (cx, cy) with semi-axes (a, b) rotated by `angle`; u and v are
    /// the pixel's coordinates in the ellipse's frame divided by a and b (the unit disc is
    /// the ellipse). `ss` x `ss` samples per pixel anti-alias small shapes.
    pub fn shade_ellipse(
        &mut self,
        e: Ellipse,
        (extent, ss): (f32, usize),
        shader: impl Fn(f32, f32) -> Option<(Rgb, f32)>,
    ) {
        let Ellipse {
            cx,
            cy,
            a,
            b,
            angle,
        } = e;
        let r = a.max(b) * extent + 1.0;
        let x0 = (cx - r).floor().max(0.0) as usize;
        let y0 = (cy - r).floor().max(0.0) as usize;
        let x1 = ((cx + r).ceil() as isize).clamp(0, self.w as isize) as usize;
        let y1 = ((cy + r).ceil() as isize).clamp(0, self.h as isize) as usize;
        let (sn, cs) = angle.sin_cos();
        let ss = ss.max(1);
        let step = 1.0 / ss as f32;
        for y in y0..y1 {
            for x in x0..x1 {
                let mut acc = [0f32; 3];
                let mut cov = 0f32;
                for sy in 0..ss {
                    for sx in 0..ss {
                        let px = x as f32 + (sx as f32 + 0.5) * step - cx;
                        let py = y as f32 + (sy as f32 + 0.5) * step - cy;
                        let lx = px * cs + py * sn;
                        let ly = -px * sn + py * cs;
                        let (u, v) = (lx / a, ly / b);
                        if u * u + v * v > extent * extent {
                            continue;
                        }
                        if let Some((c, al)) = shader(u, v) {
                            for k in 0..3 {
                                acc[k] += c[k] * al;
                            }
                            cov += al;
                        }
                    }
                }
                if cov > 0.0 {
                    let n = (ss * ss) as f32;
                    let col = [acc[0] / cov, acc[1] / cov, acc[2] / cov];
                    self.blend(x, y, col, (cov / n).min(1.0));
                }
            }
        }
    }

    /// A filled ellipse of one colour with an anti-aliased rim.
    pub fn ellipse(&mut self, e: Ellipse, c: Rgb, alpha: f32) {
        let rim = e.a.min(e.b).max(0.5);
        self.shade_ellipse(e, (1.0, 1), |u, v| {
            let d = (1.0 - (u * u + v * v).sqrt()) * rim + 0.5;
            Some((c, alpha * d.clamp(0.0, 1.0)))
        });
    }

    /// A filled polygon (even-odd rule) with edges anti-aliased over about one pixel.
    pub fn polygon(&mut self, pts: &[(f32, f32)], c: Rgb, alpha: f32) {
        let (mut x0, mut y0, mut x1, mut y1) = (f32::MAX, f32::MAX, f32::MIN, f32::MIN);
        for &(x, y) in pts {
            (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
        }
        let (w, h) = (self.w, self.h);
        let clampx = |v: f32| (v.max(0.0) as usize).min(w);
        let clampy = |v: f32| (v.max(0.0) as usize).min(h);
        let n = pts.len();
        for y in clampy(y0 - 1.0)..clampy(y1 + 2.0) {
            for x in clampx(x0 - 1.0)..clampx(x1 + 2.0) {
                let (px, py) = (x as f32 + 0.5, y as f32 + 0.5);
                let mut inside = false;
                let mut dist = f32::MAX;
                for i in 0..n {
                    let (ax, ay) = pts[i];
                    let (bx, by) = pts[(i + 1) % n];
                    if (ay > py) != (by > py) && px < ax + (py - ay) * (bx - ax) / (by - ay) {
                        inside = !inside;
                    }
                    let (dx, dy) = (bx - ax, by - ay);
                    let t = (((px - ax) * dx + (py - ay) * dy) / (dx * dx + dy * dy).max(1e-9))
                        .clamp(0.0, 1.0);
                    dist =
                        dist.min(((px - ax - t * dx).powi(2) + (py - ay - t * dy).powi(2)).sqrt());
                }
                let cover = if inside { 0.5 + dist } else { 0.5 - dist };
                if cover > 0.0 {
                    self.blend(x, y, c, alpha * cover.min(1.0));
                }
            }
        }
    }

    /// An axis-aligned rectangle, clipped to the canvas.
    pub fn rect(&mut self, x0: f32, y0: f32, x1: f32, y1: f32, c: Rgb, alpha: f32) {
        let xa = x0.round().clamp(0.0, self.w as f32) as usize;
        let xb = x1.round().clamp(0.0, self.w as f32) as usize;
        let ya = y0.round().clamp(0.0, self.h as f32) as usize;
        let yb = y1.round().clamp(0.0, self.h as f32) as usize;
        for y in ya..yb {
            for x in xa..xb {
                self.blend(x, y, c, alpha);
            }
        }
    }

    /// Box blur of radius `r` over a region, `passes` times (3 passes approximate a Gaussian).
    pub fn box_blur(
        &mut self,
        x0: usize,
        y0: usize,
        x1: usize,
        y1: usize,
        r: usize,
        passes: usize,
    ) {
        let (x1, y1) = (x1.min(self.w), y1.min(self.h));
        if r == 0 || x1 <= x0 || y1 <= y0 {
            return;
        }
        let mut line: Vec<Rgb> = Vec::new();
        for _ in 0..passes {
            for y in y0..y1 {
                line.clear();
                line.extend_from_slice(&self.px[y * self.w + x0..y * self.w + x1]);
                blur_line(&line, r, |i, c| self.px[y * self.w + x0 + i] = c);
            }
            for x in x0..x1 {
                line.clear();
                line.extend((y0..y1).map(|y| self.px[y * self.w + x]));
                let w = self.w;
                let px = &mut self.px;
                blur_line(&line, r, |i, c| px[(y0 + i) * w + x] = c);
            }
        }
    }

    /// Exposure (per-channel gain), additive sensor noise, rounding to 8 bits: one pass.
    pub fn develop(&self, gain: Rgb, sigma: f32, rng: &mut Xorshift) -> RgbImage {
        let mut raw = Vec::with_capacity(self.w * self.h * 3);
        // Four 16-bit uniforms from one draw, summed: a cheap near-Gaussian.
        let k = sigma * 1.732_050_8 / 65536.0;
        for p in &self.px {
            let r = rng.next_u64();
            let sum = (r & 0xffff) + ((r >> 16) & 0xffff) + ((r >> 32) & 0xffff) + (r >> 48);
            let n = sum as f32 * k - 2.0 * sigma * 1.732_050_8;
            for c in 0..3 {
                raw.push((p[c] * gain[c] + n).clamp(0.0, 255.0).add(0.5) as u8);
            }
        }
        RgbImage::from_raw(self.w as u32, self.h as u32, raw).expect("buffer size")
    }
}

/// Running-sum box filter with clamped borders.
fn blur_line(src: &[Rgb], r: usize, mut put: impl FnMut(usize, Rgb)) {
    let n = src.len();
    let at = |i: isize| src[i.clamp(0, n as isize - 1) as usize];
    let mut sum = [0f32; 3];
    for i in -(r as isize)..=(r as isize) {
        let c = at(i);
        for k in 0..3 {
            sum[k] += c[k];
        }
    }
    let norm = 1.0 / (2 * r + 1) as f32;
    for i in 0..n {
        put(i, [sum[0] * norm, sum[1] * norm, sum[2] * norm]);
        let add = at(i as isize + r as isize + 1);
        let sub = at(i as isize - r as isize);
        for k in 0..3 {
            sum[k] += add[k] - sub[k];
        }
    }
}

pub fn mix(a: Rgb, b: Rgb, t: f32) -> Rgb {
    [
        a[0] + (b[0] - a[0]) * t,
        a[1] + (b[1] - a[1]) * t,
        a[2] + (b[2] - a[2]) * t,
    ]
}

pub fn scale(c: Rgb, s: f32) -> Rgb {
    [c[0] * s, c[1] * s, c[2] * s]
}

/// A fast deterministic generator for per-pixel noise and scene sampling; seeded per
/// image so that output does not depend on thread scheduling.
pub struct Xorshift(u64);

impl Xorshift {
    pub fn new(seed: u64) -> Self {
        Self(splitmix(seed) | 1)
    }

    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform in [0, 1).
    #[inline]
    pub fn f(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    #[inline]
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.f()
    }

    /// Integer in lo..=hi.
    pub fn int(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as usize
    }

    pub fn chance(&mut self, p: f32) -> bool {
        self.f() < p
    }

    /// Standard normal (sum of four uniforms, rescaled: cheap and smooth enough for noise).
    #[inline]
    pub fn gauss(&mut self) -> f32 {
        (self.f() + self.f() + self.f() + self.f() - 2.0) * 1.732_050_8
    }

    pub fn log_uniform(&mut self, lo: f32, hi: f32) -> f32 {
        (lo.ln() + (hi.ln() - lo.ln()) * self.f()).exp()
    }

    pub fn color(&mut self) -> Rgb {
        [
            self.uniform(0.0, 255.0),
            self.uniform(0.0, 255.0),
            self.uniform(0.0, 255.0),
        ]
    }
}

pub fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
