//! The reasoning segmenter (MediSee's graph on LiteMedSAM + SmolLM2): vision tokens from the
//! cached image embedding → one LLM pass over question + forced answer with K candidate tokens →
//! candidate fusion → box, seg prompt, similarity map, presence → LiteMedSAM's mask decoder.
//!
//! Only the modules here (and optionally LoRA on the LLM) are trained; LiteMedSAM and SmolLM2
//! stay frozen.

pub mod fusion;
pub mod heads;
pub mod knowledge;
pub mod projector;
pub mod sequence;

use burn::module::{Module, Param};
use burn::tensor::activation::softmax;
use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};

use crate::error::Result;
use crate::llm::llama::{KvCache, Llama};
use crate::sam::mask_decoder::MaskDecoderOutput;
use crate::sam::{LiteMedSam, INPUT_SIZE};
use fusion::{CandidateFusion, Fused};
use heads::{cxcywh_to_xyxy, map_features, presence_logit, BoxHead, ClassHead, ContentHead, SegPrompt, Similarity, SimilarityHead};
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
    /// Rows of the class head: [`Knowledge::class_names`].
    pub classes: usize,
}

impl ReasonConfig {
    pub fn smollm2_litemedsam() -> Result<Self> {
        let classes = Knowledge::load()?.class_names().len();
        Ok(Self { candidates: 4, llm_dim: 576, embedding_channels: 256, pool: 8, hidden: 256, classes })
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
            seg_gate: Param::from_tensor(Tensor::ones([self.classes], device)).set_require_grad(false),
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
    /// `[classes]`: 1 where the seg prompt token helps LiteMedSAM's decoder on that class, 0 where
    /// the box prompt alone does better. Set after training by a calibration on training images
    /// the heads never saw (`train::calibrate`); all 1 — MediSee's graph — until then.
    pub seg_gate: Param<Tensor<1>>,
}

/// What the heads after the LLM find before the mask decoder runs (any batch size).
#[derive(Debug, Clone)]
pub struct Located {
    pub fused: Fused,
    pub similarity: Similarity,
    /// `[B, 4]` (cx, cy, w, h) in [0, 1] of the padded 256×256 input.
    pub box_cxcywh: Tensor<2>,
    pub presence_logit: Tensor<1>,
    pub class_logits: Tensor<2>,
    /// `[B, classes]`: which structures the image shows.
    pub content_logits: Tensor<2>,
}

/// One question's outputs (batch 1).
#[derive(Debug, Clone)]
pub struct ReasonOutput {
    /// Last-layer hidden states of the K candidates, `[1, K, D]`.
    pub candidates: Tensor<3>,
    pub fused: Fused,
    /// `[1, 4]` (cx, cy, w, h) in [0, 1] of the padded 256×256 input.
    pub box_cxcywh: Tensor<2>,
    /// `[1]`: logit that the structure is present.
    pub presence_logit: Tensor<1>,
    /// `[1, classes]`: which known structure the question was understood as.
    pub class_logits: Tensor<2>,
    /// `[1, classes]`: which structures the image shows.
    pub content_logits: Tensor<2>,
    /// On the 64×64 embedding grid ("where the model looked").
    pub similarity: Similarity,
    /// Whether the seg prompt token went to the mask decoder (see [`ReasoningHeads::seg_gate`]).
    pub seg_token: bool,
    pub decoder: MaskDecoderOutput,
}

fn text_embeddings(llm: &Llama, ids: &[u32], device: &Device) -> Tensor<3> {
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
    /// `candidates`: `[B, K, D]`.
    pub fn locate(&self, embedding: Tensor<4>, candidates: Tensor<3>) -> Located {
        let fused = self.fusion.forward(candidates);
        let class_logits = self.class.forward(fused.seg.clone());
        let class_probs = softmax(class_logits.clone(), 1);
        let content_logits = self.content.forward(embedding.clone());
        let similarity = self.similarity.forward(fused.seg.clone(), embedding);
        let map = map_features(similarity.logits.clone());
        Located {
            box_cxcywh: self.box_head.forward(fused.bbox.clone(), map, class_probs.clone()),
            presence_logit: presence_logit(class_probs, content_logits.clone()),
            class_logits,
            content_logits,
            similarity,
            fused,
        }
    }

    /// How much the structure asked for wants the seg token, `[B]`: the class gates weighted by
    /// the class head's probabilities (≥ 0.5: send it).
    pub fn seg_token_weight(&self, class_logits: Tensor<2>) -> Tensor<1> {
        let [b, _] = class_logits.dims();
        softmax(class_logits, 1).matmul(self.seg_gate.val().unsqueeze_dim(1)).reshape([b])
    }

    /// The box prompt and, with `seg_token`, the seg prompt token → LiteMedSAM's mask decoder.
    pub fn decode(&self, sam: &LiteMedSam, embedding: Tensor<4>, candidates: Tensor<3>, located: Located, seg_token: bool) -> ReasonOutput {
        let Located { fused, similarity, box_cxcywh, presence_logit, class_logits, content_logits } = located;
        let prompt = seg_token.then(|| self.seg_prompt.forward(fused.seg.clone()));
        let decoder = sam.decode_boxes(embedding, cxcywh_to_xyxy(box_cxcywh.clone(), INPUT_SIZE as f64), prompt);
        ReasonOutput { candidates, fused, similarity, box_cxcywh, presence_logit, class_logits, content_logits, seg_token, decoder }
    }

    /// The training graph for one image embedding (`[1, 256, 64, 64]`) and question layout: the
    /// seg token always goes to the decoder (the gate is set after training).
    pub fn forward(&self, sam: &LiteMedSam, llm: &Llama, embedding: Tensor<4>, layout: &Layout) -> Result<ReasonOutput> {
        let candidates = self.candidate_states(llm, embedding.clone(), layout)?;
        let located = self.locate(embedding.clone(), candidates.clone());
        Ok(self.decode(sam, embedding, candidates, located, true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::llama::LlamaConfig;
    use crate::sam::LiteMedSamConfig;

    fn setup() -> (Device, LiteMedSam, Llama, ReasoningHeads, Layout, Tensor<4>) {
        let device = Device::flex();
        let config = ReasonConfig { candidates: 4, llm_dim: 32, embedding_channels: 256, pool: 16, hidden: 16, classes: 5 };
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

    #[test]
    fn the_class_gate_decides_whether_the_seg_token_is_sent() {
        let (device, sam, llm, mut heads, layout, embedding) = setup();
        heads.seg_gate = Param::from_tensor(Tensor::from_floats([1.0, 0.0, 0.0, 1.0, 0.0], &device));
        let sure_of = |class: usize| {
            let logits: Vec<f32> = (0..5).map(|c| if c == class { 20.0 } else { 0.0 }).collect();
            Tensor::<1>::from_floats(logits.as_slice(), &device).reshape([1, 5])
        };
        let weight = |class: usize| heads.seg_token_weight(sure_of(class)).into_scalar::<f32>();
        assert!(weight(0) > 0.99 && weight(3) > 0.99 && weight(1) < 0.01, "{} {} {}", weight(0), weight(3), weight(1));
        let candidates = heads.candidate_states(&llm, embedding.clone(), &layout).unwrap();
        let located = heads.locate(embedding.clone(), candidates.clone());
        let without = heads.decode(&sam, embedding.clone(), candidates.clone(), located.clone(), false);
        assert!(!without.seg_token);
        assert_eq!(without.decoder.tokens.dims(), [1, 7, 256], "IoU + 4 mask tokens + 2 box corners, no seg token");
        let with = heads.decode(&sam, embedding, candidates, located, true);
        assert!(with.seg_token);
        assert_eq!(with.decoder.tokens.dims(), [1, 8, 256]);
    }
}
