//! Building blocks shared by the SAM parts (`segment_anything/modeling/common.py`).

use burn::module::{Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};

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
            x = layer.forward(x);
            if i < last {
                x = relu(x);
            }
        }
        x
    }
}
