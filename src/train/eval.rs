//! `medsee eval`: the reasoning model on validation images with held-out phrasings, in MediSee's
//! metrics — gIoU (mean per-question mask IoU), cIoU (cumulative), Dice, box IoU and Acc@0.5 —
//! next to the upper bound (LiteMedSAM given the ground-truth box), plus how often a question
//! about an absent structure is answered "not found". Masks are compared in the model's
//! 256×256 frame.

use burn::tensor::{Device, Tensor};
use futures_lite::future::block_on;
use serde_json::json;

use super::cache::EmbeddingCache;
use super::dataset::{Dataset, Split};
use super::knowledge::Knowledge;
use super::questions::{Phrasings, QuestionGenerator};
use super::targets::Targets;
use super::trainer::select_images;
use crate::error::{Error, Result};
use crate::llm::TextModel;
use crate::reason::sequence::Layout;
use crate::reason::{ReasonConfig, ReasoningHeads};
use crate::rng::SplitMix64;
use crate::sam::INPUT_SIZE;
use crate::segment::{read_f32, BoxSegmenter};
use crate::weights::convert::ModelPaths;
use crate::weights::{self, Variant};

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Scores {
    pub questions: usize,
    pub giou: f64,
    pub ciou: f64,
    pub dice: f64,
    pub box_iou: f64,
    pub box_acc50: f64,
    /// Positive questions the presence head answered "found".
    pub found_rate: f64,
}

#[derive(Default)]
struct Accumulator {
    n: usize,
    iou_sum: f64,
    dice_sum: f64,
    inter: f64,
    union: f64,
    box_iou_sum: f64,
    box_hits: usize,
    found: usize,
}

impl Accumulator {
    fn add_mask(&mut self, pred: &[f32], target: &[f32]) {
        let (mut inter, mut union, mut p_sum, mut t_sum) = (0.0, 0.0, 0.0, 0.0);
        for (&p, &t) in pred.iter().zip(target) {
            let p = f64::from(u8::from(p > 0.0));
            inter += p * t as f64;
            union += (p + t as f64 - p * t as f64).min(1.0);
            p_sum += p;
            t_sum += t as f64;
        }
        self.n += 1;
        self.iou_sum += if union > 0.0 { inter / union } else { 1.0 };
        self.dice_sum += if p_sum + t_sum > 0.0 { 2.0 * inter / (p_sum + t_sum) } else { 1.0 };
        self.inter += inter;
        self.union += union;
    }

    fn add_box(&mut self, pred: [f32; 4], target: [f32; 4]) {
        let iou = box_iou(pred, target);
        self.box_iou_sum += iou;
        self.box_hits += usize::from(iou >= 0.5);
    }

    fn scores(&self) -> Scores {
        let n = self.n.max(1) as f64;
        Scores {
            questions: self.n,
            giou: self.iou_sum / n,
            ciou: if self.union > 0.0 { self.inter / self.union } else { 0.0 },
            dice: self.dice_sum / n,
            box_iou: self.box_iou_sum / n,
            box_acc50: self.box_hits as f64 / n,
            found_rate: self.found as f64 / n,
        }
    }
}

/// IoU of two (x0, y0, x1, y1) boxes.
pub fn box_iou(a: [f32; 4], b: [f32; 4]) -> f64 {
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0) as f64;
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0) as f64;
    let inter = iw * ih;
    let area = |r: [f32; 4]| ((r[2] - r[0]).max(0.0) * (r[3] - r[1]).max(0.0)) as f64;
    let union = area(a) + area(b) - inter;
    if union > 0.0 { inter / union } else { 0.0 }
}

fn xyxy(cxcywh: [f32; 4]) -> [f32; 4] {
    let [cx, cy, w, h] = cxcywh;
    [cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0].map(|v| v * INPUT_SIZE as f32)
}

pub struct EvalConfig {
    pub images_per_set: usize,
    pub seed: u64,
    pub heads: std::path::PathBuf,
    pub cache_dir: std::path::PathBuf,
}

pub fn evaluate(paths: &ModelPaths, config: &EvalConfig, log: &mut dyn FnMut(&str)) -> Result<serde_json::Value> {
    let data = Dataset::load(&Dataset::default_root())?;
    let images = select_images(&data, Split::Val, config.images_per_set, config.seed);
    let device = Device::flex();
    let segmenter = BoxSegmenter::load(&paths.converted, Variant::F32, device.clone())?;
    let cache = EmbeddingCache::new(&config.cache_dir)?;
    cache.fill(&segmenter, &images, log)?;
    let llm = TextModel::load(&paths.converted, Variant::Q8, &device)?;
    let reason = ReasonConfig::smollm2_litemedsam();
    let bytes = std::fs::read(&config.heads).map_err(|e| Error::io(&config.heads, e))?;
    let heads: ReasoningHeads = weights::load_record(reason.init(&device), &config.heads.display().to_string(), bytes)?;
    let generator = QuestionGenerator::new(Knowledge::load()?, Phrasings::HeldOut);
    let others: Vec<(String, Vec<String>)> = data.classes().into_iter().collect();
    let mut rng = SplitMix64::new(config.seed);
    let (mut model, mut upper) = (Accumulator::default(), Accumulator::default());
    let (mut negatives, mut not_found) = (0usize, 0usize);
    let sam = segmenter.model();

    for (n, item) in images.iter().enumerate() {
        let embedding = cache.load(item, &device)?;
        for record in &item.objects {
            let Some(structure) = generator.knowledge().structure(&record.class) else { continue };
            let targets = Targets::load(&data.root, record)?;
            let question = generator.positive(&structure, &mut rng);
            let layout = Layout::new(&llm.tokenizer, &question.text, &[], reason.vision_tokens(64), reason.candidates)?;
            let out = heads.forward(sam, &llm.model, embedding.clone(), &layout)?;
            let found = block_on(read_f32(out.presence_logit))?[0] > 0.0;
            let mut mask = block_on(read_f32(out.decoder.low_res_masks))?;
            if !found {
                mask.iter_mut().for_each(|v| *v = -1.0);
            }
            model.found += usize::from(found);
            model.add_mask(&mask, &targets.mask);
            let pred_box = block_on(read_f32(out.box_cxcywh))?;
            model.add_box(xyxy([pred_box[0], pred_box[1], pred_box[2], pred_box[3]]), xyxy(targets.box_cxcywh));

            let gt_box = Tensor::<1>::from_floats(xyxy(targets.box_cxcywh).as_slice(), &device).reshape([1, 4]);
            let bound = sam.decode_boxes(embedding.clone(), gt_box, None);
            upper.found += 1;
            upper.add_mask(&block_on(read_f32(bound.low_res_masks))?, &targets.mask);
            upper.add_box(xyxy(targets.box_cxcywh), xyxy(targets.box_cxcywh));
        }
        if let Some(question) = generator.negative_for(&item.modality, &others, &mut rng) {
            let layout = Layout::new(&llm.tokenizer, &question.text, &[], reason.vision_tokens(64), reason.candidates)?;
            let out = heads.forward(sam, &llm.model, embedding.clone(), &layout)?;
            negatives += 1;
            not_found += usize::from(block_on(read_f32(out.presence_logit))?[0] <= 0.0);
        }
        if n % 10 == 9 || n + 1 == images.len() {
            log(&format!("eval: {}/{} images", n + 1, images.len()));
        }
    }
    let (model, upper) = (model.scores(), upper.scores());
    let not_found_rate = not_found as f64 / negatives.max(1) as f64;
    println!("\nreasoning segmentation, val split, held-out phrasings, {} questions + {negatives} absent-target questions", model.questions);
    println!("{:<34} {:>7} {:>7} {:>7} {:>8} {:>8} {:>7}", "", "gIoU", "cIoU", "Dice", "box IoU", "box@0.5", "found");
    for (name, s) in [("medsee (question → mask)", &model), ("upper bound (LiteMedSAM + GT box)", &upper)] {
        println!("{name:<34} {:>7.3} {:>7.3} {:>7.3} {:>8.3} {:>8.3} {:>7.3}", s.giou, s.ciou, s.dice, s.box_iou, s.box_acc50, s.found_rate);
    }
    println!("absent targets answered \"not found\": {not_found}/{negatives} ({:.1} %)", 100.0 * not_found_rate);
    Ok(json!({ "model": model, "upper_bound": upper, "absent_questions": negatives, "not_found_rate": not_found_rate,
               "images": images.len(), "heads": config.heads, "phrasings": "held out" }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn box_iou_by_definition() {
        assert_eq!(box_iou([0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 2.0, 2.0]), 1.0);
        assert!((box_iou([0.0, 0.0, 2.0, 2.0], [1.0, 0.0, 3.0, 2.0]) - 1.0 / 3.0).abs() < 1e-9);
        assert_eq!(box_iou([0.0, 0.0, 1.0, 1.0], [2.0, 2.0, 3.0, 3.0]), 0.0);
    }

    #[test]
    fn cumulative_and_mean_iou_differ_as_defined() {
        let mut acc = Accumulator::default();
        acc.add_mask(&[1.0, 1.0, -1.0, -1.0], &[1.0, 1.0, 0.0, 0.0]); // IoU 1 (2/2)
        acc.add_mask(&[1.0, -1.0, -1.0, -1.0], &[0.0, 1.0, 1.0, 1.0]); // IoU 0 (0/4)
        let s = acc.scores();
        assert!((s.giou - 0.5).abs() < 1e-9);
        assert!((s.ciou - 2.0 / 6.0).abs() < 1e-9);
    }
}
