//! The LLM input for one question: the chat-formatted question with the vision tokens in the
//! user turn, then a forced answer prefix ending in the K candidate tokens. Every position is
//! computed here, once, so reading the candidates' hidden states can't be off by one (the most
//! reported bug of LISA-style code).
//!
//! ```text
//! <|im_start|>system\n…<|im_end|>\n<|im_start|>user\n [vision × N] \n{question}<|im_end|>\n
//! <|im_start|>assistant\n{ANSWER_PREFIX} [c_1 … c_K]
//! ```

use crate::error::Result;
use crate::llm::chat::{chat_ids, Message, Role};
use crate::llm::tokenizer::TextTokenizer;

/// Text the answer is forced to start with, before the candidate tokens.
pub const ANSWER_PREFIX: &str = "The requested structure:";

/// Where each part of the sequence sits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Text token ids before the vision tokens.
    pub before_vision: Vec<u32>,
    /// Text token ids between the vision tokens and the candidates.
    pub after_vision: Vec<u32>,
    pub vision_tokens: usize,
    pub candidates: usize,
}

impl Layout {
    pub fn new(tokenizer: &TextTokenizer, question: &str, history: &[(String, String)], vision_tokens: usize, candidates: usize) -> Result<Self> {
        let mut messages = Vec::new();
        for (q, a) in history {
            messages.push(Message::new(Role::User, q.clone()));
            messages.push(Message::new(Role::Assistant, a.clone()));
        }
        // Earlier turns (with the default system turn), then the user turn split at the image.
        let mut before_vision = chat_ids(tokenizer, &messages, false)?;
        before_vision.push(tokenizer.im_start);
        before_vision.extend(tokenizer.encode_text("user\n")?);
        let mut after_vision = tokenizer.encode_text(&format!("\n{question}"))?;
        after_vision.push(tokenizer.im_end);
        after_vision.extend(tokenizer.encode_text("\n")?);
        after_vision.push(tokenizer.im_start);
        after_vision.extend(tokenizer.encode_text(&format!("assistant\n{ANSWER_PREFIX}"))?);
        Ok(Self { before_vision, after_vision, vision_tokens, candidates })
    }

    pub fn vision_start(&self) -> usize {
        self.before_vision.len()
    }

    /// Position of candidate `k` (0-based); its own hidden state is read there.
    pub fn candidate_position(&self, k: usize) -> usize {
        self.before_vision.len() + self.vision_tokens + self.after_vision.len() + k
    }

    pub fn len(&self) -> usize {
        self.candidate_position(self.candidates)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
