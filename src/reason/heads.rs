//! Small trained heads on the fused states: the similarity map ("where the model looked"), the
//! box, the prompt token for SAM's mask decoder, the class of the structure asked for (which
//! grounds the explanation in the knowledge table) and what the image contains (which, with the
//! class, gives the presence score: "not found").

use burn::module::{Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::sigmoid;
use burn::tensor::{Device, Int, Tensor};

use crate::sam::common::Mlp;

/// The similarity map as a cosine ("where the model looked") and as mask logits.
#[derive(Debug, Clone)]
pub struct Similarity {
    /// `[B, H, W]` in [-1, 1].
    pub cosine: Tensor<3>,
    /// `[B, H, W]`: `scale · cosine + bias`, supervised by the down-sampled mask.
    pub logits: Tensor<3>,
}

/// Cosine similarity between a projection of the fused seg state and a projection of every
/// embedding cell. The cell projection lets a 1×1 layer pick the channels that tell structures
/// apart; the learned scale and bias turn the cosine into a coarse mask.
#[derive(Module, Debug)]
pub struct SimilarityHead {
    pub query: Linear,
    pub key: Linear,
    pub logit_scale: Param<Tensor<1>>,
    pub logit_bias: Param<Tensor<1>>,
}

impl SimilarityHead {
    pub fn new(dim: usize, embedding_channels: usize, device: &Device) -> Self {
        Self {
            query: LinearConfig::new(dim, embedding_channels).init(device),
            key: LinearConfig::new(embedding_channels, embedding_channels).init(device),
            logit_scale: Param::from_tensor(Tensor::from_floats([10.0], device)),
            logit_bias: Param::from_tensor(Tensor::from_floats([-2.0], device)),
        }
    }

    /// `fused`: `[B, D]`, `embedding`: `[B, C, H, W]`.
    pub fn forward(&self, fused: Tensor<2>, embedding: Tensor<4>) -> Similarity {
        let [b, c, h, w] = embedding.dims();
        let query = unit_rows(self.query.forward(fused));
        let cells = self.key.forward(embedding.reshape([b, c, h * w]).swap_dims(1, 2));
        let cells = unit_rows(cells.reshape([b * h * w, c])).reshape([b, h * w, c]);
        let cosine = cells.matmul(query.unsqueeze_dim::<3>(2)).reshape([b, h, w]);
        let logits = cosine.clone() * self.logit_scale.val().reshape([1, 1, 1]) + self.logit_bias.val().reshape([1, 1, 1]);
        Similarity { cosine, logits }
    }
}

fn unit_rows(x: Tensor<2>) -> Tensor<2> {
    x.clone() / (x.square().sum_dim(1).sqrt() + 1e-6)
}

/// Number of summary features [`map_features`] gives.
pub const MAP_FEATURES: usize = 6;

/// What the coarse mask says about the target, per sample `[B, 6]`: the box of its moments
/// (cx, cy, w, h with w = √(12·var), exact for a filled rectangle), its mean and its peak. The
/// moments weigh each cell by p⁴: otherwise thousands of background cells at p ≈ 0.1 outweigh a
/// target of a few hundred cells and the box covers the whole image.
pub fn map_features(logits: Tensor<3>) -> Tensor<2> {
    let [b, h, w] = logits.dims();
    let device = logits.device();
    let p = sigmoid(logits.clone());
    let weight = p.clone().square().square();
    let mass = weight.clone().sum_dim(2).sum_dim(1).reshape([b, 1]) + 1e-6;
    let centres = |n: usize| {
        let values: Vec<f32> = (0..n).map(|i| (i as f32 + 0.5) / n as f32).collect();
        Tensor::<1>::from_floats(values.as_slice(), &device)
    };
    let xs = centres(w).reshape([1, 1, w]);
    let ys = centres(h).reshape([1, h, 1]);
    let moment = |values: Tensor<3>| values.sum_dim(2).sum_dim(1).reshape([b, 1]) / mass.clone();
    let cx = moment(weight.clone() * xs.clone());
    let cy = moment(weight.clone() * ys.clone());
    let var_x = moment(weight.clone() * (xs - cx.clone().reshape([b, 1, 1])).square());
    let var_y = moment(weight * (ys - cy.clone().reshape([b, 1, 1])).square());
    let width = (var_x * 12.0 + 1e-6).sqrt();
    let height = (var_y * 12.0 + 1e-6).sqrt();
    let mean = p.sum_dim(2).sum_dim(1).reshape([b, 1]) / (h * w) as f64;
    let peak = logits.reshape([b, h * w]).max_dim(1) / 10.0;
    Tensor::cat(vec![cx, cy, width, height, mean, peak], 1)
}

/// The box: an anchor — the mean training box of each class, weighted by the class head's
/// probabilities — corrected by an MLP that reads the fused box state and what the similarity map
/// found → sigmoid (cx, cy, w, h), normalised to the padded model input. The anchor alone is where
/// such a structure usually lies; the correction is what this image adds.
#[derive(Module, Debug)]
pub struct BoxHead {
    pub mlp: Mlp,
    /// `[classes, 4]` (cx, cy, w, h): statistics of the training data, set by the trainer.
    pub anchors: Param<Tensor<2>>,
}

impl BoxHead {
    pub fn new(dim: usize, hidden: usize, classes: usize, device: &Device) -> Self {
        let head = Self {
            mlp: Mlp::new(dim + MAP_FEATURES, hidden, 4, 3, device),
            anchors: Param::from_tensor(Tensor::full([classes, 4], 0.5, device)).set_require_grad(false),
        };
        // A fresh head answers with the anchor.
        head.without_correction()
    }

    /// The head with its correction reset to zero (it answers with the anchor).
    pub fn without_correction(mut self) -> Self {
        let last = self.mlp.layers.last_mut().expect("three layers");
        last.weight = Param::from_tensor(last.weight.val().zeros_like());
        last.bias = last.bias.as_ref().map(|b| Param::from_tensor(b.val().zeros_like()));
        self
    }

    /// Where the structure usually lies: `class_probs` `[B, classes]` → `[B, 4]`.
    pub fn anchor(&self, class_probs: Tensor<2>) -> Tensor<2> {
        class_probs.matmul(self.anchors.val()).clamp(1e-3, 1.0 - 1e-3)
    }

    /// The usual place of one class per row: `classes` `[B]` → `[B, 4]`.
    pub fn anchor_of(&self, classes: Tensor<1, Int>) -> Tensor<2> {
        self.anchors.val().select(0, classes).clamp(1e-3, 1.0 - 1e-3)
    }

    /// The anchor corrected for this image: `fused`: `[B, D]`, `map`: [`map_features`],
    /// `anchor`: [`Self::anchor`] → `[B, 4]`.
    pub fn forward(&self, fused: Tensor<2>, map: Tensor<2>, anchor: Tensor<2>) -> Tensor<2> {
        sigmoid(logit(anchor) + self.mlp.forward(Tensor::cat(vec![fused, map], 1)))
    }
}

/// `[B, 4]` (cx, cy, w, h) in [0, 1] → `[B, 4]` (x0, y0, x1, y1) in model input pixels.
pub fn cxcywh_to_xyxy(boxes: Tensor<2>, size: f64) -> Tensor<2> {
    let centre = boxes.clone().narrow(1, 0, 2);
    let half = boxes.narrow(1, 2, 2) / 2.0;
    Tensor::cat(vec![centre.clone() - half.clone(), centre + half], 1) * size
}

/// Linear–ReLU–Linear from the LLM width to SAM's prompt width (MediSee's `text_hidden_fcs`).
#[derive(Module, Debug)]
pub struct SegPrompt {
    pub mlp: Mlp,
}

impl SegPrompt {
    pub fn new(dim: usize, prompt_dim: usize, device: &Device) -> Self {
        Self { mlp: Mlp::new(dim, dim, prompt_dim, 2, device) }
    }

    /// `[B, D]` → one extra sparse prompt token `[B, 1, prompt_dim]`.
    pub fn forward(&self, fused: Tensor<2>) -> Tensor<3> {
        self.mlp.forward(fused).unsqueeze_dim(1)
    }
}

/// Which of the knowledge table's classes the image shows (independent logits, multi-label),
/// from the image embedding pooled by mean and by max. With the class head it answers "is the
/// structure asked for in this image?" — a heart is never in a fundus photo, whatever the question.
#[derive(Module, Debug)]
pub struct ContentHead {
    pub mlp: Mlp,
}

impl ContentHead {
    pub fn new(embedding_channels: usize, hidden: usize, classes: usize, device: &Device) -> Self {
        Self { mlp: Mlp::new(2 * embedding_channels, hidden, classes, 2, device) }
    }

    /// `[B, C, H, W]` → `[B, classes]` logits.
    pub fn forward(&self, embedding: Tensor<4>) -> Tensor<2> {
        let [b, c, h, w] = embedding.dims();
        let cells = embedding.reshape([b, c, h * w]);
        let pooled = Tensor::cat(vec![cells.clone().mean_dim(2).reshape([b, c]), cells.max_dim(2).reshape([b, c])], 1);
        self.mlp.forward(pooled)
    }
}

/// Logit that the structure asked for is in the image: the best `√(P(asked c) / P(asked top)) ·
/// P(image shows c)` over the classes. A question can mean different structures in different
/// modalities ("the lungs": the chest X-ray's lung fields or the lung CT's class), and the class
/// head spreads it over them; the plain expectation `Σ_c P(asked c)·P(shows c)` then answered
/// "not found" for lungs on a chest X-ray that were clearly there (0.21 of the question's mass on
/// them, 0.78 on the CT class). Here each contender counts by how close it comes to the top one.
/// On the validation questions: found on present targets 93.5 → 95.9 %, "not found" on absent
/// ones 97.9 → 95.1 %.
pub fn presence_logit(class_probs: Tensor<2>, content_logits: Tensor<2>) -> Tensor<1> {
    let [b, _] = class_probs.dims();
    let top = class_probs.clone().max_dim(1);
    let contenders = (class_probs / top).sqrt();
    logit((contenders * sigmoid(content_logits)).max_dim(1).reshape([b]).clamp(1e-6, 1.0 - 1e-6))
}

/// The inverse of the sigmoid, for probabilities already kept away from 0 and 1.
fn logit<const D: usize>(p: Tensor<D>) -> Tensor<D> {
    (p.clone() / (-p + 1.0)).log()
}

/// Logits over the knowledge table's classes: which structure the question was understood as.
#[derive(Module, Debug)]
pub struct ClassHead {
    pub linear: Linear,
}

impl ClassHead {
    pub fn new(dim: usize, classes: usize, device: &Device) -> Self {
        Self { linear: LinearConfig::new(dim, classes).init(device) }
    }

    pub fn forward(&self, fused: Tensor<2>) -> Tensor<2> {
        self.linear.forward(fused)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presence_is_the_content_probability_of_the_contenders_for_the_question() {
        let device = Device::flex();
        // Sure of class 0; split between 1 and 2; mostly 0 with 1 a quarter as likely.
        let class_probs = Tensor::<1>::from_floats([1.0, 0.0, 0.0, 0.0, 0.5, 0.5, 0.8, 0.2, 0.0], &device).reshape([3, 3]);
        let content = Tensor::<1>::from_floats([-4.0, 3.0, 0.0, 2.0, -1.0, 1.0, -6.0, 4.0, 4.0], &device).reshape([3, 3]);
        let p = sigmoid(presence_logit(class_probs, content)).into_data().try_to_vec::<f32>().unwrap();
        let s = |x: f32| 1.0 / (1.0 + (-x).exp());
        let expected = [s(-4.0), s(1.0), 0.5 * s(4.0)];
        assert!(p.iter().zip(expected).all(|(p, e)| (p - e).abs() < 1e-5), "{p:?} vs {expected:?}");
    }

    #[test]
    fn a_fresh_box_head_answers_with_the_class_anchor() {
        let device = Device::flex();
        let mut head = BoxHead::new(8, 16, 2, &device);
        head.anchors = Param::from_tensor(Tensor::<1>::from_floats([0.3, 0.4, 0.2, 0.1, 0.7, 0.6, 0.4, 0.5], &device).reshape([2, 4]));
        let fused = Tensor::random([1, 8], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
        let map = Tensor::random([1, MAP_FEATURES], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
        let probs = Tensor::<1>::from_floats([0.0, 1.0], &device).reshape([1, 2]);
        let b = head.forward(fused, map, head.anchor(probs)).into_data().try_to_vec::<f32>().unwrap();
        for (got, want) in b.iter().zip([0.7, 0.6, 0.4, 0.5]) {
            assert!((got - want).abs() < 1e-5, "{b:?}");
        }
    }

    #[test]
    fn moment_box_of_a_filled_rectangle_is_that_rectangle() {
        let device = Device::flex();
        // Cells 16..48 × 8..24 of a 64×64 grid are "in" (logit +30), the rest "out" (−30).
        let mut values = vec![-30.0f32; 64 * 64];
        for y in 8..24 {
            for x in 16..48 {
                values[y * 64 + x] = 30.0;
            }
        }
        let logits = Tensor::<1>::from_floats(values.as_slice(), &device).reshape([1, 64, 64]);
        let f = map_features(logits).into_data().try_to_vec::<f32>().unwrap();
        let expected = [0.5, 0.25, 0.5, 0.25, 512.0 / 4096.0, 3.0];
        for (got, want) in f.iter().zip(expected) {
            assert!((got - want).abs() < 2e-3, "{f:?}");
        }
    }
}
