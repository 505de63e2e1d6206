//! Reading images strictly: a file that decodes only in part is an error, like one that
//! does not decode at all. The JPEG decoder returns a truncated file's missing rows as
//! grey without complaint, which would silently train and evaluate on half-grey pictures.

use std::path::Path;

use image::DynamicImage;

use super::datasets::record::{DataError, EmbeddedImage};

/// Whether JPEG `bytes` end their last scan: the last end-of-image marker (FF D9) comes
/// after the last start-of-scan marker (FF DA). Inside scan data every FF byte is
/// followed by 00 or a restart marker, so neither marker can appear there by accident;
/// an embedded thumbnail's EOI comes before the main image's scans.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let last = |m: u8| bytes.windows(2).rposition(|w| w == [0xFF, m]);
    match (last(0xDA), last(0xD9)) {
        (Some(sos), Some(eoi)) => eoi > sos,
        _ => false,
    }
}

/// Pillow's `Image.MAX_IMAGE_PIXELS` (about 89.5 Mpx, a 9459 x 9459 image): larger images
/// are refused before decoding. A few hundred bytes of JPEG or PNG can claim a 65535 x 65535
/// picture; decoding one costs gigabytes and tens of seconds, so the claim is checked
/// against the header first.
pub const MAX_IMAGE_PIXELS: u64 = 89_478_485;

/// The largest box coordinate an annotation may give, in pixels: beyond any side an
/// accepted image can have (a 1-pixel-high image under [`MAX_IMAGE_PIXELS`]), yet far from
/// f32's limits, so that resizing, widths and areas stay finite.
pub const MAX_BOX_COORDINATE: f64 = 1e8;

/// Whether an `[x, y, w, h]` box's corners lie within ±[`MAX_BOX_COORDINATE`].
pub fn xywh_within_range([x, y, w, h]: [f64; 4]) -> bool {
    [x, y, x + w, y + h]
        .iter()
        .all(|v| v.abs() <= MAX_BOX_COORDINATE)
}

/// A format's name as messages give it (`PNG`, `GIF`).
fn format_name(format: image::ImageFormat) -> String {
    format!("{format:?}").to_uppercase()
}

/// Why image bytes were refused; the variants let a caller answer each differently (an
/// HTTP server: 415 for an unknown format, 400 for the rest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageDecodeError {
    /// No bytes at all.
    Empty,
    /// Not a format the decoder recognises (JPEG and PNG are built in).
    UnknownFormat,
    /// A format the decoder recognises but was built without (GIF, WebP, ...).
    UnsupportedFormat(String),
    /// The header's width or height is zero.
    ZeroSized { width: u32, height: u32 },
    /// The header claims more than the allowed pixels.
    TooLarge {
        width: u32,
        height: u32,
        max_pixels: u64,
    },
    /// A JPEG whose data ends before its end marker.
    Truncated,
    /// The decoder's own error.
    Decode(String),
}

impl std::fmt::Display for ImageDecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Empty => write!(f, "the file is empty"),
            Self::UnknownFormat => write!(f, "not a JPEG or PNG image (unknown format)"),
            Self::UnsupportedFormat(name) => {
                write!(f, "{name} images are not supported (JPEG and PNG are)")
            }
            Self::ZeroSized { width, height } => {
                write!(f, "the image has no pixels ({width} x {height})")
            }
            Self::TooLarge {
                width,
                height,
                max_pixels,
            } => write!(
                f,
                "the image is {width} x {height} = {} pixels, more than the limit of {max_pixels}",
                *width as u64 * *height as u64
            ),
            Self::Truncated => {
                write!(
                    f,
                    "truncated JPEG (the image data ends before its end marker)"
                )
            }
            Self::Decode(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ImageDecodeError {}

/// Decodes image bytes (format from the content), refusing more than `max_pixels` pixels
/// before any pixel is decoded.
pub fn decode_image_bytes(bytes: &[u8], max_pixels: u64) -> Result<DynamicImage, ImageDecodeError> {
    if bytes.is_empty() {
        return Err(ImageDecodeError::Empty);
    }
    let format = image::guess_format(bytes).map_err(|_| ImageDecodeError::UnknownFormat)?;
    if !format.reading_enabled() {
        return Err(ImageDecodeError::UnsupportedFormat(format_name(format)));
    }
    if format == image::ImageFormat::Jpeg && !jpeg_is_complete(bytes) {
        return Err(ImageDecodeError::Truncated);
    }
    let reader = || image::ImageReader::with_format(std::io::Cursor::new(bytes), format);
    let (width, height) = reader()
        .into_dimensions()
        .map_err(|e| ImageDecodeError::Decode(e.to_string()))?;
    if width == 0 || height == 0 {
        return Err(ImageDecodeError::ZeroSized { width, height });
    }
    if width as u64 * height as u64 > max_pixels {
        return Err(ImageDecodeError::TooLarge {
            width,
            height,
            max_pixels,
        });
    }
    // The decoders are other crates' code fed outside input; one that panics (png 0.18
    // slices a palette whose length is not a multiple of 3) costs this image, not the run.
    match std::panic::catch_unwind(|| reader().decode()) {
        Ok(decoded) => decoded.map_err(|e| ImageDecodeError::Decode(e.to_string())),
        Err(panic) => {
            let why = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(ImageDecodeError::Decode(format!(
                "the {} decoder failed on malformed data ({why})",
                format_name(format)
            )))
        }
    }
}

/// Decodes an image file's bytes (format from the content, at most [`MAX_IMAGE_PIXELS`]);
/// `path` names it in errors.
pub fn decode_image(bytes: &[u8], path: &Path) -> Result<DynamicImage, DataError> {
    decode_image_bytes(bytes, MAX_IMAGE_PIXELS)
        .map_err(|e| DataError::new(format!("cannot decode {}: {e}", path.display())))
}

/// Reads and decodes `path` strictly (see [`decode_image`]).
pub fn read_image(path: &Path) -> Result<DynamicImage, DataError> {
    let bytes = std::fs::read(path)
        .map_err(|e| DataError::new(format!("cannot open {}: {e}", path.display())))?;
    decode_image(&bytes, path)
}

/// Reads the planar RGB pixels `e` describes from `path` (a CIFAR batch record's image).
pub fn read_embedded(path: &Path, e: EmbeddedImage) -> Result<image::RgbImage, DataError> {
    use std::io::{Read, Seek, SeekFrom};
    let plane = e.width as usize * e.height as usize;
    let mut raw = vec![0u8; 3 * plane];
    let what = || format!("{} (image at byte {})", path.display(), e.offset);
    let mut f = std::fs::File::open(path)
        .map_err(|err| DataError::new(format!("cannot open {}: {err}", path.display())))?;
    f.seek(SeekFrom::Start(e.offset))
        .and_then(|_| f.read_exact(&mut raw))
        .map_err(|err| DataError::new(format!("cannot read {}: {err}", what())))?;
    let mut rgb = Vec::with_capacity(3 * plane);
    for i in 0..plane {
        rgb.extend([raw[i], raw[plane + i], raw[2 * plane + i]]);
    }
    image::RgbImage::from_raw(e.width, e.height, rgb)
        .ok_or_else(|| DataError::new(format!("bad image size in {}", what())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jpeg_cut_in_half_is_an_error_and_a_whole_one_decodes() {
        let img =
            image::RgbImage::from_fn(64, 48, |x, y| image::Rgb([x as u8 * 4, y as u8 * 5, 90]));
        let mut jpeg = Vec::new();
        image::DynamicImage::ImageRgb8(img)
            .write_to(
                &mut std::io::Cursor::new(&mut jpeg),
                image::ImageFormat::Jpeg,
            )
            .unwrap();
        let p = Path::new("x.jpg");
        assert_eq!(decode_image(&jpeg, p).unwrap().width(), 64);
        let e = decode_image(&jpeg[..jpeg.len() / 2], p).unwrap_err();
        assert!(e.to_string().contains("truncated JPEG"), "{e}");
        // Trailing bytes after the end marker (some cameras append data) are fine.
        let mut padded = jpeg.clone();
        padded.extend_from_slice(b"trailer");
        assert!(decode_image(&padded, p).is_ok());
        assert!(decode_image(b"not an image", p).is_err());
    }

    #[test]
    fn a_decoder_that_panics_costs_the_image_only() {
        // Found by fuzzing: an interlaced palette PNG whose PLTE chunk is 49 bytes long
        // (16 entries and one byte) makes png 0.18 slice past its end.
        let bytes = include_bytes!("../../tests/data/png_bad_palette.png");
        match decode_image_bytes(bytes, MAX_IMAGE_PIXELS) {
            Err(ImageDecodeError::Decode(e)) => {
                assert!(e.contains("PNG decoder failed on malformed data"), "{e}")
            }
            other => panic!("expected a decode error, got {other:?}"),
        }
    }

    #[test]
    fn the_pixel_limit_and_degenerate_inputs_are_refused_before_decoding() {
        let mut png = Vec::new();
        image::DynamicImage::ImageRgb8(image::RgbImage::new(40, 30))
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        assert_eq!(decode_image_bytes(&png, 1200).unwrap().height(), 30);
        assert_eq!(
            decode_image_bytes(&png, 1199).unwrap_err(),
            ImageDecodeError::TooLarge {
                width: 40,
                height: 30,
                max_pixels: 1199
            }
        );
        assert_eq!(
            decode_image_bytes(&[], 10).unwrap_err(),
            ImageDecodeError::Empty
        );
        assert_eq!(
            decode_image_bytes(b"GIF89a....", 10).unwrap_err(),
            ImageDecodeError::UnsupportedFormat("GIF".into())
        );
        assert_eq!(
            decode_image_bytes(b"hello", 10).unwrap_err(),
            ImageDecodeError::UnknownFormat
        );
        // A JPEG whose header claims 60000 x 60000 pixels (fuzzing found a 729-byte one
        // claiming 2571 x 65519 that took 24 s to decode): refused from the header.
        let mut jpeg = Vec::new();
        image::DynamicImage::ImageRgb8(image::RgbImage::new(16, 16))
            .write_to(
                &mut std::io::Cursor::new(&mut jpeg),
                image::ImageFormat::Jpeg,
            )
            .unwrap();
        let sof = jpeg.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
        jpeg[sof + 5..sof + 9].copy_from_slice(&[0xEA, 0x60, 0xEA, 0x60]);
        assert_eq!(
            decode_image_bytes(&jpeg, MAX_IMAGE_PIXELS).unwrap_err(),
            ImageDecodeError::TooLarge {
                width: 60000,
                height: 60000,
                max_pixels: MAX_IMAGE_PIXELS
            }
        );
    }
}
