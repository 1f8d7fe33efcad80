//! Does a compute device give the right answers? A fixed synthetic image and question go through
//! the whole graph — image encoder, language model prefill with vision tokens, heads, mask decoder
//! — and a fixed chat prompt through the explanation path (prefill, then one cached decode step).
//! Samples of the outputs are compared with reference values computed on the CPU
//! (`models/device-check.json`, written by `medsee device-check --write`).
//!
//! The page runs it on WebGPU before trusting that path, because a GPU that silently computes
//! wrong values is this field's most common failure; on the way it compiles every shader the
//! first question needs.

use burn::tensor::{Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::ask::Reasoner;
use crate::error::{Error, Result};
use crate::image::RgbImage;
use crate::llm::chat::{chat_ids, Message, Role};
use crate::llm::llama::KvCache;
use crate::segment::read_f32;

/// The reference, computed on the CPU from the shipped (quantised) weights.
pub const REFERENCE_JSON: &str = include_str!("../models/device-check.json");

const QUESTION: &str = "Which part of this picture helps me breathe?";
const CHAT: &str = "In one sentence: what do the lungs do?";
const IMAGE_SIZE: u32 = 192;
/// Every `EMBEDDING_STRIDE`-th value of the 256×64×64 embedding.
const EMBEDDING_STRIDE: usize = 4099;
/// The 256×256 low-res mask logits on a 16×16 grid.
const MASK_GRID: usize = 16;
/// How many of the reference's highest next-token logits are compared.
const TOP_LOGITS: usize = 8;

/// Samples of every stage's output for the fixed inputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceCheck {
    pub embedding: Vec<f32>,
    pub mask_logits: Vec<f32>,
    pub iou_prediction: f32,
    pub box_cxcywh: Vec<f32>,
    pub presence_logit: f32,
    pub class_logits: Vec<f32>,
    /// Next-token logits after the chat prompt, at `top_ids` (the reference's highest).
    pub top_ids: Vec<u32>,
    pub prefill_logits: Vec<f32>,
    /// The same after feeding the prompt's greedy next token through the KV cache.
    pub decode_top_ids: Vec<u32>,
    pub decode_logits: Vec<f32>,
}

/// What a comparison found: the largest error of each stage relative to its tolerance.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    /// `(stage, largest absolute error, tolerance at that value)`.
    pub stages: Vec<(String, f32, f32)>,
}

impl CheckReport {
    pub fn passed(&self) -> bool {
        self.stages.iter().all(|(_, err, tol)| err <= tol)
    }

    pub fn describe(&self) -> String {
        self.stages.iter().map(|(stage, err, tol)| format!("{stage} {err:.2e} (tolerance {tol:.2e})")).collect::<Vec<_>>().join(", ")
    }
}

impl DeviceCheck {
    pub fn reference() -> Result<Self> {
        serde_json::from_str(REFERENCE_JSON).map_err(|e| Error::Other(format!("models/device-check.json is not valid: {e}")))
    }

    /// Measures the reasoner against the committed reference; a mismatch is an
    /// [`Error::Device`] that names each stage, so the caller can refuse the device.
    pub async fn verify(reasoner: &Reasoner) -> Result<CheckReport> {
        let reference = Self::reference()?;
        let measured = Self::measure(reasoner, Some(&reference)).await?;
        let report = reference.compare(&measured);
        if !report.passed() {
            return Err(Error::Device(format!("the device check found wrong values: {}", report.describe())));
        }
        Ok(report)
    }

    /// Runs the fixed inputs on the reasoner's device. With `top_ids` from the reference the
    /// same logits are read back; without (writing a reference), the highest ones are chosen.
    pub async fn measure(reasoner: &Reasoner, reference: Option<&DeviceCheck>) -> Result<Self> {
        let image = reasoner.encode(&synthetic_image());
        let (out, _) = reasoner.forward(&image, QUESTION).await?;
        let embedding_values = read_f32(image.embedding.tensor.clone().reshape([-1])).await?;
        let mask_values = read_f32(out.decoder.low_res_masks.reshape([-1])).await?;
        let side = (mask_values.len() as f64).sqrt() as usize;
        let step = side / MASK_GRID;
        let mask_logits = (0..MASK_GRID * MASK_GRID).map(|i| mask_values[(i / MASK_GRID * step + step / 2) * side + i % MASK_GRID * step + step / 2]).collect();

        // The language model on Burn's f32 path, the one a GPU takes: the CPU's one-position
        // block kernels read 8-bit inputs (`llm::block_linear`) and differ from it by more than
        // these tolerances; their own accuracy is the parity tests' business.
        let llm = &reasoner.text_model().model.without_blocks();
        let prompt = chat_ids(&reasoner.text_model().tokenizer, &[Message::new(Role::User, CHAT)], true)?;
        let device = llm.output.weight.device();
        let ids = |tokens: &[u32]| {
            let n = tokens.len();
            Tensor::<2, Int>::from_data(TensorData::new(tokens.iter().map(|&t| t as i64).collect::<Vec<_>>(), [1, n]), &device)
        };
        let mut cache = KvCache::new();
        let prefill = read_f32(llm.last_logits(llm.forward_tokens(ids(&prompt), &mut cache)?.hidden)).await?;
        let top_ids = reference.map_or_else(|| highest(&prefill), |r| r.top_ids.clone());
        let next = argmax(&prefill);
        let decode = read_f32(llm.last_logits(llm.forward_tokens(ids(&[next]), &mut cache)?.hidden)).await?;
        let decode_top_ids = reference.map_or_else(|| highest(&decode), |r| r.decode_top_ids.clone());
        let at = |logits: &[f32], ids: &[u32]| ids.iter().map(|&i| logits.get(i as usize).copied().unwrap_or(f32::NAN)).collect();

        Ok(Self {
            embedding: embedding_values.iter().step_by(EMBEDDING_STRIDE).copied().collect(),
            mask_logits,
            iou_prediction: read_f32(out.decoder.iou_predictions).await?[0],
            box_cxcywh: read_f32(out.box_cxcywh).await?,
            presence_logit: read_f32(out.presence_logit).await?[0],
            class_logits: read_f32(out.class_logits).await?,
            prefill_logits: at(&prefill, &top_ids),
            top_ids,
            decode_logits: at(&decode, &decode_top_ids),
            decode_top_ids,
        })
    }

    /// Compares a measurement with this reference. Tolerances allow for a different summation
    /// order (f32 on another device); a wrong kernel is off by far more.
    pub fn compare(&self, measured: &DeviceCheck) -> CheckReport {
        let stage = |name: &str, reference: &[f32], measured: &[f32]| {
            let mut worst = (name.to_string(), 0.0f32, tolerance(0.0));
            if reference.len() != measured.len() {
                worst.1 = f32::INFINITY;
            }
            for (&r, &m) in reference.iter().zip(measured) {
                let err = (r - m).abs();
                // NaN compares false: count it as infinitely wrong.
                let err = if err.is_nan() { f32::INFINITY } else { err };
                if err / tolerance(r) > worst.1 / worst.2 {
                    worst = (name.to_string(), err, tolerance(r));
                }
            }
            worst
        };
        CheckReport {
            stages: vec![
                stage("image encoder", &self.embedding, &measured.embedding),
                stage("mask logits", &self.mask_logits, &measured.mask_logits),
                stage("mask score", &[self.iou_prediction], &[measured.iou_prediction]),
                stage("box", &self.box_cxcywh, &measured.box_cxcywh),
                stage("presence", &[self.presence_logit], &[measured.presence_logit]),
                stage("class", &self.class_logits, &measured.class_logits),
                stage("language model prefill", &self.prefill_logits, &measured.prefill_logits),
                stage("language model decode", &self.decode_logits, &measured.decode_logits),
            ],
        }
    }
}

fn tolerance(reference: f32) -> f32 {
    0.05 + 0.01 * reference.abs()
}

fn argmax(values: &[f32]) -> u32 {
    values.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i as u32)
}

fn highest(values: &[f32]) -> Vec<u32> {
    let mut order: Vec<u32> = (0..values.len() as u32).collect();
    order.sort_by(|&a, &b| values[b as usize].total_cmp(&values[a as usize]));
    order.truncate(TOP_LOGITS);
    order
}

/// A gray chest-like picture: dark body, two bright lung fields, a spine. Made in code so the
/// check needs no file.
pub fn synthetic_image() -> RgbImage {
    let n = IMAGE_SIZE as f32;
    let mut pixels = Vec::with_capacity((IMAGE_SIZE * IMAGE_SIZE * 3) as usize);
    for y in 0..IMAGE_SIZE {
        for x in 0..IMAGE_SIZE {
            let (u, v) = (x as f32 / n, y as f32 / n);
            let lung = |cx: f32| ((u - cx) / 0.16).powi(2) + ((v - 0.5) / 0.3).powi(2) < 1.0;
            let level = if (u - 0.5).abs() < 0.04 {
                220.0
            } else if lung(0.3) || lung(0.7) {
                40.0 + 30.0 * v
            } else {
                120.0 + 60.0 * u
            };
            pixels.extend([level as u8; 3]);
        }
    }
    RgbImage { width: IMAGE_SIZE, height: IMAGE_SIZE, pixels }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> DeviceCheck {
        DeviceCheck {
            embedding: vec![0.1, -0.2, 0.3],
            mask_logits: vec![-12.0, 3.0],
            iou_prediction: 0.8,
            box_cxcywh: vec![0.5, 0.5, 0.2, 0.3],
            presence_logit: 2.0,
            class_logits: vec![1.0, -1.0],
            top_ids: vec![5, 7],
            prefill_logits: vec![20.0, 18.0],
            decode_top_ids: vec![9, 2],
            decode_logits: vec![15.0, 14.5],
        }
    }

    #[test]
    fn a_small_difference_passes_and_a_wrong_stage_is_named() {
        let reference = sample();
        let mut close = sample();
        close.prefill_logits[0] += 0.2; // within 0.05 + 1 % of 20
        close.mask_logits[0] -= 0.1;
        assert!(reference.compare(&close).passed(), "{}", reference.compare(&close).describe());

        let mut wrong = sample();
        wrong.decode_logits[1] = 3.0;
        let report = reference.compare(&wrong);
        assert!(!report.passed());
        let failed: Vec<_> = report.stages.iter().filter(|(_, e, t)| e > t).map(|(s, _, _)| s.as_str()).collect();
        assert_eq!(failed, ["language model decode"]);

        let mut nan = sample();
        nan.embedding[1] = f32::NAN;
        assert!(!reference.compare(&nan).passed());
        let mut short = sample();
        short.class_logits.pop();
        assert!(!reference.compare(&short).passed());
    }

    #[test]
    fn the_reference_parses_and_has_every_stage() {
        let reference = DeviceCheck::reference().unwrap();
        assert!(reference.embedding.len() > 100 && reference.mask_logits.len() == MASK_GRID * MASK_GRID);
        assert_eq!(reference.top_ids.len(), TOP_LOGITS);
        assert_eq!(reference.decode_top_ids.len(), TOP_LOGITS);
    }
}
