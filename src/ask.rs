//! Reasoning segmentation: image → embedding and place maps (once per image) → question → mask,
//! box, presence, fusion weights and heat map → a streamed explanation. The engine shared by the
//! CLI, the evaluation and (through `web`) the page.

use burn::tensor::activation::softmax;
use burn::tensor::Tensor;

use crate::error::{Error, Result};
use crate::image::{Mask, PixelBox, RgbImage};
use crate::llm::TextModel;
use crate::reason::heads::cxcywh_to_xyxy;
use crate::reason::explanation::{self, ExplanationIds};
use crate::reason::knowledge::Knowledge;
use crate::reason::sequence::Layout;
use crate::reason::heads::box_of_map;
use crate::reason::{AnswerBox, BoxSource, ClassChoice, DecoderPrompt, Located, ReasonConfig, ReasonOutput, ReasoningHeads};
use crate::sam::{postprocess_masks, INPUT_SIZE};
use crate::segment::{read_f32, BoxSegmenter, ImageEmbedding};
use crate::weights;

/// Longer questions are refused rather than cut: a cut question could change its meaning.
pub const MAX_QUESTION_CHARS: usize = 500;
/// The class head must be at least this sure before the explanation names the structure.
pub const NAMING_CONFIDENCE: f32 = 0.5;

/// Checks a question and normalises it: control characters become spaces, runs of white space
/// collapse. Empty and over-long questions are errors a person can act on.
pub fn clean_question(text: &str) -> Result<String> {
    let spaced: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    let cleaned = spaced.split_whitespace().collect::<Vec<_>>().join(" ");
    if cleaned.is_empty() {
        return Err(Error::Prompt("the question is empty; ask about a structure in the image".into()));
    }
    let chars = cleaned.chars().count();
    if chars > MAX_QUESTION_CHARS {
        return Err(Error::Prompt(format!("the question is {chars} characters long; please keep it under {MAX_QUESTION_CHARS}")));
    }
    Ok(cleaned)
}

/// The known structure the question was understood as.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Understood {
    pub class: String,
    pub name: String,
    pub confidence: f32,
}

/// The similarity map on the 64×64 embedding grid, with the part that covers the image.
#[derive(Debug, Clone)]
pub struct Heatmap {
    /// Cosine similarity, 64×64 row-major, over the padded model input.
    pub values: Vec<f32>,
    /// Cells covering the (unpadded) image: width, height.
    pub image_cells: (usize, usize),
}

/// The answer to one question (the explanation is generated separately, see [`Reasoner::explain`]).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Answer {
    pub question: String,
    /// The presence head says the structure is in the image.
    pub found: bool,
    /// Probability that the structure is present.
    pub presence: f32,
    /// The structure's box in image pixels, as `box_from` says; `None` when not found.
    #[serde(rename = "box")]
    pub bbox: Option<PixelBox>,
    /// Which box `box` is (the class gate): the tight box of the mask (`mask`; the prompt box
    /// when the mask is empty) or the box that prompted the decoder (`prompt`).
    pub box_from: AnswerBox,
    /// The box that prompted the mask decoder, in image pixels; `None` when not found.
    pub prompt_box: Option<PixelBox>,
    /// The mask decoder's estimate of the mask's IoU.
    pub score: f32,
    pub mask_area: u64,
    /// The mask in COCO's uncompressed RLE (`size`, `counts`).
    pub mask_rle: serde_json::Value,
    pub structure: Option<Understood>,
    /// Whether the seg prompt token went to the mask decoder with the box (the class gate).
    pub seg_token: bool,
    /// Which box prompted the mask decoder (the class gates): where the structure usually lies
    /// (`anchor`), the box head's correction for this image (`corrected`) or the box of the
    /// structure's place map in this image (`map`).
    pub box_source: BoxSource,
    /// What that box's width and height were scaled by (the class's calibrated box scale).
    pub box_scale: f32,
    /// Candidate fusion weights (`[SEG]`, `[BBOX]`, extra candidates…) of the mask and box branches.
    pub seg_weights: Vec<f32>,
    pub box_weights: Vec<f32>,
    #[serde(skip)]
    pub mask: Mask,
    #[serde(skip)]
    pub heatmap: Heatmap,
}

/// Holes and islands smaller than this many pixels of the mask decoder's 256×256 output are
/// removed from an answer's mask (SAM's small-region clean-up): where the decoder's logits hover
/// around zero, its transposed convolutions leave a grid of such dots (seen inside both lungs
/// of chest X-rays), and no structure the decoder can resolve is that small.
pub const SMALL_REGION_DECODER_PIXELS: f32 = 8.0;

/// Added to the target logit of a class the question's words rule out (e^-30 ≈ 1e-13: never
/// chosen, and still finite on every backend).
const RULED_OUT_LOGIT: f32 = -30.0;

/// An image as the reasoner reads it: LiteMedSAM's embedding and every class's place map, both
/// computed once per image because neither depends on the question.
#[derive(Debug, Clone)]
pub struct EncodedImage {
    pub embedding: ImageEmbedding,
    /// `[1, classes, cells]` logits ([`crate::reason::heads::PlaceHead::forward`]): presence
    /// reads the calibrated ones, a map-box prompt the one meant.
    pub place_maps: Tensor<3>,
}

/// LiteMedSAM, SmolLM2 and the trained reasoning heads.
pub struct Reasoner {
    segmenter: BoxSegmenter,
    llm: TextModel,
    heads: ReasoningHeads,
    config: ReasonConfig,
    knowledge: Knowledge,
    classes: Vec<String>,
}

impl Reasoner {
    /// Builds the reasoner from loaded engines and the heads' burnpack bytes (already verified).
    pub fn new(segmenter: BoxSegmenter, llm: TextModel, heads_file: &str, heads_bytes: Vec<u8>) -> Result<Self> {
        let config = ReasonConfig::smollm2_litemedsam()?;
        // Like the backbones, the heads load on the CPU (where quantised records expand to f32;
        // Burn's wgpu backend cannot take Q8 records as they are stored) and then move.
        let cpu = burn::tensor::Device::flex();
        let heads = burn::module::Module::to_device(weights::load_record(config.init(&cpu), heads_file, heads_bytes)?, segmenter.device());
        let knowledge = Knowledge::load()?;
        let classes = knowledge.class_names();
        Ok(Self { segmenter, llm, heads, config, knowledge, classes })
    }

    /// Loads everything from the converted-weights folder (each file checked against its
    /// sha256); `heads` overrides the shipped reasoning heads with a freshly trained file.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn load(paths: &crate::weights::convert::ModelPaths, variant: weights::Variant, heads: Option<&std::path::Path>) -> Result<Self> {
        let device = burn::tensor::Device::flex();
        let segmenter = BoxSegmenter::load(&paths.converted, variant, device.clone())?;
        let llm = TextModel::load(&paths.converted, variant, &device)?;
        let (name, bytes) = match heads {
            Some(path) => (path.display().to_string(), std::fs::read(path).map_err(|e| Error::io(path, e))?),
            None => {
                let name = crate::weights::store::reason_heads_file(variant);
                (name.to_string(), weights::store::read_verified(&paths.converted, name)?)
            }
        };
        Self::new(segmenter, llm, &name, bytes)
    }

    pub fn segmenter(&self) -> &BoxSegmenter {
        &self.segmenter
    }

    pub fn text_model(&self) -> &TextModel {
        &self.llm
    }

    pub fn knowledge(&self) -> &Knowledge {
        &self.knowledge
    }

    /// Runs the image encoder and the place head: once per image, every question reuses them.
    pub fn encode(&self, image: &RgbImage) -> EncodedImage {
        self.read_embedding(self.segmenter.encode(image))
    }

    /// An image from its embedding (one computed earlier, e.g. cached on disk).
    pub fn read_embedding(&self, embedding: ImageEmbedding) -> EncodedImage {
        let place_maps = self.heads.place.forward(embedding.tensor.clone());
        EncodedImage { embedding, place_maps }
    }

    /// The reasoning graph's raw outputs for a (clean) question: one LLM pass, the heads, and
    /// the mask decoder prompted as the class gates want it; and which box they want answered.
    pub async fn forward(&self, image: &EncodedImage, question: &str) -> Result<(ReasonOutput, AnswerBox)> {
        let (candidates, mut located) = self.locate(image, question)?;
        let choice = ClassChoice::from_gates(&read_f32(self.heads.class_gates(located.target_logits.clone())).await?);
        if choice.prompt.box_source == BoxSource::Map {
            located.map_box_cxcywh = self.map_box(&located).await?;
        }
        Ok((self.decode(image, candidates, located, choice.prompt, choice.box_scale), choice.answer_box))
    }

    /// The graph up to the mask decoder: one LLM pass over the question with the image's vision
    /// tokens, then the heads. Returns the candidate states and what the heads located.
    pub fn locate(&self, image: &EncodedImage, question: &str) -> Result<(Tensor<3>, Located)> {
        let embedding = &image.embedding;
        let layout = Layout::new(&self.llm.tokenizer, question, &[], self.config.vision_tokens(64), self.config.candidates)?;
        if layout.len() > self.llm.config.max_sequence {
            return Err(Error::Prompt(format!("the question is too long for the language model ({} tokens)", layout.len())));
        }
        let candidates = self.heads.candidate_states(&self.llm.model, embedding.tensor.clone(), &layout)?;
        let ruled_out: Vec<f32> = self.knowledge.ruled_out_by_side(question).iter().map(|&out| if out { RULED_OUT_LOGIT } else { 0.0 }).collect();
        let ruled_out = Tensor::<1>::from_floats(ruled_out.as_slice(), &candidates.device()).reshape([1, self.classes.len()]);
        let located = self.heads.locate(embedding.tensor.clone(), candidates.clone(), Some(ruled_out), Some(image.place_maps.clone()));
        Ok((candidates, located))
    }

    /// The box of the place map of the structure `located` means, for a map-box prompt (`None`:
    /// the map is empty, and the decoder gets the anchor).
    pub async fn map_box(&self, located: &Located) -> Result<Option<Tensor<2>>> {
        let maps = located.place_maps.clone().ok_or_else(|| Error::Other("the place maps were not computed".into()))?;
        let logits = ReasoningHeads::meant_map(maps, located.target_logits.clone());
        let [_, cells] = logits.dims();
        let device = logits.device();
        let side = (cells as f64).sqrt() as usize;
        Ok(box_of_map(&read_f32(logits).await?, side).map(|b| Tensor::<1>::from_floats(b, &device).reshape([1, 4])))
    }

    /// The mask decoder on what [`Self::locate`] found, prompted as `prompt` says with the box
    /// scaled by `box_scale`.
    pub fn decode(&self, image: &EncodedImage, candidates: Tensor<3>, located: Located, prompt: DecoderPrompt, box_scale: f32) -> ReasonOutput {
        self.heads.decode(self.segmenter.model(), image.embedding.tensor.clone(), candidates, located, prompt, box_scale)
    }

    /// Answers `question` about the encoded image: mask, box, presence, fusion weights, heat map.
    pub async fn ask(&self, image: &EncodedImage, question: &str) -> Result<Answer> {
        let question = clean_question(question)?;
        let (out, box_from) = self.forward(image, &question).await?;
        let embedding = &image.embedding;
        let (width, height) = embedding.original_size;
        let presence = sigmoid(read_f32(out.presence_logit).await?[0]);
        let found = presence > 0.5;
        // Found: the structure meant, given that it is here; not found: what the question asked for
        // ("I can't find the optic disc…").
        let class_probs = read_f32(softmax(if found { out.target_logits } else { out.class_logits }, 1)).await?;
        let structure = class_probs
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .filter(|(_, &p)| p >= NAMING_CONFIDENCE)
            .and_then(|(i, &p)| {
                let s = self.knowledge.structure(&self.classes[i])?;
                Some(Understood { class: s.class.clone(), name: s.name(), confidence: p })
            });
        let DecoderPrompt { seg_token, box_source } = out.prompt;
        let seg_weights = read_f32(out.fused.seg_weights).await?;
        let box_weights = read_f32(out.fused.box_weights).await?;
        let (sw, sh) = embedding.scaled_size;
        let cells = |n: u32| (n as usize).div_ceil(INPUT_SIZE / 64).clamp(1, 64);
        let heatmap = Heatmap { values: read_f32(out.similarity.cosine).await?, image_cells: (cells(sw), cells(sh)) };
        let score = read_f32(out.decoder.iou_predictions).await?[0];
        let (mask, bbox, prompt_box) = if found {
            let logits = postprocess_masks(out.decoder.low_res_masks, [sh as usize, sw as usize], [height as usize, width as usize]);
            let min_area = (SMALL_REGION_DECODER_PIXELS / (embedding.scale * embedding.scale)).round() as usize;
            let mask = Mask::from_logits(width, height, &read_f32(logits).await?).without_small_regions(min_area);
            let model_box = read_f32(cxcywh_to_xyxy(out.box_cxcywh, INPUT_SIZE as f64)).await?;
            let [x0, y0, x1, y1] = [0, 1, 2, 3].map(|i| model_box[i] / embedding.scale);
            let clip = |v: f32, max: u32| v.clamp(0.0, max as f32);
            let prompt_box = PixelBox::new(clip(x0, width), clip(y0, height), clip(x1, width), clip(y1, height));
            let bbox = answer_box(box_from, &mask, prompt_box);
            (mask, Some(bbox), Some(prompt_box))
        } else {
            (Mask { width, height, data: vec![0; width as usize * height as usize] }, None, None)
        };
        Ok(Answer { question, found, presence, bbox, box_from, prompt_box, score, mask_area: mask.area(), mask_rle: mask.coco_rle(), structure, seg_token, box_source, box_scale: out.box_scale, seg_weights, box_weights, mask, heatmap })
    }

    /// The explanation of `answer`, streamed piece by piece to `on_text` (return false to stop).
    /// It is grounded: the language model only rephrases the knowledge table's facts about the
    /// structure that was found, in answer to the question, led by the trained soft prompt
    /// ([`crate::reason::explanation`]). With nothing found, or a structure
    /// the model is unsure of, it says so plainly instead of letting the model guess.
    pub async fn explain(&self, answer: &Answer, mut on_text: impl FnMut(&str) -> bool) -> Result<String> {
        let known = answer.structure.as_ref().and_then(|u| self.knowledge.structure(&u.class));
        let fixed = match (&known, answer.found) {
            (Some(s), false) => Some(format!("I can't find the {} in this image.", s.name())),
            (None, false) => Some("I can't find that in this image.".to_string()),
            (None, true) => Some("The highlighted area is where the model found what you asked about, but it cannot tell with confidence which structure it is.".to_string()),
            (Some(_), true) => None,
        };
        if let Some(text) = fixed {
            on_text(&text);
            return Ok(text);
        }
        let structure = known.expect("matched above");
        let tokenizer = &self.llm.tokenizer;
        let ids = ExplanationIds::new(tokenizer, &answer.question, &structure)?;
        let opening = explanation::opening(&structure);
        if !on_text(&opening) {
            return Ok(opening);
        }
        let options = explanation::generate_options(tokenizer);
        // Decode everything so far each time: a byte-level token may end inside a character.
        let mut tokens = Vec::new();
        let mut shown = 0;
        explanation::continue_after_opening(&self.llm.model, Some(&self.heads.explanation), &ids, &options, |token| {
            tokens.push(token);
            match tokenizer.decode(&tokens) {
                Ok(text) if text.len() > shown && text.is_char_boundary(shown) && !text.ends_with('\u{fffd}') => {
                    let keep_going = on_text(&text[shown..]);
                    shown = text.len();
                    keep_going
                }
                _ => true,
            }
        })
        .await?;
        Ok(format!("{opening}{}", tokenizer.decode(&tokens)?.trim_end()))
    }
}

/// The box an answer reports, as its class gate says ([`AnswerBox`]): the tight box of its mask
/// (so that the box drawn and the mask agree), falling back to the decoder's prompt box when the
/// mask is empty; or the prompt box. Where the box head prompted the decoder, the mask's box is
/// the better detection: on the validation questions it raised box Acc@0.5 from 0.517 to 0.531
/// (skin lesions 0.54 → 0.69 box IoU, fetal heads 0.63 → 0.71), because the decoder reads the
/// image where the box head only reads the prompt's summary of it.
pub fn answer_box(kind: AnswerBox, mask: &Mask, prompt_box: PixelBox) -> PixelBox {
    match kind {
        AnswerBox::Mask => mask.bounding_box().unwrap_or(prompt_box),
        AnswerBox::Prompt => prompt_box,
    }
}

pub(crate) fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// The heat map as 8-bit values over the image's cells (for a PNG or the page).
pub fn heatmap_bytes(heatmap: &Heatmap) -> (usize, usize, Vec<u8>) {
    let (w, h) = heatmap.image_cells;
    let mut out = Vec::with_capacity(w * h);
    for y in 0..h {
        for x in 0..w {
            let v = heatmap.values[y * 64 + x];
            out.push((v.clamp(0.0, 1.0) * 255.0).round() as u8);
        }
    }
    (w, h, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn questions_are_cleaned_and_bad_ones_refused() {
        assert_eq!(clean_question("  which part\thelps me\n breathe?\u{0007} ").unwrap(), "which part helps me breathe?");
        for bad in ["", "   \n\t", "\u{0000}\u{001b}"] {
            assert!(matches!(clean_question(bad), Err(Error::Prompt(_))), "{bad:?}");
        }
        let long = "a".repeat(MAX_QUESTION_CHARS + 1);
        let err = clean_question(&long).unwrap_err().to_string();
        assert!(err.contains("501 characters"), "{err}");
        assert!(clean_question(&"é".repeat(MAX_QUESTION_CHARS)).is_ok(), "limit counts characters, not bytes");
    }
}
