//! The language model: SmolLM2-135M-Instruct (LLaMA architecture) from its GGUF.

pub mod chat;
pub mod generate;
pub mod llama;
pub mod tokenizer;
