//! CPU kernels for the models, for f32 tensors on Burn's CPU backend without autodiff
//! (elsewhere — the GPU, training — the callers use Burn's ops). Burn-flex 0.22.1 zero-fills every
//! matmul output buffer and then copies it whole to realign it (`FlexTensor::empty`), and
//! `into_data` copies a shared tensor's values out and again to realign them; `perf` put those
//! copies at ~16 % of the image encoder's time. Here `gemm`, the crate Burn's CPU matmul calls,
//! writes into buffers of our own and reads its operands in place.

/// Defines `fn $name(args)`, which runs the `#[inline(always)]` function `$portable` compiled
/// for the widest vector unit this CPU has (AVX-512, AVX2, else the build's baseline), so the
/// loops the compiler vectorises in it use that width. The check is a cached flag.
macro_rules! widest_vectors {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),*) = $portable:ident) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                unsafe fn avx512f($($arg: $ty),*) {
                    $portable($($arg),*)
                }
                #[target_feature(enable = "avx2")]
                unsafe fn avx2($($arg: $ty),*) {
                    $portable($($arg),*)
                }
                // SAFETY (both): the features each is compiled for were just detected.
                if std::is_x86_feature_detected!("avx512f") {
                    return unsafe { avx512f($($arg),*) };
                }
                if std::is_x86_feature_detected!("avx2") {
                    return unsafe { avx2($($arg),*) };
                }
            }
            $portable($($arg),*)
        }
    };
}

mod attention;
mod conv_transpose;
mod depthwise;
mod gelu;
mod layer_norm;
mod matmul;
mod softmax;

pub use attention::{attention, AttentionShape, HeadLayout, HeadOperand};
pub use conv_transpose::conv_transpose_2x2;
pub use depthwise::{depthwise_3x3, depthwise_3x3_channels_last, Depthwise3x3};
pub use gelu::gelu;
pub use layer_norm::{layer_norm_over_channels, ChannelNorm};
pub use matmul::{matmul_onto_bias, Activation, Bias, Operand};
pub use softmax::softmax_rows;

use std::mem::MaybeUninit;

use burn::backend::flex::FlexTensor;
use burn::backend::Flex;
use burn::nn::Linear;
use burn::tensor::{DType, Device, Tensor, TensorData};

/// Whether `x` is an f32 tensor on Burn's CPU backend without autodiff: where this module's own
/// CPU kernels run instead of Burn's.
pub fn on_plain_cpu<const D: usize>(x: &Tensor<D>) -> bool {
    let device = x.device();
    device == Device::flex() && !device.is_autodiff() && x.dtype() == DType::F32
}

/// Whether a layer's bias, if it has one, can be read by this module's kernels (a differently
/// typed bias read as f32 would panic).
pub fn bias_on_plain_cpu(bias: &Option<burn::module::Param<Tensor<1>>>) -> bool {
    bias.as_ref().is_none_or(|b| on_plain_cpu(&b.val()))
}

/// A linear layer, `x·W + b` over the last axis. On the CPU `gemm` writes the product onto the
/// bias (Burn's adds it in another pass over the output); elsewhere, Burn's.
pub fn linear<const D: usize>(layer: &Linear, x: Tensor<D>) -> Tensor<D> {
    linear_then(layer, x, Activation::Identity)
}

/// `activation(x·W + b)`: [`linear`] with the activation applied to each output tile while it is
/// in cache (see [`matmul_onto_bias`]).
pub fn linear_then<const D: usize>(layer: &Linear, x: Tensor<D>, activation: Activation) -> Tensor<D> {
    let weight = layer.weight.val();
    if !on_plain_cpu(&x) || !on_plain_cpu(&weight) || !bias_on_plain_cpu(&layer.bias) {
        return activation.apply(layer.forward(x));
    }
    let device = x.device();
    let [d_in, d_out] = weight.dims();
    let mut dims = x.dims();
    let rows = dims[..D - 1].iter().product();
    dims[D - 1] = d_out;
    let (input, weight) = (CpuValues::of(x), CpuValues::of(weight));
    let bias = layer.bias.as_ref().map(|b| CpuValues::of(b.val()));
    let out = matmul_onto_bias(
        Operand { values: input.as_slice(), rows, columns: d_in },
        Operand { values: weight.as_slice(), rows: d_in, columns: d_out },
        bias.as_ref().map(|b| Bias::PerColumn(b.as_slice())),
        activation,
    );
    Tensor::from_data(TensorData::new(out, dims), &device)
}

/// An f32 tensor's values on the CPU backend in row-major order: read in place where the tensor
/// is contiguous — `into_data` copies a shared tensor's values (the weights; a residual's input)
/// out and then again to realign them — else gathered into a copy.
pub enum CpuValues {
    InPlace(FlexTensor),
    Gathered(TensorData),
}

impl CpuValues {
    pub fn of<const D: usize>(x: Tensor<D>) -> Self {
        let tensor = x.try_into_primitive::<Flex>().expect("on_plain_cpu checked the backend");
        if tensor.layout().contiguous_offsets().is_some() {
            Self::InPlace(tensor)
        } else {
            Self::Gathered(tensor.into_data())
        }
    }

    pub fn as_slice(&self) -> &[f32] {
        match self {
            Self::InPlace(tensor) => {
                let (start, end) = tensor.layout().contiguous_offsets().expect("checked in `of`");
                &tensor.storage::<f32>()[start..end]
            }
            Self::Gathered(data) => data.as_slice::<f32>().expect("f32 checked by on_plain_cpu"),
        }
    }
}

/// Writes `value` into every slot and returns them as initialised values: for output buffers
/// allocated without the zero-fill that would be a pass over memory of its own.
pub fn fill_uninit(slots: &mut [MaybeUninit<f32>], value: f32) -> &mut [f32] {
    slots.iter_mut().for_each(|slot| {
        slot.write(value);
    });
    // SAFETY: every slot was just written, and `MaybeUninit<f32>` has `f32`'s layout.
    unsafe { &mut *(slots as *mut [MaybeUninit<f32>] as *mut [f32]) }
}

/// A buffer of `total` values cut into chunks of `chunk` values (the last may be shorter), each
/// handed with its index to `write`, on the threads; without a zero-fill first.
///
/// # Safety
/// `write` initialises every value of each chunk it is given.
unsafe fn write_chunks_in_parallel(total: usize, chunk: usize, write: impl Fn((usize, &mut [MaybeUninit<f32>])) + Send + Sync) -> Vec<f32> {
    let mut out = Vec::with_capacity(total);
    let slots = &mut out.spare_capacity_mut()[..total];
    #[cfg(not(target_arch = "wasm32"))]
    {
        use rayon::prelude::*;
        slots.par_chunks_mut(chunk.max(1)).enumerate().for_each(write);
    }
    #[cfg(target_arch = "wasm32")]
    slots.chunks_mut(chunk.max(1)).enumerate().for_each(write);
    // SAFETY: the chunks cover the `total` values, and `write` initialised each (the caller's promise).
    unsafe { out.set_len(total) };
    out
}

/// Runs `task(scratch, index)` for every index below `count` on the threads (in turn on wasm,
/// which has one), each thread with scratch space of its own from `init`; a single task runs on
/// the calling thread.
fn run_tasks<S>(count: usize, init: impl Fn() -> S + Send + Sync, task: impl Fn(&mut S, usize) + Send + Sync) {
    #[cfg(not(target_arch = "wasm32"))]
    if count > 1 {
        use rayon::prelude::*;
        (0..count).into_par_iter().for_each_init(init, task);
        return;
    }
    let mut scratch = init();
    (0..count).for_each(|index| task(&mut scratch, index));
}

/// An output buffer that several threads write at once, each its own disjoint part (an
/// output tile, a head's columns of some rows): the kernels' callers guarantee the parts are
/// disjoint and inside the buffer.
#[derive(Clone, Copy)]
struct SharedOutput(*mut f32);
// SAFETY: see above; no two threads write the same value.
unsafe impl Send for SharedOutput {}
unsafe impl Sync for SharedOutput {}

impl SharedOutput {
    /// The address `count` values into the buffer (a method, so closures capture the whole
    /// `Sync` wrapper rather than its raw pointer).
    ///
    /// # Safety
    /// `count` is inside the buffer.
    unsafe fn at(self, count: usize) -> *mut f32 {
        unsafe { self.0.add(count) }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use burn::nn::LinearConfig;

    /// The largest difference between two tensors, relative to 1 + the larger value.
    pub(crate) fn max_relative_difference<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
        assert_eq!(a.dims(), b.dims());
        ((a.clone() - b.clone()).abs() / (a.abs().max_pair(b.abs()) + 1.0)).max().into_scalar::<f32>()
    }

    /// The CPU `linear` against Burn's: with and without a bias, on a tensor of its own, a shared
    /// one, and a strided view (read through a copy).
    #[test]
    fn linear_on_the_cpu_equals_burns() {
        let device = Device::flex();
        let normal = burn::tensor::Distribution::Normal(0.0, 1.0);
        for bias in [true, false] {
            let layer = LinearConfig::new(70, 33).with_bias(bias).init(&device);
            let layer = Linear { bias: layer.bias.map(|b| b.map(|t| t.random_like(normal))), ..layer };
            let x = Tensor::<3>::random([3, 50, 70], normal, &device);
            let shared = x.clone();
            assert!(max_relative_difference(linear(&layer, x.clone()), layer.forward(x.clone())) < 1e-5);
            let strided = Tensor::<3>::random([3, 70, 50], normal, &device).swap_dims(1, 2);
            assert!(max_relative_difference(linear(&layer, strided.clone()), layer.forward(strided)) < 1e-5);
            assert_eq!(shared.into_data(), x.into_data(), "the input is left as it was");
        }
    }
}
