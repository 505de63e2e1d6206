//! Scene content: background, distractors, people (body, face, hair, accessories,
//! occluders) and the camera effects applied last.

use super::canvas::{mix, scale, Canvas, Ellipse, Rgb, Xorshift};
use super::spec::SyntheticSpec;
use crate::data::datasets::widerface::FaceAnnotation;

const SKIN: [Rgb; 6] = [
    [255.0, 224.0, 196.0],
    [241.0, 194.0, 125.0],
    [224.0, 172.0, 105.0],
    [198.0, 134.0, 66.0],
    [141.0, 85.0, 36.0],
    [92.0, 58.0, 38.0],
];

const HAIR: [Rgb; 6] = [
    [20.0, 16.0, 14.0],
    [60.0, 40.0, 25.0],
    [110.0, 75.0, 40.0],
    [200.0, 170.0, 110.0],
    [150.0, 150.0, 150.0],
    [140.0, 60.0, 30.0],
];

fn skin_tone(rng: &mut Xorshift) -> Rgb {
    let i = rng.int(0, SKIN.len() - 2);
    let c = mix(SKIN[i], SKIN[i + 1], rng.f());
    let j = rng.uniform(0.92, 1.08);
    [c[0] * j, c[1] * rng.uniform(0.95, 1.05) * j, c[2] * j]
}

/// A gradient, walls and stripes, then low-frequency brightness variation.
pub fn background(cv: &mut Canvas, rng: &mut Xorshift) {
    let (w, h) = (cv.w as f32, cv.h as f32);
    let c0 = rng.color();
    let c1 = rng.color();
    cv.gradient(c0, c1, rng.uniform(0.0, std::f32::consts::TAU));
    for _ in 0..rng.int(3, 12) {
        let x0 = rng.uniform(-0.2, 1.0) * w;
        let y0 = rng.uniform(-0.2, 1.0) * h;
        let x1 = x0 + rng.uniform(0.05, 0.6) * w;
        let y1 = y0 + rng.uniform(0.05, 0.6) * h;
        let c = rng.color();
        if rng.chance(0.3) {
            // Stripes or a checkerboard: texture that a detector must learn to ignore.
            let period = rng.uniform(3.0, 24.0);
            let c2 = rng.color();
            let checker = rng.chance(0.5);
            for y in (y0.max(0.0) as usize)..(y1.min(h) as usize) {
                for x in (x0.max(0.0) as usize)..(x1.min(w) as usize) {
                    let a = ((x as f32 / period) as i64
                        + if checker {
                            (y as f32 / period) as i64
                        } else {
                            0
                        })
                        % 2;
                    cv.blend(x, y, if a == 0 { c } else { c2 }, 1.0);
                }
            }
        } else {
            cv.rect(x0, y0, x1, y1, c, rng.uniform(0.5, 1.0));
        }
    }
    let cell = rng.int(24, 120);
    let amp = rng.uniform(0.05, 0.3);
    cv.value_noise(cell, amp, rng);
}

/// Things that resemble faces without being faces.
pub fn distractors(cv: &mut Canvas, rng: &mut Xorshift, spec: &SyntheticSpec, event: usize) {
    let (w, h) = (cv.w as f32, cv.h as f32);
    let n = if event == 4 {
        rng.int(8, 30)
    } else {
        rng.int(2, 20)
    };
    let max_size = spec.max_face_size.min(0.6 * w.min(h));
    for _ in 0..n {
        let s = rng.log_uniform(spec.min_face_size.max(4.0), max_size);
        let (cx, cy) = (rng.uniform(0.0, w), rng.uniform(0.0, h));
        let angle = rng.uniform(-1.0, 1.0);
        match rng.int(0, 4) {
            0 => {
                // A face-sized skin blob (a bald head from behind, an arm, a hand).
                let skin = skin_tone(rng);
                let (a, b) = (s * rng.uniform(0.3, 0.6), s * rng.uniform(0.4, 0.9));
                let (lx, ly) = (rng.uniform(-0.7, 0.7), rng.uniform(-0.7, 0.3));
                cv.shade_ellipse(Ellipse::new(cx, cy, a, b, angle), (1.0, 1), |u, v| {
                    let r2 = u * u + v * v;
                    let nz = (1.0 - r2).max(0.0).sqrt();
                    let sh = 0.55 + 0.45 * (u * lx + v * ly + nz * 0.7).max(0.0);
                    let edge = ((1.0 - r2.sqrt()) * a.min(b) + 0.5).clamp(0.0, 1.0);
                    Some((scale(skin, sh), edge))
                });
            }
            1 => {
                // A shaded ball.
                let c = rng.color();
                let r = s * 0.5;
                cv.shade_ellipse(Ellipse::new(cx, cy, r, r, 0.0), (1.0, 1), |u, v| {
                    let r2 = u * u + v * v;
                    let nz = (1.0 - r2).max(0.0).sqrt();
                    let sh = 0.35 + 0.75 * (-0.4 * u - 0.4 * v + 0.8 * nz).max(0.0);
                    let edge = ((1.0 - r2.sqrt()) * r + 0.5).clamp(0.0, 1.0);
                    Some((scale(c, sh), edge))
                });
            }
            2 => {
                // A ring target.
                let c1 = rng.color();
                let c2 = rng.color();
                let rings = rng.uniform(2.0, 6.0);
                let r = s * 0.5;
                cv.shade_ellipse(Ellipse::new(cx, cy, r, r, 0.0), (1.0, 1), |u, v| {
                    let d = (u * u + v * v).sqrt();
                    let c = if ((d * rings) as i32) % 2 == 0 {
                        c1
                    } else {
                        c2
                    };
                    Some((c, ((1.0 - d) * r + 0.5).clamp(0.0, 1.0)))
                });
            }
            3 => {
                // Two dark dots over a third on a non-skin disc: eyes and mouth without a face.
                let c = rng.color();
                let dark = scale(rng.color(), 0.25);
                let r = s * 0.5;
                cv.shade_ellipse(
                    Ellipse::new(cx, cy, r, r * rng.uniform(0.8, 1.2), angle),
                    (1.0, 2),
                    |u, v| {
                        let dot =
                            |x: f32, y: f32, rr: f32| (u - x).powi(2) + (v - y).powi(2) < rr * rr;
                        let col = if dot(-0.35, -0.2, 0.14)
                            || dot(0.35, -0.2, 0.14)
                            || dot(0.0, 0.45, 0.1)
                        {
                            dark
                        } else {
                            c
                        };
                        Some((col, 1.0))
                    },
                );
            }
            _ => {
                // A hand: a skin ellipse with finger stripes.
                let skin = skin_tone(rng);
                let (a, b) = (s * 0.35, s * 0.5);
                cv.shade_ellipse(Ellipse::new(cx, cy, a, b, angle), (1.0, 1), |u, v| {
                    let finger = v < -0.2 && ((u + 1.0) * 4.0).fract() < 0.15;
                    let col = if finger { scale(skin, 0.7) } else { skin };
                    let edge = ((1.0 - (u * u + v * v).sqrt()) * a + 0.5).clamp(0.0, 1.0);
                    Some((col, edge))
                });
            }
        }
    }
}

/// One face as placed: centre, semi-axes, angles, box (x1, y1, x2, y2).
struct Person {
    cx: f32,
    cy: f32,
    a: f32,
    b: f32,
    roll: f32,
    yaw: f32,
    bbox: [f32; 4],
    /// The body below the face, as a box, to estimate what it hides of smaller faces.
    body: [f32; 4],
    blur: u8,
    expression: u8,
    illumination: u8,
    /// Fraction of the face box hidden by its own occluder (sunglasses, mask, hand).
    own_cover: f32,
}

fn intersection(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    w * h
}

fn area(a: &[f32; 4]) -> f32 {
    (a[2] - a[0]).max(0.0) * (a[3] - a[1]).max(0.0)
}

/// Places and draws the people of a scene and returns their face annotations.
pub fn people(
    cv: &mut Canvas,
    rng: &mut Xorshift,
    spec: &SyntheticSpec,
    event: usize,
) -> Vec<FaceAnnotation> {
    let (w, h) = (cv.w as f32, cv.h as f32);
    let lo = spec.min_face_size;
    let hi = spec.max_face_size.min(0.8 * h).max(lo + 1.0);
    let (count, size_lo, size_hi) = match event {
        0 => (rng.int(25, 60), lo, (lo * 8.0).min(hi)),
        1 => (rng.int(6, 25), (lo * 2.0).min(hi), (120f32).min(hi)),
        2 => (rng.int(1, 4), (60f32).min(hi * 0.5), hi),
        3 => (rng.int(0, 12), lo, (200f32).min(hi)),
        _ => (0, lo, hi),
    };
    let count = count.min(spec.max_faces);
    let mut placed: Vec<Person> = Vec::with_capacity(count);
    for _ in 0..count {
        for _attempt in 0..30 {
            let s = rng.log_uniform(size_lo, size_hi.max(size_lo + 0.5));
            let yaw = (rng.gauss() * 0.45).clamp(-1.4, 1.4);
            let roll = (rng.gauss() * 0.2).clamp(-0.8, 0.8);
            let b = s * 0.5;
            let a = b * 0.78 * (0.8 + 0.2 * yaw.cos());
            let (sn, cs) = roll.sin_cos();
            let hw = ((a * cs).powi(2) + (b * sn).powi(2)).sqrt();
            let hh = ((a * sn).powi(2) + (b * cs).powi(2)).sqrt();
            if 2.0 * hw >= w - 2.0 || 2.0 * hh >= h - 2.0 {
                continue;
            }
            let cx = rng.uniform(hw + 1.0, w - hw - 1.0);
            let cy = rng.uniform(hh + 1.0, h - hh - 1.0);
            let bbox = [cx - hw, cy - hh, cx + hw, cy + hh];
            let body = [cx - 1.75 * a, cy + 1.0 * b, cx + 1.75 * a, cy + 4.2 * b];
            // Faces may touch and overlap a little, as in crowds, and bodies may hide part
            // of a face, but most faces stay visible.
            if placed.iter().any(|p| {
                let faces = intersection(&p.bbox, &bbox);
                let hidden = intersection(&p.body, &bbox) / area(&bbox)
                    + intersection(&body, &p.bbox) / area(&p.bbox);
                faces > 0.2 * area(&p.bbox).min(area(&bbox)) || hidden > 0.5
            }) {
                continue;
            }
            let small = s < 30.0;
            let blur = {
                let x = rng.f();
                let p2 = if small { 0.2 } else { 0.08 };
                let p1 = if small { 0.35 } else { 0.2 };
                if x < p2 {
                    2
                } else if x < p2 + p1 {
                    1
                } else {
                    0
                }
            };
            placed.push(Person {
                cx,
                cy,
                a,
                b,
                roll,
                yaw,
                bbox,
                body,
                blur,
                expression: rng.chance(0.12) as u8,
                illumination: rng.chance(0.1) as u8,
                own_cover: 0.0,
            });
            break;
        }
    }
    // Far (small) people first, so nearer ones are drawn over them.
    placed.sort_by(|p, q| p.b.total_cmp(&q.b));
    for p in placed.iter_mut() {
        p.own_cover = draw_person(cv, rng, p);
    }
    placed
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let face_area = area(&p.bbox).max(1e-3);
            let others: f32 = placed[i + 1..]
                .iter()
                .map(|q| intersection(&q.bbox, &p.bbox) + intersection(&q.body, &p.bbox))
                .sum::<f32>()
                / face_area;
            let cover = (p.own_cover + others).min(1.0);
            let occlusion = if cover < 0.1 {
                0
            } else if cover < 0.4 {
                1
            } else {
                2
            };
            let pose = (p.yaw.abs() > 0.8 || p.roll.abs() > 0.5) as u8;
            let x1 = p.bbox[0].round().max(0.0);
            let y1 = p.bbox[1].round().max(0.0);
            let x2 = p.bbox[2].round().min(w);
            let y2 = p.bbox[3].round().min(h);
            FaceAnnotation {
                bbox: [x1 as f64, y1 as f64, (x2 - x1) as f64, (y2 - y1) as f64],
                blur: p.blur,
                expression: p.expression,
                illumination: p.illumination,
                invalid: (cover > 0.75) as u8,
                occlusion,
                pose,
            }
        })
        .collect()
}

/// Draws body, head, hair, features, accessories and occluder; returns the fraction of
/// the face box its own occluder hides.
fn draw_person(cv: &mut Canvas, rng: &mut Xorshift, p: &Person) -> f32 {
    let skin = skin_tone(rng);
    let hair = HAIR[rng.int(0, HAIR.len() - 1)];
    let has_hair = rng.chance(0.85);
    let hairline = rng.uniform(-0.65, -0.35);
    let shirt = rng.color();
    // Body and neck first.
    cv.ellipse(
        Ellipse::new(p.cx, p.cy + 2.6 * p.b, 2.2 * p.a, 1.8 * p.b, p.roll * 0.3),
        shirt,
        1.0,
    );
    cv.rect(
        p.cx - 0.35 * p.a,
        p.cy + 0.5 * p.b,
        p.cx + 0.35 * p.a,
        p.cy + 1.1 * p.b,
        scale(skin, 0.8),
        1.0,
    );

    let (lx, ly) = (rng.uniform(-0.8, 0.8), rng.uniform(-0.8, 0.2));
    let (ambient, gain) = if p.illumination == 1 {
        if rng.chance(0.5) {
            (0.12, 0.7) // dark, hard light
        } else {
            (1.1, 0.7) // over-exposed
        }
    } else {
        (rng.uniform(0.45, 0.7), rng.uniform(0.3, 0.55))
    };
    let fx = 0.5 * p.yaw.sin();
    let squeeze = 1.0 - 0.35 * p.yaw.sin().abs();
    let eye_v = rng.uniform(-0.18, -0.06);
    let eyes: Vec<f32> = [-1.0f32, 1.0]
        .iter()
        .map(|side| fx + side * 0.36 * squeeze)
        .filter(|u| u.abs() < 0.8)
        .collect();
    let iris = scale(HAIR[rng.int(0, 2)], rng.uniform(0.6, 1.2));
    let glasses = rng.chance(0.12);
    let beard = rng.chance(0.08);
    let open = p.expression == 1;
    let lips = mix(skin, [150.0, 40.0, 50.0], rng.uniform(0.3, 0.6));
    let min_ab = p.a.min(p.b);
    let ss = if p.b < 8.0 {
        3
    } else if p.b < 20.0 {
        2
    } else {
        1
    };
    let shader = |u: f32, v: f32| -> Option<(Rgb, f32)> {
        let r2 = u * u + v * v;
        let r = r2.sqrt();
        // Hair volume around the top of the head.
        let hu = u / 1.1;
        let hv = (v + 0.1) / 1.08;
        let in_hair_shape = hu * hu + hv * hv <= 1.0;
        if r > 1.0 {
            if has_hair && in_hair_shape && v < 0.15 {
                let e = ((1.0 - (hu * hu + hv * hv).sqrt()) * min_ab + 0.5).clamp(0.0, 1.0);
                return Some((hair, e.max(if ss > 1 { 1.0 } else { 0.0 })));
            }
            return None;
        }
        let edge = if ss > 1 {
            1.0
        } else {
            ((1.0 - r) * min_ab + 0.5).clamp(0.0, 1.0)
        };
        if has_hair && v < hairline + 0.08 * (u * 6.0).sin() {
            return Some((hair, edge));
        }
        let nz = (1.0 - r2).max(0.0).sqrt();
        let diffuse = (u * lx + v * ly + nz * 0.8).max(0.0);
        let shade = ambient + gain * diffuse;
        let mut c = scale(skin, shade);
        // Eyebrows, eyes and glasses.
        for &ue in &eyes {
            let du = u - ue;
            let dv = v - eye_v;
            if (-0.22..-0.15).contains(&dv) && du.abs() < 0.17 {
                c = mix(c, hair, 0.75);
            }
            let e = (du / (0.13 * squeeze)).powi(2) + (dv / 0.075).powi(2);
            if e < 1.0 {
                let i = (du / 0.065).powi(2) + (dv / 0.065).powi(2);
                c = if i < 1.0 {
                    scale(iris, 0.6)
                } else {
                    scale([235.0, 230.0, 225.0], shade)
                };
            }
            if glasses {
                let g = (du / 0.2).powi(2) + (dv / 0.14).powi(2);
                if (0.75..1.0).contains(&g) {
                    c = [25.0, 25.0, 25.0];
                }
            }
        }
        if glasses && eyes.len() == 2 && (v - eye_v).abs() < 0.02 && (u - fx).abs() < 0.16 {
            c = [25.0, 25.0, 25.0];
        }
        // Nose: a shaded ridge and nostrils.
        let nu = u - fx * 1.15;
        if nu.abs() < 0.07 && (-0.02..0.26).contains(&v) {
            c = scale(c, 0.88);
        }
        if (0.22..0.28).contains(&v) && (nu.abs() - 0.07).abs() < 0.035 {
            c = scale(c, 0.55);
        }
        // Mouth.
        let mu = (u - fx * 0.9) / (0.26 * squeeze);
        let mv = (v - 0.5) / if open { 0.13 } else { 0.045 };
        if mu * mu + mv * mv < 1.0 {
            c = if open && mu * mu + (mv * 1.4).powi(2) < 0.7 {
                [60.0, 20.0, 25.0]
            } else {
                scale(lips, shade)
            };
        }
        if beard && v > 0.35 && mu * mu + mv * mv >= 1.3 {
            c = mix(c, hair, 0.85);
        }
        Some((c, edge))
    };
    cv.shade_ellipse(
        Ellipse::new(p.cx, p.cy, p.a, p.b, p.roll),
        (1.12, ss),
        shader,
    );

    // Accessories that hide part of the face.
    let [x1, y1, x2, y2] = p.bbox;
    let (bw, bh) = (x2 - x1, y2 - y1);
    let mut cover = 0.0;
    let roll = rng.f();
    if roll < 0.07 {
        // Sunglasses across the eyes.
        let y = p.cy + eye_v * p.b;
        cv.rect(
            x1 + 0.1 * bw,
            y - 0.12 * bh,
            x2 - 0.1 * bw,
            y + 0.08 * bh,
            [15.0, 15.0, 20.0],
            1.0,
        );
        cover = 0.8 * 0.2;
    } else if roll < 0.13 {
        // A mask over the lower face.
        let c = [
            [225.0, 235.0, 240.0],
            [120.0, 170.0, 210.0],
            [40.0, 40.0, 45.0],
        ][rng.int(0, 2)];
        cv.rect(
            x1 + 0.05 * bw,
            p.cy + 0.05 * bh,
            x2 - 0.05 * bw,
            y2 - 0.02 * bh,
            c,
            1.0,
        );
        cover = 0.9 * 0.43;
    } else if roll < 0.25 {
        // Something in front from one side: a hand, a sign, a shoulder.
        let f = rng.uniform(0.1, 0.9);
        let c = if rng.chance(0.4) {
            skin_tone(rng)
        } else {
            rng.color()
        };
        match rng.int(0, 2) {
            0 => cv.rect(x1 - 0.05 * bw, y1, x1 + f * bw, y2 + 0.05 * bh, c, 1.0),
            1 => cv.rect(x2 - f * bw, y1, x2 + 0.05 * bw, y2 + 0.05 * bh, c, 1.0),
            _ => cv.rect(
                x1 - 0.05 * bw,
                y2 - f * bh,
                x2 + 0.05 * bw,
                y2 + 0.05 * bh,
                c,
                1.0,
            ),
        }
        cover = f;
    }
    if p.blur > 0 {
        let r = if p.blur == 1 {
            (p.b / 15.0).round().max(1.0)
        } else {
            (p.b / 6.0).round().max(2.0)
        } as usize;
        let m = 2.0 * r as f32;
        cv.box_blur(
            (x1 - m).max(0.0) as usize,
            (y1 - m).max(0.0) as usize,
            (x2 + m) as usize + 1,
            (y2 + m) as usize + 1,
            r,
            2,
        );
    }
    cover
}

/// Camera effects over the whole picture: exposure, colour cast, sensor noise.
pub fn develop(cv: &Canvas, rng: &mut Xorshift) -> image::RgbImage {
    let gain = rng.uniform(0.75, 1.2);
    let cast = [0, 1, 2].map(|_| gain * rng.uniform(0.9, 1.1));
    let sigma = rng.uniform(0.0, 7.0);
    cv.develop(cast, sigma, rng)
}
