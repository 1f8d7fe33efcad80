//! SmolLM2's GGUF → the Burn `Llama` in `crate::llm::llama`.
//!
//! Every tensor is dequantised to f32 (Q4_1 is asymmetric, which Burn's symmetric schemes cannot
//! hold exactly) and mapped by name; GGUF stores matrices `[out, in]`, Burn's `Linear` wants
//! `[in, out]`. The token embedding becomes the tied output head `[hidden, vocab]`.

use burn::store::burn_pack::Tensor as PackTensor;
use burn::store::ModuleSnapshot;
use burn::tensor::Device;

use super::gguf::Gguf;
use super::quantize::{quantize_weights, QuantizeReport, WeightFormat};
use super::{pack_f32 as pack, transpose};
use crate::error::{Error, Result};
use crate::llm::llama::{Llama, LlamaConfig};

/// Builds the f32 model from a parsed GGUF.
pub fn load_gguf(g: &Gguf, device: &Device) -> Result<(LlamaConfig, Llama)> {
    let config = LlamaConfig::from_gguf(g)?;
    let mut tensors = Vec::new();
    let mut used = Vec::new();
    let mut matrix = |burn: String, gguf: String, tensors: &mut Vec<PackTensor>| -> Result<()> {
        let (shape, values) = g.dequantize(&gguf)?;
        let [out, inp] = shape[..] else {
            return Err(Error::weights("GGUF", format!("{gguf} is not a matrix")));
        };
        tensors.push(pack(burn, vec![inp, out], &transpose(out, inp, &values)));
        used.push(gguf);
        Ok(())
    };
    matrix("output.weight".into(), "token_embd.weight".into(), &mut tensors)?;
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
            matrix(format!("layers.{i}.{burn}.weight"), format!("blk.{i}.{gguf}.weight"), &mut tensors)?;
        }
    }
    let mut vector = |burn: String, gguf: String| -> Result<()> {
        let (shape, values) = g.dequantize(&gguf)?;
        tensors.push(pack(burn, shape, &values));
        used.push(gguf);
        Ok(())
    };
    for i in 0..config.num_layers {
        vector(format!("layers.{i}.attn_norm.gamma"), format!("blk.{i}.attn_norm.weight"))?;
        vector(format!("layers.{i}.ffn_norm.gamma"), format!("blk.{i}.ffn_norm.weight"))?;
    }
    vector("norm.gamma".into(), "output_norm.weight".into())?;
    let unused: Vec<&str> = g.tensors.iter().map(|t| t.name.as_str()).filter(|n| !used.iter().any(|u| u == n)).collect();
    if !unused.is_empty() {
        return Err(Error::weights("GGUF", format!("tensors not used by the model: {unused:?}")));
    }
    let mut model = config.init(device);
    let result = model.apply(tensors, None, None, false);
    if !result.errors.is_empty() || !result.missing.is_empty() || !result.unused.is_empty() {
        return Err(Error::weights(
            "GGUF",
            format!("mapping incomplete: missing {:?}, unused {:?}, errors {:?}", result.missing, result.unused, result.errors),
        ));
    }
    Ok((config, model))
}

/// The shipped quantised SmolLM2: every Linear (including the tied head) Q8, norms f32.
pub fn quantize(model: Llama) -> (Llama, QuantizeReport) {
    quantize_weights(model, WeightFormat::Q8Block32, &[])
}
