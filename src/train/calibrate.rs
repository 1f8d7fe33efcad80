//! The decoder-prompt gates, calibrated after training. MediSee sends the fused `[SEG]` state to
//! the mask decoder as a prompt token next to the predicted box. On some structures that token
//! improves the mask; on others the box prompt alone gives a better one (measured here on
//! held-out training images: 0.28 → 0.39 mean IoU without it, most on chest X-rays and fetal
//! heads, while dermoscopy lesions lose 0.2 without it). Likewise the box head's correction of
//! the class's usual place (the anchor) helps where the image decides where the structure is
//! (a lesion, a fetal head) and can hurt where the structure always lies in the same place (the
//! heart on a chest X-ray). The training images cannot tell which, because the heads have
//! fitted them, so each class chooses among the four prompts on training images the heads never
//! saw.

use std::collections::{BTreeMap, BTreeSet};

use futures_lite::future::block_on;

use super::cache::EmbeddingCache;
use super::dataset::{Dataset, ImageItem, Split};
use super::eval::mask_iou;
use super::questions::{Phrasings, QuestionGenerator};
use super::targets::Targets;
use super::trainer::select_images;
use crate::ask::{clean_question, Reasoner};
use crate::error::Result;
use crate::reason::DecoderPrompt;
use crate::rng::SplitMix64;
use crate::segment::read_f32;

/// A class decides for itself with at least this many calibration questions; classes with
/// fewer follow the decision pooled over all questions.
pub const MIN_QUESTIONS_PER_CLASS: usize = 4;

/// Mask IoU of one class's calibration questions under each prompt of [`DecoderPrompt::ALL`],
/// summed over its `questions`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GateEvidence {
    pub questions: usize,
    pub iou: [f64; 4],
}

impl GateEvidence {
    fn add(&mut self, other: &GateEvidence) {
        self.questions += other.questions;
        for (sum, iou) in self.iou.iter_mut().zip(other.iou) {
            *sum += iou;
        }
    }

    fn means(&self) -> [f64; 4] {
        self.iou.map(|sum| sum / self.questions.max(1) as f64)
    }

    /// The prompt with the best mean IoU; on a tie the earlier one (MediSee's graph first).
    fn best(&self) -> DecoderPrompt {
        let means = self.means();
        let best = (1..4).fold(0, |best, i| if means[i] > means[best] { i } else { best });
        DecoderPrompt::ALL[best]
    }
}

/// The prompt per class (in `class_names` order): a class with enough evidence takes its best;
/// the others follow the pooled evidence.
pub fn gate_values(class_names: &[String], evidence: &BTreeMap<String, GateEvidence>) -> Vec<DecoderPrompt> {
    let mut pooled = GateEvidence::default();
    for e in evidence.values() {
        pooled.add(e);
    }
    class_names
        .iter()
        .map(|class| match evidence.get(class) {
            Some(e) if e.questions >= MIN_QUESTIONS_PER_CLASS => e.best(),
            _ => pooled.best(),
        })
        .collect()
}

/// Training images that `train` did not use (those are `select_images(.., used_per_set, seed)`),
/// at most `per_set` per data set; small sets may have none left.
pub fn held_out_images(data: &Dataset, used_per_set: usize, seed: u64, per_set: usize) -> Vec<&ImageItem> {
    let used: BTreeSet<&str> = select_images(data, Split::Train, used_per_set, seed).iter().map(|i| i.id.as_str()).collect();
    let mut taken: BTreeMap<&str, usize> = BTreeMap::new();
    select_images(data, Split::Train, usize::MAX, seed ^ 0xca1b)
        .into_iter()
        .filter(|item| !used.contains(item.id.as_str()))
        .filter(|item| {
            let count = taken.entry(item.id.split('/').next().unwrap_or_default()).or_default();
            *count += 1;
            *count <= per_set
        })
        .collect()
}

/// Asks about every annotated structure of `images` (training phrasings) and compares the
/// masks of the four prompts against the ground truth, per class.
pub fn gate_evidence(reasoner: &Reasoner, data: &Dataset, images: &[&ImageItem], cache: &EmbeddingCache, seed: u64, log: &mut dyn FnMut(&str)) -> Result<BTreeMap<String, GateEvidence>> {
    cache.fill(reasoner.segmenter(), images, log)?;
    let device = reasoner.segmenter().device().clone();
    let generator = QuestionGenerator::new(reasoner.knowledge().clone(), Phrasings::Train);
    let mut rng = SplitMix64::new(seed);
    let mut evidence: BTreeMap<String, GateEvidence> = BTreeMap::new();
    for (n, item) in images.iter().enumerate() {
        let embedding = cache.load_embedding(item, &device)?;
        for record in &item.objects {
            let Some(structure) = generator.knowledge().structure(&record.class) else { continue };
            let question = clean_question(&generator.positive(&structure, &mut rng).text)?;
            let (candidates, located) = reasoner.locate(&embedding, &question)?;
            let target = Targets::load(&data.root, record)?;
            let mut iou = [0.0; 4];
            for (iou, prompt) in iou.iter_mut().zip(DecoderPrompt::ALL) {
                let out = reasoner.decode(&embedding, candidates.clone(), located.clone(), prompt);
                *iou = mask_iou(&block_on(read_f32(out.decoder.low_res_masks))?, &target.mask);
            }
            evidence.entry(record.class.clone()).or_default().add(&GateEvidence { questions: 1, iou });
        }
        if n % 10 == 9 || n + 1 == images.len() {
            log(&format!("calibrate: {}/{} images", n + 1, images.len()));
        }
    }
    Ok(evidence)
}

/// The evidence and decisions as log lines.
pub fn describe(class_names: &[String], evidence: &BTreeMap<String, GateEvidence>, prompts: &[DecoderPrompt]) -> Vec<String> {
    let mut lines = vec![format!(
        "{:<28} {:>4} {:>9} {:>9} {:>9} {:>9}  chosen (mean mask IoU: corrected box / anchor, with / without the seg token)",
        "class", "n", "box+tok", "box", "anch+tok", "anchor"
    )];
    for (class, prompt) in class_names.iter().zip(prompts) {
        if let Some(e) = evidence.get(class) {
            let [a, b, c, d] = e.means();
            let pooled = if e.questions >= MIN_QUESTIONS_PER_CLASS { "" } else { " (pooled)" };
            let chosen = format!("{}{}", if prompt.corrected_box { "corrected box" } else { "anchor" }, if prompt.seg_token { " + seg token" } else { "" });
            lines.push(format!("{class:<28} {:>4} {a:>9.3} {b:>9.3} {c:>9.3} {d:>9.3}  {chosen}{pooled}", e.questions));
        }
    }
    let unseen = class_names.iter().filter(|c| !evidence.contains_key(*c)).count();
    lines.push(format!("{unseen} classes without held-out images follow the pooled decision"));
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn evidence(questions: usize, means: [f64; 4]) -> GateEvidence {
        GateEvidence { questions, iou: means.map(|m| m * questions as f64) }
    }

    #[test]
    fn classes_with_evidence_decide_and_the_rest_follow_the_pool() {
        let names: Vec<String> = ["lung", "lesion", "rare", "unseen"].map(String::from).to_vec();
        let table = BTreeMap::from([
            ("lung".to_string(), evidence(30, [0.2, 0.6, 0.3, 0.7])),
            ("lesion".to_string(), evidence(10, [0.7, 0.5, 0.4, 0.3])),
            ("rare".to_string(), evidence(MIN_QUESTIONS_PER_CLASS - 1, [0.9, 0.1, 0.1, 0.1])),
        ]);
        // Pooled sums: FULL 6 + 7 + 2.7 = 15.7, box only 18 + 5 + 0.3 = 23.3, anchor + token
        // 9 + 4 + 0.3 = 13.3, anchor only 21 + 3 + 0.3 = 24.3.
        let anchor = DecoderPrompt { seg_token: false, corrected_box: false };
        assert_eq!(gate_values(&names, &table), vec![anchor, DecoderPrompt::FULL, anchor, anchor]);
        let lines = describe(&names, &table, &gate_values(&names, &table));
        assert!(lines.iter().any(|l| l.starts_with("rare") && l.ends_with("anchor (pooled)")), "{lines:?}");
        assert!(lines.iter().any(|l| l.starts_with("lesion") && l.ends_with("corrected box + seg token")), "{lines:?}");
    }

    #[test]
    fn a_tie_keeps_the_medisee_prompt() {
        assert_eq!(evidence(5, [0.5; 4]).best(), DecoderPrompt::FULL);
    }
}
