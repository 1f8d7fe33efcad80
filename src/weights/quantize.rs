//! Block quantisation of weight matrices and convolution kernels.
//!
//! Blocks run along the input (reduction) axis, so every block belongs to one output channel:
//! after batch-norm folding the output channels of a convolution differ in scale by orders of
//! magnitude, and a block spanning several of them loses the small ones. Burn's block schemes
//! need every dimension to divide evenly, so `Linear` (`[in, out]`) uses `[32, 1]`, `Conv2d`
//! (`[out, in, kh, kw]`) `[1, 32, 1, 1]`, `ConvTranspose2d` (`[in, out, kh, kw]`) `[32, 1, 1, 1]`.
//! Kernels without 32 input channels (depthwise 3×3 and the 3-channel stem; ~1 % of the weights)
//! stay f32, as do norms, biases and embeddings.

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::quantization::{compute_q_params, compute_range, Calibration, QuantScheme, QuantValue, ScaleDtype};
use burn::tensor::Tensor;

pub const BLOCK: usize = 32;

/// A quantisation format for weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightFormat {
    /// Symmetric int8, one f16 scale per block of 32 (weights are expanded to f32 on the CPU
    /// at load, so no GPU ever needs `shader-f16` for them).
    Q8Block32,
}

impl WeightFormat {
    fn scheme(self, block: &[u8]) -> QuantScheme {
        match self {
            WeightFormat::Q8Block32 => QuantScheme::default().with_value(QuantValue::Q8S).per_block(block, ScaleDtype::F16),
        }
    }
}

struct BlockQuantizer<'a> {
    format: WeightFormat,
    /// Path prefixes (`a.b.c`) whose weights stay f32.
    keep_f32: &'a [&'a str],
    path: Vec<String>,
    /// `Struct:<Type>` of the module owning each path element.
    containers: Vec<String>,
    quantized: usize,
    kept: Vec<String>,
}

impl BlockQuantizer<'_> {
    /// Block shape for the `weight` of a `module` type with this shape, or `None` if its input
    /// axis can't be blocked evenly.
    fn block_for(module: &str, dims: &[usize]) -> Option<Vec<u8>> {
        let b = BLOCK as u8;
        match (module, dims) {
            ("Linear", [input, _]) if input % BLOCK == 0 => Some(vec![b, 1]),
            ("Conv2d", [_, input, _, _]) if input % BLOCK == 0 => Some(vec![1, b, 1, 1]),
            ("ConvTranspose2d", [input, _, _, _]) if input % BLOCK == 0 => Some(vec![b, 1, 1, 1]),
            _ => None,
        }
    }
}

impl ModuleMapper for BlockQuantizer<'_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.push(name.to_string());
        self.containers.push(container_type.trim_start_matches("Struct:").to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
        self.containers.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if self.path.last().map(String::as_str) != Some("weight") {
            return param;
        }
        let dims = param.dims();
        let module = self.containers.last().map(String::as_str).unwrap_or_default();
        let path = self.path.join(".");
        let excluded = self.keep_f32.iter().any(|prefix| path.starts_with(prefix));
        match Self::block_for(module, &dims).filter(|_| !excluded) {
            Some(block) => {
                let scheme = self.format.scheme(&block);
                self.quantized += 1;
                param.map(|tensor| {
                    let range = compute_range(&scheme, &tensor, &Calibration::MinMax);
                    let qparams = compute_q_params(&scheme, range);
                    tensor.quantize(&scheme, qparams)
                })
            }
            None => {
                self.kept.push(path);
                param
            }
        }
    }
}

/// What `quantize_weights` did.
#[derive(Debug, Clone)]
pub struct QuantizeReport {
    pub quantized: usize,
    /// Weights left in f32 because their shape does not divide into blocks.
    pub kept_f32: Vec<String>,
}

/// Quantises every parameter named `weight` that divides into blocks, except those under the
/// `keep_f32` path prefixes.
pub fn quantize_weights<M: Module>(module: M, format: WeightFormat, keep_f32: &[&str]) -> (M, QuantizeReport) {
    let mut mapper =
        BlockQuantizer { format, keep_f32, path: Vec::new(), containers: Vec::new(), quantized: 0, kept: Vec::new() };
    let module = module.map(&mut mapper);
    (module, QuantizeReport { quantized: mapper.quantized, kept_f32: mapper.kept })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_run_along_the_input_axis() {
        assert_eq!(BlockQuantizer::block_for("Linear", &[128, 384]), Some(vec![32, 1]));
        assert_eq!(BlockQuantizer::block_for("Linear", &[576, 4]), Some(vec![32, 1]));
        assert_eq!(BlockQuantizer::block_for("Conv2d", &[256, 64, 1, 1]), Some(vec![1, 32, 1, 1]));
        assert_eq!(BlockQuantizer::block_for("ConvTranspose2d", &[256, 64, 2, 2]), Some(vec![32, 1, 1, 1]));
        // Depthwise kernels and the RGB stem have no 32-wide input axis.
        assert_eq!(BlockQuantizer::block_for("Conv2d", &[256, 1, 3, 3]), None);
        assert_eq!(BlockQuantizer::block_for("Conv2d", &[32, 3, 1, 1]), None);
        assert_eq!(BlockQuantizer::block_for("LayerNorm", &[256]), None);
    }
}

struct Dequantizer;

impl ModuleMapper for Dequantizer {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if param.val().dtype().is_float() {
            param
        } else {
            param.map(|tensor| tensor.dequantize())
        }
    }
}

/// Expands quantised weights back to f32 once, at load time. Burn's CPU backend dequantises a
/// quantised weight on every use (measured: SmolLM2 decode 300× slower, LiteMedSAM decode 2.4×),
/// so on the CPU the quantised format is a download and storage format only.
pub fn dequantize_weights<M: Module>(module: M) -> M {
    module.map(&mut Dequantizer)
}
