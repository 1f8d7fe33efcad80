//! TinyViT-5M image encoder as LiteMedSAM configures it (`tiny_vit_sam.py`): 256×256 RGB in,
//! 256×64×64 embedding out.
//!
//! Every `Conv2d_BN` of the reference is a plain convolution with bias here: the batch norm is
//! folded into the convolution when the weights are converted (`weights::litemedsam`), which
//! removes ~30 normalisation passes over full-resolution feature maps.

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::softmax;
use burn::tensor::ops::PadMode;
use burn::tensor::{Device, Int, Tensor, TensorData};

use super::common::{depthwise, depthwise_3x3_on_plain_cpu, pointwise, with_depthwise_3x3, LayerNorm2d};
use crate::cpu::{attention, depthwise_3x3_channels_last, gelu, linear, linear_then, on_plain_cpu, Activation, AttentionShape, CpuValues, HeadLayout, HeadOperand};

/// Shape of the encoder. `Default` is LiteMedSAM's TinyViT-5M.
#[derive(Debug, Clone)]
pub struct TinyVitConfig {
    pub image_size: usize,
    pub embed_dims: [usize; 4],
    pub depths: [usize; 4],
    pub num_heads: [usize; 4],
    pub window_sizes: [usize; 4],
    pub mlp_ratio: usize,
    pub mbconv_expand_ratio: usize,
    pub out_channels: usize,
}

impl Default for TinyVitConfig {
    fn default() -> Self {
        Self {
            image_size: 256,
            embed_dims: [64, 128, 160, 320],
            depths: [2, 2, 6, 2],
            num_heads: [2, 4, 5, 10],
            window_sizes: [7, 7, 14, 7],
            mlp_ratio: 4,
            mbconv_expand_ratio: 4,
            out_channels: 256,
        }
    }
}

impl TinyVitConfig {
    /// Side of the feature map entering stage `i`. LiteMedSAM keeps full resolution in the
    /// patch embedding, halves it twice, and does not downsample into the last stage.
    fn stage_resolution(&self, stage: usize) -> usize {
        let halvings = if stage == 3 { 2 } else { stage };
        self.image_size >> halvings
    }

    pub fn embedding_size(&self) -> usize {
        self.stage_resolution(3)
    }

    pub fn init(&self, device: &Device) -> TinyVit {
        let dims = self.embed_dims;
        let patch_embed = PatchEmbed {
            conv1: conv(3, dims[0] / 2, 1, 1, 1, device),
            conv2: conv(dims[0] / 2, dims[0], 1, 1, 1, device),
        };
        let conv_stage = ConvStage {
            blocks: (0..self.depths[0])
                .map(|_| MbConv::new(dims[0], dims[0] * self.mbconv_expand_ratio, device))
                .collect(),
            downsample: PatchMerging::new(dims[0], dims[1], 2, device),
        };
        let attention_stages = (1..4)
            .map(|stage| {
                let dim = dims[stage];
                let blocks = (0..self.depths[stage])
                    .map(|_| {
                        TinyVitBlock::new(
                            dim,
                            self.num_heads[stage],
                            self.window_sizes[stage],
                            self.mlp_ratio,
                            self.stage_resolution(stage),
                            device,
                        )
                    })
                    .collect();
                // The last merge keeps the 64×64 grid (the reference hard-codes stride 1 for 320 channels).
                let downsample = (stage < 3).then(|| {
                    let stride = if stage == 2 { 1 } else { 2 };
                    PatchMerging::new(dim, dims[stage + 1], stride, device)
                });
                AttentionStage { blocks, downsample, resolution: self.stage_resolution(stage) }
            })
            .collect();
        let out = self.out_channels;
        TinyVit {
            patch_embed,
            conv_stage,
            attention_stages,
            neck_conv1: Conv2dConfig::new([dims[3], out], [1, 1]).with_bias(false).init(device),
            neck_norm1: LayerNorm2d::new(out, device),
            neck_conv2: Conv2dConfig::new([out, out], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .with_bias(false)
                .init(device),
            neck_norm2: LayerNorm2d::new(out, device),
            embedding_size: self.embedding_size(),
        }
    }
}

/// A convolution whose batch norm has been folded in (bias always present).
fn conv(c_in: usize, c_out: usize, kernel: usize, stride: usize, groups: usize, device: &Device) -> Conv2d {
    let pad = kernel / 2;
    Conv2dConfig::new([c_in, c_out], [kernel, kernel])
        .with_stride([stride, stride])
        .with_groups(groups)
        .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
        .init(device)
}

#[derive(Module, Debug)]
pub struct TinyVit {
    pub patch_embed: PatchEmbed,
    pub conv_stage: ConvStage,
    pub attention_stages: Vec<AttentionStage>,
    pub neck_conv1: Conv2d,
    pub neck_norm1: LayerNorm2d,
    pub neck_conv2: Conv2d,
    pub neck_norm2: LayerNorm2d,
    pub embedding_size: usize,
}

impl TinyVit {
    /// `image`: `[B, 3, 256, 256]`, normalised to [0, 1]. Returns `[B, 256, 64, 64]`.
    pub fn forward(&self, image: Tensor<4>) -> Tensor<4> {
        let x = self.patch_embed.forward(image);
        let mut tokens = self.conv_stage.forward(x);
        for stage in &self.attention_stages {
            tokens = stage.forward(tokens);
        }
        let [batch, _, channels] = tokens.dims();
        let side = self.embedding_size;
        let x = tokens.reshape([batch, side, side, channels]).permute([0, 3, 1, 2]);
        let x = self.neck_norm1.forward(pointwise(&self.neck_conv1, x, Activation::Identity));
        self.neck_norm2.forward(self.neck_conv2.forward(x))
    }
}

#[derive(Module, Debug)]
pub struct PatchEmbed {
    pub conv1: Conv2d,
    pub conv2: Conv2d,
}

impl PatchEmbed {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        pointwise(&self.conv2, pointwise(&self.conv1, x, Activation::Gelu), Activation::Identity)
    }
}

/// Inverted residual block (MobileNetV2 style) of the first, convolution-only stage.
#[derive(Module, Debug)]
pub struct MbConv {
    pub conv1: Conv2d,
    pub conv2: Conv2d,
    pub conv3: Conv2d,
}

impl MbConv {
    fn new(channels: usize, hidden: usize, device: &Device) -> Self {
        Self {
            conv1: conv(channels, hidden, 1, 1, 1, device),
            conv2: conv(hidden, hidden, 3, 1, hidden, device),
            conv3: conv(hidden, channels, 1, 1, 1, device),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let h = pointwise(&self.conv1, x.clone(), Activation::Gelu);
        let h = depthwise(&self.conv2, h, Activation::Gelu);
        gelu(pointwise(&self.conv3, h, Activation::Identity) + x)
    }
}

/// Pointwise → depthwise (strided) → pointwise convolutions; returns tokens `[B, H*W, C]`.
#[derive(Module, Debug)]
pub struct PatchMerging {
    pub conv1: Conv2d,
    pub conv2: Conv2d,
    pub conv3: Conv2d,
}

impl PatchMerging {
    fn new(dim: usize, out_dim: usize, stride: usize, device: &Device) -> Self {
        Self {
            conv1: conv(dim, out_dim, 1, 1, 1, device),
            conv2: conv(out_dim, out_dim, 3, stride, out_dim, device),
            conv3: conv(out_dim, out_dim, 1, 1, 1, device),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<3> {
        let x = pointwise(&self.conv1, x, Activation::Gelu);
        let x = depthwise(&self.conv2, x, Activation::Gelu);
        let x = pointwise(&self.conv3, x, Activation::Identity);
        let [batch, channels, h, w] = x.dims();
        x.reshape([batch, channels, h * w]).swap_dims(1, 2)
    }
}

#[derive(Module, Debug)]
pub struct ConvStage {
    pub blocks: Vec<MbConv>,
    pub downsample: PatchMerging,
}

impl ConvStage {
    fn forward(&self, mut x: Tensor<4>) -> Tensor<3> {
        for block in &self.blocks {
            x = block.forward(x);
        }
        self.downsample.forward(x)
    }
}

#[derive(Module, Debug)]
pub struct AttentionStage {
    pub blocks: Vec<TinyVitBlock>,
    pub downsample: Option<PatchMerging>,
    pub resolution: usize,
}

impl AttentionStage {
    fn forward(&self, mut tokens: Tensor<3>) -> Tensor<3> {
        for block in &self.blocks {
            tokens = block.forward(tokens);
        }
        match &self.downsample {
            Some(merge) => {
                let [batch, _, channels] = tokens.dims();
                let side = self.resolution;
                let x = tokens.reshape([batch, side, side, channels]).permute([0, 3, 1, 2]);
                merge.forward(x)
            }
            None => tokens,
        }
    }
}

/// Window attention with LeViT-style learned relative-position biases.
#[derive(Module, Debug)]
pub struct WindowAttention {
    pub norm: LayerNorm,
    pub qkv: Linear,
    pub proj: Linear,
    /// `[heads, distinct offsets]`, gathered into `[heads, N, N]` through `bias_index`.
    pub attention_biases: Param<Tensor<2>>,
    /// A constant (not in the record); it moves with `to_device`.
    bias_index: Tensor<1, Int>,
    pub num_heads: usize,
    pub window_size: usize,
}

impl WindowAttention {
    fn new(dim: usize, num_heads: usize, window_size: usize, device: &Device) -> Self {
        let (num_offsets, index) = relative_offset_index(window_size);
        let n = window_size * window_size;
        Self {
            norm: LayerNormConfig::new(dim).init(device),
            qkv: LinearConfig::new(dim, 3 * dim).init(device),
            proj: LinearConfig::new(dim, dim).init(device),
            attention_biases: Param::from_tensor(Tensor::zeros([num_heads, num_offsets], device)),
            bias_index: Tensor::from_data(TensorData::new(index, [n * n]), device),
            num_heads,
            window_size,
        }
    }

    /// `x`: `[windows, N, C]` with `N = window_size²`.
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [windows, n, channels] = x.dims();
        let heads = self.num_heads;
        let head_dim = channels / heads;
        // The reference lays q, k, v out per head: [head][q | k | v].
        let qkv = linear(&self.qkv, self.norm.forward(x));
        let bias = self.attention_biases.val().select(1, self.bias_index.clone()).reshape([heads, n, n]);
        let scale = (head_dim as f64).powf(-0.5);
        let shape = WindowShape { windows, tokens: n, heads, head_dim };
        let out = if on_plain_cpu(&qkv) && on_plain_cpu(&bias) {
            let out = window_attention_cpu(CpuValues::of(qkv).as_slice(), CpuValues::of(bias).as_slice(), scale as f32, shape);
            Tensor::from_data(TensorData::new(out, [windows, n, channels]), &self.bias_index.device())
        } else {
            window_attention(qkv, bias, scale, shape)
        };
        linear(&self.proj, out)
    }
}

/// `softmax(q·kᵀ·scale + bias)·v` per window and head, from `qkv` (`[windows, N, heads·(q|k|v)]`)
/// and the gathered position biases (`[heads, N, N]`) to `[windows, N, heads·head_dim]`.
fn window_attention(qkv: Tensor<3>, bias: Tensor<3>, scale: f64, shape: WindowShape) -> Tensor<3> {
    let WindowShape { windows, tokens: n, heads, head_dim } = shape;
    let qkv = qkv.reshape([windows, n, heads, 3 * head_dim]).swap_dims(1, 2);
    let q = qkv.clone().narrow(3, 0, head_dim);
    let k = qkv.clone().narrow(3, head_dim, head_dim);
    let v = qkv.narrow(3, 2 * head_dim, head_dim);
    let scores = q.matmul(k.swap_dims(2, 3)) * scale + bias.unsqueeze();
    softmax(scores, 3).matmul(v).swap_dims(1, 2).reshape([windows, n, heads * head_dim])
}

#[derive(Debug, Clone, Copy)]
struct WindowShape {
    windows: usize,
    tokens: usize,
    heads: usize,
    head_dim: usize,
}

/// [`window_attention`] on the CPU ([`attention`]): each window is a batch, and q, k and v are
/// read where the projection put them, `[head][q | k | v]` in every token's row.
fn window_attention_cpu(qkv: &[f32], bias: &[f32], scale: f32, shape: WindowShape) -> Vec<f32> {
    let WindowShape { windows, tokens, heads, head_dim } = shape;
    let operand = |part: usize| HeadOperand {
        values: qkv,
        layout: HeadLayout { first: part * head_dim, head_stride: 3 * head_dim, row_stride: 3 * heads * head_dim },
    };
    let shape = AttentionShape { batches: windows, queries: tokens, keys: tokens, heads, head_dim };
    attention(operand(0), operand(1), operand(2), Some(bias), scale, shape)
}

/// For every pair of cells in a `w×w` window, the index of their (|dy|, |dx|) offset, numbered
/// in first-seen order exactly as `itertools.product` walks them in the reference.
fn relative_offset_index(window: usize) -> (usize, Vec<i32>) {
    let points: Vec<(usize, usize)> =
        (0..window).flat_map(|y| (0..window).map(move |x| (y, x))).collect();
    let mut offsets: Vec<(usize, usize)> = Vec::new();
    let mut index = Vec::with_capacity(points.len() * points.len());
    for p1 in &points {
        for p2 in &points {
            let offset = (p1.0.abs_diff(p2.0), p1.1.abs_diff(p2.1));
            let id = match offsets.iter().position(|o| *o == offset) {
                Some(id) => id,
                None => {
                    offsets.push(offset);
                    offsets.len() - 1
                }
            };
            index.push(id as i32);
        }
    }
    (offsets.len(), index)
}

#[derive(Module, Debug)]
pub struct TinyVitMlp {
    pub norm: LayerNorm,
    pub fc1: Linear,
    pub fc2: Linear,
}

impl TinyVitMlp {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        linear(&self.fc2, linear_then(&self.fc1, self.norm.forward(x), Activation::Gelu))
    }
}

#[derive(Module, Debug)]
pub struct TinyVitBlock {
    pub attn: WindowAttention,
    pub mlp: TinyVitMlp,
    pub local_conv: Conv2d,
    pub resolution: usize,
}

impl TinyVitBlock {
    fn new(dim: usize, heads: usize, window: usize, mlp_ratio: usize, resolution: usize, device: &Device) -> Self {
        Self {
            attn: WindowAttention::new(dim, heads, window, device),
            mlp: TinyVitMlp {
                norm: LayerNormConfig::new(dim).init(device),
                fc1: LinearConfig::new(dim, dim * mlp_ratio).init(device),
                fc2: LinearConfig::new(dim * mlp_ratio, dim).init(device),
            },
            local_conv: conv(dim, dim, 3, 1, dim, device),
            resolution,
        }
    }

    /// `x`: `[B, H*W, C]`.
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [batch, _, channels] = x.dims();
        let grid = WindowGrid { batch, side: self.resolution, window: self.attn.window_size, channels };
        let attended = grid.merge(self.attn.forward(grid.partition(x.clone())));
        let x = self.convolve_locally(x + attended);
        x.clone() + self.mlp.forward(x)
    }

    /// The depthwise `local_conv` over the token grid `[B, side², C]`: on the CPU straight on the
    /// tokens (channels-last); elsewhere Burn's convolution, channels-first.
    fn convolve_locally(&self, x: Tensor<3>) -> Tensor<3> {
        if depthwise_3x3_on_plain_cpu(&self.local_conv, x.dims()[2]) && on_plain_cpu(&x) {
            self.convolve_locally_on_the_cpu(x)
        } else {
            self.convolve_locally_with_burn_ops(x)
        }
    }

    fn convolve_locally_on_the_cpu(&self, x: Tensor<3>) -> Tensor<3> {
        let ([batch, _, channels], side, device) = (x.dims(), self.resolution, x.device());
        let input = CpuValues::of(x);
        with_depthwise_3x3(&self.local_conv, |layer| {
            let out = depthwise_3x3_channels_last(input.as_slice(), [batch, side, side, channels], layer, Activation::Identity);
            let out_side = layer.output_side(side);
            Tensor::from_data(TensorData::new(out, [batch, out_side * out_side, channels]), &device)
        })
    }

    fn convolve_locally_with_burn_ops(&self, x: Tensor<3>) -> Tensor<3> {
        let ([batch, len, channels], side) = (x.dims(), self.resolution);
        let spatial = x.swap_dims(1, 2).reshape([batch, channels, side, side]);
        self.local_conv.forward(spatial).reshape([batch, channels, len]).swap_dims(1, 2)
    }
}

/// A `side × side` token grid cut into `window × window` windows, zero-padded at the bottom and
/// right to whole windows.
struct WindowGrid {
    batch: usize,
    side: usize,
    window: usize,
    channels: usize,
}

impl WindowGrid {
    fn per_side(&self) -> usize {
        self.side.div_ceil(self.window)
    }

    /// `[B, side², C]` → `[B·windows, window², C]`.
    fn partition(&self, x: Tensor<3>) -> Tensor<3> {
        if on_plain_cpu(&x) { self.partition_on_the_cpu(x) } else { self.partition_with_burn_ops(x) }
    }

    /// The inverse of [`Self::partition`], dropping the padding.
    fn merge(&self, windows: Tensor<3>) -> Tensor<3> {
        if on_plain_cpu(&windows) { self.merge_on_the_cpu(windows) } else { self.merge_with_burn_ops(windows) }
    }

    fn windows_shape(&self) -> [usize; 3] {
        [self.batch * self.per_side() * self.per_side(), self.window * self.window, self.channels]
    }

    fn tokens_shape(&self) -> [usize; 3] {
        [self.batch, self.side * self.side, self.channels]
    }

    /// One copy per token, the padding left at zero: Burn's pad, window permute and reshape
    /// were three passes over the grid.
    fn partition_on_the_cpu(&self, x: Tensor<3>) -> Tensor<3> {
        let (shape, channels, device) = (self.windows_shape(), self.channels, x.device());
        let tokens = CpuValues::of(x);
        let mut windows = vec![0.0; shape.iter().product()];
        self.copy_tokens(|token, cell| windows[cell..][..channels].copy_from_slice(&tokens.as_slice()[token..][..channels]));
        Tensor::from_data(TensorData::new(windows, shape), &device)
    }

    fn merge_on_the_cpu(&self, windows: Tensor<3>) -> Tensor<3> {
        let (shape, channels, device) = (self.tokens_shape(), self.channels, windows.device());
        let cells = CpuValues::of(windows);
        let mut tokens = vec![0.0; shape.iter().product()];
        self.copy_tokens(|token, cell| tokens[token..][..channels].copy_from_slice(&cells.as_slice()[cell..][..channels]));
        Tensor::from_data(TensorData::new(tokens, shape), &device)
    }

    fn partition_with_burn_ops(&self, x: Tensor<3>) -> Tensor<3> {
        let Self { batch, side, window, channels } = *self;
        let (per_side, padded) = (self.per_side(), self.per_side() * window);
        let grid = x.reshape([batch, side, side, channels]);
        let grid = grid.pad([(0, padded - side), (0, padded - side), (0, 0)], PadMode::Constant(0.0));
        grid.reshape([batch, per_side, window, per_side, window, channels]).swap_dims(2, 3).reshape(self.windows_shape())
    }

    fn merge_with_burn_ops(&self, windows: Tensor<3>) -> Tensor<3> {
        let Self { batch, side, window, channels } = *self;
        let (per_side, padded) = (self.per_side(), self.per_side() * window);
        let grid = windows.reshape([batch, per_side, per_side, window, window, channels]).swap_dims(2, 3).reshape([batch, padded, padded, channels]);
        grid.slice([0..batch, 0..side, 0..side, 0..channels]).reshape(self.tokens_shape())
    }

    /// Calls `copy(token offset, window cell offset)` for every token of the grid: where its
    /// channels start in `[B, side², C]` and in `[B·windows, window², C]`.
    fn copy_tokens(&self, mut copy: impl FnMut(usize, usize)) {
        let Self { batch, side, window, channels } = *self;
        let per_side = self.per_side();
        for (b, y, x) in (0..batch).flat_map(|b| (0..side).flat_map(move |y| (0..side).map(move |x| (b, y, x)))) {
            let window_index = (b * per_side + y / window) * per_side + x / window;
            let cell = window_index * window * window + (y % window) * window + x % window;
            copy(((b * side + y) * side + x) * channels, cell * channels);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CPU window attention against the same attention in Burn's ops, on windows of two
    /// sizes with random values; a bias misplaced by one head or a key read from
    /// the value's columns would move it far beyond the bound.
    #[test]
    fn the_cpu_window_attention_equals_burns_ops() {
        let device = Device::flex();
        let normal = burn::tensor::Distribution::Normal(0.0, 1.0);
        for shape in [WindowShape { windows: 3, tokens: 49, heads: 2, head_dim: 8 }, WindowShape { windows: 2, tokens: 16, heads: 5, head_dim: 4 }] {
            let WindowShape { windows, tokens: n, heads, head_dim } = shape;
            let qkv = Tensor::<3>::random([windows, n, heads * 3 * head_dim], normal, &device);
            let bias = Tensor::<3>::random([heads, n, n], normal, &device);
            let scale = (head_dim as f64).powf(-0.5);
            let want = window_attention(qkv.clone(), bias.clone(), scale, shape).into_data().try_into_vec::<f32>().expect("f32");
            let got = window_attention_cpu(&qkv.into_data().try_into_vec::<f32>().expect("f32"), &bias.into_data().try_into_vec::<f32>().expect("f32"), scale as f32, shape);
            assert_eq!(got.len(), want.len());
            let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            assert!(worst < 1e-5, "max |Δ| {worst}");
        }
    }

    /// Window partition and merge on the CPU against Burn's pad and permutes, on a grid that
    /// needs padding, two images; and the merge undoes the partition.
    #[test]
    fn cpu_windows_equal_burns() {
        let device = Device::flex();
        let normal = burn::tensor::Distribution::Normal(0.0, 1.0);
        let grid = WindowGrid { batch: 2, side: 9, window: 4, channels: 3 };
        let x = Tensor::<3>::random(grid.tokens_shape(), normal, &device);
        let windows = grid.partition_on_the_cpu(x.clone());
        assert_eq!(windows.clone().into_data(), grid.partition_with_burn_ops(x.clone()).into_data());
        assert_eq!(grid.merge_on_the_cpu(windows.clone()).into_data(), x.into_data());
        let other = Tensor::<3>::random(grid.windows_shape(), normal, &device);
        assert_eq!(grid.merge_on_the_cpu(other.clone()).into_data(), grid.merge_with_burn_ops(other).into_data());
    }

    /// The channels-last local convolution against Burn's channels-first one.
    #[test]
    fn cpu_local_convolution_equals_burns() {
        let device = Device::flex();
        let normal = burn::tensor::Distribution::Normal(0.0, 1.0);
        let block = TinyVitBlock::new(10, 2, 3, 2, 7, &device);
        let local_conv = Conv2d { weight: block.local_conv.weight.map(|t| t.random_like(normal)), bias: block.local_conv.bias.map(|b| b.map(|t| t.random_like(normal))), ..block.local_conv };
        let block = TinyVitBlock { local_conv, ..block };
        let x = Tensor::<3>::random([2, 49, 10], normal, &device);
        let ours = block.convolve_locally_on_the_cpu(x.clone());
        let burns = block.convolve_locally_with_burn_ops(x);
        assert!(crate::cpu::tests::max_relative_difference(ours, burns) < 1e-5);
    }

    #[test]
    fn offset_index_matches_levit_enumeration() {
        // 2×2 window: offsets appear as (0,0), (0,1), (1,0), (1,1).
        let (count, index) = relative_offset_index(2);
        assert_eq!(count, 4);
        assert_eq!(index, vec![0, 1, 2, 3, 1, 0, 3, 2, 2, 3, 0, 1, 3, 2, 1, 0]);
        // A w×w window has w² distinct |offsets| (the checkpoint's bias tables: 49 and 196).
        assert_eq!(relative_offset_index(7).0, 49);
        assert_eq!(relative_offset_index(14).0, 196);
    }
}
