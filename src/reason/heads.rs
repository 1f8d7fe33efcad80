//! Small trained heads on the fused states: the similarity map ("where the model looked"), the
//! box, the prompt token for SAM's mask decoder, the presence score ("not found") and the class
//! of the structure found (which grounds the explanation in the knowledge table).

use burn::module::{Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::sigmoid;
use burn::tensor::{Device, Tensor};

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

/// The box: the moment box of the coarse mask, corrected by an MLP that also reads the fused box
/// state → sigmoid (cx, cy, w, h), normalised to the padded model input.
#[derive(Module, Debug)]
pub struct BoxHead {
    pub mlp: Mlp,
}

impl BoxHead {
    pub fn new(dim: usize, hidden: usize, device: &Device) -> Self {
        Self { mlp: Mlp::new(dim + MAP_FEATURES, hidden, 4, 3, device) }
    }

    /// `fused`: `[B, D]`, `map`: [`map_features`] → `[B, 4]`.
    pub fn forward(&self, fused: Tensor<2>, map: Tensor<2>) -> Tensor<2> {
        let [b, _] = map.dims();
        let prior = map.clone().narrow(1, 0, 4).clamp(1e-3, 1.0 - 1e-3);
        let prior_logit = (prior.clone() / (-prior + 1.0)).log();
        let correction = self.mlp.forward(Tensor::cat(vec![fused, map], 1)) * 0.5;
        sigmoid(prior_logit + correction).reshape([b, 4])
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

/// Logit that the asked-for structure is in the image, from the fused seg state and what the
/// similarity map found.
#[derive(Module, Debug)]
pub struct PresenceHead {
    pub mlp: Mlp,
}

impl PresenceHead {
    pub fn new(dim: usize, hidden: usize, device: &Device) -> Self {
        Self { mlp: Mlp::new(dim + MAP_FEATURES, hidden, 1, 2, device) }
    }

    pub fn forward(&self, fused: Tensor<2>, map: Tensor<2>) -> Tensor<1> {
        let [b, _] = fused.dims();
        self.mlp.forward(Tensor::cat(vec![fused, map], 1)).reshape([b])
    }
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
