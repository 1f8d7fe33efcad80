//! Vision tokens for the LLM: the cached TinyViT embedding, average-pooled to a small grid and
//! projected into the LLM's input space (in place of MediSee's CLIP tokens).

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::gelu;
use burn::tensor::{Device, Tensor};

#[derive(Module, Debug)]
pub struct VisionProjector {
    pub fc1: Linear,
    pub fc2: Linear,
    /// Side of the pooling window: 64×64 cells become (64 / pool)² tokens.
    pub pool: usize,
}

impl VisionProjector {
    pub fn new(embedding_channels: usize, hidden: usize, pool: usize, device: &Device) -> Self {
        Self {
            fc1: LinearConfig::new(embedding_channels, hidden).init(device),
            fc2: LinearConfig::new(hidden, hidden).init(device),
            pool,
        }
    }

    /// `[B, C, 64, 64]` → `[B, (64 / pool)², hidden]`, row-major over the pooled grid.
    pub fn forward(&self, embedding: Tensor<4>) -> Tensor<3> {
        let [b, c, h, w] = embedding.dims();
        let p = self.pool;
        let (gh, gw) = (h / p, w / p);
        let pooled = embedding.reshape([b, c, gh, p, gw, p]).mean_dim(5).mean_dim(3);
        let tokens = pooled.reshape([b, c, gh * gw]).swap_dims(1, 2);
        self.fc2.forward(gelu(self.fc1.forward(tokens)))
    }
}
