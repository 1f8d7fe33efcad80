//! CPU kernels for the models, for f32 tensors on Burn's CPU backend without autodiff
//! (elsewhere — the GPU, training — the callers use Burn's ops). Burn-flex 0.22.1 zero-fills every
//! matmul output buffer and then copies it whole to realign it (`FlexTensor::empty`), and
//! `into_data` copies a shared tensor's values out and again to realign them; `perf` put those
//! copies at ~16 % of the image encoder's time. Here `gemm`, the crate Burn's CPU matmul calls,
//! writes into buffers of our own and reads its operands in place.

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

/// A linear layer, `x·W + b` over the last axis. On the CPU one `gemm` call writes the product
/// onto the bias (Burn's adds it in another pass over the output); elsewhere, Burn's.
pub fn linear<const D: usize>(layer: &Linear, x: Tensor<D>) -> Tensor<D> {
    let weight = layer.weight.val();
    if !on_plain_cpu(&x) || !on_plain_cpu(&weight) || !bias_on_plain_cpu(&layer.bias) {
        return layer.forward(x);
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

/// A row-major matrix.
pub struct Operand<'a> {
    pub values: &'a [f32],
    pub rows: usize,
    pub columns: usize,
}

/// A bias added to every row (one value per column) or to every column (one per row).
pub enum Bias<'a> {
    PerColumn(&'a [f32]),
    PerRow(&'a [f32]),
}

/// `lhs · rhs + bias`, row-major, computed by `gemm` straight into the returned buffer.
pub fn matmul_onto_bias(lhs: Operand, rhs: Operand, bias: Option<Bias>) -> Vec<f32> {
    let (m, k, n) = (lhs.rows, lhs.columns, rhs.columns);
    assert_eq!(k, rhs.rows, "inner dimensions");
    assert!(lhs.values.len() >= m * k && rhs.values.len() >= k * n, "operands shorter than their shapes");
    let mut out = Vec::with_capacity(m * n);
    match bias {
        Some(Bias::PerColumn(b)) => {
            assert_eq!(b.len(), n, "bias length");
            (0..m).for_each(|_| out.extend_from_slice(b));
        }
        Some(Bias::PerRow(b)) => {
            assert_eq!(b.len(), m, "bias length");
            b.iter().for_each(|&v| out.resize(out.len() + n, v));
        }
        None => out.resize(m * n, 0.0),
    }
    // As Burn's CPU matmul: split over the threads from this size on.
    #[cfg(not(target_arch = "wasm32"))]
    let parallelism = if m * n * k >= 192 * 192 * 192 { gemm::Parallelism::Rayon(0) } else { gemm::Parallelism::None };
    #[cfg(target_arch = "wasm32")]
    let parallelism = gemm::Parallelism::None;
    // SAFETY: the three buffers hold `m×n`, `m×k` and `k×n` values (checked above), and the
    // strides describe them row-major.
    unsafe {
        gemm::gemm(
            m, n, k,
            out.as_mut_ptr(), 1, n as isize, true,
            lhs.values.as_ptr(), 1, k as isize,
            rhs.values.as_ptr(), 1, n as isize,
            1.0, 1.0, false, false, false,
            parallelism,
        );
    }
    out
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
