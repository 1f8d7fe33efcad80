//! Training targets in the model's frame: the ground-truth mask resized like the image and padded
//! to 256×256 (the low-resolution logits' frame), its 64×64 version for the similarity map, and
//! the normalised box.

use image::imageops::{resize, FilterType};

use super::dataset::Record;
use crate::error::Result;
use crate::image::preprocess::scaled_size;
use crate::sam::INPUT_SIZE;

pub struct Targets {
    /// 256×256, 0/1, row-major.
    pub mask: Vec<f32>,
    /// 64×64 fraction of foreground in each 4×4 cell (soft, so thin and small structures keep a target).
    pub coarse_mask: Vec<f32>,
    /// (cx, cy, w, h) in [0, 1] of the padded 256×256 frame.
    pub box_cxcywh: [f32; 4],
}

impl Targets {
    pub fn load(root: &std::path::Path, record: &Record) -> Result<Self> {
        let mask = record.load_mask(root)?;
        let (w, h, scale) = scaled_size(mask.width(), mask.height());
        let small = resize(&mask, w, h, FilterType::Nearest);
        let side = INPUT_SIZE;
        let mut full = vec![0.0f32; side * side];
        for (x, y, p) in small.enumerate_pixels() {
            full[y as usize * side + x as usize] = if p.0[0] > 127 { 1.0 } else { 0.0 };
        }
        let coarse_side = side / 4;
        let mut coarse = vec![0.0f32; coarse_side * coarse_side];
        for cy in 0..coarse_side {
            for cx in 0..coarse_side {
                let sum: f32 = (0..4).flat_map(|dy| (0..4).map(move |dx| (dy, dx))).map(|(dy, dx)| full[(cy * 4 + dy) * side + cx * 4 + dx]).sum();
                coarse[cy * coarse_side + cx] = sum / 16.0;
            }
        }
        let [x0, y0, x1, y1] = record.bbox.map(|v| v as f32 * scale / side as f32);
        Ok(Self { mask: full, coarse_mask: coarse, box_cxcywh: [(x0 + x1) / 2.0, (y0 + y1) / 2.0, x1 - x0, y1 - y0] })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::dataset::Split;

    #[test]
    fn a_whole_is_the_union_of_its_part_masks() {
        let dir = std::env::temp_dir().join(format!("medsee-targets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // 256×256, so the model frame equals the image: left half and a bottom-right square.
        let left = image::GrayImage::from_fn(256, 256, |x, _| image::Luma([if x < 128 { 255 } else { 0 }]));
        let corner = image::GrayImage::from_fn(256, 256, |x, y| image::Luma([if x >= 192 && y >= 192 { 255 } else { 0 }]));
        left.save(dir.join("left.png")).unwrap();
        corner.save(dir.join("corner.png")).unwrap();
        let record = Record {
            id: "t/1".into(),
            set: "t".into(),
            modality: "xray".into(),
            image: "unused.png".into(),
            masks: vec!["left.png".into(), "corner.png".into()],
            class: "lungs".into(),
            width: 256,
            height: 256,
            bbox: [0, 0, 256, 256],
            area: 128 * 256 + 64 * 64,
            split: Split::Train,
        };
        let targets = Targets::load(&dir, &record).unwrap();
        let area: f32 = targets.mask.iter().sum();
        assert_eq!(area as u64, record.area);
        assert_eq!(targets.mask[255 * 256 + 255], 1.0);
        assert_eq!(targets.mask[10 * 256 + 200], 0.0);
        let broken = Record { masks: vec!["left.png".into(), "missing.png".into()], ..record };
        let Err(error) = Targets::load(&dir, &broken) else { panic!("a missing part mask must fail") };
        assert!(error.to_string().contains("missing.png"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
