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

/// How the calibration decides: a class leaves a default (the anchor alone, the mask's box, the
/// unit scale) only for a mean gain that stands more than `margin` standard errors of the paired
/// per-question differences above zero, and decides for itself only with at least
/// `min_questions_per_class` questions; classes with fewer follow the pooled evidence.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DecisionRule {
    pub margin: f64,
    pub min_questions_per_class: usize,
}

impl DecisionRule {
    /// The shipped rule, chosen by [`leave_one_out`] over the calibration questions (the shipped
    /// heads' evidence is `benches/results/calibration.json`; the trainer logs the comparison
    /// after every calibration). Of 448 questions, one standard error and classes alone from 10
    /// answered 387 boxes within IoU 0.5 (mean mask + box IoU 1.441); two and 4, the rule before,
    /// 379 (1.420); three, 370–375. With four questions a class's choice was mostly noise: the
    /// cardiac and prostate MRI classes kept the anchor, which their own questions put last.
    /// Pooling a small class with its data set's classes first did no better (386, 1.438).
    pub const SHIPPED: DecisionRule = DecisionRule { margin: 1.0, min_questions_per_class: 10 };

    /// Whether the mean of `differences` stands clear of their noise.
    fn clear(&self, differences: impl Iterator<Item = f64>) -> bool {
        let (gain, error) = mean_and_error(&differences.collect::<Vec<_>>());
        gain > self.margin * error
    }
}

/// `default`, unless some other of `options` are clear of noise; then the one of those with the
/// best mean (the first on a tie).
fn best_clear_option(default: usize, options: usize, means: &[f64], clear: impl Fn(usize) -> bool) -> usize {
    (0..options).filter(|&i| i != default && clear(i)).fold(default, |best, i| if best == default || means[i] > means[best] { i } else { best })
}

/// What one calibration question's answer scores under one prompt and box scale: the mask's IoU,
/// the box IoU of the two boxes the answer could report, `[mask's box, prompt box]`, and the IoU
/// the mask decoder predicted for its mask (choosing the scale per question by it lost 11 boxes
/// of 448 against the calibrated scale).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
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
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
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

/// A class's choice as indices into its evidence: prompt, answer box, box scale.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Decision {
    prompt: usize,
    answer_box: AnswerBox,
    scale: usize,
}

impl Decision {
    fn class_choice(self) -> ClassChoice {
        ClassChoice { prompt: DecoderPrompt::ALL[self.prompt], answer_box: self.answer_box, box_scale: BOX_SCALES[self.scale] }
    }
}

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

    /// Mean box IoU of the mask's box and of the prompt box under prompt `i`.
    fn box_means(&self, i: usize) -> [f64; 2] {
        let n = self.questions().max(1) as f64;
        [0, 1].map(|k| self.unscaled(i).map(|o| o.box_ious[k]).sum::<f64>() / n)
    }

    /// Mean [`Outcome::score`] under prompt `i` at each box scale.
    fn scale_means(&self, i: usize, answer_box: AnswerBox) -> [f64; SCALES] {
        let n = self.questions().max(1) as f64;
        std::array::from_fn(|s| self.outcomes.iter().map(|q| q[i][s].score(answer_box)).sum::<f64>() / n)
    }

    /// The anchor alone, unless another prompt's mask IoU beats it clear of noise; then the one
    /// with the best mean IoU among those. The heads fitted training phrasings, and a gain the
    /// calibration cannot tell from noise did not carry over to new ones: the heart's corrected
    /// box won 0.537 to 0.488 here and lost on the evaluation's phrasings.
    fn best_prompt(&self, rule: DecisionRule) -> usize {
        best_clear_option(ANCHOR_ONLY, PROMPTS, &self.means(), |i| rule.clear(self.unscaled(i).zip(self.unscaled(ANCHOR_ONLY)).map(|(o, anchor)| o.mask_iou - anchor.mask_iou)))
    }

    /// The mask's box, unless under prompt `i` the prompt box beats it clear of noise.
    fn answer_box(&self, i: usize, rule: DecisionRule) -> AnswerBox {
        if rule.clear(self.unscaled(i).map(|o| o.box_ious[1] - o.box_ious[0])) {
            AnswerBox::Prompt
        } else {
            AnswerBox::Mask
        }
    }

    /// The unit scale, unless under prompt `i` and `answer_box` other scales raise the
    /// [`Outcome::score`] clear of noise; then the best of those.
    fn box_scale(&self, i: usize, answer_box: AnswerBox, rule: DecisionRule) -> usize {
        best_clear_option(UNIT_SCALE, SCALES, &self.scale_means(i, answer_box), |s| rule.clear(self.outcomes.iter().map(|q| q[i][s].score(answer_box) - q[i][UNIT_SCALE].score(answer_box))))
    }

    /// The best prompt, the answer box under it, and then the box scale.
    fn decide(&self, rule: DecisionRule) -> Decision {
        let prompt = self.best_prompt(rule);
        let answer_box = self.answer_box(prompt, rule);
        Decision { prompt, answer_box, scale: self.box_scale(prompt, answer_box, rule) }
    }

    fn choice(&self, rule: DecisionRule) -> ClassChoice {
        self.decide(rule).class_choice()
    }
}

fn pooled<'a>(evidence: impl Iterator<Item = &'a GateEvidence>) -> GateEvidence {
    let mut pooled = GateEvidence::default();
    for e in evidence {
        pooled.add(e);
    }
    pooled
}

/// The choices per class (in `class_names` order): a class with enough evidence makes its own;
/// the others follow the pooled evidence.
pub fn class_choices(class_names: &[String], evidence: &BTreeMap<String, GateEvidence>, rule: DecisionRule) -> Vec<ClassChoice> {
    let pooled = pooled(evidence.values());
    class_names
        .iter()
        .map(|class| match evidence.get(class) {
            Some(e) if e.questions() >= rule.min_questions_per_class => e.choice(rule),
            _ => pooled.choice(rule),
        })
        .collect()
}

/// How a rule's choices fare on questions they were made without.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LeaveOneOut {
    pub rule: DecisionRule,
    pub questions: usize,
    /// Questions whose answered box has IoU ≥ 0.5 with the true box.
    pub boxes_within: usize,
    /// Mean [`Outcome::score`]: mask IoU + answered box IoU.
    pub mean_score: f64,
}

/// Answers each question with the choices `rule` makes from all the other questions (its class's
/// own, or the pooled ones where its class has too few without it), so that rules can be compared
/// on questions they did not see.
pub fn leave_one_out(evidence: &BTreeMap<String, GateEvidence>, rule: DecisionRule) -> LeaveOneOut {
    let mut result = LeaveOneOut { rule, questions: 0, boxes_within: 0, mean_score: 0.0 };
    for (class, e) in evidence {
        for (left_out, question) in e.outcomes.iter().enumerate() {
            let mut own = e.clone();
            own.outcomes.remove(left_out);
            let decision = if own.questions() >= rule.min_questions_per_class {
                own.decide(rule)
            } else {
                pooled(evidence.iter().map(|(c, other)| if c == class { &own } else { other })).decide(rule)
            };
            let outcome = question[decision.prompt][decision.scale];
            result.questions += 1;
            result.boxes_within += usize::from(outcome.box_ious[answer_box_index(decision.answer_box)] >= 0.5);
            result.mean_score += outcome.score(decision.answer_box);
        }
    }
    result.mean_score /= result.questions.max(1) as f64;
    result
}

/// The rules [`leave_one_out`] compares after a calibration: margins of 0 to 3 standard errors,
/// classes alone from 4, 10 or 20 questions.
pub fn candidate_rules() -> impl Iterator<Item = DecisionRule> {
    [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0].into_iter().flat_map(|margin| [4, 10, 20].map(|min_questions_per_class| DecisionRule { margin, min_questions_per_class }))
}

/// [`leave_one_out`] for each of [`candidate_rules`], as log lines.
pub fn describe_leave_one_out(evidence: &BTreeMap<String, GateEvidence>, shipped: DecisionRule) -> Vec<String> {
    let mut lines = vec![format!("{:>11} {:>10} {:>9} {:>15}  (leave-one-out: each question answered with the choices the others make)", "margin (SE)", "alone from", "box@0.5", "mask + box IoU")];
    for rule in candidate_rules() {
        let r = leave_one_out(evidence, rule);
        let mark = if rule == shipped { "  ← this run's rule" } else { "" };
        lines.push(format!("{:>11.1} {:>10} {:>4}/{:<4} {:>15.4}{mark}", rule.margin, rule.min_questions_per_class, r.boxes_within, r.questions, r.mean_score));
    }
    lines
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
pub fn describe(class_names: &[String], evidence: &BTreeMap<String, GateEvidence>, choices: &[ClassChoice], rule: DecisionRule) -> Vec<String> {
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
            let pooled = if e.questions() >= rule.min_questions_per_class { "" } else { " (pooled)" };
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
            ("rare".to_string(), evidence(DecisionRule::SHIPPED.min_questions_per_class - 1, [0.9, 0.1, 0.1, 0.1, 0.1, 0.1], 0.0)),
        ]);
        let map = DecoderPrompt { seg_token: false, box_source: BoxSource::Map };
        let anchor = DecoderPrompt::ANCHOR;
        let choices = class_choices(&names, &table, DecisionRule::SHIPPED);
        assert_eq!(choices.iter().map(|c| c.prompt).collect::<Vec<_>>(), vec![anchor, DecoderPrompt::FULL, map, anchor, anchor]);
        assert!(choices.iter().all(|c| c.answer_box == AnswerBox::Mask), "the mask's box is better everywhere");
        assert!(choices.iter().all(|c| c.box_scale == 1.0), "no scale does better than the box as it is");
        let lines = describe(&names, &table, &choices, DecisionRule::SHIPPED);
        assert!(lines.iter().any(|l| l.starts_with("rare") && l.ends_with("anchor (pooled)")), "{lines:?}");
        assert!(lines.iter().any(|l| l.starts_with("lesion") && l.ends_with("corrected box + seg token")), "{lines:?}");
        assert!(lines.iter().any(|l| l.starts_with("kidney") && l.ends_with("map box")), "{lines:?}");
    }

    /// A mean gain within the noise of the per-question differences keeps the anchor; the same
    /// gain with little spread does not.
    #[test]
    fn a_gain_inside_the_noise_keeps_the_anchor() {
        let prompt = |e: GateEvidence| e.choice(DecisionRule::SHIPPED).prompt;
        assert_eq!(prompt(evidence(10, [0.55, 0.0, 0.0, 0.0, 0.0, 0.5], 0.3)), DecoderPrompt::ANCHOR);
        assert_eq!(prompt(evidence(10, [0.55, 0.0, 0.0, 0.0, 0.0, 0.5], 0.01)), DecoderPrompt::FULL);
        assert_eq!(prompt(evidence(5, [0.5; PROMPTS], 0.0)), DecoderPrompt::ANCHOR, "a tie keeps the anchor");
        let lenient = DecisionRule { margin: 0.0, ..DecisionRule::SHIPPED };
        assert_eq!(evidence(10, [0.55, 0.0, 0.0, 0.0, 0.0, 0.5], 0.3).choice(lenient).prompt, DecoderPrompt::FULL, "no margin: any mean gain");
    }

    /// The answer reports the prompt box only where, under the chosen prompt, it beats the
    /// mask's box clear of noise; the other prompts' boxes do not matter.
    #[test]
    fn the_prompt_box_is_answered_only_where_it_is_clearly_better() {
        // The map box (index 3) is the chosen prompt.
        let mut clavicle = evidence(10, [0.1, 0.1, 0.1, 0.3, 0.1, 0.1], 0.0);
        set_box_ious(&mut clavicle, 3, |q| [if q % 2 == 0 { 0.32 } else { 0.28 }, 0.6]);
        let choice = clavicle.choice(DecisionRule::SHIPPED);
        assert_eq!(choice.prompt.box_source, BoxSource::Map);
        assert_eq!(choice.answer_box, AnswerBox::Prompt);
        assert_eq!(choice.gates(), [0.0, 0.0, 1.0, 1.0, 1.0]);
        assert_eq!(ClassChoice::from_gates(&choice.gates()), choice);
        // A mean gain inside the noise of the per-question differences (0.1 ± 0.27).
        set_box_ious(&mut clavicle, 3, |q| if q % 2 == 0 { [0.0, 0.9] } else { [0.8, 0.1] });
        assert_eq!(clavicle.choice(DecisionRule::SHIPPED).answer_box, AnswerBox::Mask);
        // Clearly better under a prompt that was not chosen: still the mask's box.
        let mut other = evidence(10, [0.1, 0.1, 0.1, 0.3, 0.1, 0.1], 0.0);
        set_box_ious(&mut other, 0, |_| [0.1, 0.9]);
        assert_eq!(other.choice(DecisionRule::SHIPPED).answer_box, AnswerBox::Mask);
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
        assert_eq!(kidney.choice(DecisionRule::SHIPPED).box_scale, 1.2);
        let lines = describe(&["kidney".to_string()], &BTreeMap::from([("kidney".to_string(), kidney.clone())]), &[kidney.choice(DecisionRule::SHIPPED)], DecisionRule::SHIPPED);
        assert!(lines[1].ends_with("map box ×1.2"), "{lines:?}");
        // The same gains under a prompt that is not chosen change nothing.
        let mut other = evidence(10, [0.1, 0.1, 0.1, 0.3, 0.1, 0.1], 0.0);
        grow(&mut other, 0, [0.0, -0.1, 0.1, 0.2, 0.05], 0.01);
        assert_eq!(other.choice(DecisionRule::SHIPPED).box_scale, 1.0);
        // Inside the noise: the box as it is.
        let mut noisy = evidence(10, [0.1, 0.1, 0.1, 0.3, 0.1, 0.1], 0.0);
        grow(&mut noisy, 3, [0.0, -0.1, 0.1, 0.2, 0.05], 1.0);
        assert_eq!(noisy.choice(DecisionRule::SHIPPED).box_scale, 1.0);
    }

    /// Each question is scored under the choice made without it: a class with enough other
    /// questions by its own, a small one by the pooled evidence; and the rule decides which
    /// gains count.
    #[test]
    fn leave_one_out_scores_each_question_under_the_choice_of_the_others() {
        // The first prompt beats the anchor for "kidney" by 0.3 ± 0.01 per question.
        let kidney = evidence(11, [0.4, 0.1, 0.1, 0.1, 0.1, 0.1], 0.01);
        let mut rare = evidence(3, [0.1, 0.1, 0.1, 0.1, 0.1, 0.1], 0.0);
        set_box_ious(&mut rare, 0, |_| [0.2, 0.4]); // poor boxes under the first prompt
        set_box_ious(&mut rare, ANCHOR_ONLY, |_| [0.9, 0.4]);
        let table = BTreeMap::from([("kidney".to_string(), kidney), ("rare".to_string(), rare)]);
        let rule = DecisionRule { margin: 1.0, min_questions_per_class: 10 };
        let r = leave_one_out(&table, rule);
        assert_eq!(r.questions, 14);
        // Kidney questions: the first prompt, box 0.6 each; rare ones follow the pool (the first
        // prompt too, as the kidney's questions outweigh the rare's two): box 0.2, outside 0.5.
        assert_eq!(r.boxes_within, 11);
        // (Of the kidney's mask IoUs six are 0.01 up and five down.)
        assert!((r.mean_score - (11.0 * (0.4 + 0.6) + 0.01 + 3.0 * (0.1 + 0.2)) / 14.0).abs() < 1e-9, "{r:?}");
        // With an unreachable margin every class keeps the anchor: all 14 boxes are within.
        let strict = leave_one_out(&table, DecisionRule { margin: 1e9, ..rule });
        assert_eq!(strict.boxes_within, 14);
        // Classes alone from 2 questions: the rare one keeps its own anchor.
        let alone = leave_one_out(&table, DecisionRule { min_questions_per_class: 2, ..rule });
        assert_eq!(alone.boxes_within, 14);
        assert!(describe_leave_one_out(&table, rule).iter().any(|l| l.contains(" 11/14 ") && l.ends_with("this run's rule")));
    }

    /// The shipped rule is the leave-one-out best on the shipped heads' calibration evidence, with
    /// the numbers `DecisionRule::SHIPPED` and the README give.
    #[test]
    fn the_shipped_rule_is_the_leave_one_out_best_on_the_shipped_evidence() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/results/calibration.json");
        let evidence: BTreeMap<String, GateEvidence> = serde_json::from_slice(&std::fs::read(&path).expect("committed evidence")).expect("calibration evidence");
        let shipped = leave_one_out(&evidence, DecisionRule::SHIPPED);
        assert_eq!((shipped.boxes_within, shipped.questions), (387, 448));
        assert!((shipped.mean_score - 1.441).abs() < 5e-4, "{shipped:?}");
        let before = leave_one_out(&evidence, DecisionRule { margin: 2.0, min_questions_per_class: 4 });
        assert_eq!(before.boxes_within, 379);
        for rule in candidate_rules() {
            assert!(leave_one_out(&evidence, rule).boxes_within <= shipped.boxes_within, "{rule:?} answers more boxes");
        }
    }
}
