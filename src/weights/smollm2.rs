//! SmolLM2's GGUF → the Burn `Llama` in `crate::llm::llama`.
//!
//! Two outputs: the f32 reference (every tensor dequantised) and the shipped file, which keeps
//! the GGUF's 4-bit blocks ([`block_record`]). Tensors are mapped by name; GGUF stores matrices
//! `[out, in]`, Burn's `Linear` wants `[in, out]`. The token embedding becomes the tied output
//! head `[hidden, vocab]`.

use burn::store::burn_pack::Tensor as PackTensor;
use burn::tensor::Device;

use super::blocks::{self, BlockMatrix};
use super::gguf::{Gguf, TensorType};
use super::{apply_tensors, pack_f32 as pack, transpose};
use crate::error::{Error, Result};
use crate::llm::llama::{Llama, LlamaConfig};

/// Whether a GGUF tensor is a weight matrix (→ a `Linear`) or a vector (norm gains).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Matrix,
    Vector,
}

/// Every model parameter with the GGUF tensor it comes from.
fn tensor_map(config: &LlamaConfig) -> Vec<(String, String, Kind)> {
    let mut map = vec![("output.weight".to_string(), "token_embd.weight".to_string(), Kind::Matrix)];
    for i in 0..config.num_layers {
        for (burn, gguf) in [
            ("wq", "attn_q"),
            ("wk", "attn_k"),
            ("wv", "attn_v"),
            ("wo", "attn_output"),
            ("gate", "ffn_gate"),
            ("up", "ffn_up"),
            ("down", "ffn_down"),
        ] {
            map.push((format!("layers.{i}.{burn}.weight"), format!("blk.{i}.{gguf}.weight"), Kind::Matrix));
        }
        map.push((format!("layers.{i}.attn_norm.gamma"), format!("blk.{i}.attn_norm.weight"), Kind::Vector));
        map.push((format!("layers.{i}.ffn_norm.gamma"), format!("blk.{i}.ffn_norm.weight"), Kind::Vector));
    }
    map.push(("norm.gamma".into(), "output_norm.weight".into(), Kind::Vector));
    map
}

/// Fails if the GGUF holds tensors the model would not use (a different architecture).
fn check_all_used(g: &Gguf, map: &[(String, String, Kind)]) -> Result<()> {
    let unused: Vec<&str> = g.tensors.iter().map(|t| t.name.as_str()).filter(|n| !map.iter().any(|(_, u, _)| u == n)).collect();
    if !unused.is_empty() {
        return Err(Error::weights("GGUF", format!("tensors not used by the model: {unused:?}")));
    }
    Ok(())
}

/// The `[out, in]` matrix `gguf` as (rows, f32 values).
fn matrix(g: &Gguf, gguf: &str) -> Result<(usize, usize, Vec<f32>)> {
    let (shape, values) = g.dequantize(gguf)?;
    let [out, inp] = shape[..] else {
        return Err(Error::weights("GGUF", format!("{gguf} is not a matrix")));
    };
    Ok((out, inp, values))
}

/// The vector `gguf` (a norm's gains) as the f32 tensor `burn`.
fn vector(g: &Gguf, burn: String, gguf: &str) -> Result<PackTensor> {
    let (shape, values) = g.dequantize(gguf)?;
    Ok(pack(burn, shape, &values))
}

/// Builds the f32 model from a parsed GGUF.
pub fn load_gguf(g: &Gguf, device: &Device) -> Result<(LlamaConfig, Llama)> {
    let config = LlamaConfig::from_gguf(g)?;
    let map = tensor_map(&config);
    check_all_used(g, &map)?;
    let mut tensors = Vec::new();
    for (burn, gguf, kind) in &map {
        tensors.push(match kind {
            Kind::Matrix => {
                let (out, inp, values) = matrix(g, gguf)?;
                pack(burn.clone(), vec![inp, out], &transpose(out, inp, &values))
            }
            Kind::Vector => vector(g, burn.clone(), gguf)?,
        });
    }
    let model = apply_tensors(config.init(device), "GGUF", tensors)?;
    Ok((config, model))
}

/// Block type of the shipped token embedding (which is also the tied output head): the GGUF
/// holds it in `Q8_0`, twice the bytes of the 4-bit layers; re-quantised once, at conversion.
pub const SHIPPED_EMBEDDING: TensorType = TensorType::Q4_0;

/// The shipped SmolLM2 file (see [`blocks`]): every matrix the GGUF holds in `Q4_1` is copied
/// block for block (no loss against the pinned source); the others (in this GGUF only the `Q8_0`
/// embedding) become [`SHIPPED_EMBEDDING`]; norms stay f32.
pub fn block_record(g: &Gguf) -> Result<Vec<u8>> {
    let config = LlamaConfig::from_gguf(g)?;
    let map = tensor_map(&config);
    check_all_used(g, &map)?;
    let (mut matrices, mut vectors): (Vec<BlockMatrix>, Vec<PackTensor>) = (Vec::new(), Vec::new());
    for (burn, gguf, kind) in map {
        let info = g.tensor(&gguf)?;
        match (kind, info.kind) {
            (Kind::Matrix, TensorType::Q4_1) => {
                let rows = info.shape()[0];
                matrices.push(BlockMatrix { name: burn, kind: TensorType::Q4_1, rows, raw: g.raw(info).to_vec() });
            }
            (Kind::Matrix, _) => {
                let (rows, _, values) = matrix(g, &gguf)?;
                matrices.push(BlockMatrix::quantize(burn, SHIPPED_EMBEDDING, rows, &values));
            }
            (Kind::Vector, _) => vectors.push(vector(g, burn, &gguf)?),
        }
    }
    blocks::write(matrices, vectors)
}
