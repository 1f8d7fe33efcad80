//! Building blocks shared by the SAM parts (`segment_anything/modeling/common.py`).

use burn::module::{Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor, TensorData};

use burn::nn::conv::{Conv2d, ConvTranspose2d};
use burn::nn::PaddingConfig2d;

use crate::cpu::{bias_on_plain_cpu, conv_transpose_2x2, depthwise_3x3, layer_norm_over_channels, ChannelNorm, linear, matmul_onto_bias, on_plain_cpu, Activation, Bias, CpuValues, Depthwise3x3, Operand};

/// Layer norm over the channel axis of an NCHW tensor (ConvNeXt / detectron2 `LayerNorm2d`).
#[derive(Module, Debug)]
pub struct LayerNorm2d {
    pub gamma: Param<Tensor<1>>,
    pub beta: Param<Tensor<1>>,
    pub epsilon: f64,
}

impl LayerNorm2d {
    pub fn new(channels: usize, device: &Device) -> Self {
        Self {
            gamma: Param::from_tensor(Tensor::ones([channels], device)),
            beta: Param::from_tensor(Tensor::zeros([channels], device)),
            epsilon: 1e-6,
        }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.forward_then(x, Activation::Identity)
    }

    /// The norm, then `activation`: on the CPU in one kernel ([`layer_norm_over_channels`]).
    pub fn forward_then(&self, x: Tensor<4>, activation: Activation) -> Tensor<4> {
        let (gamma, beta) = (self.gamma.val(), self.beta.val());
        if [on_plain_cpu(&x), on_plain_cpu(&gamma), on_plain_cpu(&beta)] == [true; 3] {
            let ([batch, channels, h, w], device) = (x.dims(), x.device());
            let (x, gamma, beta) = (CpuValues::of(x), CpuValues::of(gamma), CpuValues::of(beta));
            let norm = ChannelNorm { gamma: gamma.as_slice(), beta: beta.as_slice(), epsilon: self.epsilon as f32 };
            let out = layer_norm_over_channels(x.as_slice(), [batch, channels, h * w], &norm, activation);
            return Tensor::from_data(TensorData::new(out, [batch, channels, h, w]), &device);
        }
        activation.apply(self.forward_with_burn_ops(x))
    }

    fn forward_with_burn_ops(&self, x: Tensor<4>) -> Tensor<4> {
        let channels = self.gamma.dims()[0];
        let centred = x.clone() - x.mean_dim(1);
        let variance = centred.clone().square().mean_dim(1);
        let normalised = centred / (variance + self.epsilon).sqrt();
        normalised * self.gamma.val().reshape([1, channels, 1, 1])
            + self.beta.val().reshape([1, channels, 1, 1])
    }
}

/// `num_layers` linear layers with ReLU between them (SAM's `MLP`, used by the IoU head and
/// the hypernetworks).
#[derive(Module, Debug)]
pub struct Mlp {
    pub layers: Vec<Linear>,
}

impl Mlp {
    pub fn new(input: usize, hidden: usize, output: usize, num_layers: usize, device: &Device) -> Self {
        let layers = (0..num_layers)
            .map(|i| {
                let d_in = if i == 0 { input } else { hidden };
                let d_out = if i + 1 == num_layers { output } else { hidden };
                LinearConfig::new(d_in, d_out).init(device)
            })
            .collect();
        Self { layers }
    }

    pub fn forward<const D: usize>(&self, mut x: Tensor<D>) -> Tensor<D> {
        let last = self.layers.len() - 1;
        for (i, layer) in self.layers.iter().enumerate() {
            x = linear(layer, x);
            if i < last {
                x = relu(x);
            }
        }
        x
    }
}

/// A 1×1 convolution of an NCHW tensor as one matrix product per image, `W·X + b` (the bias per
/// output channel): the same numbers as the convolution. On the CPU through
/// [`matmul_onto_bias`], as [`linear`]; elsewhere Burn's matmul, which GPU backends run as their
/// tiled kernel instead of a generic direct convolution. The activation follows it (on the CPU,
/// per output tile while it is in cache).
pub fn pointwise(conv: &Conv2d, x: Tensor<4>, activation: Activation) -> Tensor<4> {
    let [batch, c_in, h, w] = x.dims();
    let weight = conv.weight.val();
    let c_out = weight.dims()[0];
    if !on_plain_cpu(&x) || !on_plain_cpu(&weight) || !bias_on_plain_cpu(&conv.bias) {
        let y = weight.reshape([1, c_out, c_in]).matmul(x.reshape([batch, c_in, h * w]));
        let y = match &conv.bias {
            Some(bias) => y + bias.val().reshape([1, c_out, 1]),
            None => y,
        };
        return activation.apply(y.reshape([batch, c_out, h, w]));
    }
    let device = x.device();
    let (input, weight) = (CpuValues::of(x), CpuValues::of(weight));
    let bias = conv.bias.as_ref().map(|b| CpuValues::of(b.val()));
    let image = c_in * h * w;
    let per_image = input.as_slice().chunks(image.max(1)).take(batch).map(|x| {
        matmul_onto_bias(
            Operand { values: weight.as_slice(), rows: c_out, columns: c_in },
            Operand { values: x, rows: c_in, columns: h * w },
            bias.as_ref().map(|b| Bias::PerRow(b.as_slice())),
            activation,
        )
    });
    let out = per_image.reduce(|mut all, image| {
        all.extend_from_slice(&image);
        all
    });
    Tensor::from_data(TensorData::new(out.unwrap_or_default(), [batch, c_out, h, w]), &device)
}

/// A 2×2, stride-2 transposed convolution (SAM's mask upscaling), then the activation: on the
/// CPU as one matrix product ([`conv_transpose_2x2`]); any other one, or elsewhere, Burn's.
pub fn upscale_2x2(conv: &ConvTranspose2d, x: Tensor<4>, activation: Activation) -> Tensor<4> {
    let weight = conv.weight.val();
    let is_2x2_upscale = conv.kernel_size == [2, 2]
        && conv.stride == [2, 2]
        && conv.padding == [0, 0]
        && conv.padding_out == [0, 0]
        && conv.dilation == [1, 1]
        && conv.groups == 1;
    if !is_2x2_upscale || !on_plain_cpu(&x) || !on_plain_cpu(&weight) || !bias_on_plain_cpu(&conv.bias) {
        return activation.apply(conv.forward(x));
    }
    let ([batch, c_in, h, w], c_out, device) = (x.dims(), weight.dims()[1], x.device());
    let (input, weight) = (CpuValues::of(x), CpuValues::of(weight));
    let bias = conv.bias.as_ref().map(|b| CpuValues::of(b.val()));
    let out = conv_transpose_2x2(input.as_slice(), [batch, c_in, h, w], weight.as_slice(), bias.as_ref().map(CpuValues::as_slice), activation);
    Tensor::from_data(TensorData::new(out, [batch, c_out, 2 * h, 2 * w]), &device)
}

/// A 3×3 depthwise convolution (one filter per channel, zero padding 1, stride 1 or 2) of an
/// NCHW tensor, then the activation: on the CPU in one pass per channel plane
/// ([`depthwise_3x3`]); any other convolution, or elsewhere, Burn's.
pub fn depthwise(conv: &Conv2d, x: Tensor<4>, activation: Activation) -> Tensor<4> {
    let [batch, channels, h, w] = x.dims();
    if !depthwise_3x3_on_plain_cpu(conv, channels) || !on_plain_cpu(&x) {
        return activation.apply(conv.forward(x));
    }
    let device = x.device();
    let input = CpuValues::of(x);
    with_depthwise_3x3(conv, |layer| {
        let out = depthwise_3x3(input.as_slice(), [batch, channels, h, w], layer, activation);
        let (out_h, out_w) = (layer.output_side(h), layer.output_side(w));
        Tensor::from_data(TensorData::new(out, [batch, channels, out_h, out_w]), &device)
    })
}

/// Runs `run` on `conv`'s parameters as the CPU kernels read them (see
/// [`depthwise_3x3_on_plain_cpu`]).
pub fn with_depthwise_3x3<R>(conv: &Conv2d, run: impl FnOnce(&Depthwise3x3) -> R) -> R {
    let weight = CpuValues::of(conv.weight.val());
    let bias = conv.bias.as_ref().map(|b| CpuValues::of(b.val()));
    run(&Depthwise3x3 { weights: weight.as_slice(), bias: bias.as_ref().map(CpuValues::as_slice), stride: conv.stride[0] })
}

/// Whether `conv` is a 3×3 depthwise convolution of `channels` channels (zero padding 1, the
/// same stride 1 or 2 both ways) whose parameters the CPU kernels can read.
pub fn depthwise_3x3_on_plain_cpu(conv: &Conv2d, channels: usize) -> bool {
    let weight = conv.weight.val();
    let stride = conv.stride[0];
    weight.dims() == [channels, 1, 3, 3]
        && conv.groups == channels
        && conv.stride == [stride, stride]
        && (stride == 1 || stride == 2)
        && conv.dilation == [1, 1]
        && conv.padding == PaddingConfig2d::Explicit(1, 1, 1, 1)
        && on_plain_cpu(&weight)
        && bias_on_plain_cpu(&conv.bias)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::tests::max_relative_difference;

    /// The CPU 1×1 convolution against Burn's convolution (and GELU), over two images, with and
    /// without a bias.
    #[test]
    fn pointwise_on_the_cpu_equals_burns_convolution() {
        let device = Device::flex();
        let normal = burn::tensor::Distribution::Normal(0.0, 1.0);
        for (bias, activation) in [(true, Activation::Identity), (false, Activation::Identity), (true, Activation::Gelu)] {
            let conv = burn::nn::conv::Conv2dConfig::new([12, 20], [1, 1]).with_bias(bias).init(&device);
            let conv = Conv2d { bias: conv.bias.map(|b| b.map(|t| t.random_like(normal))), ..conv };
            let x = Tensor::<4>::random([2, 12, 9, 11], normal, &device);
            let burns = burns_activation(activation, conv.forward(x.clone()));
            assert!(max_relative_difference(pointwise(&conv, x, activation), burns) < 1e-5);
        }
    }

    /// The CPU depthwise convolution against Burn's, at both strides, on odd and even sides, a
    /// one-column image, with and without a bias and GELU; a tap read from the wrong neighbour
    /// or a padding row taken as data would move it far beyond the bound.
    #[test]
    fn depthwise_on_the_cpu_equals_burns_convolution() {
        let device = Device::flex();
        let normal = burn::tensor::Distribution::Normal(0.0, 1.0);
        let cases = [(1, [9, 11], true, Activation::Gelu), (2, [9, 11], true, Activation::Identity), (2, [8, 6], false, Activation::Gelu), (1, [5, 1], true, Activation::Identity), (2, [1, 1], true, Activation::Identity)];
        for (stride, [h, w], bias, activation) in cases {
            let conv = burn::nn::conv::Conv2dConfig::new([6, 6], [3, 3])
                .with_groups(6)
                .with_stride([stride, stride])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .with_bias(bias)
                .init(&device);
            let conv = Conv2d { weight: conv.weight.map(|t| t.random_like(normal)), bias: conv.bias.map(|b| b.map(|t| t.random_like(normal))), ..conv };
            let x = Tensor::<4>::random([2, 6, h, w], normal, &device);
            let burns = burns_activation(activation, conv.forward(x.clone()));
            let ours = depthwise(&conv, x, activation);
            assert!(max_relative_difference(ours, burns) < 1e-5, "stride {stride}, {h}×{w}");
        }
    }

    /// The CPU upscaling against Burn's transposed convolution, and the CPU LayerNorm2d against
    /// its Burn ops, each with and without GELU, on two images.
    #[test]
    fn upscaling_and_its_norm_on_the_cpu_equal_burns() {
        let device = Device::flex();
        let normal = burn::tensor::Distribution::Normal(0.0, 1.0);
        let conv = burn::nn::conv::ConvTranspose2dConfig::new([6, 5], [2, 2]).with_stride([2, 2]).init(&device);
        let conv = ConvTranspose2d { bias: conv.bias.map(|b| b.map(|t| t.random_like(normal))), ..conv };
        let norm = LayerNorm2d { gamma: Param::from_tensor(Tensor::random([5], normal, &device)), beta: Param::from_tensor(Tensor::random([5], normal, &device)), epsilon: 1e-6 };
        let x = Tensor::<4>::random([2, 6, 7, 9], normal, &device);
        for activation in [Activation::Identity, Activation::Gelu] {
            let up = upscale_2x2(&conv, x.clone(), activation);
            assert!(max_relative_difference(up.clone(), burns_activation(activation, conv.forward(x.clone()))) < 1e-5);
            let burns = burns_activation(activation, norm.forward_with_burn_ops(up.clone()));
            assert!(max_relative_difference(norm.forward_then(up, activation), burns) < 1e-5);
        }
    }

    fn burns_activation(activation: Activation, x: Tensor<4>) -> Tensor<4> {
        match activation {
            Activation::Identity => x,
            Activation::Gelu => burn::tensor::activation::gelu(x),
        }
    }
}
