//! LiteMedSAM in Burn, one file per part as in Meta's `segment_anything/modeling`.

pub mod common;
pub mod mask_decoder;
pub mod prompt_encoder;
pub mod tiny_vit;
pub mod two_way_transformer;

use burn::module::Module;
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use burn::tensor::{Device, Tensor};

use mask_decoder::{MaskDecoder, MaskDecoderConfig, MaskDecoderOutput};
use prompt_encoder::{PromptEncoder, PromptEncoderConfig};
use tiny_vit::{TinyVit, TinyVitConfig};

/// Side of the square model input (pixels) and of the low-resolution mask.
pub const INPUT_SIZE: usize = 256;

#[derive(Debug, Clone, Default)]
pub struct LiteMedSamConfig {
    pub image_encoder: TinyVitConfig,
    pub prompt_encoder: PromptEncoderConfig,
    pub mask_decoder: MaskDecoderConfig,
}

impl LiteMedSamConfig {
    pub fn init(&self, device: &Device) -> LiteMedSam {
        LiteMedSam {
            image_encoder: self.image_encoder.init(device),
            prompt_encoder: self.prompt_encoder.init(device),
            mask_decoder: self.mask_decoder.init(device),
        }
    }
}

#[derive(Module, Debug)]
pub struct LiteMedSam {
    pub image_encoder: TinyVit,
    pub prompt_encoder: PromptEncoder,
    pub mask_decoder: MaskDecoder,
}

impl LiteMedSam {
    /// `[B, 3, 256, 256]` preprocessed images to `[B, 256, 64, 64]` embeddings.
    pub fn encode(&self, images: Tensor<4>) -> Tensor<4> {
        self.image_encoder.forward(images)
    }

    /// Box-prompted single-mask decoding, as MedSAM uses it. `boxes`: `[B, 4]` in model input
    /// pixels. `extra_tokens` (`[B, K, 256]`) are appended after the two box-corner tokens.
    pub fn decode_boxes(&self, embedding: Tensor<4>, boxes: Tensor<2>, extra_tokens: Option<Tensor<3>>) -> MaskDecoderOutput {
        let [batch, _] = boxes.dims();
        let corners = self.prompt_encoder.embed_boxes(boxes);
        let sparse = match extra_tokens {
            Some(extra) => Tensor::cat(vec![corners, extra], 1),
            None => corners,
        };
        self.decode(embedding, sparse, None, batch, false)
    }

    /// General decoding from ready-made sparse tokens and an optional mask prompt.
    pub fn decode(&self, embedding: Tensor<4>, sparse: Tensor<3>, mask: Option<Tensor<4>>, batch: usize, multimask_output: bool) -> MaskDecoderOutput {
        let dense = self.prompt_encoder.embed_dense(mask, batch);
        let image_pe = self.prompt_encoder.dense_positional_encoding();
        self.mask_decoder.forward(embedding, image_pe, sparse, dense, multimask_output)
    }
}

/// Crop the padding off low-resolution logits (`scaled` = image size inside the 256 square,
/// as height, width) and resize them bilinearly to the original image (height, width).
pub fn postprocess_masks(low_res: Tensor<4>, scaled: [usize; 2], original: [usize; 2]) -> Tensor<4> {
    let [b, m, _, _] = low_res.dims();
    let cropped = low_res.slice([0..b, 0..m, 0..scaled[0], 0..scaled[1]]);
    interpolate(
        cropped,
        InterpolateOptions::new(InterpolateMode::Bilinear).with_align_corners(false).with_output_size(original),
    )
}
