//! SmolLM2's byte-level BPE tokenizer, built with the `tokenizers` crate from the vocabulary,
//! merges and token types stored in the GGUF (`tokenizer.ggml.*`, pre-tokenizer "smollm": every
//! digit on its own, then GPT-2 byte-level splitting). Serialised once as JSON at conversion time
//! so the page loads it without the GGUF.

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, Tokenizer};

use crate::error::{Error, Result};
use crate::weights::gguf::Gguf;

/// GGUF token type of control tokens (`<|im_start|>`, `<|endoftext|>`, …).
const CONTROL_TOKEN: u64 = 3;

fn tokenizer_error(e: impl std::fmt::Display) -> Error {
    Error::Other(format!("tokenizer: {e}"))
}

/// The tokenizer plus the ids of the tokens the chat format relies on.
#[derive(Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
    /// `inner` with special tokens treated as plain text, for untrusted input.
    literal: Tokenizer,
    pub im_start: u32,
    pub im_end: u32,
    pub end_of_text: u32,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer").field("vocab", &self.vocab_size()).finish()
    }
}

impl TextTokenizer {
    /// Builds the tokenizer from GGUF metadata (`tokenizer.ggml.model` must be `gpt2`).
    pub fn from_gguf(g: &Gguf) -> Result<Self> {
        let text = |key: &str| g.require(key).map(|v| v.as_str().unwrap_or_default().to_string());
        let model = text("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(Error::weights("GGUF", format!("tokenizer model {model:?} is not supported (gpt2 is)")));
        }
        let pre = text("tokenizer.ggml.pre")?;
        if pre != "smollm" {
            return Err(Error::weights("GGUF", format!("pre-tokenizer {pre:?} is not supported (smollm is)")));
        }
        let list = |key: &str| -> Result<Vec<crate::weights::gguf::Value>> {
            Ok(g.require(key)?.as_array().ok_or_else(|| Error::weights("GGUF", format!("{key} is not an array")))?.to_vec())
        };
        let tokens: Vec<String> = list("tokenizer.ggml.tokens")?.iter().map(|v| v.as_str().unwrap_or_default().to_string()).collect();
        let types: Vec<u64> = list("tokenizer.ggml.token_type")?.iter().map(|v| v.as_u64().unwrap_or(1)).collect();
        let merges = list("tokenizer.ggml.merges")?
            .iter()
            .map(|v| {
                let m = v.as_str().unwrap_or_default();
                m.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())).ok_or_else(|| Error::weights("GGUF", format!("bad merge {m:?}")))
            })
            .collect::<Result<Vec<_>>>()?;
        if types.len() != tokens.len() {
            return Err(Error::weights("GGUF", "token types and tokens differ in length"));
        }
        let vocab: tokenizers::models::bpe::Vocab = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
        let bpe = BPE::builder().vocab_and_merges(vocab, merges).build().map_err(tokenizer_error)?;
        let mut tokenizer = Tokenizer::new(bpe);
        tokenizer.with_pre_tokenizer(Some(Sequence::new(vec![Digits::new(true).into(), ByteLevel::new(false, true, true).into()])));
        tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
        let specials: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, &t)| t == CONTROL_TOKEN)
            .map(|(content, _)| AddedToken::from(content.clone(), true))
            .collect();
        tokenizer.add_special_tokens(specials).map_err(tokenizer_error)?;
        Self::new(tokenizer)
    }

    /// Loads a tokenizer serialised by [`TextTokenizer::to_json`].
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        Self::new(Tokenizer::from_bytes(bytes).map_err(tokenizer_error)?)
    }

    pub fn to_json(&self) -> Result<String> {
        self.inner.to_string(false).map_err(tokenizer_error)
    }

    fn new(inner: Tokenizer) -> Result<Self> {
        let id = |token: &str| inner.token_to_id(token).ok_or_else(|| tokenizer_error(format!("no {token} token")));
        let (im_start, im_end, end_of_text) = (id("<|im_start|>")?, id("<|im_end|>")?, id("<|endoftext|>")?);
        let mut literal = inner.clone();
        literal.set_encode_special_tokens(true);
        Ok(Self { inner, literal, im_start, im_end, end_of_text })
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Encodes untrusted text: `<|im_end|>` typed by a user stays text and cannot end a turn.
    pub fn encode_text(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.literal.encode(text, false).map_err(tokenizer_error)?.get_ids().to_vec())
    }

    /// Encodes trusted text in which special tokens are recognised.
    pub fn encode_with_special_tokens(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.inner.encode(text, false).map_err(tokenizer_error)?.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, true).map_err(tokenizer_error)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }
}
