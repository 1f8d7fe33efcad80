//! Weights: the pinned sources (manifest), their conversion to Burn records, quantisation, and
//! integrity checks. Everything that knows checkpoint key names lives here, apart from the math.

pub mod blocks;
#[cfg(not(target_arch = "wasm32"))]
pub mod convert;
#[cfg(not(target_arch = "wasm32"))]
pub mod litemedsam;
pub mod gguf;
pub mod manifest;
pub mod quantize;
#[cfg(not(target_arch = "wasm32"))]
pub mod smollm2;
pub mod store;

use std::fmt;

use burn::module::Module;
use burn::store::{BurnpackStore, FloatCastAdapter, ModuleSnapshot};
use burn::tensor::{Bytes, DType};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Numeric format of a converted model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    /// Full precision, the reference for every parity test.
    F32,
    /// The shipped weights: LiteMedSAM's Linear and convolution weights in Burn's Q8S format
    /// (blocks of 32, the rest stored f16), SmolLM2's matrices in ggml 4-bit blocks (see
    /// [`blocks`], norms f32). Everything is expanded to f32 at load.
    Quantized,
}

impl Variant {
    pub const ALL: [Variant; 2] = [Variant::F32, Variant::Quantized];

    pub fn as_str(self) -> &'static str {
        match self {
            Variant::F32 => "f32",
            Variant::Quantized => "quantized",
        }
    }
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Variant {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(Variant::F32),
            "quantized" => Ok(Variant::Quantized),
            other => Err(Error::Other(format!("unknown weight variant {other:?} (expected f32 or quantized)"))),
        }
    }
}

/// File name of a converted model, e.g. `litemedsam-q8.bpk`, `smollm2-q4.bpk`.
pub fn converted_file_name(model: &str, variant: Variant) -> String {
    let format = match (variant, model) {
        (Variant::F32, _) => "f32",
        (Variant::Quantized, manifest::SMOLLM2) => "q4",
        (Variant::Quantized, _) => "q8",
    };
    format!("{model}-{format}.bpk")
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Fails unless `bytes` has the expected length and sha256, naming `file` in the error.
pub fn verify(file: &str, bytes: &[u8], size: u64, sha256: &str) -> Result<()> {
    if bytes.len() as u64 != size {
        return Err(Error::weights(
            file,
            format!("{} bytes, expected {size} (truncated or replaced); fetch and convert the weights again", bytes.len()),
        ));
    }
    let actual = sha256_hex(bytes);
    if actual != sha256 {
        return Err(Error::weights(
            file,
            format!("sha256 {actual} does not match the expected {sha256}; fetch and convert the weights again"),
        ));
    }
    Ok(())
}

/// Loads burnpack bytes into `module` (its shapes must match exactly), reporting problems as
/// errors that name `file` instead of panicking. Half-precision tensors are widened to f32 and
/// quantised weights expanded to f32 for compute (see [`quantize::dequantize_weights`]).
pub fn load_record<M: Module>(mut module: M, file: &str, bytes: Vec<u8>) -> Result<M> {
    let mut store = BurnpackStore::from_bytes(Some(Bytes::from_bytes_vec(bytes))).with_from_adapter(FloatCastAdapter::to(DType::F32));
    let result = module
        .load_from(&mut store)
        .map_err(|e| Error::weights(file, format!("not a valid burnpack record for this model ({e})")))?;
    if !result.unused.is_empty() {
        let names = result.unused.join(", ");
        return Err(Error::weights(file, format!("holds tensors this model does not have ({names}); is it the right file?")));
    }
    Ok(quantize::dequantize_weights(module))
}

/// Applies named tensors to `module`; every parameter must be given and every tensor used.
pub(crate) fn apply_tensors<M: Module>(mut module: M, file: &str, tensors: Vec<burn::store::burn_pack::Tensor>) -> Result<M> {
    let result = module.apply(tensors, None, None, false);
    if !result.errors.is_empty() || !result.missing.is_empty() || !result.unused.is_empty() {
        return Err(Error::weights(
            file,
            format!("does not fit the model: missing {:?}, unused {:?}, errors {:?}", result.missing, result.unused, result.errors),
        ));
    }
    Ok(module)
}

/// Serialises a module as burnpack bytes.
pub fn record_bytes<M: Module>(module: M) -> Result<Vec<u8>> {
    let bytes = module.into_record().into_bytes().map_err(|e| Error::Other(format!("cannot serialise weights: {e}")))?;
    Ok(bytes.to_vec())
}

/// Serialises a module as burnpack bytes with every float tensor in half precision: half the
/// size, for small trained modules whose f16 rounding is checked against f32 (see `medsee eval`).
pub fn half_record_bytes<M: Module>(module: &M) -> Result<Vec<u8>> {
    let mut store = BurnpackStore::from_bytes(None).with_to_adapter(FloatCastAdapter::to(DType::F16));
    module.save_into(&mut store).map_err(|e| Error::Other(format!("cannot serialise weights: {e}")))?;
    let bytes = store.get_bytes().map_err(|e| Error::Other(format!("cannot serialise weights: {e}")))?;
    Ok(bytes.to_vec())
}

/// An f32 tensor named by its Burn module path, ready to apply to a module (conversion only).
#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn pack_f32(path: String, shape: Vec<usize>, values: &[f32]) -> burn::store::burn_pack::Tensor {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    burn::store::burn_pack::Tensor::new(path, burn::store::burn_pack::DType::F32, shape, None, Bytes::from_bytes_vec(bytes))
}

/// A row-major `rows × cols` matrix transposed: PyTorch/GGUF `[out, in]` → Burn `Linear` `[in, out]`.
pub(crate) fn transpose(rows: usize, cols: usize, values: &[f32]) -> Vec<f32> {
    let mut out = vec![0.0; values.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = values[r * cols + c];
        }
    }
    out
}
