//! `medsee eval`: the reasoning model on a data split with phrasings it was not trained on, in
//! MediSee's metrics — gIoU (mean per-question mask IoU), cIoU (cumulative), Dice, box IoU and
//! Acc@0.5 (of the box an answer reports: its mask's tight box or its prompt box, as the class
//! gate says) — per data set and overall, with how often a question about an absent structure
//! is answered "not found" and the latency per question. Two references run in the same pass:
//! the **upper bound** (LiteMedSAM given the ground-truth box) and a **text-only baseline**
//! (told the target class, it prompts LiteMedSAM with that class's mean training box:
//! everything except looking at the image to find the structure). Masks are compared in the
//! model's 256×256 frame.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::Tensor;
use futures_lite::future::block_on;
use serde_json::json;

use super::cache::EmbeddingCache;
use super::dataset::{Dataset, ImageItem, Record, Split};
use super::questions::{Phrasings, QuestionGenerator};
use super::targets::Targets;
use crate::ask::{answer_box, clean_question, sigmoid, EncodedImage, Reasoner, SMALL_REGION_DECODER_PIXELS};
use crate::error::{Error, Result};
use crate::image::{Mask, PixelBox};
use crate::reason::knowledge::Knowledge;
use crate::rng::SplitMix64;
use crate::sam::INPUT_SIZE;
use crate::segment::read_f32;
use crate::weights::convert::ModelPaths;
use crate::weights::Variant;

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Scores {
    pub questions: usize,
    pub giou: f64,
    pub ciou: f64,
    pub dice: f64,
    pub box_iou: f64,
    pub box_acc50: f64,
    /// Present-target questions answered "found", and those whose structure was understood as
    /// the right class (the references are told the class and always answer).
    pub found_rate: f64,
    pub class_accuracy: f64,
    /// Questions about absent structures, and the share answered "not found".
    pub absent_questions: usize,
    pub not_found_rate: f64,
}

#[derive(Default, Clone)]
struct Accumulator {
    n: usize,
    iou_sum: f64,
    dice_sum: f64,
    inter: f64,
    union: f64,
    box_iou_sum: f64,
    box_hits: usize,
    found: usize,
    class_hits: usize,
    absent: usize,
    not_found: usize,
}

impl Accumulator {
    /// A present-target question: the predicted mask logits (or `None` for "not found"), box and
    /// whether the class was understood.
    fn add_present(&mut self, pred: Option<&[f32]>, target: &[f32], pred_box: Option<[f32; 4]>, target_box: [f32; 4], right_class: bool) {
        let overlap = Overlap::of(pred, target);
        let Overlap { inter, union, p_sum, t_sum } = overlap;
        self.n += 1;
        self.iou_sum += overlap.iou();
        self.dice_sum += if p_sum + t_sum > 0.0 { 2.0 * inter / (p_sum + t_sum) } else { 1.0 };
        self.inter += inter;
        self.union += union;
        let iou = pred_box.map_or(0.0, |b| box_iou(b, target_box));
        self.box_iou_sum += iou;
        self.box_hits += usize::from(iou >= 0.5);
        self.found += usize::from(pred.is_some());
        self.class_hits += usize::from(right_class);
    }

    fn add_absent(&mut self, said_not_found: bool) {
        self.absent += 1;
        self.not_found += usize::from(said_not_found);
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
            class_accuracy: self.class_hits as f64 / n,
            absent_questions: self.absent,
            not_found_rate: self.not_found as f64 / self.absent.max(1) as f64,
        }
    }
}

/// How a predicted mask (logits > 0; `None`: empty) overlaps a 0/1 target, in pixels.
struct Overlap {
    inter: f64,
    union: f64,
    p_sum: f64,
    t_sum: f64,
}

impl Overlap {
    fn of(pred: Option<&[f32]>, target: &[f32]) -> Self {
        let mut o = Overlap { inter: 0.0, union: 0.0, p_sum: 0.0, t_sum: 0.0 };
        for (i, &t) in target.iter().enumerate() {
            let p = f64::from(u8::from(pred.is_some_and(|m| m[i] > 0.0)));
            let t = t as f64;
            o.inter += p * t;
            o.union += (p + t - p * t).min(1.0);
            o.p_sum += p;
            o.t_sum += t;
        }
        o
    }

    /// 1 when both masks are empty.
    fn iou(&self) -> f64 {
        if self.union > 0.0 { self.inter / self.union } else { 1.0 }
    }
}

/// IoU of predicted mask logits with a 0/1 target (1 when both are empty).
pub fn mask_iou(pred: &[f32], target: &[f32]) -> f64 {
    Overlap::of(Some(pred), target).iou()
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

/// An answer's mask in the model's 256×256 frame, from the decoder's low-resolution logits,
/// cleaned as `ask` cleans it (its tight box is the box the answer may report).
pub(super) fn answer_mask(logits: &[f32]) -> Mask {
    Mask::from_logits(INPUT_SIZE as u32, INPUT_SIZE as u32, logits).without_small_regions(SMALL_REGION_DECODER_PIXELS as usize)
}

/// (cx, cy, w, h) in [0, 1] of the padded input → (x0, y0, x1, y1) in model pixels.
pub(super) fn xyxy(cxcywh: [f32; 4]) -> [f32; 4] {
    let [cx, cy, w, h] = cxcywh;
    [cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0].map(|v| v * INPUT_SIZE as f32)
}

/// One evaluation question: an image, the text, and the asked-for object (`None`: absent).
struct Case<'a> {
    item: &'a ImageItem,
    question: String,
    target: Option<&'a Record>,
}

/// A line of a `--questions` file.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct QuestionLine {
    id: String,
    question: String,
    class: Option<String>,
}

pub struct EvalConfig {
    pub data: PathBuf,
    pub split: Split,
    /// Replaces the generated questions (JSON lines of `{id, question, class}`).
    pub questions: Option<PathBuf>,
    pub heads: Option<PathBuf>,
    pub variants: Vec<Variant>,
    pub seed: u64,
    pub cache_dir: PathBuf,
    /// Where to write one JSON line per question and variant (for error analysis), if anywhere.
    pub answers: Option<PathBuf>,
}

fn generated_cases<'a>(data: &'a Dataset, split: Split, seed: u64) -> Result<Vec<Case<'a>>> {
    let generator = QuestionGenerator::new(Knowledge::load()?, Phrasings::HeldOut);
    let others: Vec<(String, Vec<String>)> = data.all_classes()?.into_iter().collect();
    let mut rng = SplitMix64::new(seed);
    let mut cases = Vec::new();
    for item in data.split(split) {
        for record in &item.objects {
            let Some(structure) = generator.knowledge().structure(&record.class) else { continue };
            cases.push(Case { item, question: generator.positive(&structure, &mut rng).text, target: Some(record) });
        }
        if let Some(question) = generator.negative_for(&item.modality, &others, &mut rng) {
            cases.push(Case { item, question: question.text, target: None });
        }
    }
    Ok(cases)
}

fn file_cases<'a>(data: &'a Dataset, path: &Path) -> Result<Vec<Case<'a>>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let by_id: BTreeMap<&str, &ImageItem> = data.images.iter().map(|i| (i.id.as_str(), i)).collect();
    let mut cases = Vec::new();
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let at = || format!("{}:{}", path.display(), n + 1);
        let line: QuestionLine = serde_json::from_str(line).map_err(|e| Error::Other(format!("{}: {e}", at())))?;
        let item = by_id.get(line.id.as_str()).ok_or_else(|| Error::Other(format!("{}: no image {:?} in the data", at(), line.id)))?;
        let target = match &line.class {
            Some(class) => Some(
                item.objects
                    .iter()
                    .find(|o| &o.class == class)
                    .ok_or_else(|| Error::Other(format!("{}: image {:?} has no {class:?} mask", at(), line.id)))?,
            ),
            None => None,
        };
        cases.push(Case { item, question: line.question, target });
    }
    Ok(cases)
}

/// What one model variant scored.
struct VariantResult {
    overall: [Accumulator; 3],
    per_set: BTreeMap<String, [Accumulator; 3]>,
    latency_ms: Vec<f64>,
    /// One JSON object per question: what was asked, understood and scored.
    answers: Vec<serde_json::Value>,
}

const ROWS: [&str; 3] = ["medsee (question → mask)", "text-only baseline", "upper bound (GT box)"];

fn evaluate_variant(paths: &ModelPaths, config: &EvalConfig, variant: Variant, data: &Dataset, cases: &[Case], priors: &BTreeMap<String, [f32; 4]>, log: &mut dyn FnMut(&str)) -> Result<VariantResult> {
    let reasoner = Reasoner::load(paths, variant, config.heads.as_deref())?;
    let device = reasoner.segmenter().device().clone();
    let cache = EmbeddingCache::new(&config.cache_dir.join(variant.as_str()))?;
    let mut images: Vec<&ImageItem> = cases.iter().map(|c| c.item).collect();
    images.dedup_by(|a, b| a.id == b.id);
    cache.fill(reasoner.segmenter(), &images, log)?;
    let sam = reasoner.segmenter().model();
    let class_names = reasoner.knowledge().class_names();
    let mut result = VariantResult { overall: Default::default(), per_set: BTreeMap::new(), latency_ms: Vec::new(), answers: Vec::new() };
    let mut current: Option<(&str, EncodedImage)> = None;
    for (n, case) in cases.iter().enumerate() {
        if current.as_ref().map(|c| c.0) != Some(case.item.id.as_str()) {
            current = Some((&case.item.id, reasoner.read_embedding(cache.load_embedding(case.item, &device)?)));
        }
        let image = &current.as_ref().expect("set above").1;
        let tensor = image.embedding.tensor.clone();
        let set = case.item.data_set().to_string();
        let started = Instant::now();
        let (out, box_from) = block_on(reasoner.forward(image, &clean_question(&case.question)?))?;
        let presence_logit = block_on(read_f32(out.presence_logit))?[0];
        let found = presence_logit > 0.0;
        let target_logits = block_on(read_f32(out.target_logits))?;
        let understood = target_logits.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i);
        let mask = block_on(read_f32(out.decoder.low_res_masks))?;
        let pred_box = block_on(read_f32(out.box_cxcywh))?;
        result.latency_ms.push(started.elapsed().as_secs_f64() * 1e3);
        let understood_name = understood.and_then(|i| class_names.get(i)).cloned();
        let mut answer = json!({
            "variant": variant.as_str(), "id": case.item.id, "question": case.question,
            "class": case.target.map(|r| &r.class), "understood": understood_name, "found": found,
            "presence": sigmoid(presence_logit),
        });
        let per_set = result.per_set.entry(set).or_default();
        let Some(record) = case.target else {
            result.answers.push(answer);
            // The text-only baseline cannot see that the structure is missing: it always answers.
            for acc in [&mut result.overall, per_set] {
                acc[0].add_absent(!found);
                acc[1].add_absent(false);
            }
            continue;
        };
        let targets = Targets::load(&data.root, record)?;
        let right_class = understood.is_some_and(|i| class_names.get(i) == Some(&record.class));
        let target_box = xyxy(targets.box_cxcywh);
        let prior = priors.get(&record.class).copied().map(xyxy);
        let decode = |b: [f32; 4]| {
            let boxes = Tensor::<1>::from_floats(b.as_slice(), &device).reshape([1, 4]);
            block_on(read_f32(sam.decode_boxes(tensor.clone(), boxes, None).low_res_masks))
        };
        let prior_mask = prior.map(decode).transpose()?;
        let bound_mask = decode(target_box)?;
        // The box an answer reports, in the same frame as the masks.
        let prompt_box = xyxy([pred_box[0], pred_box[1], pred_box[2], pred_box[3]]);
        let model_box = found.then(|| {
            answer_box(box_from, &answer_mask(&mask), PixelBox::new(prompt_box[0], prompt_box[1], prompt_box[2], prompt_box[3])).as_array()
        });
        for acc in [&mut result.overall, per_set] {
            acc[0].add_present(found.then_some(mask.as_slice()), &targets.mask, model_box, target_box, right_class);
            acc[1].add_present(prior_mask.as_deref(), &targets.mask, prior, target_box, true);
            acc[2].add_present(Some(&bound_mask), &targets.mask, Some(target_box), target_box, true);
        }
        let iou = |pred: Option<&[f32]>| Overlap::of(pred, &targets.mask).iou();
        answer["mask_iou"] = json!(iou(found.then_some(mask.as_slice())));
        answer["box_iou"] = json!(model_box.map_or(0.0, |b| box_iou(b, target_box)));
        answer["box_from"] = json!(box_from);
        answer["prompt_box_iou"] = json!(if found { box_iou(prompt_box, target_box) } else { 0.0 });
        answer["text_only_mask_iou"] = json!(iou(prior_mask.as_deref()));
        answer["upper_bound_mask_iou"] = json!(iou(Some(&bound_mask)));
        result.answers.push(answer);
        if n % 25 == 24 || n + 1 == cases.len() {
            log(&format!("eval {variant}: {}/{} questions", n + 1, cases.len()));
        }
    }
    Ok(result)
}

fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn print_table(title: &str, rows: &[(&str, Scores)]) {
    println!("\n{title}");
    println!("{:<28} {:>5} {:>6} {:>6} {:>6} {:>7} {:>7} {:>9} {:>6} {:>6}", "", "n", "gIoU", "cIoU", "Dice", "boxIoU", "box@.5", "notfound", "found", "class");
    for (name, s) in rows {
        println!(
            "{name:<28} {:>5} {:>6.3} {:>6.3} {:>6.3} {:>7.3} {:>7.3} {:>8.1}% {:>5.1}% {:>5.1}%",
            s.questions, s.giou, s.ciou, s.dice, s.box_iou, s.box_acc50, 100.0 * s.not_found_rate, 100.0 * s.found_rate, 100.0 * s.class_accuracy
        );
    }
}

pub fn evaluate(paths: &ModelPaths, config: &EvalConfig, log: &mut dyn FnMut(&str)) -> Result<serde_json::Value> {
    let data = Dataset::load(&config.data)?;
    let train = if config.data == Dataset::default_root() { data.clone() } else { Dataset::load(&Dataset::default_root())? };
    let priors = train.mean_boxes(Split::Train);
    let cases = match &config.questions {
        Some(path) => file_cases(&data, path)?,
        None => generated_cases(&data, config.split.clone(), config.seed)?,
    };
    if cases.is_empty() {
        return Err(Error::Other(format!("no questions to evaluate in {} ({:?} split)", config.data.display(), config.split)));
    }
    let source = match &config.questions {
        Some(path) => format!("questions from {}", path.display()),
        None => format!("{:?} split, generated questions with held-out phrasings", config.split),
    };
    let mut report = serde_json::Map::new();
    let mut answers = String::new();
    for &variant in &config.variants {
        let mut result = evaluate_variant(paths, config, variant, &data, &cases, &priors, log)?;
        for answer in &result.answers {
            answers.push_str(&answer.to_string());
            answers.push('\n');
        }
        let latency = median(&mut result.latency_ms);
        let rows: Vec<(&str, Scores)> = ROWS.iter().zip(&result.overall).map(|(name, acc)| (*name, acc.scores())).collect();
        print_table(&format!("{variant} weights — {source}; median question → mask {latency:.0} ms"), &rows);
        let ratio = rows[0].1.giou / rows[2].1.giou.max(1e-9);
        println!("gIoU / upper bound = {ratio:.3} (target ≥ 0.85); box Acc@0.5 target ≥ 0.85; not found target ≥ 90 %");
        println!("{:<34} {:>5} {:>7} {:>7} {:>7}", "per data set (gIoU)", "n", "medsee", "text", "bound");
        let mut per_set = serde_json::Map::new();
        for (set, accs) in &result.per_set {
            let [m, t, u] = [0, 1, 2].map(|i| accs[i].scores());
            println!("{set:<34} {:>5} {:>7.3} {:>7.3} {:>7.3}", m.questions, m.giou, t.giou, u.giou);
            per_set.insert(set.clone(), json!({ "medsee": m, "text_only": t, "upper_bound": u }));
        }
        report.insert(
            variant.to_string(),
            json!({
                "medsee": rows[0].1, "text_only": rows[1].1, "upper_bound": rows[2].1,
                "giou_over_upper_bound": ratio, "median_question_to_mask_ms": latency, "per_set": per_set,
            }),
        );
    }
    if let Some(path) = &config.answers {
        crate::weights::store::write_atomic(path, answers.as_bytes())?;
    }
    Ok(json!({ "source": source, "data": config.data, "questions": cases.len(), "heads": config.heads, "variants": report }))
}

/// The report as a grouped bar chart: each variant of medsee next to the text-only baseline and
/// the upper bound (of the first variant).
pub fn chart(report: &serde_json::Value) -> Result<Vec<u8>> {
    let metrics = [("giou", "GIOU"), ("ciou", "CIOU"), ("dice", "DICE"), ("box_iou", "BOX IOU"), ("box_acc50", "BOX@0.5"), ("not_found_rate", "NOT FOUND")];
    let values = |scores: &serde_json::Value| metrics.iter().map(|(key, _)| scores[key].as_f64().unwrap_or(0.0)).collect::<Vec<_>>();
    let variants = report["variants"].as_object().ok_or_else(|| Error::Other("report has no variants".into()))?;
    let mut names = Vec::new();
    let mut series = Vec::new();
    for (variant, scores) in variants {
        names.push(format!("MEDSEE {variant}"));
        series.push(values(&scores["medsee"]));
    }
    if let Some((_, first)) = variants.iter().next() {
        names.push("TEXT ONLY".into());
        series.push(values(&first["text_only"]));
        names.push("UPPER BOUND".into());
        series.push(values(&first["upper_bound"]));
    }
    let series: Vec<(&str, Vec<f64>)> = names.iter().map(String::as_str).zip(series).collect();
    let groups: Vec<&str> = metrics.iter().map(|m| m.1).collect();
    super::chart::bar_chart("MEDSEE EVAL: QUESTION TO MASK", &groups, &series)
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
        let b = [0.0, 0.0, 1.0, 1.0];
        acc.add_present(Some(&[1.0, 1.0, -1.0, -1.0]), &[1.0, 1.0, 0.0, 0.0], Some(b), b, true); // IoU 1 (2/2)
        acc.add_present(Some(&[1.0, -1.0, -1.0, -1.0]), &[0.0, 1.0, 1.0, 1.0], None, b, false); // IoU 0 (0/4)
        let s = acc.scores();
        assert!((s.giou - 0.5).abs() < 1e-9);
        assert!((s.ciou - 2.0 / 6.0).abs() < 1e-9);
        assert!((s.box_acc50 - 0.5).abs() < 1e-9, "a missing box counts as a miss");
        assert_eq!((s.found_rate, s.class_accuracy), (1.0, 0.5));
    }

    #[test]
    fn not_found_counts_as_an_empty_mask() {
        let mut acc = Accumulator::default();
        acc.add_present(None, &[1.0, 0.0], None, [0.0, 0.0, 1.0, 1.0], true);
        acc.add_absent(true);
        acc.add_absent(false);
        let s = acc.scores();
        assert_eq!((s.giou, s.not_found_rate, s.absent_questions, s.found_rate), (0.0, 0.5, 2, 0.0));
    }
}
