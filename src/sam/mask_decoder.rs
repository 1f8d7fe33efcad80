//! SAM's mask decoder (`segment_anything/modeling/mask_decoder.py`): the two-way transformer
//! over [IoU token, mask tokens, prompt tokens] and the image, then upscaling and hypernetworks.

use burn::module::{Module, Param};
use burn::nn::conv::{ConvTranspose2d, ConvTranspose2dConfig};
use burn::tensor::{Device, Tensor};

use super::common::{upscale_2x2, LayerNorm2d, Mlp};
use crate::cpu::Activation;
use super::two_way_transformer::{TwoWayTransformer, TwoWayTransformerConfig};

#[derive(Debug, Clone)]
pub struct MaskDecoderConfig {
    pub transformer_dim: usize,
    pub transformer: TwoWayTransformerConfig,
    pub num_multimask_outputs: usize,
    pub iou_head_depth: usize,
    pub iou_head_hidden_dim: usize,
}

impl Default for MaskDecoderConfig {
    fn default() -> Self {
        Self {
            transformer_dim: 256,
            transformer: TwoWayTransformerConfig::default(),
            num_multimask_outputs: 3,
            iou_head_depth: 3,
            iou_head_hidden_dim: 256,
        }
    }
}

impl MaskDecoderConfig {
    pub fn init(&self, device: &Device) -> MaskDecoder {
        let d = self.transformer_dim;
        let num_mask_tokens = self.num_multimask_outputs + 1;
        MaskDecoder {
            transformer: self.transformer.init(device),
            iou_token: Param::from_tensor(Tensor::zeros([1, d], device)),
            mask_tokens: Param::from_tensor(Tensor::zeros([num_mask_tokens, d], device)),
            upscale_conv1: ConvTranspose2dConfig::new([d, d / 4], [2, 2]).with_stride([2, 2]).init(device),
            upscale_norm: LayerNorm2d::new(d / 4, device),
            upscale_conv2: ConvTranspose2dConfig::new([d / 4, d / 8], [2, 2]).with_stride([2, 2]).init(device),
            hypernetworks: (0..num_mask_tokens).map(|_| Mlp::new(d, d, d / 8, 3, device)).collect(),
            iou_head: Mlp::new(d, self.iou_head_hidden_dim, num_mask_tokens, self.iou_head_depth, device),
        }
    }
}

/// What the decoder returns for a batch of prompts.
#[derive(Debug, Clone)]
pub struct MaskDecoderOutput {
    /// `[B, M, 256, 256]` mask logits at 4× the embedding resolution.
    pub low_res_masks: Tensor<4>,
    /// `[B, M]` predicted IoU of each mask.
    pub iou_predictions: Tensor<2>,
    /// `[B, N, C]` transformer output for every token (IoU, mask tokens, then the prompts).
    pub tokens: Tensor<3>,
}

#[derive(Module, Debug)]
pub struct MaskDecoder {
    pub transformer: TwoWayTransformer,
    pub iou_token: Param<Tensor<2>>,
    pub mask_tokens: Param<Tensor<2>>,
    pub upscale_conv1: ConvTranspose2d,
    pub upscale_norm: LayerNorm2d,
    pub upscale_conv2: ConvTranspose2d,
    pub hypernetworks: Vec<Mlp>,
    pub iou_head: Mlp,
}

impl MaskDecoder {
    /// `image_embedding`: `[1 or B, C, 64, 64]`, `image_pe`: `[1, 64·64, C]` (token layout),
    /// `sparse_prompts`: `[B, N, C]`, `dense_prompts`: `[B, C, 64, 64]`.
    /// With `multimask_output` the three ambiguity masks are returned, otherwise the single one.
    pub fn forward(
        &self,
        image_embedding: Tensor<4>,
        image_pe: Tensor<3>,
        sparse_prompts: Tensor<3>,
        dense_prompts: Tensor<4>,
        multimask_output: bool,
    ) -> MaskDecoderOutput {
        let [batch, _, dim] = sparse_prompts.dims();
        let num_mask_tokens = self.mask_tokens.dims()[0];
        let output_tokens = Tensor::cat(vec![self.iou_token.val(), self.mask_tokens.val()], 0)
            .unsqueeze::<3>()
            .expand([batch, 1 + num_mask_tokens, dim]);
        let tokens = Tensor::cat(vec![output_tokens, sparse_prompts], 1);

        let src = image_embedding + dense_prompts;
        let [b, c, h, w] = src.dims();
        let (tokens, src) = self.transformer.forward(src, image_pe, tokens);

        let src = src.swap_dims(1, 2).reshape([b, c, h, w]);
        let upscaled = upscale_2x2(&self.upscale_conv1, src, Activation::Identity);
        let upscaled = self.upscale_norm.forward_then(upscaled, Activation::Gelu);
        let upscaled = upscale_2x2(&self.upscale_conv2, upscaled, Activation::Gelu);
        let [_, up_c, up_h, up_w] = upscaled.dims();

        let hyper_in = Tensor::cat(
            self.hypernetworks
                .iter()
                .enumerate()
                .map(|(i, mlp)| mlp.forward(tokens.clone().narrow(1, 1 + i, 1)))
                .collect(),
            1,
        );
        let masks = hyper_in
            .matmul(upscaled.reshape([b, up_c, up_h * up_w]))
            .reshape([b, num_mask_tokens, up_h, up_w]);
        let iou = self.iou_head.forward(tokens.clone().narrow(1, 0, 1)).reshape([b, num_mask_tokens]);

        let (first, count) = if multimask_output { (1, num_mask_tokens - 1) } else { (0, 1) };
        MaskDecoderOutput {
            low_res_masks: masks.narrow(1, first, count),
            iou_predictions: iou.narrow(1, first, count),
            tokens,
        }
    }
}
