//! Image files (PNG, JPEG, single-frame DICOM) → 8-bit RGB, with limits so hostile files fail
//! cleanly.

use std::io::Cursor;

use image::{DynamicImage, ImageFormat, ImageReader, Limits};

use crate::error::{Error, Result};

/// Largest accepted side, in pixels. Medical 2D images rarely exceed 4k; 16k leaves room for
/// whole-slide tiles while keeping a decoded image under 1 GiB.
pub const MAX_SIDE: u32 = 16_384;
/// Upper bound on memory the decoder may allocate.
pub const MAX_DECODE_BYTES: u64 = 1 << 30;

/// An 8-bit RGB image, row-major, 3 bytes per pixel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<u8>,
}

impl RgbImage {
    pub fn new(width: u32, height: u32, pixels: Vec<u8>) -> Result<Self> {
        if width == 0 || height == 0 {
            return Err(Error::Image(format!("the image is empty ({width}×{height} pixels)")));
        }
        if pixels.len() != width as usize * height as usize * 3 {
            return Err(Error::Image("pixel buffer does not match the image size".into()));
        }
        Ok(Self { width, height, pixels })
    }
}

/// Decodes PNG, JPEG or DICOM bytes (DICOM with the file's own window, see [`super::dicom`]).
/// Gray images are repeated over the three channels; images with
/// more than 8 bits per sample are min-max scaled to 0..255 (the model normalises the same way,
/// so no contrast is lost to an arbitrary window); alpha is dropped.
pub fn decode_image(bytes: &[u8]) -> Result<RgbImage> {
    if bytes.is_empty() {
        return Err(Error::Image("the file is empty".into()));
    }
    if super::dicom::is_dicom(bytes) {
        return Ok(super::dicom::decode_dicom(bytes, None)?.image);
    }
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Error::Image(e.to_string()))?;
    match reader.format() {
        None => return Err(Error::Image("not a PNG, JPEG or DICOM file".into())),
        // The JPEG decoder fills a cut-off file with gray instead of failing; a half-missing
        // medical image must not be shown as if it were whole.
        Some(ImageFormat::Jpeg) if !ends_with_jpeg_eoi(bytes) => {
            return Err(Error::Image("the JPEG file is truncated (it has no end-of-image marker); try the file again".into()))
        }
        _ => {}
    }
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    let decoded = reader.decode().map_err(|e| Error::Image(e.to_string()))?;
    let (width, height) = (decoded.width(), decoded.height());
    if width == 0 || height == 0 {
        return Err(Error::Image(format!("the image is empty ({width}×{height} pixels)")));
    }
    let pixels = match decoded {
        DynamicImage::ImageLuma8(_) | DynamicImage::ImageLumaA8(_) | DynamicImage::ImageRgb8(_) | DynamicImage::ImageRgba8(_) => {
            decoded.to_rgb8().into_raw()
        }
        wide => rescale_wide(&wide),
    };
    RgbImage::new(width, height, pixels)
}

/// True when the JPEG's end-of-image marker comes after its last start-of-scan (trailing bytes
/// after it are allowed, as many cameras write them).
fn ends_with_jpeg_eoi(bytes: &[u8]) -> bool {
    let last = |marker: [u8; 2]| bytes.windows(2).rposition(|w| w == marker);
    matches!((last([0xFF, 0xD9]), last([0xFF, 0xDA])), (Some(eoi), Some(sos)) if eoi > sos)
}

/// RGB of an image with more than 8 bits per sample, min-max scaled to 0..255. Read straight from
/// the decoded samples: an f32 copy of a large 16-bit image would take 6× its decoded size (found
/// by fuzzing: 3 GB for a 16k × 16k gray PNG).
fn rescale_wide(image: &DynamicImage) -> Vec<u8> {
    match image {
        DynamicImage::ImageLuma16(b) => rescale_to_u8(b.as_raw(), 1, 1),
        DynamicImage::ImageLumaA16(b) => rescale_to_u8(b.as_raw(), 2, 1),
        DynamicImage::ImageRgb16(b) => rescale_to_u8(b.as_raw(), 3, 3),
        DynamicImage::ImageRgba16(b) => rescale_to_u8(b.as_raw(), 4, 3),
        DynamicImage::ImageRgb32F(b) => rescale_to_u8(b.as_raw(), 3, 3),
        DynamicImage::ImageRgba32F(b) => rescale_to_u8(b.as_raw(), 4, 3),
        other => rescale_to_u8(other.to_rgb32f().as_raw(), 3, 3),
    }
}

/// Linear min-max map to 0..255 (rounding to nearest) of pixels of `stride` samples whose first
/// `colors` (1: gray, 3: RGB) are colour; alpha is ignored, gray is repeated over R, G and B.
fn rescale_to_u8<T: Copy + Into<f64>>(samples: &[T], stride: usize, colors: usize) -> Vec<u8> {
    let colour = || samples.chunks_exact(stride).flat_map(|pixel| pixel[..colors].iter().map(|&v| v.into()));
    let (lo, hi) = colour().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let scale = if hi > lo { 255.0 / (hi - lo) } else { 0.0 };
    let mut out = Vec::with_capacity(samples.len() / stride * 3);
    for v in colour() {
        // NaN (possible in float images) maps to 0, as `as u8` saturates.
        let byte = ((v - lo) * scale).round() as u8;
        if colors == 1 {
            out.extend([byte; 3]);
        } else {
            out.push(byte);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageBuffer, ImageFormat, Luma};

    fn encode_png(image: DynamicImage) -> Vec<u8> {
        let mut out = Vec::new();
        image.write_to(&mut Cursor::new(&mut out), ImageFormat::Png).unwrap();
        out
    }

    #[test]
    fn gray16_is_stretched_to_full_range() {
        let gray = ImageBuffer::<Luma<u16>, _>::from_fn(4, 1, |x, _| Luma([1000 + 1000 * x as u16]));
        let image = decode_image(&encode_png(DynamicImage::ImageLuma16(gray))).unwrap();
        let reds: Vec<u8> = image.pixels.chunks(3).map(|p| p[0]).collect();
        assert_eq!(reds, vec![0, 85, 170, 255]);
        assert!(image.pixels.chunks(3).all(|p| p[0] == p[1] && p[1] == p[2]));
    }

    /// The conversion that reads the decoded samples directly gives what converting the whole
    /// image to f32 RGB first gave (±1 for rounding), alpha ignored, gray repeated.
    #[test]
    fn wide_images_scale_like_their_f32_rgb() {
        let mut rng = crate::rng::SplitMix64::new(5);
        let mut sample = || (rng.next_u64() % 60_000) as u16 + 1_000;
        let (w, h) = (7, 5);
        let wide16 = |channels: usize, sample: &mut dyn FnMut() -> u16| (0..w * h * channels).map(|_| sample()).collect::<Vec<u16>>();
        let images = [
            DynamicImage::ImageLuma16(ImageBuffer::from_raw(w as u32, h as u32, wide16(1, &mut sample)).unwrap()),
            DynamicImage::ImageLumaA16(ImageBuffer::from_raw(w as u32, h as u32, wide16(2, &mut sample)).unwrap()),
            DynamicImage::ImageRgb16(ImageBuffer::from_raw(w as u32, h as u32, wide16(3, &mut sample)).unwrap()),
            DynamicImage::ImageRgba16(ImageBuffer::from_raw(w as u32, h as u32, wide16(4, &mut sample)).unwrap()),
        ];
        for image in images {
            let floats = image.to_rgb32f().into_raw();
            let (lo, hi) = floats.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
            let expected: Vec<u8> = floats.iter().map(|&v| ((v - lo) as f64 * 255.0 / (hi - lo) as f64).round() as u8).collect();
            let actual = rescale_wide(&image);
            assert_eq!(actual.len(), expected.len(), "{:?}", image.color());
            assert!(actual.iter().zip(&expected).all(|(a, e)| a.abs_diff(*e) <= 1), "{:?}", image.color());
            assert_eq!((actual.iter().min(), actual.iter().max()), (Some(&0), Some(&255)), "{:?}", image.color());
        }
    }

    #[test]
    fn bad_bytes_are_errors_not_panics() {
        assert!(matches!(decode_image(b""), Err(Error::Image(_))));
        assert!(matches!(decode_image(b"hello, not an image"), Err(Error::Image(_))));
        let png = encode_png(DynamicImage::new_rgb8(8, 8));
        assert!(matches!(decode_image(&png[..png.len() / 2]), Err(Error::Image(_))));
    }
}
