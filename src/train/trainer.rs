//! `medsee train`: trains the reasoning heads (vision projector, candidate tokens, fusion, box,
//! seg prompt, similarity, class, content) with LiteMedSAM and SmolLM2 frozen. Gradients flow through
//! the frozen LLM and mask decoder to the heads. Embeddings come from the on-disk cache; the
//! heads are checkpointed (with the step, for resuming) and the loss curves written as CSV.
//!
//! A fresh run starts with a warm-up: the LLM's candidate states for a few thousand questions
//! are computed once (forward only, kept on disk) and the heads before the mask decoder train on
//! them in batches. On this 2-core CPU a full step through the LLM and the decoder costs ~0.8 s
//! per question, a warm-up step ~0.03 s per question, and the first full-run heads barely learned
//! in 1500 steps. The full run then trains everything (vision projector and candidate embeddings
//! too) end to end. A last batched phase, the refit, recomputes the LLM states with the final
//! projector and candidate tokens and refits the box, content and class heads on them (everything
//! else frozen): those heads only read the states and the image, so they catch up cheaply with
//! what the full run changed, and the class head sees fresh phrasings. Then the place head
//! learns where each structure lies from the embeddings and masks alone ([`super::place`]).
//! Then the decoder-prompt gates are calibrated per class on training images the heads never
//! saw ([`super::calibrate`]). Last, the explanation's soft prompt learns under the LM loss on
//! the answer text ([`super::explanation`]).

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use burn::module::{Module, Param};
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Int, Tensor, TensorData};
use futures_lite::future::block_on;

use super::cache::EmbeddingCache;
use super::calibrate;
use crate::ask::Reasoner;
use super::dataset::{Dataset, ImageItem, Split};
use crate::reason::knowledge::Knowledge;
use super::losses::{bce_with_logits, box_loss, cross_entropy, dice_loss, mask_loss};
use super::questions::{Phrasings, Question, QuestionGenerator};
use super::targets::Targets;
use super::thresholds::ClassCalibration;
use crate::error::{Error, Result};
use crate::llm::TextModel;
use crate::reason::sequence::Layout;
use crate::reason::{Located, ReasonConfig, ReasonOutput, ReasoningHeads};
use crate::segment::read_f32;
use crate::rng::SplitMix64;
use crate::segment::BoxSegmenter;
use crate::weights::convert::ModelPaths;
use crate::weights::{self, Variant};

#[derive(Debug, Clone)]
pub struct TrainConfig {
    pub steps: usize,
    pub learning_rate: f64,
    pub seed: u64,
    /// Training images drawn per data set (keeps the large sets from dominating).
    pub images_per_set: usize,
    /// Share of questions about a structure that is not in the image.
    pub negative_rate: f64,
    pub checkpoint_every: usize,
    /// Questions whose LLM states the warm-up computes once, and warm-up steps over them.
    pub warmup_questions: usize,
    pub warmup_steps: usize,
    /// Questions and batched steps of the refit after the full run.
    pub refit_questions: usize,
    pub refit_steps: usize,
    /// Held-out training images per data set for the seg-token gate (see [`super::calibrate`]).
    pub calibration_images_per_set: usize,
    /// Epochs of the place head over the training images (0: no place phase)…
    pub place_epochs: usize,
    /// …and how many images per data set it learns from (those held out for the calibration
    /// excepted; the question phases' images first).
    pub place_images_per_set: usize,
    /// Steps of the explanation's soft prompt under the LM loss on the answer text (0: none).
    pub explanation_steps: usize,
    /// Trained heads to start from instead of a fresh initialisation (no warm-up then: the full
    /// phase fine-tunes them), e.g. the shipped ones after the data changed. A checkpoint in
    /// `output_dir` takes precedence, so an interrupted fine-tune resumes.
    pub start_from: Option<PathBuf>,
    /// Where the heads, their training state and the curves go.
    pub output_dir: PathBuf,
}

pub const HEADS_FILE: &str = "reason-heads.bpk";
const STATE_FILE: &str = "reason-heads.json";
const CURVES_FILE: &str = "train-curves.csv";
const CURVES_PLOT: &str = "train-curves.png";
const PLACE_CURVE_FILE: &str = "place-curves.csv";
/// Every calibration question's outcome under every prompt and box scale, per class.
const CALIBRATION_FILE: &str = "calibration.json";
/// The explanation phase's held-out losses, curve and generated samples.
const EXPLANATION_FILE: &str = "explanation.json";

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct TrainState {
    step: usize,
    seed: u64,
    #[serde(default)]
    warmed_up: bool,
    #[serde(default)]
    refitted: bool,
    #[serde(default)]
    placed: bool,
    #[serde(default)]
    calibrated: bool,
    #[serde(default)]
    explained: bool,
}

/// Images of `split`, at most `per_set` per data set, chosen deterministically.
pub fn select_images(data: &Dataset, split: Split, per_set: usize, seed: u64) -> Vec<&ImageItem> {
    let mut by_set: std::collections::BTreeMap<String, Vec<&ImageItem>> = Default::default();
    for item in data.split(split) {
        by_set.entry(item.data_set().to_string()).or_default().push(item);
    }
    let mut rng = SplitMix64::new(seed);
    let mut out = Vec::new();
    for (_, mut items) in by_set {
        for i in (1..items.len()).rev() {
            items.swap(i, rng.below(i + 1));
        }
        out.extend(items.into_iter().take(per_set));
    }
    out
}

/// Up to `per_set` training images per data set, none of `excluded` (ids), in the order
/// `select_images(.., usize::MAX, seed)` shuffles them.
pub fn select_images_except<'a>(data: &'a Dataset, excluded: &std::collections::BTreeSet<&str>, per_set: usize, seed: u64) -> Vec<&'a ImageItem> {
    let mut taken: std::collections::BTreeMap<&str, usize> = Default::default();
    select_images(data, Split::Train, usize::MAX, seed)
        .into_iter()
        .filter(|item| !excluded.contains(item.id.as_str()))
        .filter(|item| {
            let count = taken.entry(item.data_set()).or_default();
            *count += 1;
            *count <= per_set
        })
        .collect()
}

/// Training images for the place head: up to `per_set` per data set, none of the calibration's
/// `held_out` ones, in [`select_images`]' order (so the question phases' images come first).
fn place_images<'a>(data: &'a Dataset, held_out: &[&ImageItem], seed: u64, per_set: usize) -> Vec<&'a ImageItem> {
    let held_out = held_out.iter().map(|i| i.id.as_str()).collect();
    select_images_except(data, &held_out, per_set, seed)
}

/// The losses of one question, as scalars for logging plus the total to differentiate.
struct StepLoss {
    total: Tensor<1>,
    /// mask, box, similarity, presence, class.
    parts: [f32; 5],
}

impl StepLoss {
    /// The sum of the parts a question has (mask, box, similarity, presence, class); a part it
    /// lacks (no mask or box to learn where the target is absent) is logged as 0.
    fn of(parts: [Option<Tensor<1>>; 5]) -> Self {
        let logged = parts.each_ref().map(|p| p.as_ref().map_or(0.0, |l| l.clone().into_scalar::<f32>()));
        let total = parts.into_iter().flatten().reduce(|a, b| a + b).expect("every question has a presence loss");
        Self { total, parts: logged }
    }
}

fn f32_tensor<const D: usize>(values: Vec<f32>, shape: [usize; D], device: &Device) -> Tensor<D> {
    let n = values.len();
    Tensor::<1>::from_data(TensorData::new(values, [n]), device).reshape(shape)
}

fn question_layout(llm: &TextModel, question: &Question, config: &ReasonConfig) -> Result<Layout> {
    let history: Vec<(String, String)> = question.history.iter().map(|t| (t.question.clone(), t.answer.clone())).collect();
    Layout::new(&llm.tokenizer, &question.text, &history, config.vision_tokens(64), config.candidates)
}

/// Presence BCE (is the structure asked for in the image) plus the content head's multi-label
/// BCE (which structures the image shows); both say "not found", so they share a curve.
fn presence_loss(presence_logit: Tensor<1>, content_logits: Tensor<2>, draws: &[&Draw], device: &Device) -> Tensor<1> {
    let b = draws.len();
    let present: Vec<f32> = draws.iter().map(|d| if d.targets.is_some() { 1.0 } else { 0.0 }).collect();
    let contents: Vec<f32> = draws.iter().flat_map(|d| d.contents.clone()).collect();
    let rows = contents.len() / b;
    bce_with_logits(presence_logit, f32_tensor(present, [b], device)) + bce_with_logits(content_logits, f32_tensor(contents, [b, rows], device))
}

/// The training losses of one answer against what was asked.
fn answer_loss(out: ReasonOutput, draw: &Draw, device: &Device) -> StepLoss {
    let presence = presence_loss(out.presence_logit, out.content_logits, &[draw], device);
    let class = cross_entropy(out.class_logits, &[draw.asked]) * 0.5;
    let coarse_logits = out.similarity.logits.reshape([1, 64 * 64]);
    let Some(t) = &draw.targets else {
        // Nothing to find: the similarity map should light up nowhere.
        let similarity = bce_with_logits(coarse_logits.clone(), coarse_logits.zeros_like());
        return StepLoss::of([None, None, Some(similarity), Some(presence), Some(class)]);
    };
    let mask = mask_loss(out.decoder.low_res_masks.reshape([1, 256 * 256]), f32_tensor(t.mask.clone(), [1, 256 * 256], device));
    let boxes = box_loss(out.box_cxcywh.clone(), f32_tensor(t.box_cxcywh.to_vec(), [1, 4], device));
    let coarse = f32_tensor(t.coarse_mask.clone(), [1, 64 * 64], device);
    let similarity = bce_with_logits(coarse_logits.clone(), coarse.clone()) + dice_loss(coarse_logits, coarse) * 0.5;
    StepLoss::of([Some(mask), Some(boxes), Some(similarity), Some(presence), Some(class)])
}

/// One training question: an image, what is asked about it, and the answer's masks (`None`: absent).
struct Draw<'a> {
    item: &'a ImageItem,
    question: Question,
    /// The class row of the structure asked for, present or not: the class head learns what a
    /// question means from the negatives too (held-out frames of a probe on the refit's states:
    /// 0.95 → 0.96 of the positives read right, 0.89 → 0.94 of all).
    asked: usize,
    targets: Option<Targets>,
    /// 0/1 per class row: what the image shows (the content head's target).
    contents: Vec<f32>,
}

/// Draws training questions deterministically from a seed.
struct Sampler<'a> {
    data: &'a Dataset,
    images: Vec<&'a ImageItem>,
    generator: QuestionGenerator,
    class_names: Vec<String>,
    others: Vec<(String, Vec<String>)>,
    negative_rate: f64,
}

impl<'a> Sampler<'a> {
    fn row(&self, class: &str) -> Option<usize> {
        self.class_names.iter().position(|c| c == class)
    }

    fn draw(&self, seed: u64) -> Result<Draw<'a>> {
        let mut rng = SplitMix64::new(seed);
        let item = self.images[rng.below(self.images.len())];
        let contents = item.shown(&self.class_names);
        if rng.next_f64() < self.negative_rate {
            let question = self
                .generator
                .negative_for(&item.modality, &self.others, &mut rng)
                .ok_or_else(|| Error::Other(format!("no absent-structure question for a {} image", item.modality)))?;
            let asked = self.row(&question.asked).ok_or_else(|| Error::Other(format!("no class row for {}", question.asked)))?;
            return Ok(Draw { item, question, asked, targets: None, contents });
        }
        let record = rng.pick(&item.objects);
        let structure =
            self.generator.knowledge().structure(&record.class).ok_or_else(|| Error::Other(format!("no knowledge for {}", record.class)))?;
        let asked = self.row(&record.class).expect("every resolvable class has a row");
        let targets = Targets::load(&self.data.root, record)?;
        Ok(Draw { item, question: self.generator.positive(&structure, &mut rng), asked, targets: Some(targets), contents })
    }
}

/// Cosine decay from `peak` to a tenth of it.
pub(super) fn learning_rate(peak: f64, step: usize, steps: usize) -> f64 {
    let progress = step as f64 / steps.max(1) as f64;
    peak * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()))
}

/// Appends loss rows to the curves CSV and logs a running mean.
struct Curves {
    file: std::fs::File,
    path: PathBuf,
    window: Vec<f32>,
    started: Instant,
    first_step: usize,
}

impl Curves {
    /// Appends to the CSV at `path` (a resumed run continues its curves); a new file gets the header.
    fn open(path: PathBuf) -> Result<Self> {
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&path).map_err(|e| Error::io(&path, e))?;
        if file.metadata().map_err(|e| Error::io(&path, e))?.len() == 0 {
            writeln!(file, "phase,step,loss,mask,box,similarity,presence,class,positive").map_err(|e| Error::io(&path, e))?;
        }
        Ok(Self { file, path, window: Vec::new(), started: Instant::now(), first_step: 0 })
    }

    fn restart_clock(&mut self, step: usize) {
        self.started = Instant::now();
        self.first_step = step;
        self.window.clear();
    }

    fn record(&mut self, phase: &str, step: usize, steps: usize, loss: &StepLoss, positive: bool, log: &mut dyn FnMut(&str)) -> Result<()> {
        let p = loss.parts;
        let total: f32 = p.iter().sum();
        self.window.push(total);
        writeln!(self.file, "{phase},{step},{total:.5},{:.5},{:.5},{:.5},{:.5},{:.5},{}", p[0], p[1], p[2], p[3], p[4], u8::from(positive))
            .map_err(|e| Error::io(&self.path, e))?;
        if step % 50 == 0 || step == steps {
            let per_step = self.started.elapsed().as_secs_f64() / (step - self.first_step).max(1) as f64;
            let mean = self.window.iter().sum::<f32>() / self.window.len().max(1) as f32;
            self.window.clear();
            log(&format!(
                "{phase} step {step}/{steps} loss {mean:.4} ({per_step:.2} s/step, {:.0} min left)",
                per_step * (steps - step) as f64 / 60.0
            ));
        }
        Ok(())
    }
}

/// Questions per batched step (the heads before the mask decoder are cheap enough to batch).
const BATCH: usize = 8;

/// A phase over LLM candidate states computed once and kept on disk: the warm-up (from the
/// initial heads; everything before the mask decoder trains) or the refit (from the trained
/// heads; only the box, content and class heads train).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Batched {
    WarmUp,
    Refit,
}

impl Batched {
    fn name(self) -> &'static str {
        match self {
            Batched::WarmUp => "warmup",
            Batched::Refit => "refit",
        }
    }

    fn questions(self, config: &TrainConfig) -> usize {
        match self {
            Batched::WarmUp => config.warmup_questions,
            Batched::Refit => config.refit_questions,
        }
    }

    fn steps(self, config: &TrainConfig) -> usize {
        match self {
            Batched::WarmUp => config.warmup_steps,
            Batched::Refit => config.refit_steps,
        }
    }

    fn seed(self, config: &TrainConfig, question: usize) -> u64 {
        let salt = match self {
            Batched::WarmUp => 0x5eed_0000_0000,
            Batched::Refit => 0x7ef1_0000_0000,
        };
        config.seed ^ salt ^ question as u64
    }

    /// The heads with everything this phase does not train frozen.
    fn trainable(self, heads: ReasoningHeads) -> ReasoningHeads {
        match self {
            Batched::WarmUp => heads,
            Batched::Refit => ReasoningHeads {
                candidate_embeddings: heads.candidate_embeddings.set_require_grad(false),
                projector: heads.projector.no_grad(),
                fusion: heads.fusion.no_grad(),
                seg_prompt: heads.seg_prompt.no_grad(),
                similarity: heads.similarity.no_grad(),
                class: heads.class,
                box_head: heads.box_head,
                content: heads.content,
                place: heads.place.no_grad(),
                seg_gate: heads.seg_gate,
                box_gate: heads.box_gate,
                map_gate: heads.map_gate,
                prompt_box_gate: heads.prompt_box_gate,
                box_scale: heads.box_scale,
                explanation: heads.explanation.no_grad(),
            },
        }
    }
}

/// The LLM's candidate states for the phase's draws, computed once with the heads as they are
/// at full-phase step `step` and kept on disk (a restarted run reuses them).
#[allow(clippy::too_many_arguments)]
fn candidate_states(phase: Batched, heads: &ReasoningHeads, step: usize, draws: &[Draw], paths: &ModelPaths, cache: &EmbeddingCache, reason: &ReasonConfig, config: &TrainConfig, log: &mut dyn FnMut(&str)) -> Result<Vec<Vec<f32>>> {
    let per_question = reason.candidates * reason.llm_dim;
    let questions = draws.len();
    // The states belong to these draws and these heads: the name says which, down to the
    // questions' words (a change to the phrasings or the knowledge table makes new states).
    let path = config.output_dir.join(format!(
        "{}-states-seed{}-images{}-questions{questions}-step{step}-{:016x}.f32",
        phase.name(),
        config.seed,
        config.images_per_set,
        fingerprint(draws),
    ));
    if let Ok(bytes) = std::fs::read(&path) {
        if bytes.len() == questions * per_question * 4 {
            log(&format!("{}: LLM states from {}", phase.name(), path.display()));
            let values: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            return Ok(values.chunks(per_question).map(<[f32]>::to_vec).collect());
        }
    }
    let plain = Device::flex();
    let llm = TextModel::load(&paths.converted, Variant::F32, &plain)?;
    let frozen = heads.valid();
    let mut states = Vec::with_capacity(questions);
    for (i, draw) in draws.iter().enumerate() {
        let layout = question_layout(&llm, &draw.question, reason)?;
        states.push(block_on(read_f32(frozen.candidate_states(&llm.model, cache.load(draw.item, &plain)?, &layout)?))?);
        if i % 100 == 99 {
            log(&format!("{}: LLM states of {}/{questions} questions", phase.name(), i + 1));
        }
    }
    let raw: Vec<u8> = states.iter().flatten().flat_map(|v| v.to_le_bytes()).collect();
    crate::weights::store::write_atomic(&path, &raw)?;
    // The questions beside their states, row for row, to inspect what the heads learn from.
    let texts: String = draws
        .iter()
        .map(|d| serde_json::json!({ "image": d.item.id, "question": d.question }).to_string() + "\n")
        .collect();
    crate::weights::store::write_atomic(&path.with_extension("questions.jsonl"), texts.as_bytes())?;
    Ok(states)
}

/// FNV-1a over the draws' images and question texts (with their conversation history).
fn fingerprint(draws: &[Draw]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for draw in draws {
        let history = draw.question.history.iter().flat_map(|t| [t.question.as_str(), t.answer.as_str()]);
        for text in [draw.item.id.as_str(), draw.question.text.as_str()].into_iter().chain(history) {
            for byte in text.bytes().chain([0]) {
                hash = (hash ^ byte as u64).wrapping_mul(0x0100_0000_01b3);
            }
        }
    }
    hash
}

/// The losses of a batch before the mask decoder: presence, content and the class asked for
/// for all, the similarity map against the coarse mask (all-zero for absent targets), and the
/// box for present targets.
fn located_loss(located: Located, draws: &[&Draw], device: &Device) -> StepLoss {
    let b = draws.len();
    let presence = presence_loss(located.presence_logit, located.content_logits, draws, device);
    let class = cross_entropy(located.class_logits, &draws.iter().map(|d| d.asked).collect::<Vec<_>>()) * 0.5;
    let targets: Vec<Option<&Targets>> = draws.iter().map(|d| d.targets.as_ref()).collect();
    let coarse: Vec<f32> = targets.iter().flat_map(|t| t.map_or_else(|| vec![0.0; 64 * 64], |t| t.coarse_mask.clone())).collect();
    let logits = located.similarity.logits.reshape([b, 64 * 64]);
    let mut similarity = bce_with_logits(logits.clone(), f32_tensor(coarse, [b, 64 * 64], device));
    let rows: Vec<usize> = (0..b).filter(|&i| targets[i].is_some()).collect();
    if rows.is_empty() {
        return StepLoss::of([None, None, Some(similarity), Some(presence), Some(class)]);
    }
    let positives: Vec<&Targets> = rows.iter().filter_map(|&i| targets[i]).collect();
    let index = Tensor::<1, Int>::from_data(TensorData::new(rows.iter().map(|&i| i as i64).collect::<Vec<_>>(), [rows.len()]), device);
    let p = rows.len();
    let coarse = f32_tensor(positives.iter().flat_map(|t| t.coarse_mask.clone()).collect(), [p, 64 * 64], device);
    similarity = similarity + dice_loss(logits.select(0, index.clone()), coarse) * 0.5;
    let boxes = box_loss(located.box_cxcywh.select(0, index), f32_tensor(positives.iter().flat_map(|t| t.box_cxcywh).collect(), [p, 4], device));
    StepLoss::of([None, Some(boxes), Some(similarity), Some(presence), Some(class)])
}

/// A batched phase: its steps over the cached LLM states of its questions, batches of 8.
#[allow(clippy::too_many_arguments)]
fn run_batched(
    phase: Batched,
    heads: ReasoningHeads,
    step: usize,
    paths: &ModelPaths,
    sampler: &Sampler,
    cache: &EmbeddingCache,
    reason: &ReasonConfig,
    config: &TrainConfig,
    curves: &mut Curves,
    log: &mut dyn FnMut(&str),
) -> Result<ReasoningHeads> {
    let draws: Vec<Draw> = (0..phase.questions(config)).map(|i| sampler.draw(phase.seed(config, i))).collect::<Result<_>>()?;
    let states = candidate_states(phase, &heads, step, &draws, paths, cache, reason, config, log)?;
    let device = heads.candidate_embeddings.device();
    let mut heads = phase.trainable(heads);
    let mut optim = AdamWConfig::new().with_weight_decay(1e-4).init();
    let steps = phase.steps(config);
    curves.restart_clock(0);
    for step in 1..=steps {
        let mut rng = SplitMix64::new(config.seed ^ 0x3a3a ^ step as u64);
        let picked: Vec<usize> = (0..BATCH).map(|_| rng.below(draws.len())).collect();
        let embeddings = picked.iter().map(|&i| cache.load(draws[i].item, &device)).collect::<Result<Vec<_>>>()?;
        let values: Vec<f32> = picked.iter().flat_map(|&i| states[i].clone()).collect();
        let candidates = f32_tensor(values, [BATCH, reason.candidates, reason.llm_dim], &device);
        let located = heads.locate(Tensor::cat(embeddings, 0), candidates, None, None);
        let batch: Vec<&Draw> = picked.iter().map(|&i| &draws[i]).collect();
        let loss = located_loss(located, &batch, &device);
        let grads = GradientsParams::from_grads(loss.total.backward(), &heads);
        heads = optim.step(config.learning_rate, heads, grads);
        curves.record(phase.name(), step, steps, &loss, batch.iter().all(|d| d.targets.is_some()), log)?;
    }
    Ok(heads)
}

/// The curves CSV as a PNG: each loss part, averaged over windows of 100 questions, over all
/// rows (warm-up first, then the full run).
fn plot_curves(csv: &std::path::Path) -> Result<Vec<u8>> {
    let text = std::fs::read_to_string(csv).map_err(|e| Error::io(csv, e))?;
    let names = ["mask", "box", "similarity", "presence", "class"];
    let rows: Vec<Vec<f64>> = text
        .lines()
        .skip(1)
        .filter_map(|line| line.split(',').skip(3).take(5).map(|v| v.parse().ok()).collect::<Option<Vec<f64>>>())
        .collect();
    let series: Vec<(&str, Vec<(f64, f64)>)> = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let points = rows.chunks(100).enumerate().map(|(c, chunk)| {
                let mean = chunk.iter().map(|r| r[i]).sum::<f64>() / chunk.len() as f64;
                ((c * 100 + chunk.len()) as f64, mean)
            });
            (*name, points.collect())
        })
        .collect();
    super::chart::line_chart("MEDSEE TRAINING LOSSES (MEAN OF 100 ROWS)", "ROWS: WARM-UP BATCHES OF 8, THEN QUESTIONS", &series)
}

/// The box anchors `[classes, 4]`: each class's mean training box, in class-row order (a class
/// with no training box gets the centred half-size box).
fn anchors(data: &Dataset, class_names: &[String], device: &Device) -> Tensor<2> {
    let means = data.mean_boxes(Split::Train);
    let values: Vec<f32> = class_names.iter().flat_map(|c| means.get(c).copied().unwrap_or([0.5; 4])).collect();
    f32_tensor(values, [class_names.len(), 4], device)
}

/// Loads a checkpoint into freshly initialised heads. A checkpoint from before a head was added
/// lacks its tensors: they keep their initialisation (and are named in the log).
fn resume_heads(heads: ReasoningHeads, bytes: Vec<u8>, log: &mut dyn FnMut(&str)) -> Result<ReasoningHeads> {
    use burn::store::{BurnpackStore, FloatCastAdapter, ModuleSnapshot};
    use burn::tensor::DType;
    let mut heads = heads;
    let mut store = BurnpackStore::from_bytes(Some(burn::tensor::Bytes::from_bytes_vec(bytes)))
        .with_from_adapter(FloatCastAdapter::to(DType::F32))
        .allow_partial(true);
    let result = heads.load_from(&mut store).map_err(|e| Error::weights(HEADS_FILE, format!("cannot resume from it ({e})")))?;
    if !result.errors.is_empty() {
        return Err(Error::weights(HEADS_FILE, format!("does not fit the heads: {:?}", result.errors)));
    }
    if !result.missing.is_empty() {
        let names: Vec<&str> = result.missing.iter().map(|(path, _)| path.as_str()).collect();
        log(&format!("resume: new in these heads, freshly initialised: {}", names.join(", ")));
        if names.contains(&"box_head.anchors") {
            // Its box correction was trained against another base: restart it from the anchor.
            heads.box_head = heads.box_head.without_correction();
        }
    }
    Ok(heads)
}

/// Logs how each class some held-out image shows was calibrated, and returns the classes'
/// values as a frozen parameter of the heads.
fn calibrated_values(choices: &[ClassCalibration], describe: fn(&ClassCalibration) -> String, device: &Device, log: &mut dyn FnMut(&str)) -> Param<Tensor<1>> {
    log(&format!("calibrate: {:<28} {:>4} {:>4}", "class", "with", "w/o"));
    for choice in choices.iter().filter(|c| !c.shown.is_empty()) {
        log(&format!("calibrate: {}", describe(choice)));
    }
    let values: Vec<f32> = choices.iter().map(|c| c.value).collect();
    Param::from_tensor(Tensor::<1>::from_floats(values.as_slice(), device)).set_require_grad(false)
}

/// Trains (or resumes training) until `config.steps`.
pub fn train(paths: &ModelPaths, config: &TrainConfig, log: &mut dyn FnMut(&str)) -> Result<()> {
    std::fs::create_dir_all(&config.output_dir).map_err(|e| Error::io(&config.output_dir, e))?;
    let data = Dataset::load(&Dataset::default_root())?;
    let images = select_images(&data, Split::Train, config.images_per_set, config.seed);
    log(&format!("data: {} training images", images.len()));

    // Training images the heads never use: the place phase measures its held-out loss on them
    // and the calibration makes its choices on them.
    let held_out = calibrate::held_out_images(&data, config.images_per_set, config.seed, config.calibration_images_per_set);
    let place_images = place_images(&data, &held_out, config.seed, config.place_images_per_set.max(config.images_per_set));

    let cache = EmbeddingCache::new(&config.output_dir.join("cache"))?;
    let device = Device::flex().autodiff();
    let sam = BoxSegmenter::load(&paths.converted, Variant::F32, device.clone())?.model().clone().no_grad();
    let reason = ReasonConfig::smollm2_litemedsam()?;
    let heads_path = config.output_dir.join(HEADS_FILE);
    let state_path = config.output_dir.join(STATE_FILE);
    // Seeded, so that heads a resumed run adds (freshly initialised) are reproducible too.
    device.seed(config.seed);
    let (mut heads, mut state) = match std::fs::read(&heads_path) {
        Ok(bytes) => {
            let state: TrainState = std::fs::read_to_string(&state_path)
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or_default();
            log(&format!("resuming from {} at step {}", heads_path.display(), state.step));
            (resume_heads(reason.init(&device), bytes, log)?, state)
        }
        Err(_) if let Some(from) = &config.start_from => {
            let bytes = std::fs::read(from).map_err(|e| Error::io(from, e))?;
            log(&format!("starting from the trained heads {} (no warm-up)", from.display()));
            (resume_heads(reason.init(&device), bytes, log)?, TrainState { step: 0, seed: config.seed, warmed_up: true, ..TrainState::default() })
        }
        Err(_) => {
            // A seeded start (see above): the warm-up's cached LLM states depend on the initial
            // projector and candidate embeddings.
            (reason.init(&device), TrainState { step: 0, seed: config.seed, ..TrainState::default() })
        }
    };
    heads.box_head.anchors = Param::from_tensor(anchors(&data, &Knowledge::load()?.class_names(), &device)).set_require_grad(false);
    {
        // Only the images of the phases still to run (a calibration alone needs no others).
        let asking = (!state.warmed_up && config.warmup_steps > 0) || state.step < config.steps || (!state.refitted && config.refit_steps > 0);
        let placing = !state.placed && config.place_epochs > 0;
        let calibrating = (placing || !state.calibrated) && config.calibration_images_per_set > 0;
        let encoder = BoxSegmenter::load(&paths.converted, Variant::F32, Device::flex())?;
        for (needed, images) in [(asking, &images), (placing || calibrating, &held_out), (placing, &place_images)] {
            if needed {
                cache.fill(&encoder, images, log)?;
            }
        }
    }
    let generator = QuestionGenerator::new(Knowledge::load()?, Phrasings::Train);
    let sampler = Sampler {
        data: &data,
        images,
        class_names: generator.knowledge().class_names(),
        generator,
        others: data.classes().into_iter().collect(),
        negative_rate: config.negative_rate,
    };
    let curves_path = config.output_dir.join(CURVES_FILE);
    let mut curves = Curves::open(curves_path.clone())?;
    let plot_path = config.output_dir.join(CURVES_PLOT);
    let save = |heads: &ReasoningHeads, state: &TrainState| -> Result<()> {
        crate::weights::store::write_atomic(&plot_path, &plot_curves(&curves_path)?)?;
        crate::weights::store::write_atomic(&heads_path, &weights::half_record_bytes(&heads.valid())?)?;
        crate::weights::store::write_atomic(&state_path, serde_json::to_string(state).expect("state").as_bytes())
    };

    if !state.warmed_up && config.warmup_steps > 0 {
        heads = run_batched(Batched::WarmUp, heads, state.step, paths, &sampler, &cache, &reason, config, &mut curves, log)?;
        state.warmed_up = true;
        save(&heads, &state)?;
    }

    let mut llm = TextModel::load(&paths.converted, Variant::F32, &device)?;
    llm.model = llm.model.no_grad();
    let mut optim = AdamWConfig::new().with_weight_decay(1e-4).init();
    curves.restart_clock(state.step);
    while state.step < config.steps {
        // Each step draws from its own stream, so a resumed run continues the same sequence.
        let draw = sampler.draw(state.seed ^ (state.step as u64).wrapping_mul(0x9e37_79b9))?;
        let layout = question_layout(&llm, &draw.question, &reason)?;
        let out = heads.forward(&sam, &llm.model, cache.load(draw.item, &device)?, &layout)?;
        let loss = answer_loss(out, &draw, &device);
        let grads = GradientsParams::from_grads(loss.total.backward(), &heads);
        heads = optim.step(learning_rate(config.learning_rate, state.step, config.steps), heads, grads);
        state.step += 1;
        curves.record("full", state.step, config.steps, &loss, draw.targets.is_some(), log)?;
        if state.step % config.checkpoint_every == 0 || state.step == config.steps {
            save(&heads, &state)?;
        }
    }
    if !state.refitted && config.refit_steps > 0 {
        heads = run_batched(Batched::Refit, heads, state.step, paths, &sampler, &cache, &reason, config, &mut curves, log)?;
        state.refitted = true;
        save(&heads, &state)?;
    }
    if !state.placed && config.place_epochs > 0 {
        let place = super::place::PlaceConfig { epochs: config.place_epochs, batch: 16, learning_rate: 1e-3, seed: config.seed };
        log(&format!("place: where each structure lies, {} epochs over {} images ({} held out)", place.epochs, place_images.len(), held_out.len()));
        let (place_head, curve) = super::place::train_place(heads.place, &data, &place_images, &held_out, &cache, &sampler.class_names, &place, &device, log)?;
        heads.place = place_head;
        crate::weights::store::write_atomic(&config.output_dir.join(PLACE_CURVE_FILE), super::place::curve_csv(&curve).as_bytes())?;
        state.placed = true;
        state.calibrated = false; // the gates were chosen without these maps
        save(&heads, &state)?;
    }
    if !state.calibrated && config.calibration_images_per_set > 0 {
        drop(llm);
        // First what the images show: the target distribution, and so the anchor and the map the
        // prompt gates compare, depends on it.
        log(&format!("calibrate: content thresholds per class on {} held-out training images", held_out.len()));
        let thresholds = super::thresholds::content_thresholds(&heads.content, &held_out, &cache, &sampler.class_names, &device)?;
        heads.content.thresholds = calibrated_values(&thresholds, ClassCalibration::describe_threshold, &device, log);
        log(&format!("calibrate: place-map cells read as presence per class on {} held-out training images", held_out.len()));
        let counts = super::thresholds::place_presence_cells(&heads.place, &held_out, &cache, &sampler.class_names, &device)?;
        heads.place.presence_cells = calibrated_values(&counts, ClassCalibration::describe_cells, &device, log);
        save(&heads, &state)?; // the calibration reads the heads as they will ship
        let reasoner = Reasoner::load(paths, Variant::F32, Some(&heads_path))?;
        log(&format!("calibrate: decoder prompt per class on {} held-out training images", held_out.len()));
        let evidence = calibrate::gate_evidence(&reasoner, &data, &held_out, &cache, config.seed, log)?;
        // Kept, so that the decisions can be audited and other rules tried without decoding again.
        let evidence_path = config.output_dir.join(CALIBRATION_FILE);
        let evidence_json = serde_json::to_vec(&evidence).map_err(|e| Error::Other(format!("calibration evidence: {e}")))?;
        crate::weights::store::write_atomic(&evidence_path, &evidence_json)?;
        let class_names = reasoner.knowledge().class_names();
        let rule = calibrate::DecisionRule::SHIPPED;
        let choices = calibrate::class_choices(&class_names, &evidence, rule);
        for line in calibrate::describe(&class_names, &evidence, &choices, rule).into_iter().chain(calibrate::describe_leave_one_out(&evidence, rule)) {
            log(&format!("calibrate: {line}"));
        }
        let gate = |index: usize| {
            let values: Vec<f32> = choices.iter().map(|c| c.gates()[index]).collect();
            Param::from_tensor(Tensor::<1>::from_floats(values.as_slice(), &device)).set_require_grad(false)
        };
        heads.seg_gate = gate(0);
        heads.box_gate = gate(1);
        heads.map_gate = gate(2);
        heads.prompt_box_gate = gate(3);
        heads.box_scale = gate(4);
        state.calibrated = true;
    }
    if !state.explained && config.explanation_steps > 0 {
        let explanation = super::explanation::ExplanationConfig {
            steps: config.explanation_steps,
            batch: 4,
            learning_rate: 3e-3,
            seed: config.seed,
            held_out_questions: 48,
            measure_every: 25,
        };
        log(&format!("explanation: the soft prompt under the LM loss on the answer text, {} steps of {}", explanation.steps, explanation.batch));
        let mut llm = TextModel::load(&paths.converted, Variant::F32, &device)?;
        llm.model = llm.model.no_grad();
        let shipped = TextModel::load(&paths.converted, Variant::Quantized, &Device::flex())?;
        let (prompt, report) = super::explanation::train_explanation(&llm, &shipped, reason.explanation_vectors, &explanation, log)?;
        heads.explanation = prompt;
        let report_json = serde_json::to_vec_pretty(&report).map_err(|e| Error::Other(format!("explanation report: {e}")))?;
        crate::weights::store::write_atomic(&config.output_dir.join(EXPLANATION_FILE), &report_json)?;
        state.explained = true;
    }
    // Saved again so that a finished run rewritten by a newer medsee gets the current format.
    save(&heads, &state)?;
    log(&format!("done: {} ({} steps), curves in {} and {}", heads_path.display(), state.step, curves_path.display(), plot_path.display()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::questions::Perspective;
    use burn::tensor::activation::log_softmax;
    use burn::tensor::Distribution;

    fn absent_draw(item: &ImageItem, asked: usize) -> Draw<'_> {
        let question = Question {
            text: "Where is my ticker?".into(),
            history: Vec::new(),
            perspective: Perspective::Colloquial,
            template: 0,
            target: None,
            asked: "heart".into(),
            answer: String::new(),
        };
        Draw { item, question, asked, targets: None, contents: vec![0.0; 5] }
    }

    /// The place head learns from more images than the questions: the question phases' images
    /// first, never one the calibration holds out, at most `per_set` per set.
    #[test]
    fn the_place_head_learns_from_the_question_images_first_and_never_from_held_out_ones() {
        let item = |id: String| ImageItem { id, modality: "xray".into(), image: "x.png".into(), split: Split::Train, objects: Vec::new() };
        let images = (0..30).map(|i| item(format!("big/{i}"))).chain((0..6).map(|i| item(format!("small/{i}")))).collect();
        let data = Dataset { root: "/nowhere".into(), images };
        let held_out = calibrate::held_out_images(&data, 4, 7, 3);
        let chosen = place_images(&data, &held_out, 7, 10);
        let ids = |items: &[&ImageItem]| items.iter().map(|i| i.id.clone()).collect::<std::collections::BTreeSet<_>>();
        assert!(ids(&chosen).is_disjoint(&ids(&held_out)));
        let in_set = |items: &[&ImageItem], set: &str| items.iter().filter(|i| i.id.starts_with(set)).map(|i| i.id.clone()).collect::<Vec<_>>();
        let questions = select_images(&data, Split::Train, 4, 7);
        assert_eq!(in_set(&chosen, "big/")[..4], in_set(&questions, "big/")[..]);
        // big: 10 of the 23 neither asked about nor held out; small: 4 asked about, 2 held out.
        assert_eq!((in_set(&chosen, "big/").len(), in_set(&chosen, "small/").len()), (10, 4));
    }

    /// A question about an absent structure still says which structure it asks for, and the
    /// class head learns that from it: the batch's class loss is the mean cross-entropy of the
    /// asked classes over every row, negatives included.
    #[test]
    fn the_class_head_learns_from_questions_about_absent_structures() {
        let device = Device::flex();
        let config = ReasonConfig { candidates: 4, llm_dim: 32, embedding_channels: 256, pool: 16, hidden: 16, place_hidden: 8, classes: 5, explanation_vectors: 2 };
        let heads = config.init(&device);
        let embedding = Tensor::random([2, 256, 64, 64], Distribution::Normal(0.0, 1.0), &device);
        let candidates = Tensor::random([2, 4, 32], Distribution::Normal(0.0, 1.0), &device);
        let located = heads.locate(embedding, candidates, None, None);
        let item = ImageItem { id: "x/1".into(), modality: "xray".into(), image: "x.png".into(), split: Split::Train, objects: Vec::new() };
        let (first, second) = (absent_draw(&item, 1), absent_draw(&item, 3));
        let log_probs = log_softmax(located.class_logits.clone(), 1).into_data().try_to_vec::<f32>().unwrap();
        let expected = -0.5 * (log_probs[1] + log_probs[5 + 3]) / 2.0;
        let loss = located_loss(located, &[&first, &second], &device);
        assert!((loss.parts[4] - expected).abs() < 1e-5, "class part {} against {expected}", loss.parts[4]);
        assert_eq!(loss.parts[1], 0.0, "no box to learn without a target");
    }
}
