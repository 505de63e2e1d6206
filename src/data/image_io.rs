//! Reading images strictly: a file that decodes only in part is an error, like one that
//! does not decode at all. The JPEG decoder returns a truncated file's missing rows as
//! grey without complaint, which would silently train and evaluate on half-grey pictures.

use std::path::Path;

use image::DynamicImage;

use super::datasets::record::DataError;

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

/// Decodes an image file's bytes (format from the content); `path` names it in errors.
pub fn decode_image(bytes: &[u8], path: &Path) -> Result<DynamicImage, DataError> {
    let format = image::guess_format(bytes)
        .map_err(|e| DataError::new(format!("cannot decode {}: {e}", path.display())))?;
    if format == image::ImageFormat::Jpeg && !jpeg_is_complete(bytes) {
        return Err(DataError::new(format!(
            "cannot decode {}: truncated JPEG (the image data ends before its end marker)",
            path.display()
        )));
    }
    image::load_from_memory_with_format(bytes, format)
        .map_err(|e| DataError::new(format!("cannot decode {}: {e}", path.display())))
}

/// Reads and decodes `path` strictly (see [`decode_image`]).
pub fn read_image(path: &Path) -> Result<DynamicImage, DataError> {
    let bytes = std::fs::read(path)
        .map_err(|e| DataError::new(format!("cannot open {}: {e}", path.display())))?;
    decode_image(&bytes, path)
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
}
