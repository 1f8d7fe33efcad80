//! SmolLM2's chat format (the GGUF's `tokenizer.chat_template`), applied in Rust:
//! `<|im_start|>{role}\n{content}<|im_end|>\n` per message, a default system message when the
//! conversation has none, and `<|im_start|>assistant\n` to prompt the answer.
//!
//! Messages are tokenised piece by piece around the special tokens, which gives the same ids as
//! tokenising the rendered template while keeping user text from injecting special tokens.

use super::tokenizer::TextTokenizer;
use crate::error::Result;

pub const DEFAULT_SYSTEM: &str = "You are a helpful AI assistant named SmolLM, trained by Hugging Face";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

impl Message {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self { role, content: content.into() }
    }
}

/// Token ids of a conversation; with `add_generation_prompt` it ends ready for the answer.
pub fn chat_ids(tokenizer: &TextTokenizer, messages: &[Message], add_generation_prompt: bool) -> Result<Vec<u32>> {
    let mut ids = Vec::new();
    let push_turn = |ids: &mut Vec<u32>, role: Role, content: &str| -> Result<()> {
        ids.push(tokenizer.im_start);
        ids.extend(tokenizer.encode_text(&format!("{}\n{content}", role.as_str()))?);
        ids.push(tokenizer.im_end);
        ids.extend(tokenizer.encode_text("\n")?);
        Ok(())
    };
    if messages.first().map(|m| m.role) != Some(Role::System) {
        push_turn(&mut ids, Role::System, DEFAULT_SYSTEM)?;
    }
    for message in messages {
        push_turn(&mut ids, message.role, &message.content)?;
    }
    if add_generation_prompt {
        ids.push(tokenizer.im_start);
        ids.extend(tokenizer.encode_text("assistant\n")?);
    }
    Ok(ids)
}
