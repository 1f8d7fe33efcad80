//! Binary masks: thresholding, geometry, PNG output and the overlay drawn for people.

use std::io::Cursor;

use image::{GrayImage, ImageFormat, RgbImage as ImgRgb};

use super::decode::RgbImage;
use super::preprocess::PixelBox;
use crate::error::{Error, Result};

/// A binary mask at image resolution: one byte per pixel, 0 or 1, row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mask {
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
}

impl Mask {
    /// Foreground where the logit is positive (probability above 0.5).
    pub fn from_logits(width: u32, height: u32, logits: &[f32]) -> Self {
        debug_assert_eq!(logits.len(), width as usize * height as usize);
        Self { width, height, data: logits.iter().map(|&v| u8::from(v > 0.0)).collect() }
    }

    /// Foreground where the 8-bit value is non-zero (for mask PNGs).
    pub fn from_gray(image: &GrayImage) -> Self {
        Self { width: image.width(), height: image.height(), data: image.as_raw().iter().map(|&v| u8::from(v > 0)).collect() }
    }

    pub fn area(&self) -> u64 {
        self.data.iter().map(|&v| v as u64).sum()
    }

    /// Tight box around the foreground, `x1`/`y1` exclusive; `None` for an empty mask.
    pub fn bounding_box(&self) -> Option<PixelBox> {
        let w = self.width as usize;
        let (mut x0, mut y0, mut x1, mut y1) = (usize::MAX, usize::MAX, 0, 0);
        for (i, _) in self.data.iter().enumerate().filter(|(_, &v)| v != 0) {
            let (x, y) = (i % w, i / w);
            x0 = x0.min(x);
            y0 = y0.min(y);
            x1 = x1.max(x + 1);
            y1 = y1.max(y + 1);
        }
        (x0 != usize::MAX).then(|| PixelBox::new(x0 as f32, y0 as f32, x1 as f32, y1 as f32))
    }

    /// The mask with holes and islands smaller than `min_area` pixels removed, as SAM's
    /// `remove_small_regions` (8-connected; holes first). A hole is background enclosed by the
    /// mask (not touching the image's edge). When every island is that small, the largest stays,
    /// so a mask never vanishes.
    pub fn without_small_regions(&self, min_area: usize) -> Mask {
        let mut out = self.clone();
        for hole in small_regions(&out, 0, min_area).small {
            hole.into_iter().for_each(|i| out.data[i] = 1);
        }
        let mut islands = small_regions(&out, 1, min_area);
        if !islands.any_large {
            let largest = islands.small.iter().enumerate().max_by_key(|(_, r)| r.len()).map(|(n, _)| n);
            if let Some(n) = largest {
                islands.small.swap_remove(n);
            }
        }
        for island in islands.small {
            island.into_iter().for_each(|i| out.data[i] = 0);
        }
        out
    }

    /// Intersection over union with a mask of the same size (1.0 when both are empty).
    pub fn iou(&self, other: &Mask) -> f64 {
        assert_eq!((self.width, self.height), (other.width, other.height), "masks of different sizes");
        let (mut inter, mut union) = (0u64, 0u64);
        for (&a, &b) in self.data.iter().zip(&other.data) {
            inter += (a & b) as u64;
            union += (a | b) as u64;
        }
        if union == 0 { 1.0 } else { inter as f64 / union as f64 }
    }

    /// COCO's uncompressed run-length encoding: `{"size": [height, width], "counts": [...]}`,
    /// runs over the pixels in column-major order, starting with a (possibly empty) run of zeros.
    pub fn coco_rle(&self) -> serde_json::Value {
        let (w, h) = (self.width as usize, self.height as usize);
        let mut counts = Vec::new();
        let (mut current, mut run) = (0u8, 0u64);
        for x in 0..w {
            for y in 0..h {
                let v = self.data[y * w + x];
                if v != current {
                    counts.push(run);
                    current = v;
                    run = 0;
                }
                run += 1;
            }
        }
        counts.push(run);
        serde_json::json!({ "size": [self.height, self.width], "counts": counts })
    }

    /// The mask as an 8-bit PNG with values {0, 255}.
    pub fn to_png(&self) -> Result<Vec<u8>> {
        let gray = GrayImage::from_raw(self.width, self.height, self.data.iter().map(|&v| v * 255).collect())
            .ok_or_else(|| Error::Other("mask buffer does not match its size".into()))?;
        encode_png(image::DynamicImage::ImageLuma8(gray))
    }

    fn is_edge(&self, x: usize, y: usize) -> bool {
        let (w, h) = (self.width as usize, self.height as usize);
        if self.data[y * w + x] == 0 {
            return false;
        }
        x == 0 || y == 0 || x + 1 == w || y + 1 == h
            || self.data[y * w + x - 1] == 0
            || self.data[y * w + x + 1] == 0
            || self.data[(y - 1) * w + x] == 0
            || self.data[(y + 1) * w + x] == 0
    }
}

/// Colours and opacity of the overlay.
#[derive(Debug, Clone, Copy)]
pub struct OverlayStyle {
    pub fill: [u8; 3],
    pub fill_opacity: f32,
    pub outline: [u8; 3],
    pub box_colour: [u8; 3],
}

impl Default for OverlayStyle {
    fn default() -> Self {
        Self { fill: [0, 200, 255], fill_opacity: 0.35, outline: [255, 230, 0], box_colour: [255, 64, 64] }
    }
}

/// The image with the mask filled and outlined and `boxes` drawn on top, as a PNG.
pub fn overlay_png(image: &RgbImage, mask: &Mask, boxes: &[PixelBox], style: OverlayStyle) -> Result<Vec<u8>> {
    if (image.width, image.height) != (mask.width, mask.height) {
        return Err(Error::Other("mask and image sizes differ".into()));
    }
    let (w, h) = (image.width as usize, image.height as usize);
    let mut out = image.pixels.clone();
    for y in 0..h {
        for x in 0..w {
            let i = y * w + x;
            let px = &mut out[i * 3..i * 3 + 3];
            if mask.is_edge(x, y) {
                px.copy_from_slice(&style.outline);
            } else if mask.data[i] != 0 {
                for c in 0..3 {
                    px[c] = (px[c] as f32 * (1.0 - style.fill_opacity) + style.fill[c] as f32 * style.fill_opacity).round() as u8;
                }
            }
        }
    }
    let thickness = ((w.max(h) as f32 / 400.0).ceil() as usize).max(1);
    for b in boxes {
        draw_rectangle(&mut out, w, h, b, thickness, style.box_colour);
    }
    let rgb = ImgRgb::from_raw(image.width, image.height, out).expect("same size as the input image");
    encode_png(image::DynamicImage::ImageRgb8(rgb))
}

/// The image with a heat map blended over it: `cells` is a `cells_w`×`cells_h` grid of 8-bit
/// strengths covering the whole image, smoothly resized to it (dark → red → yellow).
pub fn heat_overlay_png(image: &RgbImage, cells: &[u8], cells_w: u32, cells_h: u32) -> Result<Vec<u8>> {
    let grid = GrayImage::from_raw(cells_w, cells_h, cells.to_vec()).ok_or_else(|| Error::Other("heat map buffer does not match its size".into()))?;
    let heat = image::imageops::resize(&grid, image.width, image.height, image::imageops::FilterType::Triangle);
    let mut out = image.pixels.clone();
    for (i, v) in heat.as_raw().iter().enumerate() {
        let t = *v as f32 / 255.0;
        let colour = [255.0, 255.0 * (2.0 * t - 1.0).max(0.0), 0.0];
        let alpha = 0.6 * t;
        for c in 0..3 {
            let px = &mut out[i * 3 + c];
            *px = (*px as f32 * (1.0 - alpha) + colour[c] * alpha).round() as u8;
        }
    }
    let rgb = ImgRgb::from_raw(image.width, image.height, out).expect("same size as the input image");
    encode_png(image::DynamicImage::ImageRgb8(rgb))
}

fn draw_rectangle(pixels: &mut [u8], w: usize, h: usize, b: &PixelBox, thickness: usize, colour: [u8; 3]) {
    let clamp_x = |v: f32| (v.max(0.0) as usize).min(w - 1);
    let clamp_y = |v: f32| (v.max(0.0) as usize).min(h - 1);
    let (x0, y0, x1, y1) = (clamp_x(b.x0), clamp_y(b.y0), clamp_x(b.x1 - 1.0), clamp_y(b.y1 - 1.0));
    let mut paint = |x: usize, y: usize| pixels[(y * w + x) * 3..(y * w + x) * 3 + 3].copy_from_slice(&colour);
    for t in 0..thickness {
        for x in x0..=x1 {
            paint(x, (y0 + t).min(h - 1));
            paint(x, y1.saturating_sub(t));
        }
        for y in y0..=y1 {
            paint((x0 + t).min(w - 1), y);
            paint(x1.saturating_sub(t), y);
        }
    }
}

fn encode_png(image: image::DynamicImage) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    image
        .write_to(&mut Cursor::new(&mut out), ImageFormat::Png)
        .map_err(|e| Error::Other(format!("cannot encode PNG: {e}")))?;
    Ok(out)
}

/// The 8-connected regions of pixels equal to `value` smaller than some area: their pixels,
/// and whether any region was larger.
struct Regions {
    small: Vec<Vec<usize>>,
    any_large: bool,
}

/// The regions of `value` under `min_area` pixels (8-connected). Background regions (`value` 0)
/// that touch the image's edge are not holes: never small.
fn small_regions(mask: &Mask, value: u8, min_area: usize) -> Regions {
    let (w, h) = (mask.width as usize, mask.height as usize);
    let mut seen = vec![false; w * h];
    let mut regions = Regions { small: Vec::new(), any_large: false };
    let mut stack = Vec::new();
    for start in 0..w * h {
        if seen[start] || mask.data[start] != value {
            continue;
        }
        seen[start] = true;
        stack.push(start);
        let mut pixels = Vec::new();
        let mut area = 0usize;
        let mut touches_edge = false;
        while let Some(i) = stack.pop() {
            area += 1;
            if area <= min_area {
                pixels.push(i);
            }
            let (x, y) = (i % w, i / w);
            touches_edge |= x == 0 || y == 0 || x + 1 == w || y + 1 == h;
            for ny in y.saturating_sub(1)..=(y + 1).min(h - 1) {
                for nx in x.saturating_sub(1)..=(x + 1).min(w - 1) {
                    let j = ny * w + nx;
                    if !seen[j] && mask.data[j] == value {
                        seen[j] = true;
                        stack.push(j);
                    }
                }
            }
        }
        if area < min_area && !(value == 0 && touches_edge) {
            regions.small.push(pixels);
        } else {
            regions.any_large = true;
        }
    }
    regions
}

#[cfg(test)]
mod tests {
    use super::*;

    fn square_mask() -> Mask {
        // 4×3 image with foreground at x 1..3, y 1..2.
        Mask::from_logits(4, 3, &[-1., -1., -1., -1., -1., 2., 3., -1., -1., -1., -1., -1.])
    }

    /// `#` foreground, `.` background, one string per row.
    fn drawn(rows: &[&str]) -> Mask {
        let data = rows.iter().flat_map(|r| r.bytes().map(|b| u8::from(b == b'#'))).collect();
        Mask { width: rows[0].len() as u32, height: rows.len() as u32, data }
    }

    #[test]
    fn small_holes_and_islands_go_large_ones_stay() {
        let mask = drawn(&[
            "#####.......",
            "#.###.....#.",
            "#####.......",
            "#...#.......",
            "#...#...##..",
            "#####...##..",
        ]);
        let cleaned = mask.without_small_regions(4);
        assert_eq!(
            cleaned,
            drawn(&[
                "#####.......",
                "#####.......",
                "#####.......",
                "#...#.......",
                "#...#...##..",
                "#####...##..",
            ]),
            "the 1-pixel hole is filled, the 6-pixel hole stays, the 1-pixel island goes, the 4-pixel island stays"
        );
        assert_eq!(mask.without_small_regions(0), mask);
    }

    #[test]
    fn a_mask_of_small_islands_keeps_its_largest() {
        let mask = drawn(&["#..##", ".....", "..#.."]);
        assert_eq!(mask.without_small_regions(10), drawn(&["...##", ".....", "....."]));
        let empty = drawn(&["....."]);
        assert_eq!(empty.without_small_regions(10), empty, "background at the edge is no hole");
    }

    #[test]
    fn box_is_tight_and_exclusive() {
        let m = square_mask();
        assert_eq!(m.area(), 2);
        assert_eq!(m.bounding_box().unwrap().as_array(), [1.0, 1.0, 3.0, 2.0]);
        assert!(Mask::from_logits(2, 1, &[-1.0, 0.0]).bounding_box().is_none());
    }

    #[test]
    fn iou_counts_overlap() {
        let a = square_mask();
        let mut b = a.clone();
        b.data[6] = 0;
        b.data[7] = 1;
        assert!((a.iou(&b) - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(a.iou(&a), 1.0);
    }

    #[test]
    fn coco_rle_runs_down_the_columns_starting_with_zeros() {
        // 4×3 with foreground at (1,1) and (2,1): column-major runs 4 zeros, 1 one, 2 zeros, 1 one, 4 zeros.
        let rle = square_mask().coco_rle();
        assert_eq!(rle["size"], serde_json::json!([3, 4]));
        assert_eq!(rle["counts"], serde_json::json!([4, 1, 2, 1, 4]));
        let full = Mask { width: 2, height: 1, data: vec![1, 1] };
        assert_eq!(full.coco_rle()["counts"], serde_json::json!([0, 2]), "a leading empty run of zeros");
    }

    #[test]
    fn png_round_trips() {
        let m = square_mask();
        let png = m.to_png().unwrap();
        let decoded = image::load_from_memory(&png).unwrap().to_luma8();
        assert_eq!(Mask::from_gray(&decoded), m);
    }
}
