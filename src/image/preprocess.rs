//! LiteMedSAM's input recipe: resize the longest side to 256, min-max normalise to [0, 1],
//! zero-pad bottom/right to 256×256; boxes are scaled by the same factor.

use image::imageops::{resize, FilterType};
use image::ImageBuffer;

use super::decode::RgbImage;
use crate::error::{Error, Result};
use crate::sam::INPUT_SIZE;

/// A box in pixel coordinates, corners `(x0, y0)` and `(x1, y1)`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PixelBox {
    pub x0: f32,
    pub y0: f32,
    pub x1: f32,
    pub y1: f32,
}

impl PixelBox {
    pub fn new(x0: f32, y0: f32, x1: f32, y1: f32) -> Self {
        Self { x0, y0, x1, y1 }
    }

    pub fn as_array(&self) -> [f32; 4] {
        [self.x0, self.y0, self.x1, self.y1]
    }

    /// Checks the box is finite, not inverted, of positive size, and overlaps a
    /// `width`×`height` image; returns it clipped to the image.
    pub fn validated(&self, width: u32, height: u32) -> Result<Self> {
        let [x0, y0, x1, y1] = self.as_array();
        if !self.as_array().iter().all(|v| v.is_finite()) {
            return Err(Error::Prompt("box coordinates must be finite numbers".into()));
        }
        if x1 <= x0 || y1 <= y0 {
            return Err(Error::Prompt(format!("box {x0},{y0},{x1},{y1} is inverted or empty (need x0 < x1 and y0 < y1)")));
        }
        let (w, h) = (width as f32, height as f32);
        if x1 <= 0.0 || y1 <= 0.0 || x0 >= w || y0 >= h {
            return Err(Error::Prompt(format!("box {x0},{y0},{x1},{y1} lies outside the {width}×{height} image")));
        }
        Ok(Self::new(x0.max(0.0), y0.max(0.0), x1.min(w), y1.min(h)))
    }
}

/// The model input for one image, and the geometry needed to map results back.
#[derive(Debug, Clone)]
pub struct Preprocessed {
    /// `3 × 256 × 256` values, channel-major, in [0, 1].
    pub tensor: Vec<f32>,
    /// Size of the image inside the padded square, `(width, height)`.
    pub scaled_size: (u32, u32),
    pub original_size: (u32, u32),
    /// Model pixels per original pixel.
    pub scale: f32,
}

impl Preprocessed {
    /// Maps a box from original pixels into model input pixels.
    pub fn to_model_box(&self, b: PixelBox) -> [f32; 4] {
        b.as_array().map(|v| v * self.scale)
    }
}

/// Size of the longest-side-256 resize, rounding half up as the reference does.
pub fn scaled_size(width: u32, height: u32) -> (u32, u32, f32) {
    let scale = INPUT_SIZE as f64 / width.max(height) as f64;
    let w = ((width as f64 * scale + 0.5) as u32).max(1);
    let h = ((height as f64 * scale + 0.5) as u32).max(1);
    (w, h, scale as f32)
}

/// Resizes so the longest side is 256 (triangle filter: bilinear, anti-aliased when shrinking).
pub fn resize_longest_side(image: &RgbImage) -> RgbImage {
    let (w, h, _) = scaled_size(image.width, image.height);
    let buffer: ImageBuffer<image::Rgb<u8>, _> =
        ImageBuffer::from_raw(image.width, image.height, image.pixels.as_slice()).expect("validated buffer");
    let resized = resize(&buffer, w, h, FilterType::Triangle);
    RgbImage { width: w, height: h, pixels: resized.into_raw() }
}

/// Min-max normalises an already-resized image and pads it into the 256×256 model input.
pub fn normalise_and_pad(resized: &RgbImage) -> Vec<f32> {
    let (lo, hi) = resized.pixels.iter().fold((u8::MAX, u8::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let range = ((hi as f32) - (lo as f32)).max(1e-8);
    let side = INPUT_SIZE;
    let mut tensor = vec![0.0f32; 3 * side * side];
    let (w, h) = (resized.width as usize, resized.height as usize);
    for y in 0..h {
        for x in 0..w {
            let p = &resized.pixels[(y * w + x) * 3..(y * w + x) * 3 + 3];
            for c in 0..3 {
                tensor[c * side * side + y * side + x] = (p[c] as f32 - lo as f32) / range;
            }
        }
    }
    tensor
}

pub fn preprocess(image: &RgbImage) -> Preprocessed {
    let resized = resize_longest_side(image);
    let (_, _, scale) = scaled_size(image.width, image.height);
    Preprocessed {
        tensor: normalise_and_pad(&resized),
        scaled_size: (resized.width, resized.height),
        original_size: (image.width, image.height),
        scale,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_side_becomes_256_and_rounds_half_up() {
        assert_eq!(scaled_size(1024, 1024).0, 256);
        let (w, h, _) = scaled_size(757, 575);
        assert_eq!((w, h), (256, 194)); // 575 * 256 / 757 = 194.46
        let (w, h, _) = scaled_size(10, 1000);
        assert_eq!((w, h), (3, 256)); // 2.56 rounds to 3
    }

    #[test]
    fn normalisation_spans_zero_to_one_and_pads_with_zero() {
        let image = RgbImage::new(2, 1, vec![10, 10, 10, 30, 30, 30]).unwrap();
        let t = normalise_and_pad(&image);
        assert_eq!(t.len(), 3 * 256 * 256);
        assert_eq!((t[0], t[1], t[2]), (0.0, 1.0, 0.0));
        assert_eq!(t[256 * 256 + 1], 1.0);
    }

    #[test]
    fn boxes_are_checked_and_clipped() {
        let ok = PixelBox::new(-5.0, 2.0, 50.0, 300.0).validated(100, 200).unwrap();
        assert_eq!(ok.as_array(), [0.0, 2.0, 50.0, 200.0]);
        assert!(PixelBox::new(10.0, 10.0, 5.0, 20.0).validated(100, 100).is_err());
        assert!(PixelBox::new(200.0, 10.0, 250.0, 20.0).validated(100, 100).is_err());
        assert!(PixelBox::new(f32::NAN, 0.0, 1.0, 1.0).validated(100, 100).is_err());
    }
}
