//! Layer norm over the channels of each pixel of an NCHW tensor (`LayerNorm2d`), then an
//! activation, in blocks of pixels whose channels stay in cache: the mean, the variance and the
//! normalised values are three passes over a block instead of Burn's nine over the tensor.

use std::mem::MaybeUninit;

use super::gelu::gelu_on_this_thread;
use super::matmul::Activation;
use super::{run_tasks, SharedOutput};

/// Pixels per task.
const PIXEL_BLOCK: usize = 256;

/// The norm's parameters: one scale and shift per channel.
pub struct ChannelNorm<'a> {
    pub gamma: &'a [f32],
    pub beta: &'a [f32],
    pub epsilon: f32,
}

/// `activation((x − mean) / √(variance + ε) · γ + β)`, the statistics over the channels of each
/// pixel, for `x` of shape `[batch, channels, pixels]`.
pub fn layer_norm_over_channels(x: &[f32], shape: [usize; 3], norm: &ChannelNorm, activation: Activation) -> Vec<f32> {
    let [batch, channels, pixels] = shape;
    assert_eq!(x.len(), batch * channels * pixels, "input shape");
    assert!(norm.gamma.len() == channels && norm.beta.len() == channels, "one scale and shift per channel");
    let mut out = Vec::with_capacity(x.len());
    let target = SharedOutput(out.as_mut_ptr());
    let blocks = pixels.div_ceil(PIXEL_BLOCK);
    let task = |index: usize| {
        let (image, first) = (index / blocks, index % blocks * PIXEL_BLOCK);
        let count = PIXEL_BLOCK.min(pixels - first);
        let offset = image * channels * pixels + first;
        normalise_block(Block { x: &x[offset..], pixels, channels, count, norm, activation, out: target, offset });
    };
    run_tasks(batch * blocks, || (), |_, index| task(index));
    // SAFETY: the blocks cover every pixel of every image, and each wrote all its channels.
    unsafe { out.set_len(x.len()) };
    out
}

/// `count` pixels of one image: channel `c` of pixel `p` is `x[c·pixels + p]`, written to the
/// output at the same place after `offset`.
struct Block<'a> {
    x: &'a [f32],
    pixels: usize,
    channels: usize,
    count: usize,
    norm: &'a ChannelNorm<'a>,
    activation: Activation,
    out: SharedOutput,
    offset: usize,
}

widest_vectors! {
    fn normalise_block(block: Block) = normalise_block_portable
}

#[inline(always)]
fn normalise_block_portable(block: Block) {
    let Block { x, pixels, channels, count, norm, activation, out, offset } = block;
    let row = |c: usize| &x[c * pixels..][..count];
    let mut mean = [0.0f32; PIXEL_BLOCK];
    let mut variance = [0.0f32; PIXEL_BLOCK];
    let (mean, variance) = (&mut mean[..count], &mut variance[..count]);
    for c in 0..channels {
        mean.iter_mut().zip(row(c)).for_each(|(m, &v)| *m += v);
    }
    mean.iter_mut().for_each(|m| *m /= channels as f32);
    for c in 0..channels {
        variance.iter_mut().zip(row(c)).zip(&*mean).for_each(|((s, &v), &m)| *s += (v - m) * (v - m));
    }
    // From here `variance` holds 1/√(variance + ε).
    variance.iter_mut().for_each(|s| *s = 1.0 / (*s / channels as f32 + norm.epsilon).sqrt());
    for c in 0..channels {
        // SAFETY: this block's pixels of channel c lie inside the output, and only this task
        // writes them; they are read as values once written.
        let slots = unsafe { std::slice::from_raw_parts_mut(out.at(offset + c * pixels).cast::<MaybeUninit<f32>>(), count) };
        let (gamma, beta) = (norm.gamma[c], norm.beta[c]);
        for (((slot, &v), &m), &r) in slots.iter_mut().zip(row(c)).zip(&*mean).zip(&*variance) {
            slot.write((v - m) * r * gamma + beta);
        }
        if activation == Activation::Gelu {
            gelu_on_this_thread(unsafe { std::slice::from_raw_parts_mut(out.at(offset + c * pixels), count) });
        }
    }
}
