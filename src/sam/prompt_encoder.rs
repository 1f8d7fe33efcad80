//! SAM's prompt encoder (`segment_anything/modeling/prompt_encoder.py`): boxes and points become
//! sparse tokens, an optional low-resolution mask becomes a dense embedding.

use std::f64::consts::PI;

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::tensor::{Device, Int, Tensor};

use super::common::LayerNorm2d;
use crate::cpu::Activation;

/// Label of a point prompt, with SAM's numeric codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PointLabel {
    Background = 0,
    Foreground = 1,
}

#[derive(Debug, Clone)]
pub struct PromptEncoderConfig {
    pub embed_dim: usize,
    /// Side of the image embedding grid (64 for a 256×256 input).
    pub embedding_size: usize,
    /// Side of the padded model input in pixels; prompt coordinates live in this space.
    pub input_size: usize,
    pub mask_in_chans: usize,
}

impl Default for PromptEncoderConfig {
    fn default() -> Self {
        Self { embed_dim: 256, embedding_size: 64, input_size: 256, mask_in_chans: 16 }
    }
}

impl PromptEncoderConfig {
    pub fn init(&self, device: &Device) -> PromptEncoder {
        let d = self.embed_dim;
        let m = self.mask_in_chans;
        let token = || Param::from_tensor(Tensor::zeros([1, d], device));
        PromptEncoder {
            gaussian_matrix: Param::from_tensor(Tensor::random(
                [2, d / 2],
                burn::tensor::Distribution::Normal(0.0, 1.0),
                device,
            )),
            point_embeddings: (0..4).map(|_| token()).collect(),
            not_a_point_embed: token(),
            no_mask_embed: token(),
            mask_conv1: Conv2dConfig::new([1, m / 4], [2, 2]).with_stride([2, 2]).init(device),
            mask_norm1: LayerNorm2d::new(m / 4, device),
            mask_conv2: Conv2dConfig::new([m / 4, m], [2, 2]).with_stride([2, 2]).init(device),
            mask_norm2: LayerNorm2d::new(m, device),
            mask_conv3: Conv2dConfig::new([m, d], [1, 1]).init(device),
            embedding_size: self.embedding_size,
            input_size: self.input_size,
            cached_positional_encoding: None,
        }
    }
}

#[derive(Module, Debug)]
pub struct PromptEncoder {
    /// Random Fourier feature matrix `[2, embed_dim / 2]` of the positional encoding.
    pub gaussian_matrix: Param<Tensor<2>>,
    /// Negative point, positive point, box top-left corner, box bottom-right corner.
    pub point_embeddings: Vec<Param<Tensor<2>>>,
    pub not_a_point_embed: Param<Tensor<2>>,
    pub no_mask_embed: Param<Tensor<2>>,
    pub mask_conv1: Conv2d,
    pub mask_norm1: LayerNorm2d,
    pub mask_conv2: Conv2d,
    pub mask_norm2: LayerNorm2d,
    pub mask_conv3: Conv2d,
    pub embedding_size: usize,
    pub input_size: usize,
    /// [`PromptEncoder::dense_positional_encoding`], computed once the weights are final (see
    /// [`PromptEncoder::with_cached_positional_encoding`]): 0.5 M sines and cosines that every
    /// decoding would otherwise recompute. Not saved, and not moved by `to_device`.
    #[module(skip)]
    pub cached_positional_encoding: Option<Tensor<3>>,
}

impl PromptEncoder {
    pub fn embed_dim(&self) -> usize {
        self.no_mask_embed.dims()[1]
    }

    /// Fourier features of coordinates already normalised to [0, 1]: `[..., 2] -> [..., embed_dim]`.
    fn encode_unit_coords<const D: usize>(&self, coords: Tensor<D>) -> Tensor<D> {
        let projected = (coords * 2.0 - 1.0).matmul(self.gaussian_matrix.val().unsqueeze()) * (2.0 * PI);
        Tensor::cat(vec![projected.clone().sin(), projected.cos()], D - 1)
    }

    /// Positional encoding of every cell centre of the embedding grid, in the two-way
    /// transformer's token layout: `[1, 64·64, embed_dim]`, row-major cells (SAM's `get_dense_pe`
    /// is the same values as `[1, embed_dim, 64, 64]`). Contiguous, so the transformer adds it to
    /// the image tokens without a strided pass.
    pub fn dense_positional_encoding(&self) -> Tensor<3> {
        match &self.cached_positional_encoding {
            Some(encoding) => encoding.clone(),
            None => self.compute_dense_positional_encoding(),
        }
    }

    /// Keeps the dense positional encoding of the current weights on their device, for every
    /// later decoding. Call it again after changing `gaussian_matrix` or the device. Detached:
    /// on an autodiff device a cached value still on the tape would be consumed by the first
    /// backward pass and make every later one fail (the frozen SAM's Fourier matrix is never
    /// trained through it).
    pub fn with_cached_positional_encoding(mut self) -> Self {
        self.cached_positional_encoding = Some(self.compute_dense_positional_encoding().detach());
        self
    }

    fn compute_dense_positional_encoding(&self) -> Tensor<3> {
        let side = self.embedding_size;
        let device = self.gaussian_matrix.device();
        let centres: Vec<f32> = (0..side)
            .flat_map(|y| (0..side).flat_map(move |x| [(x as f32 + 0.5) / side as f32, (y as f32 + 0.5) / side as f32]))
            .collect();
        let cells = Tensor::<1>::from_floats(centres.as_slice(), &device).reshape([1, side * side, 2]);
        self.encode_unit_coords(cells)
    }

    /// Pixel coordinates (model input space, `[..., 2]` as x, y) to Fourier features.
    fn encode_pixel_coords(&self, coords: Tensor<3>) -> Tensor<3> {
        let centred = coords + 0.5;
        self.encode_unit_coords(centred / self.input_size as f64)
    }

    /// Boxes `[B, 4]` (x0, y0, x1, y1 in model input pixels) to corner tokens `[B, 2, embed_dim]`.
    pub fn embed_boxes(&self, boxes: Tensor<2>) -> Tensor<3> {
        let [batch, _] = boxes.dims();
        let corners = self.encode_pixel_coords(boxes.reshape([batch, 2, 2]));
        let corner_types = Tensor::cat(
            vec![self.point_embeddings[2].val(), self.point_embeddings[3].val()],
            0,
        );
        corners + corner_types.unsqueeze()
    }

    /// Points `[B, N, 2]` with labels `[B, N]` (1 foreground, 0 background, -1 padding) to
    /// tokens `[B, N, embed_dim]`. `pad` appends SAM's padding point, used when no box is given.
    pub fn embed_points(&self, points: Tensor<3>, labels: Tensor<2, Int>, pad: bool) -> Tensor<3> {
        let [batch, _, _] = points.dims();
        let device = points.device();
        let (points, labels) = if pad {
            (
                Tensor::cat(vec![points, Tensor::zeros([batch, 1, 2], &device)], 1),
                Tensor::cat(vec![labels, Tensor::full([batch, 1], -1, &device)], 1),
            )
        } else {
            (points, labels)
        };
        let [_, count] = labels.dims();
        let encoded = self.encode_pixel_coords(points);
        let keep = labels.clone().not_equal_elem(-1).float().unsqueeze_dim::<3>(2);
        // Rows: padding (label -1), background (0), foreground (1).
        let label_table = Tensor::cat(
            vec![
                self.not_a_point_embed.val(),
                self.point_embeddings[PointLabel::Background as usize].val(),
                self.point_embeddings[PointLabel::Foreground as usize].val(),
            ],
            0,
        );
        let label_rows = label_table
            .select(0, (labels + 1).reshape([batch * count]))
            .reshape([batch, count, self.embed_dim()]);
        encoded * keep + label_rows
    }

    /// Dense prompt: the learned "no mask" embedding, or a `[B, 1, 256, 256]` mask logit map
    /// downscaled to the embedding grid.
    pub fn embed_dense(&self, mask: Option<Tensor<4>>, batch: usize) -> Tensor<4> {
        let side = self.embedding_size;
        match mask {
            Some(mask) => {
                let x = self.mask_norm1.forward_then(self.mask_conv1.forward(mask), Activation::Gelu);
                let x = self.mask_norm2.forward_then(self.mask_conv2.forward(x), Activation::Gelu);
                self.mask_conv3.forward(x)
            }
            None => self
                .no_mask_embed
                .val()
                .reshape([1, self.embed_dim(), 1, 1])
                .expand([batch, self.embed_dim(), side, side]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Training backpropagates through the frozen decoder once per step: the cached encoding
    /// must serve every step, not only the first.
    #[test]
    fn the_cached_positional_encoding_survives_repeated_backward_passes() {
        let device = Device::flex().autodiff();
        let encoder = PromptEncoderConfig::default().init(&device).with_cached_positional_encoding();
        for _ in 0..2 {
            let loss = encoder.dense_positional_encoding().sum() * encoder.no_mask_embed.val().sum();
            let grads = loss.backward();
            assert!(encoder.no_mask_embed.grad(&grads).is_some());
        }
    }
}
