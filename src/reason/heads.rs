//! Small trained heads on the fused states: the box, the prompt token for SAM's mask decoder,
//! the similarity map ("where the model looked") and the presence score ("not found").

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::sigmoid;
use burn::tensor::{Device, Tensor};

use crate::sam::common::Mlp;

/// MLP → sigmoid (cx, cy, w, h), normalised to the padded model input.
#[derive(Module, Debug)]
pub struct BoxHead {
    pub mlp: Mlp,
}

impl BoxHead {
    pub fn new(dim: usize, hidden: usize, device: &Device) -> Self {
        Self { mlp: Mlp::new(dim, hidden, 4, 3, device) }
    }

    pub fn forward(&self, fused: Tensor<2>) -> Tensor<2> {
        sigmoid(self.mlp.forward(fused))
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

/// Cosine similarity between a projection of the fused seg state and every embedding cell.
#[derive(Module, Debug)]
pub struct SimilarityHead {
    pub projection: Linear,
}

impl SimilarityHead {
    pub fn new(dim: usize, embedding_channels: usize, device: &Device) -> Self {
        Self { projection: LinearConfig::new(dim, embedding_channels).init(device) }
    }

    /// `fused`: `[B, D]`, `embedding`: `[B, C, H, W]` → `[B, H, W]` in [-1, 1].
    pub fn forward(&self, fused: Tensor<2>, embedding: Tensor<4>) -> Tensor<3> {
        let [b, c, h, w] = embedding.dims();
        let query = self.projection.forward(fused);
        let query = query.clone() / (query.square().sum_dim(1).sqrt() + 1e-6);
        let cells = embedding.reshape([b, c, h * w]);
        let cells = cells.clone() / (cells.square().sum_dim(1).sqrt() + 1e-6);
        query.unsqueeze_dim::<3>(1).matmul(cells).reshape([b, h, w])
    }
}

/// Logit that the asked-for structure is in the image.
#[derive(Module, Debug)]
pub struct PresenceHead {
    pub linear: Linear,
}

impl PresenceHead {
    pub fn new(dim: usize, device: &Device) -> Self {
        Self { linear: LinearConfig::new(dim, 1).init(device) }
    }

    pub fn forward(&self, fused: Tensor<2>) -> Tensor<1> {
        let [b, _] = fused.dims();
        self.linear.forward(fused).reshape([b])
    }
}
