//! SAM's two-way transformer (`segment_anything/modeling/transformer.py`): prompt tokens and
//! image cells attend to each other in turn.

use burn::module::Module;
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::{relu, softmax};
use burn::tensor::{Device, Tensor, TensorData};

use crate::cpu::{attention, linear, on_plain_cpu, AttentionShape, CpuValues, HeadLayout, HeadOperand};

#[derive(Debug, Clone)]
pub struct TwoWayTransformerConfig {
    pub depth: usize,
    pub embedding_dim: usize,
    pub num_heads: usize,
    pub mlp_dim: usize,
    pub attention_downsample_rate: usize,
}

impl Default for TwoWayTransformerConfig {
    fn default() -> Self {
        Self { depth: 2, embedding_dim: 256, num_heads: 8, mlp_dim: 2048, attention_downsample_rate: 2 }
    }
}

impl TwoWayTransformerConfig {
    pub fn init(&self, device: &Device) -> TwoWayTransformer {
        let d = self.embedding_dim;
        let cross = || Attention::new(d, self.num_heads, self.attention_downsample_rate, device);
        let norm = || LayerNormConfig::new(d).init(device);
        let layers = (0..self.depth)
            .map(|i| TwoWayAttentionBlock {
                self_attn: Attention::new(d, self.num_heads, 1, device),
                norm1: norm(),
                cross_attn_token_to_image: cross(),
                norm2: norm(),
                mlp_lin1: LinearConfig::new(d, self.mlp_dim).init(device),
                mlp_lin2: LinearConfig::new(self.mlp_dim, d).init(device),
                norm3: norm(),
                norm4: norm(),
                cross_attn_image_to_token: cross(),
                skip_first_layer_pe: i == 0,
            })
            .collect();
        TwoWayTransformer { layers, final_attn_token_to_image: cross(), norm_final_attn: norm() }
    }
}

/// Multi-head attention whose projections may shrink the width (`downsample_rate`).
#[derive(Module, Debug)]
pub struct Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub out_proj: Linear,
    pub num_heads: usize,
}

impl Attention {
    fn new(dim: usize, num_heads: usize, downsample_rate: usize, device: &Device) -> Self {
        let internal = dim / downsample_rate;
        Self {
            q_proj: LinearConfig::new(dim, internal).init(device),
            k_proj: LinearConfig::new(dim, internal).init(device),
            v_proj: LinearConfig::new(dim, internal).init(device),
            out_proj: LinearConfig::new(internal, dim).init(device),
            num_heads,
        }
    }

    fn separate_heads(&self, x: Tensor<3>) -> Tensor<4> {
        let [batch, tokens, channels] = x.dims();
        x.reshape([batch, tokens, self.num_heads, channels / self.num_heads]).swap_dims(1, 2)
    }

    fn forward(&self, q: Tensor<3>, k: Tensor<3>, v: Tensor<3>) -> Tensor<3> {
        let (q, k, v) = (linear(&self.q_proj, q), linear(&self.k_proj, k), linear(&self.v_proj, v));
        let out = if [&q, &k, &v].iter().all(|x| on_plain_cpu(*x)) {
            self.attend_on_the_cpu(q, k, v)
        } else {
            self.attend_with_burn_ops(q, k, v)
        };
        linear(&self.out_proj, out)
    }

    fn scale(&self, width: usize) -> f64 {
        1.0 / ((width / self.num_heads) as f64).sqrt()
    }

    /// The attention of the projected q, k and v (`[B, tokens, heads·head_dim]`) with
    /// [`attention`], reading the heads where they lie.
    fn attend_on_the_cpu(&self, q: Tensor<3>, k: Tensor<3>, v: Tensor<3>) -> Tensor<3> {
        let [batches, queries, width] = q.dims();
        let (heads, keys, device) = (self.num_heads, k.dims()[1], q.device());
        let head_dim = width / heads;
        let layout = HeadLayout { first: 0, head_stride: head_dim, row_stride: width };
        let (q, k, v) = (CpuValues::of(q), CpuValues::of(k), CpuValues::of(v));
        let [q, k, v] = [&q, &k, &v].map(|x| HeadOperand { values: x.as_slice(), layout });
        let shape = AttentionShape { batches, queries, keys, heads, head_dim };
        let out = attention(q, k, v, None, self.scale(width) as f32, shape);
        Tensor::from_data(TensorData::new(out, [batches, queries, width]), &device)
    }

    fn attend_with_burn_ops(&self, q: Tensor<3>, k: Tensor<3>, v: Tensor<3>) -> Tensor<3> {
        let [batches, queries, width] = q.dims();
        let scale = self.scale(width);
        let (q, k, v) = (self.separate_heads(q), self.separate_heads(k), self.separate_heads(v));
        let scores = q.matmul(k.swap_dims(2, 3)) * scale;
        softmax(scores, 3).matmul(v).swap_dims(1, 2).reshape([batches, queries, width])
    }
}

#[derive(Module, Debug)]
pub struct TwoWayAttentionBlock {
    pub self_attn: Attention,
    pub norm1: LayerNorm,
    pub cross_attn_token_to_image: Attention,
    pub norm2: LayerNorm,
    pub mlp_lin1: Linear,
    pub mlp_lin2: Linear,
    pub norm3: LayerNorm,
    pub norm4: LayerNorm,
    pub cross_attn_image_to_token: Attention,
    pub skip_first_layer_pe: bool,
}

impl TwoWayAttentionBlock {
    fn forward(&self, queries: Tensor<3>, keys: Tensor<3>, query_pe: Tensor<3>, key_pe: Tensor<3>) -> (Tensor<3>, Tensor<3>) {
        // (1) self-attention of the tokens; the first layer has no residual and no PE.
        let queries = if self.skip_first_layer_pe {
            self.self_attn.forward(queries.clone(), queries.clone(), queries)
        } else {
            let q = queries.clone() + query_pe.clone();
            queries.clone() + self.self_attn.forward(q.clone(), q, queries)
        };
        let queries = self.norm1.forward(queries);

        // (2) tokens attend to the image.
        // The keys only change in (4), so both cross attentions read the same keys + PE (4096 ×
        // 256 values, added once).
        let q = queries.clone() + query_pe.clone();
        let k = keys.clone() + key_pe;
        let queries = self.norm2.forward(queries + self.cross_attn_token_to_image.forward(q, k.clone(), keys.clone()));

        // (3) MLP on the tokens.
        let mlp = linear(&self.mlp_lin2, relu(linear(&self.mlp_lin1, queries.clone())));
        let queries = self.norm3.forward(queries + mlp);

        // (4) the image attends to the tokens.
        let q = queries.clone() + query_pe;
        let keys = self.norm4.forward(keys + self.cross_attn_image_to_token.forward(k, q, queries.clone()));
        (queries, keys)
    }
}

#[derive(Module, Debug)]
pub struct TwoWayTransformer {
    pub layers: Vec<TwoWayAttentionBlock>,
    pub final_attn_token_to_image: Attention,
    pub norm_final_attn: LayerNorm,
}

impl TwoWayTransformer {
    /// `image`: `[B, C, H, W]`; `image_pe`: `[1 or B, H*W, C]`; `tokens`: `[B, N, C]`.
    /// Returns the updated tokens `[B, N, C]` and image cells `[B, H*W, C]`.
    pub fn forward(&self, image: Tensor<4>, keys_pe: Tensor<3>, tokens: Tensor<3>) -> (Tensor<3>, Tensor<3>) {
        let ([b, c, h, w], image_device) = (image.dims(), image.device());
        let mut keys = image.reshape([b, c, h * w]).swap_dims(1, 2);
        if on_plain_cpu(&keys) {
            // Gathered once: as a swapped view, each of the first layer's three reads of the
            // keys (+ PE, v projection, residual) walked it with strides, ~1 ms apiece.
            keys = Tensor::from_data(keys.into_data(), &image_device);
        }
        let mut queries = tokens.clone();
        for layer in &self.layers {
            (queries, keys) = layer.forward(queries, keys, tokens.clone(), keys_pe.clone());
        }
        let q = queries.clone() + tokens;
        let k = keys.clone() + keys_pe;
        let queries = self.norm_final_attn.forward(queries + self.final_attn_token_to_image.forward(q, k, keys.clone()));
        (queries, keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::tests::max_relative_difference;

    /// The CPU attention reads each head where `separate_heads` puts it: against Burn's ops, on
    /// the decoder's two shapes (few queries over many keys, and the reverse), two batches.
    #[test]
    fn cpu_attention_equals_burns_ops() {
        let device = Device::flex();
        let normal = burn::tensor::Distribution::Normal(0.0, 1.0);
        let attention = Attention::new(32, 4, 2, &device);
        for (queries, keys) in [(7, 300), (300, 7)] {
            let q = Tensor::<3>::random([2, queries, 16], normal, &device);
            let k = Tensor::<3>::random([2, keys, 16], normal, &device);
            let v = Tensor::<3>::random([2, keys, 16], normal, &device);
            let ours = attention.attend_on_the_cpu(q.clone(), k.clone(), v.clone());
            let burns = attention.attend_with_burn_ops(q, k, v);
            assert!(max_relative_difference(ours, burns) < 1e-5, "{queries} queries, {keys} keys");
        }
    }
}
