//! Weight files whose matrices stay in ggml's 4-bit blocks (the shipped SmolLM2).
//!
//! Burn 0.22's quantised tensors are symmetric only, and its CPU backend keeps 4-bit values one
//! per byte, so the GGUF's own asymmetric `Q4_1` blocks cannot become Burn tensors without
//! either a second rounding or twice the bytes. Here every matrix is kept as its raw block bytes
//! (a `U8` tensor; the block type is in the file's metadata) and expanded to f32 while it is
//! applied to the model: quantised on disk and on the wire, f32 in compute, the same rule as
//! [`super::quantize::dequantize_weights`].

use burn::module::Module;
use burn::store::burn_pack::{DType, Reader, Tensor as PackTensor, Writer};
use burn::tensor::Bytes;

use std::collections::BTreeMap;

use super::gguf::{self, TensorType};
use super::{apply_tensors, transpose};
use crate::error::{Error, Result};
use crate::llm::block_linear::BlockLinear;

/// Metadata key prefix; `block_type:<tensor name>` holds the ggml type name of that tensor.
const BLOCK_TYPE_KEY: &str = "block_type:";

/// A weight matrix in block form: `rows` output features of `cols` inputs each, blocks running
/// along the inputs (GGUF's `[out, in]` order); it loads into a Burn `Linear` as `[in, out]`.
pub struct BlockMatrix {
    pub name: String,
    pub kind: TensorType,
    pub rows: usize,
    pub raw: Vec<u8>,
}

impl BlockMatrix {
    /// Quantises a row-major `[rows, cols]` matrix (`cols` a multiple of 32).
    pub fn quantize(name: String, kind: TensorType, rows: usize, values: &[f32]) -> Self {
        Self { name, kind, rows, raw: gguf::quantize(kind, values) }
    }
}

/// Serialises block matrices and ordinary tensors (norms) as one burnpack file.
pub fn write(matrices: Vec<BlockMatrix>, others: Vec<PackTensor>) -> Result<Vec<u8>> {
    let mut metadata = Vec::new();
    let mut tensors = others;
    for m in matrices {
        let row_bytes = m.raw.len() / m.rows.max(1);
        metadata.push((format!("{BLOCK_TYPE_KEY}{}", m.name), m.kind.name()));
        tensors.push(PackTensor::new(m.name, DType::U8, vec![m.rows, row_bytes], None, Bytes::from_bytes_vec(m.raw)));
    }
    let writer = metadata.iter().fold(Writer::new(tensors), |w, (key, value)| w.with_metadata(key, value));
    let bytes = writer.into_bytes().map_err(|e| Error::Other(format!("cannot serialise weights: {e}")))?;
    Ok(bytes.to_vec())
}

/// Loads a file written by [`write`] into `module`, expanding each block matrix to f32 only
/// when the module takes it (one matrix at a time, so the f32 copy of the whole file never
/// exists next to the module). The 4-bit matrices also come back repacked for one-position
/// steps ([`BlockLinear`]), by tensor name.
pub fn load<M: Module>(module: M, file: &str, bytes: Vec<u8>) -> Result<(M, BTreeMap<String, BlockLinear>)> {
    let invalid = |why: String| Error::weights(file, format!("{why}; fetch and convert the weights again"));
    let reader = Reader::from_bytes(Bytes::from_bytes_vec(bytes)).map_err(|e| invalid(format!("not a valid weight file ({e})")))?;
    let metadata = reader.metadata().clone();
    let stored = reader.into_tensors().map_err(|e| invalid(format!("not a valid weight file ({e})")))?;
    let mut tensors = Vec::with_capacity(stored.len());
    let mut repacked = BTreeMap::new();
    for tensor in stored {
        let Some(kind_name) = metadata.get(&format!("{BLOCK_TYPE_KEY}{}", tensor.name)) else {
            tensors.push(tensor);
            continue;
        };
        let kind = TensorType::from_name(kind_name).ok_or_else(|| invalid(format!("{}: unknown block type {kind_name}", tensor.name)))?;
        let (values_per_block, bytes_per_block) = kind.block();
        let (values_per_block, bytes_per_block) = (values_per_block as usize, bytes_per_block as usize);
        let dims = tensor.shape.as_slice().to_vec();
        let [rows, row_bytes] = dims[..] else {
            return Err(invalid(format!("{}: block matrix of shape {dims:?}", tensor.name)));
        };
        if tensor.dtype != DType::U8 || row_bytes % bytes_per_block != 0 {
            return Err(invalid(format!("{}: {row_bytes} bytes per row is not whole {} blocks", tensor.name, kind.name())));
        }
        let cols = row_bytes / bytes_per_block * values_per_block;
        let name = tensor.name.clone();
        let raw = tensor.to_bytes().map_err(|e| invalid(format!("{name}: {e}")))?;
        if let Some(matrix) = BlockLinear::from_blocks(kind, rows, &raw).map_err(|e| invalid(format!("{name}: {e}")))? {
            repacked.insert(name.clone(), matrix);
        }
        tensors.push(PackTensor::deferred(name, DType::F32, vec![cols, rows], None, rows * cols * 4, move || {
            let values = transpose(rows, cols, &gguf::dequantize(kind, &raw));
            Ok(Bytes::from_bytes_vec(values.iter().flat_map(|v| v.to_le_bytes()).collect()))
        }));
    }
    Ok((apply_tensors(module, file, tensors)?, repacked))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::{Linear, LinearConfig};
    use burn::tensor::Device;

    #[test]
    fn a_block_matrix_loads_as_the_transposed_linear_weight() {
        let device = Device::flex();
        let (inputs, outputs) = (64, 3);
        let values: Vec<f32> = (0..inputs * outputs).map(|i| ((i * 7919) % 97) as f32 / 97.0 - 0.5).collect();
        let matrix = BlockMatrix::quantize("weight".into(), TensorType::Q4_1, outputs, &values);
        let expected = transpose(outputs, inputs, &gguf::dequantize(TensorType::Q4_1, &matrix.raw));
        let bias = PackTensor::new("bias".into(), DType::F32, vec![outputs], None, Bytes::from_bytes_vec(vec![0u8; outputs * 4]));
        let bytes = write(vec![matrix], vec![bias]).unwrap();
        let (linear, repacked): (Linear, _) = load(LinearConfig::new(inputs, outputs).init(&device), "test.bpk", bytes.clone()).unwrap();
        assert_eq!(linear.weight.val().into_data().try_to_vec::<f32>().unwrap(), expected);
        assert_eq!(repacked["weight"].shape(), [outputs, inputs]);

        // A file for another shape names the file instead of panicking.
        let err = load(LinearConfig::new(32, outputs).init(&device), "test.bpk", bytes.clone()).unwrap_err().to_string();
        assert!(err.contains("test.bpk"), "{err}");
        let err = load(LinearConfig::new(inputs, outputs).init(&device), "test.bpk", bytes[..bytes.len() / 2].to_vec()).unwrap_err().to_string();
        assert!(err.contains("test.bpk"), "{err}");
    }
}
