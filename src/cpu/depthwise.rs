//! 3×3 depthwise convolution (one filter per channel, zero padding 1, stride 1 or 2) over NCHW
//! f32 values, with its bias and an activation, one channel plane per task. Burn's CPU backend
//! runs it as a general grouped convolution: 23 ms for one of TinyViT's full-resolution layers
//! (256 channels at 256×256, 0.7 G outputs/s), about as long as the 2 GFLOP product before it,
//! and then the GELU was another pass over memory.

use std::mem::MaybeUninit;

use super::{fill_uninit, write_chunks_in_parallel};
use super::gelu::gelu_on_this_thread;
use super::matmul::Activation;

/// The layer: `weights` holds 9 values per channel (row-major 3×3), `bias` one per channel.
pub struct Depthwise3x3<'a> {
    pub weights: &'a [f32],
    pub bias: Option<&'a [f32]>,
    pub stride: usize,
}

impl Depthwise3x3<'_> {
    /// Output side for an input side.
    pub fn output_side(&self, side: usize) -> usize {
        (side - 1) / self.stride + 1
    }

    fn check(&self, channels: usize, input: &[f32], shape: [usize; 4]) {
        assert!(self.stride == 1 || self.stride == 2, "stride 1 or 2");
        assert!(shape.iter().all(|&side| side > 0), "an empty input");
        assert_eq!(input.len(), shape.iter().product::<usize>(), "input shape");
        assert_eq!(self.weights.len(), channels * 9, "3×3 weights per channel");
        assert!(self.bias.is_none_or(|b| b.len() == channels), "one bias per channel");
    }
}

/// `activation(conv(x) + bias)` for `x` of shape `[batch, channels, height, width]`; returns the
/// output values, `[batch, channels, output_side(height), output_side(width)]`.
pub fn depthwise_3x3(x: &[f32], shape: [usize; 4], layer: &Depthwise3x3, activation: Activation) -> Vec<f32> {
    let [batch, channels, height, width] = shape;
    layer.check(channels, x, shape);
    let (out_height, out_width) = (layer.output_side(height), layer.output_side(width));
    let plane = |(index, out): (usize, &mut [MaybeUninit<f32>])| {
        let channel = index % channels;
        let input = &x[index * height * width..][..height * width];
        let weights: &[f32; 9] = layer.weights[channel * 9..][..9].try_into().expect("9 weights");
        let bias = layer.bias.map_or(0.0, |b| b[channel]);
        convolve_plane(Plane { input, height, width, weights, bias, stride: layer.stride, activation, out });
    };
    // SAFETY: `convolve_plane` writes every row of its plane.
    unsafe { write_chunks_in_parallel(batch * channels * out_height * out_width, out_height * out_width, plane) }
}

/// One channel plane: the input, its filter, bias and activation, and the output plane to write.
struct Plane<'a> {
    input: &'a [f32],
    height: usize,
    width: usize,
    weights: &'a [f32; 9],
    bias: f32,
    stride: usize,
    activation: Activation,
    out: &'a mut [MaybeUninit<f32>],
}

widest_vectors! {
    fn convolve_plane(plane: Plane) = convolve_plane_portable
}

/// Each output row starts at the bias, takes the three input rows its filter covers (rows
/// outside the image are the zero padding, so they are skipped), and is activated while in cache.
#[inline(always)]
fn convolve_plane_portable(plane: Plane) {
    let Plane { input, height, width, weights, bias, stride, activation, out } = plane;
    let out_width = (width - 1) / stride + 1;
    for (y, out_row) in out.chunks_mut(out_width).enumerate() {
        let out_row = fill_uninit(out_row, bias);
        for (ky, taps) in weights.chunks_exact(3).enumerate() {
            let Some(source) = (y * stride + ky).checked_sub(1).filter(|&row| row < height) else { continue };
            let row = &input[source * width..][..width];
            let taps = [taps[0], taps[1], taps[2]];
            if stride == 1 {
                add_row_stride_1(out_row, row, taps);
            } else {
                add_row_strided(out_row, row, taps, stride);
            }
        }
        if activation == Activation::Gelu {
            gelu_on_this_thread(out_row);
        }
    }
}

/// `out[x] += t0·row[x−1] + t1·row[x] + t2·row[x+1]`, the ends padded with zeros. The interior
/// is one loop over aligned slices, which the compiler vectorises.
#[inline(always)]
fn add_row_stride_1(out: &mut [f32], row: &[f32], [t0, t1, t2]: [f32; 3]) {
    let width = row.len();
    if width == 1 {
        out[0] += t1 * row[0];
        return;
    }
    out[0] += t1 * row[0] + t2 * row[1];
    let interior = out[1..width - 1].iter_mut().zip(&row[..width - 2]).zip(&row[1..width - 1]).zip(&row[2..]);
    for (((o, left), centre), right) in interior {
        *o += t0 * left + t1 * centre + t2 * right;
    }
    out[width - 1] += t0 * row[width - 2] + t1 * row[width - 1];
}

/// [`add_row_stride_1`] for a stride above 1 (the downsampling layers, a quarter of the outputs).
#[inline(always)]
fn add_row_strided(out: &mut [f32], row: &[f32], [t0, t1, t2]: [f32; 3], stride: usize) {
    for (x, o) in out.iter_mut().enumerate() {
        let centre = x * stride;
        let left = if centre > 0 { row[centre - 1] } else { 0.0 };
        let right = row.get(centre + 1).copied().unwrap_or(0.0);
        *o += t0 * left + t1 * row[centre] + t2 * right;
    }
}

/// [`depthwise_3x3`] for channels-last values, `[batch, height, width, channels]` (TinyViT's
/// tokens, which would otherwise be transposed to channels-first and back around the layer):
/// each output pixel starts at the bias and adds its taps' pixels, all channels at once.
pub fn depthwise_3x3_channels_last(x: &[f32], shape: [usize; 4], layer: &Depthwise3x3, activation: Activation) -> Vec<f32> {
    let [batch, height, width, channels] = shape;
    layer.check(channels, x, shape);
    let (out_height, out_width) = (layer.output_side(height), layer.output_side(width));
    // Tap-major weights, `[9][channels]`, so each tap is one contiguous multiplier per channel.
    let taps: Vec<f32> = (0..9).flat_map(|tap| (0..channels).map(move |c| layer.weights[c * 9 + tap])).collect();
    let zeros = vec![0.0; channels];
    let bias = layer.bias.unwrap_or(&zeros);
    let row = |(index, out): (usize, &mut [MaybeUninit<f32>])| {
        let (image, y) = (index / out_height, index % out_height);
        let input = &x[image * height * width * channels..][..height * width * channels];
        convolve_row_channels_last(ChannelsLastRow { input, height, width, channels, taps: &taps, bias, stride: layer.stride, y, activation, out });
    };
    // SAFETY: `convolve_row_channels_last` writes every pixel of its row (each starts at the bias).
    unsafe { write_chunks_in_parallel(batch * out_height * out_width * channels, out_width * channels, row) }
}

/// One output row of [`depthwise_3x3_channels_last`].
struct ChannelsLastRow<'a> {
    input: &'a [f32],
    height: usize,
    width: usize,
    channels: usize,
    taps: &'a [f32],
    bias: &'a [f32],
    stride: usize,
    y: usize,
    activation: Activation,
    out: &'a mut [MaybeUninit<f32>],
}

widest_vectors! {
    fn convolve_row_channels_last(row: ChannelsLastRow) = convolve_row_channels_last_portable
}

#[inline(always)]
fn convolve_row_channels_last_portable(row: ChannelsLastRow) {
    let ChannelsLastRow { input, height, width, channels, taps, bias, stride, y, activation, out } = row;
    let inside = |centre: usize, offset: usize, limit: usize| (centre + offset).checked_sub(1).filter(|&i| i < limit);
    for (x, slots) in out.chunks_mut(channels).enumerate() {
        let pixel = slots.write_copy_of_slice(bias);
        for ky in 0..3 {
            let Some(source_y) = inside(y * stride, ky, height) else { continue };
            for kx in 0..3 {
                let Some(source_x) = inside(x * stride, kx, width) else { continue };
                let source = &input[(source_y * width + source_x) * channels..][..channels];
                let weights = &taps[(ky * 3 + kx) * channels..][..channels];
                for ((o, &s), &w) in pixel.iter_mut().zip(source).zip(weights) {
                    *o += w * s;
                }
            }
        }
        if activation == Activation::Gelu {
            gelu_on_this_thread(pixel);
        }
    }
}
