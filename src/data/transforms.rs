//! Image transforms.

use candle_core::{Device, Result, Tensor};
use image::RgbImage;

/// Fixed-point precision of PIL's resampling weights.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Per output pixel: first input index and integer weights, as PIL's `precompute_coeffs`
/// computes them for the bilinear (triangle) filter, widened by the scale when
/// downscaling (antialiasing).
fn pil_coeffs(in_size: usize, out_size: usize) -> Vec<(usize, Vec<i64>)> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filterscale; // the triangle filter's support is 1
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let w: Vec<f64> = (xmin..xmax)
                .map(|x| {
                    let t = ((x as f64 - center + 0.5) / filterscale).abs();
                    if t < 1.0 {
                        1.0 - t
                    } else {
                        0.0
                    }
                })
                .collect();
            let total: f64 = w.iter().sum();
            let k = w
                .iter()
                .map(|v| {
                    let v = if total != 0.0 { v / total } else { 0.0 };
                    let f = v * (1i64 << PRECISION_BITS) as f64;
                    (if f < 0.0 { f - 0.5 } else { f + 0.5 }) as i64
                })
                .collect();
            (xmin, k)
        })
        .collect()
}

fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resizes like PIL's `Image.resize(size, BILINEAR)`, which torchvision's `Resize` uses on
/// PIL images: a horizontal then a vertical pass, each rounded to 8 bits. Matching it
/// bit for bit is what makes our inputs equal PyTorch's reference inputs.
pub fn resize_bilinear(img: &RgbImage, out_w: usize, out_h: usize) -> RgbImage {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let src = img.as_raw();
    // Weights are non-negative and sum to 2^22, so with 8-bit pixels every accumulator
    // fits in i32, as in PIL.
    let round = 1i32 << (PRECISION_BITS - 1);
    let coeffs32 = |n_in, n_out| -> Vec<(usize, Vec<i32>)> {
        pil_coeffs(n_in, n_out)
            .into_iter()
            .map(|(m, k)| (m, k.into_iter().map(|v| v as i32).collect()))
            .collect()
    };
    let mut horiz = vec![0u8; out_w * h * 3];
    if out_w == w {
        horiz.copy_from_slice(src);
    } else {
        let coeffs = coeffs32(w, out_w);
        for (row, orow) in src
            .chunks_exact(w * 3)
            .zip(horiz.chunks_exact_mut(out_w * 3))
        {
            for ((xmin, k), o) in coeffs.iter().zip(orow.chunks_exact_mut(3)) {
                let mut acc = [round; 3];
                for (px, &kk) in row[xmin * 3..].chunks_exact(3).zip(k) {
                    acc[0] += px[0] as i32 * kk;
                    acc[1] += px[1] as i32 * kk;
                    acc[2] += px[2] as i32 * kk;
                }
                for c in 0..3 {
                    o[c] = clip8(acc[c]);
                }
            }
        }
    }
    if out_h == h {
        return RgbImage::from_raw(out_w as u32, h as u32, horiz).expect("buffer size matches");
    }
    let stride = out_w * 3;
    let mut out = vec![0u8; stride * out_h];
    let mut acc = vec![0i32; stride];
    for ((ymin, k), orow) in coeffs32(h, out_h).iter().zip(out.chunks_exact_mut(stride)) {
        acc.fill(round);
        for (i, &kk) in k.iter().enumerate() {
            let row = &horiz[(ymin + i) * stride..(ymin + i + 1) * stride];
            for (a, &p) in acc.iter_mut().zip(row) {
                *a += p as i32 * kk;
            }
        }
        for (o, &a) in orow.iter_mut().zip(&acc) {
            *o = clip8(a);
        }
    }
    RgbImage::from_raw(out_w as u32, out_h as u32, out).expect("buffer size matches")
}

/// torchvision's `Resize(short)` then `CenterCrop(crop)` on a PIL image: the short side
/// goes to `short` (the long side to `int(short * long / short_side)`), resampled as
/// [`resize_bilinear`]; the crop offsets are Python's `int(round((size - crop) / 2))`,
/// which rounds halves to even: a margin of 105 starts the crop at 52, not 53.
pub fn resize_short_center_crop(
    img: &RgbImage,
    short: usize,
    crop: usize,
) -> std::result::Result<RgbImage, String> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    if w == 0 || h == 0 {
        return Err("image is empty".into());
    }
    let (nw, nh) = if w <= h {
        (short, (short as f64 * h as f64 / w as f64) as usize)
    } else {
        ((short as f64 * w as f64 / h as f64) as usize, short)
    };
    if nw < crop || nh < crop {
        return Err(format!(
            "crop {crop} is larger than the resized image {nw}x{nh}"
        ));
    }
    let resized = resize_bilinear(img, nw, nh);
    let left = ((nw - crop) as f64 / 2.0).round_ties_even() as u32;
    let top = ((nh - crop) as f64 / 2.0).round_ties_even() as u32;
    Ok(image::imageops::crop_imm(&resized, left, top, crop as u32, crop as u32).to_image())
}

/// An RGB image as a (3, H, W) f32 tensor in 0..255 (normalisation is the model's job).
pub fn image_to_tensor(img: &RgbImage, device: &Device) -> Result<Tensor> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let hwc = Tensor::from_vec(img.as_raw().clone(), (h, w, 3), &Device::Cpu)?;
    hwc.permute((2, 0, 1))?
        .to_dtype(candle_core::DType::F32)?
        .to_device(device)
}
