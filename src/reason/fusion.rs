//! Adaptive Democratic Candidate Fusion (ADCF): K candidate hidden states (the `[SEG]` and
//! `[BBOX]` states and K−2 learned extra candidates) are weighted per sample by
//! `w = σ(MLP(concat(c_1..c_K)))`, normalised to sum to 1, and summed — with separate gates for
//! the mask branch and the box branch. The weights are returned so the page can show them.

use burn::module::Module;
use burn::nn::{LayerNorm, LayerNormConfig};
use burn::tensor::activation::sigmoid;
use burn::tensor::{Device, Tensor};

use crate::sam::common::Mlp;

#[derive(Module, Debug)]
pub struct CandidateFusion {
    /// The LLM's last-layer states vary widely in scale between positions; the heads see them
    /// normalised.
    pub norm: LayerNorm,
    pub seg_gate: Mlp,
    pub box_gate: Mlp,
}

/// Fused states and the weights that made them.
#[derive(Debug, Clone)]
pub struct Fused {
    /// `[B, D]` state for the mask branch.
    pub seg: Tensor<2>,
    /// `[B, D]` state for the box branch.
    pub bbox: Tensor<2>,
    /// `[B, K]`, each row sums to 1.
    pub seg_weights: Tensor<2>,
    pub box_weights: Tensor<2>,
}

impl CandidateFusion {
    pub fn new(candidates: usize, dim: usize, hidden: usize, device: &Device) -> Self {
        Self {
            norm: LayerNormConfig::new(dim).init(device),
            seg_gate: Mlp::new(candidates * dim, hidden, candidates, 2, device),
            box_gate: Mlp::new(candidates * dim, hidden, candidates, 2, device),
        }
    }

    fn weights(gate: &Mlp, flat: Tensor<2>) -> Tensor<2> {
        let raw = sigmoid(gate.forward(flat));
        raw.clone() / raw.sum_dim(1)
    }

    /// `candidates`: `[B, K, D]`.
    pub fn forward(&self, candidates: Tensor<3>) -> Fused {
        let [b, k, d] = candidates.dims();
        let candidates = self.norm.forward(candidates);
        let flat = candidates.clone().reshape([b, k * d]);
        let seg_weights = Self::weights(&self.seg_gate, flat.clone());
        let box_weights = Self::weights(&self.box_gate, flat);
        let mix = |w: &Tensor<2>| (candidates.clone() * w.clone().unsqueeze_dim::<3>(2)).sum_dim(1).reshape([b, d]);
        Fused { seg: mix(&seg_weights), bbox: mix(&box_weights), seg_weights, box_weights }
    }
}
