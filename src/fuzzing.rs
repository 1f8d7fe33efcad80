//! What the fuzzers exercise: every path that reads bytes a user (or a broken download) can
//! hand to medsee. Each entry point takes arbitrary bytes and must return — an error is the
//! expected answer — without panicking, hanging or allocating without bound. The libFuzzer
//! targets in `fuzz/` call these, and so does `tests/fuzz_smoke.rs`, which replays the committed
//! corpora with deterministic mutations on every test run.

use burn::tensor::Device;

use crate::ask::clean_question;
use crate::error::Result;
use crate::llm::tokenizer::TextTokenizer;
use crate::reason::heads::ClassHead;
use crate::reason::sequence::Layout;
use crate::weights::gguf::Gguf;
use crate::weights::store::Index;

/// An uploaded file: PNG, JPEG or DICOM (sniffed), with the size and bomb checks.
pub fn image(data: &[u8]) {
    let _ = crate::image::decode_image(data);
}

/// A GGUF file: header, metadata, tensor table, every tensor dequantised, the tokenizer built
/// from the metadata.
pub fn gguf(data: &[u8]) {
    let Ok(file) = Gguf::parse(data) else { return };
    for tensor in &file.tensors {
        let _ = file.dequantize(&tensor.name);
    }
    let _ = TextTokenizer::from_gguf(&file);
}

/// What the page downloads before trusting it: the weights index and a burnpack record loaded
/// into a (small) module, both as a Burn record and as a file of ggml blocks.
pub fn weights(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Index::parse(text, "index.json");
    }
    let _ = crate::weights::load_record(ClassHead::new(8, 4, &Device::flex()), "fuzz.bpk", data.to_vec());
    let _ = crate::weights::blocks::load(ClassHead::new(32, 4, &Device::flex()), "fuzz.bpk", data.to_vec());
}

/// A typed question → cleaned text → the LLM prompt's tokens and layout.
pub struct Questions {
    tokenizer: TextTokenizer,
}

impl Questions {
    /// `tokenizer_json`: the converted `smollm2-tokenizer.json`.
    pub fn new(tokenizer_json: &[u8]) -> Result<Self> {
        Ok(Self { tokenizer: TextTokenizer::from_json(tokenizer_json)? })
    }

    pub fn run(&self, data: &[u8]) {
        let Ok(question) = clean_question(&String::from_utf8_lossy(data)) else { return };
        let _ = Layout::new(&self.tokenizer, &question, &[], 64, 4);
    }
}
