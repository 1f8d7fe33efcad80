//! The language model: SmolLM2-135M-Instruct (LLaMA architecture) from its GGUF.

pub mod block_linear;
pub mod block_step;
pub mod chat;
pub mod generate;
pub mod llama;
pub mod tokenizer;

use burn::module::Module;
use burn::tensor::Device;

use crate::error::{Error, Result};
use crate::weights::{self, Variant};
use llama::{Llama, LlamaConfig};
use tokenizer::TextTokenizer;

/// The language model with its tokenizer, loaded from converted files.
pub struct TextModel {
    pub model: Llama,
    pub tokenizer: TextTokenizer,
    pub config: LlamaConfig,
    pub variant: Variant,
}

impl TextModel {
    /// Builds the model from the converted files' bytes (already verified by the caller).
    pub fn from_bytes(config_json: &[u8], tokenizer_json: &[u8], record_name: &str, record: Vec<u8>, variant: Variant, device: &Device) -> Result<Self> {
        let config: LlamaConfig =
            serde_json::from_slice(config_json).map_err(|e| Error::weights("smollm2-config.json", e.to_string()))?;
        let tokenizer = TextTokenizer::from_json(tokenizer_json)?;
        let model = match variant {
            Variant::F32 => weights::load_record(config.init(device), record_name, record)?,
            Variant::Quantized => {
                let (model, blocks) = weights::blocks::load(config.init(device), record_name, record)?;
                model.with_blocks(blocks)
            }
        };
        Ok(Self { model, tokenizer, config, variant })
    }

    /// Moves the model to `device` (loading happens on the CPU, where quantised records expand).
    pub fn to_device(self, device: &Device) -> Self {
        Self { model: self.model.to_device(device), ..self }
    }

    /// Loads SmolLM2 from the converted-weights folder, checking every file against `index.json`.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn load(converted_dir: &std::path::Path, variant: Variant, device: &Device) -> Result<Self> {
        use crate::weights::store::{SMOLLM2_CONFIG, SMOLLM2_TOKENIZER};
        use crate::weights::store::read_verified;
        let name = weights::converted_file_name(weights::manifest::SMOLLM2, variant);
        Self::from_bytes(
            &read_verified(converted_dir, SMOLLM2_CONFIG)?,
            &read_verified(converted_dir, SMOLLM2_TOKENIZER)?,
            &name,
            read_verified(converted_dir, &name)?,
            variant,
            device,
        )
    }
}
