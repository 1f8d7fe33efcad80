//! `medsee train`: trains the reasoning heads (vision projector, candidate tokens, fusion, box,
//! seg prompt, similarity, presence) with LiteMedSAM and SmolLM2 frozen. Gradients flow through
//! the frozen LLM and mask decoder to the heads. Embeddings come from the on-disk cache; the
//! heads are checkpointed (with the step, for resuming) and the loss curves written as CSV.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use burn::module::Module;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Tensor, TensorData};

use super::cache::EmbeddingCache;
use super::dataset::{Dataset, ImageItem, Split};
use crate::reason::knowledge::Knowledge;
use super::losses::{bce_with_logits, box_loss, cross_entropy, dice_loss, mask_loss};
use super::questions::{Phrasings, Question, QuestionGenerator};
use super::targets::Targets;
use crate::error::{Error, Result};
use crate::llm::TextModel;
use crate::reason::sequence::Layout;
use crate::reason::{ReasonConfig, ReasoningHeads};
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
    /// Where the heads, their training state and the curves go.
    pub output_dir: PathBuf,
}

pub const HEADS_FILE: &str = "reason-heads.bpk";
const STATE_FILE: &str = "reason-heads.json";
const CURVES_FILE: &str = "train-curves.csv";

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct TrainState {
    step: usize,
    seed: u64,
}

/// Images of `split`, at most `per_set` per data set, chosen deterministically.
pub fn select_images(data: &Dataset, split: Split, per_set: usize, seed: u64) -> Vec<&ImageItem> {
    let mut by_set: std::collections::BTreeMap<String, Vec<&ImageItem>> = Default::default();
    for item in data.split(split) {
        let set = item.id.split('/').next().unwrap_or_default().to_string();
        by_set.entry(set).or_default().push(item);
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

/// The losses of one question, as scalars for logging plus the total to differentiate.
struct StepLoss {
    total: Tensor<1>,
    /// mask, box, similarity, presence, class.
    parts: [f32; 5],
}

/// What a question asks for: the target's class row and its masks, or nothing (absent).
struct Answer {
    class: usize,
    targets: Targets,
}

fn f32_tensor<const D: usize>(values: Vec<f32>, shape: [usize; D], device: &Device) -> Tensor<D> {
    let n = values.len();
    Tensor::<1>::from_data(TensorData::new(values, [n]), device).reshape(shape)
}

fn question_loss(
    heads: &ReasoningHeads,
    sam: &crate::sam::LiteMedSam,
    llm: &TextModel,
    embedding: Tensor<4>,
    question: &Question,
    answer: Option<&Answer>,
    config: &ReasonConfig,
) -> Result<StepLoss> {
    let device = embedding.device();
    let history: Vec<(String, String)> = question.history.iter().map(|t| (t.question.clone(), t.answer.clone())).collect();
    let layout = Layout::new(&llm.tokenizer, &question.text, &history, config.vision_tokens(64), config.candidates)?;
    let out = heads.forward(sam, &llm.model, embedding, &layout)?;
    let present = f32_tensor(vec![if answer.is_some() { 1.0 } else { 0.0 }], [1], &device);
    let presence = bce_with_logits(out.presence_logit, present);
    let coarse_logits = out.similarity.logits.reshape([1, 64 * 64]);
    let Some(answer) = answer else {
        // Nothing to find: the similarity map should light up nowhere.
        let similarity = bce_with_logits(coarse_logits.clone(), coarse_logits.zeros_like());
        let parts = [0.0, 0.0, similarity.clone().into_scalar::<f32>(), presence.clone().into_scalar::<f32>(), 0.0];
        return Ok(StepLoss { total: similarity + presence, parts });
    };
    let t = &answer.targets;
    let mask = mask_loss(out.decoder.low_res_masks.reshape([1, 256 * 256]), f32_tensor(t.mask.clone(), [1, 256 * 256], &device));
    let boxes = box_loss(out.box_cxcywh.clone(), f32_tensor(t.box_cxcywh.to_vec(), [1, 4], &device));
    let coarse = f32_tensor(t.coarse_mask.clone(), [1, 64 * 64], &device);
    let similarity = bce_with_logits(coarse_logits.clone(), coarse.clone()) + dice_loss(coarse_logits, coarse) * 0.5;
    let class = cross_entropy(out.class_logits, answer.class) * 0.5;
    let parts = [&mask, &boxes, &similarity, &presence, &class].map(|l| l.clone().into_scalar::<f32>());
    Ok(StepLoss { total: mask + boxes + similarity + presence + class, parts })
}

/// Cosine decay from `peak` to a tenth of it.
fn learning_rate(peak: f64, step: usize, steps: usize) -> f64 {
    let progress = step as f64 / steps.max(1) as f64;
    peak * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()))
}

/// Trains (or resumes training) until `config.steps`.
pub fn train(paths: &ModelPaths, config: &TrainConfig, log: &mut dyn FnMut(&str)) -> Result<()> {
    std::fs::create_dir_all(&config.output_dir).map_err(|e| Error::io(&config.output_dir, e))?;
    let data = Dataset::load(&Dataset::default_root())?;
    let images = select_images(&data, Split::Train, config.images_per_set, config.seed);
    log(&format!("data: {} training images", images.len()));

    let cache = EmbeddingCache::new(&config.output_dir.join("cache"))?;
    {
        let encoder = BoxSegmenter::load(&paths.converted, Variant::F32, Device::flex())?;
        cache.fill(&encoder, &images, log)?;
    }

    let device = Device::flex().autodiff();
    let sam = BoxSegmenter::load(&paths.converted, Variant::F32, device.clone())?.model().clone().no_grad();
    let mut llm = TextModel::load(&paths.converted, Variant::F32, &device)?;
    llm.model = llm.model.no_grad();
    let reason = ReasonConfig::smollm2_litemedsam()?;
    let heads_path = config.output_dir.join(HEADS_FILE);
    let state_path = config.output_dir.join(STATE_FILE);
    let (mut heads, mut state) = match std::fs::read(&heads_path) {
        Ok(bytes) => {
            let state: TrainState = std::fs::read_to_string(&state_path)
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or_default();
            log(&format!("resuming from {} at step {}", heads_path.display(), state.step));
            (weights::load_record(reason.init(&device), HEADS_FILE, bytes)?, state)
        }
        Err(_) => (reason.init(&device), TrainState { step: 0, seed: config.seed }),
    };
    let mut optim = AdamWConfig::new().with_weight_decay(1e-4).init();
    let generator = QuestionGenerator::new(Knowledge::load()?, Phrasings::Train);
    let class_names = generator.knowledge().class_names();
    let others: Vec<(String, Vec<String>)> = data.classes().into_iter().collect();
    let curves_path = config.output_dir.join(CURVES_FILE);
    let mut curves = std::fs::OpenOptions::new().create(true).append(true).open(&curves_path).map_err(|e| Error::io(&curves_path, e))?;
    if state.step == 0 {
        writeln!(curves, "step,loss,mask,box,similarity,presence,class,positive").map_err(|e| Error::io(&curves_path, e))?;
    }

    let started = Instant::now();
    let first_step = state.step;
    let mut window = Vec::new();
    while state.step < config.steps {
        // Each step draws from its own stream, so a resumed run continues the same sequence.
        let mut rng = SplitMix64::new(state.seed ^ (state.step as u64).wrapping_mul(0x9e37_79b9));
        let item = images[rng.below(images.len())];
        let negative = rng.next_f64() < config.negative_rate;
        let (question, answer) = if negative {
            let question = generator
                .negative_for(&item.modality, &others, &mut rng)
                .ok_or_else(|| Error::Other(format!("no absent-structure question for a {} image", item.modality)))?;
            (question, None)
        } else {
            let record = rng.pick(&item.objects);
            let structure =
                generator.knowledge().structure(&record.class).ok_or_else(|| Error::Other(format!("no knowledge for {}", record.class)))?;
            let class = class_names.iter().position(|c| *c == record.class).expect("every resolvable class has a row");
            (generator.positive(&structure, &mut rng), Some(Answer { class, targets: Targets::load(&data.root, record)? }))
        };
        let embedding = cache.load(item, &device)?;
        let loss = question_loss(&heads, &sam, &llm, embedding, &question, answer.as_ref(), &reason)?;
        let grads = GradientsParams::from_grads(loss.total.backward(), &heads);
        heads = optim.step(learning_rate(config.learning_rate, state.step, config.steps), heads, grads);
        state.step += 1;

        let total: f32 = loss.parts.iter().sum();
        window.push(total);
        writeln!(
            curves,
            "{},{total:.5},{:.5},{:.5},{:.5},{:.5},{:.5},{}",
            state.step, loss.parts[0], loss.parts[1], loss.parts[2], loss.parts[3], loss.parts[4], u8::from(!negative)
        )
        .map_err(|e| Error::io(&curves_path, e))?;
        if state.step % 10 == 0 || state.step == config.steps {
            let per_step = started.elapsed().as_secs_f64() / (state.step - first_step) as f64;
            let mean = window.iter().sum::<f32>() / window.len() as f32;
            window.clear();
            log(&format!(
                "step {}/{} loss {mean:.4} ({per_step:.2} s/step, {:.0} min left)",
                state.step,
                config.steps,
                per_step * (config.steps - state.step) as f64 / 60.0
            ));
        }
        if state.step % config.checkpoint_every == 0 || state.step == config.steps {
            let bytes = weights::record_bytes(heads.valid())?;
            crate::weights::store::write_atomic(&heads_path, &bytes)?;
            crate::weights::store::write_atomic(&state_path, serde_json::to_string(&state).expect("state").as_bytes())?;
        }
    }
    log(&format!("done: {} ({} steps), curves in {}", heads_path.display(), state.step, curves_path.display()));
    Ok(())
}
