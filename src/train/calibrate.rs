//! The decoder-prompt gates, calibrated after training. MediSee sends the fused `[SEG]` state to
//! the mask decoder as a prompt token next to the predicted box. On some structures that token
//! improves the mask; on others the box prompt alone gives a better one (measured here on
//! held-out training images: 0.28 → 0.39 mean IoU without it, most on chest X-rays and fetal
//! heads, while dermoscopy lesions lose 0.2 without it). Likewise the box head's correction of
//! the class's usual place (the anchor) helps where the image decides where the structure is
//! (a lesion, a fetal head) and can hurt where the structure always lies in the same place (the
//! heart on a chest X-ray), and the box of the place map can beat both. The training images
//! cannot tell which, because the heads have fitted them, so each class chooses among the six
//! prompts on training images the heads never saw — and leaves the anchor alone, the baseline's
//! prompt, only for a gain clear of noise. On the same questions each class then chooses which
//! box its answers report: the mask's tight box, unless the box that prompted the decoder is
//! better by a margin clear of noise (a clavicle, which the decoder segments poorly even from
//! the true box); and last, by how much its prompt box is scaled, where a scale raises the
//! answer's mask + box IoU clear of noise (a place map covers a structure's core more than its
//! rim, and the decoder seldom segments beyond its box).

use std::collections::{BTreeMap, BTreeSet};

use futures_lite::future::block_on;

use super::cache::EmbeddingCache;
use super::dataset::{Dataset, ImageItem, Split};
use super::eval::{answer_mask, box_iou, mask_iou, xyxy};
use super::questions::{Phrasings, QuestionGenerator};
use super::targets::Targets;
use super::trainer::{select_images, select_images_except};
use crate::ask::{answer_box, clean_question, Reasoner};
use crate::image::PixelBox;
use crate::error::Result;
use crate::reason::{AnswerBox, BoxSource, ClassChoice, DecoderPrompt, BOX_SCALES};
use crate::rng::SplitMix64;
use crate::segment::read_f32;

/// A class decides for itself with at least this many calibration questions; classes with
/// fewer follow the decision pooled over all questions. With four, as the small sets give (their
/// few training images mostly go to training), a class's choice was mostly noise.
pub const MIN_QUESTIONS_PER_CLASS: usize = 10;

/// How far a prompt's mean gain over the anchor alone must stand above noise, in standard errors
/// of the paired per-question differences, before a class leaves the anchor (and likewise for
/// the answer box and the box scale).
///
/// This and [`MIN_QUESTIONS_PER_CLASS`] were chosen by leave-one-out over the calibration
/// questions (`scripts/calibration-loo.py` on the `calibration.json` a run writes; the shipped
/// heads' is `benches/results/calibration.json`): each question answered with the choices the
/// others make. Of 448 questions, one standard error and classes alone from 10 answered 387
/// boxes within IoU 0.5 (mean mask + box IoU 1.441); the former two and 4, 379 (1.420); three,
/// 370–375. Pooling a small class with its data set's classes first did no better on the same
/// evidence (386, 1.438).
pub const REQUIRED_STANDARD_ERRORS: f64 = 1.0;

/// What one calibration question's answer scores under one prompt and box scale: the mask's IoU,
/// the box IoU of the two boxes the answer could report, `[mask's box, prompt box]`, and the IoU
/// the mask decoder predicted for its mask (choosing the scale per question by it lost 11 boxes
/// of 448 against the calibrated scale).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Outcome {
    pub mask_iou: f64,
    pub box_ious: [f64; 2],
    pub predicted_iou: f64,
}

impl Outcome {
    /// The mask and the box the answer reports, weighed alike (both are targets).
    fn score(&self, answer_box: AnswerBox) -> f64 {
        self.mask_iou + self.box_ious[answer_box_index(answer_box)]
    }
}

fn answer_box_index(answer_box: AnswerBox) -> usize {
    match answer_box {
        AnswerBox::Mask => 0,
        AnswerBox::Prompt => 1,
    }
}

/// One class's calibration questions: each one's [`Outcome`] under every prompt of
/// [`DecoderPrompt::ALL`] and every scale of [`BOX_SCALES`].
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct GateEvidence {
    pub outcomes: Vec<[[Outcome; SCALES]; PROMPTS]>,
}

/// Mean and standard error of paired per-question differences.
fn mean_and_error(differences: &[f64]) -> (f64, f64) {
    let n = differences.len() as f64;
    let mean = differences.iter().sum::<f64>() / n.max(1.0);
    if differences.len() < 2 {
        return (mean, f64::INFINITY);
    }
    let variance = differences.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, (variance / n).sqrt())
}

const PROMPTS: usize = DecoderPrompt::ALL.len();
const SCALES: usize = BOX_SCALES.len();

/// Index of the unit scale in [`BOX_SCALES`]: the prompt and the answer box are chosen there.
const UNIT_SCALE: usize = 0;

/// Index of the anchor alone in [`DecoderPrompt::ALL`]: the prompt of the text-only baseline.
const ANCHOR_ONLY: usize = PROMPTS - 1;

impl GateEvidence {
    fn add(&mut self, other: &GateEvidence) {
        self.outcomes.extend_from_slice(&other.outcomes);
    }

    pub fn questions(&self) -> usize {
        self.outcomes.len()
    }

    /// Each question's outcome under prompt `i`, its box unscaled.
    fn unscaled(&self, i: usize) -> impl Iterator<Item = &Outcome> {
        self.outcomes.iter().map(move |q| &q[i][UNIT_SCALE])
    }

    fn means(&self) -> [f64; PROMPTS] {
        let n = self.questions().max(1) as f64;
        std::array::from_fn(|i| self.unscaled(i).map(|o| o.mask_iou).sum::<f64>() / n)
    }

    /// Mean and standard error of prompt `i`'s per-question gain over the anchor alone.
    fn gain_over_anchor(&self, i: usize) -> (f64, f64) {
        mean_and_error(&self.unscaled(i).zip(self.unscaled(ANCHOR_ONLY)).map(|(o, anchor)| o.mask_iou - anchor.mask_iou).collect::<Vec<_>>())
    }

    /// Mean box IoU of the mask's box and of the prompt box under prompt `i`.
    fn box_means(&self, i: usize) -> [f64; 2] {
        let n = self.questions().max(1) as f64;
        [0, 1].map(|k| self.unscaled(i).map(|o| o.box_ious[k]).sum::<f64>() / n)
    }

    /// The mask's box, unless under prompt `i` the prompt box beats it by more than
    /// [`REQUIRED_STANDARD_ERRORS`].
    fn answer_box(&self, i: usize) -> AnswerBox {
        let (gain, error) = mean_and_error(&self.unscaled(i).map(|o| o.box_ious[1] - o.box_ious[0]).collect::<Vec<_>>());
        if gain > REQUIRED_STANDARD_ERRORS * error {
            AnswerBox::Prompt
        } else {
            AnswerBox::Mask
        }
    }

    /// The unit scale, unless under prompt `i` and `answer_box` another scale raises the
    /// [`Outcome::score`] by more than [`REQUIRED_STANDARD_ERRORS`]; then the best of those.
    fn box_scale(&self, i: usize, answer_box: AnswerBox) -> f32 {
        let means = self.scale_means(i, answer_box);
        let clear = |s: usize| {
            let (gain, error) = mean_and_error(&self.outcomes.iter().map(|q| q[i][s].score(answer_box) - q[i][UNIT_SCALE].score(answer_box)).collect::<Vec<_>>());
            gain > REQUIRED_STANDARD_ERRORS * error
        };
        let best = (0..SCALES).filter(|&s| s != UNIT_SCALE && clear(s)).fold(UNIT_SCALE, |best, s| if best == UNIT_SCALE || means[s] > means[best] { s } else { best });
        BOX_SCALES[best]
    }

    /// Mean [`Outcome::score`] under prompt `i` at each box scale.
    fn scale_means(&self, i: usize, answer_box: AnswerBox) -> [f64; SCALES] {
        let n = self.questions().max(1) as f64;
        std::array::from_fn(|s| self.outcomes.iter().map(|q| q[i][s].score(answer_box)).sum::<f64>() / n)
    }

    /// [`Self::best`] prompt, the answer box under it, and then the box scale.
    fn choice(&self) -> ClassChoice {
        let prompt = self.best();
        let answer_box = self.answer_box(prompt.index());
        ClassChoice { prompt, answer_box, box_scale: self.box_scale(prompt.index(), answer_box) }
    }

    /// The anchor alone, unless another prompt beats it by more than
    /// [`REQUIRED_STANDARD_ERRORS`]; then the one with the best mean IoU among those. The heads
    /// fitted training phrasings, and a gain the calibration cannot tell from noise did not carry
    /// over to new ones: the heart's corrected box won 0.537 to 0.488 here and lost on the
    /// evaluation's phrasings.
    fn best(&self) -> DecoderPrompt {
        let means = self.means();
        let clear = |i: usize| {
            let (gain, error) = self.gain_over_anchor(i);
            gain > REQUIRED_STANDARD_ERRORS * error
        };
        let best = (0..ANCHOR_ONLY).filter(|&i| clear(i)).fold(ANCHOR_ONLY, |best, i| if best == ANCHOR_ONLY || means[i] > means[best] { i } else { best });
        DecoderPrompt::ALL[best]
    }
}

/// The choices per class (in `class_names` order): a class with enough evidence makes its own;
/// the others follow the pooled evidence.
pub fn class_choices(class_names: &[String], evidence: &BTreeMap<String, GateEvidence>) -> Vec<ClassChoice> {
    let mut pooled = GateEvidence::default();
    for e in evidence.values() {
        pooled.add(e);
    }
    class_names
        .iter()
        .map(|class| match evidence.get(class) {
            Some(e) if e.questions() >= MIN_QUESTIONS_PER_CLASS => e.choice(),
            _ => pooled.choice(),
        })
        .collect()
}

/// Training images that `train` did not use (those are `select_images(.., used_per_set, seed)`),
/// at most `per_set` per data set; small sets may have none left.
pub fn held_out_images(data: &Dataset, used_per_set: usize, seed: u64, per_set: usize) -> Vec<&ImageItem> {
    let used: BTreeSet<&str> = select_images(data, Split::Train, used_per_set, seed).iter().map(|i| i.id.as_str()).collect();
    select_images_except(data, &used, per_set, seed ^ 0xca1b)
}

/// Asks about every annotated structure of `images` (training phrasings) and compares the
/// masks and boxes of the six prompts, each at every box scale, against the ground truth, per
/// class.
pub fn gate_evidence(reasoner: &Reasoner, data: &Dataset, images: &[&ImageItem], cache: &EmbeddingCache, seed: u64, log: &mut dyn FnMut(&str)) -> Result<BTreeMap<String, GateEvidence>> {
    cache.fill(reasoner.segmenter(), images, log)?;
    let device = reasoner.segmenter().device().clone();
    let generator = QuestionGenerator::new(reasoner.knowledge().clone(), Phrasings::Train);
    let mut rng = SplitMix64::new(seed);
    let mut evidence: BTreeMap<String, GateEvidence> = BTreeMap::new();
    for (n, item) in images.iter().enumerate() {
        let image = reasoner.read_embedding(cache.load_embedding(item, &device)?);
        for record in &item.objects {
            let Some(structure) = generator.knowledge().structure(&record.class) else { continue };
            let question = clean_question(&generator.positive(&structure, &mut rng).text)?;
            let (candidates, mut located) = reasoner.locate(&image, &question)?;
            located.map_box_cxcywh = block_on(reasoner.map_box(&located))?;
            let target = Targets::load(&data.root, record)?;
            let target_box = xyxy(target.box_cxcywh);
            let mut outcomes = [[Outcome::default(); SCALES]; PROMPTS];
            for (by_scale, prompt) in outcomes.iter_mut().zip(DecoderPrompt::ALL) {
                for (outcome, box_scale) in by_scale.iter_mut().zip(BOX_SCALES) {
                    let out = reasoner.decode(&image, candidates.clone(), located.clone(), prompt, box_scale);
                    let predicted_iou = f64::from(block_on(read_f32(out.decoder.iou_predictions))?[0]);
                    let logits = block_on(read_f32(out.decoder.low_res_masks))?;
                    let [x0, y0, x1, y1] = xyxy(block_on(read_f32(out.box_cxcywh))?.try_into().expect("one box"));
                    let prompt_box = PixelBox::new(x0, y0, x1, y1);
                    let mask = answer_mask(&logits);
                    *outcome = Outcome {
                        mask_iou: mask_iou(&logits, &target.mask),
                        box_ious: [AnswerBox::Mask, AnswerBox::Prompt].map(|kind| box_iou(answer_box(kind, &mask, prompt_box).as_array(), target_box)),
                        predicted_iou,
                    };
                }
            }
            evidence.entry(record.class.clone()).or_default().outcomes.push(outcomes);
        }
        if n % 10 == 9 || n + 1 == images.len() {
            log(&format!("calibrate: {}/{} images", n + 1, images.len()));
        }
    }
    Ok(evidence)
}

/// The evidence and decisions as log lines.
pub fn describe(class_names: &[String], evidence: &BTreeMap<String, GateEvidence>, choices: &[ClassChoice]) -> Vec<String> {
    let header: Vec<String> = DecoderPrompt::ALL.iter().map(|p| format!("{:>9}", short_name(p))).collect();
    let mut lines = vec![format!(
        "{:<28} {:>4} {}  {:>9} {:>9}  {}  chosen (mean mask IoU per prompt, +t: with the seg token; box IoU of the mask's box and the prompt box under the chosen prompt; mask + answered box IoU per box scale)",
        "class",
        "n",
        header.join(" "),
        "mask box",
        "prompt box",
        BOX_SCALES.map(|s| format!("{:>6}", format!("×{s}"))).join(" ")
    )];
    for (class, choice) in class_names.iter().zip(choices) {
        if let Some(e) = evidence.get(class) {
            let means: Vec<String> = e.means().iter().map(|m| format!("{m:>9.3}")).collect();
            let [mask_box, prompt_box] = e.box_means(choice.prompt.index());
            let pooled = if e.questions() >= MIN_QUESTIONS_PER_CLASS { "" } else { " (pooled)" };
            let answered = match choice.answer_box {
                AnswerBox::Mask => "",
                AnswerBox::Prompt => ", answers the prompt box",
            };
            let scores = e.scale_means(choice.prompt.index(), choice.answer_box).map(|m| format!("{m:>6.3}")).join(" ");
            let scaled = if choice.box_scale == 1.0 { String::new() } else { format!(" ×{}", choice.box_scale) };
            lines.push(format!(
                "{class:<28} {:>4} {}  {mask_box:>9.3} {prompt_box:>9.3}  {scores}  {}{scaled}{answered}{pooled}",
                e.questions(),
                means.join(" "),
                long_name(&choice.prompt)
            ));
        }
    }
    let unseen = class_names.iter().filter(|c| !evidence.contains_key(*c)).count();
    lines.push(format!("{unseen} classes without held-out images follow the pooled decision"));
    lines
}

/// A prompt's column name in the calibration log…
fn short_name(p: &DecoderPrompt) -> String {
    format!("{}{}", box_name(p.box_source).split(' ').next().unwrap_or_default(), if p.seg_token { "+t" } else { "" })
}

/// …and its name in a decision.
fn long_name(p: &DecoderPrompt) -> String {
    format!("{}{}", box_name(p.box_source), if p.seg_token { " + seg token" } else { "" })
}

fn box_name(source: BoxSource) -> &'static str {
    match source {
        BoxSource::Corrected => "corrected box",
        BoxSource::Map => "map box",
        BoxSource::Anchor => "anchor",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `questions` questions whose mask IoUs under the six prompts ([`DecoderPrompt::ALL`]'s
    /// order) are `means`, the first prompt's ± `spread` (half of them up, half down), at every
    /// box scale alike; the mask's box has IoU 0.6 and the prompt box 0.5.
    fn evidence(questions: usize, means: [f64; PROMPTS], spread: f64) -> GateEvidence {
        let outcomes = (0..questions)
            .map(|q| {
                let sign = if q % 2 == 0 { 1.0 } else { -1.0 };
                std::array::from_fn(|i| [Outcome { mask_iou: means[i] + if i == 0 { sign * spread } else { 0.0 }, box_ious: [0.6, 0.5], predicted_iou: 0.5 }; SCALES])
            })
            .collect();
        GateEvidence { outcomes }
    }

    /// Sets the box IoUs of prompt `i` at every scale, per question (`q` → `[mask's box, prompt box]`).
    fn set_box_ious(e: &mut GateEvidence, i: usize, box_ious: impl Fn(usize) -> [f64; 2]) {
        for (q, outcomes) in e.outcomes.iter_mut().enumerate() {
            for outcome in &mut outcomes[i] {
                outcome.box_ious = box_ious(q);
            }
        }
    }

    #[test]
    fn classes_with_clear_evidence_decide_and_the_rest_follow_the_pool() {
        let names: Vec<String> = ["lung", "lesion", "kidney", "rare", "unseen"].map(String::from).to_vec();
        let table = BTreeMap::from([
            ("lung".to_string(), evidence(30, [0.2, 0.6, 0.3, 0.3, 0.3, 0.7], 0.0)),
            ("lesion".to_string(), evidence(10, [0.7, 0.5, 0.6, 0.6, 0.4, 0.3], 0.01)),
            ("kidney".to_string(), evidence(10, [0.3, 0.3, 0.4, 0.6, 0.1, 0.1], 0.01)),
            ("rare".to_string(), evidence(MIN_QUESTIONS_PER_CLASS - 1, [0.9, 0.1, 0.1, 0.1, 0.1, 0.1], 0.0)),
        ]);
        let map = DecoderPrompt { seg_token: false, box_source: BoxSource::Map };
        let anchor = DecoderPrompt::ANCHOR;
        let choices = class_choices(&names, &table);
        assert_eq!(choices.iter().map(|c| c.prompt).collect::<Vec<_>>(), vec![anchor, DecoderPrompt::FULL, map, anchor, anchor]);
        assert!(choices.iter().all(|c| c.answer_box == AnswerBox::Mask), "the mask's box is better everywhere");
        assert!(choices.iter().all(|c| c.box_scale == 1.0), "no scale does better than the box as it is");
        let lines = describe(&names, &table, &choices);
        assert!(lines.iter().any(|l| l.starts_with("rare") && l.ends_with("anchor (pooled)")), "{lines:?}");
        assert!(lines.iter().any(|l| l.starts_with("lesion") && l.ends_with("corrected box + seg token")), "{lines:?}");
        assert!(lines.iter().any(|l| l.starts_with("kidney") && l.ends_with("map box")), "{lines:?}");
    }

    /// A mean gain within the noise of the per-question differences keeps the anchor; the same
    /// gain with little spread does not.
    #[test]
    fn a_gain_inside_the_noise_keeps_the_anchor() {
        let anchor = DecoderPrompt::ANCHOR;
        assert_eq!(evidence(10, [0.55, 0.0, 0.0, 0.0, 0.0, 0.5], 0.3).best(), anchor);
        assert_eq!(evidence(10, [0.55, 0.0, 0.0, 0.0, 0.0, 0.5], 0.01).best(), DecoderPrompt::FULL);
        assert_eq!(evidence(5, [0.5; PROMPTS], 0.0).best(), anchor, "a tie keeps the anchor");
    }

    /// The answer reports the prompt box only where, under the chosen prompt, it beats the
    /// mask's box clear of noise; the other prompts' boxes do not matter.
    #[test]
    fn the_prompt_box_is_answered_only_where_it_is_clearly_better() {
        // The map box (index 3) is the chosen prompt.
        let mut clavicle = evidence(10, [0.1, 0.1, 0.1, 0.3, 0.1, 0.1], 0.0);
        set_box_ious(&mut clavicle, 3, |q| [if q % 2 == 0 { 0.32 } else { 0.28 }, 0.6]);
        let choice = clavicle.choice();
        assert_eq!(choice.prompt.box_source, BoxSource::Map);
        assert_eq!(choice.answer_box, AnswerBox::Prompt);
        assert_eq!(choice.gates(), [0.0, 0.0, 1.0, 1.0, 1.0]);
        assert_eq!(ClassChoice::from_gates(&choice.gates()), choice);
        // A mean gain inside the noise of the per-question differences (0.1 ± 0.27).
        set_box_ious(&mut clavicle, 3, |q| if q % 2 == 0 { [0.0, 0.9] } else { [0.8, 0.1] });
        assert_eq!(clavicle.choice().answer_box, AnswerBox::Mask);
        // Clearly better under a prompt that was not chosen: still the mask's box.
        let mut other = evidence(10, [0.1, 0.1, 0.1, 0.3, 0.1, 0.1], 0.0);
        set_box_ious(&mut other, 0, |_| [0.1, 0.9]);
        assert_eq!(other.choice().answer_box, AnswerBox::Mask);
    }

    /// A box scale other than 1 is chosen only where it raises the answer's mask + box IoU clear
    /// of noise, under the chosen prompt and answer box; then the best such scale.
    #[test]
    fn the_box_is_scaled_only_where_that_clearly_helps() {
        let grow = |e: &mut GateEvidence, prompt: usize, gains: [f64; SCALES], spread: f64| {
            for (q, outcomes) in e.outcomes.iter_mut().enumerate() {
                let sign = if q % 2 == 0 { 1.0 } else { -1.0 };
                for (s, outcome) in outcomes[prompt].iter_mut().enumerate() {
                    outcome.box_ious[0] += gains[s] + if s == UNIT_SCALE { 0.0 } else { sign * spread };
                }
            }
        };
        // The map box (index 3) is chosen; ×1.1 and ×1.2 help its answers' boxes, ×1.2 more.
        let mut kidney = evidence(10, [0.1, 0.1, 0.1, 0.3, 0.1, 0.1], 0.0);
        grow(&mut kidney, 3, [0.0, -0.1, 0.1, 0.2, 0.05], 0.01);
        assert_eq!(kidney.choice().box_scale, 1.2);
        let lines = describe(&["kidney".to_string()], &BTreeMap::from([("kidney".to_string(), kidney.clone())]), &[kidney.choice()]);
        assert!(lines[1].ends_with("map box ×1.2"), "{lines:?}");
        // The same gains under a prompt that is not chosen change nothing.
        let mut other = evidence(10, [0.1, 0.1, 0.1, 0.3, 0.1, 0.1], 0.0);
        grow(&mut other, 0, [0.0, -0.1, 0.1, 0.2, 0.05], 0.01);
        assert_eq!(other.choice().box_scale, 1.0);
        // Inside the noise: the box as it is.
        let mut noisy = evidence(10, [0.1, 0.1, 0.1, 0.3, 0.1, 0.1], 0.0);
        grow(&mut noisy, 3, [0.0, -0.1, 0.1, 0.2, 0.05], 1.0);
        assert_eq!(noisy.choice().box_scale, 1.0);
    }
}
