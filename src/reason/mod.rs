//! The reasoning segmenter (MediSee's graph on LiteMedSAM + SmolLM2): vision tokens from the
//! cached image embedding → one LLM pass over question + forced answer with K candidate tokens →
//! candidate fusion → box, seg prompt, similarity map, presence, place map → LiteMedSAM's mask
//! decoder; afterwards, the explanation's input (`explanation`).
//!
//! Only the modules here (and optionally LoRA on the LLM) are trained; LiteMedSAM and SmolLM2
//! stay frozen.

pub mod explanation;
pub mod fusion;
pub mod heads;
pub mod knowledge;
pub mod projector;
pub mod sequence;

use burn::module::{Module, Param};
use burn::tensor::activation::{log_sigmoid, log_softmax, softmax};
use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};

use crate::error::Result;
use crate::llm::llama::{KvCache, Llama};
use crate::sam::mask_decoder::MaskDecoderOutput;
use crate::sam::{LiteMedSam, INPUT_SIZE};
use explanation::ExplanationPrompt;
use fusion::{CandidateFusion, Fused};
use heads::{cxcywh_to_xyxy, map_features, presence_logit, BoxHead, ClassHead, ContentHead, PlaceHead, SegPrompt, Similarity, SimilarityHead};
use knowledge::Knowledge;
use projector::VisionProjector;
use sequence::Layout;

#[derive(Debug, Clone, PartialEq)]
pub struct ReasonConfig {
    /// K: `[SEG]`, `[BBOX]` and K−2 extra candidate tokens.
    pub candidates: usize,
    /// LLM width (576 for SmolLM2-135M).
    pub llm_dim: usize,
    /// Image embedding channels (256) and SAM prompt width (256).
    pub embedding_channels: usize,
    /// Pooling window over the 64×64 embedding: 8 gives 64 vision tokens.
    pub pool: usize,
    pub hidden: usize,
    /// Width of the place head's per-cell MLP.
    pub place_hidden: usize,
    /// Rows of the class head: [`Knowledge::class_names`].
    pub classes: usize,
    /// P: vectors of the explanation's soft prompt.
    pub explanation_vectors: usize,
}

impl ReasonConfig {
    pub fn smollm2_litemedsam() -> Result<Self> {
        let classes = Knowledge::load()?.class_names().len();
        Ok(Self { candidates: 4, llm_dim: 576, embedding_channels: 256, pool: 8, hidden: 256, place_hidden: 128, classes, explanation_vectors: 8 })
    }

    pub fn vision_tokens(&self, embedding_size: usize) -> usize {
        (embedding_size / self.pool).pow(2)
    }

    pub fn init(&self, device: &Device) -> ReasoningHeads {
        let d = self.llm_dim;
        ReasoningHeads {
            candidate_embeddings: Param::from_tensor(Tensor::random([self.candidates, d], Distribution::Normal(0.0, 0.02), device)),
            projector: VisionProjector::new(self.embedding_channels, d, self.pool, device),
            fusion: CandidateFusion::new(self.candidates, d, self.hidden, device),
            box_head: BoxHead::new(d, self.hidden, self.classes, device),
            seg_prompt: SegPrompt::new(d, self.embedding_channels, device),
            similarity: SimilarityHead::new(d, self.embedding_channels, device),
            content: ContentHead::new(self.embedding_channels, self.hidden, self.classes, device),
            class: ClassHead::new(d, self.classes, device),
            place: PlaceHead::new(self.embedding_channels, self.place_hidden, self.classes, device),
            seg_gate: Param::from_tensor(Tensor::ones([self.classes], device)).set_require_grad(false),
            box_gate: Param::from_tensor(Tensor::ones([self.classes], device)).set_require_grad(false),
            map_gate: Param::from_tensor(Tensor::zeros([self.classes], device)).set_require_grad(false),
            prompt_box_gate: Param::from_tensor(Tensor::zeros([self.classes], device)).set_require_grad(false),
            box_scale: Param::from_tensor(Tensor::ones([self.classes], device)).set_require_grad(false),
            explanation: ExplanationPrompt::new(self.explanation_vectors, d, device),
        }
    }
}

/// Everything the graph trains.
#[derive(Module, Debug)]
pub struct ReasoningHeads {
    /// Input embeddings of the K candidate tokens (they are not in the LLM's vocabulary).
    pub candidate_embeddings: Param<Tensor<2>>,
    pub projector: VisionProjector,
    pub fusion: CandidateFusion,
    pub box_head: BoxHead,
    pub seg_prompt: SegPrompt,
    pub similarity: SimilarityHead,
    pub content: ContentHead,
    pub class: ClassHead,
    pub place: PlaceHead,
    /// `[classes]`: 1 where the seg prompt token helps LiteMedSAM's decoder on that class, 0 where
    /// the box prompt alone does better. Set after training by a calibration on training images
    /// the heads never saw (`train::calibrate`); all 1 — MediSee's graph — until then.
    pub seg_gate: Param<Tensor<1>>,
    /// `[classes]`: 1 where the box head's correction for this image improves the mask on that
    /// class, 0 where the class's usual place (the anchor) prompts the decoder better. Calibrated
    /// with `seg_gate`; all 1 until then.
    pub box_gate: Param<Tensor<1>>,
    /// `[classes]`: 1 where the box of the class's place map prompts the decoder best (it then
    /// takes precedence over `box_gate`). Calibrated with the others; all 0 until then.
    pub map_gate: Param<Tensor<1>>,
    /// `[classes]`: 1 where the box that prompted the decoder is the better answer box on that
    /// class, 0 where the tight box of the decoded mask is (see [`AnswerBox`]). Calibrated with
    /// the others; all 0 until then.
    pub prompt_box_gate: Param<Tensor<1>>,
    /// `[classes]`: what the class's prompt box is scaled by (see [`BOX_SCALES`]). Calibrated
    /// with the others; all 1 until then.
    pub box_scale: Param<Tensor<1>>,
    /// The explanation's soft prompt, trained last with the LM loss on the answer text and read
    /// by nothing before the mask.
    pub explanation: ExplanationPrompt,
}

/// Which box an answer reports. The decoder reads the image, so the tight box of its mask is
/// usually the better detection (a fetal head, the liver); but where the decoder cannot
/// segment a structure well even from the true box — a clavicle on a chest X-ray, mask IoU 0.33
/// given the ground-truth box — the box that prompted it (the place map's) is the better one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AnswerBox {
    /// The tight box of the answer's mask (the prompt box when the mask is empty).
    Mask,
    /// The box that prompted the mask decoder.
    Prompt,
}

impl AnswerBox {
    /// From the gate [`ReasoningHeads::class_gates`] reads last.
    pub fn from_gate(gate: f32) -> Self {
        if gate >= 0.5 {
            Self::Prompt
        } else {
            Self::Mask
        }
    }

    pub fn gate(self) -> f32 {
        if self == Self::Prompt {
            1.0
        } else {
            0.0
        }
    }
}

/// The factors the calibration may scale a class's prompt box by (its width and height, about
/// its centre), the unit first. A place map thresholded at even odds tends to cover a structure's
/// core and miss its rim, and the decoder seldom segments beyond the box it is given; an anchor
/// can be too wide for a structure that varies in place.
pub const BOX_SCALES: [f32; 5] = [1.0, 0.9, 1.1, 1.2, 1.3];

/// The calibrated choices for one class ([`ReasoningHeads::class_gates`] holds them): how the
/// decoder is prompted and which box the answer reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClassChoice {
    pub prompt: DecoderPrompt,
    /// The prompt box's width and height are multiplied by this (one of [`BOX_SCALES`]).
    pub box_scale: f32,
    pub answer_box: AnswerBox,
}

impl ClassChoice {
    /// From the values [`ReasoningHeads::class_gates`] reads.
    pub fn from_gates(gates: &[f32]) -> Self {
        Self { prompt: DecoderPrompt::from_gates(&gates[..3]), answer_box: AnswerBox::from_gate(gates[3]), box_scale: gates[4] }
    }

    /// The values that give this choice back through [`Self::from_gates`].
    pub fn gates(self) -> [f32; 5] {
        let [seg, corrected, map] = self.prompt.gates();
        [seg, corrected, map, self.answer_box.gate(), self.box_scale]
    }
}

/// Which box prompts the mask decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BoxSource {
    /// Where the structure meant usually lies (its mean training box): the text-only baseline.
    Anchor,
    /// The box head's correction of the anchor for this image (MediSee's predicted box).
    Corrected,
    /// The box of the structure's place map in this image (the anchor where the map is empty).
    Map,
}

/// How the mask decoder is prompted, decided per class by the calibrated gates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct DecoderPrompt {
    /// The fused `[SEG]` state goes with the box as an extra prompt token.
    pub seg_token: bool,
    pub box_source: BoxSource,
}

impl DecoderPrompt {
    /// MediSee's graph: the predicted box and the seg token.
    pub const FULL: Self = Self { seg_token: true, box_source: BoxSource::Corrected };
    /// The text-only baseline's prompt: the usual place alone.
    pub const ANCHOR: Self = Self { seg_token: false, box_source: BoxSource::Anchor };
    /// Every combination, in a fixed order.
    pub const ALL: [Self; 6] = [
        Self::FULL,
        Self { seg_token: false, box_source: BoxSource::Corrected },
        Self { seg_token: true, box_source: BoxSource::Map },
        Self { seg_token: false, box_source: BoxSource::Map },
        Self { seg_token: true, box_source: BoxSource::Anchor },
        Self::ANCHOR,
    ];

    /// Where this prompt is in [`Self::ALL`].
    pub fn index(self) -> usize {
        Self::ALL.iter().position(|p| *p == self).expect("every prompt is in ALL")
    }

    /// From the first three gates [`ReasoningHeads::class_gates`] reads: `[seg token, corrected
    /// box, map box]`.
    pub fn from_gates(gates: &[f32]) -> Self {
        let box_source = if gates[2] >= 0.5 {
            BoxSource::Map
        } else if gates[1] >= 0.5 {
            BoxSource::Corrected
        } else {
            BoxSource::Anchor
        };
        Self { seg_token: gates[0] >= 0.5, box_source }
    }

    /// The gate values that give this prompt back through [`Self::from_gates`].
    pub fn gates(self) -> [f32; 3] {
        let open = |b: bool| if b { 1.0 } else { 0.0 };
        [open(self.seg_token), open(self.box_source == BoxSource::Corrected), open(self.box_source == BoxSource::Map)]
    }
}

/// What the heads after the LLM find before the mask decoder runs (any batch size).
#[derive(Debug, Clone)]
pub struct Located {
    pub fused: Fused,
    pub similarity: Similarity,
    /// `[B, 4]` (cx, cy, w, h) in [0, 1] of the padded 256×256 input: the box head's answer…
    pub box_cxcywh: Tensor<2>,
    /// …the usual place of the structure meant…
    pub anchor_cxcywh: Tensor<2>,
    /// …and the box of that structure's place map ([`ReasoningHeads::meant_map`] →
    /// [`heads::box_of_map`], on the host), set by the caller only where a prompt uses it.
    pub map_box_cxcywh: Option<Tensor<2>>,
    /// `[B, classes, cells]`: every class's place map, where the caller gave them to
    /// [`ReasoningHeads::locate`] (the engine does; the training phases do not).
    pub place_maps: Option<Tensor<3>>,
    pub presence_logit: Tensor<1>,
    /// `[B, classes]`: which structure the question asks for (the question alone).
    pub class_logits: Tensor<2>,
    /// `[B, classes]`: which structures the image shows.
    pub content_logits: Tensor<2>,
    /// `[B, classes]`: which structure is meant if it is in the image (see [`ReasoningHeads::locate`]).
    pub target_logits: Tensor<2>,
}

/// One question's outputs (batch 1).
#[derive(Debug, Clone)]
pub struct ReasonOutput {
    /// Last-layer hidden states of the K candidates, `[1, K, D]`.
    pub candidates: Tensor<3>,
    pub fused: Fused,
    /// `[1, 4]` (cx, cy, w, h) in [0, 1] of the padded 256×256 input: the box prompt (scaled).
    pub box_cxcywh: Tensor<2>,
    /// `[1]`: logit that the structure is present.
    pub presence_logit: Tensor<1>,
    /// `[1, classes]`: which known structure the question was understood as.
    pub class_logits: Tensor<2>,
    /// `[1, classes]`: which structures the image shows.
    pub content_logits: Tensor<2>,
    /// `[1, classes]`: which structure is meant, given that it is in the image.
    pub target_logits: Tensor<2>,
    /// On the 64×64 embedding grid ("where the model looked").
    pub similarity: Similarity,
    /// How the mask decoder was prompted (see [`ReasoningHeads::seg_gate`] and `box_gate`)…
    pub prompt: DecoderPrompt,
    /// …and what its box was scaled by (see [`ReasoningHeads::box_scale`]).
    pub box_scale: f32,
    pub decoder: MaskDecoderOutput,
}

/// `[B]`: the class each row of target logits `[B, classes]` means (its top).
fn meant(target_logits: Tensor<2>) -> Tensor<1, Int> {
    let [b, _] = target_logits.dims();
    target_logits.argmax(1).reshape([b])
}

pub(crate) fn text_embeddings(llm: &Llama, ids: &[u32], device: &Device) -> Tensor<3> {
    let ids: Vec<i64> = ids.iter().map(|&t| t as i64).collect();
    let n = ids.len();
    llm.embed(Tensor::<2, Int>::from_data(TensorData::new(ids, [1, n]), device))
}

impl ReasoningHeads {
    pub fn candidates(&self) -> usize {
        self.candidate_embeddings.dims()[0]
    }

    /// The LLM input for `layout`: text, vision tokens, more text, candidate tokens.
    pub fn input_embeddings(&self, llm: &Llama, embedding: Tensor<4>, layout: &Layout) -> Tensor<3> {
        let device = embedding.device();
        let vision = self.projector.forward(embedding);
        Tensor::cat(
            vec![
                text_embeddings(llm, &layout.before_vision, &device),
                vision,
                text_embeddings(llm, &layout.after_vision, &device),
                self.candidate_embeddings.val().unsqueeze(),
            ],
            1,
        )
    }

    /// The last-layer hidden states of the K candidates, `[1, K, D]`: one LLM pass over the
    /// question with the image's vision tokens.
    pub fn candidate_states(&self, llm: &Llama, embedding: Tensor<4>, layout: &Layout) -> Result<Tensor<3>> {
        let inputs = self.input_embeddings(llm, embedding, layout);
        let hidden = llm.forward_embeddings(inputs, &mut KvCache::new())?.hidden;
        Ok(hidden.narrow(1, layout.candidate_position(0), self.candidates()))
    }

    /// The heads after the LLM up to the mask decoder: fusion → class asked for, what the image
    /// shows, similarity map → box and presence. `embedding`: `[B, 256, 64, 64]`,
    /// `candidates`: `[B, K, D]`; `ruled_out`: `[B, classes]` added to the target logits
    /// (a large negative value for a class the question's words exclude, see
    /// [`Knowledge::ruled_out_by_side`]); `place_maps`: `[B, classes, cells]`
    /// ([`PlaceHead::forward`]), whose calibrated counts say the image shows a class where the
    /// content head does not ([`PlaceHead::shows`]; the larger of the two logits counts).
    ///
    /// Presence asks "is what the question means in the image?" ([`presence_logit`]: the best of
    /// the question's contenders by what the image shows).
    /// Where to look asks "which structure is meant, given that it is here?": the target
    /// distribution `∝ P(asked c)·P(shows c)`, which puts the box's anchor on a structure the
    /// image can show — the class head alone sent "what pumps blood?" on a chest X-ray to the
    /// cardiac MRI's ventricle. The box head corrects the anchor weighted by that distribution
    /// (the image's evidence enters it without a gradient, so the box loss does not teach the
    /// content head); the anchor the decoder may be prompted with instead is the usual place of
    /// the one structure meant (the distribution's top), which the answer names — a weighted
    /// anchor put a split question's box between two structures' places.
    pub fn locate(&self, embedding: Tensor<4>, candidates: Tensor<3>, ruled_out: Option<Tensor<2>>, place_maps: Option<Tensor<3>>) -> Located {
        let fused = self.fusion.forward(candidates);
        let class_logits = self.class.forward(fused.seg.clone());
        let class_probs = softmax(class_logits.clone(), 1);
        let content_logits = self.content.forward(embedding.clone());
        let content_logits = match &place_maps {
            Some(maps) => content_logits.max_pair(self.place.shows(maps.clone())),
            None => content_logits,
        };
        let target_logits = log_softmax(class_logits.clone(), 1) + log_sigmoid(content_logits.clone().detach());
        let target_logits = match ruled_out {
            Some(bias) => target_logits + bias,
            None => target_logits,
        };
        let similarity = self.similarity.forward(fused.seg.clone(), embedding);
        let map = map_features(similarity.logits.clone());
        let anchor = self.box_head.anchor(softmax(target_logits.clone(), 1));
        Located {
            box_cxcywh: self.box_head.forward(fused.bbox.clone(), map, anchor),
            anchor_cxcywh: self.box_head.anchor_of(meant(target_logits.clone())),
            map_box_cxcywh: None,
            place_maps,
            presence_logit: presence_logit(class_probs, content_logits.clone()),
            class_logits,
            content_logits,
            target_logits,
            similarity,
            fused,
        }
    }

    /// The place map of the structure meant (the target distribution's top) among `place_maps`
    /// (`[B, classes, cells]`), `[B, cells]` logits.
    pub fn meant_map(place_maps: Tensor<3>, target_logits: Tensor<2>) -> Tensor<2> {
        let [b, _, cells] = place_maps.dims();
        let rows = meant(target_logits).reshape([b, 1, 1]).repeat_dim(2, cells);
        place_maps.gather(1, rows).reshape([b, cells])
    }

    /// The calibrated choices for the structure meant (the target distribution's top), `[seg
    /// token, corrected box, map box, prompt box answered, box scale]` (batch 1; a gate ≥ 0.5 is
    /// open), read by [`ClassChoice::from_gates`].
    pub fn class_gates(&self, target_logits: Tensor<2>) -> Tensor<1> {
        let gates = Tensor::stack::<2>(vec![self.seg_gate.val(), self.box_gate.val(), self.map_gate.val(), self.prompt_box_gate.val(), self.box_scale.val()], 1);
        gates.select(0, meant(target_logits)).reshape([5])
    }

    /// The mask decoder, prompted as `prompt` says with what [`Self::locate`] found, the box's
    /// width and height multiplied by `box_scale`.
    pub fn decode(&self, sam: &LiteMedSam, embedding: Tensor<4>, candidates: Tensor<3>, located: Located, prompt: DecoderPrompt, box_scale: f32) -> ReasonOutput {
        let Located { fused, similarity, box_cxcywh, anchor_cxcywh, map_box_cxcywh, presence_logit, class_logits, content_logits, target_logits, .. } = located;
        let box_cxcywh = match prompt.box_source {
            BoxSource::Corrected => box_cxcywh,
            BoxSource::Map => map_box_cxcywh.unwrap_or(anchor_cxcywh),
            BoxSource::Anchor => anchor_cxcywh,
        };
        let box_cxcywh = if box_scale == 1.0 {
            box_cxcywh
        } else {
            let [b, _] = box_cxcywh.dims();
            let factors = Tensor::<1>::from_floats([1.0, 1.0, box_scale, box_scale], &box_cxcywh.device()).reshape([1, 4]).repeat_dim(0, b);
            box_cxcywh * factors
        };
        let token = prompt.seg_token.then(|| self.seg_prompt.forward(fused.seg.clone()));
        let decoder = sam.decode_boxes(embedding, cxcywh_to_xyxy(box_cxcywh.clone(), INPUT_SIZE as f64), token);
        ReasonOutput { candidates, fused, similarity, box_cxcywh, presence_logit, class_logits, content_logits, target_logits, prompt, box_scale, decoder }
    }

    /// The training graph for one image embedding (`[1, 256, 64, 64]`) and question layout:
    /// MediSee's prompt, the corrected box and the seg token (the gates are set after training).
    pub fn forward(&self, sam: &LiteMedSam, llm: &Llama, embedding: Tensor<4>, layout: &Layout) -> Result<ReasonOutput> {
        let candidates = self.candidate_states(llm, embedding.clone(), layout)?;
        let located = self.locate(embedding.clone(), candidates.clone(), None, None);
        Ok(self.decode(sam, embedding, candidates, located, DecoderPrompt::FULL, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::llama::LlamaConfig;
    use crate::sam::LiteMedSamConfig;

    fn setup() -> (Device, LiteMedSam, Llama, ReasoningHeads, Layout, Tensor<4>) {
        let device = Device::flex();
        let config = ReasonConfig { candidates: 4, llm_dim: 32, embedding_channels: 256, pool: 16, hidden: 16, place_hidden: 8, classes: 5, explanation_vectors: 2 };
        let layout = Layout { before_vision: vec![1, 5, 9], after_vision: vec![7, 8, 2, 3], vision_tokens: config.vision_tokens(64), candidates: 4 };
        let embedding = Tensor::random([1, 256, 64, 64], Distribution::Normal(0.0, 1.0), &device);
        (device.clone(), LiteMedSamConfig::default().init(&device), LlamaConfig::tiny(128).init(&device), config.init(&device), layout, embedding)
    }

    fn candidate_states(heads: &ReasoningHeads, sam: &LiteMedSam, llm: &Llama, layout: &Layout, embedding: Tensor<4>) -> Tensor<3> {
        heads.forward(sam, llm, embedding, layout).unwrap().candidates
    }

    /// Candidate k's state must be read at candidate k's own position: it changes when that
    /// candidate's embedding changes (reading one position early would not) and not when a later
    /// candidate changes (reading one position late would).
    #[test]
    fn candidate_states_are_read_at_their_own_positions() {
        let (_, sam, llm, heads, layout, embedding) = setup();
        assert_eq!(layout.candidate_position(0), 3 + 16 + 4);
        assert_eq!(layout.len(), 3 + 16 + 4 + 4);
        let base = candidate_states(&heads, &sam, &llm, &layout, embedding.clone());
        let mut changed = heads.clone();
        let table = changed.candidate_embeddings.val();
        let bumped = table.clone().slice_assign([1..2, 0..32], table.narrow(0, 1, 1) + 1.0);
        changed.candidate_embeddings = Param::from_tensor(bumped);
        let after = candidate_states(&changed, &sam, &llm, &layout, embedding);
        let diff = |k: usize| (base.clone().narrow(1, k, 1) - after.clone().narrow(1, k, 1)).abs().max().into_scalar::<f32>();
        assert_eq!(diff(0), 0.0, "candidate 0 must not see candidate 1");
        assert!(diff(1) > 1e-4, "candidate 1's state must depend on its own embedding");
        assert!(diff(2) > 1e-4 && diff(3) > 1e-4, "later candidates see earlier ones");
    }

    #[test]
    fn fusion_weights_are_a_distribution_and_outputs_have_their_shapes() {
        let (_, sam, llm, heads, layout, embedding) = setup();
        let out = heads.forward(&sam, &llm, embedding, &layout).unwrap();
        for w in [out.fused.seg_weights.clone(), out.fused.box_weights.clone()] {
            assert_eq!(w.dims(), [1, 4]);
            let sum = w.clone().sum().into_scalar::<f32>();
            assert!((sum - 1.0).abs() < 1e-5, "weights sum to {sum}");
            assert!(w.min().into_scalar::<f32>() > 0.0);
        }
        assert_eq!(out.decoder.low_res_masks.dims(), [1, 1, 256, 256]);
        let b = out.box_cxcywh.clone();
        assert!(b.clone().min().into_scalar::<f32>() >= 0.0 && b.max().into_scalar::<f32>() <= 1.0);
        assert_eq!(out.similarity.cosine.dims(), [1, 64, 64]);
        assert!(out.similarity.cosine.abs().max().into_scalar::<f32>() <= 1.0 + 1e-5);
        assert_eq!(out.presence_logit.dims(), [1]);
        assert_eq!(out.class_logits.dims(), [1, 5]);
        // The seg token is appended after the two box corners: 1 IoU + 4 mask + 2 corners + 1 = 8 tokens.
        assert_eq!(out.decoder.tokens.dims(), [1, 8, 256]);
    }

    /// The box's anchor follows the target distribution: what the question's words rule out
    /// moves it to the next class, and a class the image does not show loses it too.
    #[test]
    fn the_anchor_is_the_structure_meant_among_those_the_image_shows() {
        let (device, _, llm, mut heads, layout, embedding) = setup();
        let anchors: Vec<f32> = (0..5).flat_map(|c| [0.1 + 0.15 * c as f32, 0.5, 0.2, 0.3]).collect();
        heads.box_head.anchors = Param::from_tensor(Tensor::<1>::from_floats(anchors.as_slice(), &device).reshape([5, 4]));
        heads.box_head = heads.box_head.without_correction();
        // The question asks for class 0 (then 1); the image shows every class but 2.
        heads.class.linear.weight = Param::from_tensor(Tensor::zeros([32, 5], &device));
        heads.class.linear.bias = Some(Param::from_tensor(Tensor::from_floats([20.0, 10.0, 5.0, 0.0, 0.0], &device)));
        let last = heads.content.mlp.layers.last_mut().unwrap();
        last.weight = Param::from_tensor(last.weight.val().zeros_like());
        last.bias = Some(Param::from_tensor(Tensor::from_floats([9.0, 9.0, -20.0, 9.0, 9.0], &device)));
        let candidates = heads.candidate_states(&llm, embedding.clone(), &layout).unwrap();
        let anchor_x = |ruled_out: Option<[f32; 5]>| {
            let bias = ruled_out.map(|b| Tensor::<1>::from_floats(b, &device).reshape([1, 5]));
            heads.locate(embedding.clone(), candidates.clone(), bias, None).box_cxcywh.narrow(1, 0, 1).into_scalar::<f32>()
        };
        assert!((anchor_x(None) - 0.1).abs() < 0.01, "class 0: {}", anchor_x(None));
        assert!((anchor_x(Some([-30.0, 0.0, 0.0, 0.0, 0.0])) - 0.25).abs() < 0.01, "class 1");
        // Class 2 is what the question asks for next, but the image does not show it.
        assert!((anchor_x(Some([-30.0, -30.0, 0.0, 0.0, 0.0])) - 0.625).abs() < 0.01, "classes 3 and 4 share it");
        // Split between classes 0 and 1 (0.1 and 0.25): the box head starts between them, the
        // anchor offered to the decoder is the top one's own place.
        let split = Tensor::<1>::from_floats([0.0, 9.5, 0.0, 0.0, 0.0], &device).reshape([1, 5]);
        let located = heads.locate(embedding, candidates, Some(split), None);
        let corrected = located.box_cxcywh.narrow(1, 0, 1).into_scalar::<f32>();
        assert!(corrected > 0.12 && corrected < 0.23, "weighted: {corrected}");
        assert_eq!(located.anchor_cxcywh.into_data().try_to_vec::<f32>().unwrap(), vec![0.1, 0.5, 0.2, 0.3]);
    }

    /// A calibrated place map finds a structure the content head misses, and the map box reads
    /// the map of the structure meant.
    #[test]
    fn a_full_calibrated_place_map_makes_the_asked_structure_present() {
        let (device, _, llm, mut heads, layout, embedding) = setup();
        // The question asks for class 2, which the content head says the image does not show.
        heads.class.linear.weight = Param::from_tensor(Tensor::zeros([32, 5], &device));
        heads.class.linear.bias = Some(Param::from_tensor(Tensor::from_floats([0.0, 0.0, 20.0, 0.0, 0.0], &device)));
        let last = heads.content.mlp.layers.last_mut().unwrap();
        last.weight = Param::from_tensor(last.weight.val().zeros_like());
        last.bias = Some(Param::from_tensor(Tensor::from_floats([-20.0; 5], &device)));
        let candidates = heads.candidate_states(&llm, embedding.clone(), &layout).unwrap();
        // Class 2's map has 400 cells above even odds, class 4's every cell.
        let mut maps = vec![-1.0f32; 5 * 4096];
        maps[2 * 4096..2 * 4096 + 400].fill(1.0);
        maps[4 * 4096..].fill(1.0);
        let maps = || Some(Tensor::<3>::from_data(TensorData::new(maps.clone(), [1, 5, 4096]), &device));
        let presence = |heads: &ReasoningHeads| heads.locate(embedding.clone(), candidates.clone(), None, maps()).presence_logit.into_scalar::<f32>();
        assert!(presence(&heads) < -5.0, "no count calibrated: the maps are not read");
        heads.place.presence_cells = Param::from_tensor(Tensor::from_floats([0.0, 0.0, 100.0, 0.0, 0.0], &device));
        assert!((presence(&heads) - 4f32.ln()).abs() < 0.05, "four times the count: p = 0.8, got logit {}", presence(&heads));
        let located = heads.locate(embedding.clone(), candidates.clone(), None, maps());
        let meant = ReasoningHeads::meant_map(located.place_maps.unwrap(), located.target_logits).into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(meant.iter().filter(|&&l| l > 0.0).count(), 400, "class 2's map");
    }

    #[test]
    fn the_class_gates_decide_how_the_decoder_is_prompted_and_which_box_is_answered() {
        let (device, sam, llm, mut heads, layout, embedding) = setup();
        heads.seg_gate = Param::from_tensor(Tensor::from_floats([1.0, 0.0, 0.0, 1.0, 0.0], &device));
        heads.box_gate = Param::from_tensor(Tensor::from_floats([0.0, 0.0, 1.0, 1.0, 1.0], &device));
        heads.map_gate = Param::from_tensor(Tensor::from_floats([0.0, 1.0, 0.0, 0.0, 1.0], &device));
        heads.prompt_box_gate = Param::from_tensor(Tensor::from_floats([0.0, 1.0, 0.0, 0.0, 1.0], &device));
        heads.box_scale = Param::from_tensor(Tensor::from_floats([1.0, 1.2, 1.0, 0.9, 1.0], &device));
        let sure_of = |class: usize| {
            let logits: Vec<f32> = (0..5).map(|c| if c == class { 20.0 } else { 0.0 }).collect();
            Tensor::<1>::from_floats(logits.as_slice(), &device).reshape([1, 5])
        };
        let gates = |class: usize| heads.class_gates(sure_of(class)).into_data().try_to_vec::<f32>().unwrap();
        let expected = [(true, BoxSource::Anchor), (false, BoxSource::Map), (false, BoxSource::Corrected), (true, BoxSource::Corrected), (false, BoxSource::Map)];
        for (class, ((seg_token, box_source), box_scale)) in expected.into_iter().zip([1.0, 1.2, 1.0, 0.9, 1.0]).enumerate() {
            let answer_box = if box_source == BoxSource::Map { AnswerBox::Prompt } else { AnswerBox::Mask };
            assert_eq!(ClassChoice::from_gates(&gates(class)), ClassChoice { prompt: DecoderPrompt { seg_token, box_source }, box_scale, answer_box }, "class {class}");
        }
        for p in DecoderPrompt::ALL {
            assert_eq!(DecoderPrompt::from_gates(&p.gates()), p);
        }
        let candidates = heads.candidate_states(&llm, embedding.clone(), &layout).unwrap();
        let located = heads.locate(embedding.clone(), candidates.clone(), None, None);
        let anchor = located.anchor_cxcywh.clone().into_data().try_to_vec::<f32>().unwrap();
        let corrected = located.box_cxcywh.clone().into_data().try_to_vec::<f32>().unwrap();
        let without = heads.decode(&sam, embedding.clone(), candidates.clone(), located.clone(), DecoderPrompt::ANCHOR, 1.0);
        assert_eq!(without.decoder.tokens.dims(), [1, 7, 256], "IoU + 4 mask tokens + 2 box corners, no seg token");
        assert_eq!(without.box_cxcywh.into_data().try_to_vec::<f32>().unwrap(), anchor);
        let map_prompt = DecoderPrompt { seg_token: false, box_source: BoxSource::Map };
        let empty_map = heads.decode(&sam, embedding.clone(), candidates.clone(), located.clone(), map_prompt, 1.0);
        assert_eq!(empty_map.box_cxcywh.into_data().try_to_vec::<f32>().unwrap(), anchor, "no map box: the anchor");
        let mut mapped = located.clone();
        mapped.map_box_cxcywh = Some(Tensor::<1>::from_floats([0.25, 0.5, 0.125, 0.25], &device).reshape([1, 4]));
        let with_map = heads.decode(&sam, embedding.clone(), candidates.clone(), mapped, map_prompt, 1.0);
        assert_eq!(with_map.box_cxcywh.into_data().try_to_vec::<f32>().unwrap(), vec![0.25, 0.5, 0.125, 0.25]);
        let with = heads.decode(&sam, embedding.clone(), candidates.clone(), located.clone(), DecoderPrompt::FULL, 1.0);
        assert_eq!(with.decoder.tokens.dims(), [1, 8, 256]);
        assert_eq!(with.box_cxcywh.into_data().try_to_vec::<f32>().unwrap(), corrected);
        let scaled = heads.decode(&sam, embedding, candidates, located, DecoderPrompt::FULL, 1.2).box_cxcywh.into_data().try_to_vec::<f32>().unwrap();
        let expected = [corrected[0], corrected[1], corrected[2] * 1.2, corrected[3] * 1.2];
        assert!(scaled.iter().zip(expected).all(|(a, b)| (a - b).abs() < 1e-6), "scaled about its centre: {scaled:?} vs {expected:?}");
    }
}
