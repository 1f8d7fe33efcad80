#![no_main]
use std::sync::OnceLock;

use medsee::fuzzing::Questions;

/// The converted tokenizer (the README's main command writes it).
fn questions() -> &'static Questions {
    static QUESTIONS: OnceLock<Questions> = OnceLock::new();
    QUESTIONS.get_or_init(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/converted/smollm2-tokenizer.json");
        let json = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}; convert the weights first"));
        Questions::new(&json).expect("the converted tokenizer loads")
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| questions().run(data));
