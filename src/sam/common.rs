//! Building blocks shared by the SAM parts (`segment_anything/modeling/common.py`).

use burn::module::{Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor, TensorData};

use crate::cpu::{bias_on_plain_cpu, linear, matmul_onto_bias, on_plain_cpu, Bias, CpuValues, Operand};

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
/// tiled kernel instead of a generic direct convolution.
pub fn pointwise(conv: &burn::nn::conv::Conv2d, x: Tensor<4>) -> Tensor<4> {
    let [batch, c_in, h, w] = x.dims();
    let weight = conv.weight.val();
    let c_out = weight.dims()[0];
    if !on_plain_cpu(&x) || !on_plain_cpu(&weight) || !bias_on_plain_cpu(&conv.bias) {
        let y = weight.reshape([1, c_out, c_in]).matmul(x.reshape([batch, c_in, h * w]));
        let y = match &conv.bias {
            Some(bias) => y + bias.val().reshape([1, c_out, 1]),
            None => y,
        };
        return y.reshape([batch, c_out, h, w]);
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
        )
    });
    let out = per_image.reduce(|mut all, image| {
        all.extend_from_slice(&image);
        all
    });
    Tensor::from_data(TensorData::new(out.unwrap_or_default(), [batch, c_out, h, w]), &device)
}

/// GELU in its exact (erf) form, as PyTorch's default. On the CPU it runs over the tensor's
/// values with a rational erf that the compiler vectorises (max error 4.2e-7), split over the
/// threads: Burn's CPU backend calls a scalar `erff` per value (~13 ns here), and TinyViT's
/// first stage alone, at full resolution, takes ~125 M GELUs per image. On a GPU, under
/// autodiff or for other float types, Burn's own.
pub fn gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if !on_plain_cpu(&x) {
        return burn::tensor::activation::gelu(x);
    }
    let device = x.device();
    // In the tensor's own bytes: taking them as a `Vec<f32>` copies them all whenever Burn
    // allocated them with a wider alignment than a vector's, as its matmul outputs are.
    let mut data = x.into_data();
    gelu_in_place(data.as_mut_slice::<f32>().expect("f32 checked above"));
    Tensor::from_data(data, &device)
}

/// `v ← v·(1 + erf(v/√2))/2` for every value.
pub fn gelu_in_place(values: &mut [f32]) {
    let kernel = gelu_kernel();
    #[cfg(not(target_arch = "wasm32"))]
    {
        use rayon::prelude::*;
        // Large enough that a thread's share outweighs handing it over.
        const VALUES_PER_TASK: usize = 1 << 16;
        values.par_chunks_mut(VALUES_PER_TASK).for_each(kernel);
    }
    #[cfg(target_arch = "wasm32")]
    kernel(values);
}

/// The GELU loop for the widest vector unit this CPU has (chosen once per tensor).
fn gelu_kernel() -> fn(&mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY (both): the features the function is compiled for were just detected.
        if std::is_x86_feature_detected!("avx512f") {
            return |values| unsafe { gelu_avx512(values) };
        }
        if std::is_x86_feature_detected!("avx2") {
            return |values| unsafe { gelu_avx2(values) };
        }
    }
    gelu_values
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn gelu_avx512(values: &mut [f32]) {
    gelu_values(values)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn gelu_avx2(values: &mut [f32]) {
    gelu_values(values)
}

#[inline(always)]
fn gelu_values(values: &mut [f32]) {
    for v in values.iter_mut() {
        *v = 0.5 * *v * (1.0 + erf(*v * std::f32::consts::FRAC_1_SQRT_2));
    }
}

/// erf as `x·P(x²)/Q(x²)` on [−4, 4] (beyond it erf is ±1 in f32): the rational
/// minimax form Eigen and XNNPACK use. Branch-free, so a loop over it vectorises.
#[inline(always)]
fn erf(x: f32) -> f32 {
    const P: [f32; 7] = [-1.609_603_3e-2, -2.954_599_8e-3, -7.349_906_3e-4, -5.692_506_4e-5, -2.101_024e-6, 2.770_681_4e-8, -2.726_142_3e-10];
    const Q: [f32; 5] = [-1.426_473_9e-2, -7.373_329e-3, -1.682_827e-3, -2.133_740_5e-4, -1.456_607_2e-5];
    // min/max rather than clamp: clamp's NaN rule keeps it from vectorising.
    let clamped = x.min(4.0).max(-4.0);
    let x2 = clamped * clamped;
    let p = P.iter().rev().fold(0.0, |acc, &c| acc * x2 + c);
    let q = Q.iter().rev().fold(0.0, |acc, &c| acc * x2 + c);
    // Exactly ±1 beyond the range: the rational form ends a few ulp short of it there, and
    // GELU's `1 + erf` would turn that into −x·1e-7 instead of 0 for large negative x.
    if clamped == x { clamped * p / q } else { 1.0f32.copysign(x) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CPU GELU against the erf form in f64, over the range activations take and beyond (the
    /// bound is f32's: near −5, `1 + erf` cancels to a few units in the last place of 1).
    #[test]
    fn gelu_matches_the_erf_form() {
        let xs: Vec<f32> = (-200_000..=200_000).map(|i| i as f32 * 5e-5).chain([-40.0, -6.0, 6.0, 40.0, 0.0]).collect();
        let mut fast = xs.clone();
        gelu_in_place(&mut fast);
        for (&x, &g) in xs.iter().zip(&fast) {
            let want = 0.5 * x as f64 * (1.0 + libm_erf(x as f64 / std::f64::consts::SQRT_2));
            assert!((g as f64 - want).abs() < 2e-6 * (1.0 + want.abs()), "gelu({x}) = {g}, want {want}");
        }
    }

    /// Each value is computed alone, without fused multiply-adds, so every vector width gives
    /// the portable loop's bits.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn every_gelu_kernel_gives_the_same_bits() {
        let xs: Vec<f32> = (-70_000..=70_000).map(|i| i as f32 * 1.3e-4).collect();
        let mut portable = xs.clone();
        gelu_values(&mut portable);
        let mut kernels: Vec<(&str, unsafe fn(&mut [f32]))> = Vec::new();
        if std::is_x86_feature_detected!("avx2") {
            kernels.push(("avx2", gelu_avx2));
        }
        if std::is_x86_feature_detected!("avx512f") {
            kernels.push(("avx512f", gelu_avx512));
        }
        for (name, kernel) in kernels {
            let mut values = xs.clone();
            // SAFETY: the kernel's features were detected above.
            unsafe { kernel(&mut values) };
            assert!(values.iter().zip(&portable).all(|(a, b)| a.to_bits() == b.to_bits()), "{name}");
        }
    }

    /// The CPU 1×1 convolution against Burn's convolution, over two images, with and without a
    /// bias.
    #[test]
    fn pointwise_on_the_cpu_equals_burns_convolution() {
        let device = Device::flex();
        let normal = burn::tensor::Distribution::Normal(0.0, 1.0);
        for bias in [true, false] {
            let conv = burn::nn::conv::Conv2dConfig::new([12, 20], [1, 1]).with_bias(bias).init(&device);
            let conv = burn::nn::conv::Conv2d { bias: conv.bias.map(|b| b.map(|t| t.random_like(normal))), ..conv };
            let x = Tensor::<4>::random([2, 12, 9, 11], normal, &device);
            assert!(crate::cpu::tests::max_relative_difference(pointwise(&conv, x.clone()), conv.forward(x)) < 1e-5);
        }
    }

    #[test]
    fn gelu_on_the_cpu_equals_burns_within_float_error() {
        let device = Device::flex();
        let x = Tensor::<3>::random([3, 70, 333], burn::tensor::Distribution::Normal(0.0, 3.0), &device);
        let ours = gelu(x.clone().permute([2, 0, 1])).permute([1, 2, 0]);
        let burns = burn::tensor::activation::gelu(x);
        assert_eq!(ours.dims(), burns.dims());
        let diff = ((ours - burns.clone()).abs() / (burns.abs() + 1.0)).max().into_scalar::<f32>();
        assert!(diff < 2e-6, "max |Δ|/(1 + |gelu|) = {diff}");
    }

    /// erf in f64 from its Taylor series (|x| < 3) and continued fraction (beyond), as a reference
    /// independent of the kernel.
    fn libm_erf(x: f64) -> f64 {
        let a = x.abs();
        let value = if a < 3.0 {
            let (mut term, mut sum, mut n) = (a, a, 0.0);
            while term.abs() > 1e-17 * sum.abs() {
                n += 1.0;
                term *= -a * a / n;
                sum += term / (2.0 * n + 1.0);
            }
            2.0 / std::f64::consts::PI.sqrt() * sum
        } else {
            let mut fraction = 0.0;
            for k in (1..=60).rev() {
                fraction = (k as f64 / 2.0) / (a + fraction);
            }
            1.0 - (-a * a).exp() / std::f64::consts::PI.sqrt() / (a + fraction)
        };
        value.copysign(x)
    }
}
